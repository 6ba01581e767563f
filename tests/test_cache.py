from __future__ import annotations

import time

from credpath.cache import ABSENT, CacheSettings, TTLCache


def test_bounded_size_evicts_oldest_first():
    cache = TTLCache(CacheSettings(max_size=3))
    for key in "abcd":
        cache.put(key, key.upper())
    assert len(cache) == 3
    assert cache.get("a") is ABSENT
    assert [cache.get(k) for k in "bcd"] == ["B", "C", "D"]
    cache.put("b", "B2")  # a refresh moves "b" to the young end
    cache.put("e", "E")
    assert cache.get("c") is ABSENT and cache.get("b") == "B2"


def test_jitter_spreads_expiry_within_bounds():
    cache = TTLCache(CacheSettings(ttl=100.0, jitter=0.1))
    now = time.monotonic()
    for i in range(200):
        cache.put(i, i)
    expiries = [cache._data[i][0] - now for i in range(200)]
    assert all(99.9 <= e <= 110.1 for e in expiries)
    assert max(expiries) - min(expiries) > 5  # actually jittered, not one fixed deadline


def test_misses_use_their_own_ttl_and_zero_disables():
    cache = TTLCache(CacheSettings(ttl=100.0, miss_ttl=0.0))
    cache.put("hit", 1)
    cache.put("miss", None, miss=True)
    assert cache.get("hit") == 1 and cache.get("miss") is ABSENT


def test_disabled_cache_stores_nothing():
    cache = TTLCache(CacheSettings(enabled=False))
    cache.put("k", 1)
    assert cache.get("k") is ABSENT


def test_expired_hits_are_kept_for_the_stale_window_and_misses_are_not():
    cache = TTLCache(CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=100.0))
    cache.put("hit", "V")
    cache.put("miss", None, miss=True)
    assert cache.get("hit") is ABSENT  # never fresh with ttl=0 ...
    value, age = cache.get_stale("hit")  # ... but kept as the last good value
    assert value == "V" and 0 <= age < 100
    assert cache.get_stale("miss") is None
    assert cache.get("hit") is ABSENT and cache.get_stale("hit") is not None  # get() does not drop it


def test_stale_window_end_drops_the_entry_and_max_size_bounds_kept_entries():
    cache = TTLCache(CacheSettings(ttl=0.0, jitter=0.0, stale_if_error=0.01, max_size=3))
    cache.put("a", 1)
    time.sleep(0.03)  # past the window (sleep never returns early)
    assert cache.get_stale("a") is None
    assert cache.get("a") is ABSENT and len(cache) == 0
    for key in "bcdef":
        cache.put(key, key)
    assert len(cache) == 3


def test_stale_if_error_zero_keeps_nothing_past_expiry():
    cache = TTLCache(CacheSettings(ttl=0.0, stale_if_error=0.0))
    cache.put("a", 1)
    assert len(cache) == 0 and cache.get_stale("a") is None
