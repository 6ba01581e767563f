"""Cost of a leased database credential per task, side by side with a static secret read.

Starts a private PostgreSQL and an OpenBao dev server (the test tier's fixtures), connects OpenBao's database
engine to PostgreSQL, then measures, over ``--rounds`` rounds, the store requests and milliseconds of:

- a static read: ``vault`` backend, one KV v2 connection (no cache);
- mint: ``vault-database``, ``database/creds/<role>`` (OpenBao creates a PostgreSQL user);
- renew: ``sys/leases/renew``;
- revoke: ``sys/leases/revoke`` (OpenBao drops the user).

With ``--processes N`` it also runs N processes that each ``get_connection("pg_reporting")`` and ``SELECT
current_user``, and reports distinct users, the users and leases left after they exit, and the wall time.

With ``--share-processes N`` it runs N processes that each hold the connection for ``--hold`` seconds (past
two thirds of a 6 s TTL: one renewal due), once with ``share = "process"`` (the default) and once with
``share = "node"`` (one CREDPATH_HOME, file tier), and counts the mint, renew and revoke requests at a proxy
in front of OpenBao.

    .venv/bin/python bench/leases.py --rounds 30 --processes 50
    .venv/bin/python bench/leases.py --rounds 1 --share-processes 20
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _fixture(fixture: Any) -> Any:
    """The generator behind a pytest fixture (benchmarks reuse the test tier's servers)."""
    wrapped = getattr(fixture, "_get_wrapped_function", None)
    return wrapped() if wrapped else fixture.__pytest_wrapped__.obj


class Counting:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.n += 1


def measure(label: str, func: Any, count: Callable[[], int], rounds: int) -> dict[str, Any]:
    times, requests = [], []
    for _ in range(rounds):
        before = count()
        started = time.perf_counter()
        func()
        times.append((time.perf_counter() - started) * 1000)
        requests.append(count() - before)
    return {
        "operation": label,
        "requests": statistics.median(requests),
        "median_ms": round(statistics.median(times), 2),
        "p90_ms": round(sorted(times)[int(len(times) * 0.9) - 1], 2),
    }


WORKER = """
import psycopg, credpath
conn = credpath.get_connection("pg_reporting")
with psycopg.connect(host=conn.host, port=conn.port, user=conn.login, password=conn.password,
                     dbname=conn.schema, connect_timeout=30) as db:
    print(db.execute("SELECT current_user").fetchone()[0], flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--processes", type=int, default=0)
    parser.add_argument("--share-processes", type=int, default=0)
    parser.add_argument("--hold", type=float, default=5.0)
    args = parser.parse_args()

    from tests.servers import postgres
    from tests.servers._util import stop_process
    from tests.servers.openbao import _start
    from tests.servers.openbao_database import mount_database

    from credpath.backends.vault import VaultBackend
    from credpath.backends.vault_database import VaultDatabaseBackend

    pg_gen = _fixture(postgres.postgres_server)()
    pg = next(pg_gen)
    with tempfile.TemporaryDirectory() as tmp:
        server = _start(Path(tmp))
        try:
            engine = mount_database(server, pg, default_ttl=60, max_ttl=600)
            server.put(
                "secret", 2, "connections/pg_static", {"conn_uri": "postgres://u:pw@127.0.0.1:5432/db"}
            )
            static = VaultBackend(url=server.addr, token=server.root_token)
            leased = VaultDatabaseBackend(**engine.backend_kwargs())
            counter = Counting()
            for backend in (static, leased):
                hooks = backend.http_session.hooks["response"]
                if counter not in hooks:  # equal Vault settings share one session
                    hooks.append(counter)
            static.get_connection("pg_static")  # log-in and session set-up out of the figures
            key = leased.lease_key_prefix + "pg_reporting"
            minted: list[Any] = []
            ids: list[str] = []
            operations = [
                ("static read (vault KV v2)", lambda: static.get_connection("pg_static")),
                ("mint (database/creds)", lambda: minted.append(leased.mint(key))),
                ("renew (sys/leases/renew)", lambda: leased.renew(minted[0].lease_id, 60)),
                ("revoke (sys/leases/revoke)", lambda: leased.revoke(ids.pop())),
            ]
            rows = []
            for label, func in operations:
                if label.startswith("revoke"):
                    ids.extend(m.lease_id for m in minted)
                rows.append(measure(label, func, lambda: counter.n, args.rounds))
            rows += measure_sts(Path(tmp), args.rounds)
            print("| operation | store requests | median ms | p90 ms |\n|---|---|---|---|")
            for row in rows:
                print(f"| {row['operation']} | {row['requests']:g} | {row['median_ms']} | {row['p90_ms']} |")
            if args.processes:
                print(json.dumps(run_processes(engine, args.processes, tmp)))
            if args.share_processes:
                engine.create_role("shortlived", default_ttl=6, max_ttl=600)
                print(
                    "| share | processes | distinct users | mint | renew | revoke | all requests | wall s |"
                )
                print("|---|---|---|---|---|---|---|---|")
                for share in ("process", "node"):
                    row = run_sharing(engine, args.share_processes, args.hold, Path(tmp), share)
                    print(
                        f"| {share} | {row['processes']} | {row['distinct_users']} | {row['mint']} | "
                        f"{row['renew']} | {row['revoke']} | {row['requests']} | {row['wall_s']} |"
                    )
        finally:
            stop_process(server.proc)
            try:
                next(pg_gen)
            except StopIteration:
                pass


def measure_sts(tmp: Path, rounds: int) -> list[dict[str, Any]]:
    """AssumeRole against a moto server (its latency is moto's, not AWS's: the request count is the point)."""
    from tests.servers._util import free_port, stop_process
    from tests.servers.moto import start_moto

    from credpath.backends.aws_sts import AwsStsBackend

    port = free_port()
    proc = start_moto(port, tmp / "moto.log")
    saved = {
        k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_STS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    os.environ.update(
        AWS_ENDPOINT_URL_STS=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
    )
    try:
        backend = AwsStsBackend(
            leases={"aws_reporting": "arn:aws:iam::123456789012:role/reporting"}, region_name="us-east-1"
        )
        backend.prepare()
        key = backend.lease_key_prefix + "aws_reporting"
        backend.mint(key)  # client set-up out of the figures
        calls = backend.aws.calls  # API calls by operation name
        return [
            measure(
                "mint (STS AssumeRole, moto)", lambda: backend.mint(key), lambda: sum(calls.values()), rounds
            )
        ]
    finally:
        stop_process(proc)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_processes(engine: Any, n: int, tmp: str) -> dict[str, Any]:
    config = Path(tmp, "credpath.toml")
    entry = engine.template()
    config.write_text(
        '[[backends]]\ntype = "vault-database"\n[backends.kwargs]\n'
        f'url = "{engine.server.addr}"\ntoken = "{engine.server.root_token}"\n'
        "[backends.kwargs.leases.pg_reporting]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
    )
    env = dict(os.environ, CREDPATH_CONFIG=str(config), PYTHONPATH=str(ROOT / "src"))
    started = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    users = [p.communicate(timeout=300)[0].strip() for p in procs]
    wall = time.perf_counter() - started
    return {
        "processes": n,
        "ok": sum(p.returncode == 0 for p in procs),
        "distinct_users": len(set(users)),
        "users_left": len(set(users) & engine.pg_users()),
        "leases_left": len(engine.leases()),
        "wall_s": round(wall, 2),
    }


SHARING_WORKER = """
import sys, time, credpath
conn = credpath.get_connection("pg_reporting")
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    credpath.get_connection("pg_reporting")
    time.sleep(0.2)
print(conn.login, flush=True)
"""


def run_sharing(engine: Any, n: int, hold: float, tmp: Path, share: str) -> dict[str, Any]:
    """N processes holding the connection ``hold`` seconds; OpenBao requests counted at a proxy."""
    from urllib.parse import urlsplit

    from tests.servers.faults import FaultProxy

    address = urlsplit(engine.server.addr)
    proxy = FaultProxy(address.hostname or "127.0.0.1", address.port or 8200)
    home = tmp / f"share-{share}"
    config = tmp / f"credpath-{share}.toml"
    entry = {**engine.template(role="shortlived"), "share": share}
    config.write_text(
        '[cache]\nshared = "file"\n[[backends]]\ntype = "vault-database"\n[backends.kwargs]\n'
        f'url = "{proxy.url}"\ntoken = "{engine.server.root_token}"\n'
        "[backends.kwargs.leases.pg_reporting]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
    )
    env = dict(os.environ, CREDPATH_CONFIG=str(config), CREDPATH_HOME=str(home), PYTHONPATH=str(ROOT / "src"))
    try:
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", SHARING_WORKER, str(hold)], env=env, stdout=subprocess.PIPE, text=True
            )
            for _ in range(n)
        ]
        users = [p.communicate(timeout=300)[0].strip() for p in procs]
        wall = time.perf_counter() - started
        return {
            "processes": n,
            "distinct_users": len(set(users)),
            "mint": proxy.count(r"/v1/[^/]+/creds/"),
            "renew": proxy.count("sys/leases/renew"),
            "revoke": proxy.count("sys/leases/revoke"),
            "requests": proxy.count(),
            "wall_s": round(wall, 2),
        }
    finally:
        proxy.stop()


if __name__ == "__main__":
    main()
