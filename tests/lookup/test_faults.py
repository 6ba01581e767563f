"""Fault tier for the search path: real stores (moto's Secrets Manager, OpenBao) behind the loopback fault
proxy, with requests counted at the proxy, i.e. at the server side of the client. Bounds are generous."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from credpath._cache import CacheSettings
from credpath._resilience import BreakerSettings
from credpath._search_path import SearchPath
from credpath.errors import BackendUnavailable
from tests.servers._util import stop_process

URI = "postgres://svc:pw-s3cr3t-sm@db.internal:5432/app"
STORM = {"status": 503, "body": b'{"__type": "ServiceUnavailable", "message": "injected"}'}


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
    # One failed refresh, one try (the last good value is at hand: no retry); then the refresh backs off
    # (cool_down 60 s) and the breaker never opens.
    assert proxy.count() == 1 + 1  # before: 1 + 3 * 3, the dead store asked until the breaker opened
    assert sum("stale-if-error" in r.getMessage() for r in caplog.records) == 1
    assert "pw-s3cr3t" not in caplog.text


# --- a dead store while stale values are served: the refresh backs off ------------------------------------


def _twenty_lookups_in_six_seconds(lookup: Any) -> tuple[list[Any], float]:
    served, started = [], time.monotonic()
    for i in range(20):
        served.append(lookup())
        time.sleep(max(0.0, started + 0.3 * (i + 1) - time.monotonic()))
    return served, time.monotonic() - started


def _assert_backed_off(sp: SearchPath, name: str, calls: list[Any], requests: int) -> None:
    refreshes = [c for c in calls if c.backend == name and c.outcome in ("error", "throttled")]
    # Refreshes at about 0, 1 and 3 s (back-off 1 s, doubled), the next one after the 6 s; each one try,
    # since the last good value is at hand (no retry of a failing store while it can be served).
    assert 1 <= len(refreshes) <= 3, refreshes  # before: 5 (3 until the breaker opened, then 2 probes)
    assert requests <= 3, requests  # before: 20 requests (OpenBao killed), 15 (AWS answering 500)
    explanation = sp.explain("connection", "db")  # a probe: asks the store, reports what lookups see
    assert explanation.stale and explanation.tier == "stale" and explanation.source == name
    assert explanation.stale_age is not None and explanation.stale_age > 5
    assert explanation.refresh_in is not None and explanation.refresh_in > 0
    assert explanation.attempts[0].outcome == "stale" and explanation.attempts[0].breaker


def test_a_killed_openbao_is_asked_at_most_three_times_in_six_seconds_of_stale_lookups(
    own_openbao, fault_proxy, store_calls
) -> None:
    from credpath.backends.vault import VaultBackend
    from credpath.backends.vault.session import RETRY_POLICY

    own_openbao.put("secret", 2, "connections/db", {"conn_uri": URI})
    parts = urlsplit(own_openbao.addr)
    proxy = fault_proxy(parts.hostname, parts.port)
    vault = VaultBackend(url=proxy.url, token=own_openbao.root_token, kv_engine_version=2, timeout=2)
    sp = SearchPath([("vault", vault)], cache=CacheSettings(ttl=0.0, jitter=0.0))  # default breaker
    assert sp.get_connection("db").host == "db.internal"
    stop_process(own_openbao.proc)
    before, store_calls[:] = proxy.count(), []
    served, elapsed = _twenty_lookups_in_six_seconds(lambda: sp.get_connection("db").host)
    assert served == ["db.internal"] * 20
    assert elapsed < 6 + 3 * 2  # at most three refreshes, each within its 2 s deadline
    assert RETRY_POLICY.attempts > 1  # a refresh without a value to fall back on would retry
    _assert_backed_off(sp, "vault", store_calls, proxy.count() - before)
    assert "pw-s3cr3t" not in str(sp.explain("connection", "db"))  # no value in the explanation
    vault.close()


def test_an_aws_endpoint_answering_500_is_asked_at_most_three_times_in_six_seconds(sm, store_calls) -> None:
    h, proxy, backend = sm
    h.seed("connection", "db", URI)
    sp = SearchPath([("sm", backend)], cache=CacheSettings(ttl=0.0, jitter=0.0))  # default breaker
    assert sp.get_connection("db").host == "db.internal"
    proxy.add("status", status=500, body=b'{"__type": "InternalFailure", "message": "injected"}')
    before, store_calls[:] = proxy.count(), []
    served, elapsed = _twenty_lookups_in_six_seconds(lambda: sp.get_connection("db").host)
    assert served == ["db.internal"] * 20
    assert elapsed < 6 + 3 * 5
    _assert_backed_off(sp, "sm", store_calls, proxy.count() - before)
