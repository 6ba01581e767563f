"""credpath.airflow.CredpathBackend: plumbing without Airflow, and the integration tier in real Airflow 3.3.2.

The tier (``-m airflow``) runs ``airflow`` commands in their own virtualenv (tests/servers/airflow_env.py)
against the suite's OpenBao and moto servers: Vault first, AWS Secrets Manager second, with lookup
patterns, and Airflow's env and metastore backends still after credpath. Airflow prints connection
passwords in clear in ``connections get`` (its own behaviour), so that output is compared through hashes
and never shown; everything else is checked with the leak guard.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from credpath.backends.files import LocalFilesystemBackend
from credpath.errors import ConfigError
from tests.conftest import assert_no_secret
from tests.servers.airflow_env import AirflowEnv, ApiServer, run_dags_test
from tests.servers.moto import REGION, MotoServer
from tests.servers.openbao import OpenBao

CLASS_PATH = "credpath.airflow.CredpathBackend"


def _digest(value: str | None) -> str:
    return hashlib.sha256((value or "").encode()).hexdigest()


def _same_secret(actual: str | None, expected: str) -> bool:
    # Compared through digests so that a failing assert never prints a secret.
    return _digest(actual) == _digest(expected)


@pytest.fixture(autouse=True)
def _fresh_search_paths() -> Iterator[None]:
    import credpath.airflow

    credpath.airflow.reset()
    yield
    credpath.airflow.reset()


# --- plumbing, in the test venv (no Airflow installed there) ------------------------------------------


class CachedFilesBackend(LocalFilesystemBackend):
    """The files backend with caching on (credpath never caches the real one), to see cache-hit provenance."""

    cache_results = True


def _files_backend(tmp_path: Path, type_name: str = "files") -> list[dict[str, Any]]:
    connections = tmp_path / "connections.json"
    connections.write_text(
        json.dumps(
            {
                "files_db": {
                    "conn_type": "postgres",
                    "host": "files-host",
                    "login": "files_user",
                    "password": "pw-s3cr3t-files",
                    "port": 5432,
                    "description": "kept through the JSON form",
                    "extra": {"api_key": "key-s3cr3t-files", "sslmode": "require"},
                }
            }
        )
    )
    variables = tmp_path / "variables.json"
    variables.write_text(json.dumps({"plain_var": "plain-value", "db_password": "pw-s3cr3t-var"}))
    return [
        {
            "name": "local-files",
            "type": type_name,
            "kwargs": {"connections_file_path": str(connections), "variables_file_path": str(variables)},
        }
    ]


def test_import_without_airflow_is_lazy_and_class_access_explains() -> None:
    if importlib.util.find_spec("airflow") is not None:
        pytest.skip("Airflow is installed in this interpreter")
    code = textwrap.dedent(
        """
        import sys
        import credpath.airflow as m
        assert "airflow" not in sys.modules, "credpath.airflow imported Airflow at import time"
        try:
            m.CredpathBackend
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("no ImportError")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "credpath.airflow.CredpathBackend needs Apache Airflow" in result.stdout
    assert "install apache-airflow" in result.stdout


def test_backend_logic_serves_search_path_with_source_in_debug_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from credpath.airflow import _CredpathBackendMixin

    caplog.set_level(logging.DEBUG, logger="credpath")
    backend = _CredpathBackendMixin(
        backends=_files_backend(tmp_path, f"{__name__}.{CachedFilesBackend.__name__}")
    )
    value = backend.get_conn_value("files_db")
    assert value is not None
    parsed = json.loads(value)
    assert parsed["host"] == "files-host"
    assert parsed["login"] == "files_user"
    assert parsed["description"] == "kept through the JSON form"
    assert _same_secret(parsed["password"], "pw-s3cr3t-files")
    assert backend.get_conn_value("nope") is None
    assert backend.get_variable("plain_var") == "plain-value"
    assert backend.get_variable("nope") is None
    # Exactly one debug line per resolution, naming the source: the search path's for a store read,
    # credpath.airflow's for a cache hit.
    backend.get_conn_value("files_db")
    backend.get_conn_value("nope")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    provenance = [m for m in messages if "'files_db'" in m]
    assert provenance == [
        "resolved connection 'files_db' from backend 'local-files'",
        "credpath: connection 'files_db' from backend 'local-files' (cached)",
    ]
    assert [m for m in messages if "'plain_var'" in m] == [
        "resolved variable 'plain_var' from backend 'local-files'"
    ]
    assert [m for m in messages if "'nope'" in m] == [
        "connection 'nope' not found in the search path",
        "variable 'nope' not found in the search path",
        "credpath: connection 'nope' not found (cached miss)",
    ]


def test_instances_with_same_settings_share_one_search_path(tmp_path: Path) -> None:
    from credpath.airflow import _CredpathBackendMixin

    backends = _files_backend(tmp_path)
    first = _CredpathBackendMixin(backends=backends)
    second = _CredpathBackendMixin(backends=json.loads(json.dumps(backends)))
    other = _CredpathBackendMixin(backends=backends, cache={"ttl": 10})
    assert first.search_path is second.search_path
    assert other.search_path is not first.search_path


