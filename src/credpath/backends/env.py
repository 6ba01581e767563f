"""Airflow's environment-variables backend: ``AIRFLOW_CONN_<ID>`` and ``AIRFLOW_VAR_<KEY>``.

Reads ``os.environ`` at call time (no snapshot), so a variable exported after start-up is seen. Ids are
upper-cased for the lookup, as Airflow does; listing returns them lower-cased (the environment cannot tell
``my_conn`` from ``MY_CONN``). ``get_config`` always misses, like Airflow's backend (config comes from
``AIRFLOW__SECTION__KEY``, which is Airflow's config layer, not a secrets backend).
"""

from __future__ import annotations

import os
from typing import ClassVar

from credpath.protocol import BaseBackend, iter_ids

CONN_ENV_PREFIX = "AIRFLOW_CONN_"
VAR_ENV_PREFIX = "AIRFLOW_VAR_"


class EnvironmentBackend(BaseBackend):
    """Connections and variables from environment variables (read-only)."""

    alias: ClassVar[str] = "env"
    store_name: ClassVar[str] = "environment variables"

    def get_conn_value(self, conn_id: str) -> str | None:
        if not self.wants("connection", conn_id):
            return None
        return os.environ.get(CONN_ENV_PREFIX + conn_id.upper())

    def get_variable(self, key: str) -> str | None:
        if not self.wants("variable", key):
            return None
        return os.environ.get(VAR_ENV_PREFIX + key.upper())

    def get_config(self, key: str) -> str | None:
        return None

    def get_conn_values(self, ids: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for conn_id in ids:
            value = self.get_conn_value(conn_id)
            if value is not None:
                found[conn_id] = value
        return found

    def get_variables(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for key in keys:
            value = self.get_variable(key)
            if value is not None:
                found[key] = value
        return found

    @staticmethod
    def _ids(prefix: str) -> list[str]:
        return iter_ids(
            name[len(prefix) :].lower() for name in os.environ if name.startswith(prefix) and name != prefix
        )

    def list_connections(self) -> list[str]:
        return [i for i in self._ids(CONN_ENV_PREFIX) if self.wants("connection", i)]

    def list_variables(self) -> list[str]:
        return [i for i in self._ids(VAR_ENV_PREFIX) if self.wants("variable", i)]

    def describe(self) -> str:
        return f"environment variables {CONN_ENV_PREFIX}* / {VAR_ENV_PREFIX}*"
