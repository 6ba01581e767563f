"""``credpath audit tail / query / report`` over a trail written by real lookups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from credpath import _audit
from credpath.cli import cli
from tests.conftest import assert_no_secret


@pytest.fixture
def trail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A credpath.toml with an env backend and [audit] on; three lookups by two dags, one by no dag."""
    trail_file = tmp_path / "trail.jsonl"
    config = tmp_path / "credpath.toml"
    config.write_text(
        f'[[backends]]\ntype = "env"\n\n[audit]\nenabled = true\npath = "{trail_file}"\n', encoding="utf-8"
    )
    monkeypatch.setenv("AIRFLOW_CONN_USED", "postgres://u:s3cr3t-pw@h/db")
    monkeypatch.setenv("AIRFLOW_CONN_IDLE", "postgres://u:s3cr3t-pw2@h/db")
    monkeypatch.setenv("AIRFLOW_VAR_SHARED", "s3cr3t-var")
    runner = CliRunner()
    for dag in ("etl", "report", None):
        env = {"AIRFLOW_CTX_DAG_ID": dag, "AIRFLOW_CTX_TASK_ID": "t1"} if dag else {}
        for args in (["connections", "get", "used"], ["variables", "get", "shared"]):
            result = runner.invoke(cli, ["--config", str(config), *args], env=env)
            assert result.exit_code == 0, result.output
            _audit.configure(_audit.AuditSettings())  # the next run reads the env again
    yield config, trail_file
    _audit.configure(_audit.AuditSettings())


def _run(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["--config", str(config), "audit", *args])
    assert_no_secret(result.output)
    return result


def test_tail_prints_the_last_events(trail: tuple[Path, Path]) -> None:
    result = _run(trail[0], "tail", "-n", "2")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert [(e["kind"], e["id"]) for e in events] == [("connection", "used"), ("variable", "shared")]


def test_query_filters_by_dag_kind_and_outcome(trail: tuple[Path, Path]) -> None:
    result = _run(trail[0], "query", "--dag", "etl", "--json")
    assert result.exit_code == 0, result.output
    events = json.loads(result.output)
    assert {(e["dag_id"], e["id"]) for e in events} == {("etl", "used"), ("etl", "shared")}
    result = _run(trail[0], "query", "--kind", "variable", "--outcome", "hit", "--json")
    assert len(json.loads(result.output)) == 3
    table = _run(trail[0], "query", "--id", "used")
    assert table.exit_code == 0 and "3 event(s)" in table.output
    assert _run(trail[0], "query", "--since", "soon").exit_code == 2


def test_report_unused_and_read_by_many_dags(trail: tuple[Path, Path]) -> None:
    result = _run(trail[0], "report", "--unused-days", "1", "--many-dags", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    unused = {(u["kind"], u["id"]) for u in report["unused"]}
    assert ("connection", "idle") in unused and ("connection", "used") not in unused
    assert {(s["kind"], s["id"]) for s in report["read_by_many_dags"]} == {
        ("connection", "used"),
        ("variable", "shared"),
    }
    assert report["read_by_many_dags"][0]["dags"] == ["etl", "report"]


def test_tail_without_a_trail_says_so(tmp_path: Path) -> None:
    config = tmp_path / "credpath.toml"
    config.write_text(f'[[backends]]\ntype = "env"\n\n[audit]\npath = "{tmp_path / "none.jsonl"}"\n')
    result = _run(config, "tail")
    assert result.exit_code == 1 and "no audit file" in result.output
