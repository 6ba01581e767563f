"""``credpath migrate`` in-process (CliRunner) between SQLite metastores and inline backend types."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from credpath.api import set_default_search_path
from credpath.backends.metastore import MetastoreBackend
from credpath.cli import cli
from credpath.model import Connection
from tests.conftest import assert_no_secret


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    names = ("CREDPATH_CONFIG", "CREDPATH_METASTORE_URL", "CREDPATH_FERNET_KEY", "AIRFLOW__SECRETS__BACKEND")
    for name in (*names, "AIRFLOW__SECRETS__BACKEND_KWARGS"):
        monkeypatch.delenv(name, raising=False)
    set_default_search_path(None)
    src_url, dst_url = f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"
    key = Fernet.generate_key().decode()
    source = MetastoreBackend(url=src_url, fernet_key=key)
    for i in range(4):
        source.set_connection(
            Connection(
                conn_id=f"db_{i}", conn_type="postgres", host=f"h{i}", login="u", password=f"pw-s3cr3t-{i}"
            )
        )
    source.set_variable("api_token", "tok-s3cr3t-v")
    source.set_variable("region", "eu-west-1")
    config = tmp_path / "credpath.toml"
    config.write_text(
        f"""
[[backends]]
name = "old"
type = "metastore"
kwargs = {{ url = "{src_url}", fernet_key = "{key}" }}

