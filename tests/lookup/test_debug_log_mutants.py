"""The lookup's DEBUG lines (what ``credpath -v`` and an Airflow task log at DEBUG show when someone asks
"where did this value come from?"): one line per answer, naming the id and the backend, never the value."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from credpath._cache import CacheSettings
from credpath._resilience import BreakerSettings
from tests.lookup.helpers import Clock, Node, VersionedBackend, path, quiet_path
from tests.memory_backend import MemoryBackend, Unreachable

LOGGER = "credpath.search_path"


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.DEBUG]


def test_a_hit_and_a_miss_each_log_one_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    search_path = quiet_path(MemoryBackend(variables={"k": "s3cr3t-k"}))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        search_path.get_variable("k")
        search_path.get_variable("nope", default=None)
    assert lines(caplog) == [
        "resolved variable 'k' from backend 'b0'",
        "variable 'nope' not found in the search path",
    ]
    assert "s3cr3t" not in caplog.text


def test_a_shared_hit_logs_its_backend(db: Path, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        b.path.get_variable("k")
        b.path.get_variable("k")  # then the process tier: no line
    assert lines(caplog) == ["variable 'k' from the shared cache (backend 'm')"]


def test_the_version_check_logs_its_answer(caplog: pytest.LogCaptureFixture) -> None:
    backend = VersionedBackend()
    cache = CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=600.0)
    search_path = path(backend, cache=cache, breaker=BreakerSettings(failures=10))
    search_path.get_variable("k")
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        search_path.get_variable("k")
        backend.check_fails = True
        search_path.get_variable("k")
    assert lines(caplog) == [
        "b0: variable 'k' unchanged at version v1: not read again",
        "resolved variable 'k' from backend 'b0'",
        "b0: version check of variable 'k' failed (Unreachable): reading it",
        "resolved variable 'k' from backend 'b0'",
    ]
    assert backend.reads == 2 and not isinstance(backend.fail_with, Unreachable)
