"""VaultBackend: reads, writes, deletes and listings on a KV mount (the counterpart of Airflow's
``airflow.providers.hashicorp.secrets.vault.VaultBackend``; the KV engine's paths and versions live in
``kv.py``, auth and the session in ``auth.py`` and ``session.py``, its settings in ``settings.py``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Unpack

from credpath._deadlines import Deadline
from credpath._lookup.trace import VersionCheck
from credpath.backends import _keymap
from credpath.backends._status import Row, StatusTable
from credpath.backends.vault import kv
from credpath.backends.vault.kv import KV_VERSION_SHARED_TTL, KvEngine
from credpath.backends.vault.session import (
    SEALED,
    Reply,
    Session,
    forget_session,
    safe_url,
    session_for,
)
from credpath.backends.vault.settings import (
    DEFAULT_KUBERNETES_JWT_PATH,
    DEFAULT_TIMEOUT,
    PathSetting,
    VaultSettings,
)
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.protocol import (
    BackendOptions,
    BaseBackend,
    Capability,
    Kind,
    PinnedReads,
    Serialization,
    WriteConfirmation,
    pinned_version,
)

if TYPE_CHECKING:
    import requests

    from credpath._shared_cache import SharedState
    from credpath.model import Connection

__all__ = [
    "KV_VERSION_SHARED_TTL",
    "OPERATION_TABLE",
    "VaultBackend",
    "WriteConflict",
]

log = logging.getLogger("credpath.backends.vault")
T = TypeVar("T")

#: An operation's answer on a KV path -> credpath error, in the backend's voice (``self.error``).
OPERATION_TABLE = StatusTable(
    "Vault",
    rows=(
        Row(
            AccessDenied,
            "permission denied on {mount}/{path} (auth_type {auth_type!r}); the token's policy needs "
            "{capability!r} on this path",
            statuses=frozenset({403}),
        ),
        Row(BackendError, "Vault at {url} is sealed (HTTP 503) while {action}", codes=frozenset({SEALED})),
    ),
    default=Row(BackendError, "{action} failed (HTTP {status}{detail})"),
)


class WriteConflict(ConfigError):
    """A KV v2 check-and-set write lost against another writer; nothing was overwritten."""


class VaultBackend(PinnedReads, BaseBackend):
    """Connections, variables and config from a Vault/OpenBao KV mount (Airflow's kwargs)."""

    alias: ClassVar[str] = "vault"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {"write", "list", "structured", "versions", "version_check"}
    )
    version_form: ClassVar[str] = "a KV v2 version number (1, 2, ...)"
    store_name: ClassVar[str] = "HashiCorp Vault"
    requires: ClassVar[tuple[str, ...]] = ("requests",)  # hvac: see auth.py
    extra: ClassVar[str | None] = "vault"

    def __init__(
        self,
        connections_path: PathSetting = "connections",
        variables_path: PathSetting = "variables",
        config_path: PathSetting = "config",
        use_team_secrets_path: bool = True,
        global_secrets_path: str | None = None,
        url: str | None = None,
        auth_type: str = "token",
        auth_mount_point: str | None = None,
        mount_point: str | None = "secret",
        kv_engine_version: int | str | None = 2,
        token: str | None = None,
        token_path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        key_id: str | None = None,
        secret_id: str | None = None,
        role_id: str | None = None,
        assume_role_kwargs: dict[str, Any] | None = None,
        region: str | None = None,
        kubernetes_role: str | None = None,
        kubernetes_jwt_path: str = DEFAULT_KUBERNETES_JWT_PATH,
        gcp_key_path: str | None = None,
        gcp_keyfile_dict: dict[str, Any] | str | None = None,
        gcp_scopes: str | None = None,
        azure_tenant_id: str | None = None,
        azure_resource: str | None = None,
        radius_host: str | None = None,
        radius_secret: str | None = None,
        radius_port: int | None = None,
        jwt_role: str | None = None,
        jwt_token: str | None = None,
        jwt_token_path: str | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify: bool | str = True,
        cert: str | tuple[str, str] | list[str] | None = None,
        proxies: dict[str, str] | None = None,
        soft_delete: bool = False,
        version_check: bool = False,
        **options: Unpack[BackendOptions],
    ) -> None:
        """Airflow's kwargs (hashicorp provider 4.8.4), plus ``soft_delete`` (KV v2 deletes keep the
        versions: only the current one is deleted, undeletable) and credpath's :class:`BackendOptions`."""
        super().__init__(**options)
        # Every parameter by name (first statement after super(): no other locals yet), so the signature
        # stays the one list of kwargs and VaultSettings the one place that checks them.
        kwargs = dict(locals())
        for name in ("self", "options", "__class__", "version_check"):
            kwargs.pop(name, None)
        #: Every setting, checked once (frozen); the session gets ``settings.client``.
        self.settings = VaultSettings.from_kwargs(self.config_error, **kwargs)
        if global_secrets_path is not None:
            warnings.warn(
                "global_secrets_path is deprecated (as in Airflow's provider): give each *_path a list of "
                'paths instead, e.g. connections_path = ["connections/team1", "connections/common"]',
                DeprecationWarning,
                stacklevel=2,
            )
        s = self.settings
        #: Where each id lives and each mount's KV version (the KV engine's paths: ``kv.py``).
        self._kv = KvEngine(s, self.error)
        self.paths = self._kv.paths
        self.use_team_secrets_path = s.use_team_secrets_path
        self.mount_point = s.mount_point
        self.kv_engine_version = s.kv_engine_version
        self.url = s.url
        self.auth_type = s.auth_type
        self.timeout = s.timeout
        self._session: Session | None = None
        if not isinstance(version_check, bool):
            raise self.config_error("version_check must be true or false")
        #: At expiry, KV v2 metadata first (current_version): an unchanged secret is not read again.
        self.version_check = version_check

    # --- session -----------------------------------------------------------------------------------

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = session_for(self.settings.client)
            if self._session.logins == 0 and self.name:
                self._session.backend_name = self.name
        return self._session

    @property
    def http_session(self) -> requests.Session:
        """The requests session behind every call (no network I/O): calls go to its adapter's urllib3 pool
        (directly, unless requests would add something: see ``Session._direct_pool``), its response hooks
        see every request (tests count with them), and an adapter mounted on it carries them instead."""
        return self.session.http

    def prepare(self) -> None:
        """Import the HTTP client and build the session (no network): a forked task process inherits it."""
        self.session.prepare()

    def close(self) -> None:
        if self._session is not None:
            forget_session(self._session)
            self._session.close()
            self._session = None

    def describe(self) -> str:
        mount = self.mount_point or "<first segment of the id>"
        kv = "auto" if self.kv_engine_version == "auto" else f"v{self.kv_engine_version}"
        return f"vault {safe_url(self.url)} mount={mount} kv={kv} auth={self.auth_type}"

    def check(self) -> str:
        def probe(deadline: Deadline) -> str:
            session = self.session
            token = session.token(deadline)
            # A handed-in token is not checked before reads (Airflow does not either); here it is.
            reply = session.call(
                "GET", "auth/token/lookup-self", deadline=deadline, what="checking the token", token=token
            )
            if reply.status == 403:
                raise AccessDenied(f"Vault refused the token (auth_type {self.auth_type!r})")
            if reply.status == 404:
                raise BackendError(
                    f"{session.safe_url} answered HTTP 404 to a token lookup: is it a Vault server?"
                )
            if reply.status != 200:
                raise session.status_error(reply, "checking the token")
            return f"authenticated ({self.auth_type}) at {session.safe_url}"

        return self._guarded(probe)

    def _guarded(self, func: Callable[[Deadline], T]) -> T:
        """Run one store call within one deadline (``timeout``); errors speak in this backend's voice."""
        deadline = Deadline(self.timeout)
        try:
            return func(deadline)
        except (BackendError, ConfigError) as exc:
            if isinstance(exc, BackendError):
                exc.backend = exc.backend or self.name
            message = str(exc)
            if not message.startswith(self.label):
                exc.args = (f"{self.label}: {message}", *exc.args[1:])
            raise

    # --- answers --------------------------------------------------------------------------------------

    def _where(self, mount: str, path: str) -> str:
        return f"{mount}/{path}"

    def _deny(self, mount: str, path: str, capability: str = "read") -> AccessDenied:
        # A dead token was already told apart (lookup-self) and replaced or reported, so this is the policy's.
        fields = {"mount": mount, "path": path, "auth_type": self.auth_type, "capability": capability}
        return OPERATION_TABLE.error(403, None, fields, self.error)  # type: ignore[return-value]

    def _raise_for_status(
        self,
        reply: Reply,
        mount: str,
        path: str,
        capability: str,
        action: str,
        ok: tuple[int, ...] = (200,),
        with_server_errors: bool = False,
    ) -> None:
        """An answer outside ``ok`` (and any 403 or sealed one) -> the error OPERATION_TABLE names."""
        status, code = reply.status, reply.code
        if status in ok and OPERATION_TABLE.row(status, code) is OPERATION_TABLE.default:
            return
        fields = {
            "mount": mount,
            "path": path,
            "auth_type": self.auth_type,
            "capability": capability,
            "url": safe_url(self.url),
            "action": action,
            "status": status,
            "detail": lambda: f": {reply.errors()}" if with_server_errors and reply.errors() else "",
        }
        raise OPERATION_TABLE.error(status, code, fields, self.error)

    def _request(
        self, method: str, path: str, deadline: Deadline, what: str, body: Any = None, retry: bool = True
    ) -> Reply:
        return self.session.request(method, path, deadline=deadline, what=what, body=body, retry=retry)

    def use_shared_state(self, state: SharedState) -> None:
        """With a shared cache tier, a mount's detected KV version is found once per tier, not per process."""
        self._kv.shared_state = state

    def _kv_version(self, mount: str, deadline: Deadline) -> int | None:
        return self._kv.version(self.session, mount, deadline)

    # --- reads -------------------------------------------------------------------------------------

    def accepts_version(self, version: str) -> bool:
        # KV v2 numbers versions from 1 (``?version=0`` would read the latest: never a pin).
        return self.kv_engine_version != 1 and version.isascii() and version.isdigit() and int(version) > 0

    def read_secret(
        self, kind: Kind, key: str, team_name: str | None = None
    ) -> tuple[str, dict[str, Any]] | None:
        """(display path, secret map) of an id, or None on a miss (404, soft-deleted, destroyed).

        Each configured path is tried in order until one holds the id (Airflow 4.8.4)."""
        locations = self._kv.locations(kind, key, team_name)
        if not locations:
            return None
        return self._guarded(lambda deadline: self._read_first(locations, deadline))

    def _read_first(
        self, locations: list[tuple[str, str]], deadline: Deadline
    ) -> tuple[str, dict[str, Any]] | None:
        for mount, path in locations:
            found = self._read_one(mount, path, deadline)
            if found is not None:
                return found
        return None

    def _read_one(self, mount: str, path: str, deadline: Deadline) -> tuple[str, dict[str, Any]] | None:
        version = self._kv_version(mount, deadline)
        if version is None:
            return None
        where = self._where(mount, path)
        pin = pinned_version()
        if pin is not None and version != 2:
            raise self.config_error(f"mount {mount!r} is KV v1, which keeps no versions (version {pin!r})")
        if pin is not None and not self.accepts_version(pin):  # never the latest in place of a pin
            raise self.config_error(f"version {pin[:80]!r} is not {self.version_form}")
        reply = self.session.shared_get(
            kv.quoted(kv.data_path(mount, path, version)) + ("" if pin is None else f"?version={int(pin)}"),
            deadline=deadline,
            what=f"reading {where}",
        )
        if reply.status == 404:
            return None
        self._raise_for_status(reply, mount, path, "read", f"reading {where}")
        data = kv.secret_map(reply.body, version, where, self.error)
        if data is None:
            return None
        log.debug("vault: read %s", where)
        return where, data

    def check_version(self, kind: Kind, key: str, team_name: str | None, version: str) -> VersionCheck | None:
        """Whether KV v2 ``version`` is still the secret's current one: one metadata read (versions and
        times, never the value). None where it cannot tell (KV v1, several configured paths)."""
        locations = self._kv.locations(kind, key, team_name)
        if len(locations) != 1:
            return None
        mount, path = locations[0]

        def run(deadline: Deadline) -> VersionCheck | None:
            if self._kv_version(mount, deadline) != 2:
                return None
            what = f"reading metadata of {mount}/{path}"
            reply = self._request("GET", kv.quoted(kv.metadata_path(mount, path)), deadline, what)
            if reply.status == 404:
                return VersionCheck(False)
            self._raise_for_status(reply, mount, path, "read", what)
            return kv.version_check(reply.json(), version)

        return self._guarded(run)

    def _wanted_secret(
        self, kind: Kind, key: str, team_name: str | None = None
    ) -> tuple[str, dict[str, Any]] | None:
        """read_secret, after the lookup-pattern check (an id the patterns skip costs no request)."""
        if not self.wants(kind, key):
            return None
        return self.read_secret(kind, key, team_name)

    def _connection_data(self, conn_id: str, team_name: str | None) -> dict[str, Any] | None:
        found = self._wanted_secret("connection", conn_id, team_name)
        return None if found is None else found[1]

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        data = self._connection_data(conn_id, team_name)
        return None if data is None else _keymap.conn_value(data)

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        data = self._connection_data(conn_id, team_name)
        return None if data is None else _keymap.connection(self, conn_id, data)

    def _value(self, kind: Kind, key: str, team_name: str | None = None) -> str | None:
        found = self._wanted_secret(kind, key, team_name)
        if found is None:
            return None
        where, data = found
        value = _keymap.value_of(data)
        if value is None:
            # As Airflow's VaultBackend: a warning and a miss (the next backend is asked), not an error.
            log.warning(
                "%s: secret %s was fetched but has no 'value' key (keys present: %s); treated as not found",
                self.label,
                where,
                _keymap.keys_present(data),
            )
        return value

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return self._value("variable", key, team_name)

    def get_config(self, key: str) -> str | None:
        return self._value("config", key)

    # --- writes ------------------------------------------------------------------------------------

    def _writable(self, kind: Kind, key: str, deadline: Deadline) -> tuple[str, str, int]:
        located = self._kv.locate(kind, key)
        if located is None:
            setting = {
                "connection": "connections_path",
                "variable": "variables_path",
                "config": "config_path",
            }[kind]
            if not self.paths[kind]:
                raise self.config_error(f"{setting} is null, so {kind} writes are off")
            raise self.config_error(f"{kind} id {key!r} is not a valid Vault path here")
        mount, path = located
        version = self._kv_version(mount, deadline)
        if version is None:
            raise self._deny(mount, path, "create")
        return mount, path, version

    def _write(
        self, kind: Kind, key: str, data: dict[str, Any], *, overwrite: bool
    ) -> WriteConfirmation | None:
        return self._guarded(lambda deadline: self._write_in(kind, key, data, overwrite, deadline))

    def _post(self, mount: str, path: str, version: int, body: dict[str, Any], deadline: Deadline) -> Reply:
        # Writes are never replayed: a lost answer may hide a write that happened.
        return self._request(
            "POST",
            kv.quoted(kv.data_path(mount, path, version)),
            deadline,
            f"writing {self._where(mount, path)}",
            body,
            retry=False,
        )

    def _write_in(
        self, kind: Kind, key: str, data: dict[str, Any], overwrite: bool, deadline: Deadline
    ) -> WriteConfirmation | None:
        """Write; KV v2 answers the version it created (the write's confirmation), KV v1 answers 204."""
        mount, path, version = self._writable(kind, key, deadline)
        where = self._where(mount, path)
        if version == 1:
            if not overwrite and self._read_one(mount, path, deadline) is not None:
                raise self.config_error(f"{kind} {key!r} already exists at {where}")
            reply = self._post(mount, path, version, data, deadline)
        else:
            # overwrite=False is create-only, atomically on the server (check-and-set 0).
            body: dict[str, Any] = {"data": data} if overwrite else {"data": data, "options": {"cas": 0}}
            reply = self._post(mount, path, version, body, deadline)
            if reply.status == 400 and "check-and-set" in reply.errors():
                if not overwrite:
                    raise self.config_error(f"{kind} {key!r} already exists at {where}")
                # The mount (or secret) requires check-and-set (cas_required): overwrite the version there
                # is now; a writer in between wins and nothing is overwritten.
                current = self._current_version(mount, path, deadline)
                reply = self._post(
                    mount, path, version, {"data": data, "options": {"cas": current}}, deadline
                )
                if reply.status == 400 and "check-and-set" in reply.errors():
                    raise WriteConflict(
                        f"{self.label}: {where} changed since version {current}; not overwritten"
                    )
        self._raise_for_status(
            reply, mount, path, "create/update", f"writing {where}", ok=(200, 204), with_server_errors=True
        )
        log.debug("vault: wrote %s", where)
        created = kv.created_version(reply.json()) if version == 2 and reply.status == 200 else None
        return None if created is None else WriteConfirmation(created)

    def _current_version(self, mount: str, path: str, deadline: Deadline) -> int:
        """KV v2 current version of a secret (0: never written), for a check-and-set write."""
        what = f"reading metadata of {mount}/{path}"
        reply = self._request("GET", kv.quoted(kv.metadata_path(mount, path)), deadline, what)
        if reply.status == 404:
            return 0
        self._raise_for_status(reply, mount, path, "read", what)
        return kv.current_version(reply.json())

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: Serialization = "json"
    ) -> WriteConfirmation | None:
        """Vault keeps fields. ``serialization="json"`` (default) stores the connection's fields as the
        secret's keys (lossless; what Airflow reads as JSON); ``"uri"`` stores ``conn_uri`` (plus
        ``description``), as ``migrate --format uri`` asks. A backend with a ``connection_format`` writes
        the secret in that shape."""
        conn_id, data = _keymap.connection_map(self, conn, serialization)
        return self._write("connection", conn_id, data, overwrite=overwrite)

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> WriteConfirmation | None:
        return self._write("variable", key, {"value": value}, overwrite=overwrite)

    def _delete(self, kind: Kind, key: str) -> bool:
        soft = self.settings.soft_delete

        def run(deadline: Deadline) -> bool:
            mount, path, version = self._writable(kind, key, deadline)
            where = self._where(mount, path)
            if version == 2 and not soft:
                target = kv.metadata_path(mount, path)  # every version and the metadata
                existed = self._request("GET", kv.quoted(target), deadline, f"reading {target}").status == 200
            else:
                target = kv.data_path(mount, path, version)
                existed = self._read_one(mount, path, deadline) is not None
            if not existed:
                return False
            reply = self._request("DELETE", kv.quoted(target), deadline, f"deleting {where}", retry=False)
            self._raise_for_status(reply, mount, path, "delete", f"deleting {where}", ok=(200, 204))
            log.debug("vault: deleted %s (%s)", where, "soft" if soft and version == 2 else "all versions")
            return True

        return self._guarded(run)

    def delete_connection(self, conn_id: str) -> bool:
        """Delete a connection; KV v2: every version and the metadata, or with the backend setting
        ``soft_delete = true`` only the current version (kept by Vault, undeletable)."""
        return self._delete("connection", conn_id)

    def delete_variable(self, key: str) -> bool:
        """Delete a variable (KV v2: as :meth:`delete_connection`, per ``soft_delete``)."""
        return self._delete("variable", key)

    # --- listing -----------------------------------------------------------------------------------

    def _list_tree(self, mount: str, prefix: str, version: int, deadline: Deadline) -> list[str]:
        found: list[str] = []
        pending = [""]
        while pending:
            sub = pending.pop()
            what = f"listing {mount}/{prefix}"
            folder = kv.list_folder(mount, prefix, version, sub)
            reply = self._request("LIST", kv.quoted(folder), deadline, what)
            if reply.status == 404:
                continue
            self._raise_for_status(reply, mount, f"{prefix}/{sub}".strip("/"), "list", what)
            for entry in (reply.json().get("data") or {}).get("keys") or []:
                if entry.endswith("/"):
                    pending.append(sub + entry)
                else:
                    found.append(sub + entry)
        return found

    def _list(self, kind: Kind) -> list[str]:
        prefixes = self.paths[kind]
        if not prefixes:
            return []

        def run(deadline: Deadline) -> list[str]:
            if self.mount_point is not None:
                mounts = [self.mount_point]
            else:
                what = "listing the mounts visible to this token"
                reply = self._request("GET", "sys/internal/ui/mounts", deadline, what)
                if reply.status != 200:
                    raise self.error(f"cannot list the mounts visible to this token (HTTP {reply.status})")
                mounts = kv.kv_mounts(reply.json())
            ids: set[str] = set()
            for mount in mounts:
                version = self._kv_version(mount, deadline)
                if version is None:
                    continue
                for prefix in prefixes:  # every configured path, as reads try them all
                    keys = self._list_tree(mount, prefix, version, deadline)
                    ids.update(self._kv.ids(mount, keys))
            return sorted(ids)

        return self._guarded(run)

    def list_connections(self) -> list[str]:
        return self._list("connection")

    def list_variables(self) -> list[str]:
        return self._list("variable")
