"""Resolution details no other unit test pinned: the refresh back-off's stale answer, the trace of a clean
miss, and lease details only on connection hits."""

from __future__ import annotations

from typing import Any

from credpath._cache import CacheSettings
from credpath._lookup.trace import Attempt, Served
from tests.lookup.helpers import path, quiet_path
from tests.memory_backend import MemoryBackend, Unreachable


def test_a_store_in_refresh_back_off_serves_its_last_good_value_without_a_request(events: list[Any]) -> None:
    backend = MemoryBackend(variables={"k": "s3cr3t-old"})
    # The default breaker: the refresh back-off takes its numbers from it (and is off without it).
    search_path = path(backend, cache=CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=600.0))
    assert search_path.get_variable("k") == "s3cr3t-old"
    backend.fail_with = Unreachable("b0: store down")
    assert search_path.get_variable("k") == "s3cr3t-old"  # the failed refresh: stale-if-error
    calls = len(backend.calls)
    events.clear()
    assert search_path.get_variable("k") == "s3cr3t-old"  # within the back-off: no request at all
    assert len(backend.calls) == calls
    attempts = [e for e in events if isinstance(e, Attempt)]
    assert [(a.backend, a.outcome, a.seconds) for a in attempts] == [("b0", "stale", 0.0)]
    assert attempts[0].detail.startswith("refresh backing off: next try in ")
    served = [e for e in events if isinstance(e, Served)]
    assert [(s.tier, s.source) for s in served] == [("stale", "b0")]


def test_a_clean_miss_is_served_by_the_store_tier_with_no_source(events: list[Any]) -> None:
    path = quiet_path(MemoryBackend())
    assert path.get_variable("nope", default=None) is None
    assert [(e.tier, e.source) for e in events if isinstance(e, Served)] == [("store", None)]


class LeasingBackend(MemoryBackend):
    def lease_detail(self, key: str) -> str:
        return f"lease-of-{key}"


def test_the_lease_detail_is_shown_for_a_connection_hit_only() -> None:
    backend = LeasingBackend(
        connections={"c": "postgres://u:pw-s3cr3t@h:5432/db"}, variables={"v": "s3cr3t-var"}
    )
    path = quiet_path(backend)
    connection = path.explain("connection", "c")
    assert [a.detail for a in connection.attempts] == ["lease lease-of-c"]
    variable = path.explain("variable", "v")
    assert [a.detail for a in variable.attempts] == [""]


def test_a_live_backend_whose_pattern_excludes_the_id_is_not_asked_ahead_of_a_cached_answer() -> None:
    from tests.memory_backend import UncachedMemoryBackend

    picky = UncachedMemoryBackend(connections_lookup_pattern="^zz")
    cached = MemoryBackend({"db": "postgres://u:pw-s3cr3t@h:5432/db"})
    search_path = path(picky, cached)
    search_path.get_connection("db")
    search_path.get_connection("db")  # the cached answer, after the live backends ahead that want it
    assert picky.calls == []


def test_a_live_backend_ahead_of_a_cached_answer_is_traced_and_its_secret_masked(events: list[Any]) -> None:
    from credpath._masking import Masker
    from tests.memory_backend import UncachedMemoryBackend

    live = UncachedMemoryBackend()
    cached = MemoryBackend(variables={"api_password": "s3cr3t-cached"})
    masker = Masker()
    search_path = path(live, cached, masker=masker)
    assert search_path.get_variable("api_password") == "s3cr3t-cached"
    events.clear()
    assert search_path.get_variable("api_password") == "s3cr3t-cached"  # the live one misses: the cache
    assert [(s.tier, s.source) for s in events if isinstance(s, Served)] == [("process", "b1")]
    live.variables["api_password"] = "s3cr3t-live-value"  # e.g. an environment variable set since
    events.clear()
    assert search_path.get_variable("api_password") == "s3cr3t-live-value"
    assert [(s.tier, s.source) for s in events if isinstance(s, Served)] == [("store", "b0")]
    assert "s3cr3t-live-value" not in masker.redact("password=s3cr3t-live-value")
