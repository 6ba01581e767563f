"""credpath._deadlines at the unit level: deadlines, back-off, Retry-After, retries and whole-call bounds.

No real sleeping except where a worker thread must outlive a deadline (bounds are generous); waits are
recorded through the ``sleep`` hook instead.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from credpath._deadlines import (
    Deadline,
    RetriesExhausted,
    Retryable,
    RetryPolicy,
    call_with_deadline,
    call_with_retries,
    parse_retry_after,
    retry_call,
)


class Timeout(Exception):
    pass


def test_deadline_remaining_expired_and_repr():
    d = Deadline(30)
    assert d.seconds == 30.0 and isinstance(d.seconds, float)
    assert 29.0 < d.remaining() <= 30.0
    assert not d.expired
    assert repr(d).startswith("<Deadline 30 s, ") and repr(d).endswith(" s left>")
    gone = Deadline(0)
    assert gone.expired and gone.remaining() == 0.0
    past = Deadline(-5)
    assert past.remaining() == 0.0 and past.expired


def test_deadline_expired_at_exactly_its_expiry(monkeypatch):
    import credpath._deadlines as mod

    now = [100.0]
    monkeypatch.setattr(mod.time, "monotonic", lambda: now[0])
    d = Deadline(10)
    assert d.expires == 110.0
    now[0] = 109.5
    assert not d.expired and d.remaining() == pytest.approx(0.5)
    now[0] = 110.0
    assert d.expired and d.remaining() == 0.0


def test_retry_policy_defaults_and_full_jitter_backoff():
    policy = RetryPolicy()
    assert (policy.attempts, policy.base, policy.cap) == (4, 0.1, 5.0)
    assert policy.backoff(0, rng=lambda: 1.0) == pytest.approx(0.1)
    assert policy.backoff(3, rng=lambda: 1.0) == pytest.approx(0.8)
    assert policy.backoff(3, rng=lambda: 0.5) == pytest.approx(0.4)
    assert policy.backoff(10, rng=lambda: 1.0) == 5.0  # capped
    assert policy.backoff(5, rng=lambda: 0.0) == 0.0
    assert 0.0 <= RetryPolicy(base=1.0).backoff(2) <= 4.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("  3 ", 3.0), ("0.5", 0.5), ("-4", 0.0), ("soon", None), ("0", 0.0)],
)
def test_parse_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    future = datetime.now(UTC) + timedelta(seconds=120)
    got = parse_retry_after(format_datetime(future, usegmt=True))
    assert got is not None and 100 < got <= 121
    past = datetime.now(UTC) - timedelta(seconds=120)
    assert parse_retry_after(format_datetime(past, usegmt=True)) == 0.0


def test_retryable_carries_error_and_retry_after():
    err = ValueError("boom")
    r = Retryable(err, retry_after=2.0)
    assert r.error is err and r.retry_after == 2.0 and str(r) == "boom"
    assert Retryable(err).retry_after is None


def test_retry_call_returns_first_success_and_waits_grow():
    waits: list[float] = []
    calls: list[Deadline] = []
    deadline = Deadline(60)

    def attempt(d):
        calls.append(d)
        if len(calls) < 3:
            raise Retryable(RuntimeError("again"))
        return "ok"

    policy = RetryPolicy(attempts=4, base=0.01, cap=1.0)
    assert retry_call(attempt, deadline, policy, on_timeout=Timeout, sleep=waits.append) == "ok"
    assert len(calls) == 3 and all(d is deadline for d in calls)
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.01 and 0 <= waits[1] <= 0.02


def test_retry_call_raises_the_last_error_after_all_attempts():
    errors = [RuntimeError(f"e{i}") for i in range(3)]
    waits: list[float] = []

    def attempt(_d):
        raise Retryable(errors[len(waits)] if len(waits) < 3 else errors[-1])

    with pytest.raises(RuntimeError, match="e2"):
        retry_call(
            attempt, Deadline(60), RetryPolicy(attempts=3, base=0.001), on_timeout=Timeout, sleep=waits.append
        )
    assert len(waits) == 2  # no wait after the last attempt


def test_retry_call_permanent_error_propagates_at_once():
    calls = []

    def attempt(_d):
        calls.append(1)
        raise KeyError("permanent")

    with pytest.raises(KeyError):
        retry_call(attempt, Deadline(60), on_timeout=Timeout, sleep=lambda s: None)
    assert calls == [1]


def test_retry_call_honours_retry_after_within_the_deadline_only():
    waits: list[float] = []
    tries = []

    def attempt(_d):
        tries.append(1)
        if len(tries) == 1:
            raise Retryable(RuntimeError("slow down"), retry_after=2.0)
        return "ok"

    assert (
        retry_call(attempt, Deadline(60), RetryPolicy(base=0.001), on_timeout=Timeout, sleep=waits.append)
        == "ok"
    )
    assert waits == [2.0]

    tries.clear()
    waits.clear()

    def always(_d):
        tries.append(1)
        raise Retryable(RuntimeError("slow down"), retry_after=120.0)

    with pytest.raises(RuntimeError, match="slow down"):
        retry_call(always, Deadline(60), RetryPolicy(base=0.001), on_timeout=Timeout, sleep=waits.append)
    assert tries == [1] and waits == []  # beyond the deadline: fail now, not later


def test_retry_call_on_an_expired_deadline_times_out_without_trying():
    tries = []
    with pytest.raises(Timeout):
        retry_call(lambda d: tries.append(1), Deadline(0), on_timeout=Timeout, sleep=lambda s: None)
    assert tries == []


def test_retry_call_zero_attempts_still_tries_once():
    assert retry_call(lambda d: 7, Deadline(5), RetryPolicy(attempts=0), on_timeout=Timeout) == 7


def test_call_with_deadline_returns_value_and_reraises_in_caller():
    assert call_with_deadline(lambda: 42, Deadline(5), on_timeout=Timeout) == 42
    with pytest.raises(ZeroDivisionError):
        call_with_deadline(lambda: 1 / 0, Deadline(5), on_timeout=Timeout)
    ran = []
    with pytest.raises(Timeout):
        call_with_deadline(lambda: ran.append(1), Deadline(0), on_timeout=Timeout)
    assert ran == []


def test_call_with_deadline_abandons_a_call_that_overruns():
    release = threading.Event()
    began = time.monotonic()
    with pytest.raises(Timeout):
        call_with_deadline(lambda: release.wait(10), Deadline(0.2), on_timeout=Timeout)
    assert time.monotonic() - began < 5  # generous: bounded by the deadline, not by the call
    release.set()


def _classify(exc):
    if isinstance(exc, ConnectionError):
        return True, getattr(exc, "retry_after", None)
    return False, None


def test_call_with_retries_retries_transient_then_succeeds():
    waits: list[float] = []
    tries = []

    def func(d):
        tries.append(d)
        if len(tries) < 3:
            raise ConnectionError("reset")
        return "ok"

    got = call_with_retries(
        func,
        Deadline(60),
        RetryPolicy(attempts=4, base=0.001),
        classify=_classify,
        on_timeout=lambda n: Timeout(n),
        sleep=waits.append,
    )
    assert got == "ok" and len(tries) == 3 and len(waits) == 2


def test_call_with_retries_permanent_error_propagates():
    tries = []

    def func(d):
        tries.append(1)
        raise KeyError("no")

    with pytest.raises(KeyError):
        call_with_retries(
            func,
            Deadline(60),
            RetryPolicy(),
            classify=_classify,
            on_timeout=lambda n: Timeout(n),
            sleep=lambda s: None,
        )
    assert tries == [1]


def test_call_with_retries_exhausted_counts_attempts():
    waits: list[float] = []

    def func(d):
        raise ConnectionError("reset")

    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(
            func,
            Deadline(60),
            RetryPolicy(attempts=3, base=0.001),
            classify=_classify,
            on_timeout=lambda n: Timeout(n),
            sleep=waits.append,
        )
    assert info.value.attempts == 3 and info.value.retry_after is None
    assert isinstance(info.value.error, ConnectionError) and str(info.value) == "reset"
    assert len(waits) == 2


def test_call_with_retries_retry_after_beyond_deadline_fails_at_once_and_says_so():
    waits: list[float] = []

    def func(d):
        exc = ConnectionError("busy")
        exc.retry_after = 300.0
        raise exc

    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(
            func,
            Deadline(30),
            RetryPolicy(attempts=4),
            classify=_classify,
            on_timeout=lambda n: Timeout(n),
            sleep=waits.append,
        )
    assert info.value.attempts == 1 and info.value.retry_after == 300.0 and waits == []


def test_call_with_retries_honours_a_short_retry_after():
    waits: list[float] = []
    tries = []

    def func(d):
        tries.append(1)
        if len(tries) == 1:
            exc = ConnectionError("busy")
            exc.retry_after = 1.5
            raise exc
        return "ok"

    got = call_with_retries(
        func,
        Deadline(30),
        RetryPolicy(attempts=4, base=0.001),
        classify=_classify,
        on_timeout=lambda n: Timeout(n),
        sleep=waits.append,
    )
    assert got == "ok" and waits == [1.5]


def test_call_with_retries_wait_longer_than_the_time_left_gives_up():
    waits: list[float] = []

    def func(d):
        raise ConnectionError("reset")

    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(
            func,
            Deadline(0.5),
            RetryPolicy(attempts=4, base=100.0, cap=100.0),
            classify=_classify,
            on_timeout=lambda n: Timeout(n),
            sleep=waits.append,
        )
    # a wait of up to 100 s almost never fits in 0.5 s; rng() < 0.005 would, so allow one wait
    assert info.value.attempts >= 1 and len(waits) <= 1


def test_call_with_retries_expired_deadline_and_timeout_inside_a_try():
    with pytest.raises(Timeout) as info:
        call_with_retries(
            lambda d: "never",
            Deadline(0),
            RetryPolicy(),
            classify=_classify,
            on_timeout=lambda n: Timeout(n),
        )
    assert info.value.args == (0,)
    release = threading.Event()
    with pytest.raises(Timeout) as info:
        call_with_retries(
            lambda d: release.wait(10),
            Deadline(0.2),
            RetryPolicy(),
            classify=lambda e: (False, None),
            on_timeout=lambda n: Timeout(n),
        )
    release.set()
    assert info.value.args == (1,)  # the deadline ran out inside the first try


def test_retry_policy_is_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().attempts = 9  # type: ignore[misc]


def test_retry_call_gives_up_when_the_wait_is_exactly_the_time_left(monkeypatch):
    import credpath._deadlines as mod

    monkeypatch.setattr(mod.time, "monotonic", lambda: 100.0)  # time stands still: remaining() is 10
    waits: list[float] = []

    def attempt(_d):
        raise Retryable(RuntimeError("busy"), retry_after=10.0)

    with pytest.raises(RuntimeError, match="busy"):
        retry_call(attempt, Deadline(10), RetryPolicy(base=0.0), on_timeout=Timeout, sleep=waits.append)
    assert waits == []


def test_call_with_deadline_reuses_an_idle_worker_thread():
    # A thread per store call costs scheduler round trips (milliseconds on a busy Airflow worker).
    started = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    call_with_deadline(lambda: 1, Deadline(5), on_timeout=Timeout)  # an idle worker exists from here on
    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        for _ in range(20):
            assert call_with_deadline(lambda: 2, Deadline(5), on_timeout=Timeout) == 2
    finally:
        threading.Thread.start = real_start  # type: ignore[method-assign]
    assert started == []


def test_call_with_deadline_after_an_abandoned_call_uses_another_worker():
    release = threading.Event()
    with pytest.raises(Timeout):
        call_with_deadline(lambda: release.wait(10), Deadline(0.2), on_timeout=Timeout)
    # The stuck worker is not idle: the next call is not queued behind it.
    assert call_with_deadline(lambda: 3, Deadline(2), on_timeout=Timeout) == 3
    release.set()


def test_call_with_deadline_works_in_a_forked_child():
    # Airflow forks task processes from a supervisor that already made store calls: the child has none
    # of the parent's idle workers and must start its own.
    import os

    call_with_deadline(lambda: 1, Deadline(5), on_timeout=Timeout)
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = call_with_deadline(lambda: 4, Deadline(5), on_timeout=Timeout) == 4
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_call_with_retries_zero_attempts_still_tries_once():
    got = call_with_retries(
        lambda d: 7, Deadline(5), RetryPolicy(attempts=0), classify=_classify, on_timeout=lambda n: Timeout(n)
    )
    assert got == 7


class _WholeBound(RetryPolicy):
    """Jitter drawn at its maximum: each wait is its whole bound."""

    def backoff(self, attempt, rng=lambda: 1.0):
        return super().backoff(attempt, rng)


@pytest.mark.parametrize("retry_after", [None, 10.0])
def test_call_with_retries_gives_up_when_the_wait_is_exactly_the_time_left(monkeypatch, retry_after):
    import credpath._deadlines as mod

    monkeypatch.setattr(mod.time, "monotonic", lambda: 100.0)  # time stands still: remaining() is 10
    waits: list[float] = []

    def func(_d):
        exc = ConnectionError("busy")
        exc.retry_after = retry_after
        raise exc

    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(
            func,
            Deadline(10),
            _WholeBound(attempts=4, base=10.0, cap=10.0),  # a back-off of exactly 10 s
            classify=_classify,
            on_timeout=lambda n: Timeout(n),
            sleep=waits.append,
        )
    assert waits == [] and info.value.attempts == 1 and info.value.retry_after == retry_after


def test_unwrap_retries_names_the_attempts_and_an_unhonoured_retry_after():
    from credpath._deadlines import unwrap_retries

    plain = ValueError("x")
    assert unwrap_retries(plain, 10) == (plain, "")
    last = ConnectionError("reset")
    assert unwrap_retries(RetriesExhausted(last, 3), 10) == (last, " after 3 attempt(s)")
    assert unwrap_retries(RetriesExhausted(last, 1, 30.0), 2.5) == (
        last,
        " after 1 attempt(s) (Retry-After 30 s is beyond the 2.5 s deadline)",
    )


def test_call_with_deadline_runs_on_a_named_daemon_thread():
    # A daemon: a store call stuck past its deadline must not keep the process from exiting.
    thread = call_with_deadline(threading.current_thread, Deadline(5), on_timeout=Timeout)
    assert thread is not threading.current_thread()
    assert thread.daemon is True and thread.name == "credpath-store-call"


@pytest.mark.parametrize("enabled", [True, False])
def test_each_retry_is_reported_to_the_metrics_of_the_backend_being_called(enabled):
    from credpath import metrics

    failures = {"retry_call": 2, "call_with_retries": 2}

    def failing(loop):
        def attempt(_deadline):
            if failures[loop]:
                failures[loop] -= 1
                raise (
                    Retryable(ConnectionError("reset")) if loop == "retry_call" else ConnectionError("reset")
                )
            return loop

        return attempt

    metrics.reset()
    if enabled:
        metrics.enable()
    from credpath._lookup.trace import LookupContext, calling

    context = LookupContext("variable", "k")  # as the search path's store call to "store-b" runs in one
    with calling(context, "store-b"):
        policy = RetryPolicy(attempts=4, base=0.0)
        assert retry_call(
            failing("retry_call"), Deadline(5), policy, on_timeout=Timeout, sleep=lambda _: None
        )
        assert metrics.snapshot()["retries"] == ({("store-b",): 2} if enabled else {})  # tries 2 and 3
        assert call_with_retries(
            failing("call_with_retries"),
            Deadline(5),
            policy,
            classify=_classify,
            on_timeout=lambda n: Timeout(n),
            sleep=lambda _: None,
        )
        assert metrics.snapshot()["retries"] == ({("store-b",): 4} if enabled else {})
        retry_call(failing("retry_call"), Deadline(5), policy, on_timeout=Timeout)  # no retry: none counted
    metrics.disable()
    assert metrics.snapshot()["retries"] == ({("store-b",): 4} if enabled else {})  # the first tries: none
    metrics.reset()


def test_call_with_deadline_with_no_time_left_runs_nothing(monkeypatch):
    import credpath._deadlines as mod

    ran: list[int] = []
    with monkeypatch.context() as clock:
        clock.setattr(mod.time, "monotonic", lambda: 100.0)  # time stands still
        deadline = Deadline(1)
        clock.setattr(mod.time, "monotonic", lambda: 101.0)  # exactly no time left: remaining() == 0
        with pytest.raises(Timeout):
            call_with_deadline(lambda: ran.append(1), deadline, on_timeout=Timeout)
    time.sleep(0.2)  # time for a worker that was (wrongly) handed the call to run it
    assert ran == []


def _blocked_calls(count, release):
    """``count`` calls at once, each on its own worker until ``release`` is set: their worker threads."""
    seen: list[threading.Thread] = []
    started = threading.Barrier(count + 1)

    def func():
        seen.append(threading.current_thread())
        started.wait(5)
        release.wait(5)

    callers = [
        threading.Thread(target=call_with_deadline, args=(func, Deadline(10)), kwargs={"on_timeout": Timeout})
        for _ in range(count)
    ]
    for caller in callers:
        caller.start()
    started.wait(5)
    return seen, callers


def test_at_most_four_workers_stay_idle_and_the_others_end(monkeypatch):
    import credpath._deadlines as mod

    monkeypatch.setattr(mod._workers, "idle", [])  # this test's workers only
    release = threading.Event()
    seen, callers = _blocked_calls(6, release)
    release.set()
    for caller in callers:
        caller.join(5)
    assert len(set(seen)) == 6
    assert len(mod._workers.idle) == mod._MAX_IDLE_WORKERS == 4
    deadline = time.monotonic() + 5
    while sum(t.is_alive() for t in seen) > 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(t.is_alive() for t in seen) == 4  # the two that found the pool full retired: their loops ended


def test_a_worker_busy_at_a_fork_does_not_join_the_new_pool(monkeypatch):
    import credpath._deadlines as mod

    monkeypatch.setattr(mod._workers, "idle", [])
    monkeypatch.setattr(mod._workers, "lock", threading.Lock())
    monkeypatch.setattr(mod._workers, "generation", mod._workers.generation)
    release = threading.Event()
    _, callers = _blocked_calls(1, release)
    mod._forget_workers_after_fork()  # as the at-fork hook does in a child: the busy worker is the old pool's
    release.set()
    callers[0].join(5)
    assert mod._workers.idle == []


def test_a_deadline_that_passes_between_tries_raises_the_last_error_through_both_doors() -> None:
    def sleep_past(_seconds: float) -> None:
        time.sleep(0.08)  # the back-off fits, but the deadline passes during it

    policy = RetryPolicy(attempts=4, base=0.0)
    tries: list[int] = []

    def retryable(_deadline: Deadline) -> None:
        tries.append(1)
        raise Retryable(ConnectionError("reset"))

    with pytest.raises(ConnectionError):
        retry_call(retryable, Deadline(0.05), policy, on_timeout=Timeout, sleep=sleep_past)
    assert tries == [1]

    def failing(_deadline: Deadline) -> None:
        tries.append(2)
        raise ConnectionError("reset")

    with pytest.raises(RetriesExhausted) as info:
        call_with_retries(
            failing, Deadline(0.05), policy, classify=_classify, on_timeout=Timeout, sleep=sleep_past
        )
    assert info.value.attempts == 1 and tries == [1, 2]


def test_inside_single_try_the_retry_loop_tries_once() -> None:
    from credpath._deadlines import Retryable, retry_call
    from credpath._lookup import trace

    tries: list[int] = []

    def attempt(deadline: Deadline) -> str:
        tries.append(1)
        raise Retryable(ConnectionError("refused"))

    with trace.single_try(), pytest.raises(ConnectionError):
        retry_call(attempt, Deadline(5), RetryPolicy(attempts=4, base=0.0), on_timeout=TimeoutError)
    assert len(tries) == 1
    with pytest.raises(ConnectionError):
        retry_call(attempt, Deadline(5), RetryPolicy(attempts=4, base=0.0), on_timeout=TimeoutError)
    assert len(tries) == 1 + 4  # outside it, every try of the policy