def test_config_file_kwarg(tmp_path: Path) -> None:
    from credpath.airflow import _CredpathBackendMixin

    backends = _files_backend(tmp_path)
    kwargs = backends[0]["kwargs"]
    config = tmp_path / "credpath.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [[backends]]
            name = "from-toml"
            type = "files"
            connections_lookup_pattern = "^files_"
            kwargs = {{ connections_file_path = "{kwargs["connections_file_path"]}" }}

            [cache]
            ttl = 30
            """
        )
    )
    backend = _CredpathBackendMixin(config=str(config))
    assert backend.search_path.names == ["from-toml"]
    assert backend.search_path.cache.settings.ttl == 30
    assert json.loads(backend.get_conn_value("files_db") or "{}")["host"] == "files-host"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"url": "http://x"},
            "CredpathBackend kwargs: unknown key(s) url; accepted: backends, cache, config",
        ),
        ({"config": "/nonexistent/credpath.toml"}, "which is not a file"),
        ({"config": "a.toml", "backends": []}, "either 'config' or 'backends'"),
        ({"backends": {"type": "env"}}, "'backends' must be a list"),
        ({"backends": [{"type": "nope"}]}, "unknown backend type 'nope'"),
        ({"backends": [{"type": CLASS_PATH}]}, "cannot be one of its own backends"),
        ({"backends": [{"type": "env"}], "cache": {"ttl": -1}}, "ttl must be a number"),
    ],
    ids=["unknown-kwarg", "missing-file", "both", "not-a-list", "unknown-type", "recursion", "bad-cache"],
)
def test_bad_settings_are_one_line_config_errors(kwargs: dict[str, Any], message: str) -> None:
    from credpath.airflow import _CredpathBackendMixin

    with pytest.raises(ConfigError) as info:
        _CredpathBackendMixin(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_config_without_backends_list_is_refused(tmp_path: Path) -> None:
    from credpath.airflow import _CredpathBackendMixin

    config = tmp_path / "credpath.toml"
    config.write_text("[cache]\nttl = 5\n")
    with pytest.raises(ConfigError, match=r"no \[\[backends\]\] list"):
        _CredpathBackendMixin(config=str(config))


def test_default_config_ignores_airflow_settings_pointing_at_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath.airflow import _CredpathBackendMixin

    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", CLASS_PATH)
    monkeypatch.delenv("CREDPATH_CONFIG", raising=False)
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(ConfigError, match="needs 'config'"):
        _CredpathBackendMixin()


# --- per-key overrides, multi-team, start-up -----------------------------------

OVERRIDE_TOKEN = "tok-s3cr3t-override"


def _vault(name: str = "vault", **kwargs: Any) -> dict[str, Any]:
    # A loopback port nothing listens on: construction never contacts Vault.
    return {"name": name, "type": "vault", "kwargs": {"url": "http://127.0.0.1:9", **kwargs}}


@pytest.mark.parametrize(
    "prefix", ["AIRFLOW__SECRETS__BACKEND_KWARG__", "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__"]
)
def test_per_key_override_goes_to_the_one_backend_that_takes_it(
    prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from credpath.airflow import _CredpathBackendMixin

    # What Airflow does with AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN: a raw string in the top-level kwargs.
    monkeypatch.setenv(f"{prefix}TOKEN", OVERRIDE_TOKEN)
    caplog.set_level(logging.DEBUG, logger="credpath")
    backend = _CredpathBackendMixin(backends=[_vault(), {"type": "env"}], token=OVERRIDE_TOKEN)
    vault = backend.search_path.backend("vault")
    assert _same_secret(vault.settings.client.token, OVERRIDE_TOKEN)
    assert f"{prefix}TOKEN applied to backend 'vault' as kwarg 'token'" in caplog.text


def test_per_key_override_wins_over_the_nested_kwarg_and_reaches_a_config_file_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath.airflow import _CredpathBackendMixin

    config = tmp_path / "credpath.toml"
    config.write_text(
        '[[backends]]\nname = "vault"\ntype = "vault"\n'
        '[backends.kwargs]\nurl = "http://127.0.0.1:9"\ntoken = "stale-token"\n'
    )
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN", OVERRIDE_TOKEN)
    backend = _CredpathBackendMixin(config=str(config), token=OVERRIDE_TOKEN)
    assert _same_secret(backend.search_path.backend("vault").settings.client.token, OVERRIDE_TOKEN)


def test_per_key_override_names_its_backend_when_several_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from credpath.airflow import _CredpathBackendMixin

    backends = [_vault("vault-a", token="a"), _vault("vault-b", token="b")]
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN", OVERRIDE_TOKEN)
    with pytest.raises(ConfigError) as info:
        _CredpathBackendMixin(backends=backends, token=OVERRIDE_TOKEN)
    message = str(info.value)
    assert "AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN sets kwarg 'token'" in message
    assert "several backends take ('vault-a', 'vault-b')" in message
    assert "e.g. AIRFLOW__SECRETS__BACKEND_KWARG__VAULT_A__TOKEN" in message
    assert "\n" not in message
    assert_no_secret(message, OVERRIDE_TOKEN)

    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN")
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARG__VAULT_B__TOKEN", OVERRIDE_TOKEN)
    backend = _CredpathBackendMixin(backends=backends, vault_b__token=OVERRIDE_TOKEN)
    assert backend.search_path.backend("vault-a").settings.client.token == "a"
    assert _same_secret(backend.search_path.backend("vault-b").settings.client.token, OVERRIDE_TOKEN)


def test_per_key_override_no_backend_takes_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from credpath.airflow import _CredpathBackendMixin

    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARG__ROLE_ID", "role-s3cr3t")
    with pytest.raises(ConfigError) as info:
        _CredpathBackendMixin(backends=[{"type": "env"}], role_id="role-s3cr3t")
    message = str(info.value)
    assert "AIRFLOW__SECRETS__BACKEND_KWARG__ROLE_ID sets kwarg 'role_id'" in message
    assert "no backend of its search path takes (backends: 'env' (env))" in message
    assert "set it in the 'kwargs' of the backend it is for" in message
    assert "\n" not in message
    assert_no_secret(message)


def test_unknown_key_not_from_an_override_stays_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from credpath.airflow import _CredpathBackendMixin

    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN", raising=False)
    with pytest.raises(ConfigError, match="unknown key\\(s\\) token; accepted: backends, cache, config"):
        _CredpathBackendMixin(backends=[_vault(token="t")], token="x")


def test_backends_given_as_a_json_string_override(monkeypatch: pytest.MonkeyPatch) -> None:
    from credpath.airflow import _CredpathBackendMixin

    # AIRFLOW__SECRETS__BACKEND_KWARG__BACKENDS arrives as the raw JSON text.
    backend = _CredpathBackendMixin(backends=json.dumps([{"type": "env"}]))  # type: ignore[arg-type]
    assert backend.search_path.names == ["env"]
    with pytest.raises(ConfigError, match="'backends' is not valid JSON \\(line 1 column"):
        _CredpathBackendMixin(backends="[{")  # type: ignore[arg-type]


class _RecordingPath:
    """Stands in for the search path: records what CredpathBackend asks (team scoping is its job)."""

    def __init__(self) -> None:
        from credpath._cache import CacheSettings, TTLCache

        self.cache = TTLCache(CacheSettings(enabled=False))
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def lookup(self, kind: str, key: str, **scope: Any) -> Any:
        from credpath._search_path import Resolution
        from credpath.model import Connection

        self.calls.append((kind, key, scope))
        value = Connection(conn_type="http", host="h") if kind == "connection" else "v"
        return Resolution(value, "stub")


def test_team_name_is_passed_to_the_search_path_only_when_set(tmp_path: Path) -> None:
    from credpath.airflow import _CredpathBackendMixin

    backend = _CredpathBackendMixin(backends=_files_backend(tmp_path))
    recorder = _RecordingPath()
    backend.search_path = recorder  # type: ignore[assignment]
    backend.get_conn_value("c1", team_name="team_a")
    backend.get_variable("v1", team_name="team_a")
    backend.get_conn_value("c2")
    backend.get_variable("v2", team_name=None)
    assert recorder.calls == [
        ("connection", "c1", {"team_name": "team_a"}),
        ("variable", "v1", {"team_name": "team_a"}),
        ("connection", "c2", {}),
        ("variable", "v2", {}),
    ]


def test_read_methods_declare_team_name_as_airflow_requires() -> None:
    import inspect

    from credpath.airflow import _CredpathBackendMixin

    # Airflow 3.3.2 (_shared/secrets_backend/base.py) forwards team_name only to methods declaring it.
    for method in ("get_conn_value", "get_connection", "get_variable"):
        params = inspect.signature(getattr(_CredpathBackendMixin, method)).parameters
        assert "team_name" in params, method
        assert params["team_name"].default is None


def test_nested_backends_are_started_when_the_backend_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from credpath.airflow import _CredpathBackendMixin
    from credpath.backends.vault import VaultBackend

    started: list[str] = []
    monkeypatch.setattr(VaultBackend, "prepare", lambda self: started.append(self.name), raising=False)
    monkeypatch.delitem(sys.modules, "requests", raising=False)
    _CredpathBackendMixin(backends=[_vault(token="t")])
    # The client is imported in the building (parent) process, and the backend's own start-up ran once.
    assert "requests" in sys.modules
    assert started == ["vault"]


# --- inside real Airflow 3.3.2 ---------------------------------------------------------------------


@dataclass
class Stores:
    """Two stores seeded for one module: Vault (KV v2 mount) first, AWS Secrets Manager second."""

    vault_mount: str
    aws_prefix: str
    backends: list[dict[str, Any]]
    env: dict[str, str]


VAULT_PASSWORD = "pw-s3cr3t-vault"
AWS_SHADOWED_PASSWORD = "pw-s3cr3t-aws-shadowed"
API_PASSWORD = "pw-s3cr3t-api"
API_KEY = "key-s3cr3t-api-0001"
META_PASSWORD = "pw-s3cr3t-meta"
TOKEN_VARIABLE = "tok-s3cr3t-variable"


@pytest.fixture(scope="module")
def stores(openbao: OpenBao, moto_server: MotoServer) -> Iterator[Stores]:
    mount = openbao.enable_kv(2)
    prefix = f"it-{uuid.uuid4().hex[:8]}"
    # Seeding goes through the stores' own clients, which log request bodies (secrets) at DEBUG.
    logging.disable(logging.CRITICAL)
    # Vault: the first store.
    openbao.put(
        mount,
        2,
        "connections/shared_db",
        {"conn_uri": f"postgres://vault_user:{VAULT_PASSWORD}@vault-db.internal:5432/analytics"},
    )
    # Held by Vault too, but Vault's lookup pattern keeps it from being asked: AWS must serve it.
    openbao.put(
        mount, 2, "connections/aws_api", {"conn_uri": "http://wrong:pw-s3cr3t-wrong@vault-must-not-serve"}
    )
    openbao.put(mount, 2, "variables/shared_var", {"value": "from-vault"})
    openbao.put(mount, 2, "variables/api_token", {"value": TOKEN_VARIABLE})
    # AWS Secrets Manager: the second store.
    client = moto_server.client("secretsmanager")
    aws_secrets = {
        f"{prefix}/connections/shared_db": f"postgres://aws_user:{AWS_SHADOWED_PASSWORD}@aws-db:5432/x",
        f"{prefix}/connections/aws_api": json.dumps(
            {
                "conn_type": "http",
                "host": "api.example.com",
                "login": "api_user",
                "password": API_PASSWORD,
                "port": 8443,
                "extra": {"api_key": API_KEY, "region": "eu-west-1"},
            }
        ),
        # Outside AWS's lookup pattern: never requested, so not found anywhere.
        f"{prefix}/connections/hidden_db": "postgres://hidden:pw-s3cr3t-hidden@hidden-host/h",
        f"{prefix}/variables/shared_var": "from-aws-shadowed",
        f"{prefix}/variables/aws_var": "from-aws",
    }
    for name, value in aws_secrets.items():
        client.create_secret(Name=name, SecretString=value)
    logging.disable(logging.NOTSET)
    backends = [
        {
            "name": "vault",
            "type": "vault",
            "connections_lookup_pattern": "^shared_",
            "kwargs": {"url": openbao.addr, "token": openbao.root_token, "mount_point": mount},
        },
        {
            "name": "aws",
            "type": "aws-secrets-manager",
            "connections_lookup_pattern": "^(shared_|aws_)",
            "kwargs": {
                "endpoint_url": moto_server.url,
                "region_name": REGION,
                "connections_prefix": f"{prefix}/connections",
                "variables_prefix": f"{prefix}/variables",
                "config_prefix": None,
            },
        },
    ]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    try:
        yield Stores(vault_mount=mount, aws_prefix=prefix, backends=backends, env=env)
    finally:
        logging.disable(logging.CRITICAL)
        for name in aws_secrets:
            client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        openbao.disable(mount)
        logging.disable(logging.NOTSET)


def _secrets_env(stores: Stores, *, section: str = "SECRETS", **extra: str) -> dict[str, str]:
    key = "BACKEND" if section == "SECRETS" else "SECRETS_BACKEND"
    return {
        **stores.env,
        f"AIRFLOW__{section}__{key}": CLASS_PATH,
        f"AIRFLOW__{section}__{key}_KWARGS": json.dumps({"backends": stores.backends}),
        **extra,
    }


def _connection_rows(
    airflow: AirflowEnv, conn_ids: list[str], env: dict[str, str]
) -> dict[str, dict[str, Any] | None]:
    """`airflow connections get ID -o json` for each id (run concurrently); None where it failed."""
    results = airflow.run_many(
        [["connections", "get", conn_id, "-o", "json"] for conn_id in conn_ids], env=env
    )
    rows: dict[str, dict[str, Any] | None] = {}
    for conn_id, result in zip(conn_ids, results, strict=True):
        assert_no_secret(result.stderr)
        if result.returncode != 0:
            rows[conn_id] = None
            continue
        parsed = json.loads(result.stdout[result.stdout.index("[") :])
        assert len(parsed) == 1
        rows[conn_id] = parsed[0]
    return rows


@pytest.mark.airflow
def test_connections_get_resolves_through_vault_then_aws(airflow: AirflowEnv, stores: Stores) -> None:
    rows = _connection_rows(airflow, ["shared_db", "aws_api", "hidden_db"], _secrets_env(stores))

    row = rows["shared_db"]
    assert row is not None, "shared_db not resolved"
    # In both stores: Vault is first in the path and wins.
    assert (row["conn_type"], row["host"], row["login"], row["port"], row["schema"]) == (
        "postgres",
        "vault-db.internal",
        "vault_user",
        "5432",
        "analytics",
    )
    vault_password = _same_secret(row["password"], VAULT_PASSWORD)
    assert vault_password, "shared_db password is not Vault's"

    row = rows["aws_api"]
    assert row is not None, "aws_api not resolved"
    # Vault holds a decoy under this id, but its lookup pattern keeps it out: AWS serves it.
    assert (row["conn_type"], row["host"], row["login"], row["port"]) == (
        "http",
        "api.example.com",
        "api_user",
        "8443",
    )
    assert row["extra_dejson"]["region"] == "eu-west-1"
    aws_password = _same_secret(row["password"], API_PASSWORD)
    assert aws_password, "aws_api password is not the one stored in AWS"

    # Stored in AWS but outside both lookup patterns: never requested, so Airflow finds nothing.
    assert rows["hidden_db"] is None


def _printed_value(stdout: str) -> str:
    # At DEBUG, Airflow logs to stdout too (after the command's own output): keep the non-log lines.
    lines = [line for line in stdout.splitlines() if line.strip() and not _LOG_LINE.match(line)]
    assert len(lines) == 1, f"expected one printed value, got {len(lines)} line(s)"
    return lines[0]


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.mark.airflow
def test_variables_get_resolves_through_vault_then_aws(airflow: AirflowEnv, stores: Stores) -> None:
    keys = ["shared_var", "aws_var", "no_such_var"]
    commands = [["variables", "get", key] for key in keys]
    # -v at DEBUG: Airflow's `get` commands otherwise switch logging off while they run.
    commands.append(["variables", "get", "-v", "aws_var"])
    env = _secrets_env(stores, AIRFLOW__LOGGING__LOGGING_LEVEL="DEBUG")
    results = airflow.run_many(commands, env=env)
    for result in results:
        assert_no_secret(result.stdout + result.stderr)
    shared, aws, missing, verbose = results
    assert shared.returncode == 0
    assert _printed_value(shared.stdout) == "from-vault"
    assert aws.returncode == 0
    assert _printed_value(aws.stdout) == "from-aws"
    assert missing.returncode == 1
    # Provenance: one debug line naming the source backend, no value.
    assert verbose.returncode == 0
    assert (verbose.stdout + verbose.stderr).count("resolved variable 'aws_var' from backend 'aws'") == 1


@pytest.mark.airflow
def test_metastore_connection_still_resolves_behind_credpath(airflow: AirflowEnv, stores: Stores) -> None:
    env = _secrets_env(stores)
    added = airflow.run(
        "connections",
        "add",
        "meta_only",
        "--conn-uri",
        f"postgres://meta_user:{META_PASSWORD}@meta-host:6543/meta",
        env=env,
    )
    assert added.returncode == 0, "airflow connections add failed"
    row = _connection_rows(airflow, ["meta_only"], env)["meta_only"]
    assert row is not None, "a connection only in the metastore no longer resolves"
    assert (row["host"], row["login"], row["port"]) == ("meta-host", "meta_user", "6543")
    meta_password = _same_secret(row["password"], META_PASSWORD)
    assert meta_password, "meta_only password differs from the metastore's"


EXAMPLE_DAG = '''
"""Astronomer's Vault guide example, in Airflow 3 spelling: print a connection's fields and a variable."""
from __future__ import annotations

import pendulum

from airflow.sdk import BaseHook, Variable, dag, task


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False)
def credpath_secrets_example():
    @task
    def print_secrets():
        conn = BaseHook.get_connection(conn_id="shared_db")
        print(f"conn login: {conn.login}")
        print(f"conn host: {conn.host}")
        print(f"conn port: {conn.port}")
        print(f"conn password: {conn.password}")
        api = BaseHook.get_connection(conn_id="aws_api")
        print(f"api host: {api.host}")
        print(f"api key: {api.extra_dejson['api_key']}")
        print(f"variable: {Variable.get('shared_var')}")
        print(f"token variable: {Variable.get('api_token')}")
        meta = BaseHook.get_connection(conn_id="meta_only")
        print(f"metastore host: {meta.host}")

    print_secrets()


credpath_secrets_example()
'''


def _task_log_events(airflow: AirflowEnv, dag_id: str) -> tuple[list[dict[str, Any]], str]:
    files = sorted((airflow.home / "logs").glob(f"dag_id={dag_id}/**/attempt=*.log"))
    assert files, "no task log file was written"
    text = files[-1].read_text()
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return events, text


@pytest.mark.airflow
def test_dag_run_reads_connection_and_variable_through_credpath_with_masked_log(
    airflow: AirflowEnv, airflow_api_server: ApiServer, stores: Stores, tmp_path: Path
) -> None:
    # The connection only in the metastore must resolve inside the task too (Airflow's chain after credpath).
    added = airflow.run(
        "connections",
        "add",
        "meta_only",
        "--conn-uri",
        f"postgres://meta_user:{META_PASSWORD}@meta-host:6543/meta",
    )
    assert added.returncode == 0 or "already exists" in added.stdout + added.stderr
    # The Task SDK path: [workers] secrets_backend only, configured with a credpath.toml file.
    config = tmp_path / "credpath.toml"
    config.write_text(_toml_for(stores.backends))
    (airflow.dags / "credpath_secrets_example.py").write_text(EXAMPLE_DAG)
    env = {
        **stores.env,
        "AIRFLOW__WORKERS__SECRETS_BACKEND": CLASS_PATH,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"config": str(config)}),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG",
    }

    def finished() -> bool:  # the task printed its last line
        logs = (airflow.home / "logs").glob("dag_id=credpath_secrets_example/**/attempt=*.log")
        return any("metastore host: meta-host" in log.read_text() for log in logs)

    code = run_dags_test(airflow, "credpath_secrets_example", env, finished, timeout=300)
    assert code in (0, None), f"airflow dags test failed (rc={code})"  # None: stopped after the task ended
    events, text = _task_log_events(airflow, "credpath_secrets_example")
    assert_no_secret(text, VAULT_PASSWORD, API_KEY, TOKEN_VARIABLE)
    printed = [e["event"] for e in events if e.get("logger") == "task.stdout"]
    assert printed == [
        "conn login: vault_user",
        "conn host: vault-db.internal",
        "conn port: 5432",
        "conn password: ***",
        "api host: api.example.com",
        "api key: ***",
        "variable: from-vault",
        "token variable: ***",
        "metastore host: meta-host",
    ]
    # Provenance at debug level, once per resolution, without values.
    messages = [str(e.get("event")) for e in events]
    for line in (
        "resolved connection 'shared_db' from backend 'vault'",
        "resolved connection 'aws_api' from backend 'aws'",
        "resolved variable 'shared_var' from backend 'vault'",
    ):
        assert messages.count(line) == 1, line


def _toml_for(backends: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for backend in backends:
        lines.append("[[backends]]")
        for key, value in backend.items():
            if key == "kwargs":
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("[backends.kwargs]")
        for key, value in backend["kwargs"].items():
            if value is not None:  # TOML has no null
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


LOGGING_DAG = """
from __future__ import annotations

