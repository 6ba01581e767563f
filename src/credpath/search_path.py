"""The search path: ordered backends, lookup patterns, error policy, cache, provenance, prefetch, writes.

Resilience (see :mod:`credpath.resilience`): each backend has a circuit breaker; concurrent lookups of one
key share one read (single-flight); a value whose refresh fails with a transient error is served stale for
up to ``[cache] stale_if_error`` seconds. The error policy is written once, in :meth:`SearchPath._failure`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import monotonic as _monotonic
from typing import Any

from credpath import metrics as _metrics
from credpath import reading
from credpath.cache import ABSENT, CacheSettings, TTLCache
from credpath.config import BackendSpec, Settings, load_settings
from credpath.errors import (
    AccessDenied,
    BackendError,
    BackendUnavailable,
    CircuitOpen,
    ConfigError,
    NotFound,
    ReadOnlyBackend,
    safe_reason,
)
from credpath.masking import Masker, default_masker, install_log_masking
from credpath.model import Connection, is_sensitive_name
from credpath.protocol import (
    KINDS,
    Backend,
    BaseBackend,
    Kind,
    Serialization,
    accepts_team_name,
    compile_lookup_pattern,
    supports,
)
from credpath.reading import as_connection, read_connection  # noqa: F401  (the reader owns them)
from credpath.resilience import BreakerSettings, CircuitBreaker, SingleFlight

__all__ = [
    "Attempt",
    "Entry",
    "Explanation",
    "Listing",
    "PrefetchReport",
    "Resolution",
    "SearchPath",
]

log = logging.getLogger("credpath.search_path")

_MISS = object()  # cached "nothing in the path has it"
_UNSET: Any = object()

_OPERATIONS = {
    "set_connection": "write connections",
    "set_variable": "write variables",
    "delete_connection": "delete connections",
    "delete_variable": "delete variables",
}


@dataclass(frozen=True)
class Resolution:
    """A resolved value and the name of the backend that served it."""

    value: Any
    source: str


@dataclass
class Attempt:
    backend: str
    #: "hit" | "miss" | "stale" | "error" | "skipped (pattern)" | "not tried"
    outcome: str
    #: Lookup time, one-time start-up excluded.
    seconds: float = 0.0
    detail: str = ""
    #: One-time start-up (``backend.prepare()``: importing the client, building the session), timed apart.
    startup_seconds: float = 0.0
    #: The backend's circuit breaker before the call ("closed", "open (...)", "half-open (...)").
    breaker: str = ""


@dataclass
class Explanation:
    kind: Kind
    key: str
    source: str | None
    attempts: list[Attempt] = field(default_factory=list)
    cached: bool = False
    team_name: str | None = None
    #: The source's refresh failed and its last good value was served (stale-if-error); age in seconds.
    stale: bool = False
    stale_age: float | None = None
    #: Backends that failed (transiently) during this resolution, in search order.
    failed: list[str] = field(default_factory=list)
    #: Which tier served the answer: "process" (in-process cache), "shared" (the shared tier), "store"
    #: (the backends were asked) or "stale" (a failed refresh; the last good value was served).
    tier: str = "store"

    @property
    def found(self) -> bool:
        return self.source is not None

    @property
    def unavailable(self) -> bool:
        """Nothing found and a backend failed: a lookup raises BackendUnavailable, not NotFound."""
        return self.source is None and bool(self.failed)

    @property
    def fell_through(self) -> bool:
        """Served by a later backend because an earlier one failed (Airflow's fall-through)."""
        return self.found and not self.stale and bool(self.failed)


@dataclass
class Entry:
    name: str
    backend: Backend
    patterns: dict[Kind, Any]
    on_error: str = "skip"
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(""))
    #: False for backends whose answers must never come from the cache (env, files).
    cache_results: bool = True
    label: str = ""

    def wants(self, kind: Kind, key: str) -> bool:
        pattern = self.patterns.get(kind)
        return pattern is None or pattern.match(key) is not None


@dataclass
class PrefetchReport:
    requested: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0


class Listing(tuple):  # type: ignore[type-arg]
    """``(found, cannot_list)`` as :meth:`SearchPath.list_ids` always returned, plus ``failed``.

    ``found`` maps id -> names of the backends holding it (search order); ``cannot_list`` names the backends
    without a listing capability; ``failed`` maps the name of each backend that failed to list to a safe
    reason (its ids are missing from ``found``: the listing is incomplete).
    """

    found: dict[str, list[str]]
    cannot_list: list[str]
    failed: dict[str, str]

    def __new__(cls, found: dict[str, list[str]], cannot_list: list[str], failed: dict[str, str]) -> Listing:
        self = super().__new__(cls, (found, cannot_list))
        self.found, self.cannot_list, self.failed = found, cannot_list, failed
        return self


