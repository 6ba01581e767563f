"""A dict-backed backend for testing the search path's own logic (order, patterns, cache, errors).

It is a complete implementation of the protocol over a dict, not a mock of a server; every store's real
backend is tested against its real server in tests/backends/.
"""

from __future__ import annotations

from credpath.errors import BackendError, ConfigError
from credpath.model import Connection
from credpath.protocol import BaseBackend


class MemoryBackend(BaseBackend):
    alias = "memory"

    def __init__(self, connections=None, variables=None, config=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.connections: dict[str, str] = dict(connections or {})
        self.variables: dict[str, str] = dict(variables or {})
        self.config: dict[str, str] = dict(config or {})
        self.calls: list[tuple[str, object]] = []
        self.fail_with: Exception | None = None

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def get_conn_value(self, conn_id: str) -> str | None:
        self.calls.append(("get_conn_value", conn_id))
        self._maybe_fail()
        return self.connections.get(conn_id)

    def get_variable(self, key: str) -> str | None:
        self.calls.append(("get_variable", key))
        self._maybe_fail()
        return self.variables.get(key)

    def get_config(self, key: str) -> str | None:
        self.calls.append(("get_config", key))
        self._maybe_fail()
        return self.config.get(key)

    def set_connection(self, conn: Connection, *, overwrite: bool = True) -> None:
        if not overwrite and conn.conn_id in self.connections:
            raise ConfigError(f"connection {conn.conn_id!r} exists")
        self.connections[conn.conn_id] = conn.get_uri()

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        self.variables[key] = value

    def delete_connection(self, conn_id: str) -> bool:
        return self.connections.pop(conn_id, None) is not None

    def delete_variable(self, key: str) -> bool:
        return self.variables.pop(key, None) is not None

    def list_connections(self) -> list[str]:
        return sorted(self.connections)

    def list_variables(self) -> list[str]:
        return sorted(self.variables)


class BatchMemoryBackend(MemoryBackend):
    """Adds the optional batch read, as the AWS backends have."""

    def get_conn_values(self, ids: list[str]) -> dict[str, str]:
        self.calls.append(("get_conn_values", tuple(ids)))
        self._maybe_fail()
        return {i: self.connections[i] for i in ids if i in self.connections}


class Unreachable(BackendError):
    pass


class AirflowStyleBackend:
    """A "roll your own" backend as Airflow's docs describe it: no credpath base class, JSON kwargs."""

    def __init__(self, prefix: str = "team") -> None:
        self.prefix = prefix

    def get_conn_value(self, conn_id: str) -> str | None:
        if conn_id.startswith(self.prefix):
            return f"http://svc:pw-s3cr3t@{conn_id}.internal:8080/api"
        return None

    def get_variable(self, key: str) -> str | None:
        return f"{self.prefix}:{key}" if key.startswith(self.prefix) else None

    def get_config(self, key: str) -> str | None:
        return None


class ConnectionObjectBackend:
    """Only ``get_connection``, returning a foreign connection object (like Airflow's)."""

    class _Conn:
        conn_type = "postgres"
        host = "legacy-db"
        login = "svc"
        password = "pw-s3cr3t"
        schema = "main"
        port = 5432
        extra = '{"sslmode": "require"}'
        description = "from an object"

    def get_connection(self, conn_id: str):
        return self._Conn() if conn_id == "legacy" else None

    def get_variable(self, key: str) -> str | None:
        return None
