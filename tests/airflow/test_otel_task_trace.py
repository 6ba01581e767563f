"""Inside real Airflow 3.3.2 with its OpenTelemetry traces on (``[traces] otel_on``): credpath's lookup
spans are children of the task's own span (``worker.<task_id>``), in the task's trace.

Airflow's ``configure_otel`` installs the SDK's TracerProvider (exporter from ``OTEL_TRACES_EXPORTER``;
``console`` here, no collector needed) and the task runner starts ``worker.<task_id>`` as the current span
around the task. The DAG's task adds an in-memory exporter to that provider, reads a connection through
credpath, and writes what it saw (its current span, the spans that ended) to a JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import assert_no_secret
from tests.servers.airflow_env import AirflowEnv, ApiServer, run_dags_test

CLASS_PATH = "credpath.airflow.CredpathBackend"
PASSWORD = "s3cr3t-traced-pw"

DAG = """
from __future__ import annotations

import json

import pendulum

from airflow.sdk import BaseHook, dag, task

OUT = {out!r}


@dag(start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False)
def credpath_traced():
    @task
    def read():
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        provider = trace.get_tracer_provider()
        exporter = InMemorySpanExporter()
        if hasattr(provider, "add_span_processor"):
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        current = trace.get_current_span()
        own = current.get_span_context()
        BaseHook.get_connection(conn_id="traced_db")
        BaseHook.get_connection(conn_id="traced_db")  # from the process cache: one more lookup span
        spans = []
        for span in exporter.get_finished_spans():
            spans.append({{
                "name": span.name,
                "trace_id": span.context.trace_id,
                "span_id": span.context.span_id,
                "parent": span.parent.span_id if span.parent is not None else None,
                "attributes": dict(span.attributes or {{}}),
            }})
        parent = getattr(current, "parent", None)
        with open(OUT, "w") as handle:
            json.dump({{
                "provider": type(provider).__name__,
                "current": {{
                    "name": getattr(current, "name", None),
                    "trace_id": own.trace_id,
                    "span_id": own.span_id,
                    "valid": own.is_valid,
                    "parent": parent.span_id if parent is not None else None,
                }},
                "spans": spans,
            }}, handle)

    read()


credpath_traced()
"""


@pytest.mark.airflow
def test_lookup_spans_join_the_airflow_task_span(
    airflow: AirflowEnv, airflow_api_server: ApiServer, tmp_path: Path
) -> None:
    connections = tmp_path / "connections.json"
    connections.write_text(
        json.dumps({"traced_db": {"conn_type": "postgres", "host": "db.internal", "password": PASSWORD}})
    )
    config = tmp_path / "credpath.toml"
    config.write_text(
        f'[[backends]]\ntype = "files"\nkwargs = {{ connections_file_path = "{connections}" }}\n\n'
        "[audit]\notel = true\n"
    )
    out = tmp_path / "spans.json"
    (airflow.dags / "credpath_traced.py").write_text(DAG.format(out=str(out)))
    env = {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": CLASS_PATH,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"config": str(config)}),
        "AIRFLOW__TRACES__OTEL_ON": "True",
        "OTEL_TRACES_EXPORTER": "console",  # Airflow's exporter: no collector to reach
    }
    code = run_dags_test(airflow, "credpath_traced", env, out.exists, timeout=400)
    assert out.exists(), f"the task did not write its spans (rc={code})"
    text = out.read_text()
    assert_no_secret(text, PASSWORD)
    seen = json.loads(text)
    print(
        json.dumps(
            {
                "task span": seen["current"],
                "spans": [
                    {k: s[k] for k in ("name", "trace_id", "span_id", "parent")} for s in seen["spans"]
                ],
            }
        )
    )
    assert seen["provider"] == "TracerProvider"  # Airflow configured the SDK's provider
    task_span = seen["current"]
    assert task_span["valid"] and task_span["name"] == "worker.read"  # Airflow's task span is current
    lookups = [s for s in seen["spans"] if s["name"] == "credpath.lookup connection"]
    assert len(lookups) == 2
    for span in lookups:
        assert span["trace_id"] == task_span["trace_id"]
        assert span["parent"] == task_span["span_id"]
        assert span["attributes"]["credpath.id"] == "traced_db"
        assert span["attributes"]["credpath.caller.dag_id"] == "credpath_traced"
        assert span["attributes"]["credpath.caller.task_id"] == "read"
    assert {s["attributes"]["credpath.tier"] for s in lookups} <= {"store", "process"}
    stores = [s for s in seen["spans"] if s["name"].startswith("credpath.store ")]
    assert stores and {s["parent"] for s in stores} <= {s["span_id"] for s in lookups}
    assert {s["trace_id"] for s in stores} == {task_span["trace_id"]}
