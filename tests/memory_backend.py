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
    capabilities = frozenset({"write", "list"})

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

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: str = "json"
    ) -> None:
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
        self._maybe_fail()
        return sorted(self.connections)

    def list_variables(self) -> list[str]:
        self._maybe_fail()
        return sorted(self.variables)


class BatchMemoryBackend(MemoryBackend):
    """Adds the optional batch read, as the AWS backends have."""

    capabilities = MemoryBackend.capabilities | {"batch"}

    def get_conn_values(self, ids: list[str]) -> dict[str, str]:
        self.calls.append(("get_conn_values", tuple(ids)))
        self._maybe_fail()
        return {i: self.connections[i] for i in ids if i in self.connections}

    def get_variables(self, keys: list[str]) -> dict[str, str]:
        self.calls.append(("get_variables", tuple(keys)))
        self._maybe_fail()
        return {k: self.variables[k] for k in keys if k in self.variables}


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


class GatedMemoryBackend(MemoryBackend):
    """Reads wait for ``gate`` (a threading.Event) before answering, so concurrent callers pile up."""

    def __init__(self, *args, **kwargs) -> None:
        import threading

        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def get_conn_value(self, conn_id: str) -> str | None:
        self.entered.set()
        assert self.gate.wait(10), "gate never opened"
        return super().get_conn_value(conn_id)


class PrefixMemoryBackend(MemoryBackend):
    """Adds prefix prefetch, as the AWS and SQL backends have."""

    capabilities = MemoryBackend.capabilities | {"prefetch"}

    def prefetch_connections(self) -> dict[str, str]:
        self.calls.append(("prefetch_connections", None))
        self._maybe_fail()
        return dict(self.connections)

    def prefetch_variables(self) -> dict[str, str]:
        self.calls.append(("prefetch_variables", None))
        self._maybe_fail()
        return dict(self.variables)


class TeamMemoryBackend(MemoryBackend):
    """Scopes by team (Airflow 3.2+): ``team_connections[(team, id)]`` first, then the global value."""

    def __init__(self, *args, team_connections=None, team_variables=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.team_connections: dict[tuple[str, str], str] = dict(team_connections or {})
        self.team_variables: dict[tuple[str, str], str] = dict(team_variables or {})

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        self.calls.append(("get_conn_value", conn_id, team_name))
        self._maybe_fail()
        if team_name is not None and (team_name, conn_id) in self.team_connections:
            return self.team_connections[(team_name, conn_id)]
        return self.connections.get(conn_id)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        self.calls.append(("get_variable", key, team_name))
        self._maybe_fail()
        if team_name is not None and (team_name, key) in self.team_variables:
            return self.team_variables[(team_name, key)]
        return self.variables.get(key)


class UncachedMemoryBackend(MemoryBackend):
    """Like env and files: reads cost microseconds and may change, so the search path never caches them."""

    cache_results = False


class SlowStartMemoryBackend(MemoryBackend):
    """A one-time start-up (``prepare``) taking ``startup`` seconds, as importing a client library does."""

    def __init__(self, *args, startup: float = 0.05, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.startup = startup
        self.prepared = 0

    def prepare(self) -> None:
        import time

        if not self.prepared:
            time.sleep(self.startup)
        self.prepared += 1

    def get_conn_value(self, conn_id: str) -> str | None:
        assert self.prepared, "read before prepare()"
        return super().get_conn_value(conn_id)


class DownBackend(MemoryBackend):
    """Every read fails with a transient error, as a store in an outage does (for CLI tests via config)."""

    store_name = "Down Store"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_with = Unreachable(f"{self.label}: cannot reach 127.0.0.1:1 (connection refused)")

    def check(self) -> str:
        raise self.fail_with


class SettingMemoryBackend(MemoryBackend):
    """A store with a constructor setting, as Azure's ``on_deleted``: every instance and its setting is
    recorded in ``built`` (class-wide), so a CLI test can see how the command built the backend."""

    built: list[SettingMemoryBackend] = []

    def __init__(self, *args, on_deleted: str = "fail", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_deleted = on_deleted
        self.written: list[tuple[str, str]] = []  # (key, the setting in force when it was written)
        SettingMemoryBackend.built.append(self)

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        self.written.append((key, self.on_deleted))
        super().set_variable(key, value, overwrite=overwrite)

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: str = "json"
    ) -> None:
        self.written.append((conn.conn_id, self.on_deleted))
        super().set_connection(conn, overwrite=overwrite, serialization=serialization)
