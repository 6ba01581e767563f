"""Module-level API on a process-wide default search path (built from the config on first use)."""

from __future__ import annotations

import threading
from typing import Any

from credpath.model import Connection
from credpath.search_path import _UNSET, SearchPath

_default: SearchPath | None = None
_lock = threading.Lock()


def default_search_path() -> SearchPath:
    """The shared search path: one set of backend clients (one Vault login) per process."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = SearchPath.from_config()
    return _default


def set_default_search_path(search_path: SearchPath | None) -> None:
    """Replace (or with ``None``, forget) the process-wide search path, e.g. after changing settings."""
    global _default
    with _lock:
        old, _default = _default, search_path
    if old is not None and old is not search_path:
        old.close()


def get_connection(conn_id: str, *, team_name: str | None = None) -> Connection:
    """The connection from the default search path; NotFound if no backend has it, BackendUnavailable if
    nothing was found and a backend failed. ``team_name``: the caller's team (Airflow 3.2+ multi-team)."""
    return default_search_path().get_connection(conn_id, team_name=team_name)


def get_variable(
    key: str, default: Any = _UNSET, deserialize_json: bool = False, *, team_name: str | None = None
) -> Any:
    """The variable, or ``default`` if no backend has it. An outage (nothing found, a backend failed)
    raises BackendUnavailable even with a default: a default stands in for a missing value only."""
    return default_search_path().get_variable(
        key, default, deserialize_json=deserialize_json, team_name=team_name
    )


def get_config(key: str, default: Any = _UNSET, *, team_name: str | None = None) -> Any:
    """As :func:`get_variable`, for config keys."""
    return default_search_path().get_config(key, default, team_name=team_name)
