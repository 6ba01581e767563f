"""Migration throughput: N connections from a SQLite metastore into OpenBao and into moto's Secrets Manager.

    .venv/bin/python bench/migrate_throughput.py [--n 10000] [--n-aws N] [--concurrency 8] [--rounds 1]

Starts an OpenBao dev server and a moto server on loopback (the test fixtures' start code), bulk-loads N
connections into a fresh SQLite metastore, then, side by side in one run (interleaved per round, each into
a fresh prefix): ``credpath._migrate`` verifying by reading every row back (``--verify read``, what the old
code always did), verifying by the store's write confirmation (``--verify confirm``, the default), and the
obvious hand-written loop at the same concurrency (hvac / boto3, one write per row, no verification).
Requests are counted on the client side (OpenBao: HTTP requests at urllib3's pool, which requests
sends through and credpath's Vault session calls directly; AWS: botocore operations). Prints rows/s and
requests; no secret value is printed.
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
from concurrent.futures import ThreadPoolExecutor
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


VARIANTS = ("credpath --verify read (old)", "credpath --verify confirm (new)", "hand-written loop")


def timed_variant(
    source: Any, variant: str, make_destination: Any, loop: Any, count_calls: Any, concurrency: int
) -> dict[str, Any]:
    """One first run (everything added) of ``variant`` into a fresh prefix of the destination."""
    from credpath._migrate import migrate

    destination = make_destination()
    before = count_calls(destination)
    started = time.perf_counter()
    if variant == VARIANTS[2]:
        rows = loop(source, destination, concurrency)
        verified, failed, confirmed = 0, 0, 0
    else:
        verify = "read" if "read" in variant else "confirm"
        report = migrate(source, destination, concurrency=concurrency, variables=False, verify=verify)
        summary = report.summary()
        rows, verified, failed, confirmed = (
            summary["total"],
            summary["verified"],
            summary["failed"],
            report.confirmed,
        )
    seconds = time.perf_counter() - started
    calls = count_calls(destination) - before
    destination.close()
    return {
        "variant": variant,
        "rows": rows,
        "verified": verified,
        "confirmed": confirmed,
        "failed": failed,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds, 1),
        "requests": calls,
        "by_operation": dict(getattr(destination, "_bench_ops", Counter())),
    }


def source_values(source: Any) -> dict[str, Any]:
    """What a hand-written loop reads first: the source's listing and its values in batches."""
    from credpath import _reading as reading

    ids = source.list_connections()
    return reading.read_many(source, "connection", ids, chunk=reading.READ_CHUNK)


def bench_vault(source: Any, tmp: Path, concurrency: int, rounds: int) -> list[dict[str, Any]]:
    import hvac
    import requests
    import urllib3.connectionpool

    from credpath.backends.vault import VaultBackend

    server = start_openbao(tmp / "openbao")
    counter = {"n": 0}
    ops: Counter[str] = Counter()
    run = {"n": 0}
    pool_class = urllib3.connectionpool.HTTPConnectionPool
    urlopen = pool_class.urlopen

    def counting(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        # Every request of both sides, at the pool (no response hooks: they would cost CPU of their own).
        counter["n"] += 1
        ops[method] += 1
        return urlopen(self, method, *args, **kwargs)

    pool_class.urlopen = counting  # type: ignore[method-assign]

    def make() -> Any:
        run["n"] += 1
        backend = VaultBackend(
            url=server.addr, token=server.root_token, connections_path=f"run{run['n']}/connections"
        )
        ops.clear()
        backend._bench_ops = ops  # type: ignore[attr-defined]
        return backend

    def loop(source: Any, destination: Any, concurrency: int) -> int:
        # The obvious hvac loop: one client (a pooled requests session), N threads, one write per row.
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, concurrency))
        session.mount("http://", adapter)
        client = hvac.Client(url=server.addr, token=server.root_token, session=session)
        values = source_values(source)
        prefix = destination.settings.connections_path

        def write(item: tuple[str, Any]) -> None:
            conn_id, conn = item
            client.secrets.kv.v2.create_or_update_secret(
                path=f"{prefix}/{conn_id}",
                secret=conn.to_dict(include_conn_id=False, prune_empty=True),
                mount_point="secret",
            )

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(write, values.items()))
        return len(values)

    try:
        return [
            timed_variant(source, variant, make, loop, lambda _: counter["n"], concurrency)
            for _ in range(rounds)
            for variant in VARIANTS
        ]
    finally:
        pool_class.urlopen = urlopen  # type: ignore[method-assign]
        stop_process(server.proc)


