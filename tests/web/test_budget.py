"""What keeps the web pages off the stores and off other origins: the page cache (and its age on the
page), the miss cache for unknown ids, the per-client budget, the Host check; and nested secrets in
variable values (in process, Starlette's TestClient; test_browser.py runs them over real servers)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from credpath import metrics
from credpath._search_path import SearchPath
from credpath.web.app import create_app
from credpath.web.budget import PageCache, RateLimiter, host_allowed, host_name
from tests.memory_backend import MemoryBackend
from tests.web.test_app import _metrics  # noqa: F401 - the fixture: metrics on, reset around each test

NESTED_PASSWORD = "nested-pw-s3cr3t-1"
NESTED_KEY = "nested-key-s3cr3t-2"


pytestmark = pytest.mark.usefixtures("_metrics")


def make_path() -> SearchPath:
    backend = MemoryBackend(
        connections={"db": "postgres://app:pw-s3cr3t-db@db.example:5432/sales"},
        variables={
            "app_settings": json.dumps(
                {
                    "password": NESTED_PASSWORD,
                    "api_key": NESTED_KEY,
                    "client_secret": 918273,
                    "region": "eu-1",
                }
            ),
            "region": "eu-west-1",
        },
    )
    return SearchPath([("mem", backend)])


def store_calls() -> int:
    return sum(metrics.snapshot()["store"].values())


PAGES = ("/", "/id/connection?key=db", "/backends", "/id/connection?key=no_such_id")


def test_sixty_loads_after_warm_up_cost_no_store_call():
    client = TestClient(create_app(make_path(), store_requests_per_minute=0))
    for url in PAGES:
        client.get(url)
    before = store_calls()
    statuses = [client.get(PAGES[i % len(PAGES)]).status_code for i in range(60)]
    assert store_calls() - before == 0
    assert statuses.count(404) == 15 and statuses.count(200) == 45


def test_pages_say_how_old_their_data_is_and_are_rebuilt_after_it():
    clock = [1000.0]
    app = create_app(make_path(), cache_seconds=10, store_requests_per_minute=0)
    client = TestClient(app)
    first = client.get("/backends").text
    assert 'data-age="0"' in first and "just now" in first
    # The app's page cache runs on the monotonic clock: swap in a controllable one.
    cache: PageCache[object] = app.state.pages
    cache._clock = lambda: clock[0]
    cache._entries.clear()
    client.get("/backends")
    clock[0] += 7
    before = store_calls()
    page = client.get("/backends").text
    assert 'data-age="7"' in page and "7 s ago" in page
    assert store_calls() == before
    clock[0] += 4  # past 10 s: checked again
    page = client.get("/backends").text
    assert 'data-age="0"' in page and store_calls() > before


def test_unknown_id_is_answered_from_the_miss_cache():
    client = TestClient(create_app(make_path(), cache_seconds=0, store_requests_per_minute=0))
    assert client.get("/id/connection?key=no_such_id").status_code == 404
    before = store_calls()
    for _ in range(5):
        assert client.get("/id/connection?key=no_such_id").status_code == 404
    assert store_calls() == before


def test_page_builds_that_reach_the_stores_are_rate_limited_per_client():
    client = TestClient(create_app(make_path(), cache_seconds=0, store_requests_per_minute=3))
    statuses = [client.get("/backends").status_code for _ in range(6)]
    assert statuses[:3] == [200, 200, 200]
    assert set(statuses[3:]) == {429}
    limited = client.get("/backends")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert metrics.store_counts("mem") == {"hit": 3}  # three checks, none for the refused loads
    # A cached page costs nothing and is never refused.
    cached = TestClient(create_app(make_path(), cache_seconds=60, store_requests_per_minute=1))
    assert [cached.get("/backends").status_code for _ in range(5)] == [200] * 5


def test_rate_limiter_refills_and_keeps_clients_apart():
    now = [0.0]
    limiter = RateLimiter(60, burst=2, clock=lambda: now[0])
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(Exception, match="too many"):
        limiter.take("a")
    limiter.take("b")  # another client has its own bucket
    now[0] += 1.0  # one token a second
    limiter.take("a")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:8750", True),
        ("LOCALHOST.:8750", True),
        ("127.0.0.1:8750", True),
        ("127.5.6.7", True),
        ("[::1]:8750", True),
        ("[::1]", True),
        ("devbox.internal:8750", True),  # configured
        ("attacker.example", False),
        ("attacker.example:8750", False),
        ("localhost.attacker.example", False),
        ("10.0.0.5:8750", False),
        ("", False),
    ],
)
def test_host_allowed(host: str, allowed: bool) -> None:
    assert host_allowed(host, ["devbox.internal"]) is allowed


def test_host_name_strips_port_and_brackets():
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM:1") == "example.com"


def test_a_rebinding_host_is_refused_without_a_token():
    client = TestClient(create_app(make_path(), allowed_hosts=[]))
    for url in ("/", "/backends", "/metrics", "/id/variable?key=region"):
        refused = client.get(url, headers={"Host": "attacker.example:8750"})
        assert refused.status_code == 421, url
        assert "attacker" not in refused.text and "region" not in refused.text
    assert client.get("/", headers={"Host": "127.0.0.1:8750"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost:8750"}).status_code == 200
    # With a token the token is the guard (a reverse proxy may use any name).
    token = TestClient(create_app(make_path(), allowed_hosts=[], token="tok-s3cr3t-x"))
    response = token.get("/", headers={"Host": "proxy.example", "Authorization": "Bearer tok-s3cr3t-x"})
    assert response.status_code == 200


def test_nested_secrets_in_a_variable_value_are_masked_on_every_page():
    client = TestClient(create_app(make_path()))
    pages = client.get("/").text + client.get("/id/variable?key=app_settings").text
    for secret in (NESTED_PASSWORD, NESTED_KEY, "918273"):
        assert secret not in pages
    assert "eu-1" in pages and "***" in pages
