"""The published Vault set-ups, end to end against OpenBao: the backend, the search path, and the CLI.

1. Dev server, KV v2 at ``secret/``, token auth, Airflow's ``AIRFLOW__SECRETS__BACKEND[_KWARGS]`` settings.
2. Mount ``airflow`` (KV v2), a least-privilege policy, AppRole ``astro_role``; variables and connections.
3. A KV v1 mount with ``kv_engine_version = "auto"`` (detected; omitted means KV v2, as in Airflow).

The stores are set up with the ``bao`` CLI, as the guides do. Passwords carry the leak marker, so the leak
guard and ``assert_no_secret`` prove the CLI masks them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from credpath._search_path import SearchPath
from credpath.backends.vault import VaultBackend
from credpath.errors import AccessDenied, NotFound
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao

AIRFLOW_VAULT = "airflow.providers.hashicorp.secrets.vault.VaultBackend"
SMTP_PASSWORD = "pw-s3cr3t-smtp"
SMTP_URI = f"smtps://user:{SMTP_PASSWORD}@relay.example.com:465"
POLICY = """
path "airflow/*" {
  capabilities = ["create", "read", "update", "patch", "delete", "list"]
}
"""


def airflow_env(tmp_path: Path, kwargs: dict[str, Any], **extra: str) -> dict[str, str]:
    """A clean environment with Airflow's secrets-backend settings and a private CREDPATH_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CREDPATH", "VAULT_", "BAO_"))}
    env.update(
        {
            "CREDPATH_HOME": str(tmp_path / "credpath-home"),
            "AIRFLOW__SECRETS__BACKEND": AIRFLOW_VAULT,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(kwargs),
        }
    )
    env.update(extra)
    return env


def credpath_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "credpath", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert_no_secret(result.stdout + result.stderr)
    return result


def source_of(search_path: SearchPath, kind: str, key: str) -> str:
    resolution = search_path.lookup(kind, key)  # type: ignore[arg-type]
    assert resolution is not None
    return resolution.source


# --- set-up 1 ----------------------------------------------------------------------------------------------


@pytest.fixture
def setup1(openbao: OpenBao, tmp_path: Path) -> Iterator[dict[str, str]]:
    openbao.bao("kv", "put", "secret/connections/smtp_default", f"conn_uri={SMTP_URI}")
    kwargs = {"url": openbao.addr, "token": openbao.root_token, "connections_path": "connections"}
    yield airflow_env(tmp_path, kwargs)
    openbao.bao("kv", "metadata", "delete", "secret/connections/smtp_default")


