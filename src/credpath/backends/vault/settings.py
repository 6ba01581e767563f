"""The Vault backend's settings: Airflow's kwargs, checked once into frozen, typed values.

:class:`ClientSettings` is what one authenticated session needs (transport and auth, the kwargs Airflow hands
its internal ``_VaultClient``); backends with equal client settings share one session per process.
:class:`VaultSettings` adds what the backend itself uses (paths, mount, KV version, deadline, deletes).
Every check raises a one-line :class:`ConfigError` naming the kwarg, never its value.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from credpath._settings import PORT, TIMEOUT, Number, check_number
from credpath.backends.vault.auth import AUTH_METHODS, AUTH_TYPES, DEFAULT_KUBERNETES_JWT_PATH
from credpath.errors import ConfigError

__all__ = [
    "DEFAULT_KUBERNETES_JWT_PATH",
    "DEFAULT_TIMEOUT",
    "ClientSettings",
    "KvVersion",
    "PathSetting",
    "VaultSettings",
]

DEFAULT_TIMEOUT = 30.0  # hvac's default, which Airflow's provider keeps

PathSetting = str | Sequence[str] | None
KvVersion = Literal[1, 2, "auto"]

# Kwargs that must be a string when given (credentials, names, paths); the others are checked one by one.
_STRINGS = (
    "auth_mount_point",
    "namespace",
    "token",
    "token_path",
    "username",
    "password",
    "key_id",
    "secret_id",
    "role_id",
    "region",
    "kubernetes_role",
    "kubernetes_jwt_path",
    "gcp_key_path",
    "gcp_scopes",
    "azure_tenant_id",
    "azure_resource",
    "radius_host",
    "radius_secret",
    "jwt_role",
    "jwt_token",
    "jwt_token_path",
)


@dataclass(frozen=True)
class ClientSettings:
    """Transport and auth of one session; secrets (and the URL: it may hold user info) are not in the repr."""

    url: str = field(repr=False)
    auth_type: str = "token"
    auth_mount_point: str | None = None
    namespace: str | None = None
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    proxies: dict[str, str] | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    key_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    role_id: str | None = None
    assume_role_kwargs: dict[str, Any] | None = field(default=None, repr=False)
    region: str | None = None
    kubernetes_role: str | None = None
    kubernetes_jwt_path: str | None = DEFAULT_KUBERNETES_JWT_PATH
    gcp_key_path: str | None = None
    gcp_keyfile_dict: dict[str, Any] | str | None = field(default=None, repr=False)
    gcp_scopes: str | None = None
    azure_tenant_id: str | None = None
    azure_resource: str | None = None
    radius_host: str | None = None
    radius_secret: str | None = field(default=None, repr=False)
    radius_port: int | None = None
    jwt_role: str | None = None
    jwt_token: str | None = field(default=None, repr=False)
    jwt_token_path: str | None = None

    def session_key(self) -> str:
        """Which process-wide session these settings share: a hash, so the key holds no credential.

        A handed-in token may come from ``VAULT_TOKEN``, so its value is part of the key too."""
        extra = os.environ.get("VAULT_TOKEN", "") if self.auth_type == "token" else ""
        material = json.dumps([asdict(self), extra], sort_keys=True, default=str)
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class VaultSettings:
    """Everything a :class:`~credpath.backends.vault.VaultBackend` was configured with, checked."""

    client: ClientSettings
    #: Per kind, the paths tried in order (Airflow 4.8.4); None switches the kind off.
    connections_path: tuple[str, ...] | None = ("connections",)
    variables_path: tuple[str, ...] | None = ("variables",)
    config_path: tuple[str, ...] | None = ("config",)
    use_team_secrets_path: bool = True
    mount_point: str | None = "secret"
    kv_engine_version: KvVersion = 2
    timeout: float = DEFAULT_TIMEOUT
    #: KV v2 deletes: only the current version (kept, undeletable) instead of every version and the metadata.
    soft_delete: bool = False

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def auth_type(self) -> str:
        return self.client.auth_type

    @classmethod
    def from_kwargs(cls, fail: Callable[[str], ConfigError], **kwargs: Any) -> VaultSettings:
        """Check Airflow's kwargs (plus ``soft_delete``); ``fail`` builds the backend's ConfigError."""
        url = kwargs.pop("url", None) or os.environ.get("VAULT_ADDR")
        if not url or not isinstance(url, str):
            raise fail("url is required (or set VAULT_ADDR)")
        auth_type = kwargs.pop("auth_type", "token")
        if auth_type not in AUTH_TYPES:
            raise fail(f"auth_type {auth_type!r} is not one of: {', '.join(AUTH_TYPES)}")
        try:
            # Every given kwarg through its rule; the backend's own ones leave ``kwargs``, the client's stay.
            for name, rule in _RULES.items():
                if kwargs.get(name) is not None:
                    kwargs[name] = rule(kwargs[name], name)
            own = {name: kwargs.pop(name, default) for name, default in _BACKEND_DEFAULTS.items()}
            own["kv_engine_version"] = _kv_engine_version(own["kv_engine_version"])
            paths = _all_paths(own)
            mount = kwargs.get("auth_mount_point")
            client = ClientSettings(
                url=url.rstrip("/"),
                auth_type=auth_type,
                **{**kwargs, "auth_mount_point": mount.strip("/") if mount else None},
            )
            _check_auth(client)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        mount_point = own.pop("mount_point")
        return cls(
            client=client,
            mount_point=mount_point.strip("/") if mount_point else None,
            **own,
            **paths,
        )


# --- the rules: one per kwarg that is checked (the others are taken as given) ----------------------------


def _all_paths(own: dict[str, Any]) -> dict[str, Any]:
    """Each kind's paths, with the deprecated ``global_secrets_path`` (Airflow 4.8.4: the backend warns)
    as every kind's last fallback."""
    paths = {name: _clean_paths(own.pop(name), name) for name in _PATHS}
    extra = own.pop("global_secrets_path")
    if extra is None:
        return paths
    return {name: (*(found or ()), extra.strip("/")) for name, found in paths.items()}


