"""What a facade method does beyond one call (credpath._lookup.operations), and freshness's "no version, no
check": the deployment epoch looked at on a lookup, the end of a failed lookup in its trace, explain's
counters on the shared tier, and prefetch's concurrency check. No servers: a shared file tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from credpath._cache import CacheSettings
from credpath._lookup import operations
from credpath._lookup import trace as lookup_trace
from credpath.errors import BackendUnavailable, ConfigError
from tests.lookup.helpers import Node, VersionedBackend, no_breaker, path
from tests.memory_backend import MemoryBackend, Unreachable


@pytest.mark.parametrize(
    ("due", "drops"),
    [
        pytest.param(100.0, True, id="due-now-drops-the-process-tier"),  # due exactly: the check is ">= due"
        pytest.param(100.5, False, id="not-yet-due-keeps-the-process-tier"),
    ],
)
def test_a_lookup_looks_at_the_deployment_epoch_once_it_is_due(
    db: Path, monkeypatch: pytest.MonkeyPatch, due: float, drops: bool
) -> None:
    a, b = Node(db), Node(db)
    monkeypatch.setattr(operations, "monotonic", lambda: 100.0)
    b.path._epoch_next = 0.0
    kept = b.backend.variables["k"]
    first = b.path.lookup("variable", "k")
    assert first is not None and first.value == kept  # learns the epoch's token
    b.backend.variables["k"] = "s3cr3t-rotated"
    a.path.invalidate_all()  # another process: the epoch moves
    b.path._epoch_next = due
    second = b.path.lookup("variable", "k")
    assert second is not None and second.value == ("s3cr3t-rotated" if drops else kept)


def test_a_failed_lookup_ends_its_trace_with_an_error() -> None:
    backend = MemoryBackend(variables={"k": "s3cr3t"})
    backend.fail_with = Unreachable("b0: cannot reach 127.0.0.1:1 (connection refused)")
    search_path = path(backend, breaker=no_breaker())
    ends: list[lookup_trace.Done] = []
    unsubscribe = lookup_trace.subscribe(
        lambda _context, event: ends.append(event) if isinstance(event, lookup_trace.Done) else None
    )
    try:
        with pytest.raises(BackendUnavailable):
            search_path.lookup("variable", "k")
    finally:
        unsubscribe()
    assert [e.result for e in ends] == ["error"]


def test_explain_counts_its_store_read_and_publishes_it_at_once(db: Path) -> None:
    a, b = Node(db), Node(db)
    before = b.tier.stats().get("store_reads", 0)
    assert a.path.explain("variable", "k").found
    # b reads the shared file without a's help: a published its counter when explain ended
    assert b.tier.stats().get("store_reads", 0) == before + 1


@pytest.mark.parametrize("concurrency", [0, 65, True, 2.0])
def test_prefetch_refuses_a_bad_concurrency_even_with_nothing_to_read(concurrency: Any) -> None:
    search_path = path(MemoryBackend(variables={"k": "s3cr3t"}))
    with pytest.raises(ConfigError, match="prefetch concurrency must be an integer 1-64"):
        search_path.prefetch(concurrency=concurrency)


def test_an_expired_value_without_a_version_is_read_again_not_checked() -> None:
    backend = VersionedBackend()
    backend.versions.clear()  # the store reports no version for this value
    search_path = path(backend, cache=CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=600.0))
    for _ in range(2):
        assert search_path.get_variable("k") == "s3cr3t-v1"
    assert backend.checks == [] and backend.reads == 2