[[backends]]
name = "new"
type = "metastore"
kwargs = {{ url = "{dst_url}", fernet_key = "{key}" }}
"""
    )
    return {"config": config, "dst_url": dst_url, "key": key, "tmp": tmp_path}


def run(env: dict[str, Any], *args: str) -> Any:
    result = CliRunner().invoke(
        cli, ["--config", str(env["config"]), "migrate", *args], catch_exceptions=False
    )
    assert_no_secret(result.stdout)
    assert_no_secret(result.stderr)
    return result


def _destination(env: dict[str, Any]) -> MetastoreBackend:
    return MetastoreBackend(url=env["dst_url"], fernet_key=env["key"])


def test_dry_run_shows_a_masked_plan_and_writes_nothing(env: dict[str, Any]) -> None:
    result = run(env, "--from", "old", "--to", "new", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "dry run (nothing written): 6 id(s): added 6," in result.stdout
    assert "db_0" in result.stdout and "api_token" in result.stdout
    assert _destination(env).list_connections() == []


def test_run_report_and_idempotent_rerun(env: dict[str, Any]) -> None:
    report_file = env["tmp"] / "report.json"
    result = run(env, "--from", "old", "--to", "new", "--report", str(report_file))
    assert result.exit_code == 0, result.stderr
    assert "verified 6" in result.stdout
    report = json.loads(report_file.read_text())
    assert report["summary"]["written"] == 6 and report["source"] == "old" and report["destination"] == "new"
    assert {i["status"] for i in report["items"]} == {"verified"}
    assert (report_file.stat().st_mode & 0o777) == 0o600
    assert_no_secret(report_file.read_text())
    assert _destination(env).get_connection("db_2").password == "pw-s3cr3t-2"  # type: ignore[union-attr]

    again = run(env, "--from", "old", "--to", "new", "--report", str(report_file))
    assert again.exit_code == 0 and "unchanged 6" in again.stdout and "written 0" in again.stdout
    assert "migration plan" not in again.stdout  # nothing but unchanged rows: no table


def test_inline_type_with_kwargs_and_filters(env: dict[str, Any]) -> None:
    other = env["tmp"] / "inline.db"
    kwargs = json.dumps({"url": f"sqlite:///{other}", "fernet_key": env["key"]})
    result = run(env, "--from", "old", "--to", "metastore", "--to-kwargs", kwargs, "--include", "db_1,db_2",
                 "--connections")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert MetastoreBackend(url=f"sqlite:///{other}", fernet_key=env["key"]).list_connections() == [
        "db_1",
        "db_2",
    ]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--from", "old", "--to", "nowhere"], "no backend named 'nowhere'"),
        (
            ["--from", "old", "--to", "vault", "--to-kwargs", '{"token": "t-s3cr3t"'],
            "--to-kwargs is not valid JSON",
        ),
        (["--from", "old", "--to", "metastore", "--to-kwargs", "[1]"], "must be a JSON object"),
        (["--from", "old", "--to", "old"], "same backend"),
        (["--from", "old", "--to", "env"], "cannot write connections"),
        (["--from", "old", "--to", "new", "--on-deleted", "recover"], "--on-deleted: "),
        (["--from", "old", "--to", "new", "--on-deleted", "recover"], "unknown kwarg(s) on_deleted"),
    ],
)
def test_bad_input_exits_2_with_one_line(env: dict[str, Any], args: list[str], fragment: str) -> None:
    result = run(env, *args)
    assert result.exit_code == 2
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_failed_entries_exit_1_and_are_listed(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN_ONE", "postgres://u:pw-s3cr3t-x@h:70000/db")
    monkeypatch.setenv("AIRFLOW_CONN_FINE_ONE", "postgres://u:pw-s3cr3t-y@h/db")
    result = run(env, "--from", "env", "--to", "new", "--connections", "--include", "*_one")
    assert result.exit_code == 1
    assert "credpath: error: connection 'broken_one' failed" in result.stderr and "port" in result.stderr
    assert _destination(env).list_connections() == ["fine_one"]


def test_progress_bar_only_on_a_terminal() -> None:
    from credpath.cli.migrate import _progress

    context, tick = _progress(False)
    assert tick is None
    context, tick = _progress(True)
    assert tick is not None and type(context).__name__ == "Progress"
    with context:
        tick("write", 0, 3)
        tick("write", 2, 3)
    assert context.tasks[0].completed == 2 and context.tasks[0].total == 3  # type: ignore[attr-defined]


def test_progress_bar_shows_rate_and_time_left() -> None:
    from rich.progress import TimeRemainingColumn

    from credpath.cli.migrate import _progress

    context, tick = _progress(True)
    assert tick is not None
    columns = context.columns  # type: ignore[attr-defined]
    assert any(isinstance(c, TimeRemainingColumn) for c in columns)
    rate = next(c for c in columns if type(c).__name__ == "RateColumn")
    with context:
        tick("write", 0, 100)
        for _ in range(3):  # the rate needs samples over time
            time.sleep(0.02)
            tick("write", 10, 100)
        task = context.tasks[0]  # type: ignore[attr-defined]
        assert str(rate.render(task)).endswith("/s")


def test_the_plan_says_what_it_did_not_print(env: dict[str, Any]) -> None:
    assert run(env, "--from", "old", "--to", "new", "--quiet").exit_code == 0
    source = MetastoreBackend(url=f"sqlite:///{env['tmp'] / 'src.db'}", fernet_key=env["key"])
    source.set_variable("region", "eu-central-1")
    result = run(env, "--from", "old", "--to", "new", "--dry-run", "--on-conflict", "overwrite")
    assert result.exit_code == 0, result.stderr
    assert "region" in result.stdout and "db_0" not in result.stdout
    assert "not shown: 5 unchanged id(s); write them all with --report FILE" in result.stdout
    assert "6 id(s): added 0, changed 1, unchanged 5," in result.stdout


def test_migrating_from_files_with_no_file_is_a_config_error(env: dict[str, Any]) -> None:
    result = run(env, "--from", "files", "--from-kwargs", "{}", "--to", "new")
    assert result.exit_code == 2
    assert "has no connections_file_path or variables_file_path configured" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    only_vars = env["tmp"] / "vars.json"
    only_vars.write_text('{"region": "eu-west-1"}')
    kwargs = json.dumps({"variables_file_path": str(only_vars)})
    asked = run(env, "--from", "files", "--from-kwargs", kwargs, "--to", "new", "--connections")
    assert asked.exit_code == 2 and "has no connections_file_path configured" in asked.stderr
    fine = run(env, "--from", "files", "--from-kwargs", kwargs, "--to", "new")  # the kind it has a file for
    assert fine.exit_code == 0, fine.stderr
    assert "1 id(s): added 1," in fine.stdout


def test_an_empty_standard_input_is_refused_not_stored(env: dict[str, Any]) -> None:
    for args in (["variables", "set", "api_token", "-"], ["connections", "add", "c1", "--conn-uri", "-"]):
        result = CliRunner().invoke(cli, ["--config", str(env["config"]), *args], input="")
        assert result.exit_code == 2, result.output
        assert "standard input was empty; nothing was stored" in result.stderr
    assert _destination(env).list_variables() == []
    source = MetastoreBackend(url=f"sqlite:///{env['tmp'] / 'src.db'}", fernet_key=env["key"])
    assert source.get_variable("api_token") == "tok-s3cr3t-v"  # untouched


def test_verify_option(env: dict[str, Any]) -> None:
    report_file = env["tmp"] / "report.json"
    result = run(env, "--from", "old", "--to", "new", "--verify", "none", "--report", str(report_file))
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert report["options"]["verify"] == "none"
    assert (report["summary"]["written"], report["summary"]["verified"]) == (6, 0)
    bad = run(env, "--from", "old", "--to", "new", "--verify", "sometimes")
    assert bad.exit_code == 2 and "--verify" in bad.stderr
