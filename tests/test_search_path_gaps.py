"""Search-path behaviour the other unit tests left unpinned (issue 16: surviving mutants of search_path.py).

Server-free: the in-memory backends of tests/memory_backend.py, and a file-backed shared tier in tmp_path.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from credpath._lookup.tiers import lookup_once
from credpath._lookup.trace import LookupContext
from credpath.cache import CacheSettings
from credpath.config import BackendSpec, Settings
from credpath.errors import BackendUnavailable, ConfigError, NotFound
from credpath.search_path import PrefetchReport, Resolution, SearchPath
from tests.memory_backend import (
    AirflowStyleBackend,
    BatchMemoryBackend,
    MemoryBackend,
    PrefixMemoryBackend,
    UncachedMemoryBackend,
    Unreachable,
)

URI_A = "postgres://alice:pw-s3cr3t-a@db-a:5432/app"
URI_B = "postgres://bob:pw-s3cr3t-b@db-b:5432/app"


def no_breaker():
    from credpath.resilience import BreakerSettings

    return BreakerSettings(enabled=False)


def path(*backends, **kwargs) -> SearchPath:
    kwargs.setdefault("breaker", no_breaker())
    return SearchPath([(f"b{i}", b) for i, b in enumerate(backends)], **kwargs)


def _expired_cache(**kwargs):
    # ttl=0: every lookup refreshes; the last good value is kept for stale-if-error (no sleeping)
    return CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, **kwargs)


class OneBadValue:
    """Mixin: the value of id "bad" cannot be decoded (a transient per-id failure, e.g. a decrypt call)."""

    def deserialize_connection(self, conn_id, value):
        if conn_id == "bad":
            raise Unreachable(f"{self.label}: cannot decrypt the value of {conn_id!r}")
        return super().deserialize_connection(conn_id, value)


class BadValueBatch(OneBadValue, BatchMemoryBackend):
    pass


class BadValuePrefix(OneBadValue, PrefixMemoryBackend):
    pass


# --- small value types --------------------------------------------------------------------------------


def test_a_resolution_is_immutable():
    resolution = Resolution("v", "b0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolution.value = "other"  # type: ignore[misc]


def test_an_empty_prefetch_report_counts_nothing():
    assert PrefetchReport() == PrefetchReport(0, 0, 0, 0)
    assert PrefetchReport().requested == 0


# --- construction -------------------------------------------------------------------------------------


def test_backend_kwargs_for_unknown_backends_name_the_first_in_order():
    settings = Settings(backends=[BackendSpec(type="memory", name="vault")])
    with pytest.raises(ConfigError) as info:
        SearchPath.from_settings(settings, backend_kwargs={"zz": {}, "aa": {}})
    assert "no backend named 'aa'" in str(info.value)
    assert "'zz'" not in str(info.value)


def test_an_unknown_backend_type_names_the_entry_when_it_has_no_origin():
    with pytest.raises(ConfigError) as info:
        SearchPath([BackendSpec(type="no-such-store", name="mine")])
    assert "mine type" in str(info.value)
    with pytest.raises(ConfigError) as info:
        SearchPath([BackendSpec(type="no-such-store", name="mine", origin="credpath.toml backends[1]")])
    assert "credpath.toml backends[1] type" in str(info.value)


def test_a_foreign_airflow_style_backend_is_cached():
    class Counting(AirflowStyleBackend):
        def __init__(self) -> None:
            super().__init__()
            self.reads = 0

        def get_conn_value(self, conn_id):
            self.reads += 1
            return super().get_conn_value(conn_id)

    foreign = Counting()
    sp = SearchPath([("mine", foreign)])
    assert sp.get_connection("team_db").host == "team_db.internal"
    assert sp.get_connection("team_db").host == "team_db.internal"
    assert foreign.reads == 1


# --- the never-cached backends ahead of a cached answer ---------------------------------------------------


def test_a_failing_live_backend_ahead_of_a_cached_answer_falls_through_not_raises():
    live = UncachedMemoryBackend()
    cached = MemoryBackend({"db": URI_B})
    sp = path(live, cached)
    assert sp.get_connection("db").host == "db-b"  # cached from b1
    live.fail_with = Unreachable("down")
    assert sp.get_connection("db").host == "db-b"  # the whole path is asked again; b0 skipped
    assert sp.explain("connection", "db").fell_through


def test_a_flight_that_finds_the_cache_filled_answers_from_it():
    # A flight that begins just after another one filled the cache answers from the cache.
    after = UncachedMemoryBackend({"db": URI_A})  # never cached, but AFTER the cached source
    first = MemoryBackend({"db": URI_B})
    sp = path(first, after)
    assert sp.get_connection("db").host == "db-b"
    after.calls.clear()
    first.calls.clear()
    resolution = lookup_once(sp, LookupContext("connection", "db"))
    assert (resolution.source, resolution.value.host) == ("b0", "db-b")
    assert after.calls == [] and first.calls == []


def test_a_flight_that_finds_a_cached_miss_still_asks_the_live_backends():
    live = UncachedMemoryBackend()
    sp = path(live, MemoryBackend(), cache=CacheSettings(ttl=100.0, miss_ttl=100.0))
    assert sp.lookup("connection", "db") is None
    live.connections["db"] = URI_A  # exported since
    resolution = lookup_once(sp, LookupContext("connection", "db"))
    assert (resolution.source, resolution.value.host) == ("b0", "db-a")
    sp_cached = path(MemoryBackend({"db": URI_A}))
    sp_cached.lookup("connection", "db")
    assert lookup_once(sp_cached, LookupContext("connection", "db")).source == "b0"


# --- explain ------------------------------------------------------------------------------------------


def test_explain_times_a_failed_attempt_by_its_own_duration():
    broken = MemoryBackend()
    broken.fail_with = Unreachable("down")
    sp = path(broken, MemoryBackend({"db": URI_A}))
    started = time.perf_counter()
    explanation = sp.explain("connection", "db")
    took = time.perf_counter() - started
    error = explanation.attempts[0]
    assert error.outcome == "error"
    assert 0.0 <= error.seconds <= took


def test_explain_of_a_stale_answer_gives_its_age_and_lists_every_backend_not_tried():
    vault = MemoryBackend({"db": URI_A})
    sp = path(vault, MemoryBackend({"db": URI_B}), MemoryBackend(), cache=_expired_cache())
    sp.get_connection("db")
    vault.fail_with = Unreachable("HTTP 503")
    explanation = sp.explain("connection", "db")
    assert explanation.stale and explanation.tier == "stale"
    assert isinstance(explanation.stale_age, float) and 0.0 <= explanation.stale_age < 60.0
    assert [(a.backend, a.outcome) for a in explanation.attempts] == [
        ("b0", "stale"),
        ("b1", "not tried"),
        ("b2", "not tried"),
    ]


def test_a_cached_miss_is_no_stale_value_when_the_backend_fails():
    backend = MemoryBackend()
    sp = path(backend, cache=CacheSettings(ttl=100.0, miss_ttl=100.0, stale_if_error=3600.0))
    assert sp.lookup("connection", "nope") is None  # a cached miss
    backend.fail_with = Unreachable("down")
    explanation = sp.explain("connection", "nope")  # not from the cache: the store is asked
    assert explanation.unavailable and not explanation.stale
    assert explanation.failed == ["b0"]


def test_an_outage_after_recovery_warns_again(caplog):
    vault = MemoryBackend({"db": URI_A})
    sp = path(vault, cache=_expired_cache())
    sp.get_connection("db")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # one outage: one warning
            vault.fail_with = Unreachable("HTTP 503")
            sp.get_connection("db")
            sp.get_connection("db")
            vault.fail_with = None
            sp.get_connection("db")  # recovered: the episode is over
    warnings = [r for r in caplog.records if "stale-if-error" in r.getMessage()]
    assert len(warnings) == 2


# --- messages -----------------------------------------------------------------------------------------


def test_backend_unavailable_labels_the_first_failure_with_its_own_backend():
    one, two = MemoryBackend(), MemoryBackend()
    one.fail_with = Unreachable("down-one")
    two.fail_with = Unreachable("down-two")
    sp = path(one, two)
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    message = str(info.value)
    assert "backend 'b0' (memory): down-one" in message
    assert "'b1' (memory)" not in message


def test_a_message_that_already_names_its_backend_names_it_once():
    broken = MemoryBackend()
    broken.fail_with = Unreachable("backend 'b0' (memory): down")
    sp = path(broken)
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    assert str(info.value).count("backend 'b0' (memory)") == 1
    assert str(info.value).endswith("backend 'b0' (memory): down")
    listing = sp.list_ids("connection")
    assert listing.failed == {"b0": "backend 'b0' (memory): down"}


def test_messages_name_the_team_only_when_there_is_one():
    broken = MemoryBackend()
    broken.fail_with = Unreachable("down")
    sp = path(broken)
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db", team_name="blue")
    assert str(info.value).startswith("connection 'db' (team 'blue'): not found")
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    assert str(info.value).startswith("connection 'db': not found")
    assert "team" not in str(info.value)


# --- prefetch -----------------------------------------------------------------------------------------


def test_a_bad_value_in_a_batch_fails_that_id_only():
    backend = BadValueBatch({"bad": URI_A, "good": URI_B, "also": URI_A})
    sp = path(backend)
    report = sp.prefetch(connections=["bad", "good", "also"])["connection"]
    assert (report.requested, report.hits, report.misses, report.errors) == (3, 2, 0, 1)
    assert sp.cache.get(("connection", "good", None)).value.host == "db-b"
    assert sp.cache.get(("connection", "also", None)).value.host == "db-a"
    assert len(sp.cache) == 2  # not the failed id, nor a miss for it


def test_a_bad_value_in_a_prefix_prefetch_fails_that_id_only():
    backend = BadValuePrefix({"bad": URI_A, "good": URI_B, "also": URI_A})
    sp = path(backend)
    report = sp.prefetch(prefix=True)["connection"]
    assert (report.requested, report.hits, report.errors) == (2, 2, 1)
    assert sp.cache.get(("connection", "also", None)).value.host == "db-a"
    assert len(sp.cache) == 2


def test_a_stopped_prefix_prefetch_reports_nothing_requested():
    broken = PrefixMemoryBackend({"a": URI_A})
    broken.fail_with = Unreachable("down")
    report = path(broken).prefetch(prefix=True)["connection"]
    assert (report.requested, report.hits, report.misses, report.errors) == (0, 0, 0, 1)


def test_prefetched_misses_are_cached_for_the_miss_ttl():
    backend = BatchMemoryBackend({"c1": URI_A})
    sp = path(backend, cache=CacheSettings(ttl=100.0, miss_ttl=0.0))
    report = sp.prefetch(connections=["c1", "nope"])["connection"]
    assert (report.hits, report.misses) == (1, 1)
    assert len(sp.cache) == 1  # the hit only: a miss_ttl of 0 keeps no miss


def test_prefix_prefetch_checks_every_earlier_backend_for_shadowing():
    prefixed_first = PrefixMemoryBackend({"other": URI_A})  # lists its all: no "a"
    plain = MemoryBackend({"a": URI_A})  # cannot list: asked per id
    prefixed_last = PrefixMemoryBackend({"a": URI_B})
    sp = path(prefixed_first, plain, prefixed_last)
    sp.prefetch(prefix=True)
    assert ("get_conn_value", "a") in plain.calls
    assert sp.get_connection("a").host == "db-a"  # plain's copy, never prefixed_last's


# --- writes and listing -------------------------------------------------------------------------------


def test_set_variable_overwrites_by_default():
    class Recording(MemoryBackend):
        def set_variable(self, key, value, *, overwrite=True):
            self.calls.append(("set_variable", overwrite))
            super().set_variable(key, value, overwrite=overwrite)

    store = Recording()
    sp = path(store)
    sp.set_variable("k", "v")
    sp.set_variable("k", "w", overwrite=False)
    assert [c for c in store.calls if c[0] == "set_variable"] == [
        ("set_variable", True),
        ("set_variable", False),
    ]


def test_listing_goes_on_past_a_failing_first_backend(caplog):
    broken = MemoryBackend({"x": URI_A})
    broken.fail_with = Unreachable("down")
    sp = path(broken, MemoryBackend({"a": URI_A}), MemoryBackend({"b": URI_B}))
    with caplog.at_level(logging.WARNING):
        found, cannot = sp.list_ids("connection")
    assert found == {"a": ["b1"], "b": ["b2"]}
    assert cannot == []
    assert list(sp.list_ids("connection").failed) == ["b0"]


# --- the shared tier, as explain and prefetch see it --------------------------------------------------


@pytest.fixture
def shared_pair(tmp_path):
    """Two search paths (two "processes") on one shared tier, each with its own backend copy."""
    from cryptography.fernet import Fernet

    from credpath.shared_cache import FileStore, SharedTier

    key = Fernet.generate_key()
    stores = []

    def make(backend, cache=None):
        store = FileStore(tmp_path / "shared.db")
        stores.append(store)
        tier = SharedTier(store, [key], "scope")
        return SearchPath([("b0", backend)], cache=cache or CacheSettings(ttl=100.0, jitter=0.0), shared=tier)

    yield make
    for store in stores:
        store.close()


def test_explain_use_cache_tells_the_process_tier_from_the_shared_tier(shared_pair):
    one_backend, two_backend = MemoryBackend({"db": URI_A}), MemoryBackend({"db": URI_A})
    one, two = shared_pair(one_backend), shared_pair(two_backend)
    assert one.get_connection("db").host == "db-a"
    mine = one.explain("connection", "db", use_cache=True)
    assert (mine.cached, mine.tier, mine.source) == (True, "process", "b0")
    theirs = two.explain("connection", "db", use_cache=True)
    assert (theirs.cached, theirs.tier, theirs.source) == (True, "shared", "b0")
    assert two_backend.calls == []
    unknown = two.explain("connection", "nope", use_cache=True)  # in neither tier: the store is asked
    assert (unknown.cached, unknown.tier, unknown.source) == (False, "store", None)


def test_an_expired_shared_entry_is_not_a_cached_answer(shared_pair):
    expired = CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=3600.0)
    one = shared_pair(MemoryBackend({"db": URI_A}), expired)
    two_backend = MemoryBackend({"db": URI_A})
    two = shared_pair(two_backend, expired)
    one.get_connection("db")
    entry = two.shared.get(("connection", "db", None))
    assert entry is None or not entry.fresh(time.time())
    explanation = two.explain("connection", "db", use_cache=True)
    assert (explanation.cached, explanation.tier) == (False, "store")
    report = two.prefetch(connections=["db"])["connection"]
    assert report.hits == 1
    assert two_backend.calls.count(("get_conn_value", "db")) == 2  # explain, then prefetch


def test_prefetch_adopts_what_another_process_read(shared_pair):
    one = shared_pair(MemoryBackend({"c1": URI_A}))
    two_backend = MemoryBackend({"c1": URI_A, "c2": URI_B})
    two = shared_pair(two_backend)
    one.get_connection("c1")
    report = two.prefetch(connections=["c1", "c2"])["connection"]
    assert report.requested == 2
    assert two_backend.calls == [("get_conn_value", "c2")]  # c1 came from the shared tier
    two_backend.calls.clear()
    assert two.get_connection("c1").host == "db-a"
    assert two.get_connection("c2").host == "db-b"
    assert two_backend.calls == []


def test_a_miss_is_not_found_through_the_shared_tier_either(shared_pair):
    one = shared_pair(MemoryBackend())
    with pytest.raises(NotFound):
        one.get_connection("nope")


def test_listing_goes_on_past_a_backend_that_says_it_cannot_list():
    from credpath.errors import ReadOnlyBackend

    class NoListing(MemoryBackend):
        def list_connections(self):
            raise ReadOnlyBackend(f"{self.label} cannot list connections")

    sp = path(NoListing({"x": URI_A}), MemoryBackend({"a": URI_A}))
    found, cannot = sp.list_ids("connection")
    assert (found, cannot) == ({"a": ["b1"]}, ["b0"])
