"""Per-process TTL cache for resolved values, keeping expired values for stale-if-error.

A hit is one dict lookup and one monotonic-clock comparison: no IPC round trip (Airflow's cache goes through a
multiprocessing manager), no lock and no deep copy (AWS's caching library takes both). Values are immutable
(frozen Connection, str), so no copy is needed on a hit. Measured figures: bench/RESULTS.md.

An entry is ``(expiry, value, stored_at, keep_until)``. After ``expiry`` it is no longer served as fresh, but
a hit (not a miss) is kept until ``keep_until = expiry + stale_if_error`` so that the search path can serve
it when the refresh fails with a transient error (:meth:`TTLCache.get_stale`). ``max_size`` bounds fresh and
kept entries together.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from typing import Any

from credpath._record import Frozen

__all__ = ["ABSENT", "DEFAULT_STALE_IF_ERROR", "CacheSettings", "Entry", "TTLCache"]

ABSENT: Any = object()
#: A cache entry: ``(expiry, value, stored_at, keep_until)``, monotonic times.
Entry = tuple[float, Any, float, float]

#: Default stale-if-error window. One hour: twelve default TTLs, long enough to ride out the outages that
#: are common in practice (a Vault leader election or seal, a regional API incident, a maintenance window),
#: short enough that a credential rotated during a long outage is not served for days. AWS's caching library
#: serves the last value without limit; RFC 5861 leaves the window to the operator: set 0 to disable.
DEFAULT_STALE_IF_ERROR = 3600.0


class CacheSettings(Frozen):
    # The defaults are class attributes too, as a dataclass's are (``CacheSettings.ttl``).
    enabled: bool = True
    ttl: float = 300.0
    miss_ttl: float = 60.0
    max_size: int = 10_000
    #: Fraction of the TTL added at random, so a fleet of workers does not refresh in lock step.
    jitter: float = 0.1
    #: Seconds after expiry during which a value may still be served if its backend fails (0: never).
    stale_if_error: float = DEFAULT_STALE_IF_ERROR
    #: The shared second tier (:mod:`credpath._shared_cache`), normalized: "file:/abs/path" or a Redis URL;
    #: None for none. Its keys are not here: the settings builder resolves them once (``_settings``), and a
    #: search path built in code with only this reads them as the config would.
    shared: str | None = None
    #: Lease of the cross-process single-flight lock: a waiter takes over from a holder this much late.
    shared_lease: float = 5.0
    #: Inside Airflow: a task that fails drops the ids it read from every tier, so its retry reads the
    #: stores (the credential may have been rotated under it). False: the retry may be served the cache.
    invalidate_failed_tasks: bool = True

    _fields = (
        "enabled", "ttl", "miss_ttl", "max_size", "jitter", "stale_if_error", "shared", "shared_lease",
        "invalidate_failed_tasks",
    )  # fmt: skip
    _hidden = frozenset({"shared"})  # a Redis URL may hold a password

    def __init__(
        self,
        enabled: bool = enabled,
        ttl: float = ttl,
        miss_ttl: float = miss_ttl,
        max_size: int = max_size,
        jitter: float = jitter,
        stale_if_error: float = stale_if_error,
        shared: str | None = shared,
        shared_lease: float = shared_lease,
        invalidate_failed_tasks: bool = invalidate_failed_tasks,
    ) -> None:
        vars(self).update(
            enabled=enabled,
            ttl=ttl,
            miss_ttl=miss_ttl,
            max_size=max_size,
            jitter=jitter,
            stale_if_error=stale_if_error,
            shared=shared,
            shared_lease=shared_lease,
            invalidate_failed_tasks=invalidate_failed_tasks,
        )


class TTLCache:
    """Bounded TTL cache; the oldest insertion is evicted first when full."""

    __slots__ = ("_data", "_lock", "settings")

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()
        self._data: dict[Any, Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The fresh value, else ABSENT (an expired entry stays for :meth:`get_stale` in its window)."""
        item = self._data.get(key)
        if item is None:
            return ABSENT
        now = time.monotonic()
        if item[0] < now:
            if item[3] < now:
                self._data.pop(key, None)
            return ABSENT
        return item[1]

    def get_stale(self, key: Any) -> tuple[Any, float] | None:
        """``(value, age in seconds)`` of a hit kept for stale-if-error (fresh or expired), else None."""
        item = self._data.get(key)
        if item is None:
            return None
        now = time.monotonic()
        if item[3] < now:
            return None
        return item[1], now - item[2]

    def put(
        self, key: Any, value: Any, *, miss: bool = False, until: float | None = None
    ) -> tuple[float, float, float] | None:
        """Store ``value``; returns its ``(expiry, stored_at, keep_until)`` (monotonic), None if not kept
        (the shared tier stores the same times, so both tiers expire together). ``until`` (monotonic) caps
        both the fresh and the stale-if-error lifetime: the store said the value changes then."""
        settings = self.settings
        if not settings.enabled:
            return None
        ttl = settings.miss_ttl if miss else settings.ttl
        stale = 0.0 if miss else settings.stale_if_error  # a miss is no "last good value"
        if ttl <= 0 and stale <= 0:
            return None
        now = time.monotonic()
        expiry = now + max(0.0, ttl) * (1.0 + settings.jitter * random.random())
        if ttl <= 0:
            expiry = now - 1.0  # never fresh; kept only for stale-if-error
        keep_until = expiry + stale
        if until is not None:
            expiry, keep_until = min(expiry, until), min(keep_until, until)
        self.put_entry(key, value, expiry, now, keep_until)
        return expiry, now, keep_until

    def put_entry(self, key: Any, value: Any, expiry: float, stored_at: float, keep_until: float) -> None:
        """Store with given monotonic times (an entry read from the shared tier keeps its own)."""
        settings = self.settings
        if not settings.enabled:
            return
        with self._lock:
            data = self._data
            data.pop(key, None)  # re-insert at the end: eviction order follows freshness
            data[key] = (expiry, value, stored_at, keep_until)
            while len(data) > settings.max_size:
                try:  # get() pops expired entries without the lock: tolerate a concurrent removal
                    data.pop(next(iter(data)), None)
                except (RuntimeError, StopIteration):
                    continue

    def entries(self) -> Mapping[Any, Entry]:
        """The live entries, ``key -> (expiry, value, stored_at, keep_until)``, read-only: for a caller's
        inlined hit check (the search path's hot path: one dict lookup, no method call); write with
        :meth:`put`/:meth:`put_entry`, never through this mapping."""
        return self._data

    def invalidate(self, key: Any) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
