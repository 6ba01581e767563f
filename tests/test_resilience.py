"""Circuit breaker and single-flight, on their own (a fake clock: no timed assertions)."""

from __future__ import annotations

import threading
import time

import pytest

from credpath._resilience import BreakerSettings, CircuitBreaker, SingleFlight
from credpath.errors import CircuitOpen


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


# --- defaults, every described state, counters ------------------------------------------------


def test_breaker_defaults_are_pinned():
    s = BreakerSettings()
    assert (s.enabled, s.failures, s.cool_down, s.max_cool_down) == (True, 3, 1.0, 30.0)
    breaker = CircuitBreaker("x")
    assert breaker.settings == s and breaker.cool_down == 1.0 and breaker.state == "closed"
    assert (breaker.failures, breaker.opened, breaker.rejected, breaker.open_until) == (0, 0, 0, 0.0)


def test_breaker_describes_each_state_and_counts_openings():
    clock = Clock()
    breaker = CircuitBreaker("x", BreakerSettings(failures=2, cool_down=3.0), clock)
    assert breaker.describe() == "closed"
    assert breaker.failure() is False
    assert breaker.describe() == "closed (1 recent failure(s))"
    assert breaker.failure() is True and breaker.opened == 1
    assert breaker.describe() == "open (2 failures; next probe in 3.0 s)"
    assert breaker.retry_in() == 3.0
    assert breaker.failure() is False  # a failure while open neither re-opens nor extends it
    assert breaker.open_until == 1003.0 and breaker.opened == 1
    clock.now = 1003.0  # exactly at the end of the cool-down: the probe goes
    assert breaker.allow() and breaker.state == "half-open"
    assert breaker.describe() == "half-open (probe in flight)"
    error = breaker.open_error("backend 'x'")
    assert "a probe is in flight" in str(error) and "3 consecutive failure(s)" in str(error)
    assert breaker.failure() is True and breaker.opened == 2  # the probe failed: open again, longer
    assert breaker.open_until == 1003.0 + 6.0
    clock.now = 2000.0
    assert breaker.retry_in() == 0.0


