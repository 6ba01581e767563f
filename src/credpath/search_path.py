"""The search path: ordered backends, lookup patterns, error policy, cache, provenance, prefetch, writes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credpath.cache import ABSENT, CacheSettings, TTLCache
from credpath.config import BackendSpec, Settings, load_settings
from credpath.errors import AccessDenied, BackendError, ConfigError, CredpathError, NotFound, ReadOnlyBackend
from credpath.masking import Masker, default_masker, install_log_masking
from credpath.model import Connection, is_sensitive_name
from credpath.protocol import KINDS, BaseBackend, Kind, can, compile_lookup_pattern

log = logging.getLogger("credpath.search_path")

_MISS = object()  # cached "nothing in the path has it"
_UNSET: Any = object()


@dataclass(frozen=True)
class Resolution:
    """A resolved value and the name of the backend that served it."""

    value: Any
    source: str


@dataclass
class Attempt:
    backend: str
    outcome: str  # "hit" | "miss" | "skipped (pattern)" | "error" | "not tried"
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Explanation:
    kind: Kind
    key: str
    source: str | None
    attempts: list[Attempt] = field(default_factory=list)
    cached: bool = False

    @property
    def found(self) -> bool:
        return self.source is not None


@dataclass
class Entry:
    name: str
    backend: Any
    patterns: dict[Kind, Any]
    on_error: str = "skip"

    def wants(self, kind: Kind, key: str) -> bool:
        pattern = self.patterns.get(kind)
        return pattern is None or pattern.match(key) is not None


@dataclass
class PrefetchReport:
    requested: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0


class SearchPath:
    """Resolve connections, variables and config through backends in order; the first hit wins."""

    def __init__(
        self,
        backends: Iterable[Any] = (),
        *,
        cache: CacheSettings | TTLCache | bool | None = True,
        masker: Masker | None = None,
        mask_logs: bool = True,
    ) -> None:
        self.entries: list[Entry] = []
        for item in backends:
            self._add(item)
        if isinstance(cache, TTLCache):
            self.cache = cache
        elif isinstance(cache, CacheSettings):
            self.cache = TTLCache(cache)
        else:
            self.cache = TTLCache(CacheSettings(enabled=bool(cache)))
        self.masker = masker or default_masker()
        self.mask_logs = mask_logs
        self._write_lock = threading.Lock()

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, path: str | Path | None = None, env: Mapping[str, str] | None = None) -> SearchPath:
        settings = load_settings(path, env)
        return cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> SearchPath:
        return cls(settings.backends, cache=settings.cache, **kwargs)

    def _add(self, item: Any) -> None:
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
            name = getattr(backend, "name", None) or type(backend).__name__
            on_error, raw_patterns = "skip", {}
        if any(e.name == name for e in self.entries):
            raise ConfigError(f"duplicate backend name {name!r} in the search path")
        if isinstance(backend, BaseBackend):
            backend.name = name
        patterns: dict[Kind, Any] = dict(getattr(backend, "lookup_patterns", None) or {})
        for kind in KINDS:
            if raw_patterns.get(kind) is not None:
                patterns[kind] = compile_lookup_pattern(raw_patterns[kind], f"{name}: {kind} lookup pattern")
        self.entries.append(Entry(name=name, backend=backend, patterns=patterns, on_error=on_error))

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def backend(self, name: str) -> Any:
        for entry in self.entries:
            if entry.name == name:
                return entry.backend
        raise ConfigError(f"no backend named {name!r} in the search path (have: {', '.join(self.names)})")

    def close(self) -> None:
        for entry in self.entries:
            close = getattr(entry.backend, "close", None)
            if callable(close):
                close()

    # --- reads -------------------------------------------------------------------------------------

    def get_connection(self, conn_id: str) -> Connection:
        item = self.cache._data.get(("connection", conn_id))  # inlined cache hit: the hot path
        if item is not None and item[0] >= time.monotonic() and item[1] is not _MISS:
            return item[1].value
        resolution = self.lookup("connection", conn_id)
        if resolution is None:
            raise NotFound("connection", conn_id)
        return resolution.value

    def get_variable(self, key: str, default: Any = _UNSET, *, deserialize_json: bool = False) -> Any:
        resolution = self.lookup("variable", key)
        if resolution is None:
            if default is _UNSET:
                raise NotFound("variable", key)
            return default
        if deserialize_json:
            from credpath.model import Variable

            return Variable(key, resolution.value).deserialize()
        return resolution.value

    def get_config(self, key: str, default: Any = _UNSET) -> Any:
        resolution = self.lookup("config", key)
        if resolution is None:
            if default is _UNSET:
                raise NotFound("config", key)
            return default
        return resolution.value

    def get_conn_value(self, conn_id: str) -> str | None:
        resolution = self.lookup("connection", conn_id)
        return None if resolution is None else resolution.value.get_uri()

    def lookup(self, kind: Kind, key: str) -> Resolution | None:
        """Resolve through cache then backends; ``None`` when nothing in the path has it."""
        cached = self.cache.get((kind, key))
        if cached is not ABSENT:
            return None if cached is _MISS else cached
        return self._resolve(kind, key, None)

    def explain(self, kind: Kind, key: str, *, use_cache: bool = False) -> Explanation:
        """Which backend serves ``key``, and the outcome and time of every backend tried."""
        explanation = Explanation(kind=kind, key=key, source=None)
        if use_cache:
            cached = self.cache.get((kind, key))
            if cached is not ABSENT:
                explanation.cached = True
                explanation.source = None if cached is _MISS else cached.source
                return explanation
        self._resolve(kind, key, explanation)
        return explanation

    def _resolve(self, kind: Kind, key: str, explanation: Explanation | None) -> Resolution | None:
        errored = False
        for index, entry in enumerate(self.entries):
            if not entry.wants(kind, key):
                if explanation is not None:
                    explanation.attempts.append(Attempt(entry.name, "skipped (pattern)"))
                continue
            started = time.perf_counter()
            try:
                value = self._read(entry, kind, key)
            except Exception as exc:
                elapsed = time.perf_counter() - started
                reason = _safe_error(exc)
                if explanation is not None:
                    explanation.attempts.append(Attempt(entry.name, "error", elapsed, reason))
                if isinstance(exc, AccessDenied):
                    # Authoritative whatever on_error says, as in Airflow's Task SDK: falling through to a
                    # later backend could serve a stale copy the caller is no longer allowed to read.
                    raise
                if entry.on_error == "fail":
                    if isinstance(exc, CredpathError):
                        raise
                    raise BackendError(
                        f"backend {entry.name!r} failed: {reason}", backend=entry.name
                    ) from None
                log.warning(
                    "backend %r failed for %s %r, trying the next one: %s", entry.name, kind, key, reason
                )
                errored = True
                continue
            elapsed = time.perf_counter() - started
            if value is None:
                if explanation is not None:
                    explanation.attempts.append(Attempt(entry.name, "miss", elapsed))
                continue
            if explanation is not None:
                explanation.attempts.append(Attempt(entry.name, "hit", elapsed))
                explanation.attempts.extend(Attempt(e.name, "not tried") for e in self.entries[index + 1 :])
                explanation.source = entry.name
            resolution = Resolution(value, entry.name)
            self._register_secrets(kind, key, value)
            log.debug("resolved %s %r from backend %r", kind, key, entry.name)
            if not errored:  # a hit behind a failed backend may be shadowed once it recovers
                self.cache.put((kind, key), resolution)
            return resolution
        if not errored:
            self.cache.put((kind, key), _MISS, miss=True)
        log.debug("%s %r not found in the search path", kind, key)
        return None

    def _read(self, entry: Entry, kind: Kind, key: str) -> Any:
        backend = entry.backend
        if kind == "connection":
            return read_connection(backend, key)
        method = backend.get_variable if kind == "variable" else getattr(backend, "get_config", None)
        if method is None:
            return None
        value = method(key)
        if value is not None and not isinstance(value, str):
            raise BackendError(f"backend {entry.name!r} returned a {type(value).__name__} for {kind} {key!r}")
        return value

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
    ) -> dict[Kind, PrefetchReport]:
        """Fill the cache for many ids with as few API calls as the backends allow.

        Backends with batch reads (``get_conn_values``/``get_variables``) are asked once per batch; others
        one id at a time. With ``prefix=True`` every value under each backend's prefix is loaded
        (``prefetch_connections``/``prefetch_variables``), cached only where no earlier backend has the id.
        """
        reports: dict[Kind, PrefetchReport] = {}
        for kind, ids in (("connection", connections), ("variable", variables)):
            if ids:
                reports[kind] = self._prefetch_ids(kind, list(dict.fromkeys(ids)))
            elif prefix:
                reports[kind] = self._prefetch_prefix(kind)
        return reports

    def _prefetch_ids(self, kind: Kind, ids: list[str]) -> PrefetchReport:
        report = PrefetchReport(requested=len(ids))
        remaining = [i for i in ids if self.cache.get((kind, i)) is ABSENT]
        errored: set[str] = set()
        batch_method = "get_conn_values" if kind == "connection" else "get_variables"
        for entry in self.entries:
            if not remaining:
                break
            wanted = [i for i in remaining if entry.wants(kind, i)]
            found: dict[str, Any] = {}
            if wanted and can(entry.backend, batch_method):
                try:
                    raw = getattr(entry.backend, batch_method)(wanted)
                except Exception as exc:
                    if entry.on_error == "fail" or isinstance(exc, AccessDenied):
                        raise
                    log.warning("backend %r failed a batch read: %s", entry.name, _safe_error(exc))
                    errored.update(wanted)
                    report.errors += len(wanted)
                    continue
                for key, value in raw.items():
                    if kind == "connection":
                        try:
                            found[key] = _deserialize(entry.backend, key, value)
                        except Exception as exc:
                            log.warning("backend %r: %s %r: %s", entry.name, kind, key, _safe_error(exc))
                            errored.add(key)
                            report.errors += 1
                    else:
                        found[key] = value
            else:
                for key in wanted:
                    try:
                        value = self._read(entry, kind, key)
                    except Exception as exc:
                        if entry.on_error == "fail" or isinstance(exc, AccessDenied):
                            raise
                        log.warning(
                            "backend %r failed for %s %r: %s", entry.name, kind, key, _safe_error(exc)
                        )
                        errored.add(key)
                        report.errors += 1
                        continue
                    if value is not None:
                        found[key] = value
            for key, value in found.items():
                self._register_secrets(kind, key, value)
                if key not in errored:
                    self.cache.put((kind, key), Resolution(value, entry.name))
                report.hits += 1
            remaining = [i for i in remaining if i not in found]
        for key in remaining:
            if key not in errored:
                self.cache.put((kind, key), _MISS, miss=True)
                report.misses += 1
        return report

    def _prefetch_prefix(self, kind: Kind) -> PrefetchReport:
        report = PrefetchReport()
        method = "prefetch_connections" if kind == "connection" else "prefetch_variables"
        known: list[tuple[Entry, dict[str, Any] | None]] = []  # per earlier backend: its full set, or None
        for entry in self.entries:
            values: dict[str, Any] | None = None
            if can(entry.backend, method):
                try:
                    values = getattr(entry.backend, method)()
                except Exception as exc:
                    if entry.on_error == "fail":
                        raise
                    log.warning("backend %r failed a prefix prefetch: %s", entry.name, _safe_error(exc))
                    report.errors += 1
                    return report  # later backends could be shadowed by this one: stop here
                for key, value in values.items():
                    if not entry.wants(kind, key) or self._shadowed(kind, key, known):
                        continue
                    if kind == "connection":
                        value = _deserialize(entry.backend, key, value)
                    self._register_secrets(kind, key, value)
                    self.cache.put((kind, key), Resolution(value, entry.name))
                    report.hits += 1
            known.append((entry, values))
        report.requested = report.hits
        return report

    def _shadowed(self, kind: Kind, key: str, earlier: list[tuple[Entry, dict[str, Any] | None]]) -> bool:
        for entry, values in earlier:
            if not entry.wants(kind, key):
                continue
            if values is not None:
                if key in values:
                    return True
                continue
            if self._read(entry, kind, key) is not None:
                return True
        return False

    # --- writes ------------------------------------------------------------------------------------

    def writable_backend(self, to: str | None, operation: str = "set_connection") -> Entry:
        if to is not None:
            for entry in self.entries:
                if entry.name == to:
                    if not can(entry.backend, operation):
                        raise ReadOnlyBackend(f"backend {to!r} cannot {operation.replace('_', ' ')}")
                    return entry
            raise ConfigError(
                f"--to: no backend named {to!r} in the search path (have: {', '.join(self.names)})"
            )
        for entry in self.entries:  # Airflow writes to the metastore; credpath to the first writable store
            if entry.name == "metastore" and can(entry.backend, operation):
                return entry
        for entry in self.entries:
            if can(entry.backend, operation):
                return entry
        raise ReadOnlyBackend(f"no backend in the search path can {operation.replace('_', ' ')}")

    def set_connection(
        self, conn: Connection, *, to: str | None = None, overwrite: bool = True, **options: Any
    ) -> str:
        """Write to backend ``to`` (default: metastore, else the first writable); ``options`` are the
        store's own write options (e.g. Azure's ``on_deleted``), refused if the store has no such option."""
        if not conn.conn_id:
            raise ConfigError("connection has no conn_id")
        entry = self.writable_backend(to, "set_connection")
        _check_write_options(entry, "set_connection", options)
        with self._write_lock:
            entry.backend.set_connection(conn, overwrite=overwrite, **options)
            self.cache.invalidate(("connection", conn.conn_id))
        return entry.name

    def set_variable(
        self, key: str, value: str, *, to: str | None = None, overwrite: bool = True, **options: Any
    ) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"variable {key!r}: value must be a string, got {type(value).__name__}")
        entry = self.writable_backend(to, "set_variable")
        _check_write_options(entry, "set_variable", options)
        with self._write_lock:
            entry.backend.set_variable(key, value, overwrite=overwrite, **options)
            self.cache.invalidate(("variable", key))
        return entry.name

    def delete_connection(self, conn_id: str, *, to: str | None = None) -> str | None:
        entry = self.writable_backend(to, "delete_connection")
        with self._write_lock:
            deleted = entry.backend.delete_connection(conn_id)
            self.cache.invalidate(("connection", conn_id))
        return entry.name if deleted else None

    def delete_variable(self, key: str, *, to: str | None = None) -> str | None:
        entry = self.writable_backend(to, "delete_variable")
        with self._write_lock:
            deleted = entry.backend.delete_variable(key)
            self.cache.invalidate(("variable", key))
        return entry.name if deleted else None

    # --- listing -----------------------------------------------------------------------------------

    def list_ids(self, kind: Kind) -> tuple[dict[str, list[str]], list[str]]:
        """Map id -> names of every backend holding it (search order), and the backends that cannot list."""
        method = "list_connections" if kind == "connection" else "list_variables"
        found: dict[str, list[str]] = {}
        unlistable: list[str] = []
        for entry in self.entries:
            if not callable(getattr(entry.backend, method, None)):
                unlistable.append(entry.name)
                continue
            try:
                ids = getattr(entry.backend, method)()
            except ReadOnlyBackend:
                unlistable.append(entry.name)
                continue
            except Exception as exc:
                if entry.on_error == "fail":
                    raise
                log.warning("backend %r failed to list: %s", entry.name, _safe_error(exc))
                unlistable.append(entry.name)
                continue
            for key in ids:
                if entry.wants(kind, key):
                    found.setdefault(key, []).append(entry.name)
        return dict(sorted(found.items())), unlistable


def _check_write_options(entry: Entry, method: str, options: Mapping[str, Any]) -> None:
    if not options:
        return
    import inspect

    params = inspect.signature(getattr(entry.backend, method)).parameters
    unknown = sorted(k for k in options if k not in params)
    if unknown:
        raise ConfigError(f"backend {entry.name!r} has no write option(s) {', '.join(unknown)}")


def read_connection(backend: Any, conn_id: str) -> Connection | None:
    """Read one connection from any backend: credpath's own, or an Airflow-style "roll your own" class."""
    if isinstance(backend, BaseBackend):
        return backend.get_connection(conn_id)
    get_value = getattr(backend, "get_conn_value", None)
    if callable(get_value):
        raw = get_value(conn_id)
        return None if raw is None else Connection.from_value(raw, conn_id=conn_id)
    get_conn = getattr(backend, "get_connection", None)
    if callable(get_conn):
        return as_connection(get_conn(conn_id), conn_id)
    return None


