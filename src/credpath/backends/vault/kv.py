"""The KV secrets engine, v1 and v2, as the Vault backend sees it: where an id lives (a mount and a path
inside it, under the configured connections/variables/config paths), the engine's URL paths (``data/`` and
``metadata/`` on v2), each mount's KV version (configured, or detected once per process and once per shared
cache tier), and what KV's answers mean (a secret's key map, a version check, the version a write created).

No HTTP of its own: version detection goes through the session the backend hands in, and errors are built
by the backend's ``error`` (its voice)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from credpath._lookup.trace import VersionCheck, note_valid_until, note_version
from credpath.errors import AccessDenied, BackendError
from credpath.protocol import Kind, multi_team_enabled

if TYPE_CHECKING:
    from credpath._deadlines import Deadline
    from credpath._shared_cache import SharedState
    from credpath.backends.vault.session import Session
    from credpath.backends.vault.settings import VaultSettings

__all__ = [
    "KV_VERSION_SHARED_TTL",
    "KvEngine",
    "created_version",
    "current_version",
    "data_path",
    "kv_mounts",
    "list_folder",
    "metadata_path",
    "mount_version",
    "quoted",
    "secret_map",
    "valid_path",
    "version_check",
]

log = logging.getLogger("credpath.backends.vault")

#: How long a mount's detected KV version is shared by the processes of a shared cache tier (a mount is
#: rarely upgraded from v1 to v2; each process still keeps what it learnt for its whole life).
KV_VERSION_SHARED_TTL = 3600.0

#: The backend's error builder: ``(message, class) -> error`` in its voice (``BaseBackend.error``).
ErrorFactory = Callable[..., BackendError]


def valid_path(path: str) -> bool:
    # Dot segments would let an id escape its prefix (connections/../../sys/...); empty ones never exist.
    segments = path.split("/")
    return bool(path) and all(s not in ("", ".", "..") for s in segments)


def quoted(path: str) -> str:
    """A KV path as it goes into the URL (segments percent-encoded, the slashes kept)."""
    return quote(path, safe="/")


def data_path(mount: str, path: str, version: int) -> str:
    """Where a secret's value is read, written and soft-deleted."""
    return f"{mount}/data/{path}" if version == 2 else f"{mount}/{path}"


def metadata_path(mount: str, path: str) -> str:
    """KV v2: a secret's versions and times (never its value); deleting it deletes every version."""
    return f"{mount}/metadata/{path}"


def list_folder(mount: str, prefix: str, version: int, sub: str) -> str:
    """The LIST path of folder ``sub`` (``""`` or ending in '/') under a configured prefix, unquoted."""
    base = metadata_path(mount, prefix) if version == 2 else f"{mount}/{prefix}"
    folder = f"{base}/{sub}" if prefix else f"{base}{sub}"
    return folder.rstrip("/") + "/"


def mount_version(answer: dict[str, Any], fail: Callable[[str], Exception]) -> int:
    """A mount's KV version from its ``sys/internal/ui/mounts/<mount>`` answer; ``fail(reason)`` builds
    the error for a mount that is not a KV engine."""
    data = answer.get("data") or {}
    if data.get("type") not in ("kv", "generic"):
        raise fail(f"a {data.get('type')!r} engine, not kv")
    return 2 if str((data.get("options") or {}).get("version", "1")) == "2" else 1


def kv_mounts(answer: dict[str, Any]) -> list[str]:
    """The KV mounts of a ``sys/internal/ui/mounts`` answer (those visible to the token), sorted."""
    secret_mounts = (answer.get("data") or {}).get("secret") or {}
    return sorted(m.strip("/") for m, info in secret_mounts.items() if info.get("type") == "kv")


def _note_lease(body: dict[str, Any]) -> None:
    """A read that carries a lease (KV v1 with a ``ttl`` key, a dynamic secret) is served no longer than
    the lease: its end is the value's cap in every cache tier."""
    lease = body.get("lease_duration")
    if isinstance(lease, int | float) and not isinstance(lease, bool) and lease > 0:
        note_valid_until(time.time() + float(lease))


