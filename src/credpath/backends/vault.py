"""HashiCorp Vault / OpenBao backend: KV v1 and v2, Airflow's kwargs and auth methods, one login per process.

Differences from Airflow's ``VaultBackend`` (hashicorp provider), on purpose:

- ``kv_engine_version`` omitted: the engine version of each mount is detected once
  (``sys/internal/ui/mounts/<mount>``, what the ``vault kv`` CLI uses) instead of assuming v2.
- One authenticated HTTP session per process for identical settings (shared by backend instances). No
  lookup-self before reads (a handed-in token gets one lookup-self on first use, to learn its TTL).
  Renewable tokens are renewed at about two thirds of their TTL; a read refused because the token expired
  or was revoked triggers one new login and a retry. An uncached read is 1 HTTP request.
- A variable/config secret without the ``value`` key is an error naming the path and the keys present.
- ``radius`` and ``azure`` really log in (Airflow calls the admin ``configure`` endpoints instead);
  ``gcp`` signs its login JWT locally with the service-account key (no IAM API call); ``cert`` (TLS
  client certificate) is supported in addition.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Unpack
from urllib.parse import quote, urlsplit, urlunsplit

from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.protocol import BackendOptions, BaseBackend, Kind

if TYPE_CHECKING:
    import hvac
    import requests

    from credpath.model import Connection

log = logging.getLogger(__name__)

DEFAULT_KUBERNETES_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
RETRY_STATUSES: tuple[int, ...] = (412, 429, 500, 502, 503)
# Renew at this fraction of the TTL: early enough to survive a slow request, late enough to be rare.
RENEW_FRACTION = 2 / 3

_SESSIONS: dict[str, _Session] = {}
_SESSIONS_LOCK = threading.Lock()


class WriteConflict(ConfigError):
    """A KV v2 check-and-set write lost against another writer; nothing was overwritten."""


def _safe_url(url: str) -> str:
    """The URL without user info, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _server_errors(response: requests.Response) -> str:
    errors = _json(response).get("errors") or []
    return "; ".join(str(e) for e in errors)[:300]


def _json(response: requests.Response) -> dict[str, Any]:
    """The JSON object of a response, or {} (a proxy's HTML page must not crash a lookup)."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _valid_path(path: str) -> bool:
    # Dot segments would let an id escape its prefix (connections/../../sys/...); empty ones never exist.
    segments = path.split("/")
    return bool(path) and all(s not in ("", ".", "..") for s in segments)


def _read_file(path: str, setting: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read file {path!r} ({type(exc).__name__})") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt_rs256(claims: dict[str, Any], private_key_pem: str, kid: str | None = None) -> str:
    """A compact RS256 JWT signed with ``cryptography`` (no PyJWT dependency)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
    return f"{signing_input}.{_b64url(signature)}"


# --- auth methods: default mount, required kwargs and login body ------------------------------------------

_LoginBody = Callable[["_Session"], dict[str, Any]]


def _approle_body(session: _Session) -> dict[str, Any]:
    body = {"role_id": session.settings["role_id"]}
    if session.settings["secret_id"]:
        body["secret_id"] = session.settings["secret_id"]
    return body


def _password_body(session: _Session) -> dict[str, Any]:
    return {"password": session.settings["password"]}


def _cert_body(session: _Session) -> dict[str, Any]:
    # The TLS client certificate (kwarg `cert`) is the credential; role_id optionally names the role.
    return {"name": session.settings["role_id"]} if session.settings["role_id"] else {}


def _github_body(session: _Session) -> dict[str, Any]:
    return {"token": session.settings["token"]}


def _jwt_setting(session: _Session) -> str:
    return session.settings["jwt_token"] or _read_file(session.settings["jwt_token_path"], "jwt_token_path")


def _kubernetes_jwt(session: _Session) -> str:
    path = session.settings["kubernetes_jwt_path"] or DEFAULT_KUBERNETES_JWT_PATH
    return _read_file(path, "kubernetes_jwt_path")


def _role_and_jwt(role_setting: str, jwt: Callable[[_Session], str]) -> _LoginBody:
    """The login body of the methods that present a role and a JWT (jwt, kubernetes, gcp, azure)."""
    return lambda session: {"role": session.settings[role_setting], "jwt": jwt(session)}


@dataclass(frozen=True)
class _AuthMethod:
    mount: str  # Vault's default mount path of the method
    # Groups of kwargs; each group needs at least one set (checked in VaultBackend.__init__).
    required: tuple[tuple[str, ...], ...] = ()
    login_body: _LoginBody | None = None  # None for 'token', which sends no login request
    user_in_path: bool = False  # the login path ends in /<username>