def as_connection(obj: Any, conn_id: str) -> Connection | None:
    """Convert a foreign connection object (e.g. Airflow's) by its attributes."""
    if obj is None or isinstance(obj, Connection):
        return obj
    if isinstance(obj, str):
        return Connection.from_value(obj, conn_id=conn_id)
    extra = getattr(obj, "extra", None)
    return Connection(
        conn_id=conn_id,
        conn_type=getattr(obj, "conn_type", None),
        description=getattr(obj, "description", None),
        host=getattr(obj, "host", None),
        login=getattr(obj, "login", None),
        password=getattr(obj, "password", None),
        schema=getattr(obj, "schema", None),
        port=getattr(obj, "port", None),
        extra=extra if extra else None,
    )


def _deserialize(backend: Any, conn_id: str, value: Any) -> Connection:
    if isinstance(value, Connection):
        return value.with_id(conn_id)
    if isinstance(backend, BaseBackend):
        return backend.deserialize_connection(conn_id, value)
    return Connection.from_value(value, conn_id=conn_id)


def _safe_error(exc: BaseException) -> str:
    """Credpath's own errors have safe messages; a foreign exception is named by type only."""
    if isinstance(exc, CredpathError):
        return str(exc)
    return f"{type(exc).__name__} (message withheld: it may contain a secret)"
