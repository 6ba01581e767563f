"""Airflow's environment-variables backend: ``AIRFLOW_CONN_<ID>`` and ``AIRFLOW_VAR_<KEY>``.

Reads ``os.environ`` at call time (no snapshot), so a variable exported after start-up is seen; the search
path never caches this backend (``cache_results = False``), so it is seen at once. Ids are upper-cased for the
lookup, as Airflow does; listing returns them lower-cased (the environment cannot tell ``my_conn`` from
``MY_CONN``). ``get_config`` always misses, like Airflow's backend (config comes from
``AIRFLOW__SECTION__KEY``, which is Airflow's config layer, not a secrets backend).

Multi-team, as ``airflow/secrets/environment_variables.py`` (3.3.2): with a ``team_name``, the team's name
``AIRFLOW_CONN__<TEAM>___<ID>`` (``AIRFLOW_VAR__<TEAM>___<KEY>``) is read first, then the team-agnostic one;
an empty team value falls through to the team-agnostic name, as in Airflow. In multi-team mode an id that
contains ``___`` spells out a team namespace and never resolves (a team could otherwise read another team's
secret by asking for ``_other___id``). Multi-team mode is Airflow's ``[core] multi_team``: read from
Airflow's configuration when Airflow is loaded in the process, else from ``AIRFLOW__CORE__MULTI_TEAM``; the
``multi_team`` kwarg overrides both.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, ClassVar, Unpack

from credpath.protocol import BackendOptions, BaseBackend, Capability, iter_ids, multi_team_enabled

if TYPE_CHECKING:
    from credpath.model import Connection

__all__ = ["CONN_ENV_PREFIX", "VAR_ENV_PREFIX", "EnvironmentBackend"]


CONN_ENV_PREFIX = "AIRFLOW_CONN_"
VAR_ENV_PREFIX = "AIRFLOW_VAR_"
# Separates the team name from the secret id in a team-namespaced name: AIRFLOW_CONN__<TEAM>___<ID>.
TEAM_SEP = "___"


class EnvironmentBackend(BaseBackend):
    """Connections and variables from environment variables (read-only).

    :param multi_team: force Airflow's ``[core] multi_team`` on or off for this backend (default: read it).
    """

    alias: ClassVar[str] = "env"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"list", "batch"})
    store_name: ClassVar[str] = "environment variables"
    # os.environ costs microseconds and may change under the process: never served from the cache.
    cache_results: ClassVar[bool] = False

    def __init__(self, multi_team: bool | None = None, **options: Unpack[BackendOptions]) -> None:
        super().__init__(**options)
        if multi_team is not None and not isinstance(multi_team, bool):
            raise self.config_error(f"multi_team must be true or false, got {type(multi_team).__name__}")
        self.multi_team = multi_team

    def _multi_team(self) -> bool:
        return multi_team_enabled() if self.multi_team is None else self.multi_team

    def _names_a_team_namespace(self, secret_id: str) -> bool:
        # Only in multi-team mode, as Airflow: otherwise no team-scoped name can exist to collide with.
        return TEAM_SEP in secret_id and self._multi_team()

    def _read(self, prefix: str, secret_id: str, team_name: str | None) -> str | None:
        if self._names_a_team_namespace(secret_id):
            return None
        if team_name:
            team_value = os.environ.get(f"{prefix}_{team_name.upper()}{TEAM_SEP}{secret_id.upper()}")
            if team_value:  # Airflow's walrus: an empty team value falls through
                return team_value
        return os.environ.get(prefix + secret_id.upper())

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        if not self.wants("connection", conn_id):
            return None
        return self._read(CONN_ENV_PREFIX, conn_id, team_name)

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        value = self.get_conn_value(conn_id, team_name=team_name)
        # Airflow's BaseSecretsBackend.get_connection: an empty value is no connection.
        if not value:
            return None
        return self.deserialize_connection(conn_id, value)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        if not self.wants("variable", key):
            return None
        return self._read(VAR_ENV_PREFIX, key, team_name)

    def get_config(self, key: str) -> str | None:
        return None

    def get_conn_values(self, ids: list[str], team_name: str | None = None) -> dict[str, str]:
        found: dict[str, str] = {}
        for conn_id in ids:
            value = self.get_conn_value(conn_id, team_name=team_name)
            if value is not None:
                found[conn_id] = value
        return found

    def get_variables(self, keys: list[str], team_name: str | None = None) -> dict[str, str]:
        found: dict[str, str] = {}
        for key in keys:
            value = self.get_variable(key, team_name=team_name)
            if value is not None:
                found[key] = value
        return found

    def _ids(self, prefix: str, team_name: str | None) -> list[str]:
        """Ids a lookup would resolve: team-agnostic names, plus the team's own when ``team_name``."""
        multi_team = self._multi_team()
        ids: set[str] = set()
        team_prefix = f"{prefix}_{team_name.upper()}{TEAM_SEP}" if team_name else None
        for name in os.environ:
            if team_prefix and name.startswith(team_prefix) and name != team_prefix:
                ids.add(name[len(team_prefix) :].lower())
            elif name.startswith(prefix) and name != prefix:
                secret_id = name[len(prefix) :]
                if not (multi_team and TEAM_SEP in secret_id):  # a team's name, not an id
                    ids.add(secret_id.lower())
        return iter_ids(ids)

    def list_connections(self, team_name: str | None = None) -> list[str]:
        return [i for i in self._ids(CONN_ENV_PREFIX, team_name) if self.wants("connection", i)]

    def list_variables(self, team_name: str | None = None) -> list[str]:
        return [i for i in self._ids(VAR_ENV_PREFIX, team_name) if self.wants("variable", i)]

    def describe(self) -> str:
        return f"environment variables {CONN_ENV_PREFIX}* / {VAR_ENV_PREFIX}*"
