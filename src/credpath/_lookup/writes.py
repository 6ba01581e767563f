"""Writes: which backend takes them, the team they are scoped to, and invalidating both cache tiers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from credpath import _audit
from credpath._lookup.model import Entry
from credpath._lookup.state import LookupState
from credpath.errors import ConfigError, ReadOnlyBackend
from credpath.protocol import accepts_team_name, supports

__all__ = ["team_kwargs", "writable_backend", "written"]

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


def written(state: LookupState, kind: Any, key: str, write: Callable[[], Any], **audit: Any) -> Any:
    """Run ``write`` and forget ``key`` in both tiers, one write at a time; one audit event (``audit``:
    operation, backend, team, value: :func:`credpath._audit.timed`)."""
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
