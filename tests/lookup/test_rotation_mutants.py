"""Unit tests of the epoch check and the forced refresh (tests/test_rotation.py runs them against real
stores and processes; these pin each branch without servers)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from credpath._lookup import rotation
from tests.lookup.helpers import Clock, Node, quiet_path
from tests.memory_backend import MemoryBackend


class Tier:
    def __init__(self) -> None:
        self.token: str | None = None
        self.healthy = True

    def epoch(self) -> str | None:
        return self.token


class Cache:
    def __init__(self) -> None:
        self.clears = 0

    def clear(self) -> None:
        self.clears += 1


def state(shared: Any) -> Any:
    return SimpleNamespace(shared=shared, cache=Cache(), _epoch_next=0.0, _epoch_seen=None)


def test_without_a_shared_tier_the_epoch_is_never_looked_at_again() -> None:
    s = state(None)
    rotation.check_epoch(s, 100.0)
    assert s._epoch_next == math.inf and s.cache.clears == 0


def test_the_epoch_is_looked_at_again_after_the_interval_and_drops_the_tier_only_when_it_moved() -> None:
    tier = Tier()
    s = state(tier)
    tier.token = "a1"
    rotation.check_epoch(s, 100.0)
    assert s._epoch_next == pytest.approx(100.9)
    assert (s._epoch_seen, s.cache.clears) == ("a1", 0)  # the first look only learns the token
    rotation.check_epoch(s, 101.0)
    assert s.cache.clears == 0
    tier.token = "b2"
    rotation.check_epoch(s, 102.0)
    assert (s._epoch_seen, s.cache.clears) == ("b2", 1)


def test_a_record_that_does_not_verify_is_ignored() -> None:
    tier = Tier()
    s = state(tier)
    s._epoch_seen = "a1"
    rotation.check_epoch(s, 100.0)
    assert (s._epoch_seen, s.cache.clears) == ("a1", 0)
    assert s._epoch_next == pytest.approx(100.9)


def test_a_failing_tier_drops_the_process_tier_once_and_backs_off() -> None:
    tier = Tier()
    tier.healthy = False
    s = state(tier)
    s._epoch_seen = "a1"
    rotation.check_epoch(s, 100.0)
    assert s._epoch_next == pytest.approx(101.0)
    assert (s._epoch_seen, s.cache.clears) == ("unknown", 1)
    rotation.check_epoch(s, 101.0)
    assert (s._epoch_seen, s.cache.clears) == ("unknown", 1)  # once per outage
    tier.healthy, tier.token = True, "a1"
    rotation.check_epoch(s, 102.0)
    assert (s._epoch_seen, s.cache.clears) == ("a1", 2)  # and again when it answers


@pytest.fixture
def clocked(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Clock:
    monkeypatch.setattr(rotation, "time", clock)
    return clock


def test_a_refresh_reads_the_store_at_most_once_per_interval(clocked: Clock) -> None:
    backend = MemoryBackend(variables={"k": "s3cr3t-1"})
    path = quiet_path(backend)
    assert path.get_variable("k") == "s3cr3t-1"
    backend.variables["k"] = "s3cr3t-2"
    resolution = path.refresh("variable", "k")
    assert resolution is not None and resolution.value == "s3cr3t-2"
    backend.variables["k"] = "s3cr3t-3"
    assert path.refresh("variable", "k").value == "s3cr3t-2"  # type: ignore[union-attr]
    assert len(backend.calls) == 2
    clocked.advance(1.0)
    assert path.refresh("variable", "k").value == "s3cr3t-3"  # type: ignore[union-attr]
    assert len(backend.calls) == 3


def test_the_refresh_memory_is_bounded(clocked: Clock) -> None:
    path = quiet_path(MemoryBackend(variables={"k": "s3cr3t"}))
    path._refreshed.update({("variable", f"x{i}", None): 0.0 for i in range(4096)})
    path.refresh("variable", "k")
    assert len(path._refreshed) == 4097
    path.refresh("variable", "j")
    assert len(path._refreshed) == 1


def test_another_process_read_a_moment_ago_is_the_refresh(db: Path, clocked: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    assert b.path.refresh("variable", "k") is not None
    assert b.reads == 0
    assert b.stats().get("process_hits") == 1  # taken into b's process tier


def test_an_older_shared_entry_is_no_refresh(db: Path, clocked: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clocked.advance(2.0)  # still fresh (TTL 300 s), but read before the refresh interval
    assert b.path.refresh("variable", "k") is not None
    assert b.reads == 1


def test_a_refresh_of_an_id_no_process_read_yet_reads_the_store(db: Path, clocked: Clock) -> None:
    node = Node(db)
    assert node.path.refresh("variable", "k") is not None
    assert node.reads == 1


def test_a_shared_entry_read_exactly_one_interval_ago_is_no_refresh(db: Path, clocked: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    clocked.advance(rotation.REFRESH_INTERVAL)
    assert b.path.refresh("variable", "k") is not None
    assert b.reads == 1


def test_a_tier_that_says_nothing_of_its_health_is_taken_as_healthy() -> None:
    class Quiet:
        def epoch(self) -> None:
            return None

    s = state(Quiet())
    s._epoch_seen = "a1"
    rotation.check_epoch(s, 100.0)
    assert (s._epoch_seen, s.cache.clears) == ("a1", 0)  # a record that does not verify: ignored


def test_a_moved_epoch_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    tier = Tier()
    s = state(tier)
    tier.token = "a1"
    rotation.check_epoch(s, 100.0)
    tier.token = "b2"
    with caplog.at_level(logging.DEBUG, logger="credpath.search_path"):
        rotation.check_epoch(s, 101.0)
    assert [r.getMessage() for r in caplog.records] == [
        "shared cache: an id was invalidated elsewhere; the process tier was dropped"
    ]