import logging

import pendulum

from airflow.sdk import BaseHook, dag, task

log = logging.getLogger("airflow.task")


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False)
def credpath_in_process_example():
    @task
    def log_secrets():
        conn = BaseHook.get_connection(conn_id="aws_api")
        log.info("api login=%s host=%s password=%s", conn.login, conn.host, conn.password)

    log_secrets()


credpath_in_process_example()
"""


@pytest.mark.airflow
def test_in_process_dags_test_masks_logged_secrets(airflow: AirflowEnv, stores: Stores) -> None:
    # Plain `airflow dags test` runs the task in the CLI process, whose console handler applies no Airflow
    # masker (Airflow's own env backend leaks the password in this mode). credpath's search path masks what
    # it resolves in every log record of the process (credpath._masking), so the line is masked. print()
    # output is not logging and stays unmasked in this mode.
    (airflow.dags / "credpath_in_process_example.py").write_text(LOGGING_DAG)
    result = airflow.run("dags", "test", "credpath_in_process_example", env=_secrets_env(stores), timeout=300)
    assert result.returncode == 0, f"airflow dags test failed (rc={result.returncode})"
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "api login=" in line]
    assert len(lines) == 1
    assert "api login=api_user host=api.example.com password=***" in lines[0]
    assert_no_secret(output)


MASKER_PROBE = """
import json, os, sys
from airflow._shared.secrets_masker import redact as core_redact
from airflow.sdk._shared.secrets_masker import redact as sdk_redact
from credpath.airflow import CredpathBackend