def test_a_success_closes_a_half_open_breaker():
    clock = Clock()
    breaker = CircuitBreaker("x", BreakerSettings(failures=1, cool_down=1.0), clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.success()
    assert (breaker.state, breaker.failures, breaker.describe()) == ("closed", 0, "closed")
    assert breaker.allow() and breaker.rejected == 0


def test_single_flight_sequential_calls_do_not_share_and_keys_are_independent():
    flight = SingleFlight()
    calls = []
    assert flight.do("a", lambda x: calls.append(x) or x, 1) == 1
    assert flight.do("a", lambda x: calls.append(x) or x, 2) == 2
    assert flight.do("b", lambda: "b") == "b"
    assert calls == [1, 2] and flight.shared == 0 and flight.in_flight() == 0
    with pytest.raises(KeyError):
        flight.do("a", lambda: {}["missing"])
    assert flight.in_flight() == 0  # an error leaves no call behind
    assert flight.do("a", lambda: "again") == "again"


def test_single_flight_counts_waiters_while_in_flight():
    flight = SingleFlight()
    gate, entered = threading.Event(), threading.Event()

    def slow():
        entered.set()
        assert gate.wait(10)
        return "v"

    results = []
    leader = threading.Thread(target=lambda: results.append(flight.do("k", slow)))
    leader.start()
    assert entered.wait(10)
    assert flight.in_flight() == 1
    follower = threading.Thread(target=lambda: results.append(flight.do("k", lambda: "other")))
    follower.start()
    while flight.shared == 0:
        threading.Event().wait(0.001)
    other_key = flight.do("j", lambda: "j")  # a different key never waits for "k"
    gate.set()
    leader.join(10)
    follower.join(10)
    assert other_key == "j" and results == ["v", "v"] and flight.shared == 1


def test_breaker_settings_are_frozen_and_one_failure_then_success_resets():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        BreakerSettings().failures = 1  # type: ignore[misc]
    breaker = CircuitBreaker("x", BreakerSettings(failures=2), Clock())
    breaker.failure()
    breaker.success()
    assert breaker.failures == 0 and breaker.describe() == "closed"
    breaker.failure()
    assert breaker.state == "closed"  # one failure since the success: still closed


def test_a_disabled_breaker_reports_no_opening():
    breaker = CircuitBreaker("x", BreakerSettings(enabled=False, failures=1), Clock())
    assert breaker.failure() is False and breaker.failures == 0 and breaker.opened == 0


class _SucceedsWhileWaiting:
    """The breaker's lock, taken just as another thread's success() closes the breaker (the race that
    allow()'s re-check under the lock is there for)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        self.breaker.state = "closed"
        self.breaker.failures = 0
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_allow_rechecks_under_the_lock_a_breaker_closed_meanwhile():
    clock = Clock()
    breaker = CircuitBreaker("vault", BreakerSettings(failures=1, cool_down=10.0), clock)
    breaker.failure()
    assert breaker.state == "open"
    breaker._lock = _SucceedsWhileWaiting(breaker)  # type: ignore[assignment]
    assert breaker.allow() is True  # closed by the time the lock was held: let through, not rejected
    assert breaker.rejected == 0 and breaker.state == "closed"


@pytest.mark.parametrize("own_error", [True, False], ids=["its-own-error", "timeout-error"])
def test_a_single_flight_waiter_waits_no_longer_than_its_own_deadline(own_error: bool) -> None:
    from credpath._deadlines import Deadline
    from credpath.errors import BackendTimeout

    flight = SingleFlight()
    gate, entered = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        gate.wait(10)
        return "v"

    leader = threading.Thread(target=lambda: flight.run("k", slow))
    leader.start()
    assert entered.wait(5)
    started = time.monotonic()
    if own_error:
        with pytest.raises(BackendTimeout, match="waited"):
            flight.run("k", slow, Deadline(0.2), lambda: BackendTimeout("waited too long"))
    else:  # a waiter that gives no error of its own gets a TimeoutError
        with pytest.raises(TimeoutError, match="single-flight wait timed out"):
            flight.run("k", slow, Deadline(0.2))
    assert 0.15 < time.monotonic() - started < 2
    gate.set()
    leader.join(5)
    assert flight.in_flight() == 0


def test_waiters_get_their_own_copy_of_the_error() -> None:
    flight = SingleFlight()
    gate, entered = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing() -> None:
        entered.set()
        gate.wait(10)
        raise CircuitOpen("backend 'x': down", backend="x")

    def run() -> None:
        try:
            flight.run("k", failing)
        except CircuitOpen as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    threads[0].start()
    assert entered.wait(5)
    for t in threads[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while flight.shared < 2 and time.monotonic() < deadline:  # until both wait on the leader
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 3 and len({id(e) for e in errors}) == 3  # each caller may relabel its own


def test_the_vault_session_uses_the_one_single_flight() -> None:
    from credpath.backends.vault import session

    assert not hasattr(session, "_Flights")
    assert "SingleFlight" in vars(session)


def test_a_refresh_backs_off_exponentially_up_to_its_cap_and_a_success_ends_it() -> None:
    from credpath._resilience import RefreshBackoff

    now = [0.0]
    backoff = RefreshBackoff(1.0, 5.0, clock=lambda: now[0])
    assert backoff.waiting() == 0.0
    assert [backoff.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.waiting() == 5.0
    now[0] = 4.0
    assert backoff.waiting() == 1.0
    backoff.succeeded()
    assert backoff.waiting() == 0.0 and backoff.failures == 0
    off = RefreshBackoff(enabled=False)
    assert off.failed() == 0.0 and off.waiting() == 0.0
