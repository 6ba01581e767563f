"""Failure containment for the search path: a circuit breaker per backend, and single-flight reads.

- :class:`CircuitBreaker`: after ``failures`` consecutive transient failures a backend fails fast (no network)
  for a cool-down that doubles on every failed probe (1 s, 2 s, 4 s ... capped at 30 s by default); then one
  caller is let through as a probe. A success closes the breaker and resets the cool-down. An answer that is
  not an outage (a hit, a miss, AccessDenied, a ConfigError) counts as a success: the store answered.
- :class:`SingleFlight`: concurrent calls for one key share one execution; the others wait for its result
  or (a copy of) its exception, each no longer than its own deadline (as AWS's caching library holds one
  lock per secret). The search path and the Vault session (one login, one read per path) both use it.

Both are lock-free on their fast path (a closed breaker; a key nobody else is reading is one dict access).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from credpath._record import Frozen
from credpath.errors import CircuitOpen

if TYPE_CHECKING:
    from credpath._deadlines import Deadline

__all__ = ["BreakerSettings", "CircuitBreaker", "RefreshBackoff", "SingleFlight"]


T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class BreakerSettings(Frozen):
    """``[circuit_breaker]`` in credpath.toml. A record, not a dataclass: the CLI defines it at start-up
    (credpath._record says why)."""

    enabled: bool = True
    #: Consecutive transient failures that open the breaker. Three: one failed lookup may be bad luck (and
    #: already includes the backend's own retries); three in a row is an outage worth not hammering.
    failures: int = 3
    #: First cool-down in seconds; doubled after each failed probe, up to ``max_cool_down``.
    cool_down: float = 1.0
    max_cool_down: float = 30.0

    _fields = ("enabled", "failures", "cool_down", "max_cool_down")

    def __init__(
        self,
        enabled: bool = enabled,
        failures: int = failures,
        cool_down: float = cool_down,
        max_cool_down: float = max_cool_down,
    ) -> None:
        vars(self).update(
            enabled=enabled, failures=failures, cool_down=cool_down, max_cool_down=max_cool_down
        )


class CircuitBreaker:
    """Per-backend breaker; see the module docstring. ``clock`` is injectable for tests."""

    __slots__ = (
        "_lock",
        "clock",
        "cool_down",
        "failures",
        "name",
        "open_until",
        "opened",
        "rejected",
        "settings",
        "state",
    )

    def __init__(
        self, name: str, settings: BreakerSettings | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self.clock = clock
        self.state = CLOSED
        self.failures = 0  # consecutive
        self.cool_down = self.settings.cool_down
        self.open_until = 0.0
        self.opened = 0  # times the breaker opened (for explain/bench)
        self.rejected = 0  # calls refused without touching the store
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """True if a call may go to the store now (the caller then reports success or failure)."""
        if self.state == CLOSED:  # lock-free fast path
            return True
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self.clock() >= self.open_until:
                self.state = HALF_OPEN  # this caller is the one probe
                return True
            self.rejected += 1
            return False

    def success(self) -> None:
        if self.state == CLOSED and self.failures == 0:  # lock-free fast path
            return
        with self._lock:
            self.state = CLOSED
            self.failures = 0
            self.cool_down = self.settings.cool_down

    def failure(self) -> bool:
        """Record a transient failure; True if this one opened the breaker (log it once)."""
        if not self.settings.enabled:
            return False
        with self._lock:
            self.failures += 1
            if self.state == HALF_OPEN:  # the probe failed: wait longer
                self.cool_down = min(self.settings.max_cool_down, self.cool_down * 2)
            elif self.state == OPEN or self.failures < self.settings.failures:
                return False
            self.state = OPEN
            self.open_until = self.clock() + self.cool_down
            self.opened += 1
            return True

    def retry_in(self) -> float:
        return max(0.0, self.open_until - self.clock())

    def open_error(self, label: str) -> CircuitOpen:
        if self.state == HALF_OPEN:
            when = "a probe is in flight"
        else:
            when = f"next try in {self.retry_in():.1f} s"
        return CircuitOpen(
            f"{label}: failing fast after {self.failures} consecutive failure(s); {when} "
            "(circuit breaker open)",
            backend=self.name,
        )

    def describe(self) -> str:
        """Safe one-line state for ``explain`` and ``backends check``."""
        if not self.settings.enabled:
            return "off"
        if self.state == OPEN:
            return f"open ({self.failures} failures; next probe in {self.retry_in():.1f} s)"
        if self.state == HALF_OPEN:
            return "half-open (probe in flight)"
        return f"closed ({self.failures} recent failure(s))" if self.failures else "closed"


class RefreshBackoff:
    """When to ask a failing store again while its last good values are served (stale-if-error).

    Without it, a lookup whose value expired asks the dead store each time the breaker lets a probe
    through. After a failed refresh the store is not asked for a kept value for ``base`` seconds, doubled
    after each failure up to ``cap`` (AWS's caching library backs off each secret the same way); a
    successful call to the store ends it. Per backend: a dead store is dead for every id. It takes its
    numbers from ``[circuit_breaker]`` (``cool_down`` .. ``max_cool_down``), and is off with the breaker:
    ``enabled = false`` asks the store every time.
    """

    __slots__ = ("base", "cap", "clock", "enabled", "failures", "next_try")

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        enabled: bool = True,
    ) -> None:
        self.base, self.cap, self.clock, self.enabled = base, cap, clock, enabled
        self.failures = 0
        self.next_try = 0.0

    def waiting(self) -> float:
        """Seconds until the store may be asked again (0: now)."""
        if not self.failures:
            return 0.0
        return max(0.0, self.next_try - self.clock())

    def failed(self) -> float:
        """A refresh failed and a kept value was served: returns the wait before the next try."""
        if not self.enabled:
            return 0.0
        wait = min(self.cap, self.base * 2.0**self.failures)
        self.failures += 1
        self.next_try = self.clock() + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0


class _Flight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def _clone(exc: BaseException) -> BaseException:
    """A copy of an exception for another thread (each caller relabels or chains its own copy)."""
    try:
        return copy.copy(exc)
    except Exception:  # pragma: no cover - an exception type that cannot be copied
        return exc


class SingleFlight:
    """Concurrent calls with one key share one execution and its outcome, success or failure.

    A failure is handed to every waiter at once, each its own copy; the next call after it starts a new
    flight (failures are never cached). A waiter waits at most until its own deadline, if it has one.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        #: Calls that waited for another caller's execution instead of running their own (for tests/bench).
        self.shared = 0

    def run(
        self,
        key: Hashable,
        func: Callable[[], T],
        deadline: Deadline | None = None,
        on_timeout: Callable[[], BaseException] | None = None,
    ) -> T:
        """``func()``, or the outcome of the call with ``key`` already in flight. Without a ``deadline`` a
        waiter waits as long as the leader's call lasts (bounded by the leader's own store deadlines)."""
        with self._lock:
            flight = self._running.get(key)
            leader = flight is None
            if flight is None:
                flight = self._running[key] = _Flight()
            else:
                self.shared += 1
        if not leader:
            if not flight.done.wait(None if deadline is None else deadline.remaining()):
                raise on_timeout() if on_timeout is not None else TimeoutError("single-flight wait timed out")
            if flight.error is not None:
                raise _clone(flight.error) from None
            return flight.value  # type: ignore[no-any-return]
        try:
            flight.value = func()
            return flight.value  # type: ignore[no-any-return]
        except BaseException as exc:
            flight.error = _clone(exc)  # a pristine copy: the leader's caller may relabel the original
            raise
        finally:
            with self._lock:
                self._running.pop(key, None)
            flight.done.set()

    def do(self, key: Hashable, func: Callable[..., T], *args: Any) -> T:
        """``run`` without a deadline, for ``func(*args)``."""
        return self.run(key, lambda: func(*args))

    def in_flight(self) -> int:
        return len(self._running)
