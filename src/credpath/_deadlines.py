"""Whole-call deadlines and retries that back off, shared by every backend that talks to a store.

A store call (a lookup, a login, a renewal) gets one :class:`Deadline` that covers connecting, every read,
every retry and every back-off or ``Retry-After`` sleep. :func:`retry_call` (a try signals "again" by raising
:class:`Retryable`) and :func:`call_with_retries` (a ``classify`` function decides, each try bounded on a
worker thread) are two doors to one loop, ``_retry``: it runs an attempt function until it succeeds, raises
a permanent error, or the deadline leaves no room for another try; waits grow
exponentially with full jitter (the AWS Architecture Blog's "exponential backoff and jitter" scheme), so a
fleet of workers does not retry in lock step.

Client libraries only offer per-socket-read timeouts, which a server trickling one byte at a time never
trips; :func:`call_with_deadline` bounds the whole attempt by running it on a daemon worker thread and
abandoning it when the deadline passes (the worker's socket is closed by its own timeout later); idle
workers are reused, so a healthy call starts no thread.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from credpath._lookup import trace as _trace
from credpath._record import Frozen

if TYPE_CHECKING:
    import queue

__all__ = [
    "Deadline",
    "RetriesExhausted",
    "RetryPolicy",
    "Retryable",
    "call_with_deadline",
    "call_with_retries",
    "parse_retry_after",
    "retry_call",
    "unwrap_retries",
]


T = TypeVar("T")


class Deadline:
    """A point in monotonic time by which a whole store call must be done."""

    __slots__ = ("expires", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.expires = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires

    def __repr__(self) -> str:
        return f"<Deadline {self.seconds:g} s, {self.remaining():.3f} s left>"


class RetryPolicy(Frozen):
    """Exponential back-off with full jitter: try ``n`` waits ``uniform(0, min(cap, base * 2**n))``. A record,
    not a dataclass: the CLI defines it at start-up (credpath._record says why)."""

    attempts: int = 4
    base: float = 0.1
    cap: float = 5.0

    _fields = ("attempts", "base", "cap")

    def __init__(self, attempts: int = attempts, base: float = base, cap: float = cap) -> None:
        vars(self).update(attempts=attempts, base=base, cap=cap)

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * min(self.cap, self.base * 2.0**attempt)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime  # an HTTP date is rare: ~12 ms of imports, lazily

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class Retryable(Exception):
    """Raised by an attempt function to ask :func:`retry_call` for another try.

    ``error`` is what to raise if no try is left; ``retry_after`` a server-given wait (honoured only when
    it fits in the deadline).
    """

    def __init__(self, error: BaseException, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _retry(
    attempt: Callable[[Deadline], T],
    deadline: Deadline,
    policy: RetryPolicy,
    classify: Callable[[BaseException], tuple[bool, float | None]],
    on_timeout: Callable[[int], BaseException],
    sleep: Callable[[float], None],
    bounded: bool,
) -> T | _GaveUp:
    """THE retry loop: ``attempt(deadline)`` until it returns, raises what ``classify`` calls permanent, or
    no try (or no time for the next wait) is left; then a :class:`_GaveUp` for the caller to raise.

    ``bounded``: each try runs through :func:`call_with_deadline` (for clients whose calls the deadline
    cannot otherwise cut). Waits: the policy's back-off, or a longer ``Retry-After``; one that does not fit
    in the time left ends the loop at once (a Retry-After of an hour fails now, not in an hour). A deadline
    that passes between tries ends it too, with the last error.
    """
    attempts = 0
    last: BaseException | None = None
    limit = max(1, policy.attempts) if _trace.retries_allowed() else 1
    for number in range(limit):
        if deadline.expired:
            break
        if number:
            _trace.note_retry()
        attempts += 1
        try:
            if bounded:
                tries = attempts
                return call_with_deadline(
                    lambda: attempt(deadline),
                    deadline,
                    on_timeout=lambda: on_timeout(tries),  # noqa: B023 - called within this try
                )
            return attempt(deadline)
        except BaseException as exc:
            retryable, retry_after = classify(exc)
            if not retryable:
                raise
            last = exc
        if number + 1 >= limit:
            break
        wait = policy.backoff(number)
        if retry_after is not None:
            if retry_after >= deadline.remaining():
                return _GaveUp(last, attempts, retry_after)
            wait = max(wait, retry_after)
        if wait >= deadline.remaining():
            break
        sleep(wait)
    return _GaveUp(last, attempts, None)


class _GaveUp:
    """Why :func:`_retry` stopped: the last retryable error (None: the deadline left no try at all)."""

    __slots__ = ("attempts", "error", "retry_after")

    def __init__(self, error: BaseException | None, attempts: int, retry_after: float | None) -> None:
        self.error, self.attempts, self.retry_after = error, attempts, retry_after


def _marked(exc: BaseException) -> tuple[bool, float | None]:
    return (True, exc.retry_after) if isinstance(exc, Retryable) else (False, None)


def retry_call(
    attempt: Callable[[Deadline], T],
    deadline: Deadline,
    policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
    *,
    on_timeout: Callable[[], BaseException],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``attempt(deadline)`` on this thread until it returns; retry when it raises :class:`Retryable`.

    Any other exception is permanent and propagates at once. When the deadline has passed, or the next wait
    would not leave time for another try, the last retryable error is raised (or ``on_timeout()`` if the
    deadline left no try at all).
    """
    outcome = _retry(attempt, deadline, policy, _marked, lambda _n: on_timeout(), sleep, bounded=False)
    if not isinstance(outcome, _GaveUp):
        return outcome
    if outcome.error is None:
        raise on_timeout()
    raise outcome.error.error  # type: ignore[attr-defined]