secrets = json.loads(sys.stdin.read())
line = " ".join(secrets)
before = {"sdk": sdk_redact(line) == line, "core": core_redact(line) == line}
backend = CredpathBackend(**json.loads(os.environ["PROBE_KWARGS"]))
# credpath's own Connection: no Airflow Connection is built, so Airflow masks nothing by itself here.
conn = backend._credpath_connection("aws_api")
token = backend.get_variable("api_token")
after = {
    "sdk": sdk_redact(line) == " ".join(["***"] * len(secrets)),
    "core": core_redact(line) == " ".join(["***"] * len(secrets)),
}
resolved = [conn is not None, token is not None]
print(json.dumps({"unmasked_before": before, "masked_after": after, "resolved": resolved}))
"""


@pytest.mark.airflow
def test_resolved_secrets_are_registered_with_the_process_airflow_masker(
    airflow: AirflowEnv, stores: Stores
) -> None:
    # The password, a sensitive extra (api_key) and a variable with a sensitive name (api_token).
    secrets_in = json.dumps([API_PASSWORD, API_KEY, TOKEN_VARIABLE])
    result = subprocess.run(
        [str(airflow.bin / "python"), "-c", MASKER_PROBE],
        input=secrets_in,
        env=airflow.env({**stores.env, "PROBE_KWARGS": json.dumps({"backends": stores.backends})}),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=airflow.home,
    )
    assert_no_secret(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # A server-side process (airflow-core loaded, no task supervisor): the core masker, which its log
    # handlers use, gets the secrets; the Task SDK's is left alone (the DAG test covers task processes).
    assert report == {
        "unmasked_before": {"sdk": True, "core": True},
        "masked_after": {"sdk": False, "core": True},
        "resolved": [True, True],
    }


@pytest.mark.airflow
def test_access_denied_in_vault_is_authoritative_no_fallback_to_metastore(
    airflow: AirflowEnv, stores: Stores, openbao: OpenBao
) -> None:
    # The metastore holds an id that Vault's policy denies: Airflow must not serve the metastore's copy.
    mount = stores.vault_mount
    openbao.policy(
        "airflow-it-deny",
        f'path "{mount}/data/*" {{ capabilities = ["read"] }}\n'
        f'path "{mount}/data/connections/shared_denied" {{ capabilities = ["deny"] }}\n',
    )
    token = openbao.admin.auth.token.create(policies=["airflow-it-deny"], ttl="10m")["auth"]["client_token"]
    added = airflow.run(
        "connections",
        "add",
        "shared_denied",
        "--conn-uri",
        "postgres://stale:pw-s3cr3t-stale@metastore-copy/x",
    )
    assert added.returncode == 0, "airflow connections add failed"
    vault = {**stores.backends[0], "on_error": "fail"}
    vault["kwargs"] = {**vault["kwargs"], "token": token, "kv_engine_version": 2}
    env = {
        **stores.env,
        "AIRFLOW__SECRETS__BACKEND": CLASS_PATH,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"backends": [vault]}),
    }
    denied = airflow.run("connections", "get", "shared_denied", "-o", "json", env=env)
    assert_no_secret(denied.stdout + denied.stderr)
    assert denied.returncode != 0
    assert "metastore-copy" not in denied.stdout
    # The same token still reads what its policy allows.
    allowed = airflow.run("connections", "get", "shared_db", "-o", "json", env=env)
    assert allowed.returncode == 0
    assert "vault-db.internal" in allowed.stdout


@pytest.mark.airflow
def test_backend_kwarg_token_override_reaches_the_nested_vault_backend(
    airflow: AirflowEnv, stores: Stores, openbao: OpenBao
) -> None:
    # A deployment moving from VaultBackend keeps AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN: Airflow applies it
    # to CredpathBackend's own kwargs, and credpath routes it to the one nested backend that takes a token.
    vault = {**stores.backends[0], "kwargs": dict(stores.backends[0]["kwargs"])}
    del vault["kwargs"]["token"]
    env = {
        **stores.env,
        "AIRFLOW__SECRETS__BACKEND": CLASS_PATH,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"backends": [vault, stores.backends[1]]}),
        "AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN": openbao.root_token,
    }
    row = _connection_rows(airflow, ["shared_db"], env)["shared_db"]
    assert row is not None, "shared_db not resolved with the token given as a per-key override"
    assert (row["host"], row["login"]) == ("vault-db.internal", "vault_user")

    # Two backends take a token: a one-line error that says how to name the one meant.
    second = {**vault, "name": "vault-b"}
    env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps({"backends": [vault, second]})
    result = airflow.run("connections", "get", "shared_db", "-o", "json", env=env)
    output = result.stdout + result.stderr
    assert_no_secret(output, openbao.root_token)
    assert result.returncode != 0
    assert "AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN sets kwarg 'token', which several backends take" in output
    assert "e.g. AIRFLOW__SECRETS__BACKEND_KWARG__VAULT__TOKEN" in output


# --- store calls per DAG run: Airflow's backend, credpath, credpath with a shared tier -------

DAG_CONN_IDS = ["dagc_db_0", "dagc_db_1", "dagc_db_2"]
DAG_CACHE_KEY = "kQ3pW0m3a2Vw5Zb6cE8-3nJ0c1d2e3f4g5h6i7j8k9A="


@pytest.fixture(scope="module")
def dag_vault(openbao: OpenBao) -> Iterator[str]:
    mount = openbao.enable_kv(2)
    logging.disable(logging.CRITICAL)
    for index, conn_id in enumerate(DAG_CONN_IDS):
        uri = f"postgres://u{index}:pw-s3cr3t-dag-{index}@dag-db-{index}.internal:5432/d"
        openbao.put(mount, 2, f"connections/{conn_id}", {"conn_uri": uri})
    logging.disable(logging.NOTSET)
    yield mount
    openbao.disable(mount)


def _dag_env(section_backend: str, kwargs: dict[str, Any]) -> dict[str, str]:
    """The same backend as [secrets] backend and [workers] secrets_backend."""
    text = json.dumps(kwargs)
    return {
        "AIRFLOW__SECRETS__BACKEND": section_backend,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": text,
        "AIRFLOW__WORKERS__SECRETS_BACKEND": section_backend,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": text,
    }


DAG_VARIANTS = ("airflow", "credpath", "credpath+file", "credpath+redis")


def dag_variant(
    name: str,
    token: str,
    mount: str,
    proxy_url: str,
    tmp: Path,
    redis_url: str,
    cache_key: str = DAG_CACHE_KEY,
) -> dict[str, str]:
    """The settings of one way to serve the DAG's connections from one Vault behind ``proxy_url``
    (the file tier at ``tmp/shared.db``; Redis entries under ``cache_key``, so a new key starts cold)."""
    airflow_kwargs = {"url": proxy_url, "token": token, "mount_point": mount}
    backends = [{"name": "vault", "type": "vault", "kwargs": dict(airflow_kwargs)}]
    if name == "airflow":
        return _dag_env("airflow.providers.hashicorp.secrets.vault.VaultBackend", airflow_kwargs)
    if name == "credpath":
        return _dag_env(CLASS_PATH, {"backends": backends})
    # Ten task processes start at once on a small machine: a holder starved of CPU past the default 5 s
    # lease, or a Redis reply past the default 1 s socket timeout, would (correctly) send a second process
    # to the store. This test counts the healthy case; lease takeovers and tier failures are tested in
    # tests/test_shared_cache.py.
    patient = {"shared_lease": 60}
    if name == "credpath+file":  # with Airflow's own [core] fernet_key as the tier's key
        cache = {"shared": f"file:{tmp / 'shared.db'}", "shared_key": "airflow", **patient}
    else:
        url = redis_url + ("&" if "?" in redis_url else "?") + "socket_timeout=10&socket_connect_timeout=10"
        cache = {"shared": url, "shared_key": cache_key, **patient}
    return _dag_env(CLASS_PATH, {"backends": backends, "cache": cache})


@pytest.mark.airflow
@pytest.mark.timeout(2400)  # four DAG runs (per round) of 10 task processes each, on a small shared machine
def test_dag_run_store_calls_airflow_vs_credpath_vs_shared_tiers(
    airflow: AirflowEnv,
    airflow_api_server: ApiServer,
    openbao: OpenBao,
    dag_vault: str,
    fault_proxy: Any,
    redis_url: str,
    tmp_path: Path,
) -> None:
    from urllib.parse import urlsplit

    from cryptography.fernet import Fernet

    from tests.servers.airflow_env import run_store_calls_dag, task_ops, write_store_calls_dag

    parts = urlsplit(openbao.addr)
    task_ms: dict[str, list[float]] = {}
    ops: dict[str, list[dict[str, Any]]] = {}
    extra: dict[str, str] = {}
    fernet = airflow.run("config", "get-value", "core", "fernet_key")
    if fernet.returncode != 0 or not fernet.stdout.strip():  # the file tier reuses Airflow's key
        extra["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
    # bench/shared_cache.py asks for several rounds (the variants interleaved, so a machine whose load
    # changes during the run weighs on each variant alike); the test itself runs one.
    rounds = int(os.environ.get("CREDPATH_BENCH_SHARED_ROUNDS") or 1)
    # bench/shared_cache.py --sequential runs one task at a time: each task's secrets time is then its own
    # work, not its share of ten task processes starting at once on two cores.
    if os.environ.get("CREDPATH_BENCH_SHARED_PARALLELISM"):
        extra["AIRFLOW__CORE__PARALLELISM"] = os.environ["CREDPATH_BENCH_SHARED_PARALLELISM"]
    runs: dict[str, list[tuple[int, int]]] = {name: [] for name in DAG_VARIANTS}
    for round_ in range(rounds):
        cold = tmp_path / f"round{round_}"  # each round starts with an empty shared tier
        cold.mkdir()
        cache_key = DAG_CACHE_KEY if round_ == 0 else Fernet.generate_key().decode()
        for name in DAG_VARIANTS:
            proxy = fault_proxy(parts.hostname, parts.port)
            variant = dag_variant(name, openbao.root_token, dag_vault, proxy.url, cold, redis_url, cache_key)
            env = {**variant, **extra}
            dag_id = "store_calls_" + re.sub(r"\W", "_", name) + (f"_{round_}" if round_ else "")
            write_store_calls_dag(airflow, dag_id, DAG_CONN_IDS, tasks=10)
            code, times = run_store_calls_dag(airflow, dag_id, env)
            assert_no_secret((airflow.home / f"{dag_id}.out").read_text())
            assert code in (0, None), f"{name}: airflow dags test failed (rc={code})"
            assert len(times) == 10, f"{name}: {len(times)} of 10 tasks reported"
            runs[name].append((proxy.count(), proxy.count(r"/v1/[^/]+/data/")))
            task_ms.setdefault(name, []).extend(times)
            ops.setdefault(name, []).extend(task_ops(airflow, dag_id))
            assert len(ops[name]) == 10 * (round_ + 1), f"{name}: a task did not report its operations"
            proxy.stop()
    # Per DAG run: the most any run of the variant cost.
    calls = {name: max(c for c, _ in results) for name, results in runs.items()}
    reads = {name: max(r for _, r in results) for name, results in runs.items()}
    figures = os.environ.get("CREDPATH_BENCH_SHARED_OUT")  # bench/shared_cache.py reads the figures here
    if figures:
        Path(figures).write_text(
            json.dumps(
                {"calls": calls, "reads": reads, "task_ms": task_ms, "ops": ops, "runs": runs}, sort_keys=True
            )
        )
    assert reads["airflow"] >= 30  # each task process reads each connection
    # The drop-in, with no shared tier, costs no more requests than Airflow's own backend...
    assert calls["credpath"] <= min(c for c, _ in runs["airflow"]), runs
    # ... and no more work in a task process (counted, not timed: the machine may be busy). The task
    # process is forked from the supervisor, which built the backend: it inherits the search path and the
    # started store client, so it builds and imports none itself.
    for task in ops["credpath"]:
        assert task["search_paths_built"] == 0, task
        assert task["client_modules_imported"] == [], task
        # Store calls run on the task's own thread, each socket wait capped by the call's deadline (a
        # worker thread per call cost two hand-overs, milliseconds each with ten tasks starting at once).
        assert task["threads_started"] == 0, task
    # Each masker registration is a round trip to the supervisor; the Task SDK registers a connection's
    # password itself, so the drop-in sends none of its own for these connections (no secret extras).
    sent = {
        name: sorted(m for task in ops[name] for m in task["supervisor_messages"])
        for name in ("airflow", "credpath")
    }
    assert sent["credpath"] == sent["airflow"], sent
    # A shared tier: one read per connection for the whole DAG run (token auth: no login at all).
    for name in ("credpath+file", "credpath+redis"):
        assert reads[name] == len(DAG_CONN_IDS), (name, reads)
        assert calls[name] <= len(DAG_CONN_IDS) + 1, (name, calls)


# --- the same for AWS Secrets Manager: Airflow's provider backend vs the drop-in ------

AWS_DAG_VARIANTS = ("airflow", "credpath")


@pytest.fixture(scope="module")
def dag_aws(moto_server: MotoServer) -> Iterator[str]:
    """The DAG's connections in moto's Secrets Manager under a prefix of their own: the prefix."""
    prefix = f"dagc-{uuid.uuid4().hex[:8]}"
    client = moto_server.client("secretsmanager")
    names = [f"{prefix}/connections/{conn_id}" for conn_id in DAG_CONN_IDS]
    logging.disable(logging.CRITICAL)  # seeding writes secret values; botocore logs bodies at DEBUG
    for index, name in enumerate(names):
        uri = f"postgres://u{index}:pw-s3cr3t-aws-dag-{index}@aws-dag-db-{index}.internal:5432/d"
        client.create_secret(Name=name, SecretString=uri)
    logging.disable(logging.NOTSET)
    yield prefix
    logging.disable(logging.CRITICAL)
    for name in names:
        client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
    logging.disable(logging.NOTSET)


def aws_dag_variant(name: str, prefix: str, proxy_url: str) -> dict[str, str]:
    """Airflow's provider backend, or the drop-in with one aws-secrets-manager backend given the SAME
    kwargs (no shared tier); credentials from the environment, as a deployment's instance role would be."""
    airflow_kwargs = {
        "endpoint_url": proxy_url,
        "region_name": REGION,
        "connections_prefix": f"{prefix}/connections",
        "variables_prefix": f"{prefix}/variables",
        "config_prefix": None,
    }
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}
    if name == "airflow":
        backend = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
        return {**creds, **_dag_env(backend, airflow_kwargs)}
    backends = [{"name": "aws", "type": "aws-secrets-manager", "kwargs": dict(airflow_kwargs)}]
    return {**creds, **_dag_env(CLASS_PATH, {"backends": backends})}