def secret_map(
    body: bytes, version: int, where: str, fail: Callable[[str], Exception]
) -> dict[str, Any] | None:
    """A secret's key map from a read's answer; None for a KV v2 secret deleted or destroyed. Notes the
    answer's lease and (v2) version on the lookup. ``fail(message)`` builds the error for an answer that is
    not a secret's (``where`` names the secret in it)."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):
        # Never a miss: a 200 that is not Vault's answer (a proxy page) must not hide a secret.
        raise fail(f"reading {where}: the response is not a Vault JSON object")
    data = answer["data"]
    _note_lease(answer)
    if version == 2:
        metadata = data.get("metadata") or {}
        if metadata.get("deletion_time") or metadata.get("destroyed"):
            return None
        note_version(metadata.get("version"))  # KV v2's version number, from this answer
        data = data.get("data")
        if data is None:
            return None
    if not isinstance(data, dict):
        raise fail(f"secret {where} is not a key/value map")
    return data


def version_check(answer: dict[str, Any], version: str) -> VersionCheck:
    """Whether ``version`` is the current, live one in a KV v2 metadata answer."""
    meta = answer.get("data") or {}
    current = meta.get("current_version")
    state = (meta.get("versions") or {}).get(str(current)) or {}
    if str(current) != version or state.get("deletion_time") or state.get("destroyed"):
        return VersionCheck(False)
    note_version(version)
    return VersionCheck(True)


def current_version(answer: dict[str, Any]) -> int:
    """A KV v2 metadata answer's current version (0: never written)."""
    return int((answer.get("data") or {}).get("current_version") or 0)


def created_version(answer: dict[str, Any]) -> str | None:
    """The version a KV v2 write created, from its answer (None when it names none)."""
    data = answer.get("data")
    created = data.get("version") if isinstance(data, dict) else None
    if isinstance(created, int) and not isinstance(created, bool) and created > 0:
        return str(created)
    return None


