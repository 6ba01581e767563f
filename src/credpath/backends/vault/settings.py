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

from credpath.backends.vault.auth import AUTH_METHODS, AUTH_TYPES, DEFAULT_KUBERNETES_JWT_PATH
from credpath.errors import ConfigError

__all__ = [
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
        for name in _STRINGS:
            if kwargs.get(name) is not None and not isinstance(kwargs[name], str):
                raise fail(f"{name} must be a string")
        kv_engine_version = kwargs.pop("kv_engine_version", 2)
        if kv_engine_version is None:
            kv_engine_version = 2  # Airflow's client: ``kv_engine_version or 2``
        if kv_engine_version not in (1, 2, "auto") or isinstance(kv_engine_version, bool):
            raise fail(
                f"kv_engine_version must be 1, 2 or 'auto' (detect per mount), got {kv_engine_version!r}"
            )
        assume_role_kwargs = kwargs.get("assume_role_kwargs")
        if assume_role_kwargs is not None and not isinstance(assume_role_kwargs, dict):
            raise fail("assume_role_kwargs must be an object of STS AssumeRole arguments")
        timeout = kwargs.pop("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise fail("timeout must be a positive number of seconds")
        use_team_secrets_path = kwargs.pop("use_team_secrets_path", True)
        if not isinstance(use_team_secrets_path, bool):
            raise fail("use_team_secrets_path must be true or false")
        soft_delete = kwargs.pop("soft_delete", False)
        if not isinstance(soft_delete, bool):
            raise fail("soft_delete must be true or false")
        verify = kwargs.get("verify", True)
        if not isinstance(verify, bool | str):
            raise fail("verify must be true, false or the path of a CA bundle")
        cert = kwargs.get("cert")
        if isinstance(cert, list | tuple):
            if len(cert) != 2 or not all(isinstance(c, str) for c in cert):
                raise fail("cert must be a path or a [certificate, key] pair of paths")
            cert = (cert[0], cert[1])
        elif cert is not None and not isinstance(cert, str):
            raise fail("cert must be a path or a [certificate, key] pair of paths")
        proxies = kwargs.get("proxies")
        if proxies is not None and not isinstance(proxies, dict):
            raise fail("proxies must be an object of scheme -> proxy URL")
        radius_port = kwargs.get("radius_port")
        if radius_port is not None and (isinstance(radius_port, bool) or not isinstance(radius_port, int)):
            raise fail("radius_port must be an integer")
        mount_point = kwargs.pop("mount_point", "secret")
        if mount_point is not None and not isinstance(mount_point, str):
            raise fail("mount_point must be a string or null")
        paths = {
            name: _clean_paths(kwargs.pop(name, default), name, fail)
            for name, default in (
                ("connections_path", "connections"),
                ("variables_path", "variables"),
                ("config_path", "config"),
            )
        }
        global_secrets_path = kwargs.pop("global_secrets_path", None)
        if global_secrets_path is not None:
            if not isinstance(global_secrets_path, str):
                raise fail("global_secrets_path must be a string")
            # Airflow 4.8.4: deprecated (the backend warns); every kind's last fallback path.
            extra = global_secrets_path.strip("/")
            paths = {name: (*(found or ()), extra) for name, found in paths.items()}
        mount = kwargs.get("auth_mount_point")
        client = ClientSettings(
            url=url.rstrip("/"),
            auth_type=auth_type,
            **{
                **kwargs,
                "auth_mount_point": mount.strip("/") if mount else None,
                "cert": cert,
                "verify": verify,
            },
        )
        for group in AUTH_METHODS[auth_type].required:
            if not any(getattr(client, name) for name in group):
                raise fail(f"auth_type {auth_type!r} needs {' or '.join(group)}")
        return cls(
            client=client,
            use_team_secrets_path=use_team_secrets_path,
            mount_point=mount_point.strip("/") if mount_point else None,
            kv_engine_version=kv_engine_version,
            timeout=float(timeout),
            soft_delete=soft_delete,
            **paths,
        )


def _clean_paths(
    paths: PathSetting, setting: str, fail: Callable[[str], ConfigError]
) -> tuple[str, ...] | None:
    """Airflow 4.8.4: a path or a list of paths tried in order; null switches the kind off."""
    if paths is None:
        return None
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list | tuple) or not all(isinstance(p, str) for p in paths):
        raise fail(f"{setting} must be a string, a list of strings or null")
    return tuple(p.strip("/") for p in paths)
