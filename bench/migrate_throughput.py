"""Migration throughput: N connections from a SQLite metastore into OpenBao and into moto's Secrets Manager.

    .venv/bin/python bench/migrate_throughput.py [--n 10000] [--concurrency 8]

Starts an OpenBao dev server and a moto server on loopback (the test fixtures' start code), bulk-loads N
connections into a fresh SQLite metastore, then runs ``credpath._migrate`` into each destination twice: the
first run adds everything (plan, concurrent writes, read-back verification), the second finds everything
unchanged. API calls are counted on the client side (OpenBao: HTTP requests on the backend's session;
AWS: botocore operations). Prints entries/s and API calls per entry; no secret value is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers._util import free_port, stop_process, wait_for_port  # noqa: E402
from tests.servers.openbao import _start as start_openbao  # noqa: E402


def seed_metastore(url: str, key: str, n: int) -> Any:
    from cryptography.fernet import Fernet  # noqa: F401 - fail early if missing
    from sqlalchemy import insert

    from credpath.backends.metastore import MetastoreBackend, tables
    from credpath.model import Connection

    backend = MetastoreBackend(url=url, fernet_key=key)
    rows = []
    for i in range(n):
        conn = Connection(
            conn_id=f"conn_{i:05d}",
            conn_type="postgres",
            description=f"database {i}",
            host=f"db{i}.example.com",
            login="etl",
            password=f"pw-s3cr3t-{i}",
            schema="analytics",
            port=5432,
            extra=json.dumps({"sslmode": "require", "connect_timeout": "10"}),
        )
        rows.append({"conn_id": conn.conn_id, **backend._connection_values(conn)})
    with backend.engine.begin() as db:  # one bulk INSERT: seeding is not what is measured
        db.execute(insert(tables()["connection"]), rows)
    return backend


def run_twice(source: Any, make_destination: Any, count_calls: Any, concurrency: int) -> list[dict[str, Any]]:
    from credpath._migrate import migrate

    results = []
    for label in ("first run (add)", "second run (unchanged)"):
        destination = make_destination()
        before = count_calls(destination)
        started = time.perf_counter()
        report = migrate(source, destination, concurrency=concurrency, variables=False)
        seconds = time.perf_counter() - started
        calls = count_calls(destination) - before
        summary = report.summary()
        entries = len(report.plan.items)
        results.append(
            {
                "run": label,
                "entries": entries,
                "added": summary["added"],
                "unchanged": summary["unchanged"],
                "verified": summary["verified"],
                "failed": summary["failed"],
                "seconds": round(seconds, 2),
                "plan_s": round(report.plan.seconds, 2),
                "entries_per_s": round(entries / seconds, 1),
                "api_calls": calls,
                "calls_per_entry": round(calls / entries, 3),
                "by_operation": dict(getattr(destination, "_bench_ops", Counter())),
            }
        )
        destination.close()
    return results


def bench_vault(source: Any, tmp: Path, concurrency: int) -> list[dict[str, Any]]:
    from credpath.backends.vault import VaultBackend

    server = start_openbao(tmp / "openbao")
    counter = {"n": 0}
    ops: Counter[str] = Counter()

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        counter["n"] += 1
        ops[response.request.method] += 1

    try:

        def make() -> Any:
            backend = VaultBackend(url=server.addr, token=server.root_token)
            hooks = backend.http_session.hooks["response"]
            if hook not in hooks:
                hooks.append(hook)
            ops.clear()
            backend._bench_ops = ops  # type: ignore[attr-defined]
            return backend

        return run_twice(source, make, lambda _: counter["n"], concurrency)
    finally:
        stop_process(server.proc)


def bench_secrets_manager(source: Any, tmp: Path, concurrency: int) -> list[dict[str, Any]]:
    from credpath.backends.aws_secrets_manager import SecretsManagerBackend

    binary = Path(sys.executable).parent / "moto_server"
    port = free_port()
    log = (tmp / "moto.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        wait_for_port(port, timeout=30, proc=proc)

        def make() -> Any:
            backend = SecretsManagerBackend(endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
            backend._bench_ops = backend.aws.calls  # type: ignore[attr-defined]
            return backend

        return run_twice(source, make, lambda b: sum(b.aws.calls.values()), concurrency)
    finally:
        stop_process(proc)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--only", choices=["vault", "aws"], default=None)
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    with tempfile.TemporaryDirectory(prefix="credpath-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["CREDPATH_HOME"] = str(tmp / "home")
        started = time.perf_counter()
        source = seed_metastore(f"sqlite:///{tmp / 'source.db'}", Fernet.generate_key().decode(), args.n)
        print(f"seeded {args.n} connections in {time.perf_counter() - started:.1f} s (SQLite metastore)")
        rows = []
        if args.only in (None, "vault"):
            rows += [("OpenBao (KV v2)", r) for r in bench_vault(source, tmp, args.concurrency)]
        if args.only in (None, "aws"):
            rows += [
                ("moto Secrets Manager", r) for r in bench_secrets_manager(source, tmp, args.concurrency)
            ]
        print(f"\nconcurrency {args.concurrency}, {os.cpu_count()} CPU(s), servers on loopback\n")
        header = (
            f"{'destination':22} {'run':24} {'entries':>7} {'s':>7} {'entries/s':>9} {'calls':>7} "
            f"{'calls/entry':>11}"
        )
        print(header)
        print("-" * len(header))
        for dest, r in rows:
            print(
                f"{dest:22} {r['run']:24} {r['entries']:>7} {r['seconds']:>7} {r['entries_per_s']:>9} "
                f"{r['api_calls']:>7} {r['calls_per_entry']:>11}"
            )
        print()
        details = ("added", "unchanged", "verified", "failed", "plan_s", "by_operation")
        for dest, r in rows:
            print(f"{dest} / {r['run']}: {json.dumps({k: r[k] for k in details})}")


if __name__ == "__main__":
    main()
