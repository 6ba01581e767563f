"""Search-path state details no other unit test pinned: a bare backend in the list, and the end of a
fall-through warning episode."""

from __future__ import annotations

import logging

import pytest

from credpath._search_path import SearchPath
from credpath.errors import BackendUnavailable
from tests.lookup.helpers import quiet_path
from tests.memory_backend import MemoryBackend, Unreachable


def test_a_bare_backend_is_named_after_itself_and_skips_errors() -> None:
    failing = MemoryBackend()
    failing.fail_with = Unreachable("store down")
    backend = MemoryBackend(variables={"k": "s3cr3t-v"})
    path = SearchPath([failing, ("named", backend)])
    assert path.get_variable("k") == "s3cr3t-v"  # on_error "skip": the failure falls through
    assert path.entries[0].name != "named" and path.entries[0].backend is failing
    assert path.entries[0].on_error == "skip"


def _fall_through_warnings(caplog: pytest.LogCaptureFixture) -> int:
    return sum("failed" in r.getMessage() and "served from" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("clean", ["hit", "miss"])
def test_a_clean_answer_ends_the_fall_through_episode(clean: str, caplog: pytest.LogCaptureFixture) -> None:
    flaky = MemoryBackend()
    backend = MemoryBackend(variables={"k": "s3cr3t-v"})
    path = quiet_path(flaky, backend)
    caplog.set_level(logging.WARNING, logger="credpath.search_path")
    flaky.fail_with = Unreachable("b0: store down")
    path.get_variable("k")
    path.get_variable("k")
    assert _fall_through_warnings(caplog) == 1  # once per episode
    flaky.fail_with = None
    if clean == "hit":
        path.get_variable("k")  # both answered: the episode is over
        path.cache.clear()
    else:
        backend.variables.pop("k")
        assert path.get_variable("k", default=None) is None  # a clean miss ends it too
        path.cache.clear()
        backend.variables["k"] = "s3cr3t-v"
    flaky.fail_with = Unreachable("b0: store down")
    try:
        path.get_variable("k")
    except BackendUnavailable:  # pragma: no cover - b1 has the id
        raise
    assert _fall_through_warnings(caplog) == 2
