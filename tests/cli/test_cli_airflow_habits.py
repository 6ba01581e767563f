"""Airflow users' CLI habits: `connections add` flags, import/export options, secrets from standard input,
`--team`, and exports that never leave a partial file. Each expectation is read from Airflow 3.3.2's
airflow/cli/cli_config.py and commands/{connection,variable}_command.py."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from credpath.api import set_default_search_path
from credpath.cli import cli
from credpath.protocol import BaseBackend
from tests.conftest import assert_no_secret

PW = "pw-s3cr3t-7"


class FailingBackend(BaseBackend):
    """Lists one id and fails to read it: a store that goes down in the middle of an export."""

    alias = "failing"
    store_name = "failing store"
    capabilities = frozenset({"list"})

    def get_conn_value(self, conn_id: str) -> str | None:
        raise self.error("connection refused")

    def get_variable(self, key: str) -> str | None:
        raise self.error("connection refused")

    def list_connections(self) -> list[str]:
        return ["from_failing"]

    def list_variables(self) -> list[str]:
        return ["from_failing"]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    for name in (
        "CREDPATH_CONFIG",
        "CREDPATH_METASTORE_URL",
        "CREDPATH_FERNET_KEY",
        "AIRFLOW__SECRETS__BACKEND",
        "AIRFLOW__SECRETS__BACKEND_KWARGS",
        "AIRFLOW__CORE__MULTI_TEAM",
    ):
        monkeypatch.delenv(name, raising=False)
    set_default_search_path(None)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, reveal_ok: bool = False):
        result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
        if not reveal_ok:
            assert_no_secret(result.stdout)
            assert_no_secret(result.stderr)
        return result

    return invoke


def _get(run, conn_id: str, *extra: str) -> dict:
    result = run("connections", "get", conn_id, "--json", *extra, reveal_ok="--reveal" in extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credpath: error: "), lines
    return lines[0]


# --- connections add: Airflow's flags -----------------------------------------------------------------


def test_add_takes_airflow_field_flags(run):
    result = run(
        "connections",
        "add",
        "af_fields",
        "--conn-type",
        "postgres",
        "--conn-host",
        "db.example.com",
        "--conn-login",
        "app",
        "--conn-password",
        "-",
        "--conn-schema",
        "analytics",
        "--conn-port",
        "5432",
        "--conn-extra",
        '{"sslmode": "require"}',
        "--conn-description",
        "main db",
        input=PW + "\n",
    )
    assert result.exit_code == 0, result.output
    data = _get(run, "af_fields")
    assert {k: data[k] for k in ("conn_type", "host", "login", "schema", "port", "description", "extra")} == {
        "conn_type": "postgres",
        "host": "db.example.com",
        "login": "app",
        "schema": "analytics",
        "port": 5432,
        "description": "main db",
        "extra": {"sslmode": "require"},
    }
    assert data["password"] == "***"  # set (from standard input), masked


@pytest.mark.reveals_secrets
def test_password_from_stdin_is_stored_without_the_line_ending(run):
    result = run("connections", "add", "c", "--conn-type", "http", "--conn-password", "-", input=PW + "\r\n")
    assert result.exit_code == 0, result.output
    assert _get(run, "c", "--reveal")["password"] == PW


def test_add_conn_uri_with_conn_extra_and_description_as_airflow(run):
    # Airflow: --conn-extra may accompany --conn-uri and replaces the URI's extra (new_conn.set_extra).
    result = run(
        "connections",
        "add",
        "u",
        "--conn-uri",
        "mysql://h:3306/db?charset=utf8",
        "--conn-extra",
        '{"ssl": true}',
        "--conn-description",
        "from uri",
    )
    assert result.exit_code == 0, result.output
    data = _get(run, "u")
    assert (data["host"], data["port"], data["extra"], data["description"]) == (
        "h",
        3306,
        {"ssl": True},
        "from uri",
    )


def test_add_conn_json_as_airflow(run):
    assert (
        run("connections", "add", "j", "--conn-json", '{"conn_type": "http", "host": "api"}').exit_code == 0
    )
    assert _get(run, "j")["host"] == "api"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--conn-uri", "x://h", "--conn-host", "other"), "--conn-host cannot be combined with --conn-uri"),
        (("--conn-json", '{"conn_type": "x"}', "--conn-extra", "{}"), "--conn-extra cannot be combined"),
        (("--conn-uri", "x://h", "--conn-json", '{"conn_type": "x"}'), "not both"),
        (
            ("--conn-json", '{"host": "h"}'),
            "--conn-json needs a conn_type",
        ),  # Airflow: "must supply conn-type"
        (("--conn-uri", "//h"), "--conn-uri needs a '<conn_type>://' scheme"),  # Airflow's _valid_uri
        (("--conn-host", "h"), "give --conn-uri, --conn-json, or --conn-type"),
        (("--conn-type", "x", "--conn-port", "port-s3cr3t"), "'port'"),
        (("--conn-uri", "-", "--conn-password", "-"), "only one option can read standard input"),
    ],
    ids=[
        "uri+field",
        "json+extra",
        "uri+json",
        "json-no-type",
        "uri-no-scheme",
        "no-type",
        "bad-port",
        "two-dashes",
    ],
)
def test_add_refuses_what_airflow_refuses_in_one_line(run, args, message):
    line = _one_line_error(run("connections", "add", "c", *args, input="x://h\n"))
    assert message in line


@pytest.mark.parametrize("conn_id", ["has space", "a/b", "x" * 201, "a..b"])
def test_add_validates_the_id_as_airflow(run, conn_id):
    # airflow connections add: helpers.validate_key(conn_id, max_length=200).
    _one_line_error(run("connections", "add", conn_id, "--conn-uri", "x://h"))


@pytest.mark.parametrize("flag", ["--uri", "--conn-uri"])
def test_uri_from_stdin(run, flag):
    result = run("connections", "add", "s", flag, "-", input=f"postgres://u:{PW}@stdin-host:5432/db\n")
    assert result.exit_code == 0, result.output
    assert _get(run, "s")["host"] == "stdin-host"


def test_terminal_gets_a_hidden_prompt(run, monkeypatch):
    import credpath.cli.connections as connections_cli

    monkeypatch.setattr(connections_cli, "_stdin_is_terminal", lambda: True)
    result = run("connections", "add", "p", "--conn-type", "http", "--conn-password", "-", input=PW + "\n")
    assert result.exit_code == 0, result.output
    assert "--conn-password: " in result.output  # the prompt; the typed secret is not echoed (checked by run)
    assert _get(run, "p")["password"] == "***"
    result = run("variables", "set", "api_token", "-", input="tok-s3cr3t\n")
    assert result.exit_code == 0 and "VALUE: " in result.output


@pytest.mark.reveals_secrets
def test_variables_set_value_from_stdin(run):
    assert run("variables", "set", "api_token", "-", input="tok-s3cr3t\nline2\n").exit_code == 0
    result = run("variables", "get", "api_token", "--reveal", reveal_ok=True)
    assert result.stdout == "tok-s3cr3t\nline2\n"  # only the final line ending is dropped


# --- import: Airflow's --overwrite / --action-on-existing-key and a summary that says what happened -------


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_connections_import_skips_existing_by_default_as_airflow(run, tmp_path):
    run("connections", "add", "a", "--conn-uri", "x://old-a")
    file = _write(tmp_path / "c.json", {"a": "x://new-a", "b": "x://new-b"})
    result = run("connections", "import", str(file))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "imported 1 of 2 connection(s) into 'metastore': 1 added, 0 overwritten, 1 skipped (already there)",
        "skipped: a",
    ]
    assert _get(run, "a")["host"] == "old-a"
    result = run("connections", "import", str(file), "--overwrite")
    assert result.stdout.splitlines()[0].endswith("0 added, 2 overwritten, 0 skipped (already there)")
    assert _get(run, "a")["host"] == "new-a"


def test_connections_import_action_fail_writes_nothing(run, tmp_path):
    run("connections", "add", "a", "--conn-uri", "x://old-a")
    file = _write(tmp_path / "c.json", {"a": "x://new-a", "z": "x://new-z"})
    line = _one_line_error(run("connections", "import", str(file), "--action-on-existing-key", "fail"))
    assert "already in backend 'metastore': a" in line
    assert run("connections", "get", "z").exit_code == 1


def test_connections_import_refuses_ids_airflow_would_not_import(run, tmp_path):
    file = _write(tmp_path / "c.json", {"ok": "x://h", "bad id": "x://h"})
    assert "'bad id'" in _one_line_error(run("connections", "import", str(file)))
    assert run("connections", "get", "ok").exit_code == 1  # all or nothing


def test_variables_import_overwrites_by_default_and_says_so(run, tmp_path):
    run("variables", "set", "a", "old")
    file = _write(tmp_path / "v.json", {"a": "new", "b": "2"})
    result = run("variables", "import", str(file))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "imported 2 of 2 variable(s) into 'metastore': 1 added, 1 overwritten, 0 skipped (already there)",
        "overwritten: a",
    ]
    assert run("variables", "get", "a").stdout == "new\n"


def test_variables_import_actions(run, tmp_path):
    run("variables", "set", "a", "old")
    file = _write(tmp_path / "v.json", {"a": "new", "b": "2"})
    result = run("variables", "import", str(file), "-a", "skip")
    assert result.stdout.splitlines()[0].endswith("1 added, 0 overwritten, 1 skipped (already there)")
    assert run("variables", "get", "a").stdout == "old\n"
    run("variables", "delete", "b")
    line = _one_line_error(run("variables", "import", str(file), "--action-on-existing-key", "fail"))
    assert "already in backend 'metastore': a" in line
    assert run("variables", "get", "b").exit_code == 1  # nothing written
    _one_line_error(run("variables", "import", str(file), "--no-overwrite", "-a", "overwrite"))


# --- export: --file-format, --serialization-format, '-' -------------------------------------------------


def test_export_serialization_format_json_for_env(run, tmp_path):
    run("connections", "add", "a", "--conn-uri", "mysql://h:3306/db")
    out = tmp_path / "c.env"
    assert run("connections", "export", str(out), "--serialization-format", "json").exit_code == 0
    key, _, value = out.read_text().strip().partition("=")
    assert key == "a" and json.loads(value)["host"] == "h"  # Airflow's _connection_to_dict
    # Airflow: "Option `--serialization-format` may only be used with file type `env`."
    line = _one_line_error(
        run("connections", "export", str(tmp_path / "c.json"), "--serialization-format", "uri")
    )
    assert "env file format only" in line
    assert not (tmp_path / "c.json").exists()


def test_export_file_format_overrides_the_extension(run, tmp_path):
    assert run("variables", "set", "v", "1").exit_code == 0
    assert run("connections", "add", "a", "--conn-uri", "mysql://h:3306/db").exit_code == 0
    out = tmp_path / "connections"  # no extension: Airflow's "--file-format json" example
    assert run("connections", "export", str(out), "--file-format", "yaml").exit_code == 0
    assert out.read_text().startswith("a:\n")
    assert run("connections", "export", str(out), "--format", "json").exit_code == 0  # deprecated spelling
    assert json.loads(out.read_text())["a"]["host"] == "h"
    vout = tmp_path / "variables"
    assert run("variables", "export", str(vout), "--file-format", "env").exit_code == 0
    assert vout.read_text() == "v=1\n"


def test_export_to_stdout_as_airflow(run):
    assert run("variables", "set", "v", "1").exit_code == 0
    assert run("connections", "add", "a", "--conn-uri", "mysql://h:3306/db").exit_code == 0
    result = run("connections", "export", "-")  # Airflow: JSON by default on stdout
    assert result.exit_code == 0
    assert json.loads(result.stdout)["a"]["host"] == "h"
    assert "exported 1 connection(s) to standard output" in result.stderr
    result = run("variables", "export", "-", "--file-format", "yaml")
    assert result.stdout == "v: 1\n"


def _failing_config(tmp_path: Path) -> Path:
    conns = _write(tmp_path / "conns.json", {"a": "mysql://h"})
    variables = _write(tmp_path / "vars.json", {"v": "1"})
    config = tmp_path / "credpath.toml"
    config.write_text(
        f"""
