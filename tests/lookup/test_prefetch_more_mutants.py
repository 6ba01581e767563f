"""More prefetch details (no servers): the reads really run ``concurrency`` at once (8 by default), no
prefetch thread outlives the call, prefetched secrets are masked, a shared-tier answer is counted, and the
shadow check asks an earlier backend only when it must."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from credpath._masking import Masker
from tests.lookup.helpers import Clock, Node, quiet_path
from tests.memory_backend import BatchMemoryBackend, MemoryBackend, PrefixMemoryBackend


class Overlapping(MemoryBackend):
    """Counts the reads in flight at once; each read waits for ``together`` reads to be in flight."""

    def __init__(self, ids: list[str], together: int) -> None:
        super().__init__(variables={i: f"s3cr3t-{i}" for i in ids})
        self.barrier = threading.Barrier(together, timeout=5)
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def get_variable(self, key: str) -> str | None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            self.barrier.wait()
            time.sleep(0.2)
            return super().get_variable(key)
        finally:
            with self.lock:
                self.now -= 1


def test_the_default_is_eight_reads_at_once() -> None:
    ids = [f"v{i}" for i in range(16)]
    backend = Overlapping(ids, together=8)
    report = quiet_path(backend).prefetch(variables=ids)["variable"]
    assert (report.hits, report.errors) == (16, 0)
    assert backend.peak == 8


def test_two_workers_read_two_at_once() -> None:
    backend = Overlapping(["a", "b"], together=2)
    report = quiet_path(backend).prefetch(variables=["a", "b"], concurrency=2)["variable"]
    assert (report.hits, report.errors) == (2, 0)


def test_no_prefetch_thread_outlives_the_call() -> None:
    ids = [f"v{i}" for i in range(4)]
    quiet_path(MemoryBackend(variables={i: "s3cr3t" for i in ids})).prefetch(variables=ids, concurrency=4)
    assert [t.name for t in threading.enumerate() if t.name.startswith("credpath-prefetch")] == []


def test_prefetched_secrets_are_masked() -> None:
    for backend in (
        BatchMemoryBackend(variables={"api_password": "s3cr3t-batch"}),
        MemoryBackend(variables={"api_password": "s3cr3t-one"}),
    ):
        masker = Masker()
        quiet_path(backend, masker=masker).prefetch(variables=["api_password"])
        secret = backend.variables["api_password"]
        assert secret not in masker.redact(f"x {secret} y")
    masker = Masker()
    prefix = PrefixMemoryBackend(variables={"api_password": "s3cr3t-prefix"})
    quiet_path(prefix, masker=masker).prefetch(prefix=True)
    assert "s3cr3t-prefix" not in masker.redact("x s3cr3t-prefix y")


def test_a_prefetch_answered_by_the_shared_tier_counts_shared_hits(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    b.path.prefetch(variables=["k"])
    assert b.stats().get("shared_hits") == 1


def test_an_earlier_backend_that_does_not_want_the_id_does_not_shadow_it() -> None:
    first = PrefixMemoryBackend(variables={"x": "s3cr3t-first"}, variables_lookup_pattern="^a")
    second = PrefixMemoryBackend(variables={"x": "s3cr3t-second"})
    search_path = quiet_path(first, second)
    report = search_path.prefetch(prefix=True)["variable"]
    assert report.hits == 1
    assert search_path.get_variable("x") == "s3cr3t-second"
    assert ("get_variable", "x") not in first.calls


def test_an_earlier_prefix_read_answers_the_shadow_check_without_a_read() -> None:
    first = PrefixMemoryBackend(variables={"y": "s3cr3t-y"})
    second = PrefixMemoryBackend(variables={"x": "s3cr3t-x"})
    quiet_path(first, second).prefetch(prefix=True)
    assert [c for c in first.calls if c[0] == "get_variable"] == []
