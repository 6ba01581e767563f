"""vault-database: leased PostgreSQL users from OpenBao's database engine, one per process, none left.

Real OpenBao (dev server) with its database engine connected to the real PostgreSQL of the test tier; roles
with TTLs of a few seconds so expiry, renewal and re-minting happen within a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from credpath import _leases
from credpath.backends.vault_database import VaultDatabaseBackend
from credpath.errors import ConfigError
from tests.conftest import assert_no_secret
from tests.servers.openbao_database import DatabaseEngine, wait_until

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import sys, time
    import psycopg
    import credpath

    conn = credpath.get_connection("pg_reporting")
    with psycopg.connect(host=conn.host, port=conn.port, user=conn.login, password=conn.password,
                         dbname=conn.schema, connect_timeout=10) as db:
        user = db.execute("SELECT current_user").fetchone()[0]
    assert user == conn.login, (user, conn.login)
    print(user, flush=True)
    if len(sys.argv) > 1:
        time.sleep(float(sys.argv[1]))
    """
)


def _config(tmp_path: Path, kwargs: dict[str, Any]) -> dict[str, str]:
    """A credpath.toml with one vault-database backend; the environment that selects it."""
    path = tmp_path / "credpath.toml"
    path.write_text(
        '[[backends]]\ntype = "vault-database"\nname = "leases"\n[backends.kwargs]\n'
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in kwargs.items() if key != "leases")
        + "[backends.kwargs.leases.pg_reporting]\n"
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in kwargs["leases"]["pg_reporting"].items())
    )
    env = dict(os.environ, CREDPATH_CONFIG=str(path), CREDPATH_HOME=str(tmp_path / "home"))
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def _psql_login(conn: Any) -> str:
    import psycopg

    with psycopg.connect(
        host=conn.host,
        port=conn.port,
        user=conn.login,
        password=conn.password,
        dbname=conn.schema,
        connect_timeout=5,
    ) as db:
        return str(db.execute("SELECT current_user").fetchone()[0])


@pytest.fixture
def backends() -> Any:
    made: list[VaultDatabaseBackend] = []

    def make(**kwargs: Any) -> VaultDatabaseBackend:
        backend = VaultDatabaseBackend(**kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.revoke_leases()
        backend.close()


# --- processes ------------------------------------------------------------------------------------------


def test_ten_processes_get_ten_users_and_leave_nothing_behind(
    openbao_database: DatabaseEngine, tmp_path: Path
) -> None:
    engine = openbao_database
    env = _config(tmp_path, engine.backend_kwargs())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(10)
    ]
    users = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert_no_secret(out + err)
        users.append(out.strip())
    assert len(set(users)) == 10 and all(u.startswith("v-") for u in users)
    # Revoked at exit: no user in pg_roles, no lease in OpenBao (nothing was left to expire).
    assert not set(users) & engine.pg_users()
    assert engine.leases() == []


def test_a_killed_process_user_is_gone_within_the_lease_ttl(
    openbao_database: DatabaseEngine, tmp_path: Path
) -> None:
    engine = openbao_database
    env = _config(tmp_path, engine.backend_kwargs())
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    user = proc.stdout.readline().strip()
    assert user.startswith("v-"), proc.stderr.read() if proc.stderr else ""
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert user in engine.pg_users() and len(engine.leases()) == 1  # nothing revoked it
    # The lease (10 s default TTL, renewed at most once before the kill) expires and OpenBao drops the user.
    assert wait_until(lambda: user not in engine.pg_users(), timeout=2 * engine.default_ttl + 10)
    assert time.monotonic() - started < 2 * engine.default_ttl + 10
    assert engine.leases() == []


# --- renewal, re-minting, expiry --------------------------------------------------------------------------