@pytest.mark.airflow
@pytest.mark.timeout(1200)  # two DAG runs (per round) of 10 task processes each, on a small shared machine
def test_dag_run_store_calls_aws_airflow_vs_credpath(
    airflow: AirflowEnv,
    airflow_api_server: ApiServer,
    moto_server: MotoServer,
    dag_aws: str,
    fault_proxy: Any,
) -> None:
    from tests.servers.airflow_env import (
        AWS_CLIENT_MODULES,
        run_store_calls_dag,
        task_ops,
        write_store_calls_dag,
    )

    task_ms: dict[str, list[float]] = {}
    ops: dict[str, list[dict[str, Any]]] = {}
    # Rounds and --sequential as in the Vault test above (bench/shared_cache.py --store aws).
    rounds = int(os.environ.get("CREDPATH_BENCH_SHARED_ROUNDS") or 1)
    one_at_a_time = os.environ.get("CREDPATH_BENCH_SHARED_PARALLELISM")
    extra = {"AIRFLOW__CORE__PARALLELISM": one_at_a_time} if one_at_a_time else {}
    runs: dict[str, list[int]] = {name: [] for name in AWS_DAG_VARIANTS}
    for round_ in range(rounds):
        for name in AWS_DAG_VARIANTS:
            proxy = fault_proxy("127.0.0.1", moto_server.port)  # counts every request at the wire
            env = {**aws_dag_variant(name, dag_aws, proxy.url), **extra}
            dag_id = "store_calls_aws_" + name + (f"_{round_}" if round_ else "")
            write_store_calls_dag(airflow, dag_id, DAG_CONN_IDS, tasks=10, client_modules=AWS_CLIENT_MODULES)
            code, times = run_store_calls_dag(airflow, dag_id, env)
            assert_no_secret((airflow.home / f"{dag_id}.out").read_text())
            assert code in (0, None), f"{name}: airflow dags test failed (rc={code})"
            assert len(times) == 10, f"{name}: {len(times)} of 10 tasks reported"
            runs[name].append(proxy.count())
            task_ms.setdefault(name, []).extend(times)
            ops.setdefault(name, []).extend(task_ops(airflow, dag_id))
            assert len(ops[name]) == 10 * (round_ + 1), f"{name}: a task did not report its operations"
            proxy.stop()
    calls = {name: max(counts) for name, counts in runs.items()}
    figures = os.environ.get("CREDPATH_BENCH_SHARED_AWS_OUT")  # bench/shared_cache.py --store aws
    if figures:
        Path(figures).write_text(
            json.dumps({"calls": calls, "task_ms": task_ms, "ops": ops, "runs": runs}, sort_keys=True)
        )
    assert min(runs["airflow"]) >= 30, runs  # each task process reads each connection (GetSecretValue)
    # The drop-in, with no shared tier, sends no more requests than Airflow's provider backend...
    assert calls["credpath"] <= min(runs["airflow"]), runs
    # ... and its task processes build no search path and import no botocore: the supervisor built the
    # session and the client before the fork (counted, not timed).
    for task in ops["credpath"]:
        assert task["search_paths_built"] == 0, task
        assert task["client_modules_imported"] == [], task
        assert task["threads_started"] <= 1, task
    sent = {
        name: sorted(m for task in ops[name] for m in task["supervisor_messages"])
        for name in AWS_DAG_VARIANTS
    }
    assert sent["credpath"] == sent["airflow"], sent


