"""`credpath connections get ID -o json|yaml` against `airflow connections get ID -o json|yaml` (Airflow
3.3.2, the same AIRFLOW_CONN_* connection on both sides): the same records, key for key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.airflow, pytest.mark.reveals_secrets]

REPO = Path(__file__).resolve().parents[2]
# (No numeric query value: its get_uri is the intended difference extra_query_form.)
URI = "postgres://app:pw-out-1@db.example.com:5432/analytics?sslmode=require"


def _records(stdout: str, output: str) -> list[dict[str, Any]]:
    if output == "json":
        return json.loads(stdout[stdout.index("[") :])  # Airflow may log lines before its output
    return yaml.safe_load(stdout[stdout.index("- ") :])


def _credpath(output: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CREDPATH_"))}
    env.update(PYTHONPATH=str(REPO / "src"), CREDPATH_HOME=str(tmp_path / "home"), AIRFLOW_CONN_MY_DB=URI)
    return subprocess.run(
        [sys.executable, "-m", "credpath", "connections", "get", "my_db", "-o", output, "--reveal"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_connections_get_output_is_airflows(airflow: Any, tmp_path: Path, output: str) -> None:
    theirs = airflow.run("connections", "get", "my_db", "-o", output, env={"AIRFLOW_CONN_MY_DB": URI})
    assert theirs.returncode == 0, theirs.stderr[-1000:]
    ours = _credpath(output, tmp_path)
    assert ours.returncode == 0, ours.stderr[-1000:]
    [mine], [airflows] = _records(ours.stdout, output), _records(theirs.stdout, output)
    assert list(mine) == list(airflows)
    assert {k: (v, airflows[k]) for k, v in mine.items() if v != airflows[k]} == {}