def test_a_process_living_past_the_ttl_keeps_a_working_credential(
    openbao_database: DatabaseEngine, backends: Any
) -> None:
    engine = openbao_database
    engine.create_role("short", default_ttl=3, max_ttl=7)
    backend = backends(**engine.backend_kwargs(leases={"pg_reporting": engine.template(role="short")}))
    before = _leases.counts(backend.name)
    seen: set[str] = set()
    ended = time.monotonic() + 12  # past the max TTL: renewed, then re-minted
    while time.monotonic() < ended:
        conn = backend.get_connection("pg_reporting")
        assert conn is not None
        (lease,) = _leases.manager().leases(backend.lease_key_prefix)
        assert lease.left() > 0  # never an expired credential
        assert _psql_login(conn) == conn.login
        seen.add(conn.login or "")
        time.sleep(0.5)
    after = _leases.counts(backend.name)
    assert after["renewed"] - before["renewed"] >= 1
    assert after["minted"] - before["minted"] >= 2 and len(seen) >= 2  # re-minted at the max TTL
    assert after["expired"] == before["expired"]
    assert "renewals=" in backend.describe() and "ttl_left=" in backend.describe()
    detail = backend.lease_detail("pg_reporting")
    assert (
        detail is not None
        and detail.startswith(f"lease {engine.mount}/creds/short/")
        and "renewals=" in detail
    )
    assert backend.lease_detail("other") is None
    assert conn.password and conn.password not in backend.describe() + detail + repr(conn)
    assert backend.revoke_leases() >= 1
    assert wait_until(lambda: engine.leases("short") == [], timeout=10)


def test_openbao_down_during_renewal_keeps_the_credential_until_expiry(
    openbao_database: DatabaseEngine, backends: Any, fault_proxy: Any
) -> None:
    from urllib.parse import urlsplit

    engine = openbao_database
    engine.create_role("flaky", default_ttl=6, max_ttl=60)
    address = urlsplit(engine.server.addr)
    proxy = fault_proxy(address.hostname, address.port)
    backend = backends(
        **engine.backend_kwargs(
            url=proxy.url, timeout=1.0, leases={"pg_reporting": engine.template(role="flaky")}
        )
    )
    before = _leases.counts(backend.name)
    conn = backend.get_connection("pg_reporting")
    assert conn is not None
    proxy.add("status", path="sys/leases/renew", status=503)
    time.sleep(5.0)  # the renewal (due at 4 s) fails and is retried with back-off
    renew_requests = proxy.count("sys/leases/renew")
    assert renew_requests >= 1
    assert renew_requests <= 20  # back-off, not a storm: 4 tries per renewal call at most
    assert _psql_login(conn) == conn.login  # the credential still works until its expiry
    assert backend.get_connection("pg_reporting") is conn  # and is still the one handed out
    description = backend.describe()
    assert "renew_failures=" in description and "HTTP 503" in description
    assert _leases.counts(backend.name)["failed"] > before["failed"]
    time.sleep(1.5)  # past the 6 s TTL with OpenBao still failing renewals: the lease has lapsed
    fresh = backend.get_connection("pg_reporting")  # never handed out expired: a new one is minted
    assert fresh is not None and fresh.login != conn.login
    after = _leases.counts(backend.name)
    assert after["expired"] == before["expired"] + 1 and after["minted"] == before["minted"] + 2
    proxy.clear()
    assert _psql_login(fresh) == fresh.login


def test_a_static_role_gives_the_rotated_user(openbao_database: DatabaseEngine, backends: Any) -> None:
    import psycopg

    engine = openbao_database
    with psycopg.connect(engine.postgres.admin_url, autocommit=True) as db:
        db.execute('DROP ROLE IF EXISTS "static_reporter"')
        db.execute('CREATE ROLE "static_reporter" WITH LOGIN')
    engine.write(
        f"{engine.mount}/static-roles/static_reporting",
        {"db_name": "pg", "username": "static_reporter", "rotation_period": "3600"},
    )
    backend = backends(
        **engine.backend_kwargs(
            leases={"pg_reporting": engine.template(role="static_reporting", static=True)}
        )
    )
    conn = backend.get_connection("pg_reporting")
    assert conn is not None and conn.login == "static_reporter"
    assert _psql_login(conn) == "static_reporter"
    (lease,) = _leases.manager().leases(backend.lease_key_prefix)
    assert not lease.revocable and 3500 < lease.left() <= 3600  # good until Vault rotates it
    assert backend.revoke_leases() == 0  # a static user is rotated by Vault, never revoked


