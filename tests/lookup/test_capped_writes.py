"""A value the store says changes at a given time (``valid_until``) enters the process tier already capped:
no reader of the tier, another thread included, ever sees it with its uncapped lifetime."""

from __future__ import annotations

import time
from typing import Any

import pytest

from credpath._cache import CacheSettings, TTLCache
from credpath._lookup.trace import note_valid_until
from credpath._search_path import SearchPath
from tests.memory_backend import MemoryBackend


class RotatingBackend(MemoryBackend):
    """Reports that every value it returns changes ``in_seconds`` from now (as a rotation date)."""

    def __init__(self, in_seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_seconds = in_seconds

    def get_variable(self, key: str) -> str | None:
        note_valid_until(time.time() + self.in_seconds)
        return super().get_variable(key)


class WatchedCache(TTLCache):
    """A process tier that records every entry written into it: what any reader could have seen."""

    def __init__(self, settings: CacheSettings) -> None:
        super().__init__(settings)
        self.written: list[tuple[Any, float, float]] = []

    def put_entry(self, key: Any, value: Any, expiry: float, stored_at: float, keep_until: float) -> None:
        self.written.append((key, expiry, keep_until))
        super().put_entry(key, value, expiry, stored_at, keep_until)


def test_a_capped_value_is_never_held_past_its_cap_even_for_a_moment() -> None:
    cache = WatchedCache(CacheSettings(ttl=300.0, stale_if_error=600.0, jitter=0.0))
    path = SearchPath([("rot", RotatingBackend(5.0, variables={"k": "v-s3cr3t"}))], cache=cache)
    before = time.monotonic()
    assert path.get_variable("k") == "v-s3cr3t"
    cap = before + 5.0
    assert cache.written, "the value was cached"
    for key, expiry, keep_until in cache.written:
        assert key == ("variable", "k", None)
        # Every entry the tier ever held ends at the rotation date (a second of slack for the clocks).
        assert expiry <= cap + 1.0 and keep_until <= cap + 1.0, (expiry - before, keep_until - before)
    assert len(cache.written) == 1  # one write: the capped one


@pytest.mark.parametrize(
    ("ttl", "stale", "cap", "fresh_for", "kept_for"),
    [
        (30.0, 60.0, 3600.0, 30.0, 90.0),  # a cap later than both lifetimes leaves them alone
        (30.0, 600.0, 100.0, 30.0, 100.0),  # between the TTL and the stale limit: only the stale one is cut
    ],
)
def test_a_cap_cuts_only_the_lifetimes_that_reach_past_it(
    ttl: float, stale: float, cap: float, fresh_for: float, kept_for: float
) -> None:
    cache = WatchedCache(CacheSettings(ttl=ttl, stale_if_error=stale, jitter=0.0))
    path = SearchPath([("rot", RotatingBackend(cap, variables={"k": "v"}))], cache=cache)
    before = time.monotonic()
    path.get_variable("k")
    ((_, expiry, keep_until),) = cache.written
    assert expiry - before == pytest.approx(fresh_for, abs=1.0)
    assert keep_until - before == pytest.approx(kept_for, abs=1.0)
