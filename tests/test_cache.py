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