def test_airflow_backend_kwargs_express_a_lease_source(openbao_database: DatabaseEngine) -> None:
    from credpath.airflow import _CredpathBackendMixin

    engine = openbao_database
    spec = {"name": "leases", "type": "vault-database", "kwargs": engine.backend_kwargs()}
    backend = _CredpathBackendMixin(backends=json.dumps([spec]))  # type: ignore[arg-type]
    (entry,) = backend.search_path.entries
    assert isinstance(entry.backend, VaultDatabaseBackend) and not entry.cache_results
    conn = backend.search_path.get_connection("pg_reporting")
    assert conn is not None and _psql_login(conn) == conn.login
    assert entry.backend.revoke_leases() == 1
    assert engine.leases() == []


# --- bad input -------------------------------------------------------------------------------------------


def _one_line_config_error(backend: VaultDatabaseBackend, conn_id: str = "pg_reporting") -> str:
    with pytest.raises(ConfigError) as info:
        backend.get_connection(conn_id)
    message = str(info.value)
    assert "\n" not in message and "s3cr3t" not in message
    assert _leases.manager().leases(backend.lease_key_prefix) == []  # never a half-made connection
    return message


def test_unknown_role_is_one_line(openbao_database: DatabaseEngine, backends: Any) -> None:
    engine = openbao_database
    backend = backends(**engine.backend_kwargs(leases={"pg_reporting": engine.template(role="nope")}))
    assert "role 'nope' does not exist" in _one_line_config_error(backend)


def test_engine_not_mounted_is_one_line(openbao_database: DatabaseEngine, backends: Any) -> None:
    engine = openbao_database
    backend = backends(**engine.backend_kwargs(leases={"pg_reporting": engine.template(mount="nodb")}))
    assert "no database secrets engine is mounted at 'nodb'" in _one_line_config_error(backend)


def test_denied_policy_is_one_line(openbao_database: DatabaseEngine, backends: Any) -> None:
    engine = openbao_database
    engine.server.policy("no-db", 'path "secret/*" { capabilities = ["read"] }')
    token = engine.server.admin.auth.token.create(policies=["no-db"], ttl="10m")["auth"]["client_token"]
    backend = backends(**{**engine.backend_kwargs(), "token": token})
    assert "policy denies read" in _one_line_config_error(backend)


