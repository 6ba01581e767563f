"""Circuit breaker and single-flight, on their own (a fake clock: no timed assertions)."""

from __future__ import annotations

import threading

import pytest

from credpath.errors import CircuitOpen
from credpath.resilience import BreakerSettings, CircuitBreaker, SingleFlight


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_lets_one_probe_through():
    clock = Clock()
    breaker = CircuitBreaker("vault", BreakerSettings(failures=3, cool_down=1.0, max_cool_down=30.0), clock)
    for _ in range(2):
        assert breaker.allow()
        assert breaker.failure() is False
    assert breaker.allow()
    assert breaker.failure() is True  # the third in a row opens it
    assert breaker.state == "open"
    assert not breaker.allow()  # fails fast during the cool-down
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.02
    assert breaker.allow()  # one probe ...
    assert breaker.state == "half-open"
    assert not breaker.allow()  # ... and only one
    assert breaker.rejected == 3


def test_breaker_cool_down_doubles_to_the_cap_and_a_success_resets_it():
    clock = Clock()
    breaker = CircuitBreaker("vault", BreakerSettings(failures=1, cool_down=1.0, max_cool_down=30.0), clock)
    breaker.allow()
    breaker.failure()
    waits = []
    for _ in range(7):
        waits.append(breaker.open_until - clock.now)
        clock.now = breaker.open_until
        assert breaker.allow()  # the probe
        breaker.failure()  # fails: wait longer
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    clock.now = breaker.open_until
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0 and breaker.cool_down == 1.0


def test_success_between_failures_resets_the_count():
    breaker = CircuitBreaker("x", BreakerSettings(failures=3), Clock())
    for _ in range(10):
        breaker.failure()
        breaker.failure()
        breaker.success()
    assert breaker.state == "closed"


def test_disabled_breaker_never_opens():
    breaker = CircuitBreaker("x", BreakerSettings(enabled=False, failures=1), Clock())
    for _ in range(5):
        breaker.failure()
        assert breaker.allow()
    assert breaker.describe() == "off"


def test_open_error_is_a_backend_error_naming_backend_and_wait():
    clock = Clock()
    breaker = CircuitBreaker("vault", BreakerSettings(failures=1, cool_down=4.0), clock)
    breaker.failure()
    error = breaker.open_error("backend 'vault' (HashiCorp Vault)")
    assert isinstance(error, CircuitOpen) and error.backend == "vault"
    assert "backend 'vault' (HashiCorp Vault): failing fast" in str(error)
    assert "next try in 4.0 s" in str(error)
    assert breaker.describe().startswith("open (1 failures; next probe in 4.0 s")


def test_single_flight_shares_one_execution_and_its_result():
    flight = SingleFlight()
    gate = threading.Event()
    calls = []

    def work() -> str:
        calls.append(1)
        gate.wait(10)
        return "value"

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(flight.do("k", work))) for _ in range(32)]
    for t in threads:
        t.start()
    for _ in range(1000):  # bounded wait until all 31 followers are parked behind the leader
        if flight.shared == 31:
            break
        threading.Event().wait(0.005)
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == [1]
    assert results == ["value"] * 32
    assert flight.in_flight() == 0


def test_single_flight_hands_the_error_to_every_waiter_at_once():
    flight = SingleFlight()
    gate = threading.Event()
    calls = []

    def work() -> str:
        calls.append(1)
        gate.wait(10)
        raise CircuitOpen("backend 'x': down", backend="x")

    errors: list[BaseException] = []

    def run() -> None:
        try:
            flight.do("k", work)
        except CircuitOpen as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for _ in range(1000):
        if flight.shared == 15:
            break
        threading.Event().wait(0.005)
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == [1] and len(errors) == 16
    # the next call after the flight ended runs again (errors are not cached)
    with pytest.raises(CircuitOpen):
        flight.do("k", work)
    assert calls == [1, 1]
