"""Tier details no other unit test pinned: a shared hit is no shared miss, and a refresh inside its
interval is a process-tier answer (counted, and traced with its backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from credpath._lookup.trace import Served
from tests.lookup.helpers import VALUE, Clock, Node, quiet_path
from tests.memory_backend import MemoryBackend


def test_a_fresh_shared_entry_is_served_without_counting_a_shared_miss(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    assert a.path.get_variable("k") == VALUE
    assert b.path.get_variable("k") == VALUE
    stats = b.stats()
    assert stats.get("shared_hits") == 1
    assert stats.get("shared_misses") == 1  # a's, not b's


def test_a_second_refresh_within_the_interval_is_a_process_hit(db: Path, clock: Clock) -> None:
    node = Node(db)
    node.path.refresh("variable", "k")
    assert node.stats().get("process_hits") in (None, 0)
    node.path.refresh("variable", "k")  # within the interval: the first refresh's answer
    assert node.reads == 1
    assert node.stats().get("process_hits") == 1


def test_a_refresh_answered_by_the_process_tier_is_traced_with_its_backend(events: list[Any]) -> None:
    backend = MemoryBackend(variables={"k": "s3cr3t-v"})
    path = quiet_path(backend)
    assert path.refresh("variable", "k") is not None
    events.clear()
    assert path.refresh("variable", "k") is not None
    assert len(backend.calls) == 1
    assert [(e.tier, e.source) for e in events if isinstance(e, Served)] == [("process", "b0")]