_USER_AND_PASSWORD = (("username",), ("password",))
# Session methods are called through lambdas, looked up at login time (tests patch _Session._azure_jwt).
_AUTH_METHODS: dict[str, _AuthMethod] = {
    "approle": _AuthMethod("approle", (("role_id",),), _approle_body),
    "aws_iam": _AuthMethod("aws", (), lambda session: session._aws_iam_body()),
    "azure": _AuthMethod(
        "azure",
        (("role_id",), ("azure_tenant_id",)),
        _role_and_jwt("role_id", lambda session: session._azure_jwt()),
    ),
    "cert": _AuthMethod("cert", (("cert",),), _cert_body),
    "gcp": _AuthMethod(
        "gcp",
        (("role_id",), ("gcp_key_path", "gcp_keyfile_dict")),
        _role_and_jwt("role_id", lambda session: session._gcp_jwt()),
    ),
    "github": _AuthMethod("github", (("token",),), _github_body),
    "jwt": _AuthMethod(
        "jwt", (("jwt_role",), ("jwt_token", "jwt_token_path")), _role_and_jwt("jwt_role", _jwt_setting)
    ),
    "kubernetes": _AuthMethod(
        "kubernetes", (("kubernetes_role",),), _role_and_jwt("kubernetes_role", _kubernetes_jwt)
    ),
    "ldap": _AuthMethod("ldap", _USER_AND_PASSWORD, _password_body, user_in_path=True),
    "radius": _AuthMethod("radius", _USER_AND_PASSWORD, _password_body, user_in_path=True),
    "token": _AuthMethod("token"),
    "userpass": _AuthMethod("userpass", _USER_AND_PASSWORD, _password_body, user_in_path=True),
}
AUTH_TYPES: tuple[str, ...] = tuple(_AUTH_METHODS)
DEFAULT_AUTH_MOUNTS: dict[str, str] = {name: method.mount for name, method in _AUTH_METHODS.items()}


