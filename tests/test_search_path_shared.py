"""The search path's use of the shared cache tier (credpath.shared_cache): fast unit tests, no servers.

Two SearchPaths over one FileStore file stand in for two processes (each its own tier object, so its own
lock owner); their backends are dict-backed (tests/memory_backend.py) and count reads. Every clock the
tiers read (search_path, cache, shared_cache) is one fake :class:`Clock` whose wall time is far from its
monotonic time, so a wrong conversion between the two shows.
"""

from __future__ import annotations

import logging
import time as real_time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath import cache as cache_mod
from credpath import search_path as sp_mod
from credpath import shared_cache as sc
from credpath.cache import CacheSettings
from credpath.errors import BackendUnavailable, NotFound
from credpath.masking import Masker
from credpath.search_path import SearchPath
from credpath.shared_cache import FileStore, SharedEntry, SharedTier, scope_of
from tests.memory_backend import MemoryBackend, UncachedMemoryBackend, Unreachable

KEY = Fernet.generate_key()
VALUE = "s3cr3t-shared-1"
WALL_OFFSET = 1_700_000_000.0
TTL, STALE = 300.0, 600.0


class Clock:
    """Wall and monotonic clocks that move only when told to; ``sleep`` moves them and runs a hook once
    (what another process does while this one waits)."""

    def __init__(self) -> None:
        self.mono = 50_000.0
        self.on_sleep: Any = None

    def time(self) -> float:
        return self.mono + WALL_OFFSET

    def monotonic(self) -> float:
        return self.mono

    def perf_counter(self) -> float:
        return real_time.perf_counter()

    def sleep(self, seconds: float) -> None:
        self.mono += seconds
        hook, self.on_sleep = self.on_sleep, None
        if hook is not None:
            hook()

    def advance(self, seconds: float) -> None:
        self.mono += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    for module in (sp_mod, cache_mod, sc):
        monkeypatch.setattr(module, "time", fake)
    monkeypatch.setattr(sp_mod, "_monotonic", fake.monotonic)
    return fake


def settings(**kw: Any) -> CacheSettings:
    return CacheSettings(ttl=TTL, miss_ttl=60.0, jitter=0.0, stale_if_error=STALE, **kw)


class Node:
    """One "process": a SearchPath with backend "m" (and optional others) over the shared file."""

    def __init__(self, db: Path, *, before: Any = None, after: Any = None, key: bytes = KEY) -> None:
        self.backend = MemoryBackend(variables={"k": VALUE, "api_password": VALUE})
        items: list[tuple[str, Any]] = []
        if before is not None:
            items.append(("u", before))
        items.append(("m", self.backend))
        if after is not None:
            items.append(("u", after))
        self.tier = SharedTier(FileStore(db), [key], scope_of(items), lease=5.0)
        self.path = SearchPath(items, cache=settings(), shared=self.tier, masker=Masker())

    def stats(self) -> dict[str, int]:
        """The tier's counters, every node's (one file), after publishing this node's."""
        self.tier.flush()
        return self.tier.stats()

    @property
    def reads(self) -> int:
        return len(self.backend.calls)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


CKEY = ("variable", "k", None)


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
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
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


def test_shared_entries_expire_at_the_writers_times(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clock.advance(TTL - 1)
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 0
    clock.advance(2)  # past the writer's TTL: both b's adopted copy and the shared entry are stale
    assert b.path.get_variable("k") == VALUE
    assert b.reads == 1


def test_stale_if_error_across_processes(db: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clock.advance(TTL + 100)  # expired, in the stale window
    b.backend.fail_with = Unreachable("down")
    with caplog.at_level(logging.WARNING, logger="credpath"):
        assert b.path.get_variable("k") == VALUE
    assert "serving its last good value, 400 s old" in caplog.text
    assert b.stats().get("stale_served") == 1


def test_an_adopted_entry_is_kept_only_to_the_writers_keep_until(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clock.advance(10)
    b.path.get_variable("k")  # adopted from the shared tier
    clock.advance(TTL + STALE)  # past keep_until: nothing to serve on an error
    b.backend.fail_with = Unreachable("down")
    with pytest.raises(BackendUnavailable):
        b.path.get_variable("k")


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
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
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


def test_a_write_invalidates_the_shared_entry(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    b.path.set_variable("k", "s3cr3t-new")
    assert a.tier.get(CKEY) is None
    c = Node(db)
    c.backend.variables["k"] = "s3cr3t-new"
    assert c.path.get_variable("k") == "s3cr3t-new"
    assert c.reads == 1


@pytest.mark.parametrize("other_team", [None, "k"])  # "k": a team named like the key
def test_a_write_invalidates_a_team_entry_adopted_from_the_shared_tier(
    db: Path, clock: Clock, other_team: str | None
) -> None:
    a, b = Node(db), Node(db)
    b.path.get_variable("other", None, team_name=other_team)
    a.path.get_variable("k", team_name="t1")
    assert b.path.get_variable("k", team_name="t1") == VALUE
    assert b.backend.calls == [("get_variable", "other")]  # "k" came from the shared tier
    b.path.set_variable("k", "s3cr3t-new")
    assert b.path.get_variable("k", team_name="t1") == "s3cr3t-new"


@pytest.mark.parametrize("other_team", [None, "k"])
def test_a_write_invalidates_a_team_entry_this_process_read(
    db: Path, clock: Clock, other_team: str | None
) -> None:
    a = Node(db)
    a.path.get_variable("other", None, team_name=other_team)
    a.path.get_variable("k", team_name="t1")
    a.path.set_variable("k", "s3cr3t-new")
    assert a.path.get_variable("k", team_name="t1") == "s3cr3t-new"


class StateBackend(MemoryBackend):
    def use_shared_state(self, state: Any) -> None:
        self.state = state


def test_backends_get_a_shared_state_view(db: Path, clock: Clock) -> None:
    one, two = StateBackend(), StateBackend()
    SearchPath([("s", one)], cache=settings(), shared=SharedTier(FileStore(db), [KEY]))
    SearchPath([("s", two)], cache=settings(), shared=SharedTier(FileStore(db), [KEY]))
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
    path = SearchPath(items, cache=settings(), shared=open_shared_tier(tier, items))
    assert path.get_variable("k") == VALUE
    reader = SharedTier(FileStore(db), [KEY], scope_of(items))
    entry = reader.get(CKEY)
    assert entry is not None and entry.value == VALUE


def test_settings_without_keys_resolve_the_node_key(
    db: Path, clock: Clock, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    one, two = MemoryBackend(variables={"k": VALUE}), MemoryBackend(variables={"k": VALUE})
    a = SearchPath([("m", one)], cache=settings(shared=f"file:{db}"))
    b = SearchPath([("m", two)], cache=settings(shared=f"file:{db}"))
    assert a.get_variable("k") == VALUE and b.get_variable("k") == VALUE
    assert len(one.calls) == 1 and two.calls == []


def test_metrics_count_a_shared_hit_under_tier_shared(db: Path, clock: Clock) -> None:
    from credpath import metrics

    a, b = Node(db), Node(db)
    metrics.reset()
    metrics.enable()
    try:
        metrics.instrument(a.path)
        metrics.instrument(b.path)
        a.path.get_variable("k")
        b.path.get_variable("k")
        lookups = metrics.snapshot()["lookups"]
    finally:
        metrics.disable()
        metrics.reset()
    assert lookups[("variable", "store", "found")] == 1
    assert lookups[("variable", "shared", "found")] == 1
