"""Fault tier for the search path: a real store (moto's Secrets Manager) behind the loopback fault proxy,
with requests counted at the proxy, i.e. at the server side of the client. Bounds are generous."""

from __future__ import annotations

import threading
import time

import pytest

from credpath.cache import CacheSettings
from credpath.errors import BackendUnavailable
from credpath.resilience import BreakerSettings
from credpath.search_path import SearchPath

URI = "postgres://svc:pw-s3cr3t-sm@db.internal:5432/app"
STORM = {"status": 503, "body": b'{"__type": "ServiceUnavailable", "message": "injected"}'}


@pytest.fixture
def sm(aws_secrets_manager_harness, fault_proxy):
    """(harness, proxy, backend): a Secrets Manager backend whose every request goes through the proxy."""
    h = aws_secrets_manager_harness
    proxy = fault_proxy("127.0.0.1", h.server.port)
    backend = h.make_backend(
        endpoint_url=proxy.url, config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 3}}
    )
    return h, proxy, backend


def test_32_concurrent_lookups_of_one_uncached_id_make_one_request(sm):
    h, proxy, backend = sm
    h.seed("connection", "db", URI)
    sp = SearchPath([("sm", backend)])
    backend.prepare()  # build the client first: the count is of store reads only
    proxy.add("delay", seconds=0.5, times=1)  # the first read is slow, so the other 31 pile up behind it
    hosts: list[str] = []
    threads = [threading.Thread(target=lambda: hosts.append(sp.get_connection("db").host)) for _ in range(32)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert hosts == ["db.internal"] * 32
    assert proxy.count() == 1  # main: 32 GetSecretValue
    assert time.monotonic() - started < 15


def test_a_5xx_storm_opens_the_breaker_and_later_lookups_make_no_request(sm):
    _, proxy, backend = sm
    proxy.add("status", **STORM)
    sp = SearchPath([("sm", backend)], breaker=BreakerSettings(failures=3, cool_down=60.0))
    for i in range(20):
        with pytest.raises(BackendUnavailable) as info:
            sp.get_variable(f"v{i}")
        assert info.value.backends == ("sm",)
    per_lookup = 3  # total_max_attempts
    assert proxy.count() == 3 * per_lookup  # main: 20 x 3 = 60
    assert sp.breaker_state("sm").startswith("open")


def test_the_last_good_value_is_served_during_an_outage(sm, caplog):
    h, proxy, backend = sm
    h.seed("connection", "db", URI)
    sp = SearchPath(
        [("sm", backend)],
        cache=CacheSettings(ttl=0.0, jitter=0.0),  # every lookup refreshes: the outage is met at once
        breaker=BreakerSettings(failures=3, cool_down=60.0),
    )
    assert sp.get_connection("db").host == "db.internal"
    proxy.add("status", **STORM)
    served = [sp.get_connection("db").host for _ in range(10)]
    assert served == ["db.internal"] * 10  # main: BackendError (the value was dropped at expiry)
    # One failed refresh (3 tries); then the refresh backs off (cool_down 60 s) and the breaker never opens.
    assert proxy.count() == 1 + 3  # before: 1 + 3 * 3, the dead store asked until the breaker opened
    assert sum("stale-if-error" in r.getMessage() for r in caplog.records) == 1
    assert "pw-s3cr3t" not in caplog.text