def test_setup1_backend_and_search_path(openbao: OpenBao, setup1: dict[str, str]) -> None:
    kwargs = json.loads(setup1["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    backend = VaultBackend(**kwargs)
    conn = backend.get_connection("smtp_default")
    assert (conn.conn_type, conn.login, conn.password, conn.host, conn.port) == (
        "smtps",
        "user",
        SMTP_PASSWORD,
        "relay.example.com",
        465,
    )
    backend.close()
    search_path = SearchPath.from_config(env=setup1)
    try:
        assert search_path.names[0] == "vault"
        assert search_path.get_connection("smtp_default").host == "relay.example.com"
        assert source_of(search_path, "connection", "smtp_default") == "vault"
        with pytest.raises(NotFound):
            search_path.get_connection("absent_smtp")
    finally:
        search_path.close()


def test_setup1_cli_connections_get(setup1: dict[str, str]) -> None:
    result = credpath_cli(setup1, "connections", "get", "smtp_default", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    if isinstance(record, list):
        (record,) = record
    assert record["conn_id"] == "smtp_default"
    assert (record["conn_type"], record["host"], record["login"], record["port"]) == (
        "smtps",
        "relay.example.com",
        "user",
        465,
    )
    assert record["password"] == "***"
    assert record["source"] == "vault"

    table = credpath_cli(setup1, "connections", "get", "smtp_default")
    assert table.returncode == 0
    assert "relay.example.com" in table.stdout and "***" in table.stdout and "vault" in table.stdout

    missing = credpath_cli(setup1, "connections", "get", "absent_smtp")
    assert missing.returncode == 1


# --- set-up 2 ----------------------------------------------------------------------------------------------


@pytest.fixture
def setup2(openbao: OpenBao, tmp_path: Path) -> Iterator[dict[str, Any]]:
    bao = openbao.bao
    bao("secrets", "enable", "-path=airflow", "-version=2", "kv")
    bao("policy", "write", "airflow-policy", "-", input=POLICY)
    openbao.enable_auth("approle")
    bao(
        "write",
        "auth/approle/role/astro_role",
        "secret_id_ttl=0",
        "token_ttl=24h",
        "token_policies=airflow-policy",
    )
    bao("write", "auth/approle/role/astro_role/role-id", "role_id=astro_role")
    secret_id = bao(
        "write", "-f", "-field=secret_id", "auth/approle/role/astro_role/secret-id"
    ).stdout.strip()
    # The mount upgrades itself to KV v2 in the background; kv put retries until it is ready.
    for args in (
        ("kv", "put", "-mount=airflow", "variables/my_var", "value=astro-value-1"),
        (
            "kv",
            "put",
            "-mount=airflow",
            "connections/my_conn",
            "conn_uri=postgres://astro:pw-s3cr3t-pg@pg.example/db",
        ),
    ):
        for _ in range(100):
            if bao(*args, check=False).returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"bao {' '.join(args[:3])} never succeeded")
    openbao.put("secret", 2, "variables/outside_policy", {"value": "value-s3cr3t-outside"})
    kwargs = {
        "connections_path": "connections",
        "variables_path": "variables",
        "mount_point": "airflow",
        "url": openbao.addr,
        "auth_type": "approle",
        "role_id": "astro_role",
        "secret_id": secret_id,
    }
    yield {"kwargs": kwargs, "env": airflow_env(tmp_path, kwargs), "secret_id": secret_id}
    bao("secrets", "disable", "airflow")
    bao("delete", "auth/approle/role/astro_role")


def test_setup2_approle_least_privilege(setup2: dict[str, Any]) -> None:
    kwargs = setup2["kwargs"]
    backend = VaultBackend(**kwargs)
    assert backend.get_variable("my_var") == "astro-value-1"
    conn = backend.get_connection("my_conn")
    assert (conn.conn_type, conn.login, conn.password, conn.host) == (
        "postgres",
        "astro",
        "pw-s3cr3t-pg",
        "pg.example",
    )
    backend.close()

    # A read outside the policy: the clear 403, naming the path and the auth method, never the token.
    outside = VaultBackend(**{**kwargs, "mount_point": "secret", "kv_engine_version": 2})
    with pytest.raises(AccessDenied) as info:
        outside.get_variable("outside_policy")
    message = str(info.value)
    assert "secret/variables/outside_policy" in message and "'approle'" in message and "policy" in message
    assert_no_secret(message, setup2["secret_id"])
    detecting = VaultBackend(**{**kwargs, "mount_point": "secret", "kv_engine_version": "auto"})
    with pytest.raises(AccessDenied, match=r"mount 'secret'.*'approle'"):
        detecting.get_variable("outside_policy")
    outside.close()
    detecting.close()


def test_setup2_search_path_and_cli(setup2: dict[str, Any], tmp_path: Path) -> None:
    search_path = SearchPath.from_config(env=setup2["env"])
    try:
        assert search_path.get_variable("my_var") == "astro-value-1"
        assert search_path.get_connection("my_conn").host == "pg.example"
        assert source_of(search_path, "variable", "my_var") == "vault"
    finally:
        search_path.close()

    # The secret_id in its own variable, as Airflow allows (BACKEND_KWARG__<KEY>).
    kwargs = {k: v for k, v in setup2["kwargs"].items() if k != "secret_id"}
    env = airflow_env(tmp_path, kwargs, AIRFLOW__SECRETS__BACKEND_KWARG__SECRET_ID=setup2["secret_id"])
    conn = credpath_cli(env, "connections", "get", "my_conn", "--json")
    assert conn.returncode == 0, conn.stderr
    record = json.loads(conn.stdout)
    if isinstance(record, list):
        (record,) = record
    assert (record["host"], record["password"], record["source"]) == ("pg.example", "***", "vault")
    variable = credpath_cli(env, "variables", "get", "my_var", "--json")
    assert variable.returncode == 0, variable.stderr
    assert json.loads(variable.stdout) == {"key": "my_var", "value": "astro-value-1", "source": "vault"}


# --- set-up 3 ----------------------------------------------------------------------------------------------


def test_setup3_kv1_mount_detected(openbao: OpenBao, openbao_kv1: str, tmp_path: Path) -> None:
    openbao.bao(
        "kv",
        "put",
        f"-mount={openbao_kv1}",
        "connections/legacy",
        "conn_uri=mysql://old:pw-s3cr3t-v1@legacy.example/db",
    )
    openbao.bao("kv", "put", f"-mount={openbao_kv1}", "variables/legacy_var", "value=from-kv1")
    kwargs = {
        "url": openbao.addr,
        "token": openbao.root_token,
        "mount_point": openbao_kv1,
        "kv_engine_version": "auto",
    }
    backend = VaultBackend(**kwargs)
    assert backend.get_connection("legacy").host == "legacy.example"
    assert backend.get_variable("legacy_var") == "from-kv1"
    backend.close()
    # Airflow's default (KV v2) on this mount finds nothing: the silent miss that detection fixes.
    guessed = VaultBackend(**{**kwargs, "kv_engine_version": 2})
    assert guessed.get_variable("legacy_var") is None
    guessed.close()

    env = airflow_env(tmp_path, kwargs)
    result = credpath_cli(env, "connections", "get", "legacy", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    if isinstance(record, list):
        (record,) = record
    assert (record["conn_type"], record["host"], record["password"], record["source"]) == (
        "mysql",
        "legacy.example",
        "***",
        "vault",
    )


def test_cli_connections_add_to_vault(openbao: OpenBao, setup1: dict[str, str]) -> None:
    conn_id = f"added_{uuid.uuid4().hex[:6]}"
    uri = "postgres://writer:pw-s3cr3t-added@db.example:5432/app"
    added = credpath_cli(setup1, "connections", "add", conn_id, "--uri", uri, "--to", "vault")
    assert added.returncode == 0, added.stderr
    stored = openbao.admin.secrets.kv.v2.read_secret_version(
        f"connections/{conn_id}", mount_point="secret", raise_on_deleted_version=True
    )["data"]
    # The protocol's default serialization ("json"): Vault keeps the fields, which Airflow reads too.
    assert stored["data"] == {
        "conn_type": "postgres",
        "host": "db.example",
        "login": "writer",
        "password": "pw-s3cr3t-added",
        "port": 5432,
        "schema": "app",
    }
    assert stored["metadata"]["version"] == 1
    # Without --overwrite the write is create-only (check-and-set 0): an existing secret is kept.
    again = credpath_cli(
        setup1, "connections", "add", conn_id, "--uri", "postgres://other@h/db", "--to", "vault"
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    current = openbao.admin.secrets.kv.v2.read_secret_version(
        f"connections/{conn_id}", mount_point="secret", raise_on_deleted_version=True
    )["data"]
    assert current["metadata"]["version"] == 1
    openbao.admin.secrets.kv.v2.delete_metadata_and_all_versions(
        f"connections/{conn_id}", mount_point="secret"
    )