class KvEngine:
    """Where each id lives and which KV version each mount runs, from the backend's settings (Airflow's
    ``mount_point``, ``kv_engine_version``, ``*_path`` and ``use_team_secrets_path``)."""

    def __init__(self, settings: VaultSettings, error: ErrorFactory) -> None:
        self.settings = settings
        configured: tuple[tuple[Kind, tuple[str, ...] | None], ...] = (
            ("connection", settings.connections_path),
            ("variable", settings.variables_path),
            ("config", settings.config_path),
        )
        #: Per kind, the configured paths tried in order (Airflow 4.8.4); None switches the kind off.
        self.paths: dict[Kind, list[str] | None] = {
            kind: None if found is None else list(found) for kind, found in configured
        }
        self.mount_point = settings.mount_point
        self.error = error
        #: With a shared cache tier (the backend's ``use_shared_state``): detected versions are shared.
        self.shared_state: SharedState | None = None

    # --- where an id lives ----------------------------------------------------------------------------

    def names_a_team_namespace(self, kind: Kind, key: str, team_name: str | None) -> bool:
        """Airflow 4.8.4: in multi-team mode, an id with '/' looked up with no team could reach a team's
        secret under ``<path>/<team>/...``, so it is not looked up."""
        if kind == "config" or team_name is not None or not self.settings.use_team_secrets_path:
            return False
        if not multi_team_enabled():
            return False
        split = self._split(key)
        if split is None or "/" not in split[1]:
            return False
        log.warning(
            "vault: %s id %r contains '/' and is looked up with no team; in multi-team mode it could "
            "resolve a team's secret, so it is not looked up",
            kind,
            key,
        )
        return True

    def _split(self, key: str) -> tuple[str, str] | None:
        """(mount, rest of the id): Airflow's ``mount_point``, or with none the id's first segment."""
        if self.mount_point is not None:
            return self.mount_point, key
        if "/" not in key:
            return None
        mount, rest = key.split("/", 1)
        return mount, rest

    def locations(self, kind: Kind, key: str, team_name: str | None = None) -> list[tuple[str, str]]:
        """(mount, path inside the mount) of an id under each configured path, in order (Airflow's order)."""
        prefixes = self.paths[kind]
        if not prefixes or self.names_a_team_namespace(kind, key, team_name):
            return []
        split = self._split(key)
        if split is None:
            log.debug("vault: %s %r has no mount segment (mount_point is null)", kind, key)
            return []
        mount, rest = split
        scoped = kind != "config" and team_name is not None and self.settings.use_team_secrets_path
        scoped = scoped and multi_team_enabled()
        found: list[tuple[str, str]] = []
        for prefix in prefixes:
            base = "/".join(p for p in (prefix, team_name if scoped else "") if p)
            path = f"{base}/{rest}" if base else rest
            if valid_path(mount) and valid_path(path):
                found.append((mount, path))
            else:
                log.debug("vault: %s id %r is not a valid Vault path", kind, key)
        return found

    def locate(self, kind: Kind, key: str) -> tuple[str, str] | None:
        """Where writes, deletes and version reads go: the first configured path (no team scoping)."""
        prefixes = self.paths[kind]
        split = self._split(key) if prefixes else None
        if not prefixes or split is None:
            return None
        mount, rest = split
        path = f"{prefixes[0]}/{rest}" if prefixes[0] else rest
        if not valid_path(mount) or not valid_path(path):
            return None
        return mount, path

    def ids(self, mount: str, keys: Iterable[str]) -> list[str]:
        """The ids of keys listed under a mount: with no ``mount_point`` an id names its mount first."""
        return list(keys) if self.mount_point else [f"{mount}/{k}" for k in keys]

    # --- each mount's KV version ------------------------------------------------------------------------

    def version(self, session: Session, mount: str, deadline: Deadline) -> int | None:
        """The KV version of a mount: configured, or detected once per process (once per shared cache tier
        when one is configured); None if not visible."""
        configured = self.settings.kv_engine_version
        if configured != "auto":
            return int(configured)
        version = session.kv_versions.get(mount)
        if version is not None:
            return version
        what = f"detecting the KV version of mount {mount!r}"
        return session.flights.run(
            ("kv", mount),
            lambda: self._detect(session, mount, deadline, what),
            deadline,
            lambda: session.timeout_error(what, deadline),
        )

    def _detect(self, session: Session, mount: str, deadline: Deadline, what: str) -> int | None:
        # A fact of the server, not of the token: keyed by address, namespace and mount.
        shared_key = json.dumps(["kv_version", self.settings.url, session.settings.namespace, mount])
        if self.shared_state is not None:
            known = self.shared_state.get(shared_key)
            if known in (1, 2):
                log.debug("vault: mount %r is KV v%d (from the shared cache tier)", mount, known)
                session.kv_versions[mount] = known
                return int(known)
        reply = session.request(
            "GET", f"sys/internal/ui/mounts/{quoted(mount)}", deadline=deadline, what=what
        )
        if reply.status in (403, 404):
            # Vault answers 403 ("preflight capability check") both for no such mount and no access to it.
            if self.mount_point is None:
                return None
            raise self.error(
                f"mount {mount!r} does not exist or the token's policy grants nothing under it "
                f"(auth_type {self.settings.auth_type!r}); set kv_engine_version to 1 or 2 to skip detection",
                AccessDenied,
            )
        if reply.status != 200:
            raise session.status_error(reply, what)
        version = mount_version(reply.json(), lambda reason: self.error(f"mount {mount!r} is {reason}"))
        log.debug("vault: mount %r is KV v%d", mount, version)
        session.kv_versions[mount] = version
        if self.shared_state is not None:
            self.shared_state.put(shared_key, version, KV_VERSION_SHARED_TTL)
        return version
