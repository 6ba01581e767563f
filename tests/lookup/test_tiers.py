"""The cache tiers: the process tier, the shared tier, never-cached backends, single-flight, stale values."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath._cache import CacheSettings
from credpath._lookup.tiers import lookup_once
from credpath._lookup.trace import LookupContext
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedEntry, SharedTier, scope_of
from credpath.errors import BackendUnavailable, ConfigError, NotFound
from credpath.model import Connection
from tests.lookup.helpers import (
    CKEY,
    KEY,
    STALE,
    TTL,
    URI_A,
    URI_B,
    VALUE,
    Clock,
    Node,
    StateBackend,
    denied_error,
    expired_cache,
    no_breaker,
    path,
    quiet_path,
    release_when_waiting,
    shared_settings,
    warmed_pair,
)
from tests.memory_backend import (
    AirflowStyleBackend,
    BatchMemoryBackend,
    MemoryBackend,
    UncachedMemoryBackend,
    Unreachable,
)


def test_result_behind_a_failed_backend_is_not_cached():
    broken = MemoryBackend({"db": URI_A})
    broken.fail_with = Unreachable("down")
    fallback = MemoryBackend({"db": URI_B})
    sp = path(broken, fallback)
    assert sp.get_connection("db").host == "db-b"
    broken.fail_with = None  # recovered: its value must win now
    assert sp.get_connection("db").host == "db-a"


def test_cache_hits_and_misses_avoid_backend_calls():
    backend = MemoryBackend({"db": URI_A})
    sp = path(backend)
    for _ in range(5):
        sp.get_connection("db")
        with pytest.raises(NotFound):
            sp.get_connection("nope")
    assert backend.calls.count(("get_conn_value", "db")) == 1
    assert backend.calls.count(("get_conn_value", "nope")) == 1


def test_cache_expiry_refetches():
    backend = MemoryBackend({"db": URI_A})
    sp = path(backend, cache=CacheSettings(ttl=0.5, miss_ttl=0.5, jitter=0.0))
    sp.get_connection("db")
    sp.get_connection("db")  # a hit before expiry: a TTL under a second still caches
    assert backend.calls.count(("get_conn_value", "db")) == 1
    time.sleep(0.6)
    sp.get_connection("db")
    assert backend.calls.count(("get_conn_value", "db")) == 2


def test_cache_off():
    backend = MemoryBackend({"db": URI_A})
    sp = path(backend, cache=False)
    sp.get_connection("db")
    sp.get_connection("db")
    assert backend.calls.count(("get_conn_value", "db")) == 2


def test_no_stale_value_on_access_denied_config_error_or_miss():
    from credpath.errors import AccessDenied

    vault = MemoryBackend({"db": URI_A})
    sp = SearchPath([("vault", vault)], cache=expired_cache())
    sp.get_connection("db")
    vault.fail_with = denied_error()
    with pytest.raises(AccessDenied):
        sp.get_connection("db")
    vault.fail_with = ConfigError("backend 'vault' (Memory): bad setting")
    with pytest.raises(ConfigError):
        sp.get_connection("db")
    vault.fail_with = None
    del vault.connections["db"]  # the store answers "gone": that is the truth, not an outage
    with pytest.raises(NotFound):
        sp.get_connection("db")


def test_stale_window_ends_and_zero_disables():
    from credpath.errors import BackendUnavailable

    vault = MemoryBackend({"db": URI_A})
    sp = SearchPath([("vault", vault)], cache=expired_cache(stale_if_error=0.0))
    sp.get_connection("db")
    vault.fail_with = Unreachable("down")
    with pytest.raises(BackendUnavailable):
        sp.get_connection("db")
    vault.fail_with = None
    sp = SearchPath([("vault", vault)], cache=expired_cache(stale_if_error=0.05))
    sp.get_connection("db")
    vault.fail_with = Unreachable("down")
    time.sleep(0.1)  # past the window (a lower bound: sleep never returns early)
    with pytest.raises(BackendUnavailable):
        sp.get_connection("db")


def test_stale_applies_under_on_error_fail_too():
    vault = MemoryBackend({"db": URI_A})
    sp = SearchPath([("vault", vault)], cache=expired_cache())
    sp.entries[0].on_error = "fail"
    sp.get_connection("db")
    vault.fail_with = Unreachable("down")
    assert sp.get_connection("db").host == "db-a"  # the backend's own last answer, not a fall-through


def test_32_concurrent_lookups_of_one_id_make_one_store_read():
    import threading

    from tests.memory_backend import GatedMemoryBackend

    store = GatedMemoryBackend({"db": URI_A})
    sp = SearchPath([("store", store)])
    hosts: list[str] = []
    threads = [threading.Thread(target=lambda: hosts.append(sp.get_connection("db").host)) for _ in range(32)]
    release_when_waiting(sp, store, threads, 31)  # the 31 others wait on the first one's read
    assert hosts == ["db-a"] * 32
    assert store.calls == [("get_conn_value", "db")]  # main: 32 reads


def test_concurrent_lookups_share_the_error_too():
    import threading

    from credpath.errors import BackendUnavailable
    from tests.memory_backend import GatedMemoryBackend

    store = GatedMemoryBackend({"db": URI_A})
    store.fail_with = Unreachable("down")
    sp = SearchPath([("store", store)])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sp.get_connection("db")
        except BackendUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(16)]
    release_when_waiting(sp, store, threads, 15)
    assert len(errors) == 16 and len(store.calls) == 1


def test_backends_that_say_so_are_never_served_from_the_cache():
    from tests.memory_backend import UncachedMemoryBackend

    env = UncachedMemoryBackend({"db": URI_A})
    store = MemoryBackend({"other": URI_B})
    sp = SearchPath([("env", env), ("store", store)])
    for _ in range(3):
        assert sp.get_connection("db").host == "db-a"
        with pytest.raises(NotFound):
            sp.get_connection("nope")
    assert env.calls.count(("get_conn_value", "db")) == 3  # main: 1 (cached 300 s)
    assert env.calls.count(("get_conn_value", "nope")) == 3  # asked live for a cached miss too (main: 60 s)
    env.connections["nope"] = URI_B  # "exported after start-up": seen at once
    assert sp.get_connection("nope").host == "db-b"
    sp.get_connection("other")
    sp.get_connection("other")
    assert store.calls.count(("get_conn_value", "other")) == 1  # the caching backend's hit is cached
    sp.prefetch(connections=["db"])
    assert ("connection", "db", None) not in sp.cache._data


def test_a_cached_answer_still_asks_the_never_cached_backends_ahead_of_it_live():
    from tests.memory_backend import UncachedMemoryBackend

    env = UncachedMemoryBackend({})
    store = MemoryBackend({"db": URI_A})
    sp = SearchPath([("env", env), ("store", store)])
    assert sp.get_connection("db").host == "db-a"
    with pytest.raises(NotFound):
        sp.get_connection("nope")
    env.connections["db"] = URI_B  # an AIRFLOW_CONN_DB exported after the store's answer was cached
    env.connections["nope"] = URI_B  # and one for an id whose miss was cached
    assert sp.get_connection("db").host == "db-b"
    assert sp.lookup("connection", "db").source == "env"
    assert sp.get_connection("nope").host == "db-b"
    del env.connections["db"], env.connections["nope"]
    assert sp.get_connection("db").host == "db-a"  # the cached answer again
    with pytest.raises(NotFound):
        sp.get_connection("nope")
    # The store was asked once for each id: the cache kept its answers, only env was asked live.
    assert store.calls == [("get_conn_value", "db"), ("get_conn_value", "nope")]


def test_team_name_is_forwarded_only_where_accepted_and_keys_the_cache():
    from tests.memory_backend import TeamMemoryBackend

    legacy = MemoryBackend({"legacy_db": URI_A})  # pre-3.2 signature: get_conn_value(conn_id)
    teamed = TeamMemoryBackend({"db": URI_A}, team_connections={("blue", "db"): URI_B})
    sp = SearchPath([("legacy", legacy), ("teamed", teamed)])
    assert sp.get_connection("db").host == "db-a"
    assert sp.get_connection("db", team_name="blue").host == "db-b"
    assert sp.get_connection("db", team_name="blue").host == "db-b"  # cached per team
    assert sp.get_connection("db").host == "db-a"
    assert teamed.calls == [("get_conn_value", "db", None), ("get_conn_value", "db", "blue")]
    assert sp.get_connection("legacy_db", team_name="blue").host == "db-a"  # answered globally
    assert legacy.calls[-1] == ("get_conn_value", "legacy_db")
    teamed.team_variables[("blue", "v")] = "blue-value"
    teamed.variables["v"] = "global-value"
    assert sp.get_variable("v", team_name="blue") == "blue-value"
    assert sp.get_variable("v") == "global-value"
    assert sp.explain("variable", "v", team_name="blue").source == "teamed"
    sp.prefetch(connections=["x"], team_name="blue")
    assert ("get_conn_value", "x", "blue") in teamed.calls
    # a write invalidates every team's copy
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"), to="legacy")
    assert ("connection", "db", "blue") not in sp.cache._data


def test_ids_behind_a_failed_batch_are_not_cached_and_errors_are_counted(caplog):
    broken = BatchMemoryBackend({"c1": URI_A, "c3": URI_A})
    broken.fail_with = Unreachable("down")
    fallback = BatchMemoryBackend({"c1": URI_B})
    sp = path(broken, fallback, breaker=no_breaker())
    report = sp.prefetch(connections=["c1", "c2", "c3", "c1"])["connection"]
    assert (report.requested, report.hits, report.misses, report.errors) == (3, 1, 0, 3)
    assert fallback.calls == [("get_conn_values", ("c1", "c2", "c3"))]
    assert len(sp.cache) == 0  # neither c1's fall-through value nor the misses behind the failure
    broken.fail_with = None  # recovered: its values win now
    assert sp.get_connection("c1").host == "db-a"
    assert sp.get_connection("c3").host == "db-a"
    assert "a batch read of 3 connection(s)" in caplog.text


def test_a_cached_answer_asks_every_live_backend_ahead_past_one_that_does_not_want_the_key():
    from tests.memory_backend import UncachedMemoryBackend

    picky = UncachedMemoryBackend(connections_lookup_pattern="^zz")
    live = UncachedMemoryBackend()
    cached = MemoryBackend({"db": URI_A})
    sp = path(picky, live, cached)
    assert sp.get_connection("db").host == "db-a"
    live.connections["db"] = URI_B  # exported later: shadows the cached answer
    assert sp.get_connection("db").host == "db-b"
    assert sp.lookup("connection", "db").source == "b1"


def test_a_miss_is_cached_with_the_miss_ttl_not_the_hit_ttl():
    backend = MemoryBackend()
    sp = path(backend, cache=CacheSettings(ttl=100.0, miss_ttl=0.0))
    for _ in range(2):
        with pytest.raises(NotFound):
            sp.get_connection("nope")
    assert backend.calls.count(("get_conn_value", "nope")) == 2
    assert len(sp.cache) == 0


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


def test_a_failing_live_backend_ahead_of_a_cached_answer_falls_through_not_raises():
    live = UncachedMemoryBackend()
    cached = MemoryBackend({"db": URI_B})
    sp = quiet_path(live, cached)
    assert sp.get_connection("db").host == "db-b"  # cached from b1
    live.fail_with = Unreachable("down")
    assert sp.get_connection("db").host == "db-b"  # the whole path is asked again; b0 skipped
    assert sp.explain("connection", "db").fell_through


def test_a_flight_that_finds_the_cache_filled_answers_from_it():
    # A flight that begins just after another one filled the cache answers from the cache.
    after = UncachedMemoryBackend({"db": URI_A})  # never cached, but AFTER the cached source
    first = MemoryBackend({"db": URI_B})
    sp = quiet_path(first, after)
    assert sp.get_connection("db").host == "db-b"
    after.calls.clear()
    first.calls.clear()
    resolution = lookup_once(sp, LookupContext("connection", "db"))
    assert (resolution.source, resolution.value.host) == ("b0", "db-b")
    assert after.calls == [] and first.calls == []


def test_a_flight_that_finds_a_cached_miss_still_asks_the_live_backends():
    live = UncachedMemoryBackend()
    sp = quiet_path(live, MemoryBackend(), cache=CacheSettings(ttl=100.0, miss_ttl=100.0))
    assert sp.lookup("connection", "db") is None
    live.connections["db"] = URI_A  # exported since
    resolution = lookup_once(sp, LookupContext("connection", "db"))
    assert (resolution.source, resolution.value.host) == ("b0", "db-a")
    sp_cached = quiet_path(MemoryBackend({"db": URI_A}))
    sp_cached.lookup("connection", "db")
    assert lookup_once(sp_cached, LookupContext("connection", "db")).source == "b0"


def test_a_cached_miss_is_no_stale_value_when_the_backend_fails():
    backend = MemoryBackend()
    sp = quiet_path(backend, cache=CacheSettings(ttl=100.0, miss_ttl=100.0, stale_if_error=3600.0))
    assert sp.lookup("connection", "nope") is None  # a cached miss
    backend.fail_with = Unreachable("down")
    explanation = sp.explain("connection", "nope")  # not from the cache: the store is asked
    assert explanation.unavailable and not explanation.stale
    assert explanation.failed == ["b0"]


def test_an_outage_after_recovery_warns_again(caplog):
    vault = MemoryBackend({"db": URI_A})
    sp = quiet_path(vault, cache=expired_cache())
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


def test_a_miss_is_not_found_through_the_shared_tier_either(shared_pair):
    one = shared_pair(MemoryBackend())
    with pytest.raises(NotFound):
        one.get_connection("nope")


def test_a_shared_hit_saves_the_other_process_a_store_read(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    assert a.path.get_variable("k") == VALUE
    assert a.reads == 1
    # The holder published its counters with its store read (no explicit flush).
    stats = a.tier.stats()
    assert stats.get("store_reads") == 1 and stats.get("shared_misses") == 1
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 0
    stats = b.stats()
    assert stats.get("shared_hits") == 1 and stats.get("store_reads") == 1
    # Adopted into b's process tier: the next read touches neither tier.
    assert b.path.get_variable("k") == VALUE
    stats = b.stats()
    assert stats.get("shared_hits") == 1 and stats.get("process_hits") == 1
    # The holder let the key's lock go: another process can take it.
    assert Node(db).tier.acquire(CKEY) is True


def test_a_shared_hit_is_logged_with_its_backend(
    db: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    _a, b = warmed_pair(db)
    with caplog.at_level(logging.DEBUG, logger="credpath"):
        b.path.get_variable("k")
    assert "variable 'k' from the shared cache (backend 'm')" in caplog.text


def test_a_shared_miss_is_served_as_a_miss(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    assert a.path.get_variable("nope", None) is None
    assert b.path.get_variable("nope", "dflt") == "dflt"
    assert b.reads == 0
    with pytest.raises(NotFound):
        b.path.get_variable("nope")
    assert b.reads == 0


def test_stale_if_error_across_processes(db: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clock.advance(TTL + 100)  # expired, in the stale window
    b.backend.fail_with = Unreachable("down")
    with caplog.at_level(logging.WARNING, logger="credpath"):
        assert b.path.get_variable("k") == VALUE
    assert "serving its last good value, 400 s old" in caplog.text
    assert b.stats().get("stale_served") == 1


def test_adopted_sensitive_values_are_masked(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("api_password")
    b.path.get_variable("api_password")
    assert b.reads == 0
    assert VALUE not in b.path.masker.redact(f"x {VALUE} y")


def test_adopted_connections_mask_their_password(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    for n in (a, b):
        n.backend.connections["db"] = f"postgres://u:{VALUE}@h:5432/d"
    assert a.path.get_connection("db").password == VALUE
    assert b.path.get_connection("db").password == VALUE
    assert b.reads == 0
    assert VALUE not in b.path.masker.redact(f"x {VALUE} y")


def test_a_never_cached_backend_ahead_still_wins_over_a_shared_hit(db: Path, clock: Clock) -> None:
    a = Node(db, before=UncachedMemoryBackend())
    live = UncachedMemoryBackend()
    b = Node(db, before=live)
    a.path.get_variable("k")
    live.variables["k"] = "s3cr3t-from-env"
    assert b.path.get_variable("k") == "s3cr3t-from-env"
    assert b.reads == 0


def test_a_never_cached_backend_behind_is_not_asked_after_a_shared_hit(db: Path, clock: Clock) -> None:
    a = Node(db, after=UncachedMemoryBackend())
    live = UncachedMemoryBackend()
    b = Node(db, after=live)
    a.path.get_variable("k")
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 0 and live.calls == []


def test_a_shared_entry_from_a_backend_this_path_lacks_is_not_served(db: Path, clock: Clock) -> None:
    b = Node(db)
    now = clock.time()
    b.tier.put(CKEY, SharedEntry("variable", "s3cr3t-other", "elsewhere", False, now, now + 60, now + 60))
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 1


def test_a_waiter_gets_the_lock_holders_entry(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    assert a.tier.acquire(CKEY) is True  # a is reading the store

    def a_finishes() -> None:
        a.tier.release(CKEY)
        a.path.get_variable("k")

    clock.on_sleep = a_finishes
    assert b.path.get_variable("k") == VALUE
    assert a.reads == 1 and b.reads == 0
    assert b.stats().get("lock_waits") == 1


def test_a_waiter_takes_over_when_the_holder_gives_up(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    assert a.tier.acquire(CKEY) is True
    clock.on_sleep = lambda: a.tier.release(CKEY)  # the holder's read failed: no entry
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 1
    assert b.stats().get("lock_takeovers") == 1
    assert Node(db).tier.acquire(CKEY) is True  # b released after its read


def test_an_entry_written_before_the_lock_was_taken_is_served(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    acquire = b.tier.acquire

    def late_acquire(ckey: Any) -> Any:
        a.path.get_variable("k")  # a wrote and let go between b's look and b's lock
        return acquire(ckey)

    b.tier.acquire = late_acquire  # type: ignore[method-assign]
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 0 and a.reads == 1
    assert Node(db).tier.acquire(CKEY) is True


def test_an_undecryptable_entry_is_a_miss_warned_once(
    db: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = warmed_pair(db)
    a.path.get_variable("api_password")
    other = Fernet(Fernet.generate_key())
    for key in ("k", "api_password"):  # altered, or written with another key
        name = a.tier.name(("variable", key, None))
        a.tier.store.put(name, other.encrypt(b"{}"), clock.time() + 60)
    with caplog.at_level(logging.WARNING, logger="credpath"):
        assert b.path.get_variable("k") == VALUE
        assert b.path.get_variable("api_password") == VALUE
    assert b.reads == 2
    assert caplog.text.count("did not decrypt") == 1
    assert b.stats().get("undecryptable", 0) >= 2  # counted, though warned once


def test_backends_get_a_shared_state_view(db: Path, clock: Clock) -> None:
    one, two = StateBackend(), StateBackend()
    SearchPath([("s", one)], cache=shared_settings(), shared=SharedTier(FileStore(db), [KEY]))
    SearchPath([("s", two)], cache=shared_settings(), shared=SharedTier(FileStore(db), [KEY]))
    one.state.put("kv_version", 2, ttl=60)
    assert two.state.get("kv_version") == 2


def test_settings_build_the_tier_with_the_given_key(
    db: Path, clock: Clock, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    backend = MemoryBackend(variables={"k": VALUE})
    items = [("m", backend)]
    from credpath._settings import SharedTierSettings, open_shared_tier

    tier = SharedTierSettings(url=f"file:{db}", keys=(KEY,))
    path = SearchPath(items, cache=shared_settings(), shared=open_shared_tier(tier, items))
    assert path.get_variable("k") == VALUE
    reader = SharedTier(FileStore(db), [KEY], scope_of(items))
    entry = reader.get(CKEY)
    assert entry is not None and entry.value == VALUE


def test_settings_without_keys_resolve_the_node_key(
    db: Path, clock: Clock, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    one, two = MemoryBackend(variables={"k": VALUE}), MemoryBackend(variables={"k": VALUE})
    a = SearchPath([("m", one)], cache=shared_settings(shared=f"file:{db}"))
    b = SearchPath([("m", two)], cache=shared_settings(shared=f"file:{db}"))
    assert a.get_variable("k") == VALUE and b.get_variable("k") == VALUE
    assert len(one.calls) == 1 and two.calls == []


def test_shared_entries_expire_at_the_writers_times(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clock.advance(TTL - 1)
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 0
    clock.advance(2)  # past the writer's TTL: both b's adopted copy and the shared entry are stale
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 1


def test_an_adopted_entry_is_kept_only_to_the_writers_keep_until(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clock.advance(10)
    b.path.get_variable("k")  # adopted from the shared tier
    clock.advance(TTL + STALE)  # past keep_until: nothing to serve on an error
    b.backend.fail_with = Unreachable("down")
    with pytest.raises(BackendUnavailable):
        b.path.get_variable("k")
