"""Module-level API on a process-wide default search path (built from the config on first use)."""

from __future__ import annotations

import threading
from typing import Any

from credpath._search_path import _UNSET, SearchPath
from credpath.model import Connection, validate_lookup_key

__all__ = [
    "aget_connection",
    "aget_variable",
    "default_search_path",
    "get_config",
    "get_connection",
    "get_variable",
    "set_default_search_path",
]


_default: SearchPath | None = None
_lock = threading.Lock()


def default_search_path() -> SearchPath:
    """The process-wide search path behind :func:`get_connection` and friends.

    Built on first use by the settings builder, as the CLI and the Airflow drop-in build theirs
    (``credpath.toml``, ``CREDPATH_*`` and Airflow's ``[secrets]`` settings), then shared: one set of
    backend clients (one Vault login) per process. Thread-safe. Raises
    :class:`~credpath.errors.ConfigError` if the configuration is wrong.
    """
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                from credpath._settings import search_path_from_config

                _default = search_path_from_config()
    return _default


def set_default_search_path(search_path: SearchPath | None) -> None:
    """Replace the process-wide search path (``None``: forget it, so the next call builds it again from
    the configuration), e.g. after changing settings or in tests. The old one is closed."""
    global _default
    with _lock:
        old, _default = _default, search_path
    if old is not None and old is not search_path:
        old.close()


def get_connection(
    conn_id: str, *, team_name: str | None = None, version: str | int | None = None
) -> Connection:
    """The connection ``conn_id`` from the first backend of the default search path that has it.

    Args:
        conn_id: the Airflow connection id.
        team_name: the caller's team (Airflow 3.2+ multi-team): backends that scope by team look in the
            team's names first; ``None`` asks team-agnostically.
        version: read this version (a pinned read): only backends that keep versions are asked (Vault KV
            v2, Secrets Manager, GCP Secret Manager, Azure Key Vault); ``conn_id`` may carry it as a
            suffix instead, ``my_db@3``. A version is cached under itself, never dropped by a rotation.

    Returns:
        A frozen :class:`~credpath.model.Connection` (``host``, ``login``, ``extra_dejson``, ``get_uri()``).
        Answers are cached per process (``[cache]``), misses too.

    Raises:
        NotFound: every backend answered and none has it (also a ``KeyError``).
        BackendUnavailable: nothing was found and at least one backend failed (an outage, not a miss).
        AccessDenied: a store refused the caller (never falls through to a later backend).
        ConfigError: a setting is wrong, ``conn_id`` is not a valid Airflow connection id (empty, a
            space), or a store's client library is not installed; with a version, also when no backend
            keeps versions or takes the version's form. A version nobody has raises ``NotFound``
            naming the id and the version.
    """
    if version is None:
        from credpath._lookup.pinned import split_suffix

        conn_id, version = split_suffix(conn_id)
    validate_lookup_key("connection", conn_id)
    return default_search_path().get_connection(conn_id, team_name=team_name, version=version)


def get_variable(
    key: str,
    default: Any = _UNSET,
    deserialize_json: bool = False,
    *,
    team_name: str | None = None,
    version: str | int | None = None,
) -> Any:
    """The variable ``key`` from the first backend of the default search path that has it.

    Args:
        key: the Airflow variable key.
        default: returned when no backend has the key; without it a miss raises ``NotFound``.
        deserialize_json: parse the value as JSON (as Airflow's ``Variable.get(deserialize_json=True)``).
        team_name: the caller's team (Airflow 3.2+ multi-team), as for :func:`get_connection`.
        version: read this version, as for :func:`get_connection` (no suffix form: Airflow allows ``@``
            in variable keys).

    Returns:
        The value (a string, or the parsed JSON), or ``default``.

    Raises:
        NotFound: no backend has it and no ``default`` was given.
        BackendUnavailable: nothing was found and a backend failed, even with a ``default``: a default
            stands in for a missing value, not for an outage.
        AccessDenied, ConfigError: as for :func:`get_connection`.
    """
    validate_lookup_key("variable", key)
    return default_search_path().get_variable(
        key, default, deserialize_json=deserialize_json, team_name=team_name, version=version
    )


def get_config(key: str, default: Any = _UNSET, *, team_name: str | None = None) -> Any:
    """The Airflow config value ``key`` (e.g. ``sql_alchemy_conn``) from the backends' config prefixes.

    As :func:`get_variable` (``default``, ``NotFound``, ``BackendUnavailable``), without JSON parsing.
    """
    validate_lookup_key("config", key)
    return default_search_path().get_config(key, default, team_name=team_name)


# --- async twins -------------------------------------------------------------------------------------------


async def _adefault() -> SearchPath:
    # Building the default path reads files and may import store clients: not on the event loop.
    if _default is not None:
        return _default
    from credpath import _aio

    return await _aio.run_blocking(default_search_path)


async def aget_connection(
    conn_id: str,
    *,
    team_name: str | None = None,
    timeout: float | None = None,
    version: str | int | None = None,
) -> Connection:
    """:func:`get_connection` for coroutines: the same tiers, answers and errors, without blocking the loop.

    The lookup runs in credpath's bounded thread pool; concurrent calls for one id (coroutines, threads,
    other loops) share one store request. ``timeout`` (seconds) bounds this call only: it raises
    :class:`~credpath.errors.BackendTimeout` while the shared lookup goes on for the others, as does
    cancelling the awaiting task. Each store call keeps its backend's own deadline.
    """
    from credpath import _aio

    return await _aio.aget_connection(
        await _adefault(), conn_id, team_name=team_name, timeout=timeout, version=version
    )


async def aget_variable(
    key: str,
    default: Any = _UNSET,
    deserialize_json: bool = False,
    *,
    team_name: str | None = None,
    timeout: float | None = None,
    version: str | int | None = None,
) -> Any:
    """:func:`get_variable` for coroutines, as :func:`aget_connection` is for :func:`get_connection`."""
    from credpath import _aio

    return await _aio.aget_variable(
        await _adefault(),
        key,
        default,
        deserialize_json=deserialize_json,
        team_name=team_name,
        timeout=timeout,
        version=version,
    )
