from __future__ import annotations

import time

import pytest

from credpath._cache import ABSENT, DEFAULT_STALE_IF_ERROR, CacheSettings, TTLCache


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
    cache = TTLCache(CacheSettings(ttl=100.0, miss_ttl=0.0, jitter=0.0))
    cache.put("hit", 1)
    cache.put("miss", None, miss=True)
    assert cache.get("hit") == 1 and cache.get("miss") is ABSENT
    assert len(cache) == 1  # a miss with miss_ttl 0 is not stored at all
    own = TTLCache(CacheSettings(ttl=100.0, miss_ttl=5.0, jitter=0.0))
    now = time.monotonic()
    own.put("hit", 1)
    own.put("miss", None, miss=True)
    assert own.get("miss") is None  # a cached miss is served before its own expiry
    assert 4.0 < own._data["miss"][0] - now <= 5.5  # the miss TTL, not the hit TTL
    assert 99.0 < own._data["hit"][0] - now <= 100.5
    assert own._data["miss"][3] == own._data["miss"][0]  # no stale window for a miss


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


# --- short TTLs, expiry, clear(), the documented defaults -----------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    from credpath import _cache as cache_module

    fake = FakeClock()
    monkeypatch.setattr(cache_module.time, "monotonic", fake)
    return fake


def test_documented_defaults_are_pinned():
    s = CacheSettings()
    assert (s.enabled, s.ttl, s.miss_ttl, s.max_size) == (True, 300.0, 60.0, 10_000)
    assert (s.jitter, s.stale_if_error, DEFAULT_STALE_IF_ERROR) == (0.1, 3600.0, 3600.0)
    assert (s.shared, s.shared_lease) == (None, 5.0)
    assert not hasattr(s, "shared_keys")  # the shared tier's keys live in its own settings
    assert TTLCache().settings == s


@pytest.mark.parametrize("ttl", [0.2, 1.0])
def test_a_ttl_of_a_second_or_less_still_caches_until_expiry(clock, ttl):
    cache = TTLCache(CacheSettings(ttl=ttl, jitter=0.0, stale_if_error=0.0))
    cache.put("k", "V")
    assert cache._data["k"][0] == clock.now + ttl
    clock.now += ttl * 0.9
    assert cache.get("k") == "V"  # a hit before expiry
    clock.now += ttl * 0.1
    assert cache.get("k") == "V"  # still fresh at exactly its expiry
    clock.now += 0.001
    assert cache.get("k") is ABSENT
    assert len(cache) == 0  # dropped: no stale window


def test_expired_entries_are_dropped_once_past_the_stale_window(clock):
    cache = TTLCache(CacheSettings(ttl=10.0, jitter=0.0, stale_if_error=5.0))
    cache.put("k", "V")
    entry = cache._data["k"]
    assert entry == (1010.0, "V", 1000.0, 1015.0)
    clock.now = 1012.0
    assert cache.get("k") is ABSENT and len(cache) == 1  # expired, kept for stale-if-error
    assert cache.get_stale("k") == ("V", 12.0)
    clock.now = 1015.0
    assert cache.get_stale("k") == ("V", 15.0)  # the window's last instant
    assert cache.get("k") is ABSENT and len(cache) == 1  # get() keeps it to the end of the window too
    clock.now = 1015.5
    assert cache.get_stale("k") is None
    assert len(cache) == 1  # get_stale does not drop ...
    assert cache.get("k") is ABSENT and len(cache) == 0  # ... get() does


def test_jitter_adds_up_to_its_fraction(clock, monkeypatch):
    from credpath import _cache as cache_module

    monkeypatch.setattr(cache_module.random, "random", lambda: 1.0)
    cache = TTLCache(CacheSettings(ttl=100.0, jitter=0.25, stale_if_error=7.0))
    cache.put("k", 1)
    assert cache._data["k"] == (1125.0, 1, 1000.0, 1132.0)


