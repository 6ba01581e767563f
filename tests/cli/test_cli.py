"""The CLI on the embedded default search path (env + SQLite metastore), in-process with CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from credpath.api import set_default_search_path
from credpath.cli import cli
from tests.conftest import assert_no_secret

URI = "postgres://app:pw-s3cr3t-1@db.example.com:5432/analytics?sslmode=require&api_key=key-s3cr3t-2"


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    for name in (
        "CREDPATH_CONFIG",
        "CREDPATH_METASTORE_URL",
        "CREDPATH_FERNET_KEY",
        "AIRFLOW__SECRETS__BACKEND",
        "AIRFLOW__SECRETS__BACKEND_KWARGS",
    ):
        monkeypatch.delenv(name, raising=False)
    set_default_search_path(None)
    runner = CliRunner()

    def invoke(*args: str, reveal_ok: bool = False):
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        if not reveal_ok:
            assert_no_secret(result.stdout)
            assert_no_secret(result.stderr)
        return result

    return invoke


def test_add_get_masked_and_explain(run):
    assert run("connections", "add", "my_db", "--uri", URI).exit_code == 0
    result = run("connections", "get", "my_db", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == [
        "conn_id",
        "conn_type",
        "description",
        "host",
        "login",
        "password",
        "schema",
        "port",
        "extra",
        "source",
    ]
    assert data["password"] == "***"
    assert data["extra"] == {"sslmode": "require", "api_key": "***"}
    assert (data["host"], data["port"], data["source"]) == ("db.example.com", 5432, "metastore")
    human = run("connections", "get", "my_db")
    assert human.exit_code == 0 and "db.example.com" in human.output and "***" in human.output
    explained = run("explain", "connection", "my_db", "--json")
    attempts = json.loads(explained.stdout)["attempts"]
    assert [(a["backend"], a["outcome"]) for a in attempts] == [("env", "miss"), ("metastore", "hit")]


@pytest.mark.reveals_secrets
def test_reveal_shows_password(run):
    run("connections", "add", "my_db", "--uri", URI)
    data = json.loads(run("connections", "get", "my_db", "--json", "--reveal", reveal_ok=True).stdout)
    assert data["password"] == "pw-s3cr3t-1"


def test_env_wins_over_metastore_and_collisions_are_listed(run, monkeypatch):
    run("connections", "add", "shared", "--uri", "mysql://m:pw-s3cr3t@meta-host/db")
    monkeypatch.setenv("AIRFLOW_CONN_SHARED", "mysql://e:pw-s3cr3t@env-host/db")
    data = json.loads(run("connections", "get", "shared", "--json").stdout)
    assert (data["host"], data["source"]) == ("env-host", "env")
    listing = json.loads(run("connections", "list", "--collisions", "--json").stdout)
    assert listing["items"] == [{"id": "shared", "source": "env", "also_in": ["metastore"], "team": None}]


def test_not_found_exit_1(run):
    result = run("connections", "get", "nope")
    assert result.exit_code == 1
    assert "'nope' not found" in result.stderr
    assert run("variables", "get", "nope").exit_code == 1
    assert run("explain", "variable", "nope").exit_code == 1


def test_variables_set_get_list_delete(run, monkeypatch):
    assert run("variables", "set", "plain", "hello").exit_code == 0
    assert run("variables", "set", "db_password", "pw-s3cr3t-9").exit_code == 0
    assert run("variables", "get", "plain").output.strip() == "hello"
    assert run("variables", "get", "db_password").output.strip() == "***"
    monkeypatch.setenv("AIRFLOW_VAR_FROM_ENV", "x")
    listing = json.loads(run("variables", "list", "--json").stdout)
    assert [item["id"] for item in listing["items"]] == ["db_password", "from_env", "plain"]
    assert run("variables", "delete", "plain").exit_code == 0
    assert run("variables", "get", "plain").exit_code == 1
    assert run("variables", "get", "plain", "--default", "d").output.strip() == "d"


def test_bad_input_exit_2_one_line(run):
    cases = [
        ("connections", "add", "bad", "--uri", "mysql://u:pw-s3cr3t@h:99999/db"),
        ("connections", "add", "bad", "--json", '{"conn_type": "x", "port": 1.5, "password": "pw-s3cr3t"}'),
        ("connections", "add", "bad"),
        ("connections", "add", "x", "--uri", "x://h", "--to", "nosuch"),
        ("variables", "set", "k", "v", "--to", "env"),
    ]
    for args in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("credpath: error: "), lines


def test_bad_airflow_setting_exit_2(run, monkeypatch):
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "airflow.providers.hashicorp.secrets.vault.VaultBackend")
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", '{"token": "tok-s3cr3t"')
    result = run("connections", "get", "x")
    assert result.exit_code == 2
    assert "AIRFLOW__SECRETS__BACKEND_KWARGS is not valid JSON" in result.stderr


def test_existing_connection_needs_overwrite(run):
    assert run("connections", "add", "c", "--uri", "x://h1").exit_code == 0
    assert run("connections", "add", "c", "--uri", "x://h2").exit_code == 2
    assert run("connections", "add", "c", "--uri", "x://h2", "--overwrite").exit_code == 0
    assert json.loads(run("connections", "get", "c", "--json").stdout)["host"] == "h2"


def test_config_get_value_masks_kwargs(run, monkeypatch):
    assert run("config", "get-value", "secrets", "backend").output == "\n"
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "airflow.providers.hashicorp.secrets.vault.VaultBackend")
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", '{"url": "http://v", "token": "tok-s3cr3t"}')
    assert run("config", "get-value", "secrets", "backend").output.strip().endswith("vault.VaultBackend")
    assert json.loads(run("config", "get-value", "secrets", "backend_kwargs").stdout) == {
        "url": "http://v",
        "token": "***",
    }


def test_backends_check_and_list(run):
    result = run("backends", "check", "--json")
    assert result.exit_code == 0, result.output
    assert [r["name"] for r in json.loads(result.stdout)] == ["env", "metastore"]
    assert all(r["ok"] for r in json.loads(result.stdout))


def test_export_import_round_trip(run, tmp_path):
    run("connections", "add", "a", "--uri", URI)
    run("connections", "add", "b", "--uri", "http://:pw-s3cr3t@h:80/x")
    for ext in ("json", "yaml", "env"):
        out = tmp_path / f"conns.{ext}"
        assert run("connections", "export", str(out)).exit_code == 0
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        assert run("connections", "delete", "a").exit_code == 0
        result = run("connections", "import", str(out))
        assert result.exit_code == 0, result.output
        assert "imported 1 of 2 connection(s) into 'metastore': 1 added, 0 overwritten, 1 skipped" in (
            result.output
        )
        assert json.loads(run("connections", "get", "a", "--json").stdout)["host"] == "db.example.com"


def test_rotate_fernet_key(run, monkeypatch):
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("CREDPATH_FERNET_KEY", old)
    run("connections", "add", "c", "--uri", URI)
    set_default_search_path(None)
    monkeypatch.setenv("CREDPATH_FERNET_KEY", f"{new},{old}")
    result = run("rotate-fernet-key")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("CREDPATH_FERNET_KEY", new)
    assert json.loads(run("connections", "get", "c", "--json").stdout)["host"] == "db.example.com"