class _Session:
    """One Vault client and its token, shared by all backend instances with equal settings in a process."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.auth_type: str = settings["auth_type"]
        self.auth_mount: str = settings["auth_mount_point"] or _AUTH_METHODS[self.auth_type].mount
        self.lock = threading.RLock()
        self._client: hvac.Client | None = None
        self._token: str | None = None
        self._renew_at: float | None = None
        self._renewable = False
        self.logins = 0
        self.renewals = 0

    # --- HTTP ------------------------------------------------------------------------------------------

    @property
    def client(self) -> hvac.Client:
        if self._client is None:
            with self.lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    def _build_client(self) -> hvac.Client:
        import hvac
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        s = self.settings
        session = requests.Session()
        # Retries only for idempotent reads; POST/PUT/DELETE are never replayed.
        retry = Retry(
            total=3,
            connect=1,
            read=1,
            status=3,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "HEAD", "LIST"}),
            backoff_factor=0.1,
            raise_on_status=False,
            respect_retry_after_header=True,
        )
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        cert = s["cert"]
        session.verify = s["verify"]
        if cert is not None:
            session.cert = tuple(cert) if isinstance(cert, list) else cert
        if s["proxies"]:
            session.proxies.update(s["proxies"])
        return hvac.Client(
            url=s["url"],
            timeout=s["timeout"],
            namespace=s["namespace"],
            session=session,
            adapter=hvac.adapters.RawAdapter,
        )

    @property
    def http(self) -> requests.Session:
        return self.client.adapter.session

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        import requests

        try:
            return self.client.adapter.request(method, f"/v1/{path}", json=body, raise_exception=False)
        except requests.RequestException as exc:
            raise BackendError(
                f"cannot reach Vault at {_safe_url(self.settings['url'])} ({type(exc).__name__})"
            ) from None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        """An authenticated request: log in on first use, renew when due, re-login once on a dead token."""
        self.ensure_token()
        response = self._send(method, path, body)
        if response.status_code == 403 and self.can_login and self._token_is_dead():
            self.reauthenticate()
            response = self._send(method, path, body)
        return response

    # --- token life cycle --------------------------------------------------------------------------

    def ensure_token(self) -> None:
        if self._token is not None and (self._renew_at is None or time.monotonic() < self._renew_at):
            return
        with self.lock:
            if self._token is None:
                self._login()
            elif self._renew_at is not None and time.monotonic() >= self._renew_at:
                if self._renewable:
                    self._renew()
                else:
                    self._login()

    def _set_token(self, token: str, ttl: float, renewable: bool) -> None:
        self._token = token
        self.client.token = token
        self._renewable = renewable
        # A token that expires gets refreshed at 2/3 of its TTL: renewed if renewable, else a new login.
        due = ttl > 0 and (renewable or self.can_login)
        self._renew_at = time.monotonic() + ttl * RENEW_FRACTION if due else None

    @property
    def can_login(self) -> bool:
        s = self.settings
        return self.auth_type != "token" or bool(s["token_path"])

    def _renew(self) -> None:
        response = self._send("POST", "auth/token/renew-self", {})
        auth = _json(response).get("auth") if response.status_code == 200 else None
        if auth and auth.get("client_token"):
            self.renewals += 1
            ttl = float(auth.get("lease_duration") or 0)
            log.debug("vault: renewed token (%s auth), ttl %.0f s", self.auth_type, ttl)
            # Near the max TTL a renewal returns less and less; log in again instead of renewing every read.
            if ttl < 2 and self.can_login:
                self._login()
                return
            self._set_token(auth["client_token"], ttl, bool(auth.get("renewable")))
            return
        log.debug("vault: token renewal refused (HTTP %s); logging in again", response.status_code)
        if self.can_login:
            self._login()
        else:
            self._renew_at = None

    def _token_is_dead(self) -> bool:
        """After a 403: one lookup-self tells an expired/revoked token from a policy denial."""
        response = self._send("GET", "auth/token/lookup-self")
        return response.status_code == 403

    def reauthenticate(self) -> None:
        with self.lock:
            log.debug("vault: token expired or revoked; logging in again (%s auth)", self.auth_type)
            self._token = None
            self._login()

    def _login(self) -> None:
        if self.auth_type == "token":
            self._use_static_token()
            return
        path, body = self.login_request()
        secrets = [str(v) for v in body.values() if isinstance(v, str)]
        response = self._send("POST", path, body)
        if response.status_code != 200:
            reason = _scrub(_server_errors(response), secrets) or f"HTTP {response.status_code}"
            raise AccessDenied(
                f"Vault login with auth_type {self.auth_type!r} at auth/{self.auth_mount} failed "
                f"(HTTP {response.status_code}: {reason})"
            )
        auth = _json(response).get("auth") or {}
        if not auth.get("client_token"):
            raise AccessDenied(f"Vault login at auth/{self.auth_mount} returned no token")
        self.logins += 1
        log.debug("vault: logged in (%s auth at auth/%s)", self.auth_type, self.auth_mount)
        self._set_token(
            auth["client_token"], float(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
        )

    def _use_static_token(self) -> None:
        s = self.settings
        if s["token"]:
            token = s["token"]
        elif s["token_path"]:
            token = _read_file(s["token_path"], "token_path")
        else:
            token = os.environ.get("VAULT_TOKEN", "")
        if not token:
            raise ConfigError(
                "auth_type 'token' needs token, token_path or the VAULT_TOKEN environment variable"
            )
        self.client.token = token
        # The only way to know whether a handed-in token expires: one lookup-self per process, never per read.
        response = self._send("GET", "auth/token/lookup-self")
        if response.status_code == 403:
            raise AccessDenied(
                "Vault refused the token (auth_type 'token'): it is invalid, expired or revoked"
            )
        if response.status_code != 200:
            raise BackendError(f"Vault token lookup failed (HTTP {response.status_code})")
        data = _json(response).get("data") or {}
        self.logins += 1
        self._set_token(token, float(data.get("ttl") or 0), bool(data.get("renewable")))

    # --- login requests per auth method --------------------------------------------------------------

    def login_request(self) -> tuple[str, dict[str, Any]]:
        """(path, body) of the login request of the auth method; no network I/O except for aws/azure."""
        method = _AUTH_METHODS[self.auth_type]
        if method.login_body is None:  # pragma: no cover - _login handles 'token' without a request
            raise ConfigError(f"auth_type {self.auth_type!r} is not supported")
        path = f"auth/{self.auth_mount}/login"
        if method.user_in_path:
            path += f"/{quote(self.settings['username'], safe='')}"
        return path, method.login_body(self)

    def _aws_iam_body(self) -> dict[str, Any]:
        from hvac import aws_utils

        s = self.settings
        session_token = None
        if s["key_id"] and s["secret_id"]:
            access_key, secret_key = s["key_id"], s["secret_id"]
        else:
            import boto3

            if s["assume_role_kwargs"]:
                creds = boto3.client("sts").assume_role(**s["assume_role_kwargs"])["Credentials"]
                access_key, secret_key = creds["AccessKeyId"], creds["SecretAccessKey"]
                session_token = creds["SessionToken"]
            else:
                found = boto3.Session().get_credentials()
                if found is None:
                    raise ConfigError(
                        "auth_type 'aws_iam': no AWS credentials found (key_id/secret_id or boto3)"
                    )
                frozen = found.get_frozen_credentials()
                access_key, secret_key, session_token = frozen.access_key, frozen.secret_key, frozen.token
        request = aws_utils.generate_sigv4_auth_request()
        aws_utils.SigV4Auth(access_key, secret_key, session_token, s["region"] or "us-east-1").add_auth(
            request
        )
        headers = json.dumps({k: [request.headers[k]] for k in request.headers})
        body: dict[str, Any] = {
            "iam_http_request_method": request.method,
            "iam_request_url": base64.b64encode(request.url.encode()).decode(),
            "iam_request_headers": base64.b64encode(headers.encode()).decode(),
            "iam_request_body": base64.b64encode(request.body.encode()).decode(),
        }
        if s["role_id"]:
            body["role"] = s["role_id"]
        return body

    def _gcp_jwt(self) -> str:
        s = self.settings
        if s["gcp_keyfile_dict"]:
            info = s["gcp_keyfile_dict"]
            if isinstance(info, str):
                try:
                    info = json.loads(info)
                except json.JSONDecodeError:
                    raise ConfigError("gcp_keyfile_dict is not valid JSON") from None
        else:
            try:
                info = json.loads(_read_file(s["gcp_key_path"], "gcp_key_path"))
            except json.JSONDecodeError:
                raise ConfigError(f"gcp_key_path: file {s['gcp_key_path']!r} is not valid JSON") from None
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if missing:
            raise ConfigError(f"GCP service-account key lacks field(s): {', '.join(missing)}")
        now = int(time.time())
        # Vault's gcp (iam) login: sub = service account, aud = vault/<role>, at most 15 minutes of validity.
        claims = {"sub": info["client_email"], "aud": f"vault/{s['role_id']}", "iat": now, "exp": now + 900}
        return sign_jwt_rs256(claims, info["private_key"], info.get("private_key_id"))

    def _azure_jwt(self) -> str:
        s = self.settings
        from azure.identity import ClientSecretCredential, DefaultAzureCredential

        if s["key_id"] and s["secret_id"]:
            credential: Any = ClientSecretCredential(s["azure_tenant_id"], s["key_id"], s["secret_id"])
        else:
            credential = DefaultAzureCredential()
        resource = (s["azure_resource"] or "https://management.azure.com/").rstrip("/")
        return credential.get_token(f"{resource}/.default").token

    def close(self) -> None:
        if self._client is not None:
            self._client.adapter.close()
        self._client = None
        self._token = None
        self._renew_at = None


def _session_for(settings: dict[str, Any]) -> _Session:
    extra = os.environ.get("VAULT_TOKEN", "") if settings["auth_type"] == "token" else ""
    # The key hashes credentials instead of holding them; the pid keeps a forked child off its parent's
    # socket.
    material = json.dumps([settings, extra, os.getpid()], sort_keys=True, default=str)
    key = hashlib.sha256(material.encode()).hexdigest()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = _Session(settings)
        return session


def _forget_session(session: _Session) -> None:
    with _SESSIONS_LOCK:
        for key, value in list(_SESSIONS.items()):
            if value is session:
                del _SESSIONS[key]


class VaultBackend(BaseBackend):
    """Connections, variables and config from a Vault/OpenBao KV mount (Airflow's kwargs)."""

    alias: ClassVar[str] = "vault"
    store_name: ClassVar[str] = "HashiCorp Vault"
    requires: ClassVar[tuple[str, ...]] = ("hvac", "requests")
    extra: ClassVar[str | None] = "vault"

    def __init__(
        self,
        connections_path: str | None = "connections",
        variables_path: str | None = "variables",
        config_path: str | None = "config",
        url: str | None = None,
        auth_type: str = "token",
        auth_mount_point: str | None = None,
        mount_point: str | None = "secret",
        kv_engine_version: int | None = None,
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
        timeout: float = 30,
        verify: bool | str = True,
        cert: str | tuple[str, str] | list[str] | None = None,
        proxies: dict[str, str] | None = None,
        **options: Unpack[BackendOptions],
    ) -> None:
        super().__init__(**options)
        url = url or os.environ.get("VAULT_ADDR")
        if not url:
            raise ConfigError("url is required for the vault backend (or set VAULT_ADDR)")
        if auth_type not in AUTH_TYPES:
            raise ConfigError(f"auth_type {auth_type!r} is not one of: {', '.join(AUTH_TYPES)}")
        if kv_engine_version is not None and kv_engine_version not in (1, 2):
            raise ConfigError(
                f"kv_engine_version must be 1 or 2 (or omitted to detect), got {kv_engine_version!r}"
            )
        if assume_role_kwargs is not None and not isinstance(assume_role_kwargs, dict):
            raise ConfigError("assume_role_kwargs must be an object of STS AssumeRole arguments")
        self.paths: dict[Kind, str | None] = {
            "connection": self._clean_prefix(connections_path, "connections_path"),
            "variable": self._clean_prefix(variables_path, "variables_path"),
            "config": self._clean_prefix(config_path, "config_path"),
        }
        self.mount_point = mount_point.strip("/") if mount_point else None
        self.kv_engine_version = kv_engine_version
        self.url = url.rstrip("/")
        self.auth_type = auth_type
        self._kv_versions: dict[str, int] = {}
        settings: dict[str, Any] = {
            "url": self.url,
            "namespace": namespace,
            "timeout": timeout,
            "verify": verify,
            "cert": list(cert) if isinstance(cert, tuple) else cert,
            "proxies": proxies,
            "auth_type": auth_type,
            "auth_mount_point": auth_mount_point.strip("/") if auth_mount_point else None,
            "token": token,
            "token_path": token_path,
            "username": username,
            "password": password,
            "key_id": key_id,
            "secret_id": secret_id,
            "role_id": role_id,
            "assume_role_kwargs": assume_role_kwargs,
            "region": region,
            "kubernetes_role": kubernetes_role,
            "kubernetes_jwt_path": kubernetes_jwt_path,
            "gcp_key_path": gcp_key_path,
            "gcp_keyfile_dict": gcp_keyfile_dict,
            "gcp_scopes": gcp_scopes,
            "azure_tenant_id": azure_tenant_id,
            "azure_resource": azure_resource,
            "radius_host": radius_host,
            "radius_secret": radius_secret,
            "radius_port": radius_port,
            "jwt_role": jwt_role,
            "jwt_token": jwt_token,
            "jwt_token_path": jwt_token_path,
        }
        for group in _AUTH_METHODS[auth_type].required:
            if not any(settings.get(name) for name in group):
                raise ConfigError(f"auth_type {auth_type!r} needs {' or '.join(group)}")
        self._settings = settings
        self._session: _Session | None = None

    @staticmethod
    def _clean_prefix(prefix: str | None, setting: str) -> str | None:
        if prefix is None:
            return None
        if not isinstance(prefix, str):
            raise ConfigError(f"{setting} must be a string or null")
        return prefix.strip("/")

    # --- session -----------------------------------------------------------------------------------

    @property
    def session(self) -> _Session:
        if self._session is None:
            self._session = _session_for(self._settings)
        return self._session

    @property
    def http_session(self) -> requests.Session:
        """The requests session used for every call (tests hook it to count requests). No network I/O."""
        return self.session.http

    def close(self) -> None:
        if self._session is not None:
            _forget_session(self._session)
            self._session.close()
            self._session = None

    def describe(self) -> str:
        mount = self.mount_point or "<first segment of the id>"
        kv = f"v{self.kv_engine_version}" if self.kv_engine_version else "auto"
        return f"vault {_safe_url(self.url)} mount={mount} kv={kv} auth={self.auth_type}"

    def check(self) -> str:
        self._wrap(self.session.ensure_token, "login")
        return f"authenticated ({self.auth_type}) at {_safe_url(self.url)}"

    def _wrap(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except BackendError as exc:
            exc.backend = exc.backend or self.name
            if not str(exc).startswith("vault backend"):
                exc.args = (f"vault backend {self.name!r}: {exc} ({what})",)
            raise

    # --- paths -------------------------------------------------------------------------------------

    def _locate(self, kind: Kind, key: str) -> tuple[str, str] | None:
        """(mount, path inside the mount) for an id, or None when this backend cannot hold it."""
        prefix = self.paths[kind]
        if prefix is None:
            return None
        mount = self.mount_point
        if mount is None:
            # Airflow: the first segment of the id names the mount.
            if "/" not in key:
                log.debug("vault: %s %r has no mount segment (mount_point is null)", kind, key)
                return None
            mount, key = key.split("/", 1)
        path = f"{prefix}/{key}" if prefix else key
        if not _valid_path(mount) or not _valid_path(path):
            log.debug("vault: %s id %r is not a valid Vault path", kind, key)
            return None
        return mount, path

    @staticmethod
    def _q(path: str) -> str:
        return quote(path, safe="/")

    def _where(self, mount: str, path: str) -> str:
        return f"{mount}/{path}"

    def _deny(self, mount: str, path: str, capability: str = "read") -> AccessDenied:
        # With a login method a dead token was already replaced, so a 403 here is the policy's.
        maybe_dead = "" if self.session.can_login else " (or the token expired or was revoked)"
        return AccessDenied(
            f"vault backend {self.name!r}: permission denied on {mount}/{path} "
            f"(auth_type {self.auth_type!r}); the token's policy needs {capability!r} on this path"
            f"{maybe_dead}",
            backend=self.name,
        )

    def _fail(self, message: str) -> BackendError:
        return BackendError(f"vault backend {self.name!r}: {message}", backend=self.name)

    def _raise_for_status(
        self,
        response: requests.Response,
        mount: str,
        path: str,
        capability: str,
        action: str,
        ok: tuple[int, ...] = (200,),
        with_server_errors: bool = False,
    ) -> None:
        """403 -> the policy's AccessDenied on mount/path; a status outside ``ok`` -> '<action> failed'."""
        status = response.status_code
        if status == 403:
            raise self._deny(mount, path, capability)
        if status not in ok:
            detail = f": {_server_errors(response)}" if with_server_errors else ""
            raise self._fail(f"{action} failed (HTTP {status}{detail})")

    @staticmethod
    def _data_path(mount: str, path: str, version: int) -> str:
        """Where a secret's value is read, written and soft-deleted."""
        return f"{mount}/data/{path}" if version == 2 else f"{mount}/{path}"

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        return self._wrap(lambda: self.session.request(method, path, body), f"{method} {path}")

    def _kv_version(self, mount: str) -> int | None:
        """The KV version of a mount, detected once; None if the mount is not visible to this token."""
        if self.kv_engine_version:
            return self.kv_engine_version
        version = self._kv_versions.get(mount)
        if version is not None:
            return version
        response = self._request("GET", f"sys/internal/ui/mounts/{self._q(mount)}")
        if response.status_code in (403, 404):
            # Vault answers 403 ("preflight capability check") both for no such mount and no access to it.
            if self.mount_point is None:
                return None
            raise AccessDenied(
                f"vault backend {self.name!r}: mount {mount!r} does not exist or the token's policy grants "
                f"nothing under it (auth_type {self.auth_type!r}); set kv_engine_version to skip detection",
                backend=self.name,
            )
        if response.status_code != 200:
            raise self._fail(f"cannot detect the KV version of mount {mount!r} (HTTP {response.status_code})")
        data = _json(response).get("data") or {}
        if data.get("type") not in ("kv", "generic"):
            raise self._fail(f"mount {mount!r} is a {data.get('type')!r} engine, not kv")
        version = 2 if str((data.get("options") or {}).get("version", "1")) == "2" else 1
        log.debug("vault: mount %r is KV v%d", mount, version)
        self._kv_versions[mount] = version
        return version

    # --- reads -------------------------------------------------------------------------------------

    def read_secret(self, kind: Kind, key: str) -> tuple[str, dict[str, Any]] | None:
        """(display path, secret map) of an id, or None on a miss (404, soft-deleted, destroyed)."""
        located = self._locate(kind, key)
        if located is None:
            return None
        mount, path = located
        version = self._kv_version(mount)
        if version is None:
            return None
        response = self._request("GET", self._q(self._data_path(mount, path, version)))
        where = self._where(mount, path)
        if response.status_code == 404:
            return None
        if response.status_code == 503:
            raise self._fail(f"Vault is sealed or unavailable (HTTP 503) reading {where}")
        self._raise_for_status(response, mount, path, "read", f"reading {where}")
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            # Never a miss: a 200 that is not Vault's answer (a proxy page) must not hide a secret.
            raise self._fail(f"reading {where}: the response is not a Vault JSON object")
        data = body["data"]
        if version == 2:
            metadata = data.get("metadata") or {}
            if metadata.get("deletion_time") or metadata.get("destroyed"):
                return None
            data = data.get("data")
            if data is None:
                return None
        if not isinstance(data, dict):
            raise self._fail(f"secret {where} is not a key/value map")
        log.debug("vault: read %s", where)
        return where, data

    def _wanted_secret(self, kind: Kind, key: str) -> tuple[str, dict[str, Any]] | None:
        """read_secret, after the lookup-pattern check (an id the patterns skip costs no request)."""
        if not self.wants(kind, key):
            return None
        return self.read_secret(kind, key)

    def _connection_data(self, conn_id: str) -> dict[str, Any] | None:
        found = self._wanted_secret("connection", conn_id)
        return None if found is None else found[1]

    def get_conn_value(self, conn_id: str) -> str | None:
        data = self._connection_data(conn_id)
        if data is None:
            return None
        uri = data.get("conn_uri")
        if uri:
            return str(uri)
        return json.dumps(data)

    def get_connection(self, conn_id: str) -> Connection | None:
        if self._connection_adapter is not None:
            return super().get_connection(conn_id)
        data = self._connection_data(conn_id)
        if data is None:
            return None
        from credpath.model import Connection

        uri = data.get("conn_uri")
        if uri:
            # A description stored next to conn_uri survives (Airflow would drop it).
            return Connection.from_uri(str(uri), conn_id=conn_id, description=data.get("description"))
        return Connection.from_json(dict(data), conn_id=conn_id)

    def _value(self, kind: Kind, key: str) -> str | None:
        found = self._wanted_secret(kind, key)
        if found is None:
            return None
        where, data = found
        if "value" not in data:
            keys = ", ".join(sorted(map(str, data))) or "none"
            raise self._fail(f"secret {where} has no 'value' key (keys present: {keys})")
        value = data["value"]
        return value if isinstance(value, str) else json.dumps(value)

    def get_variable(self, key: str) -> str | None:
        return self._value("variable", key)

    def get_config(self, key: str) -> str | None:
        return self._value("config", key)

    # --- writes ------------------------------------------------------------------------------------

    def _writable(self, kind: Kind, key: str) -> tuple[str, str, int]:
        located = self._locate(kind, key)
        if located is None:
            setting = {
                "connection": "connections_path",
                "variable": "variables_path",
                "config": "config_path",
            }[kind]
            if self.paths[kind] is None:
                raise ConfigError(f"vault backend {self.name!r}: {setting} is null, so {kind} writes are off")
            raise ConfigError(
                f"vault backend {self.name!r}: {kind} id {key!r} is not a valid Vault path here"
            )
        mount, path = located
        version = self._kv_version(mount)
        if version is None:
            raise self._deny(mount, path, "create")
        return mount, path, version

    def _write(self, kind: Kind, key: str, data: dict[str, Any], *, overwrite: bool, cas: int | None) -> None:
        mount, path, version = self._writable(kind, key)
        where = self._where(mount, path)
        if version == 1:
            if cas is not None:
                raise ConfigError(
                    f"vault backend {self.name!r}: check-and-set needs KV v2; mount {mount!r} is v1"
                )
            if not overwrite and self.read_secret(kind, key) is not None:
                raise ConfigError(f"vault backend {self.name!r}: {kind} {key!r} already exists at {where}")
            body = data
        else:
            body = {"data": data}
            if cas is None and not overwrite:
                cas = 0  # create-only, atomically on the server
            if cas is not None:
                body["options"] = {"cas": cas}
        response = self._request("POST", self._q(self._data_path(mount, path, version)), body)
        if version == 2 and response.status_code == 400 and "check-and-set" in _server_errors(response):
            if not overwrite and cas == 0:
                raise ConfigError(f"vault backend {self.name!r}: {kind} {key!r} already exists at {where}")
            raise WriteConflict(
                f"vault backend {self.name!r}: {where} changed since version {cas}; not overwritten"
            )
        self._raise_for_status(
            response, mount, path, "create/update", f"writing {where}", ok=(200, 204), with_server_errors=True
        )
        log.debug("vault: wrote %s", where)

    def set_connection(
        self,
        conn: Connection,
        *,
        overwrite: bool = True,
        as_json: bool = False,
        cas: int | None = None,
        serialization: str | None = None,
    ) -> None:
        """Store as ``conn_uri`` (plus ``description``), or as the JSON map with ``as_json=True`` or
        ``serialization="json"``; a backend with a ``connection_format`` writes the secret in that shape."""
        if not conn.conn_id:
            raise ConfigError("set_connection needs a connection with a conn_id")
        if serialization not in (None, "uri", "json"):
            raise ConfigError(f"vault backend {self.name!r}: serialization must be 'uri' or 'json'")
        if self._connection_adapter is not None:
            data = json.loads(self._connection_adapter.to_value(conn))
        elif as_json or serialization == "json":
            data = conn.to_dict(include_conn_id=False, prune_empty=True)
        else:
            data = {"conn_uri": conn.get_uri()}
            if conn.description:
                data["description"] = conn.description
        self._write("connection", conn.conn_id, data, overwrite=overwrite, cas=cas)

    def set_variable(self, key: str, value: str, *, overwrite: bool = True, cas: int | None = None) -> None:
        self._write("variable", key, {"value": value}, overwrite=overwrite, cas=cas)

    def current_version(self, kind: Kind, key: str) -> int | None:
        """KV v2 current version of an id (for check-and-set writes); None if it has never been written."""
        mount, path, version = self._writable(kind, key)
        if version != 2:
            raise ConfigError(f"vault backend {self.name!r}: versions need KV v2; mount {mount!r} is v1")
        response = self._request("GET", self._q(f"{mount}/metadata/{path}"))
        if response.status_code == 404:
            return None
        self._raise_for_status(response, mount, path, "read", f"reading metadata of {mount}/{path}")
        return int((_json(response).get("data") or {}).get("current_version") or 0) or None

    def _delete(self, kind: Kind, key: str, soft: bool) -> bool:
        mount, path, version = self._writable(kind, key)
        where = self._where(mount, path)
        if version == 2 and not soft:
            target = f"{mount}/metadata/{path}"  # every version and the metadata
            existed = self._request("GET", self._q(target)).status_code == 200
        else:
            target = self._data_path(mount, path, version)
            existed = self.read_secret(kind, key) is not None
        if not existed:
            return False
        response = self._request("DELETE", self._q(target))
        self._raise_for_status(response, mount, path, "delete", f"deleting {where}", ok=(200, 204))
        log.debug("vault: deleted %s (%s)", where, "soft" if soft and version == 2 else "all versions")
        return True

    def delete_connection(self, conn_id: str, *, soft: bool = False) -> bool:
        """Delete a connection; KV v2: all versions, or only the current one with ``soft=True``."""
        return self._delete("connection", conn_id, soft)

    def delete_variable(self, key: str, *, soft: bool = False) -> bool:
        return self._delete("variable", key, soft)

    # --- listing -----------------------------------------------------------------------------------

    def _list_tree(self, mount: str, prefix: str, version: int) -> list[str]:
        base = f"{mount}/metadata/{prefix}" if version == 2 else f"{mount}/{prefix}"
        found: list[str] = []
        pending = [""]
        while pending:
            sub = pending.pop()
            folder = f"{base}/{sub}" if prefix else f"{base}{sub}"
            response = self._request("LIST", self._q(folder.rstrip("/") + "/"))
            if response.status_code == 404:
                continue
            self._raise_for_status(
                response, mount, f"{prefix}/{sub}".strip("/"), "list", f"listing {mount}/{prefix}"
            )
            for entry in (_json(response).get("data") or {}).get("keys") or []:
                if entry.endswith("/"):
                    pending.append(sub + entry)
                else:
                    found.append(sub + entry)
        return found

    def _list(self, kind: Kind) -> list[str]:
        prefix = self.paths[kind]
        if prefix is None:
            return []
        if self.mount_point is not None:
            mounts = [self.mount_point]
        else:
            response = self._request("GET", "sys/internal/ui/mounts")
            if response.status_code != 200:
                raise self._fail(
                    f"cannot list the mounts visible to this token (HTTP {response.status_code})"
                )
            secret_mounts = (_json(response).get("data") or {}).get("secret") or {}
            mounts = sorted(m.strip("/") for m, info in secret_mounts.items() if info.get("type") == "kv")
        ids: list[str] = []
        for mount in mounts:
            version = self._kv_version(mount)
            if version is None:
                continue
            keys = self._list_tree(mount, prefix, version)
            ids.extend(keys if self.mount_point else [f"{mount}/{k}" for k in keys])
        return sorted(ids)

    def list_connections(self) -> list[str]:
        return self._list("connection")

    def list_variables(self) -> list[str]:
        return self._list("variable")