def test_ttl_zero_with_a_stale_window_is_never_fresh(clock):
    cache = TTLCache(CacheSettings(ttl=0.0, jitter=0.0, stale_if_error=10.0))
    cache.put("k", "V")
    assert cache._data["k"] == (999.0, "V", 1000.0, 1009.0)  # expired a second ago; window from then
    assert cache.get("k") is ABSENT and cache.get_stale("k") == ("V", 0.0)


def test_clear_and_invalidate():
    cache = TTLCache()
    for key in "abc":
        cache.put(key, key)
    cache.invalidate("b")
    cache.invalidate("missing")  # no error
    assert len(cache) == 2 and cache.get("b") is ABSENT and cache.get("a") == "a"
    cache.clear()
    assert len(cache) == 0
    assert [cache.get(k) for k in "abc"] == [ABSENT] * 3 and cache.get_stale("a") is None
    cache.put("a", 1)
    assert cache.get("a") == 1  # usable after clear()


def test_a_refresh_replaces_the_value_and_max_size_one_keeps_the_newest():
    cache = TTLCache(CacheSettings(max_size=1))
    cache.put("a", 1)
    cache.put("a", 2)
    assert cache.get("a") == 2 and len(cache) == 1
    cache.put("b", 3)
    assert cache.get("a") is ABSENT and cache.get("b") == 3 and len(cache) == 1


def test_disabled_cache_keeps_no_stale_value_either():
    cache = TTLCache(CacheSettings(enabled=False, stale_if_error=100.0))
    cache.put("k", 1)
    assert len(cache) == 0 and cache.get_stale("k") is None


def test_cache_settings_are_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        CacheSettings().ttl = 1.0  # type: ignore[misc]


def test_entries_is_the_live_table_the_search_path_hot_path_reads():
    cache = TTLCache(CacheSettings(ttl=60, jitter=0))
    entries = cache.entries()
    cache.put(("connection", "a", None), "value")
    expiry, value, stored_at, keep_until = entries[("connection", "a", None)]  # live, not a copy
    assert value == "value" and stored_at <= expiry <= keep_until
    cache.invalidate(("connection", "a", None))
    assert ("connection", "a", None) not in entries
    assert cache.entries() is entries


def test_put_returns_the_times_it_stored(clock):
    cache = TTLCache(CacheSettings(ttl=10.0, jitter=0.0, stale_if_error=5.0))
    assert cache.put("k", "V") == (1010.0, 1000.0, 1015.0)
    assert cache.put("m", None, miss=True) == (1060.0, 1000.0, 1060.0)  # a miss: no stale window
    assert TTLCache(CacheSettings(enabled=False)).put("k", "V") is None


def test_shared_tier_settings_stay_out_of_repr_and_keys_out_of_equality():
    url = "redis://:pw-s3cr3t@cache.example:6379/0"
    settings = CacheSettings(shared=url)
    assert "s3cr3t" not in repr(settings)
    assert settings != CacheSettings(shared="file:/x")


class _Racing(dict):
    """A dict whose first iteration fails as it does when another thread's get() pops an expired entry
    during eviction: RuntimeError (changed size) or StopIteration (emptied)."""

    def __init__(self, error: type[BaseException]) -> None:
        super().__init__()
        self.error: type[BaseException] | None = error

    def __iter__(self):
        if self.error is not None and len(self) > 1:
            error, self.error = self.error, None
            if error is StopIteration:
                return iter(())
            raise error("dictionary changed size during iteration")
        return super().__iter__()


@pytest.mark.parametrize("error", [RuntimeError, StopIteration])
def test_eviction_tolerates_a_concurrent_removal(error):
    cache = TTLCache(CacheSettings(max_size=2))
    cache._data = _Racing(error)
    for key in "abc":
        cache.put(key, key)
    assert len(cache) == 2  # the eviction went on after the failed turn
    assert [cache.get(k) for k in "abc"] == [ABSENT, "b", "c"]
