"""A pinned read: one version of an id, from the backends that keep versions (capability "versions").

Why apart from the plain lookup: a version's value never changes, so it is cached under its version in a
process tier of its own and under its own shared-tier name. Neither is reached by what a rotation does to
the id (``invalidate``, ``refresh``, the deployment epoch that drops the process tier), and the latest
value's entries are never touched by a pinned read. A label that moves (a Secrets Manager stage) is read
from the store every time.

Only backends that declare "versions" and take the version's form are asked, in search-path order; a
backend without versions is never asked for the latest instead. No such backend: a ConfigError naming the
backends. Nobody has the version: :class:`VersionNotFound`, naming the id and the version.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from credpath._cache import ABSENT, TTLCache
from credpath._lookup.model import MISS, CacheKey, Entry, Explanation, Resolution, what
from credpath._lookup.policy import call, failure
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext
from credpath.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    NotFound,
    safe_reason,
)
from credpath.protocol import BaseBackend, Kind, call_backend_method, supports

if TYPE_CHECKING:
    from credpath._shared_cache import SharedEntry

__all__ = [
    "MAX_VERSION_LEN",
    "SUFFIX",
    "VersionNotFound",
    "check_version",
    "explain",
    "lookup",
    "read",
    "split_suffix",
]

#: The id suffix that pins a connection (``my_db@3``): Airflow allows no ``@`` in a connection id.
SUFFIX = "@"
MAX_VERSION_LEN = 256


class VersionNotFound(NotFound):
    """No backend that keeps versions has this version of the id (the CLI exits 1, as for NotFound)."""

    def __init__(self, kind: str, key: str, version: str, asked: list[str]) -> None:
        super().__init__(kind, key)
        self.version = version
        self.args = (
            f"{kind} {key!r} version {version!r} not found in the backends that keep versions "
            f"({', '.join(map(repr, asked))})",
        )


def check_version(version: object) -> str:
    """``version`` as a string, or a one-line ConfigError: bad input, not a miss."""
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version:
        raise ConfigError("version must be a non-empty string (a store's version id, number or stage)")
    if len(version) > MAX_VERSION_LEN or any(c.isspace() or not c.isprintable() for c in version):
        raise ConfigError(
            f"version {version[:60]!r} is invalid: no spaces or control characters, "
            f"at most {MAX_VERSION_LEN} characters"
        )
    return version


def split_suffix(conn_id: str) -> tuple[str, str | None]:
    """``("my_db", "3")`` for ``my_db@3``; ``(conn_id, None)`` without the suffix. An empty id or version
    around it is a ConfigError."""
    if SUFFIX not in conn_id:
        return conn_id, None
    key, _, version = conn_id.rpartition(SUFFIX)
    if not key or not version:
        raise ConfigError(
            f"connection id {conn_id[:60]!r}: the version suffix needs an id and a version (my_db@3)"
        )
    return key, check_version(version)


def read(state: LookupState, kind: Kind, key: str, version: str | int | None, team: str | None) -> Resolution:
    """``SearchPath``'s pinned read: ``version``, or the id's ``@`` suffix when it is None; subscribers hear
    that the lookup ended. A miss raises :class:`VersionNotFound`."""
    if version is None:
        key, version = split_suffix(key)
    version = check_version(version)
    context = LookupContext(kind, key, team)
    if not context.sinks:
        return lookup(state, context, version)
    try:
        resolution = lookup(state, context, version)
    except BaseException:
        context.done("error")
        raise
    context.done("found", resolution.value)
    return resolution


def explain(
    state: LookupState, kind: Kind, key: str, version: str | int | None, team: str | None
) -> Explanation:
    """``SearchPath.explain`` of a pinned read: the stores asked (never a cache), and the version served."""
    if version is None:
        key, version = split_suffix(key)
    version = check_version(version)
    context = LookupContext(kind, key, team, keep=True)
    try:
        lookup(state, context, version, use_cache=False)
    except (BackendUnavailable, NotFound):
        pass  # the trace says which failed, or that nobody has the version
    explanation = Explanation.from_trace(context)
    explanation.version = explanation.version or (version if explanation.found else None)
    return explanation


def _cache(state: LookupState) -> TTLCache:
    """The pinned process tier: its own, so that dropping the latest values never drops a version."""
    cache: TTLCache | None = getattr(state, "_pinned_cache", None)
    if cache is None:
        cache = TTLCache(state.cache.settings)
        state._pinned_cache = cache  # type: ignore[attr-defined]
    return cache


def cache_key(kind: Kind, key: str, version: str, team: str | None) -> CacheKey:
    # NUL is in no id and no version: this name never is a plain id's, in either tier.
    return (kind, f"{key}\0{version}", team)


def lookup(state: LookupState, context: LookupContext, version: str, *, use_cache: bool = True) -> Resolution:
    """The ``version`` of the context's id (see the module docstring); a miss raises
    :class:`VersionNotFound`. ``use_cache=False`` (``explain``) asks the stores."""
    kind, key, team = context.kind, context.key, context.team
    if kind not in ("connection", "variable"):
        raise ConfigError(f"only connections and variables can be read by version, not {kind}s")
    version = check_version(version)
    pkey = cache_key(kind, key, version, team)  # type: ignore[arg-type]
    if not use_cache:
        return _resolve(state, context, _cache(state), pkey, version)
    found = _cache(state).get(pkey)
    if found is not ABSENT and found is not MISS:
        context.served("process", found.source)
        return found  # type: ignore[no-any-return]
    return state._flight.run(
        ("pinned", *pkey),
        lambda: _lookup_once(state, context, pkey, version),
        None,
        lambda: BackendTimeout(f"{what(kind, key, team)} version {version!r}: no answer"),
    )


def _lookup_once(state: LookupState, context: LookupContext, pkey: CacheKey, version: str) -> Resolution:
    cache = _cache(state)
    found = cache.get(pkey)
    if found is not ABSENT and found is not MISS:
        context.served("process", found.source)
        return found  # type: ignore[no-any-return]
    if state.shared is not None:
        entry = state.shared.get(pkey)
        if entry is not None and not entry.miss and entry.fresh(time.time()):
            return _adopt(state, context, cache, pkey, entry)
    return _resolve(state, context, cache, pkey, version)


def _resolve(
    state: LookupState, context: LookupContext, cache: TTLCache, pkey: CacheKey, version: str
) -> Resolution:
    kind, key, team = context.kind, context.key, context.team
    description = f"{what(kind, key, team)} version {version!r}"
    versioned = [e for e in state.entries if supports(e.backend, "versions")]
    if not versioned:
        raise ConfigError(
            f"{description}: no backend in the search path keeps versions "
            f"({', '.join(e.label for e in state.entries) or 'none configured'})"
        )
    takers = [e for e in versioned if _takes(e, version)]
    if not takers:
        forms = "; ".join(f"{e.name!r} takes {_form(e)}" for e in versioned)
        raise ConfigError(f"{description}: no backend that keeps versions takes this form ({forms})")
    failed: list[tuple[Entry, BackendError]] = []
    for entry in state.entries:
        if entry not in takers:
            why = "skipped (no versions)" if entry not in versioned else "skipped (version form)"
            context.attempt(entry.name, why)
            continue
        if not entry.wants(kind, key):  # type: ignore[arg-type]
            context.attempt(entry.name, "skipped (pattern)")
            continue
        started = time.perf_counter()
        try:
            value = call(context, entry, "get", kind, _read, entry.backend, kind, key, version, team)
        except Exception as exc:
            outcome = failure(state, entry, exc, description)
            context.attempt(entry.name, "error", time.perf_counter() - started, safe_reason(exc))
            failed.append((entry, outcome))  # type: ignore[arg-type]
            continue
        elapsed = time.perf_counter() - started
        if value is None:
            context.attempt(entry.name, "miss", elapsed, f"version {version}")
            continue
        context.attempt(entry.name, "hit", elapsed, f"pinned version {version}")
        resolution = Resolution(value, entry.name, context.version or version)
        state.register_secrets(kind, key, value)  # type: ignore[arg-type]
        moves = isinstance(entry.backend, BaseBackend) and entry.backend.version_moves(version)
        if entry.cache_results and not moves and not failed:
            _put(state, cache, pkey, resolution)
        context.served("store", entry.name)
        return resolution
    if failed:
        raise BackendUnavailable(
            f"{description}: not found in the backends that answered, but "
            f"{', '.join(repr(e.name) for e, _ in failed)} failed (an outage, not a miss)",
            backends=tuple(e.name for e, _ in failed),
        )
    context.served("store", None)
    raise VersionNotFound(kind, key, version, [e.name for e in takers])


def _takes(entry: Entry, version: str) -> bool:
    accepts = getattr(entry.backend, "accepts_version", None)
    return bool(accepts(version)) if callable(accepts) else True


def _form(entry: Entry) -> str:
    return getattr(entry.backend, "version_form", "") or "its own version ids"


def _read(backend: Any, kind: Kind, key: str, version: str, team: str | None) -> Any:
    """One version from one backend: a Connection (parsed as the plain read parses it) or a string."""
    if kind == "connection":
        method = getattr(backend, "get_connection_version", None)
        if callable(method):
            return call_backend_method(method, key, version, team_name=team)
        from credpath._reading import as_connection

        raw = call_backend_method(backend.get_conn_value_version, key, version, team_name=team)
        return None if raw is None else as_connection(raw, key)
    value = call_backend_method(backend.get_variable_version, key, version, team_name=team)
    if value is not None and not isinstance(value, str):
        raise BackendError(f"backend returned a {type(value).__name__} for variable {key!r}, not a string")
    return value


def _put(state: LookupState, cache: TTLCache, pkey: CacheKey, resolution: Resolution) -> None:
    times = cache.put(pkey, resolution)
    if times is not None:
        state.publish(pkey, resolution, times)


def _adopt(
    state: LookupState, context: LookupContext, cache: TTLCache, pkey: CacheKey, entry: SharedEntry
) -> Resolution:
    if entry.source not in [e.name for e in state.entries]:
        return _resolve(state, context, cache, pkey, pkey[1].rpartition("\0")[2])
    resolution = Resolution(entry.value, entry.source, entry.version)
    offset = time.monotonic() - time.time()
    cache.put_entry(
        pkey, resolution, entry.fresh_until + offset, entry.stored_at + offset, entry.keep_until + offset
    )
    state.register_secrets(context.kind, context.key, resolution.value)  # type: ignore[arg-type]
    context.served("shared", entry.source)
    return resolution
