"""The CLI in an outage: exit 1 saying so (not "not found"); explain: start-up time, breaker state."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from credpath.cli import cli
from tests.conftest import assert_no_secret


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    for name in ("CREDPATH_CONFIG", "AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "credpath.toml"
    config.write_text(
        '[[backends]]\nname = "vault"\ntype = "tests.memory_backend.DownBackend"\n\n'
        '[[backends]]\nname = "env"\ntype = "env"\n'
    )
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
        assert_no_secret(result.stdout)
        assert_no_secret(result.stderr)
        return result

    return invoke


def test_an_outage_exits_1_and_says_so_not_not_found(run):
    result = run("connections", "get", "db")
    assert result.exit_code == 1
    assert "backend 'vault' failed" in result.stderr and "outage" in result.stderr
    assert "not found in any backend" not in result.stderr  # main: "not found in any backend ..."
    assert run("variables", "get", "k").exit_code == 1


def test_explain_shows_startup_breaker_and_fall_through(run, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DB", "postgres://u:pw-s3cr3t@env-host/db")
    data = json.loads(run("explain", "connection", "db", "--json").stdout)
    assert data["source"] == "env" and data["failed"] == ["vault"]
    assert data["summary"] == "served by: env (while vault failed)"
    assert [a["outcome"] for a in data["attempts"]] == ["error", "hit"]
    assert all("startup_ms" in a and "breaker" in a for a in data["attempts"])
    assert data["attempts"][0]["breaker"] == "closed"
    table = run("explain", "connection", "db")
    assert table.exit_code == 0
    assert "start-up ms" in table.stdout and "breaker" in table.stdout
    assert "served by: env (while vault failed)" in table.stdout
    missing = run("explain", "connection", "nope")
    assert missing.exit_code == 1
    assert "not found, but vault failed: an outage, not a miss" in missing.stdout


def test_backends_check_shows_the_breaker(run):
    result = run("backends", "check", "--json")
    assert result.exit_code == 1
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["vault"]["breaker"] == "closed" and not rows["vault"]["ok"]
    assert rows["env"]["ok"]


def test_a_backend_that_fails_to_list_is_named_as_failed_and_exits_1(run, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LISTED", "postgres://u@env-host/db")
    result = run("connections", "list")
    assert result.exit_code == 1  # the listing is incomplete (main: exit 0, vault "cannot list")
    assert "listed" in result.stdout
    assert "credpath: error: backend 'vault'" in result.stderr
    assert "cannot list): vault" not in result.stderr
    data = json.loads(run("connections", "list", "--json").stdout)
    assert list(data["failed_backends"]) == ["vault"] and "vault" not in data["unlistable_backends"]
