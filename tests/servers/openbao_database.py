"""OpenBao's database secrets engine on the test PostgreSQL, and the lease sources' contract harnesses.

``openbao_database`` mounts a fresh ``database`` engine on the session's OpenBao dev server, connects it to
the session's PostgreSQL (the built-in ``postgresql-database-plugin``, as the fixture's superuser) and
creates a dynamic role with a short default TTL; after the test the mount is disabled (which revokes every
lease it still holds). The role's users get CONNECT and nothing else: enough to log in and ``SELECT
current_user``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from tests.servers.openbao import OpenBao, VaultBackends, VaultHarness

if TYPE_CHECKING:
    from credpath.backends.vault_database import VaultDatabaseBackend
    from tests.servers.postgres import PostgresServer

CREATION = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
    'GRANT CONNECT ON DATABASE postgres TO "{{name}}";',
]


@dataclass
class DatabaseEngine:
    """A database engine mount with one role (``role``) on the test PostgreSQL."""

    server: OpenBao
    postgres: PostgresServer
    mount: str
    role: str
    default_ttl: int
    max_ttl: int

    def write(self, path: str, data: dict[str, Any]) -> None:
        response = self.server.admin.adapter.post(f"/v1/{path}", json=data)
        status = getattr(response, "status_code", 204)
        if status >= 400:
            raise RuntimeError(f"writing {path} failed: HTTP {status}")

    def create_role(self, role: str, default_ttl: int, max_ttl: int) -> None:
        self.write(
            f"{self.mount}/roles/{role}",
            {
                "db_name": "pg",
                "creation_statements": CREATION,
                "default_ttl": f"{default_ttl}s",
                "max_ttl": f"{max_ttl}s",
            },
        )

    def leases(self, role: str | None = None) -> list[str]:
        """The lease ids OpenBao holds for the role (LIST sys/leases/lookup/<mount>/creds/<role>/)."""
        import requests

        reply = requests.request(
            "LIST",
            f"{self.server.addr}/v1/sys/leases/lookup/{self.mount}/creds/{role or self.role}/",
            headers={"X-Vault-Token": self.server.root_token},
            timeout=10,
        )
        if reply.status_code == 404:
            return []
        reply.raise_for_status()
        return list(reply.json().get("data", {}).get("keys", []))

    def pg_users(self) -> set[str]:
        """Login roles Vault created (their names start with ``v-``)."""
        import psycopg

        with psycopg.connect(self.postgres.admin_url, autocommit=True) as conn:
            rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'").fetchall()
        return {row[0] for row in rows}

    def template(self, **extra: Any) -> dict[str, Any]:
        """A ``leases`` entry for the role with the connection's non-secret fields."""
        return {
            "role": self.role,
            "mount": self.mount,
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": self.postgres.port,
            "schema": "postgres",
            **extra,
        }

    def backend_kwargs(self, url: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return {
            "url": url or self.server.addr,
            "token": self.server.root_token,
            "leases": {"pg_reporting": self.template()},
            **kwargs,
        }


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def mount_database(
    server: OpenBao, postgres: PostgresServer, default_ttl: int, max_ttl: int
) -> DatabaseEngine:
    # Imported here: importing the postgres plugin module before pytest loads it would skip its rewrite.
    from tests.servers.postgres import PG_PASSWORD, PG_USER

    mount = f"db-{uuid.uuid4().hex[:8]}"
    server.admin.sys.enable_secrets_engine("database", path=mount)
    engine = DatabaseEngine(server, postgres, mount, "reporting", default_ttl, max_ttl)
    engine.write(
        f"{mount}/config/pg",
        {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{postgres.port}/postgres",
            "username": PG_USER,
            "password": PG_PASSWORD,
            "allowed_roles": "*",
            "verify_connection": True,
        },
    )
    engine.create_role("reporting", default_ttl, max_ttl)
    return engine


@pytest.fixture
def openbao_database(openbao: OpenBao, postgres_server: PostgresServer) -> Iterator[DatabaseEngine]:
    """A fresh database engine mount, role ``reporting`` with a 10 s default TTL and a 30 s max TTL."""
    engine = mount_database(openbao, postgres_server, default_ttl=10, max_ttl=30)
    try:
        yield engine
    finally:
        try:
            openbao.admin.sys.disable_secrets_engine(engine.mount)  # revokes what is left
        except Exception:  # the server was stopped by the test
            pass


class _DatabaseBackends(VaultBackends):
    def __call__(self, **kwargs: Any) -> VaultDatabaseBackend:
        from credpath.backends.vault_database import VaultDatabaseBackend

        backend = VaultDatabaseBackend(**{**self.defaults, **kwargs})
        self.made.append(backend)
        return backend


class VaultDatabaseHarness(VaultHarness):
    """Contract harness: vault-database backends on a clean KV v2 mount (ids that are not leased are read
    from KV exactly as the vault backend reads them), seeded with hvac like the vault harness."""

    def __init__(self, server: OpenBao, mount: str) -> None:
        super().__init__(server, mount)
        self.backends = _DatabaseBackends(url=server.addr, token=server.root_token, mount_point=mount)


@pytest.fixture
def vault_database_harness(openbao: OpenBao, openbao_kv2: str) -> Iterator[VaultDatabaseHarness]:
    harness = VaultDatabaseHarness(openbao, openbao_kv2)  # the mount fixture removes the mount after
    yield harness
    harness.close()