def test_template_missing_a_field_is_one_line(openbao_database: DatabaseEngine, backends: Any) -> None:
    engine = openbao_database
    kv = engine.server.enable_kv(2)
    try:
        engine.server.put(kv, 2, "connections/pg_reporting", {"conn_type": "postgres", "port": 5432})
        backend = backends(
            url=engine.server.addr,
            token=engine.server.root_token,
            mount_point=kv,
            leases={"pg_reporting": {"role": engine.role, "mount": engine.mount}},
        )
        assert "stored template is missing host" in _one_line_config_error(backend)
        # The stored template, once complete, is used: minted login/password fill it.
        engine.server.put(
            kv,
            2,
            "connections/pg_reporting",
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": engine.postgres.port,
                "schema": "postgres",
            },
        )
        conn = backend.get_connection("pg_reporting")
        assert conn is not None and _psql_login(conn) == conn.login
    finally:
        engine.server.disable(kv)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"role": "r", "conn_type": "postgres"}, "template is missing host"),
        (
            {"role": "r", "conn_type": "postgres", "host": "h", "password": "pw-s3cr3t-x"},
            "the lease mints them",
        ),
        ({"conn_type": "postgres", "host": "h"}, "role must be a database role name"),
        (42, "must be a role or an object with 'role'"),
    ],
    ids=["missing-host", "password-given", "no-role", "not-an-object"],
)
def test_bad_lease_entries_are_one_line_at_construction(entry: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        VaultDatabaseBackend(url="http://127.0.0.1:1", token="t", leases={"pg_reporting": entry})
    assert expected in str(info.value) and "\n" not in str(info.value) and "s3cr3t" not in str(info.value)


def test_cli_exits_2_on_an_unknown_role(openbao_database: DatabaseEngine, tmp_path: Path) -> None:
    engine = openbao_database
    env = _config(tmp_path, engine.backend_kwargs(leases={"pg_reporting": engine.template(role="nope")}))
    result = subprocess.run(
        [sys.executable, "-m", "credpath", "connections", "get", "pg_reporting"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "role 'nope' does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert_no_secret(result.stdout + result.stderr)


def test_leased_ids_are_never_cached(openbao_database: DatabaseEngine, tmp_path: Path) -> None:
    from credpath._search_path import SearchPath

    engine = openbao_database
    _config(tmp_path, engine.backend_kwargs())
    assert VaultDatabaseBackend.cache_results is False
    path = SearchPath.from_config(tmp_path / "credpath.toml", env={})
    assert [entry.cache_results for entry in path.entries] == [False]
    first = path.get_connection("pg_reporting")
    assert first is not None and path.get_connection("pg_reporting") is first  # the lease, not a cache copy
    from credpath._cache import ABSENT

    try:
        assert path.cache.get(("connection", "pg_reporting", None)) is ABSENT  # no cache tier keeps a copy
        assert path.cache.get_stale(("connection", "pg_reporting", None)) is None
    finally:
        path.entries[0].backend.revoke_leases()


# --- inside Airflow -----------------------------------------------------------------------------------------

LEASES_DAG = """
from __future__ import annotations

import pendulum

from airflow.sdk import BaseHook, dag, task


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False)
def credpath_leases_example():
    @task
    def use_lease():
        print("lease user: " + BaseHook.get_connection(conn_id="pg_reporting").login)

    @task
    def fail_with_lease():
        print("lease user: " + BaseHook.get_connection(conn_id="pg_reporting").login)
        raise RuntimeError("failing on purpose, after the lease was minted")

    for i in range(TASKS):
        use_lease.override(task_id=f"ok_{i}")()
    fail_with_lease()


credpath_leases_example()
"""


def run_leases_dag(
    airflow: Any,
    config: Path,
    env: dict[str, str],
    tasks: int,
    done: str,
    dag_id: str = "credpath_leases_example",
) -> list[str]:
    """Run LEASES_DAG as ``dag_id`` (``tasks`` tasks and a failing one) with credpath as Airflow's secrets
    backend; its task logs, once ``done`` shows in one log per task."""
    from tests.servers.airflow_env import run_dags_test

    dag = LEASES_DAG.replace("TASKS", str(tasks)).replace("credpath_leases_example", dag_id)
    (airflow.dags / f"{dag_id}.py").write_text(dag)
    env = {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": "credpath.airflow.CredpathBackend",
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"config": str(config)}),
        **env,
    }

    def logs() -> list[str]:
        files = (airflow.home / "logs").glob(f"dag_id={dag_id}/**/attempt=*.log")
        return [log.read_text() for log in files]

    run_dags_test(airflow, dag_id, env, lambda: sum(done in t for t in logs()) >= tasks + 1, 400)
    return logs()


@pytest.mark.airflow
def test_each_airflow_task_gets_its_own_user_and_none_is_left_when_the_run_ends(
    airflow: Any, airflow_api_server: Any, openbao_database: DatabaseEngine, tmp_path: Path
) -> None:
    engine = openbao_database
    tasks = 9  # and a failing one: a DAG run of ten tasks
    _config(tmp_path, engine.backend_kwargs())
    # Done when every task's listener has run.
    texts = run_leases_dag(airflow, tmp_path / "credpath.toml", {}, tasks, "revoked 1 lease(s) of task")
    assert_no_secret("\n".join(texts))
    users = [
        line.split("lease user: ", 1)[1].split('"', 1)[0].strip()
        for text in texts
        for line in text.splitlines()
        if "lease user: " in line
    ]
    assert len(users) == tasks + 1 and len(set(users)) == tasks + 1  # one database user per task
    assert all(user.startswith("v-") for user in users)
    # The listener revoked each task's lease when the task ended (the failed task's too).
    assert sum("revoked 1 lease(s) of task" in text for text in texts) == tasks + 1
    assert any("fail_with_lease" in text and "revoked 1 lease(s)" in text for text in texts)
    assert not set(users) & engine.pg_users()
    assert engine.leases() == []
