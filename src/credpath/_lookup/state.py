"""What a search path holds: its backends (entries), the process tier, the shared tier, outage warnings."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from credpath import _reading as reading
from credpath._cache import CacheSettings, TTLCache
from credpath._lookup.model import MISS, Entry, Resolution
from credpath._masking import Masker, default_masker, install_log_masking
from credpath._resilience import BreakerSettings, CircuitBreaker, RefreshBackoff, SingleFlight
from credpath._settings import BackendSpec
from credpath.errors import ConfigError
from credpath.model import is_sensitive_name
from credpath.protocol import KINDS, Backend, BaseBackend, Kind, compile_lookup_pattern, enabled

if TYPE_CHECKING:
    from credpath._deadlines import Deadline
    from credpath._shared_cache import SharedEntry, SharedState

__all__ = ["FROM_SETTINGS", "LookupState", "SharedTierLike", "shared_tier_for"]

log = logging.getLogger("credpath.search_path")

CacheKey = tuple[Kind, str, str | None]
#: ``SearchPath(shared=...)`` not given: the shared tier is the one ``[cache] shared`` names, if any.
FROM_SETTINGS: Any = object()


class SharedTierLike(Protocol):
    """The shared second tier as the search path uses it (:class:`credpath._shared_cache.SharedTier`)."""

    def get(self, ckey: CacheKey) -> SharedEntry | None: ...
    def put(self, ckey: CacheKey, entry: SharedEntry) -> None: ...
    def invalidate(self, ckey: CacheKey) -> None: ...
    #: A lookup's deadline bounds the pause before a free lease and the wait for another's.
    def get_or_acquire(
        self, ckey: CacheKey, deadline: Deadline | None = None
    ) -> tuple[SharedEntry | None, bool | None]: ...
    def acquire(self, ckey: CacheKey) -> bool | None: ...
    def release(self, ckey: CacheKey) -> None: ...
    def wait(self, ckey: CacheKey, deadline: Deadline | None = None) -> tuple[SharedEntry | None, bool]: ...
    #: A store read makes this process one that takes free leases at once.
    def reading_store(self) -> None: ...
    def bound_wait(self, backends: Any) -> None: ...
    def state(self, namespace: str) -> SharedState: ...
    def count(self, name: str, n: int = 1) -> None: ...
    def flush_soon(self) -> None: ...
    def flush(self) -> None: ...
    def epoch(self) -> str | None: ...
    def invalidate_all(self) -> int: ...


class LookupState:
    """The state every part of a lookup reads; :class:`credpath._search_path.SearchPath` builds it."""

    breaker_settings: BreakerSettings
    cache: TTLCache
    masker: Masker
    mask_logs: bool
    #: The shared second tier, or None: from ``[cache] shared``.
    shared: SharedTierLike | None

    def __init__(self, breaker: BreakerSettings | None) -> None:
        self.breaker_settings = breaker or BreakerSettings()
        self.entries: list[Entry] = []
        #: Never-cached backends (env, files) ahead of each backend, and all of them (see add_backend).
        self._live_before: dict[str, tuple[Entry, ...]] = {}
        self._live_all: tuple[Entry, ...] = ()
        self._write_lock = threading.Lock()
        self._flight = SingleFlight()
        self._warned: set[tuple[Any, str]] = set()  # (cache key, what) warned once per outage episode
        self._teams: set[str | None] = {None}  # teams with cached entries: a write invalidates each
        #: When this process next looks at the shared tier's invalidation epoch (monotonic; inf: no tier),
        #: and the epoch it saw last (None: not looked yet). See credpath._lookup.rotation.
        self._epoch_next = math.inf
        self._epoch_seen: str | None = None
        #: (kind, key, team) -> when its last forced refresh read the store (monotonic).
        self._refreshed: dict[CacheKey, float] = {}
        #: Backends that cap values at the store's announced changes (capability "rotation_dates", on).
        self._capping: set[str] = set()

    def set_tiers(
        self,
        cache: CacheSettings | TTLCache | bool | None,
        masker: Masker | None,
        mask_logs: bool,
        shared: Any,
        backends: list[Any],
    ) -> None:
        """The process tier (settings, a TTLCache of its own, or on/off), the masker, and the shared tier:
        ``shared`` given (None: none), else as ``[cache] shared`` says (:data:`FROM_SETTINGS`)."""
        if isinstance(cache, TTLCache):
            self.cache = cache
        elif isinstance(cache, CacheSettings):
            self.cache = TTLCache(cache)
        else:
            self.cache = TTLCache(CacheSettings(enabled=bool(cache)))
        self._data = self.cache.entries()  # the hot path reads the cache's entries directly
        # An empty Masker is falsy (it has __len__): test for None, not truthiness.
        self.masker = masker if masker is not None else default_masker()
        self.mask_logs = mask_logs
        self.shared = None
        if shared is not FROM_SETTINGS:
            self.shared = shared
        elif self.cache.settings.shared and self.cache.settings.enabled:
            self.shared = shared_tier_for(self.cache.settings, backends)
        if self.shared is not None:
            # Another process's lock is waited for no longer than our own store read may take.
            self.shared.bound_wait([e.backend for e in self.entries])
            self._epoch_next = 0.0  # look at the invalidation epoch on the first lookup
        self.use_shared_state()

    def close(self) -> None:
        """Flush the shared tier's counters and close every backend."""
        if self.shared is not None:
            self.shared.flush()
        for entry in self.entries:
            if isinstance(entry.backend, BaseBackend):
                entry.backend.close()
            elif callable(close := getattr(entry.backend, "close", None)):  # a foreign object may have one
                close()

    def add_backend(self, item: Backend | tuple[str, Backend] | BackendSpec) -> None:
        backend: Backend
        if isinstance(item, BackendSpec):
            from credpath.registry import create_backend

            backend = create_backend(
                item.type, item.kwargs, setting=f"{item.origin or item.name} type", name=item.name
            )
            name, on_error, raw_patterns = item.name, item.on_error, item.lookup_patterns
        elif isinstance(item, tuple):
            name, backend = item
            on_error, raw_patterns = "skip", {}
        else:
            backend = item
            name = reading.name_of(backend)
            on_error, raw_patterns = "skip", {}
        if any(e.name == name for e in self.entries):
            raise ConfigError(f"duplicate backend name {name!r} in the search path")
        patterns: dict[Kind, Any] = {}
        cache_results = True
        if isinstance(backend, BaseBackend):
            backend.name = name
            label = backend.label
            patterns.update(backend.lookup_patterns)
            cache_results = type(backend).cache_results
        else:
            label = f"backend {name!r}"
        for kind in KINDS:
            if raw_patterns.get(kind) is not None:
                patterns[kind] = compile_lookup_pattern(raw_patterns[kind], f"{label}: {kind} lookup pattern")
        settings = self.breaker_settings
        self.entries.append(
            Entry(
                name=name,
                backend=backend,
                patterns=patterns,
                on_error=on_error,
                breaker=CircuitBreaker(name, settings),
                cache_results=bool(cache_results),
                label=label,
                refresh=RefreshBackoff(settings.cool_down, settings.max_cool_down, enabled=settings.enabled),
            )
        )
        # Never-cached backends (env, files) are asked live even when the cache answers: before the cached
        # source of a hit (an AIRFLOW_CONN_ exported later shadows it), and for a cached miss. So the cache
        # holds what the cached backends said, and those reads cost microseconds each.
        live: list[Entry] = []
        self._live_before = {}
        for existing in self.entries:
            self._live_before[existing.name] = tuple(live)
            if not existing.cache_results:
                live.append(existing)
        self._live_all = tuple(live)
        if enabled(backend, "rotation_dates"):
            self._capping.add(name)
        if cache_results and enabled(backend, "change_events"):
            cast(Any, backend).subscribe_changes(
                self.store_changed
            )  # declared: a BaseBackend or a foreign one

    def store_changed(
        self,
        source: str,
        ids: list[tuple[str, str]] | None,
        matches: Callable[[str, str], bool] | None,
        version: str | None,
    ) -> None:
        """A backend's change event (a Kubernetes watch): drop what the tiers hold of the changed ids,
        unless they already hold ``version``. The shared tier is invalidated only where its entry is not
        that version yet, so the first process told does it and the others find it done. ``ids`` None:
        the events of a gap were missed: this process's entries from ``source`` are dropped (the shared
        tier keeps its own, bounded by the TTL)."""
        found: set[CacheKey] = set()
        for ckey, item in list(self.cache.entries().items()):
            value = item[1]
            ours = value is MISS or value.source == source
            if ours and (ids is None or (matches is not None and matches(ckey[0], ckey[1]))):
                found.add(ckey)
        for kind, key in ids or ():
            for team in list(self._teams):
                found.add((kind, key, team))  # type: ignore[arg-type]
        for ckey in found:
            held = self.cache.get_stale(ckey)
            if held is not None and (version is None or held[0] is MISS or held[0].version != version):
                self.cache.invalidate(ckey)
            if ids is not None and self.shared is not None:
                entry = self.shared.get(ckey)
                if entry is not None and (version is None or entry.miss or entry.version != version):
                    self.shared.invalidate(ckey)
                    self.cache.invalidate(ckey)
        if found:
            log.debug("%s: the store reported a change: %d cached id(s) looked at", source, len(found))

    def use_shared_state(self) -> None:
        """Let the backends keep rediscovered facts (a KV version) in the shared tier."""
        if self.shared is None:
            return
        for entry in self.entries:
            if isinstance(entry.backend, BaseBackend):
                entry.backend.use_shared_state(self.shared.state(entry.name))

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def _entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise ConfigError(f"no backend named {name!r} in the search path (have: {', '.join(self.names)})")

    def register_secrets(self, kind: Kind, key: str, value: Any) -> None:
        if not self.mask_logs:
            return
        if kind == "connection":
            secrets = value.secret_values()
        elif is_sensitive_name(key):
            secrets = [value]
        else:
            return
        if secrets:
            install_log_masking()
            self.masker.add_all(secrets)

    # --- writing the two tiers ----------------------------------------------------------------------

    def put(self, ckey: CacheKey, value: Any, *, miss: bool = False) -> None:
        """Cache an answer in the process tier and publish it to the shared tier with the same times."""
        if not miss and value.source in self._capping and value.valid_until is None and value.version is None:
            # A batch or prefix read of a backend that caps values at the store's rotation dates: the batch
            # answer has no date (BatchGetSecretValue carries none), so the value is served, not cached.
            return
        until = None
        if not miss and value.valid_until is not None:
            # Capped at the time the store said it changes (wall clock): from then on no tier serves it,
            # stale-if-error included. Written once, capped: no reader ever sees it uncapped.
            until = value.valid_until + (time.monotonic() - time.time())
        times = self.cache.put(ckey, value, miss=miss, until=until)
        if ckey[2] not in self._teams:
            self._teams.add(ckey[2])
        if times is not None:
            self.publish(ckey, value, times, miss=miss)

    def publish(
        self, ckey: CacheKey, value: Any, times: tuple[float, float, float], *, miss: bool = False
    ) -> None:
        """Publish an answer the process tier took to the shared tier, with the process tier's times."""
        if self.shared is None:
            return
        from credpath._shared_cache import SharedEntry

        offset = time.time() - time.monotonic()  # the shared tier keeps wall-clock times (other nodes)
        expiry, stored_at, keep_until = times
        self.shared.put(
            ckey,
            SharedEntry(
                kind=ckey[0],
                value=None if miss else value.value,
                source=None if miss else value.source,
                miss=miss,
                stored_at=stored_at + offset,
                fresh_until=expiry + offset,
                keep_until=keep_until + offset,
                version=None if miss else value.version,
                valid_until=None if miss else value.valid_until,
            ),
        )

    def adopt(self, ckey: CacheKey, entry: SharedEntry) -> Any:
        """Put a shared entry in the process tier with its own (wall-clock) times; returns the value."""
        value = (
            MISS if entry.miss else Resolution(entry.value, entry.source, entry.version, entry.valid_until)  # type: ignore[arg-type]
        )
        offset = time.monotonic() - time.time()
        self.cache.put_entry(
            ckey, value, entry.fresh_until + offset, entry.stored_at + offset, entry.keep_until + offset
        )
        if ckey[2] not in self._teams:
            self._teams.add(ckey[2])
        if value is not MISS:
            self.register_secrets(ckey[0], ckey[1], value.value)
        return value

    def invalidate(self, kind: Kind, key: str) -> None:
        """After a write or a rotation: forget ``key`` in both tiers, for every team; with a shared tier,
        every process of the deployment drops it within a second (credpath._lookup.rotation)."""
        for team in list(self._teams):
            self.cache.invalidate((kind, key, team))
            if self.shared is not None:
                self.shared.invalidate((kind, key, team))
            self.episode_over((kind, key, team))

    # --- warnings once per outage episode (the error policy's) --------------------------------------

    def warn_once(self, ckey: Any, what: str, message: str, *args: Any) -> None:
        marker = (ckey, what)
        if marker not in self._warned:
            self._warned.add(marker)
            log.warning(message, *args)

    def episode_over(self, ckey: Any) -> None:
        if self._warned:
            self._warned.discard((ckey, "stale"))
            self._warned.discard((ckey, "fall-through"))


def shared_tier_for(settings: CacheSettings, backends: list[Any]) -> SharedTierLike:
    """The shared tier for ``[cache] shared`` (its store opened lazily: no connection here)."""
    import os

    from credpath._settings import credpath_home
    from credpath._shared_cache import SharedTier, normalize_shared, open_store, resolve_keys, scope_of

    # CacheSettings built in code (the settings builder hands its resolved tier over): resolve as config does.
    shared = normalize_shared(settings.shared or "", credpath_home())
    keys = resolve_keys(None, os.environ, credpath_home(), file_tier=shared.startswith("file:"))
    return SharedTier(open_store(shared), keys, scope_of(backends), lease=settings.shared_lease)
