"""Writes: which backend takes them, the team they are scoped to, and invalidating both cache tiers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from credpath._lookup.model import Entry
from credpath._lookup.state import LookupState
from credpath.errors import ConfigError, ReadOnlyBackend
from credpath.model import Connection
from credpath.protocol import Kind, Serialization, accepts_team_name, supports

__all__ = ["delete", "set_connection", "set_variable", "team_kwargs", "writable_backend", "written"]

_OPERATIONS = {
    "set_connection": "write connections",
    "set_variable": "write variables",
    "delete_connection": "delete connections",
    "delete_variable": "delete variables",
}


def writable_backend(state: LookupState, to: str | None, operation: str = "set_connection") -> Entry:
    """The entry a write goes to: ``to``, else Airflow's metastore, else the first backend that declares
    "write". ``operation`` (``set_connection``, ``delete_variable``, ...) only words the refusal."""
    does = _OPERATIONS.get(operation, operation.replace("_", " "))
    if to is not None:
        entry = state._entry(to)
        if not supports(entry.backend, "write"):
            raise ReadOnlyBackend(f"{entry.label} cannot {does}")
        return entry
    for entry in state.entries:  # Airflow writes to the metastore; credpath to the first writable store
        if entry.name == "metastore" and supports(entry.backend, "write"):
            return entry
    for entry in state.entries:
        if supports(entry.backend, "write"):
            return entry
    raise ReadOnlyBackend(f"no backend in the search path can {does}")


def set_connection(
    state: LookupState,
    conn: Connection,
    to: str | None,
    overwrite: bool,
    serialization: Serialization | None,
    team_name: str | None,
) -> str:
    """:meth:`credpath._search_path.SearchPath.set_connection`."""
    if not conn.conn_id:
        raise ConfigError("connection has no conn_id")
    entry = writable_backend(state, to, "set_connection")
    backend: Any = entry.backend
    options: dict[str, Any] = team_kwargs(entry, backend.set_connection, team_name)
    if serialization is not None:  # unset: a foreign store's set_connection need not know the keyword
        options["serialization"] = serialization
    written(
        state,
        "connection",
        conn.conn_id,
        lambda: backend.set_connection(conn, overwrite=overwrite, **options),
        backend=entry.name,
        team=team_name,
        value=conn,
    )
    return entry.name


def set_variable(
    state: LookupState, key: str, value: str, to: str | None, overwrite: bool, team_name: str | None
) -> str:
    """:meth:`credpath._search_path.SearchPath.set_variable`."""
    if not isinstance(value, str):
        raise ConfigError(f"variable {key!r}: value must be a string, got {type(value).__name__}")
    entry = writable_backend(state, to, "set_variable")
    backend: Any = entry.backend
    team = team_kwargs(entry, backend.set_variable, team_name)
    written(
        state,
        "variable",
        key,
        lambda: backend.set_variable(key, value, overwrite=overwrite, **team),
        backend=entry.name,
        team=team_name,
        value=value,
    )
    return entry.name


def delete(state: LookupState, kind: Kind, key: str, to: str | None) -> str | None:
    """Delete ``key`` of ``kind``: the backend's name, or None if it did not have it."""
    entry = writable_backend(state, to, f"delete_{kind}")
    backend: Any = entry.backend
    method = backend.delete_connection if kind == "connection" else backend.delete_variable
    deleted = written(state, kind, key, lambda: method(key), operation="delete", backend=entry.name)
    return entry.name if deleted else None


def written(state: LookupState, kind: Any, key: str, write: Callable[[], Any], **audit: Any) -> Any:
    """Run ``write`` and forget ``key`` in both tiers, one write at a time; one audit event (``audit``:
    operation, backend, team, value: :func:`credpath._audit.timed`)."""
    from credpath import _audit  # imported at the first write: a read-only process never needs it

    operation = audit.pop("operation", "write")
    with _audit.timed(operation, kind, key, **audit) as event, state._write_lock:
        result = write()
        state.invalidate(kind, key)
        if operation == "delete" and not result:
            event["outcome"] = "miss"
    return result


def team_kwargs(entry: Entry, method: Callable[..., Any], team_name: str | None) -> dict[str, str]:
    """``{"team_name": ...}`` for a write to a team-scoped store; a store without owners refuses a team
    (one line naming the backend) rather than writing a global entry the caller meant for one team."""
    if team_name is None:
        return {}
    if not accepts_team_name(method):
        raise ConfigError(f"{entry.label} has no team-scoped writes (team_name)")
    return {"team_name": team_name}
