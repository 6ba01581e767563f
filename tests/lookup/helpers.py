"""Helpers of the lookup tests (not fixtures: those are in conftest.py)."""

from __future__ import annotations

import time as real_time
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from credpath._cache import CacheSettings
from credpath._lookup import trace
from credpath._lookup.trace import VersionCheck
from credpath._masking import Masker
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedTier, scope_of
from tests.memory_backend import (
    BatchMemoryBackend,
    MemoryBackend,
    PrefixMemoryBackend,
    Unreachable,
)

URI_A = "postgres://alice:pw-s3cr3t-a@db-a:5432/app"
URI_B = "postgres://bob:pw-s3cr3t-b@db-b:5432/app"
KEY = Fernet.generate_key()
VALUE = "s3cr3t-shared-1"
WALL_OFFSET = 1_700_000_000.0
TTL, STALE = 300.0, 600.0
CKEY = ("variable", "k", None)


def path(*backends, **kwargs) -> SearchPath:
    return SearchPath([(f"b{i}", b) for i, b in enumerate(backends)], **kwargs)


def no_breaker():
    from credpath._resilience import BreakerSettings

    return BreakerSettings(enabled=False)


def denied_error():
    from credpath.errors import AccessDenied

    return AccessDenied("backend 'b0' (Memory): permission denied (policy)", backend="b0")


def expired_cache(**kwargs):
    # ttl=0: every lookup refreshes, and the last good value is kept for stale-if-error (no sleeping)
    return CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, **kwargs)


def quiet_path(*backends, **kwargs) -> SearchPath:
    kwargs.setdefault("breaker", no_breaker())
    return SearchPath([(f"b{i}", b) for i, b in enumerate(backends)], **kwargs)


class OneBadValue:
    """Mixin: the value of id "bad" cannot be decoded (a transient per-id failure, e.g. a decrypt call)."""

    def deserialize_connection(self, conn_id, value):
        if conn_id == "bad":
            raise Unreachable(f"{self.label}: cannot decrypt the value of {conn_id!r}")
        return super().deserialize_connection(conn_id, value)


class BadValueBatch(OneBadValue, BatchMemoryBackend):
    pass


class BadValuePrefix(OneBadValue, PrefixMemoryBackend):
    pass


class Clock:
    """Wall and monotonic clocks that move only when told to; ``sleep`` moves them and runs a hook once
    (what another process does while this one waits)."""

    def __init__(self) -> None:
        self.mono = 50_000.0
        self.on_sleep: Any = None

    def time(self) -> float:
        return self.mono + WALL_OFFSET

    def monotonic(self) -> float:
        return self.mono

    def perf_counter(self) -> float:
        return real_time.perf_counter()

    def sleep(self, seconds: float) -> None:
        self.mono += seconds
        hook, self.on_sleep = self.on_sleep, None
        if hook is not None:
            hook()

    def advance(self, seconds: float) -> None:
        self.mono += seconds


def shared_settings(**kw: Any) -> CacheSettings:
    return CacheSettings(ttl=TTL, miss_ttl=60.0, jitter=0.0, stale_if_error=STALE, **kw)


class Node:
    """One "process": a SearchPath with backend "m" (and optional others) over the shared file."""

    def __init__(self, db: Path, *, before: Any = None, after: Any = None, key: bytes = KEY) -> None:
        self.backend = MemoryBackend(variables={"k": VALUE, "api_password": VALUE})
        items: list[tuple[str, Any]] = []
        if before is not None:
            items.append(("u", before))
        items.append(("m", self.backend))
        if after is not None:
            items.append(("u", after))
        self.tier = SharedTier(FileStore(db), [key], scope_of(items), lease=5.0)
        self.path = SearchPath(items, cache=shared_settings(), shared=self.tier, masker=Masker())

    def stats(self) -> dict[str, int]:
        """The tier's counters, every node's (one file), after publishing this node's."""
        self.tier.flush()
        return self.tier.stats()

    @property
    def reads(self) -> int:
        return len(self.backend.calls)


class StateBackend(MemoryBackend):
    def use_shared_state(self, state: Any) -> None:
        self.state = state


def warmed_pair(db: Path) -> tuple[Node, Node]:
    """Two nodes on one shared tier, the first of which has read "k" (and published it)."""
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    return a, b


def release_when_waiting(sp: SearchPath, store: Any, threads: list[Any], waiters: int) -> None:
    """Start ``threads`` against a gated store, open the gate once ``waiters`` of them wait on the first
    one's read (bounded), and join them."""
    for t in threads:
        t.start()
    assert store.entered.wait(10)
    for _ in range(1000):
        if sp._flight.shared == waiters:
            break
        real_time.sleep(0.005)
    store.gate.set()
    for t in threads:
        t.join(10)


TRIES = 3


class VersionedBackend(MemoryBackend):
    """A store that reports each value's version, answers "is version v still current?" without the value,
    and retries a failed request itself (up to TRIES) unless the lookup allows one try only."""

    capabilities = MemoryBackend.capabilities | {"version_check"}

    def __init__(self, *, version_check: bool = True, **kwargs: Any) -> None:
        super().__init__(variables={"k": "s3cr3t-v1"}, **kwargs)
        self.version_check = version_check
        self.versions = {"k": "v1"}
        self.checks: list[str] = []
        self.next_change: float | None = None
        self.check_fails = False

    def get_variable(self, key: str) -> str | None:
        for attempt in range(TRIES if trace.retries_allowed() else 1):
            try:
                value = super().get_variable(key)
            except Unreachable:
                if attempt + 1 >= (TRIES if trace.retries_allowed() else 1):
                    raise
                continue
            if value is not None:
                trace.note_version(self.versions.get(key))
            return value
        return None  # pragma: no cover

    def check_version(self, kind: str, key: str, team_name: str | None, version: str) -> VersionCheck:
        self.checks.append(version)
        if self.check_fails:
            raise Unreachable("b0: metadata request failed")
        return VersionCheck(self.versions.get(key) == version, self.next_change)

    @property
    def reads(self) -> int:
        return sum(1 for name, _ in self.calls if name == "get_variable")
