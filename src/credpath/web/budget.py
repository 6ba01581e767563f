"""What keeps page loads off the paid stores, and the host check that keeps a rebinding page off the app.

- :class:`PageCache`: what a page shows (the inventory, an id's explain, the backends' checks) is built
  once and served for ``seconds``; the page says how old it is. A cached miss is served the same way, so
  reloading an unknown id costs no store request.
- :class:`RateLimiter`: a token bucket per client address over the page builds that reach the stores
  (cache misses); past it, the page is refused with 429 and ``Retry-After`` instead of asking the stores.
- :func:`host_allowed`: without a token, the standalone app answers only requests whose ``Host`` is a
  loopback name or address (or one given with ``--allow-host``). A page on another domain that rebinds
  its name to 127.0.0.1 sends its own name as ``Host`` and is refused.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = [
    "LOOPBACK_NAMES",
    "PageCache",
    "RateLimiter",
    "host_allowed",
    "host_name",
]

T = TypeVar("T")

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port, lower-cased (``[::1]:8750`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 else ""
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def host_allowed(header: str, extra: Iterable[str] = ()) -> bool:
    """True for a loopback name or address, or a name in ``extra`` (compared without port or case)."""
    name = host_name(header)
    if not name:
        return False
    if name in LOOPBACK_NAMES or name in {host_name(h) for h in extra}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class PageCache(Generic[T]):
    """``get(key, build)``: the value built at most once per ``seconds`` (one build at a time per key,
    so concurrent loads of a cold page make one set of store calls), with its age in seconds."""

    def __init__(
        self, seconds: float, *, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Any, tuple[float, T]] = OrderedDict()
        self._locks: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()

    def peek(self, key: Any) -> tuple[T, float] | None:
        """The fresh entry for ``key`` and its age, or None."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        age = self._clock() - entry[0]
        if age >= self.seconds:
            return None
        return entry[1], age

    def get(
        self, key: Any, build: Callable[[], T], admit: Callable[[], None] | None = None
    ) -> tuple[T, float]:
        """The cached value, or ``build()``'s (``admit()`` runs first and may raise to refuse the build)."""
        hit = self.peek(key)
        if hit is not None:
            return hit
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self.peek(key)  # built by the request we waited for
            if hit is not None:
                return hit
            if admit is not None:
                admit()
            value = build()
            if self.seconds > 0:
                with self._lock:
                    self._entries[key] = (self._clock(), value)
                    self._entries.move_to_end(key)
                    while len(self._entries) > self.max_entries:
                        old, _ = self._entries.popitem(last=False)
                        self._locks.pop(old, None)
            return value, 0.0


class RateLimited(Exception):
    """A client spent its store budget: retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many requests")
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per client: ``per_minute`` builds a minute, bursts up to ``burst``.
    ``per_minute <= 0`` turns it off."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: int | None = None,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, min(10, math.ceil(per_minute))))
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        """Spend one token for ``client`` or raise :class:`RateLimited`."""
        if self.rate <= 0:
            return
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                raise RateLimited((1.0 - tokens) / self.rate)
            self._buckets[client] = (tokens - 1.0, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
