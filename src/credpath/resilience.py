"""Failure containment for the search path: a circuit breaker per backend, and single-flight reads.

- :class:`CircuitBreaker`: after ``failures`` consecutive transient failures a backend fails fast (no network)
  for a cool-down that doubles on every failed probe (1 s, 2 s, 4 s ... capped at 30 s by default); then one
  caller is let through as a probe. A success closes the breaker and resets the cool-down. An answer that is
  not an outage (a hit, a miss, AccessDenied, a ConfigError) counts as a success: the store answered.
- :class:`SingleFlight`: concurrent calls for one key share one execution; the others wait for its result
  or its exception (as AWS's caching library holds one lock per secret).

Both are lock-free on their fast path (a closed breaker; a key nobody else is reading is one dict access).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from credpath.errors import CircuitOpen

__all__ = ["BreakerSettings", "CircuitBreaker", "SingleFlight"]


T = TypeVar("T")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerSettings:
    """``[circuit_breaker]`` in credpath.toml."""

    enabled: bool = True
    #: Consecutive transient failures that open the breaker. Three: one failed lookup may be bad luck (and
    #: already includes the backend's own retries); three in a row is an outage worth not hammering.
    failures: int = 3
    #: First cool-down in seconds; doubled after each failed probe, up to ``max_cool_down``.
    cool_down: float = 1.0
    max_cool_down: float = 30.0


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


class _Call:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """One execution per key at a time; concurrent callers of the same key share its outcome."""

    def __init__(self) -> None:
        self._calls: dict[Any, _Call] = {}
        self._lock = threading.Lock()
        #: Calls that waited for another caller's execution instead of running their own (for tests/bench).
        self.shared = 0

    def do(self, key: Any, func: Callable[..., T], *args: Any) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
            else:
                self.shared += 1
        if not leader:
            call.done.wait()  # the leader's store call is bounded by the backend's own deadline
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[no-any-return]
        try:
            call.result = func(*args)
            return call.result
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()

    def in_flight(self) -> int:
        return len(self._calls)
