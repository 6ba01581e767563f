"""What ``explain`` reports each tier holds (the store's version per tier), and a shared hit's counters
published without waiting for the process to flush them (no servers: the file tier on a fake clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from credpath._masking import Masker
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedTier, scope_of
from tests.lookup.helpers import KEY, TTL, Clock, VersionedBackend, quiet_path, shared_settings
from tests.memory_backend import MemoryBackend


def node(db: Path, backend: Any) -> tuple[SearchPath, SharedTier]:
    items = [("m", backend)]
    tier = SharedTier(FileStore(db), [KEY], scope_of(items), lease=5.0)
    return SearchPath(items, cache=shared_settings(), shared=tier, masker=Masker()), tier


def test_explain_reports_the_version_each_tier_holds(db: Path, clock: Clock) -> None:
    a, _ = node(db, VersionedBackend())
    b, _ = node(db, VersionedBackend())
    assert a.explain("variable", "k").held == {}  # nothing held yet
    assert a.get_variable("k") == "s3cr3t-v1"
    assert a.explain("variable", "k").held == {"process": "v1", "shared": "v1"}
    assert b.explain("variable", "k").held == {"shared": "v1"}  # another process: the shared tier only
    clock.advance(TTL + 1.0)  # expired everywhere (kept for stale-if-error, but not held fresh)
    assert b.explain("variable", "k").held == {}


def test_a_value_without_a_version_is_held_with_none(db: Path, clock: Clock) -> None:
    a, _ = node(db, MemoryBackend(variables={"k": "s3cr3t-plain"}))
    a.get_variable("k")
    assert a.explain("variable", "k").held == {"process": None, "shared": None}


def test_a_cached_miss_is_not_held(db: Path, clock: Clock) -> None:
    a, _ = node(db, MemoryBackend())
    b, _ = node(db, MemoryBackend())
    assert a.get_variable("nope", default=None) is None
    assert a.explain("variable", "nope").held == {}
    assert b.explain("variable", "nope").held == {}


def test_the_process_tier_alone_reports_its_version() -> None:
    search_path = quiet_path(VersionedBackend())
    search_path.get_variable("k")
    assert search_path.explain("variable", "k").held == {"process": "v1"}


def test_a_shared_hit_publishes_its_counters_without_a_flush(db: Path, clock: Clock) -> None:
    a, tier_a = node(db, MemoryBackend(variables={"k": "s3cr3t-x"}))
    b, _ = node(db, MemoryBackend(variables={"k": "s3cr3t-x"}))
    a.get_variable("k")
    tier_a.flush()
    assert b.get_variable("k") == "s3cr3t-x"  # a shared hit: b's counters go out soon, here at once
    assert tier_a.stats().get("shared_hits") == 1