def test_lookups_in_a_task_process_are_counted_into_airflows_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import credpath.airflow
    from credpath import metrics
    from credpath.airflow import _CredpathBackendMixin

    sent: list[tuple[str, str, dict[str, str]]] = []

    class Stats:  # the interface of airflow.sdk.observability.stats.Stats that credpath uses
        @staticmethod
        def incr(stat: str, count: int = 1, *, tags: dict[str, str]) -> None:
            sent.append(("incr", stat, tags))

        @staticmethod
        def timing(stat: str, value: float, *, tags: dict[str, str]) -> None:
            sent.append(("timing", stat, tags))

    for name in ("airflow", "airflow.sdk", "airflow.sdk.observability"):
        monkeypatch.setitem(sys.modules, name, sys.modules.get(name) or types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "airflow.sdk.observability.stats", types.SimpleNamespace(Stats=Stats))
    credpath.airflow.reset()
    metrics.reset()
    try:
        backend = _CredpathBackendMixin(
            backends=_files_backend(tmp_path, f"{__name__}.{CachedFilesBackend.__name__}")
        )
        assert backend.get_conn_value("files_db") is not None
        assert backend.get_conn_value("files_db") is not None  # a cache hit
        stats = [(kind, stat) for kind, stat, _ in sent]
        assert ("incr", "credpath.store_requests") in stats
        lookups = [tags for kind, stat, tags in sent if stat == "credpath.lookups"]
        assert [t["tier"] for t in lookups] == ["store", "process"]
    finally:
        credpath.airflow.reset()
        metrics.disable()
        metrics.reset()


