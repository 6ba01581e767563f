"""The web's Access view over an audit trail written by real lookups."""

from __future__ import annotations

import json
import time
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


def test_report_panel_is_the_cli_report(client: TestClient, tmp_path: Path) -> None:
    """The web's panel and ``credpath audit report`` are one implementation: same ids, same verdicts."""
    from click.testing import CliRunner

    from credpath.cli import cli

    page = client.get("/report", params={"unused_days": 1, "many_dags": 2})
    assert page.status_code == 200
    assert_no_secret(page.text)
    assert 'href="/report"' in client.get("/").text  # linked from the nav
    unused = page.text.split('id="report-unused"')[1].split("</table>")[0]
    assert 'data-id="db"' not in unused  # read by etl.load just now
    shared_table = page.text.split('id="report-shared"')[1].split("</table>")[0]
    assert "None." in shared_table  # one dag read it: not over-shared at 2
    data = _audit.report(
        [json.loads(line) for line in _audit.settings.file().read_text().splitlines()],
        client.app.state.search_path,  # type: ignore[attr-defined]
        unused_days=1,
        many_dags=1,
    )
    [row] = data["read_by_many_dags"]  # the trail's reads, the inventory page's own included
    assert (row["id"], row["dags"]) == ("db", ["etl"]) and row["reads_day"] >= 2
    over = client.get("/report", params={"many_dags": 1})  # out of range: clamped to 2, no error
    assert over.status_code == 200
    config = tmp_path / "credpath.toml"
    config.write_text('[[backends]]\ntype = "env"\n')
    result = CliRunner().invoke(
        cli, ["--config", str(config), "audit", "report", "--json", "--file", str(_audit.settings.file())]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["read_by_many_dags"] == []


def test_inventory_and_detail_show_reads_of_the_whole_deployment(tmp_path: Path) -> None:
    """With a shared tier, the inventory counts what other processes read (published to the tier)."""
    from credpath import _usage
    from credpath._shared_cache import FileStore, SharedTier

    key = [b"kQ3pW0m3a2Vw5Zb6cE8-3nJ0c1d2e3f4g5h6i7j8k9A="]
    tier = SharedTier(FileStore(tmp_path / "shared.db"), key, "scope")
    _usage.reset()
    _audit._INVENTORY.clear()  # reads this process counted in other tests
    # Another process's record: its reads of "db" from two dags, published to the tier.
    now = time.time()
    row = {"last": now, "by": "nightly.load", "tier": "shared", "minutes": {int(now // 60): 7},
           "tiers": {"shared": 7}, "dags": {"nightly"}}  # fmt: skip
    _usage.publish({("connection", "db"): row}, force=True)
    _usage._field_pid = 0  # the web process below publishes as another process
    path = SearchPath(
        [("mem", MemoryBackend(connections={"db": "postgres://u:s3cr3t-pw@h/d", "idle": "postgres://h"}))],
        shared=tier,
    )
    try:
        app = TestClient(create_app(path))
        page = app.get("/")
        assert_no_secret(page.text)
        assert "Reads counted from the deployment (shared tier file" in page.text
        db_row = page.text.split('data-id="db"')[1].split("</tr>")[0]
        assert "nightly.load" in db_row and "7 / 7" in db_row
        idle_row = page.text.split('data-id="idle"')[1].split("</tr>")[0]
        assert "no read recorded" in idle_row
        detail = app.get("/id/connection", params={"key": "db"})
        assert "by <b>nightly.load</b> from the shared tier; 7 read(s) in the last hour" in detail.text
    finally:
        _usage.reset()
        metrics.disable()
        metrics.reset()
