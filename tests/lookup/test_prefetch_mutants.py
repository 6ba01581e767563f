"""Prefetch details no other unit test pinned: the concurrency bounds, where the reads run, the deadline
(no read starts past it, a hanging read does not hold the caller), per-id parse failures reported, and ids
taken from the shared tier kept in the process tier."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest

from credpath._lookup.prefetch import check_concurrency
from credpath.errors import ConfigError
from tests.lookup.helpers import (
    CKEY,
    URI_A,
    URI_B,
    BadValueBatch,
    BadValuePrefix,
    Clock,
    Node,
    quiet_path,
)
from tests.memory_backend import MemoryBackend


def test_the_concurrency_bounds_are_1_and_64() -> None:
    assert check_concurrency(1) == 1
    assert check_concurrency(64) == 64
    for bad in (0, 65, True, 2.0):
        with pytest.raises(ConfigError, match="concurrency"):
            check_concurrency(bad)  # type: ignore[arg-type]


class Recording(MemoryBackend):
    """Records the thread of each read and the most reads in flight at once; each read takes ``pause``."""

    def __init__(self, *args: object, pause: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.pause = pause
        self.threads: list[int] = []
        self.lock = threading.Lock()
        self.inside = 0
        self.most = 0

    def get_variable(self, key: str) -> str | None:
        with self.lock:
            self.threads.append(threading.get_ident())
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(self.pause)
            return super().get_variable(key)
        finally:
            with self.lock:
                self.inside -= 1


def test_one_read_at_a_time_without_a_deadline_runs_on_the_callers_thread() -> None:
    backend = Recording(variables={"a": "s3cr3t-a", "b": "s3cr3t-b"})
    quiet_path(backend).prefetch(variables=["a", "b"], concurrency=1)
    assert backend.threads == [threading.get_ident()] * 2


def test_concurrency_1_with_a_deadline_still_reads_one_at_a_time() -> None:
    backend = Recording(variables={k: "s3cr3t" for k in "abcd"}, pause=0.05)
    report = quiet_path(backend).prefetch(variables=list("abcd"), concurrency=1, timeout=30)
    assert report["variable"].hits == 4
    assert backend.most == 1


class Hanging(MemoryBackend):
    def __init__(self) -> None:
        super().__init__(variables={"slow": "s3cr3t-s"})
        self.gate = threading.Event()

    def get_variable(self, key: str) -> str | None:
        self.calls.append(("get_variable", key))
        self.gate.wait(10)
        return self.variables.get(key)


def test_a_hanging_read_does_not_hold_the_caller_past_the_deadline() -> None:
    backend = Hanging()
    opener = threading.Timer(5.0, backend.gate.set)
    opener.start()
    try:
        started = time.monotonic()
        report = quiet_path(backend).prefetch(variables=["slow"], concurrency=2, timeout=0.3)
        elapsed = time.monotonic() - started
    finally:
        backend.gate.set()
        opener.cancel()
    assert elapsed < 3.0
    assert report["variable"].errors == 1


def test_no_read_starts_past_the_deadline() -> None:
    backend = MemoryBackend(variables={k: "s3cr3t" for k in "abcdefgh"})
    report = quiet_path(backend).prefetch(variables=list("abcdefgh"), concurrency=8, timeout=1e-9)
    assert backend.calls == []
    assert report["variable"].errors == 8


def test_a_bad_value_in_a_batch_is_logged_naming_the_id(caplog: pytest.LogCaptureFixture) -> None:
    sp = quiet_path(BadValueBatch({"bad": URI_A, "good": URI_B}))
    with caplog.at_level(logging.WARNING, logger="credpath.search_path"):
        sp.prefetch(connections=["bad", "good"])
    assert any("'bad'" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_bad_value_in_a_prefix_read_is_logged_naming_the_id(caplog: pytest.LogCaptureFixture) -> None:
    sp = quiet_path(BadValuePrefix({"bad": URI_A, "good": URI_B}))
    with caplog.at_level(logging.WARNING, logger="credpath.search_path"):
        sp.prefetch(prefix=True)
    assert any("'bad'" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_ids_the_shared_tier_has_are_kept_in_the_process_tier(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    report = b.path.prefetch(variables=["k"])["variable"]
    assert b.reads == 0 and report.requested == 1
    assert b.path.cache.get(CKEY).value == a.path.cache.get(CKEY).value
