"""RefreshBackoff's default first wait (the breaker's default cool-down, one second), and what a single-flight
waiter gets when it gives up or when the leader fails."""

from __future__ import annotations

import threading
from typing import Any

from credpath._resilience import RefreshBackoff, SingleFlight


def lead_then_wait(
    flight: SingleFlight, leader: Any, waiter: Any, entered: threading.Event, gate: threading.Event
) -> None:
    """Run ``leader`` until its call is in flight (``entered``), then ``waiter`` until it waits on that
    call (bounded), then open ``gate`` and join both."""
    first = threading.Thread(target=leader)
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=waiter)
    second.start()
    for _ in range(1000):
        if flight.shared == 1:
            break
        threading.Event().wait(0.005)
    gate.set()
    first.join(5)
    second.join(5)


def test_the_first_failed_refresh_waits_one_second_by_default() -> None:
    backoff = RefreshBackoff(clock=lambda: 100.0)
    assert backoff.waiting() == 0.0
    assert backoff.failed() == 1.0
    assert backoff.waiting() == 1.0


def test_a_waiter_gets_the_leader_s_error_as_raised_not_as_its_caller_relabelled_it() -> None:
    flight = SingleFlight()
    gate, entered = threading.Event(), threading.Event()
    seen: list[BaseException] = []

    def failing() -> None:
        entered.set()
        gate.wait(10)
        raise ValueError("store down")

    def leader() -> None:
        try:
            flight.run("k", failing)
        except ValueError as exc:
            exc.args = ("relabelled by the leader's caller",)

    def waiter() -> None:
        try:
            flight.run("k", failing)
        except ValueError as exc:
            seen.append(exc)

    lead_then_wait(flight, leader, waiter, entered, gate)
    assert [e.args for e in seen] == [("store down",)]
    assert seen[0].__suppress_context__


def test_the_default_refresh_back_off_doubles_up_to_thirty_seconds() -> None:
    backoff = RefreshBackoff(clock=lambda: 0.0)
    assert [backoff.failed() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_refresh_back_off_that_has_passed_waits_zero_seconds_not_less() -> None:
    now = [100.0]
    backoff = RefreshBackoff(1.0, 5.0, clock=lambda: now[0])
    assert backoff.failed() == 1.0
    now[0] = 100.5
    assert backoff.waiting() == 0.5
    now[0] = 101.5  # half a second past the end of the wait
    assert backoff.waiting() == 0.0


def test_an_open_breaker_refuses_with_false() -> None:
    from credpath._resilience import BreakerSettings, CircuitBreaker

    breaker = CircuitBreaker("x", BreakerSettings(failures=1, cool_down=5.0), lambda: 0.0)
    assert breaker.allow() is True
    assert breaker.failure() is True
    assert breaker.allow() is False
    assert breaker.rejected == 1


class Uncopyable(Exception):
    """An exception that refuses to be copied (a store client's own type may)."""

    def __copy__(self) -> Uncopyable:
        raise TypeError("no copies of this one")


def test_an_error_that_cannot_be_copied_reaches_the_leader_and_every_waiter_as_is() -> None:
    flight = SingleFlight()
    gate, entered = threading.Event(), threading.Event()
    error = Uncopyable("store down")
    outcomes: list[object] = []

    def failing() -> str:
        entered.set()
        gate.wait(10)
        raise error

    def call() -> None:
        try:
            outcomes.append(flight.run("k", failing))
        except Exception as exc:  # what each caller got, whatever it is
            outcomes.append(exc)

    lead_then_wait(flight, call, call, entered, gate)
    assert outcomes == [error, error]  # the one object: it cannot be copied
    assert flight.in_flight() == 0
