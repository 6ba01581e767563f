"""Inside real Airflow 3.3.2: the audit events of a DAG run carry its dag, task, run, try and map index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_no_secret
from tests.servers.airflow_env import AirflowEnv, ApiServer, run_dags_test

CLASS_PATH = "credpath.airflow.CredpathBackend"
PASSWORD = "s3cr3t-audited-pw"

DAG = """
from __future__ import annotations

import pendulum

from airflow.sdk import BaseHook, dag, task


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False)
def credpath_audited():
    @task
    def plain():
        print(f"plain host: {BaseHook.get_connection(conn_id='audited_db').host}")

    @task
    def mapped(n):
        print(f"mapped {n} host: {BaseHook.get_connection(conn_id='audited_db').host}")

    plain() >> mapped.expand(n=[0, 1])


credpath_audited()
"""


@pytest.mark.airflow
def test_dag_run_events_carry_dag_task_run_try_and_map_index(
    airflow: AirflowEnv, airflow_api_server: ApiServer, tmp_path: Path
) -> None:
    connections = tmp_path / "connections.json"
    connections.write_text(
        json.dumps({"audited_db": {"conn_type": "postgres", "host": "db.internal", "password": PASSWORD}})
    )
    trail = tmp_path / "trail.jsonl"
    config = tmp_path / "credpath.toml"
    config.write_text(
        f'[[backends]]\ntype = "files"\nkwargs = {{ connections_file_path = "{connections}" }}\n\n'
        f'[audit]\nenabled = true\npath = "{trail}"\n'
    )
    (airflow.dags / "credpath_audited.py").write_text(DAG)
    env = {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": CLASS_PATH,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"config": str(config)}),
    }

    def finished() -> bool:
        if not trail.exists():
            return False
        return sum(1 for line in trail.read_text().splitlines() if '"audited_db"' in line) >= 3

    code = run_dags_test(airflow, "credpath_audited", env, finished, timeout=400)
    assert code in (0, None), f"airflow dags test failed (rc={code})"
    text = trail.read_text()
    assert_no_secret(text, PASSWORD)
    events = [json.loads(line) for line in text.splitlines()]
    reads = [e for e in events if e["id"] == "audited_db" and e["operation"] == "lookup"]
    callers = sorted((e["dag_id"], e["task_id"], e["map_index"], e["try_number"]) for e in reads)
    assert callers == [
        ("credpath_audited", "mapped", 0, 1),
        ("credpath_audited", "mapped", 1, 1),
        ("credpath_audited", "plain", -1, 1),
    ]
    assert len({e["run_id"] for e in reads}) == 1 and reads[0]["run_id"]
    assert {(e["outcome"], e["backend"], e["tier"]) for e in reads} == {("hit", "files", "store")}
    assert len({e["pid"] for e in reads}) == 3  # one task process each
