"""More of the error policy's store-call bookkeeping (no servers): an answer that is a denial or a bad
configuration still ends the breaker's run of failures, the breaker's opening is logged with its numbers,
a store call's trace says "miss" for an empty answer only, a store's announced change belongs to its own
call, and a success ends the refresh back-off's doubling."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from credpath._cache import CacheSettings
from credpath._lookup import trace
from credpath._lookup.trace import Served, StoreCall
from credpath._resilience import BreakerSettings
from credpath.errors import AccessDenied, BackendUnavailable, ConfigError
from tests.lookup.helpers import path, quiet_path
from tests.memory_backend import BatchMemoryBackend, MemoryBackend, Unreachable


class Answers(MemoryBackend):
    """Fails for ids that start with "bad", denies "denied", and finds "broken" misconfigured."""

    def get_variable(self, key: str) -> str | None:
        self.calls.append(("get_variable", key))
        if key.startswith("bad"):
            raise Unreachable(f"{self.label}: store down")
        if key == "denied":
            raise AccessDenied(f"{self.label}: permission denied", backend=self.name)
        if key == "broken":
            raise ConfigError(f"{self.label}: cannot decode the stored value")
        return self.variables.get(key)


@pytest.mark.parametrize("answer", ["denied", "broken"])
@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_a_denial_or_a_config_error_ends_the_run_of_failures(traced: bool, answer: str) -> None:
    unsubscribe = trace.subscribe(lambda _context, _event: None) if traced else None
    try:
        backend = Answers()
        search_path = quiet_path(backend, breaker=BreakerSettings(failures=3, cool_down=60.0))
        for key in ("bad1", "bad2", answer, "bad3", "bad4"):
            try:
                search_path.get_variable(key, default=None)
            except (BackendUnavailable, AccessDenied, ConfigError):
                pass
        with pytest.raises(BackendUnavailable):
            search_path.get_variable("bad5")
        assert backend.calls[-1] == ("get_variable", "bad5")  # the breaker is still closed
    finally:
        if unsubscribe is not None:
            unsubscribe()


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_the_breaker_opening_is_logged_once_with_its_numbers(
    caplog: pytest.LogCaptureFixture, traced: bool
) -> None:
    # Traced (a subscriber listens) or not, a failed store call counts against the breaker.
    unsubscribe = trace.subscribe(lambda _context, _event: None) if traced else None
    try:
        _breaker_opens(caplog)
    finally:
        if unsubscribe is not None:
            unsubscribe()


def _breaker_opens(caplog: pytest.LogCaptureFixture) -> None:
    backend = Answers()
    search_path = quiet_path(backend, breaker=BreakerSettings(failures=2, cool_down=7.0))
    with caplog.at_level(logging.WARNING, logger="credpath.search_path"):
        for key in ("bad1", "bad2", "bad3"):
            with pytest.raises(BackendUnavailable):
                search_path.get_variable(key)
    opened = [r.getMessage() for r in caplog.records if "circuit breaker open" in r.getMessage()]
    assert opened == [
        "backend 'b0' (memory) failed 2 times in a row; failing fast for 7 s (circuit breaker open)"
    ]
    assert backend.calls[-1] == ("get_variable", "bad2")  # the third was refused


class EmptyStrings(BatchMemoryBackend):
    pass


def test_a_store_call_is_a_miss_only_when_its_answer_is_empty(events: list[Any]) -> None:
    backend = EmptyStrings(variables={"k": "s3cr3t-k", "blank": ""})
    search_path = quiet_path(backend, cache=False)
    search_path.get_variable("k")
    search_path.get_variable("nope", default=None)
    search_path.get_variable("blank", default=None)  # an empty string is a value the store returned
    search_path.prefetch(variables=["k", "other"])
    search_path.prefetch(variables=["none1", "none2"])  # the batch answer is an empty dict
    calls = [(c.operation, c.outcome) for c in events if isinstance(c, StoreCall)]
    assert all(0.0 <= c.seconds < 60.0 for c in events if isinstance(c, StoreCall))  # timed from its start
    assert calls == [
        ("get", "hit"),
        ("get", "miss"),
        ("get", "hit"),
        ("batch_get", "hit"),
        ("batch_get", "miss"),
    ]


class AnnouncesOnAMiss(MemoryBackend):
    """On a miss, announces that the id's value changed a moment ago (as a store reporting a deletion)."""

    def get_variable(self, key: str) -> str | None:
        value = super().get_variable(key)
        if value is None:
            trace.note_valid_until(time.time() - 1.0)
        return value


@pytest.mark.parametrize("traced", [False, True], ids=["untraced", "traced"])
def test_an_announced_change_belongs_to_its_own_store_call(traced: bool) -> None:
    unsubscribe = trace.subscribe(lambda _context, _event: None) if traced else None
    try:
        later = MemoryBackend(variables={"k": "s3cr3t-k"})
        search_path = quiet_path(AnnouncesOnAMiss(), later)
        assert search_path.get_variable("k") == "s3cr3t-k"
        assert search_path.get_variable("k") == "s3cr3t-k"
        assert len(later.calls) == 1  # cached for its TTL: the earlier call's date is not its cap
    finally:
        if unsubscribe is not None:
            unsubscribe()


def test_a_success_restarts_the_refresh_back_off_at_its_first_wait(events: list[Any]) -> None:
    backend = MemoryBackend(variables={"k": "s3cr3t-k"})
    breaker = BreakerSettings(failures=10, cool_down=0.5, max_cool_down=60.0)
    search_path = path(
        backend, cache=CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=600.0), breaker=breaker
    )
    search_path.get_variable("k")
    backend.fail_with = Unreachable("b0: store down")
    search_path.get_variable("k")  # a failed refresh: back off 0.5 s
    time.sleep(0.55)
    backend.fail_with = None
    search_path.get_variable("k")  # the store answers: the back-off is over
    backend.fail_with = Unreachable("b0: store down")
    search_path.get_variable("k")  # a new failed refresh: 0.5 s again, not 1 s
    events.clear()
    assert search_path.get_variable("k") == "s3cr3t-k"
    (served,) = [s for s in events if isinstance(s, Served)]
    assert served.tier == "stale"
    assert served.refresh_in is not None and served.refresh_in <= 0.5