def bench_secrets_manager(source: Any, tmp: Path, concurrency: int, rounds: int) -> list[dict[str, Any]]:
    import boto3
    from botocore.config import Config

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
    url = f"http://127.0.0.1:{port}"
    run = {"n": 0}
    loop_calls: Counter[str] = Counter()

    def make() -> Any:
        run["n"] += 1
        backend = SecretsManagerBackend(
            endpoint_url=url, region_name="us-east-1", connections_prefix=f"run{run['n']}/connections"
        )
        backend._bench_ops = backend.aws.calls  # type: ignore[attr-defined]
        return backend

    def loop(source: Any, destination: Any, concurrency: int) -> int:
        # The obvious boto3 loop: one client (thread-safe), N threads, CreateSecret per row.
        client = boto3.client(
            "secretsmanager",
            endpoint_url=url,
            region_name="us-east-1",
            # moto answers an occasional 500 under concurrent writes: retried, as credpath's client does
            config=Config(
                max_pool_connections=max(10, concurrency), retries={"max_attempts": 5, "mode": "standard"}
            ),
        )
        client.meta.events.register("before-send", lambda **_: loop_calls.update(["CreateSecret"]))
        values = source_values(source)
        prefix = f"run{run['n']}/connections"

        def write(item: tuple[str, Any]) -> None:
            conn_id, conn = item
            for attempt in range(10):  # moto's occasional 500 outlasts botocore's own retries
                try:
                    client.create_secret(Name=f"{prefix}/{conn_id}", SecretString=conn.to_json())
                    return
                except client.exceptions.ClientError as exc:
                    if exc.response["ResponseMetadata"]["HTTPStatusCode"] != 500 or attempt == 9:
                        raise
                    time.sleep(0.05 * (attempt + 1))

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(write, values.items()))
        return len(values)

    def count(backend: Any) -> int:
        return sum(backend.aws.calls.values()) + sum(loop_calls.values())

    try:
        wait_for_port(port, timeout=30, proc=proc)
        return [
            timed_variant(source, variant, make, loop, count, concurrency)
            for _ in range(rounds)
            for variant in VARIANTS
        ]
    finally:
        stop_process(proc)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n-aws", type=int, default=None, help="rows into moto (default: --n)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the three variants")
    parser.add_argument("--only", choices=["vault", "aws"], default=None)
    args = parser.parse_args()
    from cryptography.fernet import Fernet

    with tempfile.TemporaryDirectory(prefix="credpath-bench-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["CREDPATH_HOME"] = str(tmp / "home")
        if args.only in (None, "vault"):
            source = seed_metastore(f"sqlite:///{tmp / 'source.db'}", Fernet.generate_key().decode(), args.n)
            show(
                args,
                [("OpenBao (KV v2)", r) for r in bench_vault(source, tmp, args.concurrency, args.rounds)],
            )
        if args.only in (None, "aws"):
            n = args.n_aws or args.n
            source = seed_metastore(f"sqlite:///{tmp / 'source-aws.db'}", Fernet.generate_key().decode(), n)
            rows = bench_secrets_manager(source, tmp, args.concurrency, args.rounds)
            show(args, [("moto Secrets Manager", r) for r in rows])


def show(args: Any, rows: list[tuple[str, dict[str, Any]]]) -> None:
    load = os.getloadavg()
    print(
        f"\nconcurrency {args.concurrency}, {os.cpu_count()} CPU(s), servers on loopback, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    header = (
        f"{'destination':22} {'variant':32} {'rows':>6} {'s':>7} {'rows/s':>7} {'requests':>8} "
        f"{'verified':>8} {'by confirmation':>15}"
    )
    print(header)
    print("-" * len(header))
    for dest, r in rows:
        print(
            f"{dest:22} {r['variant']:32} {r['rows']:>6} {r['seconds']:>7} {r['rows_per_s']:>7} "
            f"{r['requests']:>8} {r['verified']:>8} {r['confirmed']:>15}"
        )
    print()
    for dest, r in rows:
        print(f"{dest} / {r['variant']}: {json.dumps(r['by_operation'])}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
