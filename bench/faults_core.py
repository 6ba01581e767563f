"""Search-path resilience, before (``--before-src``: checked out by bench/faults.py) and after (this tree),
against moto's
Secrets Manager behind the loopback fault proxy (requests counted at the proxy, i.e. at the server side):

- requests for 32 concurrent lookups of one uncached id (single-flight);
- requests per lookup in a 100 % 5xx storm over repeated lookups (circuit breaker, default settings);
- values served during an outage after the TTL expired (stale-if-error).

Each variant runs in its own subprocess with its own ``PYTHONPATH``; the parent owns moto and the proxy.
Usage: ``python bench/faults_core.py [--before-src .cache/bench-before/src] [--after-src src]``
-> a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers._util import free_port, stop_process, wait_for_port  # noqa: E402
from tests.servers.faults import FaultProxy  # noqa: E402

STORM_LOOKUPS = 30
OUTAGE_LOOKUPS = 10
STORM = {"status": 503, "body": b'{"__type": "ServiceUnavailable", "message": "injected"}'}

WORKER = r"""
import json, sys, threading, time
from credpath.backends.aws_secrets_manager import SecretsManagerBackend
from credpath._cache import CacheSettings
from credpath._search_path import SearchPath

scenario, url = sys.argv[1], sys.argv[2]
backend = SecretsManagerBackend(
    endpoint_url=url, region_name="us-east-1",
    config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 3}},
)
getattr(backend, "prepare", lambda: None)()
out = {}
if scenario == "concurrent":
    sp = SearchPath([("sm", backend)])
    hosts = []
    threads = [threading.Thread(target=lambda: hosts.append(sp.get_connection("db").host)) for _ in range(32)]
    started = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join(60)
    out = {"ok": len(hosts), "seconds": time.perf_counter() - started}
elif scenario == "storm":
    sp = SearchPath([("sm", backend)])
    errors = 0
    started = time.perf_counter()
    for i in range(int(sys.argv[3])):
        try:
            sp.get_variable(f"v{i}")
        except Exception:
            errors += 1
    out = {"errors": errors, "seconds": time.perf_counter() - started}
elif scenario == "outage":
    sp = SearchPath([("sm", backend)], cache=CacheSettings(ttl=0.5, miss_ttl=0.5, jitter=0.0))
    sp.get_connection("db")
    print("READY", flush=True)
    sys.stdin.readline()  # the parent has started the outage
    time.sleep(0.6)  # the cached value's TTL has passed
    served = errors = 0
    for _ in range(int(sys.argv[3])):
        try:
            served += sp.get_connection("db").host == "db.internal"
        except Exception:
            errors += 1
    out = {"served": served, "errors": errors}
print("RESULT " + json.dumps(out), flush=True)
"""


def start_moto() -> tuple[subprocess.Popen, int]:
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc=proc)
    return proc, port


def run_worker(src: str, proxy: FaultProxy, scenario: str, *extra: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": src,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, scenario, proxy.url, *extra],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    result: dict = {}
    for line in proc.stdout:
        if line.startswith("READY"):
            proxy.add("status", **STORM)
            proxy.requests.clear()
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    proc.wait(300)
    return result


def measure(src: str, proxy: FaultProxy) -> dict[str, str]:
    row: dict[str, str] = {}
    proxy.clear()
    proxy.add("delay", seconds=0.3, times=1)  # the first read is slow: the other 31 pile up behind it
    r = run_worker(src, proxy, "concurrent")
    row["32 concurrent lookups of one id: requests"] = f"{proxy.count()} ({r.get('ok')} served)"
    proxy.clear()
    proxy.add("status", **STORM)
    r = run_worker(src, proxy, "storm", str(STORM_LOOKUPS))
    row[f"5xx storm, {STORM_LOOKUPS} lookups: requests per lookup"] = (
        f"{proxy.count() / STORM_LOOKUPS:.2f} ({proxy.count()} in {r.get('seconds', 0):.1f} s)"
    )
    proxy.clear()
    r = run_worker(src, proxy, "outage", str(OUTAGE_LOOKUPS))
    row[f"outage after TTL, {OUTAGE_LOOKUPS} lookups: values served"] = (
        f"{r.get('served')} of {OUTAGE_LOOKUPS} ({proxy.count()} requests)"
    )
    proxy.clear()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", default=str(ROOT / ".cache" / "bench-before" / "src"))
    parser.add_argument("--after-src", default=str(ROOT / "src"))
    args = parser.parse_args()
    moto, port = start_moto()
    proxy = FaultProxy("127.0.0.1", port)
    try:
        import boto3

        client = boto3.client(
            "secretsmanager",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_secret(
            Name="airflow/connections/db", SecretString="postgres://u:pw-bench@db.internal/app"
        )
        started = time.monotonic()
        before = measure(args.before_src, proxy)
        after = measure(args.after_src, proxy)
        print("| measure | before (main) | after |")
        print("|---|---|---|")
        for name in before:
            print(f"| {name} | {before[name]} | {after[name]} |")
        print(
            f"\n(moto_server behind the fault proxy on loopback; {time.monotonic() - started:.0f} s in all)"
        )
    finally:
        proxy.stop()
        stop_process(moto)


if __name__ == "__main__":
    main()
