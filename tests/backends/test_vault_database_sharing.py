"""vault-database with ``share``: one database user per node (file tier) or deployment (Redis), one renewer.

Real OpenBao (dev server) with its database engine on the test PostgreSQL, requests counted at a fault proxy
in front of OpenBao, real processes sharing a CREDPATH_HOME (node) or a Redis server (deployment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from credpath import _lease_sharing
from tests.conftest import assert_no_secret
from tests.servers.openbao_database import DatabaseEngine

REPO = Path(__file__).resolve().parents[2]

# Looks the connection up every 0.2 s for argv[1] seconds after its first lookup, logs in every second, and
# reports one JSON line per look: the user, whether this process renews the shared lease, whether the last
# log-in worked.
WORKER = textwrap.dedent(
    """
    import json, sys, time
    import psycopg
    import credpath
    from credpath import _lease_sharing, _leases

    credpath.get_connection("pg_reporting")  # start-up (slow on a loaded machine) not in the time below
    end = time.monotonic() + float(sys.argv[1])
    next_login, ok = 0.0, None
    while True:
        conn = credpath.get_connection("pg_reporting")
        if time.monotonic() >= next_login:
            next_login = time.monotonic() + 1.0
            try:
                with psycopg.connect(host=conn.host, port=conn.port, user=conn.login, password=conn.password,
                                     dbname=conn.schema, connect_timeout=10) as db:
                    ok = db.execute("SELECT current_user").fetchone()[0] == conn.login
            except Exception as exc:
                ok = False
        renewer = any(h.renewer for h in _lease_sharing.manager()._held.values())
        print(json.dumps({"user": conn.login, "renewer": renewer, "login": ok, "t": time.time(),
                          "counts": _leases.counts()}), flush=True)
        if time.monotonic() >= end:
            break
        time.sleep(0.2)
    """
)


def _config(
    tmp_path: Path, kwargs: dict[str, Any], shared: str, share: str, home: str = "home"
) -> dict[str, str]:
    path = tmp_path / f"credpath-{home}.toml"
    entry = {**kwargs["leases"]["pg_reporting"], "share": share}
    path.write_text(
        "[cache]\n"
        f"shared = {json.dumps(shared)}\n"
        + (f"shared_key = {json.dumps(_KEY)}\n" if shared != "file" else "")
        + '[[backends]]\ntype = "vault-database"\nname = "leases"\n[backends.kwargs]\n'
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in kwargs.items() if key != "leases")
        + "[backends.kwargs.leases.pg_reporting]\n"
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in entry.items())
    )
    env = dict(os.environ, CREDPATH_CONFIG=str(path), CREDPATH_HOME=str(tmp_path / home))
    env["PYTHONPATH"] = str(REPO / "src")
    return env


_KEY = "Y3JlZHBhdGgtdGVzdC1zaGFyZWQtbGVhc2Uta2V5LTE="  # a Fernet key (32 bytes, urlsafe base64)


class Worker:
    """A worker process and its report lines, read as they come."""

    def __init__(self, env: dict[str, str], seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(seconds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def finish(self, timeout: float = 120) -> None:
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()


def _proxied(engine: DatabaseEngine, fault_proxy: Any) -> tuple[Any, dict[str, Any]]:
    address = urlsplit(engine.server.addr)
    proxy = fault_proxy(address.hostname, address.port)
    return proxy, engine.backend_kwargs(url=proxy.url)


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _join_in_process(env: dict[str, str]) -> tuple[Any, Any]:
    """This test process as one more user: the search path and the connection (its password known here)."""
    from credpath._search_path import SearchPath

    saved = os.environ.get("CREDPATH_HOME")
    os.environ["CREDPATH_HOME"] = env["CREDPATH_HOME"]
    try:
        path = SearchPath.from_config(env["CREDPATH_CONFIG"], env={"CREDPATH_HOME": env["CREDPATH_HOME"]})
        return path, path.get_connection("pg_reporting")
    finally:
        if saved is None:
            os.environ.pop("CREDPATH_HOME", None)
        else:
            os.environ["CREDPATH_HOME"] = saved


def test_processes_on_a_node_share_one_user_and_one_renewer(
    openbao_database: DatabaseEngine, fault_proxy: Any, tmp_path: Path
) -> None:
    engine = openbao_database
    proxy, kwargs = _proxied(engine, fault_proxy)
    env = _config(tmp_path, kwargs, "file", "node")
    workers = [Worker(env, 9.0) for _ in range(8)]  # past 2/3 of the 10 s TTL: one renewal at least
    for worker in workers:
        worker.finish()
        assert worker.proc.returncode == 0, worker.err[-2000:]
        assert_no_secret(worker.err)
    users = {line["user"] for worker in workers for line in worker.lines}
    assert len(users) == 1 and next(iter(users)).startswith("v-")
    assert all(line["login"] for worker in workers for line in worker.lines if line["login"] is not None)
    # One lease minted for the node, counted at OpenBao's door; renewed by exactly one process.
    assert proxy.count(r"/v1/[^/]+/creds/") == 1
    assert len(engine.leases()) == 1
    renewers = [w for w in workers if w.lines[-1]["counts"]["renewed"] > 0]
    assert len(renewers) == 1, [
        (w.lines[0]["t"], w.lines[-1]["t"], w.lines[-1]["counts"], w.lines[-1]["renewer"]) for w in workers
    ]
    assert proxy.count("sys/leases/renew") == renewers[0].lines[-1]["counts"]["renewed"] >= 1
    # Not revoked when its users exit: the lease and its user stay until the TTL ends it.
    assert proxy.count("sys/leases/revoke") == 0
    assert users <= engine.pg_users()
    # The record at rest holds no clear secret (this process joins as a user to learn the password).
    path, conn = _join_in_process(env)
    try:
        assert conn.login in users
        files = list((tmp_path / "home" / "cache").iterdir())
        raw = b"".join(f.read_bytes() for f in files if f.is_file())
        assert raw and conn.password.encode() not in raw and conn.login.encode() not in raw
    finally:
        path.entries[0].backend.revoke_leases()
    assert len(engine.leases()) == 1  # released, never revoked


def test_a_killed_renewer_is_taken_over_and_the_credential_outlives_its_ttl(
    openbao_database: DatabaseEngine, fault_proxy: Any, tmp_path: Path
) -> None:
    engine = openbao_database
    proxy, kwargs = _proxied(engine, fault_proxy)
    env = _config(tmp_path, kwargs, "file", "node")
    workers = [Worker(env, 22.0) for _ in range(4)]
    assert _wait(lambda: any(w.lines and w.lines[-1]["renewer"] for w in workers), 30)
    minted_at = min(w.lines[0]["t"] for w in workers if w.lines)
    (renewer,) = [w for w in workers if w.lines and w.lines[-1]["renewer"]]
    others = [w for w in workers if w is not renewer]
    os.kill(renewer.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    # Another process takes over within a bounded time (a heartbeat, plus a look).
    assert _wait(lambda: any(w.lines and w.lines[-1]["renewer"] for w in others), 10)
    took = time.monotonic() - killed
    print(f"takeover after the SIGKILL: {took:.2f} s")
    assert took < _lease_sharing.heartbeat(engine.default_ttl) + 3.0
    for worker in others:
        worker.finish()
        assert worker.proc.returncode == 0, worker.err[-2000:]
        assert_no_secret(worker.err)
    renewer.finish()
    # The credential kept working past the original TTL: the same user, logging in, still one lease.
    late = [
        line
        for w in others
        for line in w.lines
        if line["t"] > minted_at + engine.default_ttl + 2 and line["login"]
    ]
    assert late, "no log-in past the original TTL"
    assert {line["user"] for w in workers for line in w.lines} == {late[0]["user"]}
    assert all(line["login"] is not False for w in others for line in w.lines)
    assert proxy.count(r"/v1/[^/]+/creds/") == 1 and len(engine.leases()) == 1
    assert proxy.count("sys/leases/renew") >= 2  # renewed by the first renewer and by its successor


def test_homes_on_one_redis_share_one_user_per_deployment(
    openbao_database: DatabaseEngine, fault_proxy: Any, tmp_path: Path, redis_url: str
) -> None:
    engine = openbao_database
    proxy, kwargs = _proxied(engine, fault_proxy)
    envs = [_config(tmp_path, kwargs, redis_url, "deployment", home=f"node{i}") for i in (1, 2)]
    workers = [Worker(env, 2.0) for env in envs for _ in range(2)]
    for worker in workers:
        worker.finish()
        assert worker.proc.returncode == 0, worker.err[-2000:]
    users = {line["user"] for worker in workers for line in worker.lines}
    assert len(users) == 1 and proxy.count(r"/v1/[^/]+/creds/") == 1 and len(engine.leases()) == 1
    path, conn = _join_in_process(envs[0])
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        keys = [k for k in client.scan_iter("credpath:*") if client.type(k) == b"string"]
        values = b"".join(cast("bytes", client.get(k) or b"") for k in keys)
        assert values and conn.password.encode() not in values and conn.login.encode() not in values
    finally:
        path.entries[0].backend.revoke_leases()
    assert proxy.count(r"/v1/[^/]+/creds/") == 1  # the test process joined the same lease


def test_the_airflow_listener_never_revokes_a_shared_lease(
    openbao_database: DatabaseEngine, tmp_path: Path
) -> None:
    from credpath import _airflow_leases

    engine = openbao_database
    env = _config(tmp_path, engine.backend_kwargs(), "file", "node")
    path, conn = _join_in_process(env)
    try:
        assert len(engine.leases()) == 1
        shown = path.entries[0].backend.lease_detail("pg_reporting") or ""
        assert "shared=node renewer=own" in shown and "ttl_left=" in shown
        assert_no_secret(shown, conn.password, conn.login)
        _airflow_leases.on_task_instance_success(None, task_instance=type("TI", (), {"task_id": "t"})())
        assert len(engine.leases()) == 1 and conn.login in engine.pg_users()  # still there for others
        assert _lease_sharing.manager().keys() == []  # this task stopped using it
    finally:
        path.entries[0].backend.revoke_leases()


@pytest.mark.parametrize(
    ("share", "shared", "expected"),
    [
        ("cluster", "file", "leases.pg_reporting.share must be 'process' (default), 'node' or 'deployment'"),
        ("deployment", "file", "share = 'deployment' needs a Redis tier"),
    ],
)
def test_cli_exits_2_on_a_bad_share(
    openbao_database: DatabaseEngine, tmp_path: Path, share: str, shared: str, expected: str
) -> None:
    env = _config(tmp_path, openbao_database.backend_kwargs(), shared, share)
    result = subprocess.run(
        [sys.executable, "-m", "credpath", "connections", "get", "pg_reporting"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert openbao_database.leases() == []  # nothing minted


@pytest.mark.airflow
def test_airflow_tasks_share_one_user_per_node_and_task_ends_revoke_nothing(
    airflow: Any, airflow_api_server: Any, openbao_database: DatabaseEngine, tmp_path: Path
) -> None:
    from tests.backends.test_vault_database import run_leases_dag

    shared = f"file:{tmp_path / 'node' / 'shared.db'}"
    env = _config(tmp_path, openbao_database.backend_kwargs(), shared, "node")
    # Three tasks and a failing one; done when each has looked its connection up.
    texts = run_leases_dag(
        airflow,
        Path(env["CREDPATH_CONFIG"]),
        {"CREDPATH_HOME": env["CREDPATH_HOME"]},
        3,
        "lease user: ",
        dag_id="credpath_shared_leases_example",
    )
    assert_no_secret("\n".join(texts))
    users = {
        line.split("lease user: ", 1)[1].split('"', 1)[0].strip()
        for line in "\n".join(texts).splitlines()
        if "lease user: " in line
    }
    assert len(users) == 1 and next(iter(users)).startswith("v-")  # one database user for the node
    # No task end (success or failure) revoked it: the lease and its user remain until the TTL ends them.
    assert not any("lease(s) of task" in text for text in texts)
    assert len(openbao_database.leases()) == 1 and users <= openbao_database.pg_users()
