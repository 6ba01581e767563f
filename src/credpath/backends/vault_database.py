"""Connections whose login and password are leased from Vault's (or OpenBao's) database secrets engine.

``vault-database`` is a Vault backend (every Vault kwarg: url, auth, KV paths) plus ``leases``, a map of
connection id -> database role. Such an id's login and password are minted by
``<database_mount>/creds/<role>`` (dynamic: a new database user per process, under a lease) or read from
``<database_mount>/static-creds/<role>`` (``static = true``: a user Vault rotates); its other fields
(conn_type, host, port, schema, extra) come from the entry itself or, when it gives none, from the
connection stored at the id's usual KV path (a template without login and password). Every other id is
read from KV exactly as the ``vault`` backend reads it.

The lease life cycle (one lease per process, renewal at two thirds of the TTL, revocation at exit or when an
Airflow task ends) is :mod:`credpath._leases`; ``share = "node"`` or ``"deployment"`` (the backend's default
or an entry's) shares one lease through the shared cache tier instead (:mod:`credpath._lease_sharing`).
``cache_results = False``: no cache tier (process or shared) keeps a copy of a leased credential past its
lease; the lease manager (or the sealed shared record, which the tier drops at expiry) is the only
holder. It also means ids of this backend that are NOT leased are read from KV uncached: keep static
connections in a ``vault`` backend of their own.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from credpath import _leases
from credpath._deadlines import Deadline
from credpath.backends.vault.backend import VaultBackend
from credpath.backends.vault.session import Reply
from credpath.errors import ConfigError

if TYPE_CHECKING:
    from credpath.model import Connection

__all__ = ["VaultDatabaseBackend"]

log = logging.getLogger("credpath.backends.vault_database")

#: The keys a lease entry may hold: the role and where it is, and the connection's non-secret fields.
_ENTRY_KEYS = frozenset(
    {"role", "static", "mount", "conn_type", "host", "port", "schema", "extra", "description", "share"}
)
_TEMPLATE_FIELDS = ("conn_type", "host")


class VaultDatabaseBackend(_leases.LeasedIds, VaultBackend):
    """Vault's kwargs, plus ``leases`` (id -> role or entry) and ``database_mount`` (default "database")."""

    alias: ClassVar[str] = "vault-database"
    store_name: ClassVar[str] = "Vault database engine"
    # A leased credential lives in the lease manager only: no cache tier may keep it past its lease.
    cache_results: ClassVar[bool] = False
    # A minted credential has no stored versions to pin, nor a cached one to check.
    capabilities = VaultBackend.capabilities - {"versions", "version_check"}

    def __init__(
        self,
        leases: dict[str, Any] | None = None,
        database_mount: str = "database",
        share: str = "process",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from credpath._lease_sharing import check_share

        self.share = check_share(share, "share", self.config_error)
        if not isinstance(database_mount, str) or not database_mount.strip("/"):
            raise self.config_error(
                "database_mount must be the database engine's mount path, e.g. 'database'"
            )
        self.database_mount = database_mount.strip("/")
        self.leases = _leases.parse_entries(
            leases, self._entry, self.config_error, shorthand="role", known=_ENTRY_KEYS
        )
        self.lease_key_prefix = f"vault-database:{self.name}:{id(self)}:"

    def _entry(self, conn_id: str, entry: Any) -> dict[str, Any]:
        where = f"leases.{conn_id}"
        role = entry.get("role")
        if not isinstance(role, str) or not role or "/" in role:
            raise self.config_error(f"{where}.role must be a database role name")
        given = [f for f in ("conn_type", "host", "port", "schema", "extra") if f in entry]
        missing = [f for f in _TEMPLATE_FIELDS if not entry.get(f)]
        if given and missing:
            raise self.config_error(f"{where}: the connection template is missing {', '.join(missing)}")
        port = entry.get("port")
        if port is not None and (isinstance(port, bool) or not str(port).isdigit()):
            raise self.config_error(f"{where}.port must be a port number")
        extra = entry.get("extra")
        if extra is not None and not isinstance(extra, dict | str):
            raise self.config_error(f"{where}.extra must be an object")
        mount = entry.get("mount", self.database_mount)
        if not isinstance(mount, str) or not mount.strip("/"):
            raise self.config_error(f"{where}.mount must be a mount path")
        from credpath._lease_sharing import check_share

        share = check_share(entry.get("share", self.share), f"{where}.share", self.config_error)
        static = bool(entry.get("static", False))
        return {**entry, "mount": mount.strip("/"), "static": static, "share": share}

    def use_shared_state(self, state: Any) -> None:
        super().use_shared_state(state)
        self.lease_tier = state.tier  # where leases shared per node or deployment live

    # --- reads -------------------------------------------------------------------------------------

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        entry = self.leases.get(conn_id)
        if entry is None or not self.wants("connection", conn_id):
            return super().get_connection(conn_id, team_name)
        conn: Connection = self.leased(conn_id)
        return conn

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        if conn_id in self.leases and self.wants("connection", conn_id):
            conn = self.get_connection(conn_id, team_name)
            return None if conn is None else conn.to_json()
        return super().get_conn_value(conn_id, team_name)

    # --- the lease source (credpath._leases) -------------------------------------------------------

    def _template(self, conn_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        """The connection's non-secret fields: the entry's, else the connection stored at the id's path."""
        if entry.get("conn_type"):
            fields = {
                k: entry.get(k) for k in ("conn_type", "host", "port", "schema", "extra", "description")
            }
            if isinstance(fields["extra"], dict):
                fields["extra"] = json.dumps(fields["extra"])
            return fields
        stored = super().get_connection(conn_id)
        if stored is None:
            raise self.config_error(
                f"lease {conn_id!r}: no connection template; give conn_type and host in leases.{conn_id} "
                "or store the connection (without login and password) at its usual path"
            )
        missing = [f for f in _TEMPLATE_FIELDS if not getattr(stored, f)]
        if missing:
            raise self.config_error(f"lease {conn_id!r}: the stored template is missing {', '.join(missing)}")
        return {
            "conn_type": stored.conn_type,
            "host": stored.host,
            "port": stored.port,
            "schema": stored.schema,
            "extra": stored.extra,
            "description": stored.description,
        }

    def mint(self, key: str) -> _leases.Minted:
        conn_id = self.conn_id_of(key)
        entry = self.leases[conn_id]
        template = self._template(conn_id, entry)
        mount, role = entry["mount"], entry["role"]
        path = f"{mount}/{'static-creds' if entry['static'] else 'creds'}/{role}"
        body = self._guarded(lambda deadline: self._read_creds(path, conn_id, entry, deadline))
        data = body.get("data") or {}
        username, password = data.get("username"), data.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise self.error(f"{path} answered without a username and password for lease {conn_id!r}")
        from credpath._masking import mask_secret
        from credpath.model import Connection

        mask_secret(password)
        port = template.get("port")
        conn = Connection(
            conn_id=conn_id,
            conn_type=template["conn_type"],
            description=template.get("description"),
            host=template["host"],
            login=username,
            password=password,
            schema=template.get("schema"),
            port=int(port) if port is not None else None,
            extra=template.get("extra"),
        )
        if entry["static"]:
            # No lease: the password is good until Vault rotates it (``ttl`` seconds from now).
            return _leases.Minted(conn, "", float(data.get("ttl") or 60), renewable=False)
        return _leases.Minted(
            conn,
            str(body.get("lease_id") or ""),
            float(body.get("lease_duration") or 0),
            renewable=bool(body.get("renewable")),
        )

    def _read_creds(
        self, path: str, conn_id: str, entry: dict[str, Any], deadline: Deadline
    ) -> dict[str, Any]:
        what = f"minting credentials for lease {conn_id!r} ({path})"
        reply = self.session.request("GET", path, deadline=deadline, what=what)
        if reply.status == 200:
            return reply.json()
        errors = reply.errors().lower()
        role, mount = entry["role"], entry["mount"]
        if reply.status == 404 or "no handler for route" in errors:
            raise ConfigError(
                f"{self.label}: no database secrets engine is mounted at {mount!r} (reading {path})"
            )
        if reply.status == 403:
            raise ConfigError(f"{self.label}: the Vault policy denies read on {path} (lease {conn_id!r})")
        if reply.status == 400 and ("unknown role" in errors or "not found" in errors or "no role" in errors):
            raise ConfigError(
                f"{self.label}: database role {role!r} does not exist at {mount!r} (lease {conn_id!r})"
            )
        raise self.session.status_error(reply, what)

    def _lease_call(self, operation: str, body: dict[str, Any], deadline: Deadline) -> Reply:
        what = f"{operation.rstrip('e')}ing a database lease"
        return self.session.request("PUT", f"sys/leases/{operation}", deadline=deadline, what=what, body=body)

    def renew(self, lease_id: str, increment: float) -> float:
        def run(deadline: Deadline) -> float:
            body = {"lease_id": lease_id, "increment": max(1, round(increment))}
            reply = self._lease_call("renew", body, deadline)
            if reply.status in (400, 403, 404):
                raise _leases.LeaseRefused(
                    f"Vault refused the renewal (HTTP {reply.status}): {reply.errors()}"
                )
            if reply.status != 200:
                raise self.session.status_error(reply, "renewing a database lease")
            return float(reply.json().get("lease_duration") or 0)

        return self._guarded(run)

    def revoke(self, lease_id: str) -> None:
        def run(deadline: Deadline) -> None:
            reply = self._lease_call("revoke", {"lease_id": lease_id}, deadline)
            if reply.status not in (200, 204):
                raise self.session.status_error(reply, "revoking a database lease")

        self._guarded(run)

    # --- life cycle and description -----------------------------------------------------------------

    def describe(self) -> str:
        leased = ",".join(sorted(self.leases)) or "-"
        text = f"{super().describe()} database={self.database_mount} leased={leased}"
        text += self.lease_lines()
        counted = _leases.counts(self.name)
        if any(counted.values()):
            text += "; leases " + " ".join(f"{k}={v}" for k, v in counted.items())
        return text
