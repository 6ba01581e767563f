"""The web's Access view over an audit trail written by real lookups."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from credpath import _audit, metrics
from credpath._search_path import SearchPath
from credpath.web.app import create_app
from tests.conftest import assert_no_secret
from tests.memory_backend import MemoryBackend


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    trail = tmp_path / "trail.jsonl"
    _audit.configure(_audit.AuditSettings(enabled=True, path=trail, cached="all"))
    path = SearchPath([("mem", MemoryBackend(connections={"db": "postgres://u:s3cr3t-pw@h/d"}))])
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "etl")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "load")
    path.get_connection("db")
    path.get_connection("db")
    path.get_variable("absent", None)
    _audit.flush()
    app = create_app(path)  # its /access page reads the configured trail
    yield TestClient(app)
    _audit.configure(_audit.AuditSettings())
    metrics.disable()  # create_app turned counting on
    metrics.reset()


def test_access_view_lists_reads_and_per_id_summary(client: TestClient) -> None:
    page = client.get("/access")
    assert page.status_code == 200
    assert_no_secret(page.text)
    assert '<tr data-id="db"><td>db</td><td>connection</td>' in page.text
    assert "etl.load" in page.text and "store 1, process 1" in page.text  # the first read, then the cache
    filtered = client.get("/access", params={"outcome": "miss"})
    assert "absent" in filtered.text.split("Recent events")[1]
    assert "<td>db</td>" not in filtered.text.split("Recent events")[1]
