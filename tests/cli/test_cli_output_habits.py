# ruff: noqa: F811 - `run` is the CliRunner fixture imported from test_cli_airflow_habits
"""The CLI's output as people use it: Airflow's -o formats, one-line usage errors, tables off a terminal,
empty lists, team-owned ids, nested secrets in values, stdout exports, `credpath web`'s own refusals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from credpath.api import set_default_search_path
from tests.cli.test_cli_airflow_habits import run  # noqa: F401 - the CliRunner fixture
from tests.conftest import assert_no_secret

REPO = Path(__file__).resolve().parents[2]
URI = "postgres://app:pw-s3cr3t-1@db.example.com:5432/analytics?sslmode=require&api_key=key-s3cr3t-2"
#: Airflow 3.3.2's ConnectionDisplayMapper.full_details keys (`airflow connections get ID -o json`).
AIRFLOW_GET_KEYS = [
    "id",
    "conn_id",
    "conn_type",
    "description",
    "host",
    "schema",
    "login",
    "password",
    "port",
    "is_encrypted",
    "is_extra_encrypted",
    "extra_dejson",
    "get_uri",
]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    for name in list(os.environ):
        if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__")):
            monkeypatch.delenv(name, raising=False)
    yield
    set_default_search_path(None)


# --- -o/--output ---------------------------------------------------------------------------------------


def test_connections_get_output_json_has_airflows_shape_and_masks(run):
    run("connections", "add", "my_db", "--uri", URI)
    result = run("connections", "get", "my_db", "-o", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1  # one line, as Airflow's
    [record] = json.loads(result.stdout)
    assert list(record) == AIRFLOW_GET_KEYS
    assert record["password"] == "***"
    assert record["port"] == "5432"  # Airflow prints every scalar as text
    assert record["extra_dejson"] == {"sslmode": "require", "api_key": "***"}
    assert "pw-s3cr3t" not in record["get_uri"] and "***" in record["get_uri"]
    assert (record["id"], record["is_encrypted"]) == (None, "True")


@pytest.mark.reveals_secrets
def test_connections_get_output_json_reveal(run):
    run("connections", "add", "my_db", "--uri", URI)
    [record] = json.loads(run("connections", "get", "my_db", "-o", "json", "--reveal", reveal_ok=True).stdout)
    assert record["password"] == "pw-s3cr3t-1"
    assert record["get_uri"].startswith("postgres://app:pw-s3cr3t-1@db.example.com:5432/analytics")


def test_output_yaml_table_plain_and_list(run):
    run("connections", "add", "my_db", "--uri", URI)
    [record] = yaml.safe_load(run("connections", "get", "my_db", "--output", "yaml").stdout)
    assert record["conn_id"] == "my_db" and record["password"] == "***"
    table = run("connections", "get", "my_db", "-o", "table").stdout
    assert "conn_id" in table and "my_db" in table and "pw-s3cr3t" not in table
    plain = run("connections", "list", "-o", "plain").stdout.splitlines()
    assert plain[0].split() == ["conn_id", "source", "team"] and plain[1].split() == ["my_db", "metastore"]
    listed = json.loads(run("connections", "list", "-o", "json").stdout)
    assert listed == [{"conn_id": "my_db", "source": "metastore", "team": None}]
    assert json.loads(run("variables", "list", "-o", "json").stdout) == []
    assert run("variables", "list", "-o", "table").stdout == "No data found\n"


def test_json_and_output_together_is_one_line_exit_2(run):
    result = run("connections", "get", "x", "--json", "-o", "json")
    assert result.exit_code == 2 and result.stderr.startswith("credpath: error:")


# --- usage errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("connections", "get"),
        ("connections", "get", "x", "--bogus"),
        ("no-such-command",),
        ("connections", "get", "x", "-o", "xml"),
        ("web", "--port", "notaport"),
    ],
)
def test_usage_errors_are_one_line_exit_2(run, args):
    result = run(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credpath: error: "), result.stderr
    assert "--help" in lines[0] and result.stdout == ""


def test_help_and_version_still_exit_0(run):
    assert run("--help").exit_code == 0
    assert run("connections", "--help").exit_code == 0
    assert run("--version").exit_code == 0


# --- tables and empty lists -----------------------------------------------------------------------------


def test_empty_list_is_one_line(run):
    for kind in ("connections", "variables"):
        result = run(kind, "list")
        assert result.exit_code == 0
        assert result.stdout == f"no {kind}\n"
        assert "┏" not in result.stdout


def test_table_off_a_terminal_is_never_wrapped(run):
    description = "a long description " * 8  # 152 characters, wider than 80 columns
    run("connections", "add", "wide", "--conn-type", "http", "--conn-host", "h.example",
        "--conn-description", description.strip())  # fmt: skip
    out = run("connections", "get", "wide").stdout
    assert description.strip() in out  # on one line, whole
    assert all(len(line) > 152 for line in out.splitlines() if "│" in line)


# --- nested secrets in values ------------------------------------------------------------------------


def test_variable_json_with_nested_secrets_is_masked_without_reveal(run):
    value = json.dumps(
        {"password": "nested-s3cr3t-1", "db": {"api_key": "nested-s3cr3t-2", "port": 5432},
         "pins": {"secret": [1234, 5678]}, "zone": "eu-1"}
    )  # fmt: skip
    run("variables", "set", "app_settings", value)
    shown = json.loads(run("variables", "get", "app_settings").stdout)
    assert shown == {"password": "***", "db": {"api_key": "***", "port": 5432},
                     "pins": {"secret": ["***", "***"]}, "zone": "eu-1"}  # fmt: skip
    as_json = json.loads(run("variables", "get", "app_settings", "--json").stdout)
    assert "s3cr3t" not in as_json["value"] and "1234" not in as_json["value"]
    # A value with nothing sensitive is printed as stored (not re-serialized).
    run("variables", "set", "plain_json", '{"b":1,  "a":2}')
    assert run("variables", "get", "plain_json").stdout == '{"b":1,  "a":2}\n'


def test_connection_extra_with_nested_and_non_string_secrets(run):
    extra = json.dumps({"auth": {"token": "tok-s3cr3t-9", "retries": 3}, "secret_pin": 9876, "region": "x"})
    run("connections", "add", "svc", "--conn-type", "http", "--conn-host", "h", "--conn-extra", extra)
    data = json.loads(run("connections", "get", "svc", "--json").stdout)
    assert data["extra"] == {"auth": {"token": "***", "retries": 3}, "secret_pin": "***", "region": "x"}


# --- team-owned ids ---------------------------------------------------------------------------------------


def test_list_leaves_out_other_teams_ids_and_marks_the_callers_own(run):
    run("connections", "add", "glob", "--conn-uri", "postgres://g/db")
    run("connections", "add", "team_conn", "--conn-uri", "postgres://t/db", "--team", "team_a")
    run("connections", "add", "other_conn", "--conn-uri", "postgres://o/db", "--team", "team_b")
    plain = run("connections", "list")
    assert "glob" in plain.stdout and "team_conn" not in plain.stdout and "other_conn" not in plain.stdout
    assert "2 connection id(s) owned by teams not listed" in plain.stderr
    assert run("connections", "get", "team_conn").exit_code == 1  # what list no longer shows
    team = json.loads(run("connections", "list", "--team", "team_a", "--json").stdout)
    assert {(i["id"], i["team"]) for i in team["items"]} == {("glob", None), ("team_conn", "team_a")}
    assert team["other_teams_ids"] == 1
    # Everything listed with a team is readable with it.
    for item in team["items"]:
        assert run("connections", "get", item["id"], "--team", "team_a").exit_code == 0


# --- stdout exports -------------------------------------------------------------------------------------


def test_variables_export_to_stdout_ends_with_a_newline(run):
    run("variables", "set", "region", "eu-west-1")
    for fmt in ("json", "yaml", "env"):
        out = run("variables", "export", "-", "--file-format", fmt).stdout
        assert out.endswith("\n") and not out.endswith("\n\n"), fmt


# --- credpath web's own refusals --------------------------------------------------------------------


def _web_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDPATH_", "AIRFLOW_"))}
    env.update(PYTHONPATH=str(REPO / "src"), CREDPATH_HOME=str(tmp_path / "home"))
    return env


def test_token_file_readable_by_others_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("tok-s3cr3t-web\n")
    for mode in (0o644, 0o640, 0o604):
        token.chmod(mode)
        result = subprocess.run(
            [sys.executable, "-m", "credpath", "web", "--token-file", str(token), "--port", "1"],
            env=_web_env(tmp_path), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, oct(mode)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--token-file" in lines[0] and "chmod 600" in lines[0]
        assert_no_secret(result.stderr + result.stdout)


def test_token_file_mode_600_is_read():
    from credpath.cli.web import read_token

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"credpath-token-{os.getpid()}"
    try:
        path.write_text("tok-value\n")
        path.chmod(0o600)
        assert read_token(path) == "tok-value"
    finally:
        path.unlink()


def test_web_on_a_busy_port_is_one_line_exit_2(tmp_path):
    pytest.importorskip("uvicorn")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    config = tmp_path / "credpath.toml"
    config.write_text('[[backends]]\nname = "env"\ntype = "env"\n')
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "credpath", "web", "--config", str(config), "--port", str(port)],
            env=_web_env(tmp_path), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        busy.close()
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credpath: error:") and str(port) in lines[0]
    assert "serving" not in result.stderr
    assert time.monotonic() - started < 30


def test_explain_cache_on_a_shared_tier_hit_prints_no_empty_table(run, monkeypatch):
    monkeypatch.setenv("CREDPATH_CACHE_SHARED", "file")
    run("connections", "add", "my_db", "--uri", URI)
    assert run("connections", "get", "my_db", "--json").exit_code == 0  # fills the shared tier
    # Each command builds its own search path: an empty process cache, the file tier filled.
    result = run("explain", "connection", "my_db", "--cache")
    assert result.exit_code == 0, result.output
    assert "┏" not in result.stdout and "└" not in result.stdout
    assert result.stdout.splitlines() == [
        "no backend asked: answered by the shared cache",
        "served by: metastore (cached)",
        "tier: shared",
    ]


def test_list_with_a_team_shows_the_teams_environment_names(run, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    monkeypatch.setenv("AIRFLOW_CONN__TEAM_A___TEAM_DB", "postgres://team-host/db")
    monkeypatch.setenv("AIRFLOW_CONN_GLOBAL_DB", "postgres://global-host/db")
    plain = json.loads(run("connections", "list", "--json").stdout)
    assert [i["id"] for i in plain["items"]] == ["global_db"]
    team = json.loads(run("connections", "list", "--team", "team_a", "--json").stdout)
    assert {(i["id"], i["source"], i["team"]) for i in team["items"]} == {
        ("global_db", "env", None),
        ("team_db", "env", "team_a"),
    }
    assert run("connections", "get", "team_db", "--team", "team_a").exit_code == 0