def call_with_deadline(
    func: Callable[[], T], deadline: Deadline, *, on_timeout: Callable[[], BaseException]
) -> T:
    """Run ``func`` on a daemon worker thread; raise ``on_timeout()`` if it is not done by the deadline."""
    remaining = deadline.remaining()
    if remaining <= 0:
        raise on_timeout()
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()
    worker = _idle_worker()

    def run() -> None:
        try:
            outcome.append((True, func()))
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome.append((False, exc))
        finally:
            worker.back_to_pool()  # before done: the caller's next call finds this worker idle
            done.set()

    worker.jobs.put(run)
    if not done.wait(remaining):
        raise on_timeout()
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[return-value]
    raise value  # type: ignore[misc]


class _Worker:
    """A daemon thread that runs the store calls handed to it, one at a time, and goes back to the idle
    pool after each. Reused because starting a thread per call costs a few scheduler round trips, which
    on a busy machine is milliseconds per store call; one still stuck in an abandoned call is simply not
    idle, so the next call gets another worker."""

    def __init__(self) -> None:
        import queue  # with the first worker, not with the lookup path (start-up budget)

        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.generation = _workers.generation
        self.retired = False
        threading.Thread(target=self._loop, name="credpath-store-call", daemon=True).start()

    def _loop(self) -> None:
        while not self.retired:
            self.jobs.get()()

    def back_to_pool(self) -> None:
        with _workers.lock:
            if self.generation == _workers.generation and len(_workers.idle) < _MAX_IDLE_WORKERS:
                _workers.idle.append(self)
            else:
                self.retired = True


class _WorkerPool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.generation = 0


_MAX_IDLE_WORKERS = 4
_workers = _WorkerPool()


def _idle_worker() -> _Worker:
    with _workers.lock:
        if _workers.idle:
            return _workers.idle.pop()
    return _Worker()


def _forget_workers_after_fork() -> None:
    # A forked child (Airflow's task processes) has none of its parent's threads, and the pool's lock may
    # have been held by one of them at the fork: start afresh.
    _workers.lock = threading.Lock()
    _workers.idle = []
    _workers.generation += 1


os.register_at_fork(after_in_child=_forget_workers_after_fork)


class RetriesExhausted(Exception):
    """A store call failed with retryable errors until no try was left; ``error`` is the last one.

    ``attempts`` is how many tries were made; ``retry_after`` is set when the server asked for a wait that
    did not fit in the deadline (so it was not honoured), for the message.
    """

    def __init__(self, error: BaseException, attempts: int, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.retry_after = retry_after


def unwrap_retries(exc: BaseException, timeout: float) -> tuple[BaseException, str]:
    """The last error behind a :class:`RetriesExhausted`, and the words that say why retrying stopped
    (" after 3 attempt(s)", plus a Retry-After that did not fit); other errors pass through with ""."""
    if not isinstance(exc, RetriesExhausted):
        return exc, ""
    tries = f" after {exc.attempts} attempt(s)"
    if exc.retry_after is not None:
        tries += f" (Retry-After {exc.retry_after:g} s is beyond the {timeout:g} s deadline)"
    return exc.error, tries


def call_with_retries(
    func: Callable[[Deadline], T],
    deadline: Deadline,
    policy: RetryPolicy,
    *,
    classify: Callable[[BaseException], tuple[bool, float | None]],
    on_timeout: Callable[[int], BaseException],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``func(deadline)`` bounded by the deadline (:func:`call_with_deadline`), retrying what
    ``classify`` calls retryable.

    ``classify(exc)`` returns ``(retryable, retry_after)``. A permanent error propagates as it is; the
    deadline running out inside a try raises ``on_timeout(attempts)``; retryable errors until no try (or no
    time for the next wait) is left raise :class:`RetriesExhausted`. A ``Retry-After`` longer than the time
    left is not waited for: the call fails at once instead.
    """
    outcome = _retry(func, deadline, policy, classify, on_timeout, sleep, bounded=True)
    if not isinstance(outcome, _GaveUp):
        return outcome
    if outcome.error is None:
        raise on_timeout(0)
    raise RetriesExhausted(outcome.error, outcome.attempts, outcome.retry_after) from None
