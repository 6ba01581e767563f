"""Error-policy details no other unit test pinned: a success ends the breaker's run of failures, a store
call's trace times it and carries only its own version."""

from __future__ import annotations

from typing import Any

import pytest

from credpath._lookup import trace
from credpath._lookup.trace import StoreCall
from credpath._resilience import BreakerSettings
from credpath.errors import AccessDenied, BackendUnavailable
from tests.lookup.helpers import quiet_path
from tests.memory_backend import MemoryBackend, Unreachable


class Flaky(MemoryBackend):
    """Fails for ids that start with "bad"."""

    def get_variable(self, key: str) -> str | None:
        self.calls.append(("get_variable", key))
        if key.startswith("bad"):
            raise Unreachable(f"{self.label}: store down")
        return self.variables.get(key)


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_a_success_ends_the_run_of_failures_that_opens_the_breaker(traced: bool) -> None:
    # Traced (a subscriber listens) or not, a store call takes a different path through the policy.
    unsubscribe = trace.subscribe(lambda _context, _event: None) if traced else None
    try:
        _failures_around_a_success()
    finally:
        if unsubscribe is not None:
            unsubscribe()


def _failures_around_a_success() -> None:
    backend = Flaky(variables={"good": "s3cr3t-g"})
    path = quiet_path(backend, breaker=BreakerSettings(failures=3, cool_down=60.0))
    for key in ("bad1", "bad2", "good", "bad3", "bad4"):
        try:
            path.get_variable(key, default=None)
        except BackendUnavailable:
            pass
    # Two failures since the success: the breaker is still closed, so the store is asked.
    with pytest.raises(BackendUnavailable):
        path.get_variable("bad5")
    assert backend.calls[-1] == ("get_variable", "bad5")


class Versioned(MemoryBackend):
    """Reports a version from its answer, even for a miss (as a store that versions deletions)."""

    def get_variable(self, key: str) -> str | None:
        trace.note_version("7")
        return super().get_variable(key)


def test_a_store_calls_version_is_its_own_not_an_earlier_calls() -> None:
    path = quiet_path(Versioned(), MemoryBackend(variables={"k": "s3cr3t-k"}))
    explanation = path.explain("variable", "k")
    assert explanation.source == "b1"
    assert explanation.version is None


def test_a_failed_store_call_is_timed_from_its_start(events: list[Any]) -> None:
    failing = MemoryBackend()
    failing.fail_with = Unreachable("b0: store down")
    denied = MemoryBackend()
    denied.fail_with = AccessDenied("b0: permission denied", backend="b0")
    with pytest.raises(BackendUnavailable):
        quiet_path(failing).get_variable("k")
    with pytest.raises(AccessDenied):
        quiet_path(denied).get_variable("k")
    calls = [e for e in events if isinstance(e, StoreCall)]
    assert [c.outcome for c in calls] == ["error", "error"]
    assert all(0.0 <= c.seconds < 60.0 for c in calls)
