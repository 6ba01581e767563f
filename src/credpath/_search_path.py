"""The search path: ordered backends, lookup patterns, error policy, cache tiers, explain, prefetch, writes.

:class:`SearchPath` is a facade over :mod:`credpath._lookup` (one concern per module: the trace of a lookup,
the error policy with its written rules, resolution, the cache tiers, prefetch, writes, listing).

Resilience (see :mod:`credpath._resilience`): each backend has a circuit breaker; concurrent lookups of one
key share one read (single-flight); a value whose refresh fails with a transient error is served stale for
up to ``[cache] stale_if_error`` seconds, and its store is asked again only after a growing back-off.
Backends whose class sets ``cache_results = False`` (env, files) are never served from the cache: they are
asked live, ahead of a cached answer from a later backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from time import monotonic as _monotonic
from typing import Any

from credpath._cache import CacheSettings, TTLCache
from credpath._lookup import listing, operations, prefetch, rotation, writes
from credpath._lookup import trace as _trace
from credpath._lookup.model import MISS as _MISS
from credpath._lookup.model import Attempt, Entry, Explanation, Listing, PrefetchReport, Resolution
from credpath._lookup.state import FROM_SETTINGS, LookupState
from credpath._masking import Masker
from credpath._reading import as_connection, read_connection  # noqa: F401  (the reader owns them)
from credpath._resilience import BreakerSettings
from credpath._settings import BackendSpec, Settings
from credpath.errors import NotFound
from credpath.model import Connection
from credpath.protocol import Backend, Kind, Serialization

__all__ = [
    "Attempt",
    "Entry",
    "Explanation",
    "Listing",
    "PrefetchReport",
    "Resolution",
    "SearchPath",
    "answer",
]

_UNSET: Any = object()
#: The connection id suffix that pins a version (credpath._lookup.pinned.SUFFIX; imported on first use).
_SUFFIX = "@"


class SearchPath(LookupState):
    """Resolve connections, variables and config through backends in order; the first hit wins."""

    def __init__(
        self,
        backends: Iterable[Backend | tuple[str, Backend] | BackendSpec] = (),
        *,
        cache: CacheSettings | TTLCache | bool | None = True,
        masker: Masker | None = None,
        mask_logs: bool = True,
        breaker: BreakerSettings | None = None,
        shared: Any = FROM_SETTINGS,
    ) -> None:
        super().__init__(breaker)
        backends = list(backends)
        for item in backends:
            self.add_backend(item)
        self.set_tiers(cache, masker, mask_logs, shared, backends)

    @classmethod
    def from_config(
        cls,
        path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        *,
        backend_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> SearchPath:
        from credpath._settings import search_path_from_config

        return search_path_from_config(path, env, backend_kwargs=backend_kwargs)

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
        from credpath._settings import build_search_path

        return build_search_path(settings, backend_kwargs=backend_kwargs, **kwargs)

    def backend(self, name: str) -> Backend:
        return self._entry(name).backend

    def breaker_state(self, name: str) -> str:
        """The circuit breaker of backend ``name``, as a safe one-line description."""
        return self._entry(name).breaker.describe()

    # --- reads -------------------------------------------------------------------------------------

    def get_connection(
        self,
        conn_id: str,
        *,
        team_name: str | None = None,
        refresh: bool = False,
        version: str | int | None = None,
    ) -> Connection:
        """The connection ``conn_id`` from the first backend that has it, in search-path order.

        A fresh cached answer costs no store call (the cache is keyed by kind, id and ``team_name``; misses
        are cached for ``[cache] miss_ttl``). ``team_name`` is the caller's team (Airflow 3.2+ multi-team);
        it goes only to backends whose reads accept it. Raises :class:`NotFound` (every backend answered,
        none has it), :class:`BackendUnavailable` (nothing found and a backend failed), :class:`AccessDenied`
        (a store refused the caller: authoritative, no fall-through) or :class:`ConfigError` (a wrong setting
        or a missing client library). ``refresh=True`` reads the store again (:meth:`refresh`: at most once
        per id per second, whoever asks).

        ``version`` (or the id suffix ``my_db@3``) pins the read: that version, from the backends that keep
        versions (:meth:`lookup`).
        """
        if version is not None:
            from credpath._lookup import pinned

            return pinned.read(self, "connection", conn_id, version, team_name).value  # type: ignore[no-any-return]
        if refresh and _SUFFIX not in conn_id:  # a version never changes: nothing to refresh
            resolution = self.refresh("connection", conn_id, team_name=team_name)
            if resolution is None:
                raise NotFound("connection", conn_id)
            return resolution.value  # type: ignore[no-any-return]
        now = _monotonic()
        if now >= self._epoch_next:
            rotation.check_epoch(self, now)
        item = self._data.get(("connection", conn_id, team_name))  # inlined cache hit: the hot path
        if (
            item is not None
            and item[0] >= now
            and item[1] is not _MISS
            and not self._live_before.get(item[1].source)
            and not _trace._sinks  # a subscriber hears of every lookup, hits included
        ):
            return item[1].value  # type: ignore[no-any-return]
        resolution = self.lookup("connection", conn_id, team_name=team_name)
        if resolution is None:
            raise NotFound("connection", conn_id)
        return resolution.value  # type: ignore[no-any-return]

    def get_variable(
        self,
        key: str,
        default: Any = _UNSET,
        *,
        deserialize_json: bool = False,
        team_name: str | None = None,
        refresh: bool = False,
        version: str | int | None = None,
    ) -> Any:
        """The value of ``key`` (parsed as JSON with ``deserialize_json=True``); ``default`` if no backend
        has it, and without a default a miss raises :class:`NotFound`.

        ``default`` stands in for a missing variable, not for an outage: if nothing is found and a backend
        failed, :class:`BackendUnavailable` is raised even when a default is given. ``refresh=True`` and
        ``version`` as for :meth:`get_connection` (no id suffix: Airflow allows ``@`` in variable keys); a
        version not found raises even with a default, which stands in for the key only.
        """
        resolution: Resolution | None
        if version is not None:
            from credpath._lookup import pinned

            resolution = pinned.read(self, "variable", key, version, team_name)
        elif refresh:
            resolution = self.refresh("variable", key, team_name=team_name)
        else:
            resolution = self.lookup("variable", key, team_name=team_name)
        return answer("variable", key, resolution, default, deserialize_json)

    def get_config(self, key: str, default: Any = _UNSET, *, team_name: str | None = None) -> Any:
        """The Airflow config value ``key`` from the backends' config prefixes; ``default`` and errors as for
        :meth:`get_variable`, without JSON parsing."""
        return answer("config", key, self.lookup("config", key, team_name=team_name), default)

    def get_conn_value(self, conn_id: str, *, team_name: str | None = None) -> str | None:
        """Airflow's ``get_conn_value``: the connection's URI, or None if no backend has it; other errors
        as for :meth:`get_connection`."""
        resolution = self.lookup("connection", conn_id, team_name=team_name)
        return None if resolution is None else resolution.value.get_uri()

    def lookup(
        self, kind: Kind, key: str, *, team_name: str | None = None, version: str | int | None = None
    ) -> Resolution | None:
        """Resolve through the cache tiers then the backends; ``None`` when every backend asked answered
        "not here". Raises :class:`BackendUnavailable` when nothing was found and a backend failed, and
        lets AccessDenied and ConfigError through (:mod:`credpath._lookup.policy`). Concurrent calls for
        one ``(kind, key, team_name)`` share one resolution (single-flight).

        ``version`` pins the read (:mod:`credpath._lookup.pinned`): only backends that keep versions are
        asked, the answer is cached under its version and survives every invalidation of the id, and a
        version nobody has raises :class:`~credpath._lookup.pinned.VersionNotFound`. A connection id may
        carry it as a suffix, ``my_db@3``: Airflow allows no ``@`` in a connection id, so no id is read
        differently than before. A version nobody has is None here, as any miss (Airflow's backend reads
        this), and :class:`~credpath._lookup.pinned.VersionNotFound` from :meth:`get_connection`."""
        if version is None and (kind != "connection" or _SUFFIX not in key):
            return operations.lookup(self, kind, key, team_name)
        from credpath._lookup import pinned

        try:
            return pinned.read(self, kind, key, version, team_name)
        except pinned.VersionNotFound:
            return None

    def refresh(self, kind: Kind, key: str, *, team_name: str | None = None) -> Resolution | None:
        """Read ``key`` from the stores again (after a rotation), dropping it from both tiers so that every
        process of the deployment serves the new value within a second; at most one store read per id per
        second, shared by every caller (callers inside that second get its result). None: not found."""
        return rotation.refresh(self, kind, key, team_name)

    def invalidate_all(self) -> int:
        """Drop every cached id in this process and, with a shared tier, in every process of the
        deployment (within a second); returns the shared entries removed."""
        self.cache.clear()
        self._refreshed.clear()
        return 0 if self.shared is None else self.shared.invalidate_all()

    def explain(
        self,
        kind: Kind,
        key: str,
        *,
        use_cache: bool = False,
        team_name: str | None = None,
        version: str | int | None = None,
    ) -> Explanation:
        """Which backend serves ``key``, and the outcome, lookup time, start-up time and breaker state of
        every backend tried: the kept trace of one resolution. An outage is reported (``failed``,
        ``unavailable``; a stale value with its age and its refresh back-off), not raised. With ``version``
        (or a connection id's ``@`` suffix), the pinned read's record: ``version`` is the version served."""
        if version is None and (kind != "connection" or _SUFFIX not in key):
            return operations.explain(self, kind, key, use_cache, team_name)
        from credpath._lookup import pinned

        return pinned.explain(self, kind, key, version, team_name)

    def prefetch(
        self,
        connections: Sequence[str] = (),
        variables: Sequence[str] = (),
        *,
        prefix: bool = False,
        team_name: str | None = None,
        concurrency: int = prefetch.CONCURRENCY,
        timeout: float | None = None,
    ) -> dict[Kind, PrefetchReport]:
        """Fill the cache for many ids with as few API calls as the backends allow.

        Backends with batch reads (``get_conn_values``/``get_variables``) are asked once per batch; others
        id by id, ``concurrency`` reads at once. ``timeout`` (seconds) bounds the whole prefetch by id: past
        it no read starts and the ids not read are errors (each store call keeps its own deadline). With
        ``prefix=True`` every value under each backend's prefix is loaded (``prefetch_connections``/
        ``prefetch_variables``), cached only where no earlier backend has the id.
        Errors follow the one error policy; failed ids are simply not cached.
        """
        kinds: tuple[tuple[Kind, Sequence[str]], ...] = (("connection", connections), ("variable", variables))
        return operations.prefetch(self, kinds, prefix, team_name, concurrency, timeout)

    # --- writes ------------------------------------------------------------------------------------

    def writable_backend(self, to: str | None, operation: str = "set_connection") -> Entry:
        """The entry a write goes to: ``to``, else Airflow's metastore, else the first backend that declares
        "write". ``operation`` (``set_connection``, ``delete_variable``, ...) only words the refusal."""
        return writes.writable_backend(self, to, operation)

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
        default, JSON for credpath's own). ``team_name`` is the owner, for a store whose writes are
        team-scoped (the metastore); other stores refuse it. Store behaviour (e.g. Azure's ``on_deleted``)
        is the backend's own setting, not a write option."""
        return writes.set_connection(self, conn, to, overwrite, serialization, team_name)

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
        return writes.set_variable(self, key, value, to, overwrite, team_name)

    def delete_connection(self, conn_id: str, *, to: str | None = None) -> str | None:
        """Delete ``conn_id`` from backend ``to`` (default as :meth:`set_connection`); its name, or None
        if it was not there."""
        return writes.delete(self, "connection", conn_id, to)

    def delete_variable(self, key: str, *, to: str | None = None) -> str | None:
        """Delete variable ``key`` (as :meth:`delete_connection`)."""
        return writes.delete(self, "variable", key, to)

    def list_ids(self, kind: Kind) -> Listing:
        """Every id of ``kind`` the backends can list: a :class:`Listing` ``(found, cannot_list)`` with
        ``.failed``, the backends that failed to list (AccessDenied/ConfigError propagate; on_error="fail"
        raises)."""
        return listing.list_ids(self, kind)


def answer(
    kind: Kind, key: str, resolution: Resolution | None, default: Any = _UNSET, deserialize_json: bool = False
) -> Any:
    """What ``get_variable`` / ``get_config`` (and their async twins) return for a resolution: its value (a
    variable parsed as JSON on request), ``default`` for a miss, else :class:`NotFound`."""
    if resolution is None:
        if default is _UNSET:
            raise NotFound(kind, key)
        return default
    if deserialize_json:
        from credpath.model import Variable

        return Variable(key, resolution.value).deserialize()
    return resolution.value