[[backends]]
type = "files"
kwargs = {{ connections_file_path = "{conns}", variables_file_path = "{variables}" }}

[[backends]]
name = "flaky"
type = "tests.cli.test_cli_airflow_habits.FailingBackend"
"""
    )
    return config


@pytest.mark.parametrize("kind", ["connections", "variables"])
def test_export_exits_1_and_leaves_no_partial_file_when_a_backend_fails(run, tmp_path, kind):
    config = _failing_config(tmp_path)
    out = tmp_path / "out" / f"{kind}.json"
    out.parent.mkdir()
    out.write_text("previous export\n")
    result = run("--config", str(config), kind, "export", str(out))
    assert result.exit_code == 1, result.output
    assert "backend 'flaky' (failing store): connection refused" in result.stderr
    assert out.read_text() == "previous export\n"  # untouched
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left behind
    new = tmp_path / "out" / f"new-{kind}.json"
    assert run("--config", str(config), kind, "export", str(new)).exit_code == 1
    assert not new.exists()


def test_export_file_is_private(run, tmp_path):
    run("variables", "set", "v", "1")
    out = tmp_path / "v.json"
    assert run("variables", "export", str(out)).exit_code == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600"


# --- --team --------------------------------------------------------------------------------------------


def _search_path_takes_team_name() -> bool:
    from credpath._search_path import SearchPath

    return all(
        "team_name" in inspect.signature(getattr(SearchPath, name)).parameters
        for name in ("lookup", "explain")
    )


@pytest.mark.skipif(not _search_path_takes_team_name(), reason="SearchPath does not take team_name yet")
def test_team_option_reads_the_team_scope(run, monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    monkeypatch.setenv("AIRFLOW_CONN__TEAM_A___MY_DB", "postgres://team-host/db")
    monkeypatch.setenv("AIRFLOW_CONN_MY_DB", "postgres://global-host/db")
    monkeypatch.setenv("AIRFLOW_VAR__TEAM_A___SIZE", "7")
    monkeypatch.setenv("AIRFLOW_VAR_SIZE", "1")
    assert _get(run, "my_db", "--team", "team_a")["host"] == "team-host"
    assert _get(run, "my_db")["host"] == "global-host"
    assert run("variables", "get", "size", "--team", "team_a").stdout == "7\n"
    assert run("variables", "get", "size").stdout == "1\n"
    explained = json.loads(run("explain", "variable", "size", "--team", "team_a", "--json").stdout)
    assert explained["source"] == "env"


def test_team_option_is_accepted(run):
    # Whatever the search path supports, the option exists on the three commands.
    for args in (("connections", "get"), ("variables", "get"), ("explain", "connection")):
        result = run(*args, "--help")
        assert "--team" in result.stdout, args
