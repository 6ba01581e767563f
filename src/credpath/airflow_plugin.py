"""Airflow 3 plugin: credpath's web inventory inside Airflow's API server, under ``/credpath``.

Registered through the ``airflow.plugins`` entry point (only Airflow reads that group), so installing
credpath with the ``[airflow]`` and ``[web]`` extras is all it takes. It adds:

- ``fastapi_apps``: the inventory app (:mod:`credpath.web.app`) mounted at ``/credpath``, behind Airflow's
  own authentication and authorization: every route depends on the auth manager's
  ``requires_access_connection("GET")`` and ``requires_access_variable("GET")`` (the checks of Airflow's
  own connection and variable list endpoints): no token -> 401, a user not allowed to read connections
  and variables -> 403;
- ``external_views``: a "Secrets" entry in the UI's navigation (the page shown in Airflow's frame).

The search path served: ``CredpathBackend``'s when it is Airflow's configured secrets backend, else
Airflow's own chain (its configured custom backend, the environment and the metastore), each wrapped as a
roll-your-own backend (with listing for the environment and the metastore, which Airflow's classes lack).
The app is built on the first request, so loading the plugin (every Airflow process, ``airflow plugins``)
costs no search-path set-up. Metrics also go to Airflow's ``Stats`` (StatsD/OpenTelemetry as configured).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from credpath import _airflow_leases as airflow_leases
from credpath import _airflow_refresh as airflow_refresh

__all__ = ["URL_PREFIX", "CredpathPlugin", "airflow_search_path"]


log = logging.getLogger("credpath.airflow_plugin")

URL_PREFIX = "/credpath"


class _LazyApp:
    """An ASGI app that builds the inventory app (and its search path) on its first request."""

    def __init__(self) -> None:
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        from airflow.api_fastapi.core_api.security import requires_access_connection, requires_access_variable
        from fastapi import Depends

        from credpath import metrics
        from credpath.web.app import create_app

        try:
            from airflow.sdk.observability.stats import Stats

            metrics.enable(stats=Stats)
        except Exception:  # metrics to Airflow are a bonus; the page works without them
            log.debug("credpath: Airflow's Stats unavailable; metrics stay in /credpath/metrics only")
        return create_app(
            airflow_search_path(),
            dependencies=[
                Depends(requires_access_connection(method="GET")),
                Depends(requires_access_variable(method="GET")),
            ],
            title="Secrets",
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._build()
        await self._app(scope, receive, send)


def airflow_search_path() -> Any:
    """The search path Airflow resolves through: CredpathBackend's, else Airflow's chain, wrapped."""
    from airflow.configuration import ensure_secrets_loaded

    from credpath._search_path import SearchPath

    backends = ensure_secrets_loaded()
    for backend in backends:
        search_path = getattr(backend, "search_path", None)
        if type(backend).__name__ == "CredpathBackend" and isinstance(search_path, SearchPath):
            return search_path
    # Airflow's backends are read structurally (get_connection), not through the SecretsBackend protocol.
    entries: list[Any] = []
    for backend in backends:
        name = _NAMES.get(type(backend).__name__, type(backend).__name__)
        entries.append((name, _AirflowBackend(backend)))
    return SearchPath(entries)


_NAMES = {"EnvironmentVariablesBackend": "airflow-env", "MetastoreBackend": "airflow-metastore"}


class _AirflowBackend:
    """One of Airflow's own secrets backends as a credpath roll-your-own backend, plus listing where
    Airflow's class has none (the environment: ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*``; the metastore)."""

    list_connections: Callable[[], list[str]]
    list_variables: Callable[[], list[str]]

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        kind = type(backend).__name__
        self.cache_results = kind != "EnvironmentVariablesBackend"  # env reads are microseconds, and change
        if kind == "EnvironmentVariablesBackend":
            self.list_connections = lambda: _env_ids("AIRFLOW_CONN_")
            self.list_variables = lambda: _env_ids("AIRFLOW_VAR_")
        elif kind == "MetastoreBackend":
            self.list_connections = lambda: _metastore_ids("connection")
            self.list_variables = lambda: _metastore_ids("variable")

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """A credpath Connection: from the backend's ``get_conn_value``, else (Airflow's metastore, whose
        ``get_conn_value`` is not implemented) from its ``get_connection``, by attributes."""
        from credpath._reading import as_connection
        from credpath.model import Connection
        from credpath.protocol import call_backend_method

        try:
            value = call_backend_method(self.backend.get_conn_value, conn_id, team_name=team_name)
        except NotImplementedError:
            conn = call_backend_method(self.backend.get_connection, conn_id, team_name=team_name)
            return as_connection(conn, conn_id)
        return None if value is None else Connection.from_value(value, conn_id=conn_id)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        from credpath.protocol import call_backend_method

        return call_backend_method(self.backend.get_variable, key, team_name=team_name)  # type: ignore[no-any-return]

    def get_config(self, key: str) -> str | None:
        get: Any = getattr(self.backend, "get_config", None)
        return get(key) if callable(get) else None

    def describe(self) -> str:
        return f"Airflow {type(self.backend).__name__}"

    def check(self) -> str:
        if "list_connections" in self.__dict__:
            return f"ok ({len(self.list_connections())} connection(s) listed)"
        return "no check available"


def _env_ids(prefix: str) -> list[str]:
    return sorted(name[len(prefix) :].lower() for name in os.environ if name.startswith(prefix))


def _metastore_ids(kind: str) -> list[str]:
    from airflow.models import Connection, Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    column = Connection.conn_id if kind == "connection" else Variable.key
    with create_session() as session:
        return sorted(session.scalars(select(column)).all())


class CredpathPlugin(AirflowPlugin):  # type: ignore[misc]  # Airflow is untyped here
    name = "credpath"
    # Revoke a task's leases at its end; drop the ids a failed task read, so that its retry reads the stores.
    listeners = [airflow_leases, airflow_refresh]
    fastapi_apps = [{"app": _LazyApp(), "url_prefix": URL_PREFIX, "name": "credpath secrets inventory"}]
    external_views = [
        {
            "name": "Secrets",
            "href": f"{URL_PREFIX}/",
            "url_route": "credpath",
            "destination": "nav",
            "category": "admin",
        }
    ]
