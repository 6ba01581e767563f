"""What the search path's state does with its tiers, pinned without servers: a store's change events
(which ids each tier drops, by source, pattern, team and version), the capping backends' undated answers,
the shared tier's set-up and close, a foreign backend's close, and log masking switched off."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import pytest

from credpath._cache import CacheSettings, TTLCache
from credpath._lookup.model import MISS, Resolution
from credpath._lookup.state import LookupState
from credpath._lookup.trace import note_valid_until
from credpath._masking import Masker
from credpath._search_path import SearchPath
from credpath._shared_cache import SharedEntry
from tests.memory_backend import MemoryBackend

SETTINGS = CacheSettings(ttl=300.0, miss_ttl=60.0, stale_if_error=600.0, jitter=0.0)


class RecordingTier:
    """A shared tier held in a dict that records what the search path asks of it."""

    def __init__(self) -> None:
        self.entries: dict[Any, SharedEntry] = {}
        self.gets: list[Any] = []
        self.invalidated: list[Any] = []
        self.bound: list[Any] = []
        self.epochs = 0
        self.flushes = 0

    def get(self, ckey: Any) -> SharedEntry | None:
        self.gets.append(ckey)
        return self.entries.get(ckey)

    def put(self, ckey: Any, entry: SharedEntry) -> None:
        self.entries[ckey] = entry

    def invalidate(self, ckey: Any) -> None:
        self.invalidated.append(ckey)
        self.entries.pop(ckey, None)

    def get_or_acquire(self, ckey: Any, deadline: Any = None) -> tuple[SharedEntry | None, bool | None]:
        return self.entries.get(ckey), True

    def acquire(self, ckey: Any) -> bool | None:
        return True

    def release(self, ckey: Any) -> None:
        pass

    def wait(self, ckey: Any, deadline: Any = None) -> tuple[SharedEntry | None, bool]:
        return self.entries.get(ckey), False

    def reading_store(self) -> None:
        pass

    def bound_wait(self, backends: Any) -> None:
        self.bound.append(list(backends))

    def state(self, namespace: str) -> Any:
        return None

    def count(self, name: str, n: int = 1) -> None:
        pass

    def flush_soon(self) -> None:
        pass

    def flush(self) -> None:
        self.flushes += 1

    def epoch(self) -> str | None:
        self.epochs += 1
        return None

    def invalidate_all(self) -> int:
        return 0


def make_state(shared: Any = None) -> LookupState:
    state = LookupState(None)
    state.set_tiers(SETTINGS, Masker(), False, shared, [])
    return state


def held(state: LookupState) -> set[Any]:
    return set(state.cache.entries())


def shared_entry(version: str | None, *, miss: bool = False) -> SharedEntry:
    now = time.time()
    value = None if miss else "s3cr3t-shared"
    return SharedEntry(
        "variable", value, None if miss else "b0", miss, now, now + 300, now + 900, version=version
    )


# --- change events --------------------------------------------------------------------------------------


def test_a_change_event_drops_the_named_ids_for_every_team_and_nothing_else() -> None:
    state = make_state()
    for key, team in [("k", None), ("k", "t1"), ("other", None)]:
        state.put(("variable", key, team), Resolution("s3cr3t-1", "b0", "v1"))
    state.put(("connection", "k", None), Resolution("s3cr3t-c", "b0", "v1"))
    state.store_changed("b0", [("variable", "k")], None, None)
    assert held(state) == {("variable", "other", None), ("connection", "k", None)}


def test_a_gap_in_the_events_drops_the_source_s_entries_and_the_misses_only() -> None:
    tier = RecordingTier()
    state = make_state(tier)
    state.put(("variable", "a", None), Resolution("s3cr3t-a", "b0"))
    state.put(("variable", "b", None), Resolution("s3cr3t-b", "b1"))
    state.put(("variable", "m", None), MISS, miss=True)
    state.store_changed("b0", None, None, None)
    assert held(state) == {("variable", "b", None)}
    # The shared tier keeps its own entries (bounded by their TTL): it is not even asked.
    assert (tier.gets, tier.invalidated) == ([], [])
    assert set(tier.entries) == {("variable", "a", None), ("variable", "b", None), ("variable", "m", None)}


def test_a_change_event_s_test_drops_the_source_s_matching_ids(caplog: pytest.LogCaptureFixture) -> None:
    state = make_state()
    asked: list[tuple[str, str]] = []

    def matches(kind: str, key: str) -> bool:
        asked.append((kind, key))
        return kind == "variable" and key.startswith("app_")

    state.put(("variable", "app_1", None), Resolution("s3cr3t-1", "b0"))
    state.put(("connection", "app_2", None), Resolution("s3cr3t-2", "b0"))
    state.put(("variable", "db", None), Resolution("s3cr3t-3", "b0"))
    state.put(("variable", "app_3", None), Resolution("s3cr3t-4", "b1"))
    caplog.set_level(logging.DEBUG, logger="credpath.search_path")
    state.store_changed("b0", [], matches, None)
    assert held(state) == {
        ("connection", "app_2", None),
        ("variable", "db", None),
        ("variable", "app_3", None),
    }
    assert ("variable", "app_1") in asked
    lines = [r.getMessage() for r in caplog.records if "reported a change" in r.getMessage()]
    assert lines == ["b0: the store reported a change: 1 cached id(s) looked at"]


def test_a_change_event_that_finds_nothing_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    state = make_state()
    state.put(("variable", "db", None), Resolution("s3cr3t-3", "b0"))
    caplog.set_level(logging.DEBUG, logger="credpath.search_path")
    state.store_changed("b0", [], lambda kind, key: False, None)
    assert held(state) == {("variable", "db", None)}
    assert not [r for r in caplog.records if "reported a change" in r.getMessage()]


def test_a_change_event_keeps_a_value_that_already_is_the_new_version() -> None:
    state = make_state()
    state.put(("variable", "same", None), Resolution("s3cr3t-2", "b0", "v2"))
    state.put(("variable", "old", None), Resolution("s3cr3t-1", "b0", "v1"))
    state.put(("variable", "nov", None), Resolution("s3cr3t-0", "b0", None))
    state.put(("variable", "miss", None), MISS, miss=True)
    ids = [("variable", k) for k in ("same", "old", "nov", "miss")]
    state.store_changed("b0", ids, None, "v2")
    assert held(state) == {("variable", "same", None)}


def test_a_change_event_invalidates_the_shared_entries_not_yet_at_the_new_version() -> None:
    tier = RecordingTier()
    state = make_state(tier)
    # This process already holds v2 of "k"; the shared tier still has v1: both are dropped (the shared
    # entry would be adopted again otherwise).
    state.put(("variable", "k", None), Resolution("s3cr3t-2", "b0", "v2"))
    state.put(("variable", "same", None), Resolution("s3cr3t-2", "b0", "v2"))
    tier.entries[("variable", "k", None)] = shared_entry("v1")
    tier.entries[("variable", "miss", None)] = shared_entry(None, miss=True)
    ids = [("variable", k) for k in ("k", "same", "miss", "none")]
    state.store_changed("b0", ids, None, "v2")
    assert sorted(tier.invalidated) == [("variable", "k", None), ("variable", "miss", None)]
    assert set(tier.entries) == {("variable", "same", None)}
    assert held(state) == {("variable", "same", None)}
    assert ("variable", "none", None) in tier.gets


def test_a_change_event_without_a_version_invalidates_any_shared_entry() -> None:
    tier = RecordingTier()
    state = make_state(tier)
    tier.entries[("variable", "k", None)] = shared_entry(None)
    state.store_changed("b0", [("variable", "k")], None, None)
    assert tier.invalidated == [("variable", "k", None)]


# --- backends that take change events ------------------------------------------------------------------


class WatchedBackend(MemoryBackend):
    capabilities = MemoryBackend.capabilities | {"change_events"}

    def __init__(self, *, watch: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch = watch
        self.listeners: list[Any] = []

    def subscribe_changes(self, changed: Any) -> bool:
        self.listeners.append(changed)
        return True


class NeverCachedWatched(WatchedBackend):
    cache_results = False


def test_a_cached_backend_with_change_events_is_subscribed_and_its_events_drop_values() -> None:
    backend = WatchedBackend(variables={"k": "s3cr3t-1"})
    path = SearchPath([("b0", backend)], cache=SETTINGS)
    assert len(backend.listeners) == 1
    assert path.get_variable("k") == "s3cr3t-1"
    backend.variables["k"] = "s3cr3t-2"
    assert path.get_variable("k") == "s3cr3t-1"  # cached
    backend.listeners[0]("b0", [("variable", "k")], None, None)
    assert path.get_variable("k") == "s3cr3t-2"


def test_a_never_cached_backend_is_not_subscribed_to_change_events() -> None:
    backend = NeverCachedWatched(variables={"k": "s3cr3t-1"})
    SearchPath([("b0", backend)], cache=SETTINGS)
    assert backend.listeners == []


# --- backends that cap values at the store's announced changes ----------------------------------------


class DatedBackend(MemoryBackend):
    """Declares "rotation_dates": a read of a key in ``dates`` reports its change that many seconds ahead."""

    capabilities = MemoryBackend.capabilities | {"rotation_dates"}

    def __init__(self, *, cap_at_rotation: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cap_at_rotation = cap_at_rotation
        self.dates: dict[str, float] = {}

    def get_variable(self, key: str) -> str | None:
        if key in self.dates:
            note_valid_until(time.time() + self.dates[key])
        return super().get_variable(key)

    def reads(self, key: str) -> int:
        return self.calls.count(("get_variable", key))


def test_a_capping_backend_s_undated_answer_is_served_not_cached_and_a_dated_one_is_cached() -> None:
    backend = DatedBackend(variables={"undated": "s3cr3t-u", "dated": "s3cr3t-d"})
    backend.dates["dated"] = 3600.0
    path = SearchPath([("b0", backend)], cache=SETTINGS)
    for _ in range(2):
        assert path.get_variable("undated") == "s3cr3t-u"
        assert path.get_variable("dated") == "s3cr3t-d"
    assert (backend.reads("undated"), backend.reads("dated")) == (2, 1)


def test_a_backend_with_its_capping_off_has_its_undated_answers_cached() -> None:
    backend = DatedBackend(cap_at_rotation=False, variables={"undated": "s3cr3t-u"})
    path = SearchPath([("b0", backend)], cache=SETTINGS)
    for _ in range(2):
        assert path.get_variable("undated") == "s3cr3t-u"
    assert backend.reads("undated") == 1


# --- the tiers' set-up and close ------------------------------------------------------------------------


def test_a_given_process_tier_is_the_one_used() -> None:
    cache = TTLCache(SETTINGS)
    path = SearchPath([("b0", MemoryBackend(variables={"k": "s3cr3t-1"}))], cache=cache)
    assert path.get_variable("k") == "s3cr3t-1"
    assert ("variable", "k", None) in cache.entries()


def test_a_path_without_backends_serves_what_its_given_tier_holds() -> None:
    cache = TTLCache(SETTINGS)
    cache.put(("variable", "gone", None), MISS, miss=True)
    cache.put(("variable", "kept", None), Resolution("s3cr3t-kept", "elsewhere"))
    path = SearchPath([], cache=cache)
    assert path.get_variable("gone", default="d") == "d"
    assert path.get_variable("kept") == "s3cr3t-kept"


def test_a_shared_tier_bounds_its_wait_by_the_backends_and_looks_at_the_epoch_on_the_first_lookup() -> None:
    tier = RecordingTier()
    backend = MemoryBackend(variables={"k": "s3cr3t-1"})
    path = SearchPath([("b0", backend)], cache=SETTINGS, shared=tier)
    assert tier.bound == [[backend]]
    assert tier.epochs == 0
    assert path.get_variable("k") == "s3cr3t-1"
    assert tier.epochs == 1


def test_closing_flushes_the_shared_tier_and_closes_a_foreign_backend() -> None:
    class Foreign:
        def __init__(self) -> None:
            self.closed = 0

        def get_variable(self, key: str) -> str | None:
            return None

        def close(self) -> None:
            self.closed += 1

    tier = RecordingTier()
    foreign = Foreign()
    path = SearchPath([("f", cast(Any, foreign))], cache=SETTINGS, shared=tier)
    path.close()
    assert (tier.flushes, foreign.closed) == (1, 1)


def test_published_values_are_hits_unless_said_otherwise() -> None:
    tier = RecordingTier()
    state = make_state(tier)
    now = time.monotonic()
    state.publish(("variable", "k", "t1"), Resolution("s3cr3t-1", "b0", "v1"), (now + 30, now, now + 90))
    entry = tier.entries[("variable", "k", "t1")]
    assert (entry.miss, entry.value, entry.source, entry.version) == (False, "s3cr3t-1", "b0", "v1")


def test_with_log_masking_off_no_secret_is_registered() -> None:
    masker = Masker()
    path = SearchPath(
        [("b0", MemoryBackend(variables={"api_password": "s3cr3t-pw"}))], masker=masker, mask_logs=False
    )
    assert path.get_variable("api_password") == "s3cr3t-pw"
    assert masker.redact("token s3cr3t-pw") == "token s3cr3t-pw"


# --- publishing to and adopting from the shared tier ----------------------------------------------------


def test_a_published_answer_carries_the_process_tier_s_times_on_the_wall_clock() -> None:
    tier = RecordingTier()
    state = make_state(tier)
    mono, wall = time.monotonic(), time.time()
    times = (mono + 30.0, mono, mono + 90.0)
    state.publish(("variable", "k", None), Resolution("s3cr3t-1", "b0", "v1", wall + 60.0), times)
    entry = tier.entries[("variable", "k", None)]
    assert entry.stored_at == pytest.approx(wall, abs=1.0)
    assert entry.fresh_until == pytest.approx(wall + 30.0, abs=1.0)
    assert entry.keep_until == pytest.approx(wall + 60.0, abs=1.0)  # capped at valid_until
    assert entry.valid_until == wall + 60.0
    state.publish(("variable", "m", None), MISS, times, miss=True)
    miss = tier.entries[("variable", "m", None)]
    assert (miss.miss, miss.value, miss.source, miss.version, miss.valid_until) == (
        True,
        None,
        None,
        None,
        None,
    )
    assert miss.keep_until == pytest.approx(wall + 90.0, abs=1.0)


def test_an_adopted_entry_keeps_its_own_times_and_its_secret_is_masked() -> None:
    masker = Masker()
    state = LookupState(None)
    state.set_tiers(SETTINGS, masker, True, None, [])
    wall, mono = time.time(), time.monotonic()
    entry = SharedEntry(
        "variable", "s3cr3t-adopted", "b0", False, wall - 5, wall + 20, wall + 50, version="v3"
    )
    value = state.adopt(("variable", "api_password", "t1"), entry)
    assert (value.value, value.source, value.version) == ("s3cr3t-adopted", "b0", "v3")
    expiry, held_value, stored_at, keep_until = state.cache.entries()[("variable", "api_password", "t1")]
    assert held_value is value
    assert expiry == pytest.approx(mono + 20, abs=1.0)
    assert stored_at == pytest.approx(mono - 5, abs=1.0)
    assert keep_until == pytest.approx(mono + 50, abs=1.0)
    assert masker.redact("x s3cr3t-adopted") != "x s3cr3t-adopted"
    # The team is known from now on: an invalidation of the id drops the team's entry too.
    state.invalidate("variable", "api_password")
    assert held(state) == set()


def test_an_adopted_miss_is_a_cached_miss() -> None:
    state = make_state()
    wall = time.time()
    assert (
        state.adopt(
            ("variable", "k", None), SharedEntry("variable", None, None, True, wall, wall + 20, wall + 20)
        )
        is MISS
    )
    assert state.cache.get(("variable", "k", None)) is MISS


def test_an_invalidation_drops_the_id_in_both_tiers_for_every_team_and_ends_its_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tier = RecordingTier()
    state = make_state(tier)
    for team in (None, "t1"):
        state.put(("variable", "k", team), Resolution("s3cr3t-1", "b0"))
    state.put(("variable", "other", None), Resolution("s3cr3t-2", "b0"))
    caplog.set_level(logging.WARNING, logger="credpath.search_path")
    for what in ("stale", "fall-through", "other"):
        state.warn_once(("variable", "k", None), what, "warned %s", what)
        state.warn_once(("variable", "k", None), what, "warned %s", what)
    assert [r.getMessage() for r in caplog.records] == ["warned stale", "warned fall-through", "warned other"]
    state.invalidate("variable", "k")
    assert held(state) == {("variable", "other", None)}
    assert sorted(tier.invalidated, key=str) == [("variable", "k", "t1"), ("variable", "k", None)]
    caplog.clear()
    for what in ("stale", "fall-through", "other"):
        state.warn_once(("variable", "k", None), what, "warned %s", what)
    # A new episode warns again; what is not an outage warning stays said once.
    assert [r.getMessage() for r in caplog.records] == ["warned stale", "warned fall-through"]
