"""Resolve N distinct connections from AWS Secrets Manager (a moto server): credpath vs Airflow 3.3.2.

One run, one moto server, one data set (N secrets with URI values, distinct passwords):

- credpath, no prefetch: ``SearchPath.get_connection`` per id (one GetSecretValue each);
- credpath, prefetch by ids: ``SearchPath.prefetch(connections=ids)`` (BatchGetSecretValue, 20 per call), then
  ``get_connection`` per id from the cache;
- credpath, prefetch by prefix: ``prefetch(prefix=True)`` (ListSecrets + batches), then ``get_connection``;
- Airflow 3.3.2 (if its venv exists): ``Connection.get_connection_from_secrets`` per id with
  ``AIRFLOW__SECRETS__BACKEND=...SecretsManagerBackend``, in a subprocess of that venv.

API calls are counted on each backend's boto3 client with botocore's ``before-call`` hook. Masking is on
for both (credpath registers every password with its masker, Airflow with its secrets masker).

    .venv/bin/python bench/aws_resolve.py [-n 1000] [--airflow-python .cache/airflow-venv/bin/python]
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_AIRFLOW_PYTHON = ROOT / ".cache" / "airflow-venv" / "bin" / "python"
PREFIX = "airflow/connections"
AIRFLOW_SM = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"

AIRFLOW_WORKER = r"""
import json, os, statistics, sys, time
from collections import Counter
ids = json.loads(os.environ["BENCH_IDS"])
from airflow.models.connection import Connection
from airflow.configuration import ensure_secrets_loaded
backend = next(b for b in ensure_secrets_loaded() if type(b).__name__ == "SecretsManagerBackend")
calls = Counter()
backend.client.meta.events.register("before-call.*.*", lambda model, **_: calls.update([model.name]))
latencies = []
started = time.perf_counter()
for conn_id in ids:
    t = time.perf_counter()
    conn = Connection.get_connection_from_secrets(conn_id)
    latencies.append(time.perf_counter() - t)
    assert conn.host == conn_id + ".example.com", conn_id
total = time.perf_counter() - started
print(json.dumps({"total": total, "latencies": latencies, "calls": dict(calls)}))
"""


def start_moto() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(ROOT))
    from tests.servers._util import free_port, wait_for_port

    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def seed(url: str, ids: list[str]) -> None:
    import boto3

    client = boto3.client("secretsmanager", endpoint_url=url, region_name="us-east-1")

    def create(index_id: tuple[int, str]) -> None:
        i, conn_id = index_id
        uri = f"postgres://user{i}:pw-bench-{i:05d}@{conn_id}.example.com:5432/db{i}"
        client.create_secret(Name=f"{PREFIX}/{conn_id}", SecretString=uri)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, enumerate(ids)))


def summary(name: str, total: float, latencies: list[float], calls: dict[str, int]) -> dict[str, Any]:
    latencies = sorted(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return {
        "variant": name,
        "total_s": round(total, 3),
        "median_ms": round(statistics.median(latencies) * 1000, 3) if latencies else None,
        "p99_ms": round(p99 * 1000, 3),
        "api_calls": sum(calls.values()),
        "calls": dict(sorted(calls.items())),
    }


def run_credpath(url: str, ids: list[str], mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from credpath._search_path import SearchPath
    from credpath.backends.aws_secrets_manager import SecretsManagerBackend

    backend = SecretsManagerBackend(endpoint_url=url, region_name="us-east-1")
    path = SearchPath([backend])
    latencies: list[float] = []
    started = time.perf_counter()
    if mode == "ids":
        path.prefetch(connections=ids)
    elif mode == "prefix":
        path.prefetch(prefix=True)
    for conn_id in ids:
        t = time.perf_counter()
        conn = path.get_connection(conn_id)
        latencies.append(time.perf_counter() - t)
        assert conn.host == f"{conn_id}.example.com", conn_id
    total = time.perf_counter() - started
    first = summary(f"credpath, prefetch={mode}", total, latencies, Counter(backend.aws.calls))
    # Second pass on the same path: every id is a cache hit.
    before = Counter(backend.aws.calls)
    latencies = []
    started = time.perf_counter()
    for conn_id in ids:
        t = time.perf_counter()
        path.get_connection(conn_id)
        latencies.append(time.perf_counter() - t)
    again = summary(f"credpath, prefetch={mode}, again", time.perf_counter() - started, latencies,
                    Counter(backend.aws.calls) - before)  # fmt: skip
    return first, again


def run_airflow(python: Path, url: str, ids: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ)
        env.update(
            {
                "AIRFLOW_HOME": home,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
                "AIRFLOW__SECRETS__BACKEND": AIRFLOW_SM,
                "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
                    {"connections_prefix": PREFIX, "endpoint_url": url, "region_name": "us-east-1"}
                ),
                "BENCH_IDS": json.dumps(ids),
            }
        )
        result = subprocess.run(
            [str(python), "-c", AIRFLOW_WORKER], env=env, capture_output=True, text=True, timeout=900
        )
    if result.returncode != 0:
        raise SystemExit(f"Airflow run failed (exit {result.returncode}): {result.stderr[-2000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    return summary("Airflow 3.3.2 SecretsManagerBackend", data["total"], data["latencies"], data["calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="distinct connections (default 1000)")
    parser.add_argument("--airflow-python", type=Path, default=DEFAULT_AIRFLOW_PYTHON)
    parser.add_argument("--no-airflow", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    ids = [f"bench_conn_{i:05d}" for i in range(args.n)]
    proc, url = start_moto()
    results: list[dict[str, Any]] = []
    try:
        t = time.perf_counter()
        seed(url, ids)
        print(f"seeded {args.n} secrets in {time.perf_counter() - t:.1f} s on {url}", file=sys.stderr)
        for mode in ("none", "ids", "prefix"):
            results.extend(run_credpath(url, ids, mode))
        if not args.no_airflow:
            if args.airflow_python.exists():
                results.append(run_airflow(args.airflow_python, url, ids))
            else:
                print(f"Airflow skipped: {args.airflow_python} not found", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'variant':45} {'total s':>9} {'median ms':>10} {'p99 ms':>9} {'API calls':>10}  calls")
    for r in results:
        print(
            f"{r['variant']:45} {r['total_s']:9.3f} {r['median_ms']:10.3f} {r['p99_ms']:9.3f} "
            f"{r['api_calls']:10d}  {r['calls']}"
        )


if __name__ == "__main__":
    main()
