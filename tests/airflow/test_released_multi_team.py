"""Multi-team as released: local secrets files follow Airflow 3.3.2, not main.

apache/airflow#72626 (open) makes a ``<team>___<id>`` key of a connections or variables file serve ``<id>`` to
that team only. Airflow 3.3.2's LocalFilesystemBackend accepts ``team_name`` and ignores it: such a key is
just an id, and one file serves every team. credpath's ``files`` backend keeps the released behaviour; this
test runs both on the same files, with multi-team mode off and on, and records the main-branch answer that
differs (the README's "Airflow features by version" table says the same).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from credpath.backends.files import LocalFilesystemBackend
from tests.airflow._side import run_side
from tests.servers.airflow_env import clean_environment

pytestmark = pytest.mark.airflow

SIDE_SCRIPT = Path(__file__).with_name("_files_side.py")
CASES: list[tuple[str, str, str | None]] = [
    ("connection", "db", None),
    ("connection", "db", "team_a"),
    ("connection", "db", "team_b"),
    ("connection", "team_a___db", None),
    ("connection", "team_a___db", "team_a"),
    ("variable", "v", None),
    ("variable", "v", "team_a"),
    ("variable", "team_a___v", None),
]
#: What main (with #72626) answers where it differs from 3.3.2, multi-team on: the team's key wins.
MAIN_BRANCH = {("connection", "db", "team_a"): "team-a.example", ("variable", "v", "team_a"): "team-value"}


@pytest.mark.parametrize("multi_team", [False, True], ids=["multi-team-off", "multi-team-on"])
def test_team_keys_in_files_are_plain_ids_as_in_3_3_2(
    airflow_venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, multi_team: bool
) -> None:
    conns = tmp_path / "connections.json"
    conns.write_text(
        json.dumps({"db": "postgres://u@global.example/x", "team_a___db": "postgres://u@team-a.example/x"})
    )
    variables = tmp_path / "variables.json"
    variables.write_text(json.dumps({"v": "global-value", "team_a___v": "team-value"}))
    home = tmp_path / "home"
    home.mkdir()
    env = clean_environment(home, airflow_venv)
    env["AIRFLOW__CORE__MULTI_TEAM"] = str(multi_team)
    spec = {"connections": str(conns), "variables": str(variables), "cases": CASES}
    airflow = run_side(airflow_venv, SIDE_SCRIPT, spec, env, home)

    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", str(multi_team))
    backend = LocalFilesystemBackend(connections_file_path=str(conns), variables_file_path=str(variables))
    ours: list[str | None] = []
    for kind, key, team in CASES:
        if kind == "connection":
            conn = backend.get_connection(key, team_name=team)
            ours.append(None if conn is None else conn.host)
        else:
            ours.append(backend.get_variable(key, team_name=team))
    assert ours == airflow
    # The released answer to a team's read of "db" is the global one; main would answer the team's key.
    released = dict(zip(CASES, ours, strict=True))
    for case, main_answer in MAIN_BRANCH.items():
        assert released[case] != main_answer
