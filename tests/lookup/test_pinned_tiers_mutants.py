"""Pinned reads and the cache tiers (credpath._lookup.pinned): a cached version never waits for a read in
flight, a read that finds the version cached by the time its turn comes asks no store, and a version taken
from the shared tier is traced, masked, expires with the shared entry (and leaves the bounded process tier
once its keep window ends), and is adopted only from a backend this process has.
A dict store keeps the versions; the shared tier is a FileStore on a temp file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath._cache import CacheSettings
from credpath._lookup import pinned, trace
from credpath._masking import Masker
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedTier
from credpath.errors import BackendUnavailable
from tests.lookup import test_tiers_flight_mutants as tiers_flight
from tests.lookup.helpers import Clock
from tests.lookup.test_pinning import OLD_PW, VersionedMemory, _path, _store
from tests.memory_backend import Unreachable

SETTINGS = CacheSettings(ttl=300.0, jitter=0.0, stale_if_error=600.0)


class FirstReadGated(tiers_flight.FirstReadGated, VersionedMemory):
    """Its first variable read waits for ``gate``; it keeps versions."""


def test_a_cached_version_does_not_wait_for_a_read_of_it_in_flight() -> None:
    store = FirstReadGated()
    store.keep("variable", "api_token", "tok-s3cr3t-1")
    sp = _path(("v", store))
    first: list[Any] = []
    reader = threading.Thread(target=lambda: first.append(sp.get_variable("api_token", version="1")))
    reader.start()
    try:
        assert store.entered.wait(10)  # the first read is in flight, held at the gate
        sp.explain("variable", "api_token", version="1")  # explain's own read fills the process tier
        second: list[Any] = []
        hit = threading.Thread(target=lambda: second.append(sp.get_variable("api_token", version="1")))
        hit.start()
        hit.join(5)
        assert not hit.is_alive(), "a cached version waited for the read in flight"
        assert second == ["tok-s3cr3t-1"]
    finally:
        store.gate.set()
        reader.join(10)
    assert first == ["tok-s3cr3t-1"]


class HookClock(Clock):
    """A Clock whose next ``monotonic()`` reading first runs ``on_read`` (once): what another thread does
    between a cache look-up and the single-flight that follows it."""

    def __init__(self) -> None:
        super().__init__()
        self.on_read: Any = None

    def monotonic(self) -> float:
        hook, self.on_read = self.on_read, None
        if hook is not None:
            hook()
        return super().monotonic()


@pytest.fixture
def hook_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[HookClock]:
    from credpath import _cache as cache_mod
    from credpath import _search_path as sp_mod
    from credpath import _shared_cache as sc
    from credpath._lookup import state as lookup_state

    fake = HookClock()
    for module in (lookup_state, cache_mod, sc, pinned):
        monkeypatch.setattr(module, "time", fake)
    monkeypatch.setattr(sp_mod, "_monotonic", fake.monotonic)
    yield fake


def test_a_version_cached_while_a_read_waited_for_its_turn_is_served_without_a_store_call(
    hook_clock: HookClock, events: list[Any]
) -> None:
    store = _store()
    sp = _path(("v", store), cache=SETTINGS)
    assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    hook_clock.advance(301.0)  # expired (still kept for stale-if-error)
    # Another caller reads the version again between this read's cache look-up and its turn.
    hook_clock.on_read = lambda: sp.get_variable("api_token", version="1")
    events.clear()
    assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert len(store.calls) == 2  # the first read and the other caller's: none for this one
    served = [e for e in events if isinstance(e, trace.Served)]
    assert served == [trace.Served("store", "v"), trace.Served("process", "v")]


@pytest.fixture
def tiers(tmp_path: Path) -> Iterator[Any]:
    key = Fernet.generate_key()
    stores: list[FileStore] = []

    def make() -> SharedTier:
        stores.append(FileStore(tmp_path / "shared.db"))
        return SharedTier(stores[-1], [key], "scope")

    yield make
    for store in stores:
        store.close()


def test_a_version_from_the_shared_tier_is_traced_and_masked(tiers: Any, events: list[Any]) -> None:
    a = SearchPath([("v", _store())], cache=SETTINGS, shared=tiers())
    b_store, masker = _store(), Masker()
    b = SearchPath([("v", b_store)], cache=SETTINGS, shared=tiers(), masker=masker)
    assert a.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    events.clear()
    assert b.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert b_store.calls == []
    assert [e for e in events if isinstance(e, trace.Served)] == [trace.Served("shared", "v")]
    assert "tok-s3cr3t-1" not in masker.redact("token tok-s3cr3t-1")
    resolution = b.lookup("variable", "api_token", version="1")
    assert resolution is not None and resolution.version == "1" and resolution.source == "v"


def test_a_shared_version_from_a_backend_this_process_lacks_is_read_from_its_own(tiers: Any) -> None:
    a = SearchPath([("v", _store())], cache=SETTINGS, shared=tiers())
    own = VersionedMemory()
    own.keep("variable", "api_token", "tok-s3cr3t-own")
    b = SearchPath([("w", own)], cache=SETTINGS, shared=tiers())
    assert a.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    resolution = b.lookup("variable", "api_token", version="1")
    assert resolution is not None and (resolution.value, resolution.source) == ("tok-s3cr3t-own", "w")
    assert len(own.calls) == 1


def test_an_adopted_version_expires_with_its_shared_entry(
    tiers: Any, hook_clock: HookClock, events: list[Any]
) -> None:
    a = SearchPath([("v", _store())], cache=SETTINGS, shared=tiers())
    b_store = _store()
    b = SearchPath([("v", b_store)], cache=SETTINGS, shared=tiers())
    assert a.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    hook_clock.advance(100.0)
    assert b.get_variable("api_token", version="1") == "tok-s3cr3t-1"  # adopted: fresh 200 s more
    assert b_store.calls == []
    hook_clock.advance(199.0)
    events.clear()
    assert b.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert [e for e in events if isinstance(e, trace.Served)] == [trace.Served("process", "v")]
    hook_clock.advance(2.0)  # past the shared entry's freshness: neither tier serves it
    events.clear()
    assert b.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert len(b_store.calls) == 1
    assert [e for e in events if isinstance(e, trace.Served)] == [trace.Served("store", "v")]


def test_an_adopted_version_past_its_keep_window_leaves_the_process_tier(
    tiers: Any, hook_clock: HookClock, events: list[Any]
) -> None:
    two = CacheSettings(ttl=300.0, jitter=0.0, stale_if_error=0.0, max_size=2)
    a = SearchPath([("v", _store())], cache=two, shared=tiers())
    b_store = _store()
    b = SearchPath([("v", b_store)], cache=two, shared=tiers())
    assert a.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    hook_clock.advance(100.0)
    assert b.get_variable("api_token", version="2") == "tok-s3cr3t-2"  # b's own read, fresh until 400
    assert b.get_variable("api_token", version="1") == "tok-s3cr3t-1"  # adopted, kept until 300
    hook_clock.advance(201.0)
    b_store.fail_with = Unreachable("store down")
    with pytest.raises(BackendUnavailable):  # version 1: gone from both tiers, and the store is down
        b.get_variable("api_token", version="1")
    b_store.fail_with = None
    assert b.get_connection("my_db", version="1").password == OLD_PW  # the second of two places
    events.clear()
    assert b.get_variable("api_token", version="2") == "tok-s3cr3t-2"
    assert [e for e in events if isinstance(e, trace.Served)] == [trace.Served("process", "v")]