def _check_auth(client: ClientSettings) -> None:
    """The auth method's required settings (:data:`AUTH_METHODS`): each group needs one set."""
    for group in AUTH_METHODS[client.auth_type].required:
        if not any(getattr(client, name) for name in group):
            raise ConfigError(f"auth_type {client.auth_type!r} needs {' or '.join(group)}")


Rule = Callable[[Any, str], Any]


def _of(types: type | tuple[type, ...], what: str) -> Rule:
    def check(value: Any, name: str) -> Any:
        # bool is an int: a rule for numbers or strings never takes it unless it names bool.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
            raise ConfigError(f"{name} must be {what}")
        return value

    return check


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _number(rule: Number) -> Rule:
    return lambda value, name: check_number(value, rule, name)  # raised ConfigError: wrapped by ``fail``


def _cert(value: Any, name: str) -> str | tuple[str, str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(c, str) for c in value):
        return (value[0], value[1])
    raise ConfigError(f"{name} must be a path or a [certificate, key] pair of paths")


def _kv_engine_version(value: Any) -> KvVersion:
    if value is None:
        return 2  # Airflow's client: ``kv_engine_version or 2``
    if value not in (1, 2, "auto") or isinstance(value, bool):
        raise ConfigError(f"kv_engine_version must be 1, 2 or 'auto' (detect per mount), got {value!r}")
    return value  # type: ignore[no-any-return]


_RULES: dict[str, Rule] = {
    **{name: _of(str, "a string") for name in _STRINGS},
    "global_secrets_path": _of(str, "a string"),
    "mount_point": _of(str, "a string or null"),
    "assume_role_kwargs": _of(dict, "an object of STS AssumeRole arguments"),
    "proxies": _of(dict, "an object of scheme -> proxy URL"),
    "verify": _of((bool, str), "true, false or the path of a CA bundle"),
    "use_team_secrets_path": _of(bool, "true or false"),
    "soft_delete": _of(bool, "true or false"),
    "cert": _cert,
    "timeout": _number(TIMEOUT),
    "radius_port": _number(PORT),
}
_PATHS = {"connections_path": "connections", "variables_path": "variables", "config_path": "config"}
#: The kwargs the backend itself uses (not the session), with Airflow's defaults.
_BACKEND_DEFAULTS: dict[str, Any] = {
    "use_team_secrets_path": True,
    "mount_point": "secret",
    "kv_engine_version": 2,
    "timeout": DEFAULT_TIMEOUT,
    "soft_delete": False,
    "global_secrets_path": None,
    **_PATHS,
}


def _clean_paths(paths: PathSetting, setting: str) -> tuple[str, ...] | None:
    """Airflow 4.8.4: a path or a list of paths tried in order; null switches the kind off."""
    if paths is None:
        return None
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list | tuple) or not all(isinstance(p, str) for p in paths):
        raise ConfigError(f"{setting} must be a string, a list of strings or null")
    return tuple(p.strip("/") for p in paths)