class SearchPath:
    """Resolve connections, variables and config through backends in order; the first hit wins."""

    def __init__(
        self,
        backends: Iterable[Backend | tuple[str, Backend] | BackendSpec] = (),
        *,
        cache: CacheSettings | TTLCache | bool | None = True,
        masker: Masker | None = None,
        mask_logs: bool = True,
        breaker: BreakerSettings | None = None,
        shared: Any = _UNSET,
    ) -> None:
        self.breaker_settings = breaker or BreakerSettings()
        self.entries: list[Entry] = []
        self._live_before: dict[str, tuple[Entry, ...]] = {}
        self._live_all: tuple[Entry, ...] = ()
        backends = list(backends)
        for item in backends:
            self._add(item)
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
        self._write_lock = threading.Lock()
        self._flight = SingleFlight()
        self._warned: set[tuple[Any, str]] = set()  # (cache key, what) warned once per outage episode
        self._teams: set[str | None] = {None}  # teams with cached entries: a write invalidates each
        #: The shared second tier (credpath.shared_cache.SharedTier), or None: from ``[cache] shared``.
        self.shared: Any = None
        if shared is not _UNSET:
            self.shared = shared
        elif self.cache.settings.shared and self.cache.settings.enabled:
            self.shared = _shared_tier(self.cache.settings, backends, [e.backend for e in self.entries])
        for entry in self.entries if hasattr(self.shared, "state") else ():  # issue 14.4: shared facts
            if isinstance(entry.backend, BaseBackend):
                entry.backend.use_shared_state(self.shared.state(entry.name))

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        *,
        backend_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> SearchPath:
        settings = load_settings(path, env)
        return cls.from_settings(settings, backend_kwargs=backend_kwargs)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        backend_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> SearchPath:
        """The configured search path; ``backend_kwargs`` ({backend name: {kwarg: value}}) overrides
        configured backends' kwargs: how a CLI flag that is a store setting (``--on-deleted``) builds the
        backend with it."""
        kwargs.setdefault("breaker", settings.breaker)
        specs = list(settings.backends)
        if backend_kwargs:
            names = [spec.name for spec in specs]
            unknown = sorted(set(backend_kwargs) - set(names))
            if unknown:
                raise ConfigError(
                    f"no backend named {unknown[0]!r} in the search path (have: {', '.join(names)})"
                )
            specs = [
                replace(spec, kwargs={**spec.kwargs, **backend_kwargs[spec.name]})
                if spec.name in backend_kwargs
                else spec
                for spec in specs
            ]
        return cls(specs, cache=settings.cache, **kwargs)

    def _add(self, item: Backend | tuple[str, Backend] | BackendSpec) -> None:
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
        self.entries.append(
            Entry(
                name=name,
                backend=backend,
                patterns=patterns,
                on_error=on_error,
                breaker=CircuitBreaker(name, self.breaker_settings),
                cache_results=bool(cache_results),
                label=label,
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

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def backend(self, name: str) -> Backend:
        return self._entry(name).backend

    def _entry(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise ConfigError(f"no backend named {name!r} in the search path (have: {', '.join(self.names)})")

    def breaker_state(self, name: str) -> str:
        """The circuit breaker of backend ``name``, as a safe one-line description."""
        return self._entry(name).breaker.describe()

    def close(self) -> None:
        if self.shared is not None:
            self.shared.flush()
        for entry in self.entries:
            if isinstance(entry.backend, BaseBackend):
                entry.backend.close()
            elif callable(close := getattr(entry.backend, "close", None)):  # a foreign object may have one
                close()

    # --- reads -------------------------------------------------------------------------------------

    def get_connection(self, conn_id: str, *, team_name: str | None = None) -> Connection:
        """The connection ``conn_id`` from the first backend that has it, in search-path order.

        A fresh cached answer costs no store call (the cache is keyed by kind, id and ``team_name``; misses
        are cached for ``[cache] miss_ttl``). ``team_name`` is the caller's team (Airflow 3.2+ multi-team);
        it goes only to backends whose reads accept it. Raises :class:`NotFound` (every backend answered,
        none has it), :class:`BackendUnavailable` (nothing found and a backend failed), :class:`AccessDenied`
        (a store refused the caller: authoritative, no fall-through) or :class:`ConfigError` (a wrong setting
        or a missing client library).
        """
        item = self._data.get(("connection", conn_id, team_name))  # inlined cache hit: the hot path
        if (
            item is not None
            and item[0] >= _monotonic()
            and item[1] is not _MISS
            and not self._live_before[item[1].source]
        ):
            return item[1].value
        resolution = self.lookup("connection", conn_id, team_name=team_name)
        if resolution is None:
            raise NotFound("connection", conn_id)
        return resolution.value

    def get_variable(
        self, key: str, default: Any = _UNSET, *, deserialize_json: bool = False, team_name: str | None = None
    ) -> Any:
        """The value of ``key`` (parsed as JSON with ``deserialize_json=True``); ``default`` if no backend
        has it, and without a default a miss raises :class:`NotFound`.

        ``default`` stands in for a missing variable, not for an outage: if nothing is found and a backend
        failed, :class:`BackendUnavailable` is raised even when a default is given.
        """
        resolution = self.lookup("variable", key, team_name=team_name)
        if resolution is None:
            if default is _UNSET:
                raise NotFound("variable", key)
            return default
        if deserialize_json:
            from credpath.model import Variable

            return Variable(key, resolution.value).deserialize()
        return resolution.value

    def get_config(self, key: str, default: Any = _UNSET, *, team_name: str | None = None) -> Any:
        """The Airflow config value ``key`` from the backends' config prefixes; ``default`` and errors as for
        :meth:`get_variable`, without JSON parsing."""
        resolution = self.lookup("config", key, team_name=team_name)
        if resolution is None:
            if default is _UNSET:
                raise NotFound("config", key)
            return default
        return resolution.value

    def get_conn_value(self, conn_id: str, *, team_name: str | None = None) -> str | None:
        """Airflow's ``get_conn_value``: the connection's URI, or None if no backend has it; other errors
        as for :meth:`get_connection`."""
        resolution = self.lookup("connection", conn_id, team_name=team_name)
        return None if resolution is None else resolution.value.get_uri()

    def lookup(self, kind: Kind, key: str, *, team_name: str | None = None) -> Resolution | None:
        """Resolve through cache then backends; ``None`` when every backend asked answered "not here".

        Raises :class:`BackendUnavailable` when nothing was found and a backend failed, and lets
        AccessDenied and ConfigError through (see :meth:`_failure`). Concurrent calls for one
        ``(kind, key, team_name)`` share one resolution (single-flight).
        """
        ckey = (kind, key, team_name)
        cached = self.cache.get(ckey)
        if cached is not ABSENT:
            if self.shared is not None:
                self.shared.count("process_hits")
            live = self._live_all if cached is _MISS else self._live_before.get(cached.source, ())
            if live:
                return self._ask_live(live, ckey, cached)
            return None if cached is _MISS else cached
        return self._flight.do(ckey, self._lookup_once, ckey)

    def _ask_live(self, live: tuple[Entry, ...], ckey: tuple[Kind, str, str | None], cached: Any) -> Any:
        """The first never-cached backend ahead of the cached answer that has ``ckey``, else the cached
        answer. A failing live backend sends the lookup down the whole path (one error policy)."""
        kind, key, team = ckey
        for entry in live:
            if not entry.wants(kind, key):
                continue
            try:
                value = self._read(entry, kind, key, team)
            except Exception:
                return self._resolve(ckey, None)
            if value is not None:
                self._register_secrets(kind, key, value)
                return Resolution(value, entry.name)
        return None if cached is _MISS else cached

    def _lookup_once(self, ckey: tuple[Kind, str, str | None]) -> Resolution | None:
        cached = self.cache.get(ckey)  # a flight that ended just before this one began may have filled it
        if cached is not ABSENT:
            live = self._live_all if cached is _MISS else self._live_before.get(cached.source, ())
            return self._ask_live(live, ckey, cached) if live else (None if cached is _MISS else cached)
        if self.shared is not None:
            return self._lookup_shared(ckey)
        return self._resolve(ckey, None)

    # --- the shared tier ---------------------------------------------------------------------------

    def _lookup_shared(self, ckey: tuple[Kind, str, str | None]) -> Resolution | None:
        """Process tier missed: the shared tier's fresh entry, else one store read across processes.

        A miss takes the key's lock (lease ``[cache] shared_lease``); other processes wait for the
        holder's entry, and take over if its lease runs out. An expired entry still in its stale window
        is kept in this process, so a failed refresh serves it (stale-if-error across processes). Any
        failure of the tier is a miss (logged once by the tier): the stores are asked directly.
        """
        shared = self.shared
        entry = shared.get(ckey)
        if entry is not None:
            if entry.fresh(time.time()):
                return self._serve_shared(ckey, entry)
            self._adopt(ckey, entry)  # expired: this process's last good value for stale-if-error
        shared.count("shared_misses")
        held = shared.acquire(ckey)
        if held:
            entry = shared.get(ckey)  # another process may have written it and let go since our look
            if entry is not None and entry.fresh(time.time()):
                shared.release(ckey)
                return self._serve_shared(ckey, entry)
        elif held is False:
            entry, held = shared.wait(ckey)
            if entry is not None:
                return self._serve_shared(ckey, entry)
        try:
            shared.count("store_reads")
            return self._resolve(ckey, None)
        finally:
            if held:
                shared.release(ckey)
                shared.flush()  # a store read is slow anyway: publish this process's counters now

    def _adopt(self, ckey: tuple[Kind, str, str | None], entry: Any) -> Any:
        """Put a shared entry in the process tier with its own (wall-clock) times; returns the value."""
        value = _MISS if entry.miss else Resolution(entry.value, entry.source)
        offset = _monotonic() - time.time()
        self.cache.put_entry(
            ckey, value, entry.fresh_until + offset, entry.stored_at + offset, entry.keep_until + offset
        )
        if ckey[2] not in self._teams:
            self._teams.add(ckey[2])
        if value is not _MISS:
            self._register_secrets(ckey[0], ckey[1], value.value)
        return value

    def _serve_shared(self, ckey: tuple[Kind, str, str | None], entry: Any) -> Resolution | None:
        self.shared.count("shared_hits")
        self.shared.flush_soon()
        if _metrics.on:
            _metrics.note_tier("shared")  # /metrics counts this lookup under tier "shared"
        value = self._adopt(ckey, entry)
        if value is not _MISS and value.source not in self._live_before:
            return self._resolve(ckey, None)  # a backend this path does not have: not ours to serve
        live = self._live_all if value is _MISS else self._live_before[value.source]
        if live:
            return self._ask_live(live, ckey, value)  # type: ignore[no-any-return]
        log.debug(
            "%s from the shared cache (backend %r)", _what(*ckey), None if value is _MISS else value.source
        )
        return None if value is _MISS else value  # type: ignore[no-any-return]

    def explain(
        self, kind: Kind, key: str, *, use_cache: bool = False, team_name: str | None = None
    ) -> Explanation:
        """Which backend serves ``key``, and the outcome, lookup time, start-up time and breaker state of
        every backend tried. An outage is reported (``failed``/``unavailable``), not raised."""
        explanation = Explanation(kind=kind, key=key, source=None, team_name=team_name)
        ckey = (kind, key, team_name)
        if use_cache:
            cached = self.cache.get(ckey)
            tier = "process"
            if cached is ABSENT and self.shared is not None:
                entry = self.shared.get(ckey)
                if entry is not None and entry.fresh(time.time()):
                    cached, tier = (_MISS if entry.miss else Resolution(entry.value, entry.source)), "shared"
            if cached is not ABSENT:
                explanation.cached = True
                explanation.tier = tier
                explanation.source = None if cached is _MISS else cached.source
                return explanation
        if self.shared is not None:
            self.shared.count("store_reads")
        try:
            self._resolve(ckey, explanation)
        except BackendUnavailable:
            pass  # explanation.failed says which
        finally:
            if self.shared is not None:
                self.shared.flush()
        return explanation

    def _resolve(
        self, ckey: tuple[Kind, str, str | None], explanation: Explanation | None
    ) -> Resolution | None:
        kind, key, team = ckey
        what = _what(kind, key, team)
        failed: list[tuple[Entry, BackendError]] = []
        # A hit is cached unless its backend says never (cache_results=False: env, files). A miss is cached
        # too: a cached miss still asks the never-cached backends live (see lookup).
        for index, entry in enumerate(self.entries):
            if not entry.wants(kind, key):
                if explanation is not None:
                    explanation.attempts.append(Attempt(entry.name, "skipped (pattern)"))
                continue
            startup, state = 0.0, ""
            started = time.perf_counter()
            try:
                if explanation is not None:
                    state = entry.breaker.describe()
                    if isinstance(entry.backend, BaseBackend):
                        entry.backend.prepare()  # one-time start-up, timed apart from the lookup
                    startup = time.perf_counter() - started
                    started = time.perf_counter()
                value = self._call(entry, self._read, entry, kind, key, team)
            except Exception as exc:
                elapsed = time.perf_counter() - started
                attempt = Attempt(entry.name, "error", elapsed, safe_reason(exc), startup, state)
                if explanation is not None:
                    explanation.attempts.append(attempt)
                outcome = self._failure(entry, exc, what, stale_key=ckey)
                if isinstance(outcome, Resolution):  # the backend's own last good value
                    if explanation is not None:
                        kept = self.cache.get_stale(ckey)
                        attempt.outcome = "stale"
                        explanation.stale = True
                        explanation.tier = "stale"
                        explanation.stale_age = kept[1] if kept else None
                        explanation.source = entry.name
                        explanation.failed.append(entry.name)
                        explanation.attempts.extend(
                            Attempt(e.name, "not tried") for e in self.entries[index + 1 :]
                        )
                    return outcome
                failed.append((entry, outcome))
                if explanation is not None:
                    explanation.failed.append(entry.name)
                continue
            elapsed = time.perf_counter() - started
            if value is None:
                if explanation is not None:
                    explanation.attempts.append(Attempt(entry.name, "miss", elapsed, "", startup, state))
                continue
            if explanation is not None:
                hit = Attempt(entry.name, "hit", elapsed, "", startup, state)
                if failed:
                    hit.detail = f"served while {_names(failed)} failed"
                explanation.attempts.append(hit)
                explanation.attempts.extend(Attempt(e.name, "not tried") for e in self.entries[index + 1 :])
                explanation.source = entry.name
            resolution = Resolution(value, entry.name)
            self._register_secrets(kind, key, value)
            if failed:
                # Airflow's fall-through, kept by default; never cached: the failed backend may shadow it.
                names = _names(failed)
                self._warn_once(
                    ckey, "fall-through", "%s served from %r while %s failed", what, entry.name, names
                )
            else:
                self._episode_over(ckey)
                if entry.cache_results:
                    self._put(ckey, resolution)
            log.debug("resolved %s from backend %r", what, entry.name)
            return resolution
        if failed:
            first = failed[0][1]
            raise BackendUnavailable(
                f"{what}: not found in the backends that answered, but {_names(failed)} failed "
                f"(an outage, not a miss): {_named(failed[0][0], first)}",
                backends=tuple(e.name for e, _ in failed),
            )
        self._episode_over(ckey)
        self._put(ckey, _MISS, miss=True)
        log.debug("%s not found in the search path", what)
        return None

    def _read(self, entry: Entry, kind: Kind, key: str, team: str | None) -> Any:
        """The plain read of one id (:func:`credpath.reading.read`); callers wrap it in :meth:`_call`."""
        return reading.read(entry.backend, kind, key, team_name=team, name=entry.name)

    # --- the error policy --------------------------------------------------------------------------

    def _call(self, entry: Entry, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one store call behind the backend's circuit breaker."""
        breaker = entry.breaker
        if not breaker.allow():
            if _metrics.on:
                _metrics.breaker_rejected(entry.name)
            raise breaker.open_error(entry.label)
        metering = _metrics.on
        outer = _metrics.storing_for(entry.name) if metering else None
        try:
            result = func(*args, **kwargs)
        except (ConfigError, AccessDenied, ReadOnlyBackend) as exc:
            breaker.success()  # the store answered, or the fault is the configuration's: not an outage
            if _metrics.on and not isinstance(exc, ReadOnlyBackend):
                _metrics.store_call(entry.name, func, args, error=exc)
            raise
        except BaseException as exc:
            if _metrics.on:
                _metrics.store_call(entry.name, func, args, error=exc)
            if breaker.failure():
                log.warning(
                    "%s failed %d times in a row; failing fast for %g s (circuit breaker open)",
                    entry.label,
                    breaker.failures,
                    breaker.cool_down,
                )
            raise
        finally:
            if metering:
                _metrics.storing_for(outer)
        breaker.success()
        if _metrics.on:
            _metrics.store_call(entry.name, func, args, result)
        return result

    # THE ERROR POLICY: the one place that decides what a backend's exception means, for every read path
    # (lookup and explain, prefetch by id and by prefix, the shadow check of prefix prefetch, listing).
    #
    # 1. ConfigError (MissingDependency, a wrong Fernet key, a malformed stored value) propagates.
    #    Why: the configuration or the data is wrong; skipping hides it, a retry cannot fix it, and
    #    "not found" would be a lie (issue 10: a bad CREDPATH_FERNET_KEY exited 1 "not found").
    # 2. AccessDenied propagates, whatever on_error says (Airflow's AirflowSecretsBackendAccessDenied).
    #    Why: falling through could serve a copy the caller is no longer allowed to read; serving a stale
    #    value would do the same. A denial is a healthy store's answer: no breaker failure, no retry.
    # 3. Anything else is transient (BackendError, CircuitOpen, BackendTimeout, or a foreign exception,
    #    whose message is withheld because it may carry a secret). It has counted against the breaker
    #    (_call); then, in this order:
    #    a. lookup only: the backend's OWN last good value, if kept within [cache] stale_if_error, is
    #       served (one WARNING per outage naming backend and age). Why: it is what the backend said last,
    #       better than a lower backend's possibly different copy and better than an error.
    #    b. on_error="fail": raised (a foreign exception as a BackendError naming the backend). Why: the
    #       user chose to stop at this backend rather than fall through.
    #    c. on_error="skip" (default, Airflow's behaviour): logged, and the caller goes on with the next
    #       backend. Why: Airflow falls through; but the result is never cached (the backend may shadow it
    #       once it recovers), a hit from a later backend is logged as a fall-through, and if nothing is
    #       found the lookup raises BackendUnavailable naming the failed backends, never NotFound.
    # ReadOnlyBackend from a listing method is a capability ("cannot list"), not a failure: list_ids
    # catches it before this policy.
    def _failure(
        self,
        entry: Entry,
        exc: BaseException,
        what: str,
        *,
        stale_key: Any = None,
        then: str = "trying the next backend",
    ) -> BackendError | Resolution:
        """Apply the error policy above to ``exc`` from ``entry``: raise it, or return the stale value to
        serve, or return the (safe) transient error the caller records before going on."""
        if isinstance(exc, ConfigError | AccessDenied):  # rules 1 and 2
            raise exc
        if isinstance(exc, BackendError):
            error = exc
        else:
            error = BackendError(f"{entry.label}: {safe_reason(exc)}", backend=entry.name)
        if stale_key is not None:  # rule 3a
            kept = self.cache.get_stale(stale_key)
            if kept is not None and kept[0] is not _MISS and kept[0].source == entry.name:
                self._warn_once(
                    stale_key,
                    "stale",
                    "%s: %s; serving its last good value, %.0f s old (stale-if-error, up to %g s)",
                    what,
                    _named(entry, error),
                    kept[1],
                    self.cache.settings.stale_if_error,
                )
                if self.shared is not None:
                    self.shared.count("stale_served")
                return kept[0]  # type: ignore[no-any-return]
        if entry.on_error == "fail":  # rule 3b
            raise error from None
        # rule 3c; a breaker failing fast repeats its one WARNING (logged when it opened) only at DEBUG
        level = logging.DEBUG if isinstance(error, CircuitOpen) else logging.WARNING
        log.log(level, "%s: %s; %s", what, _named(entry, error), then)
        return error

    def _warn_once(self, ckey: Any, what: str, message: str, *args: Any) -> None:
        marker = (ckey, what)
        if marker not in self._warned:
            self._warned.add(marker)
            log.warning(message, *args)

    def _episode_over(self, ckey: Any) -> None:
        if self._warned:
            self._warned.discard((ckey, "stale"))
            self._warned.discard((ckey, "fall-through"))

    def _put(self, ckey: tuple[Kind, str, str | None], value: Any, *, miss: bool = False) -> None:
        times = self.cache.put(ckey, value, miss=miss)
        if ckey[2] not in self._teams:
            self._teams.add(ckey[2])
        if times is not None and self.shared is not None:
            from credpath.shared_cache import SharedEntry

            offset = time.time() - _monotonic()  # the shared tier keeps wall-clock times (other nodes)
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
                ),
            )

    def _invalidate(self, kind: Kind, key: str) -> None:
        for team in list(self._teams):
            self.cache.invalidate((kind, key, team))
            if self.shared is not None:
                self.shared.invalidate((kind, key, team))
            self._episode_over((kind, key, team))

    def _register_secrets(self, kind: Kind, key: str, value: Any) -> None:
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

    # --- prefetch ----------------------------------------------------------------------------------

    def prefetch(
        self,
        connections: Sequence[str] = (),
        variables: Sequence[str] = (),
        *,
        prefix: bool = False,
        team_name: str | None = None,
    ) -> dict[Kind, PrefetchReport]:
        """Fill the cache for many ids with as few API calls as the backends allow.

        Backends with batch reads (``get_conn_values``/``get_variables``) are asked once per batch; others
        one id at a time. With ``prefix=True`` every value under each backend's prefix is loaded
        (``prefetch_connections``/``prefetch_variables``), cached only where no earlier backend has the id.
        Errors follow the one error policy (:meth:`_failure`); failed ids are simply not cached.
        """
        reports: dict[Kind, PrefetchReport] = {}
        for kind, ids in (("connection", connections), ("variable", variables)):
            if ids:
                reports[kind] = self._prefetch_ids(kind, list(dict.fromkeys(ids)), team_name)
            elif prefix:
                reports[kind] = self._prefetch_prefix(kind, team_name)
        return reports

    def _prefetch_ids(self, kind: Kind, ids: list[str], team: str | None) -> PrefetchReport:
        report = PrefetchReport(requested=len(ids))
        remaining = [i for i in ids if self.cache.get((kind, i, team)) is ABSENT]
        if self.shared is not None:  # what another process already read is not read again
            now = time.time()
            for i in list(remaining):
                entry = self.shared.get((kind, i, team))
                if entry is not None and entry.fresh(now):
                    self.shared.count("shared_hits")
                    self._adopt((kind, i, team), entry)
                    remaining.remove(i)
        errored: set[str] = set()
        for entry in self.entries:
            if not remaining:
                break
            wanted = [i for i in remaining if entry.wants(kind, i)]
            if not wanted:
                continue
            found: dict[str, Any] = {}
            if reading.batched(entry.backend, kind):
                try:
                    batch = self._call(entry, reading.read_batch, entry.backend, kind, wanted, team_name=team)
                except Exception as exc:
                    self._failure(entry, exc, f"a batch read of {len(wanted)} {kind}(s)")
                    errored.update(wanted)
                    report.errors += len(wanted)
                    continue
                for key, value in batch.items():
                    if isinstance(value, BaseException):  # this id's value could not be parsed
                        self._failure(entry, value, _what(kind, key, team))
                        errored.add(key)
                        report.errors += 1
                        continue
                    found[key] = value
            else:
                for key in wanted:
                    try:
                        value = self._call(entry, self._read, entry, kind, key, team)
                    except Exception as exc:
                        self._failure(entry, exc, _what(kind, key, team))
                        errored.add(key)
                        report.errors += 1
                        continue
                    if value is not None:
                        found[key] = value
            for key, value in found.items():
                self._register_secrets(kind, key, value)
                if key not in errored and entry.cache_results:
                    self._put((kind, key, team), Resolution(value, entry.name))
                report.hits += 1
            remaining = [i for i in remaining if i not in found]
        for key in remaining:
            if key not in errored:
                self._put((kind, key, team), _MISS, miss=True)
                report.misses += 1
        return report

    def _prefetch_prefix(self, kind: Kind, team: str | None) -> PrefetchReport:
        report = PrefetchReport()
        known: list[tuple[Entry, dict[str, Any] | None]] = []  # per earlier backend: its full set, or None
        for entry in self.entries:
            values: dict[str, Any] | None = None
            if supports(entry.backend, "prefetch"):
                try:
                    values = self._call(entry, reading.read_all, entry.backend, kind, team_name=team)
                except Exception as exc:
                    # Later backends' values could be shadowed by this one's: stop here.
                    self._failure(entry, exc, f"a prefix prefetch of {kind}s", then="stopping the prefetch")
                    report.errors += 1
                    return report
                for key, value in values.items():
                    if not entry.wants(kind, key) or self._shadowed(kind, key, team, known):
                        continue
                    if isinstance(value, BaseException):  # this id's value could not be parsed
                        self._failure(entry, value, _what(kind, key, team))
                        report.errors += 1
                        continue
                    self._register_secrets(kind, key, value)
                    if entry.cache_results:
                        self._put((kind, key, team), Resolution(value, entry.name))
                    report.hits += 1
            known.append((entry, values))
        report.requested = report.hits
        return report

    def _shadowed(
        self, kind: Kind, key: str, team: str | None, earlier: list[tuple[Entry, dict[str, Any] | None]]
    ) -> bool:
        """True if an earlier backend has ``key`` or cannot say (it failed): then it is not cached."""
        for entry, values in earlier:
            if not entry.wants(kind, key):
                continue
            if values is not None:
                if key in values:
                    return True
                continue
            try:
                if self._call(entry, self._read, entry, kind, key, team) is not None:
                    return True
            except Exception as exc:
                self._failure(entry, exc, _what(kind, key, team), then="not caching it")
                return True
        return False

    # --- writes ------------------------------------------------------------------------------------

    def writable_backend(self, to: str | None, operation: str = "set_connection") -> Entry:
        """The entry a write goes to: ``to``, else Airflow's metastore, else the first backend that declares
        "write". ``operation`` (``set_connection``, ``delete_variable``, ...) only words the refusal."""
        does = _OPERATIONS.get(operation, operation.replace("_", " "))
        if to is not None:
            entry = self._entry(to)
            if not supports(entry.backend, "write"):
                raise ReadOnlyBackend(f"{entry.label} cannot {does}")
            return entry
        for entry in self.entries:  # Airflow writes to the metastore; credpath to the first writable store
            if entry.name == "metastore" and supports(entry.backend, "write"):
                return entry
        for entry in self.entries:
            if supports(entry.backend, "write"):
                return entry
        raise ReadOnlyBackend(f"no backend in the search path can {does}")

    def set_connection(
        self,
        conn: Connection,
        *,
        to: str | None = None,
        overwrite: bool = True,
        serialization: Serialization | None = None,
        team_name: str | None = None,
    ) -> str:
        """Write ``conn`` to backend ``to`` (default: metastore, else the first writable); returns its name.

        ``serialization`` is how a string store keeps it (structured stores ignore it; unset: the store's
        default, JSON for credpath's own). ``team_name`` is
        the owner, for a store whose writes are team-scoped (the metastore); other stores refuse it.
        Store behaviour (e.g. Azure's ``on_deleted``) is the backend's own setting, not a write option."""
        if not conn.conn_id:
            raise ConfigError("connection has no conn_id")
        entry = self.writable_backend(to, "set_connection")
        options: dict[str, Any] = _team_kwargs(entry, entry.backend.set_connection, team_name)  # type: ignore[union-attr]
        if serialization is not None:  # unset: a foreign store's set_connection need not know the keyword
            options["serialization"] = serialization
        with self._write_lock:
            entry.backend.set_connection(conn, overwrite=overwrite, **options)  # type: ignore[union-attr]
            self._invalidate("connection", conn.conn_id)
        return entry.name

    def set_variable(
        self,
        key: str,
        value: str,
        *,
        to: str | None = None,
        overwrite: bool = True,
        team_name: str | None = None,
    ) -> str:
        """Write a variable to backend ``to`` (default as :meth:`set_connection`); returns its name."""
        if not isinstance(value, str):
            raise ConfigError(f"variable {key!r}: value must be a string, got {type(value).__name__}")
        entry = self.writable_backend(to, "set_variable")
        team = _team_kwargs(entry, entry.backend.set_variable, team_name)  # type: ignore[union-attr]
        with self._write_lock:
            entry.backend.set_variable(key, value, overwrite=overwrite, **team)  # type: ignore[union-attr]
            self._invalidate("variable", key)
        return entry.name

    def delete_connection(self, conn_id: str, *, to: str | None = None) -> str | None:
        entry = self.writable_backend(to, "delete_connection")
        with self._write_lock:
            deleted = entry.backend.delete_connection(conn_id)  # type: ignore[union-attr]
            self._invalidate("connection", conn_id)
        return entry.name if deleted else None

    def delete_variable(self, key: str, *, to: str | None = None) -> str | None:
        entry = self.writable_backend(to, "delete_variable")
        with self._write_lock:
            deleted = entry.backend.delete_variable(key)  # type: ignore[union-attr]
            self._invalidate("variable", key)
        return entry.name if deleted else None

    # --- listing -----------------------------------------------------------------------------------

    def list_ids(self, kind: Kind) -> Listing:
        """Every id of ``kind`` the backends can list: a :class:`Listing` ``(found, cannot_list)`` with
        ``.failed``, the backends that failed to list (AccessDenied/ConfigError propagate; on_error="fail"
        raises)."""
        found: dict[str, list[str]] = {}
        cannot: list[str] = []
        failed: dict[str, str] = {}
        for entry in self.entries:
            if not supports(entry.backend, "list"):
                cannot.append(entry.name)
                continue
            try:
                ids = self._call(entry, reading.list_ids, entry.backend, kind)
            except ReadOnlyBackend:
                cannot.append(entry.name)
                continue
            except Exception as exc:
                error = self._failure(entry, exc, f"listing {kind}s", then="listing the other backends")
                failed[entry.name] = _named(entry, error)  # type: ignore[arg-type]
                continue
            for key in ids:
                if entry.wants(kind, key):
                    found.setdefault(key, []).append(entry.name)
        return Listing(dict(sorted(found.items())), cannot, failed)


def _shared_tier(settings: CacheSettings, backends: list[Any], built: list[Any]) -> Any:
    """The shared tier for ``[cache] shared`` (its store opened lazily: no connection here)."""
    from credpath.shared_cache import (
        SharedTier,
        normalize_shared,
        open_store,
        resolve_keys,
        scope_of,
        store_deadline,
    )

    keys = list(settings.shared_keys)
    shared = settings.shared or ""
    if not keys:  # CacheSettings built in code, not parsed: resolve as the config would
        import os

        from credpath.config import credpath_home

        shared = normalize_shared(shared, credpath_home())
        keys = resolve_keys(None, os.environ, credpath_home(), file_tier=shared.startswith("file:"))
    return SharedTier(
        open_store(shared),
        keys,
        scope_of(backends),
        lease=settings.shared_lease,
        wait_limit=store_deadline(built),
    )


def _what(kind: Kind, key: str, team: str | None) -> str:
    return f"{kind} {key!r}" if team is None else f"{kind} {key!r} (team {team!r})"


def _names(failed: list[tuple[Entry, BackendError]]) -> str:
    names = [repr(e.name) for e, _ in failed]
    return ("backend " if len(names) == 1 else "backends ") + ", ".join(names)


def _named(entry: Entry, error: BaseException) -> str:
    """The error's safe message, prefixed with the backend's label unless it already names it."""
    message = safe_reason(error)
    if message.startswith((entry.label, f"backend {entry.name!r}")):
        return message
    return f"{entry.label}: {message}"


def _team_kwargs(entry: Entry, method: Callable[..., Any], team_name: str | None) -> dict[str, str]:
    """``{"team_name": ...}`` for a write to a team-scoped store; a store without owners refuses a team
    (one line naming the backend) rather than writing a global entry the caller meant for one team."""
    if team_name is None:
        return {}
    if not accepts_team_name(method):
        raise ConfigError(f"{entry.label} has no team-scoped writes (team_name)")
    return {"team_name": team_name}