def _fake_task_process(monkeypatch: pytest.MonkeyPatch, masked: list[tuple[Any, str | None]]) -> None:
    """sys.modules as in an Airflow 3.3 task process: a supervisor channel, the SDK's masker, and the
    SDK's context module (whose lookups mask what they return)."""
    import types

    def mask_secret(value: Any, name: str | None = None) -> None:
        masked.append((value, name))

    modules = {
        "airflow": types.ModuleType("airflow"),
        "airflow.sdk": types.ModuleType("airflow.sdk"),
        "airflow.sdk.log": types.SimpleNamespace(mask_secret=mask_secret),
        "airflow.sdk.execution_time": types.ModuleType("airflow.sdk.execution_time"),
        "airflow.sdk.execution_time.task_runner": types.SimpleNamespace(SUPERVISOR_COMMS=object()),
        "airflow.sdk.execution_time.context": types.SimpleNamespace(
            _mask_connection_secrets=lambda conn: None, _mask_and_deserialize_variable=lambda *a: None
        ),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


def test_in_a_task_process_only_what_the_sdk_does_not_mask_goes_to_the_masker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each registration in a task process is a round trip to the supervisor: the password and a
    # variable's value, which the Task SDK masks itself after the lookup, are not sent again.
    import credpath.airflow
    from credpath.airflow import _CredpathBackendMixin

    masked: list[tuple[Any, str | None]] = []
    _fake_task_process(monkeypatch, masked)
    monkeypatch.setattr(credpath.airflow, "_masked", set())
    backend = _CredpathBackendMixin(backends=_files_backend(tmp_path))
    assert backend.get_conn_value("files_db") is not None
    assert backend.get_variable("db_password") is not None
    assert [(_digest(value), name) for value, name in masked] == [(_digest("key-s3cr3t-files"), None)]


def test_outside_a_task_process_secrets_go_to_the_masker_in_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import credpath.airflow
    from credpath.airflow import _CredpathBackendMixin

    masked: list[tuple[Any, str | None]] = []
    _fake_task_process(monkeypatch, masked)
    monkeypatch.setitem(sys.modules, "airflow.sdk.execution_time.context", None)  # an SDK that masks nothing
    monkeypatch.setattr(credpath.airflow, "_masked", set())
    backend = _CredpathBackendMixin(backends=_files_backend(tmp_path))
    assert backend.get_conn_value("files_db") is not None
    assert backend.get_conn_value("files_db") is not None  # registered once per process
    assert backend.get_variable("db_password") is not None
    digests = [([_digest(v) for v in value] if isinstance(value, list) else _digest(value), name)
               for value, name in masked]  # fmt: skip
    assert digests == [
        ([_digest("pw-s3cr3t-files"), _digest("key-s3cr3t-files")], None),
        (_digest("pw-s3cr3t-var"), "db_password"),
    ]
