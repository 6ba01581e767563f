"""The web app in process (Starlette's TestClient): views, filters, no secret in any response, bad input.

The browser tier (test_browser.py) runs the same pages in a real Chromium over real servers.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from credpath import metrics
from credpath._search_path import SearchPath
from credpath.web.app import create_app
from tests.memory_backend import MemoryBackend, Unreachable

PASSWORD = "pw-s3cr3t-first"
SHADOWED_PASSWORD = "pw-s3cr3t-shadowed"
TOKEN_VALUE = "tok-s3cr3t-api"
SECRETS = (PASSWORD, SHADOWED_PASSWORD, TOKEN_VALUE, "var-s3cr3t-value", "embedded-s3cr3t")


@pytest.fixture(autouse=True)
def _metrics():
    metrics.reset()
    yield
    metrics.disable()
    metrics.reset()


class CheckedMemory(MemoryBackend):
    """The memory backend whose check() fails like its reads (a store that is down)."""

    def check(self) -> str:
        self._maybe_fail()
        return "ok"


def make_path() -> tuple[SearchPath, MemoryBackend, MemoryBackend]:
    first = CheckedMemory(
        connections={
            "db": f"postgres://app:{PASSWORD}@db.example:5432/sales",
            "api": json.dumps(
                {"conn_type": "http", "host": "api.example", "extra": {"api_token": TOKEN_VALUE}}
            ),
        },
        variables={"db_password": "var-s3cr3t-value", "region": "eu-west-1"},
    )
    second = CheckedMemory(
        connections={
            "db": f"postgres://old:{SHADOWED_PASSWORD}@old.example/sales",
            "queue": "amqp://mq:5672",
        },
        variables={"region": "us-east-1", "note": "contains embedded-s3cr3t here"},
    )
    return SearchPath([("first", first), ("second", second)]), first, second


def get_all(client: TestClient) -> str:
    pages = [
        client.get(p)
        for p in (
            "/",
            "/backends",
            "/metrics",
            "/id/connection?key=db",
            "/id/connection?key=api",
            "/id/variable?key=region",
            "/id/variable?key=db_password",
            "/?collisions=1",
        )
    ]
    for page in pages:
        assert page.status_code == 200
    return "\n".join(p.text + str(dict(p.headers)) for p in pages)


def test_inventory_rows_collisions_and_no_secret():
    sp, _, _ = make_path()
    sp.masker.add("embedded-s3cr3t")  # a value the masker knows (e.g. from another connection)
    client = TestClient(create_app(sp))
    page = client.get("/")
    assert page.status_code == 200
    text = page.text
    assert 'data-id="db" data-kind="connection" data-source="first" data-shadowed="second"' in text
    assert 'data-id="queue" data-kind="connection" data-source="second" data-shadowed=""' in text
    assert 'data-id="region" data-kind="variable" data-source="first" data-shadowed="second"' in text
    assert text.count('class="badge collision"') == 2  # db and region
    assert "db.example" in text and "eu-west-1" in text
    assert "(sensitive: not shown)" in text  # db_password
    everything = get_all(client)
    for secret in SECRETS:
        assert secret not in everything


def test_filters():
    sp, _, _ = make_path()
    client = TestClient(create_app(sp))
    only_collisions = client.get("/?collisions=1").text
    assert 'data-id="db"' in only_collisions and 'data-id="queue"' not in only_collisions
    variables = client.get("/?kind=variable").text
    assert 'data-id="region"' in variables and 'data-id="db"' not in variables
    second = client.get("/?backend=second").text
    assert 'data-id="queue"' in second and 'data-id="api"' not in second
    search = client.get("/?q=API.EX").text
    assert 'data-id="api"' in search and 'data-id="db"' not in search
    # Unknown filter values are ignored, not echoed.
    odd = client.get("/?backend=nope-marker&kind=nope-marker").text
    assert "nope-marker" not in odd


def test_detail_of_a_shadowed_id():
    sp, _, _ = make_path()
    client = TestClient(create_app(sp, cache_seconds=0))  # each load explains again
    page = client.get("/id/connection?key=db").text
    assert 'data-backend="first" data-outcome="hit"' in page
    assert 'data-backend="second" data-outcome="not tried"' in page
    assert "served by first" in page
    assert "store (read from the backend)" in page
    assert client.get("/id/connection?key=db").text.count("process (in-process cache)") == 1
    assert "(set: not shown)" in page  # the password exists, is never shown
    assert PASSWORD not in page


def test_unknown_id_is_a_404_that_echoes_nothing():
    sp, _, _ = make_path()
    client = TestClient(create_app(sp))
    for url in (
        "/id/connection?key=no-such-marker",
        "/id/secretkind-marker?key=db",
        "/id/connection",
        "/no-such-marker",
        "/id/connection?key=%3Cscript%3Emarker",
    ):
        page = client.get(url)
        assert page.status_code == 404, url
        assert "marker" not in page.text and "script" not in page.text.replace("<script", "")
        assert "Not found" in page.text


def test_failing_backend_shows_failed_and_the_rest_renders():
    sp, _, second = make_path()
    second.fail_with = Unreachable("backend 'second' (Memory): connection refused")
    client = TestClient(create_app(sp))
    inventory = client.get("/")
    assert inventory.status_code == 200
    assert 'data-id="api"' in inventory.text  # from the healthy backend
    assert 'class="banner bad failed-listing" data-backend="second"' in inventory.text
    backends = client.get("/backends")
    assert backends.status_code == 200
    assert 'data-backend="first" data-ok="yes"' in backends.text
    assert 'data-backend="second" data-ok="no"' in backends.text
    assert "FAILED" in backends.text


def test_foreign_exception_message_is_withheld():
    sp, first, _ = make_path()
    first.fail_with = RuntimeError("boom with pw-s3cr3t-first inside")
    client = TestClient(create_app(sp))
    text = client.get("/").text + client.get("/backends").text
    assert PASSWORD not in text
    assert "message withheld" in text


def test_token_required_when_configured():
    sp, _, _ = make_path()
    client = TestClient(create_app(sp, token=TOKEN_VALUE))
    assert client.get("/").status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/", headers={"Accept": "text/html"}, follow_redirects=False).status_code == 303
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {TOKEN_VALUE}"}).status_code == 200
    wrong = client.post(
        "/login", content="token=nope", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert wrong.status_code == 401
    ok = client.post(
        "/login",
        content=f"token={TOKEN_VALUE}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    assert TOKEN_VALUE not in str(ok.headers)  # the cookie is derived from the token, not the token
    assert client.get("/").status_code == 200  # the cookie now signs in


def test_backends_view_counts_store_calls():
    sp, _, _ = make_path()
    client = TestClient(create_app(sp))
    client.get("/")
    page = client.get("/backends").text
    assert 'data-backend="first" data-ok="yes"' in page
    store = metrics.snapshot()["store"]
    assert store[("first", "connection", "list", "hit")] == 1
    assert store[("first", "connection", "get", "hit")] == 2  # db, api
    assert store[("first", "connection", "get", "miss")] == 1  # queue
    assert store[("first", "variable", "get", "hit")] == 2  # db_password, region
    assert store[("first", "backend", "check", "hit")] == 1
    assert store[("second", "connection", "get", "hit")] == 1  # queue; db is never asked of second
    assert ("second", "connection", "get", "miss") not in store
    assert metrics.store_counts("first") == {"hit": 7, "miss": 2}  # 2 lists + 4 gets + 1 check
    # A warm render within the page cache's time costs no store call at all (not even the listings).
    before = sum(metrics.snapshot()["store"].values())
    client.get("/")
    assert sum(metrics.snapshot()["store"].values()) - before == 0
    # Without the page cache: the listings only (every lookup is a process-cache hit).
    uncached = TestClient(create_app(sp, cache_seconds=0))
    before = sum(metrics.snapshot()["store"].values())
    uncached.get("/")
    assert sum(metrics.snapshot()["store"].values()) - before == 4  # 2 backends x 2 kinds listed
    assert metrics.snapshot()["lookups"][("connection", "process", "found")] == 3


def test_security_headers():
    sp, _, _ = make_path()
    response = TestClient(create_app(sp)).get("/")
    assert response.headers["cache-control"] == "no-store"
    assert "script-src" not in response.headers["content-security-policy"]
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_backends_view_shows_the_shared_tier_counters_cache_stats_reads(tmp_path, monkeypatch):
    import re

    from click.testing import CliRunner
    from cryptography.fernet import Fernet

    from credpath.cli import cli

    key = Fernet.generate_key().decode()
    shared = tmp_path / "shared.db"
    config = tmp_path / "credpath.toml"
    config.write_text(
        f'[cache]\nshared = "file:{shared}"\nshared_key = "{key}"\n\n'
        '[[backends]]\nname = "mem"\ntype = "tests.memory_backend.MemoryBackend"\n'
        'kwargs = { connections = { db = "postgres://u:sc-s3cr3t@h/d" } }\n'
    )
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    reader = SearchPath.from_config(config)
    reader.get_connection("db")  # one store read
    other = SearchPath.from_config(config)
    other.get_connection("db")  # a shared hit
    reader.shared.flush()
    other.shared.flush()
    stats = json.loads(CliRunner().invoke(cli, ["--config", str(config), "cache", "stats", "--json"]).stdout)
    page = TestClient(create_app(SearchPath.from_config(config))).get("/backends").text
    shown = dict(re.findall(r'data-counter="(\w+)">(\d+)<', page))
    assert shown["store_reads"] == str(stats["store"]["reads"]) == "1"
    assert shown["shared_hits"] == str(stats["shared"]["hits"]) == "1"
    assert shown["calls_avoided"] == str(stats["store"]["calls_avoided"])
    assert "sc-s3cr3t" not in page


def test_inventory_leaves_out_other_teams_ids_as_the_cli_list_does(tmp_path, monkeypatch):
    # A team-owned row is listed by the metastore but read only with its team: the page shows the
    # global ids and counts the others (before: team_conn shown as "missing").
    from credpath.backends.metastore import MetastoreBackend
    from credpath.model import Connection

    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path))
    monkeypatch.delenv("CREDPATH_METASTORE_URL", raising=False)
    store = MetastoreBackend()
    store.set_connection(Connection.from_uri("postgres://g/db", conn_id="glob"))
    store.set_connection(Connection.from_uri("postgres://t/db", conn_id="team_conn"), team_name="team_a")
    client = TestClient(create_app(SearchPath([("metastore", store)])))
    page = client.get("/")
    assert page.status_code == 200
    assert 'data-id="glob"' in page.text or ">glob<" in page.text
    assert "team_conn" not in page.text
    assert "1 connection id(s) owned by a team are not shown" in page.text
