"""HashiCorp Vault / OpenBao backend: KV v1 and v2, Airflow's kwargs and auth methods, one login per process.

Differences from Airflow's ``VaultBackend`` (hashicorp provider 4.8.4), on purpose:

- ``timeout`` (Airflow's name, default 30 s) is one deadline for the whole call: connecting, every read of
  the answer, every retry and back-off, and a ``Retry-After`` wait only if it fits. Connection losses, 5xx,
  412 and 429 are retried with exponential back-off and jitter inside it; refused connections and auth
  failures are not retried. A timeout is a :class:`BackendTimeout` naming the request and the deadline.
- ``kv_engine_version`` defaults to 2 as Airflow's does (no probe); ``kv_engine_version = "auto"``
  detects the engine version of each mount once per process (``sys/internal/ui/mounts/<mount>``, what the
  ``vault kv`` CLI uses).
- One authenticated HTTP session per process for identical settings (shared by backend instances; a forked
  child keeps the token and opens its own connections). Concurrent logins share one login and its
  failure; concurrent reads of one path share one request. An uncached read is 1 HTTP request; a
  handed-in token costs no ``lookup-self`` until the process has used it for ``TOKEN_LOOKUP_DELAY``
  seconds (then one, to learn its TTL and renew it).
- Token life cycle like Vault Agent: renewable tokens are renewed at about two thirds of their TTL (with
  jitter); a failed renewal is retried with back-off until the token expires or Vault denies it; then every
  auth method that can logs in again. A read refused because the token died triggers one new login.
- A variable/config secret without the ``value`` key is an error naming the path and the keys present.
- ``radius`` and ``azure`` really log in (Airflow calls the admin ``configure`` endpoints instead);
  ``gcp`` signs its login JWT locally with the service-account key (no IAM API call); ``cert`` (TLS
  client certificate) is supported in addition.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Unpack
from urllib.parse import quote, urlsplit, urlunsplit

from credpath import metrics as _metrics
from credpath.deadlines import (
    Deadline,
    Retryable,
    RetryPolicy,
    call_with_deadline,
    parse_retry_after,
    retry_call,
)
from credpath.errors import (
    AccessDenied,
    BackendError,
    BackendTimeout,
    ConfigError,
    CredpathError,
    MissingFile,
)
from credpath.protocol import BackendOptions, BaseBackend, Capability, Kind, multi_team_enabled

if TYPE_CHECKING:
    import requests

    from credpath.model import Connection

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_KUBERNETES_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_TIMEOUT = 30.0  # hvac's default, which Airflow's provider keeps
# Vault answers 412 on a performance standby that has not caught up yet; 429 when rate-limited.
RETRY_STATUSES = frozenset({412, 429, 500, 502, 503, 504})
RETRY_POLICY = RetryPolicy(attempts=4, base=0.1, cap=2.0)
_ONCE = RetryPolicy(attempts=1)
# Renew at this fraction of the TTL (minus up to RENEW_JITTER of it, so a fleet does not renew in step).
RENEW_FRACTION = 2 / 3
RENEW_JITTER = 0.1
# A failed renewal/lookup is tried again after base * 2**n seconds (jittered), never past the expiry.
REFRESH_BACKOFF = RetryPolicy(attempts=0, base=0.5, cap=30.0)
# A handed-in token's TTL is unknown; learning it costs a lookup-self that Airflow never makes. Short task
# processes (most Airflow tasks) finish before this; long-lived ones learn it and renew.
TOKEN_LOOKUP_DELAY = 30.0

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


def _valid_path(path: str) -> bool:
    # Dot segments would let an id escape its prefix (connections/../../sys/...); empty ones never exist.
    segments = path.split("/")
    return bool(path) and all(s not in ("", ".", "..") for s in segments)


def _read_file(path: str, setting: str) -> str:
    try:
        return Path(path).expanduser().read_text().strip()
    except FileNotFoundError:
        # Also a FileNotFoundError: Airflow raises that here, and callers may catch it.
        raise MissingFile(f"{setting}: file {path!r} does not exist", filename=path) from None
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


# --- HTTP answers and single-flight ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reply:
    """A whole HTTP answer, read within the deadline (immutable: shared by single-flight waiters)."""

    status: int
    body: bytes
    retry_after: float | None = None

    def json(self) -> dict[str, Any]:
        """The JSON object of the body, or {} (a proxy's HTML page must not crash a lookup)."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def errors(self) -> str:
        return "; ".join(str(e) for e in self.json().get("errors") or [])[:300]

    @property
    def sealed(self) -> bool:
        return self.status == 503 and "sealed" in self.errors().lower()


class _Flight:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def _clone(exc: BaseException) -> BaseException:
    """A copy of an exception for another thread (each caller's backend relabels its own copy)."""
    try:
        return copy.copy(exc)
    except Exception:  # pragma: no cover - an exception type that cannot be copied
        return exc


class _Flights:
    """Single-flight: concurrent calls with one key share one execution and its outcome, success or failure.

    A failure is handed to every waiter at once; the next call after it starts a new flight (failures are
    never cached).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, _Flight] = {}

    def run(
        self,
        key: Hashable,
        func: Callable[[], T],
        deadline: Deadline,
        on_timeout: Callable[[], BaseException],
    ) -> T:
        with self._lock:
            flight = self._running.get(key)
            leader = flight is None
            if flight is None:
                flight = self._running[key] = _Flight()
        if not leader:
            if not flight.done.wait(deadline.remaining()):
                raise on_timeout()
            if flight.error is not None:
                raise _clone(flight.error) from None
            return flight.value  # type: ignore[no-any-return]
        try:
            flight.value = func()
            return flight.value  # type: ignore[no-any-return]
        except BaseException as exc:
            flight.error = _clone(exc)  # a pristine copy: the leader's caller relabels the original
            raise
        finally:
            with self._lock:
                self._running.pop(key, None)
            flight.done.set()


def _connection_reason(exc: BaseException) -> tuple[str, bool]:
    """(short reason, refused?) of a requests ConnectionError, from its urllib3 cause; no URL, no text."""
    from urllib3.exceptions import NewConnectionError

    inner = exc.args[0] if exc.args else None
    reason = getattr(inner, "reason", inner)
    if isinstance(reason, NewConnectionError) or isinstance(reason, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(reason, BaseException):
        return type(reason).__name__, False
    return type(exc).__name__, False


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
    """One HTTP session and its token, shared by all backend instances with equal settings in a process."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.url: str = settings["url"]
        self.safe_url = _safe_url(self.url)
        self.auth_type: str = settings["auth_type"]
        self.auth_mount: str = settings["auth_mount_point"] or _AUTH_METHODS[self.auth_type].mount
        self._http: requests.Session | None = None
        self._token: str | None = None
        self._expires_at: float | None = None  # monotonic; None: never, or not known yet
        self._refresh_at: float | None = None  # when to renew / look up / log in again
        self._renewable = False
        self._ttl_known = True
        self._refresh_failures = 0
        self.kv_versions: dict[str, int] = {}  # per mount, once per process
        self.logins = 0
        self.renewals = 0
        self.backend_name = "vault"  # the first backend using this session: the metrics label
        self._reset_locks()

    def _reset_locks(self) -> None:
        self._build_lock = threading.Lock()
        self._refreshing = threading.Lock()
        self.flights = _Flights()

    def after_fork(self) -> None:
        """In a forked child: keep the token and KV versions, drop the parent's sockets and locks."""
        self._reset_locks()
        self._http = None  # not closed: the sockets still belong to the parent

    # --- HTTP ------------------------------------------------------------------------------------------

    def prepare(self) -> requests.Session:
        """Import requests and build the HTTP session (no network I/O); idempotent."""
        if self._http is None:
            with self._build_lock:
                if self._http is None:
                    self._http = self._build_http()
        return self._http

    @property
    def http(self) -> requests.Session:
        return self.prepare()

    def _build_http(self) -> requests.Session:
        import requests
        from requests.adapters import HTTPAdapter

        s = self.settings
        session = requests.Session()
        # credpath retries itself, inside the deadline; urllib3's retries would sleep outside it. Pool size:
        # room for many threads without "connection pool is full" churn.
        adapter = HTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=64)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.verify = s["verify"]
        cert = s["cert"]
        if cert is not None:
            session.cert = tuple(cert) if isinstance(cert, list) else cert
        if s["proxies"]:
            session.proxies.update(s["proxies"])
        return session

    def timeout_error(self, what: str, deadline: Deadline) -> BackendTimeout:
        return BackendTimeout(f"{what} timed out after {deadline.seconds:g} s (Vault at {self.safe_url})")

    def status_error(self, reply: _Reply, what: str, secrets: Sequence[str] = ()) -> BackendError:
        if reply.sealed:
            return BackendError(f"Vault at {self.safe_url} is sealed (HTTP 503) while {what}")
        if reply.status == 429:
            return BackendError(f"Vault at {self.safe_url} is throttling requests (HTTP 429) while {what}")
        detail = _scrub(reply.errors(), list(secrets))
        return BackendError(
            f"Vault at {self.safe_url} answered HTTP {reply.status} while {what}"
            + (f": {detail}" if detail else "")
        )

    def _exchange(
        self, method: str, path: str, body: Any, token: str | None, deadline: Deadline, what: str
    ) -> _Reply:
        """One HTTP request and its whole answer, bounded by the deadline even against a trickling server."""
        http = self.http
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        if self.settings["namespace"]:
            headers["X-Vault-Namespace"] = self.settings["namespace"]
        url = f"{self.url}/v1/{path}"

        def run() -> _Reply:
            # Socket timeouts = what is left: they end an abandoned worker that a hung server keeps waiting.
            left = max(deadline.remaining(), 0.001)
            # verify/cert per request: requests lets REQUESTS_CA_BUNDLE override the session's (hvac too).
            with http.request(
                method,
                url,
                json=body,
                headers=headers,
                timeout=(left, left),
                stream=True,
                verify=http.verify,
                cert=http.cert,
            ) as response:
                chunks = []
                for chunk in response.iter_content(65536):
                    if deadline.expired:  # the caller has gone: close the connection, stop reading
                        raise TimeoutError
                    chunks.append(chunk)
                return _Reply(
                    response.status_code,
                    b"".join(chunks),
                    parse_retry_after(response.headers.get("Retry-After")),
                )

        return call_with_deadline(run, deadline, on_timeout=lambda: self.timeout_error(what, deadline))

    def call(
        self,
        method: str,
        path: str,
        *,
        deadline: Deadline,
        what: str,
        body: Any = None,
        token: str | None = None,
        retry: bool = True,
        secrets: Sequence[str] = (),
    ) -> _Reply:
        """A request with retries (``retry``) inside the deadline; a 5xx/429/412 left after them raises."""
        import requests

        def attempt(dl: Deadline) -> _Reply:
            try:
                reply = self._exchange(method, path, body, token, dl, what)
            except (requests.Timeout, TimeoutError):
                raise self.timeout_error(what, deadline) from None
            except (requests.exceptions.SSLError, requests.exceptions.ProxyError) as exc:
                raise BackendError(
                    f"cannot reach Vault at {self.safe_url} ({type(exc).__name__}) while {what}"
                ) from None
            except requests.ConnectionError as exc:
                reason, refused = _connection_reason(exc)
                error = BackendError(f"cannot reach Vault at {self.safe_url} ({reason}) while {what}")
                if refused or not retry:  # nothing listens: fail fast (the search path's breaker backs off)
                    raise error from None
                raise Retryable(error) from None
            except requests.RequestException as exc:  # a broken answer (chunked encoding, decoding)
                error = BackendError(
                    f"broken answer from Vault at {self.safe_url} ({type(exc).__name__}) while {what}"
                )
                if not retry:
                    raise error from None
                raise Retryable(error) from None
            if retry and reply.status in RETRY_STATUSES:
                error = self.status_error(reply, what, secrets)
                if reply.retry_after is not None and reply.retry_after >= dl.remaining():
                    # Honoured only inside the deadline: a Retry-After of an hour fails now, not in an hour.
                    raise BackendError(
                        f"{error}; its Retry-After of {reply.retry_after:g} s exceeds the "
                        f"{deadline.seconds:g} s timeout"
                    )
                raise Retryable(error, reply.retry_after)
            return reply

        return retry_call(
            attempt,
            deadline,
            RETRY_POLICY if retry else _ONCE,
            on_timeout=lambda: self.timeout_error(what, deadline),
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        deadline: Deadline,
        what: str,
        body: Any = None,
        retry: bool = True,
    ) -> _Reply:
        """An authenticated request: log in on first use, refresh when due, log in again on a dead token."""
        token = self.token(deadline)
        reply = self.call(method, path, deadline=deadline, what=what, body=body, token=token, retry=retry)
        if reply.status != 403 or not self._token_is_dead(token, deadline):
            return reply
        if not self.can_login:
            self._expires_at = time.monotonic()
            raise AccessDenied(
                f"Vault refused the token (auth_type 'token') while {what}: it is invalid, or it expired or "
                "was revoked; a handed-in token cannot log in again, so give a new one"
            )
        log.debug("vault: token expired or revoked; logging in again (%s auth)", self.auth_type)
        token = self._login_once(token, deadline)
        return self.call(method, path, deadline=deadline, what=what, body=body, token=token, retry=retry)

    def shared_get(self, path: str, *, deadline: Deadline, what: str) -> _Reply:
        """An authenticated GET that concurrent callers of the same path share (one request at the server)."""
        return self.flights.run(
            ("GET", path),
            lambda: self.request("GET", path, deadline=deadline, what=what),
            deadline,
            lambda: self.timeout_error(what, deadline),
        )

    # --- token life cycle --------------------------------------------------------------------------

    @property
    def can_login(self) -> bool:
        """Whether a new token can be obtained without the user (a login method, or a re-read token file)."""
        return self.auth_type != "token" or bool(self.settings["token_path"])

    def _expired(self) -> bool:
        return self._expires_at is not None and time.monotonic() >= self._expires_at

    def token(self, deadline: Deadline) -> str:
        """A usable token: log in on first use, refresh it when due (one thread; the others carry on)."""
        token = self._token
        if token is None:
            return self._login_once(None, deadline)
        if self._expired():
            if self.can_login:
                return self._login_once(token, deadline)
            return token  # a handed-in token past its TTL: Vault's 403 gives the clear AccessDenied
        due = self._refresh_at
        if due is not None and time.monotonic() >= due and self._refreshing.acquire(blocking=False):
            try:
                if self._refresh_at is not None and time.monotonic() >= self._refresh_at:
                    self._refresh(token, deadline)
            finally:
                self._refreshing.release()
        return self._token or token

    def _set_token(self, token: str, ttl: float, renewable: bool, *, ttl_known: bool = True) -> None:
        now = time.monotonic()
        self._token = token
        self._renewable = renewable
        self._ttl_known = ttl_known
        self._refresh_failures = 0
        if not ttl_known:
            self._expires_at = None
            self._refresh_at = now + TOKEN_LOOKUP_DELAY
        elif ttl > 0:
            self._expires_at = now + ttl
            due = renewable or self.can_login
            share = RENEW_FRACTION * (1 - RENEW_JITTER * random.random())
            self._refresh_at = now + ttl * share if due else None
        else:  # a token that never expires (root, or no TTL)
            self._expires_at = None
            self._refresh_at = None

    def _back_off(self, why: str) -> None:
        """A renewal/lookup/login failed while the token still works: try again later, not past the expiry."""
        self._refresh_failures += 1
        now = time.monotonic()
        wait = min(REFRESH_BACKOFF.cap, REFRESH_BACKOFF.base * 2 ** (self._refresh_failures - 1))
        wait *= 0.5 + 0.5 * random.random()
        if self._expires_at is not None:
            wait = min(wait, max(0.05, (self._expires_at - now) / 2))
        self._refresh_at = now + wait
        log.debug("vault: %s; trying again in %.1f s (%s auth)", why, wait, self.auth_type)

    def _attempt(self, func: Callable[[], _Reply]) -> _Reply | None:
        try:
            return func()
        except BackendError as exc:
            log.debug("vault: token refresh request failed: %s", exc)
            return None

    def _refresh(self, token: str, deadline: Deadline) -> None:
        """Renew (or learn the TTL of, or replace) a token that still works; never fails the caller's call."""
        if not self._ttl_known:
            reply = self._attempt(
                lambda: self.call(
                    "GET",
                    "auth/token/lookup-self",
                    deadline=deadline,
                    what="looking up the token",
                    token=token,
                )
            )
            if reply is None or reply.status not in (200, 403):
                self._back_off("token lookup failed")
            elif reply.status == 403:
                self._expires_at = time.monotonic()  # dead: the next call logs in again or says so
            else:
                data = reply.json().get("data") or {}
                self._set_token(token, float(data.get("ttl") or 0), bool(data.get("renewable")))
            return
        if self._renewable:
            reply = self._attempt(
                lambda: self.call(
                    "POST",
                    "auth/token/renew-self",
                    body={},
                    deadline=deadline,
                    what="renewing the token",
                    token=token,
                )
            )
            auth = reply.json().get("auth") if reply is not None and reply.status == 200 else None
            if auth and auth.get("client_token"):
                self.renewals += 1
                if _metrics.on:
                    _metrics.auth_event("renewal", self.backend_name)
                ttl = float(auth.get("lease_duration") or 0)
                log.debug("vault: renewed token (%s auth), ttl %.0f s", self.auth_type, ttl)
                if ttl < 2 and self.can_login:
                    # Near its max TTL a renewal returns less and less: log in again instead.
                    self._relogin_quietly(token, deadline)
                    return
                self._set_token(auth["client_token"], ttl, bool(auth.get("renewable")))
                return
            if reply is None or reply.status >= 500 or reply.status in RETRY_STATUSES:
                self._back_off("token renewal failed")  # Vault Agent: keep renewing until denied or expired
                return
            log.debug("vault: token renewal refused (HTTP %s)", reply.status)
            if not self.can_login:
                self._refresh_at = None  # used until it expires; then the clear AccessDenied
                return
        self._relogin_quietly(token, deadline)

    def _relogin_quietly(self, token: str, deadline: Deadline) -> None:
        try:
            self._login_once(token, deadline)
        except CredpathError as exc:
            if self._token is token and not self._expired():
                self._back_off(f"login failed ({type(exc).__name__})")
            else:
                raise

    def _token_is_dead(self, token: str, deadline: Deadline) -> bool:
        """After a 403: one lookup-self tells an expired/revoked token from a policy denial."""
        reply = self.call(
            "GET", "auth/token/lookup-self", deadline=deadline, what="checking the token", token=token
        )
        return reply.status == 403

    def _login_once(self, stale: str | None, deadline: Deadline) -> str:
        """Log in, one thread at a time: concurrent callers share one login and its outcome."""

        def lead() -> str:
            current = self._token
            if current is not None and current != stale and not self._expired():
                return current  # another thread logged in meanwhile
            return self._login(deadline)

        return self.flights.run(
            "login", lead, deadline, lambda: self.timeout_error(f"logging in ({self.auth_type})", deadline)
        )

    def _login(self, deadline: Deadline) -> str:
        if self.auth_type == "token":
            return self._use_static_token()
        path, body = self.login_request()
        secrets = [str(v) for v in body.values() if isinstance(v, str)]
        what = f"logging in with auth_type {self.auth_type!r} at auth/{self.auth_mount}"
        # A login is safe to repeat: retried on 5xx/429 like a read; a 4xx is the method's answer.
        reply = self.call("POST", path, body=body, deadline=deadline, what=what, secrets=secrets)
        if reply.status != 200:
            reason = _scrub(reply.errors(), secrets) or f"HTTP {reply.status}"
            raise AccessDenied(
                f"Vault login with auth_type {self.auth_type!r} at auth/{self.auth_mount} failed "
                f"(HTTP {reply.status}: {reason})"
            )
        auth = reply.json().get("auth") or {}
        if not auth.get("client_token"):
            raise AccessDenied(f"Vault login at auth/{self.auth_mount} returned no token")
        self.logins += 1
        if _metrics.on:
            _metrics.auth_event("login", self.backend_name)
        log.debug("vault: logged in (%s auth at auth/%s)", self.auth_type, self.auth_mount)
        self._set_token(
            auth["client_token"], float(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
        )
        return str(auth["client_token"])

    def _use_static_token(self) -> str:
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
        # No lookup-self here (Airflow makes none): the TTL is learnt only if the process lives long enough.
        self.logins += 1
        self._set_token(token, 0, False, ttl_known=False)
        return token

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
        if self._http is not None:
            self._http.close()
        self._http = None
        self._token = None
        self._expires_at = None
        self._refresh_at = None


def _session_for(settings: dict[str, Any]) -> _Session:
    extra = os.environ.get("VAULT_TOKEN", "") if settings["auth_type"] == "token" else ""
    # The key hashes credentials instead of holding them. A forked child keeps its parent's sessions
    # (token included) but not their sockets: see _after_fork.
    material = json.dumps([settings, extra], sort_keys=True, default=str)
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


def _after_fork() -> None:
    global _SESSIONS_LOCK
    _SESSIONS_LOCK = threading.Lock()  # another thread of the parent may have held it
    for session in _SESSIONS.values():
        session.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


PathSetting = str | Sequence[str] | None


class VaultBackend(BaseBackend):
    """Connections, variables and config from a Vault/OpenBao KV mount (Airflow's kwargs)."""

    alias: ClassVar[str] = "vault"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"write", "list", "structured"})
    store_name: ClassVar[str] = "HashiCorp Vault"
    requires: ClassVar[tuple[str, ...]] = ("hvac", "requests")
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
        **options: Unpack[BackendOptions],
    ) -> None:
        super().__init__(**options)
        url = url or os.environ.get("VAULT_ADDR")
        if not url:
            raise self.config_error("url is required (or set VAULT_ADDR)")
        if auth_type not in AUTH_TYPES:
            raise self.config_error(f"auth_type {auth_type!r} is not one of: {', '.join(AUTH_TYPES)}")
        if kv_engine_version is None:
            kv_engine_version = 2  # Airflow's client: ``kv_engine_version or 2``
        if kv_engine_version not in (1, 2, "auto"):
            raise self.config_error(
                f"kv_engine_version must be 1, 2 or 'auto' (detect per mount), got {kv_engine_version!r}"
            )
        if assume_role_kwargs is not None and not isinstance(assume_role_kwargs, dict):
            raise self.config_error("assume_role_kwargs must be an object of STS AssumeRole arguments")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise self.config_error("timeout must be a positive number of seconds")
        if not isinstance(use_team_secrets_path, bool):
            raise self.config_error("use_team_secrets_path must be true or false")
        self.paths: dict[Kind, list[str] | None] = {
            "connection": self._clean_paths(connections_path, "connections_path"),
            "variable": self._clean_paths(variables_path, "variables_path"),
            "config": self._clean_paths(config_path, "config_path"),
        }
        if global_secrets_path is not None:
            if not isinstance(global_secrets_path, str):
                raise self.config_error("global_secrets_path must be a string")
            # Airflow 4.8.4: deprecated; appended to every kind's paths as the last fallback.
            warnings.warn(
                "global_secrets_path is deprecated (as in Airflow's provider): give each *_path a list of "
                'paths instead, e.g. connections_path = ["connections/team1", "connections/common"]',
                DeprecationWarning,
                stacklevel=2,
            )
            extra = global_secrets_path.strip("/")
            self.paths = {kind: [*(paths or []), extra] for kind, paths in self.paths.items()}
        self.use_team_secrets_path = use_team_secrets_path
        self.mount_point = mount_point.strip("/") if mount_point else None
        self.kv_engine_version = kv_engine_version
        self.url = url.rstrip("/")
        self.auth_type = auth_type
        self.timeout = float(timeout)
        settings: dict[str, Any] = {
            "url": self.url,
            "namespace": namespace,
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
                raise self.config_error(f"auth_type {auth_type!r} needs {' or '.join(group)}")
        self._settings = settings
        self._session: _Session | None = None

    def _clean_paths(self, paths: PathSetting, setting: str) -> list[str] | None:
        """Airflow 4.8.4: a path or a list of paths tried in order; null switches the kind off."""
        if paths is None:
            return None
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list | tuple) or not all(isinstance(p, str) for p in paths):
            raise self.config_error(f"{setting} must be a string, a list of strings or null")
        return [p.strip("/") for p in paths]

    # --- session -----------------------------------------------------------------------------------

    @property
    def session(self) -> _Session:
        if self._session is None:
            self._session = _session_for(self._settings)
            if self._session.logins == 0 and self.name:
                self._session.backend_name = self.name
        return self._session

    @property
    def http_session(self) -> requests.Session:
        """The requests session used for every call (tests hook it to count requests). No network I/O."""
        return self.session.http

    def prepare(self) -> None:
        """Import the HTTP client and build the session (no network): a forked task process inherits it."""
        self.session.prepare()

    def close(self) -> None:
        if self._session is not None:
            _forget_session(self._session)
            self._session.close()
            self._session = None

    def describe(self) -> str:
        mount = self.mount_point or "<first segment of the id>"
        kv = "auto" if self.kv_engine_version == "auto" else f"v{self.kv_engine_version}"
        return f"vault {_safe_url(self.url)} mount={mount} kv={kv} auth={self.auth_type}"

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

    # --- paths -------------------------------------------------------------------------------------

    def _names_a_team_namespace(self, kind: Kind, key: str, team_name: str | None) -> bool:
        """Airflow 4.8.4: in multi-team mode, an id with '/' looked up with no team could reach a team's
        secret under ``<path>/<team>/...``, so it is not looked up."""
        if kind == "config" or team_name is not None or not self.use_team_secrets_path:
            return False
        if not multi_team_enabled():
            return False
        rest = key if self.mount_point is not None else (key.split("/", 1)[1] if "/" in key else "")
        if "/" not in rest:
            return False
        log.warning(
            "vault: %s id %r contains '/' and is looked up with no team; in multi-team mode it could "
            "resolve a team's secret, so it is not looked up",
            kind,
            key,
        )
        return True

    def _locations(self, kind: Kind, key: str, team_name: str | None = None) -> list[tuple[str, str]]:
        """(mount, path inside the mount) of an id under each configured path, in order (Airflow's order)."""
        prefixes = self.paths[kind]
        if not prefixes or self._names_a_team_namespace(kind, key, team_name):
            return []
        mount = self.mount_point
        rest = key
        if mount is None:
            # Airflow: the first segment of the id names the mount.
            if "/" not in key:
                log.debug("vault: %s %r has no mount segment (mount_point is null)", kind, key)
                return []
            mount, rest = key.split("/", 1)
        scoped = kind != "config" and team_name is not None and self.use_team_secrets_path
        scoped = scoped and multi_team_enabled()
        found: list[tuple[str, str]] = []
        for prefix in prefixes:
            base = "/".join(p for p in (prefix, team_name if scoped else "") if p)
            path = f"{base}/{rest}" if base else rest
            if _valid_path(mount) and _valid_path(path):
                found.append((mount, path))
            else:
                log.debug("vault: %s id %r is not a valid Vault path", kind, key)
        return found

    def _locate(self, kind: Kind, key: str) -> tuple[str, str] | None:
        """Where writes, deletes and version reads go: the first configured path (no team scoping)."""
        prefixes = self.paths[kind]
        if not prefixes:
            return None
        mount, rest = self.mount_point, key
        if mount is None:
            if "/" not in key:
                return None
            mount, rest = key.split("/", 1)
        path = f"{prefixes[0]}/{rest}" if prefixes[0] else rest
        if not _valid_path(mount) or not _valid_path(path):
            return None
        return mount, path

    @staticmethod
    def _q(path: str) -> str:
        return quote(path, safe="/")

    def _where(self, mount: str, path: str) -> str:
        return f"{mount}/{path}"

    def _deny(self, mount: str, path: str, capability: str = "read") -> AccessDenied:
        # A dead token was already told apart (lookup-self) and replaced or reported, so this is the policy's.
        return self.error(  # type: ignore[return-value]
            f"permission denied on {mount}/{path} (auth_type {self.auth_type!r}); the token's policy needs "
            f"{capability!r} on this path",
            AccessDenied,
        )

    def _raise_for_status(
        self,
        reply: _Reply,
        mount: str,
        path: str,
        capability: str,
        action: str,
        ok: tuple[int, ...] = (200,),
        with_server_errors: bool = False,
    ) -> None:
        """403 -> the policy's AccessDenied on mount/path; a status outside ``ok`` -> '<action> failed'."""
        status = reply.status
        if status == 403:
            raise self._deny(mount, path, capability)
        if reply.sealed:
            raise self.error(f"Vault at {_safe_url(self.url)} is sealed (HTTP 503) while {action}")
        if status not in ok:
            detail = f": {reply.errors()}" if with_server_errors and reply.errors() else ""
            raise self.error(f"{action} failed (HTTP {status}{detail})")

    @staticmethod
    def _data_path(mount: str, path: str, version: int) -> str:
        """Where a secret's value is read, written and soft-deleted."""
        return f"{mount}/data/{path}" if version == 2 else f"{mount}/{path}"

    def _request(
        self, method: str, path: str, deadline: Deadline, what: str, body: Any = None, retry: bool = True
    ) -> _Reply:
        return self.session.request(method, path, deadline=deadline, what=what, body=body, retry=retry)

    def _kv_version(self, mount: str, deadline: Deadline) -> int | None:
        """The KV version of a mount: configured, or detected once per process; None if not visible."""
        if self.kv_engine_version != "auto":
            return int(self.kv_engine_version)
        session = self.session
        version = session.kv_versions.get(mount)
        if version is not None:
            return version
        what = f"detecting the KV version of mount {mount!r}"
        return session.flights.run(
            ("kv", mount),
            lambda: self._detect_kv_version(mount, deadline, what),
            deadline,
            lambda: session.timeout_error(what, deadline),
        )

    def _detect_kv_version(self, mount: str, deadline: Deadline, what: str) -> int | None:
        session = self.session
        reply = self._request("GET", f"sys/internal/ui/mounts/{self._q(mount)}", deadline, what)
        if reply.status in (403, 404):
            # Vault answers 403 ("preflight capability check") both for no such mount and no access to it.
            if self.mount_point is None:
                return None
            raise self.error(
                f"mount {mount!r} does not exist or the token's policy grants nothing under it "
                f"(auth_type {self.auth_type!r}); set kv_engine_version to 1 or 2 to skip detection",
                AccessDenied,
            )
        if reply.status != 200:
            raise session.status_error(reply, what)
        data = reply.json().get("data") or {}
        if data.get("type") not in ("kv", "generic"):
            raise self.error(f"mount {mount!r} is a {data.get('type')!r} engine, not kv")
        version = 2 if str((data.get("options") or {}).get("version", "1")) == "2" else 1
        log.debug("vault: mount %r is KV v%d", mount, version)
        session.kv_versions[mount] = version
        return version

    # --- reads -------------------------------------------------------------------------------------

    def read_secret(
        self, kind: Kind, key: str, team_name: str | None = None
    ) -> tuple[str, dict[str, Any]] | None:
        """(display path, secret map) of an id, or None on a miss (404, soft-deleted, destroyed).

        Each configured path is tried in order until one holds the id (Airflow 4.8.4)."""
        locations = self._locations(kind, key, team_name)
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
        reply = self.session.shared_get(
            self._q(self._data_path(mount, path, version)), deadline=deadline, what=f"reading {where}"
        )
        if reply.status == 404:
            return None
        self._raise_for_status(reply, mount, path, "read", f"reading {where}")
        try:
            body = json.loads(reply.body)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            # Never a miss: a 200 that is not Vault's answer (a proxy page) must not hide a secret.
            raise self.error(f"reading {where}: the response is not a Vault JSON object")
        data = body["data"]
        if version == 2:
            metadata = data.get("metadata") or {}
            if metadata.get("deletion_time") or metadata.get("destroyed"):
                return None
            data = data.get("data")
            if data is None:
                return None
        if not isinstance(data, dict):
            raise self.error(f"secret {where} is not a key/value map")
        log.debug("vault: read %s", where)
        return where, data

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
        if data is None:
            return None
        uri = data.get("conn_uri")
        if uri:
            return str(uri)
        return json.dumps(data)

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        if self._connection_adapter is not None:
            raw = self.get_conn_value(conn_id, team_name)
            return None if raw is None else self.deserialize_connection(conn_id, raw)
        data = self._connection_data(conn_id, team_name)
        if data is None:
            return None
        from credpath.model import Connection

        uri = data.get("conn_uri")
        if uri:
            # A description stored next to conn_uri survives (Airflow would drop it).
            return Connection.from_uri(str(uri), conn_id=conn_id, description=data.get("description"))
        return Connection.from_json(dict(data), conn_id=conn_id)

    def _value(self, kind: Kind, key: str, team_name: str | None = None) -> str | None:
        found = self._wanted_secret(kind, key, team_name)
        if found is None:
            return None
        where, data = found
        if "value" not in data:
            keys = ", ".join(sorted(map(str, data))) or "none"
            raise self.error(f"secret {where} has no 'value' key (keys present: {keys})")
        value = data["value"]
        return value if isinstance(value, str) else json.dumps(value)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return self._value("variable", key, team_name)

    def get_config(self, key: str) -> str | None:
        return self._value("config", key)

    # --- writes ------------------------------------------------------------------------------------

    def _writable(self, kind: Kind, key: str, deadline: Deadline) -> tuple[str, str, int]:
        located = self._locate(kind, key)
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

    def _write(self, kind: Kind, key: str, data: dict[str, Any], *, overwrite: bool, cas: int | None) -> None:
        self._guarded(lambda deadline: self._write_in(kind, key, data, overwrite, cas, deadline))

    def _write_in(
        self, kind: Kind, key: str, data: dict[str, Any], overwrite: bool, cas: int | None, deadline: Deadline
    ) -> None:
        mount, path, version = self._writable(kind, key, deadline)
        where = self._where(mount, path)
        if version == 1:
            if cas is not None:
                raise self.config_error(f"check-and-set needs KV v2; mount {mount!r} is v1")
            if not overwrite and self._read_one(mount, path, deadline) is not None:
                raise self.config_error(f"{kind} {key!r} already exists at {where}")
            body = data
        else:
            body = {"data": data}
            if cas is None and not overwrite:
                cas = 0  # create-only, atomically on the server
            if cas is not None:
                body["options"] = {"cas": cas}
        # Writes are never replayed: a lost answer may hide a write that happened.
        reply = self._request(
            "POST",
            self._q(self._data_path(mount, path, version)),
            deadline,
            f"writing {where}",
            body,
            retry=False,
        )
        if version == 2 and reply.status == 400 and "check-and-set" in reply.errors():
            if not overwrite and cas == 0:
                raise self.config_error(f"{kind} {key!r} already exists at {where}")
            raise WriteConflict(f"{self.label}: {where} changed since version {cas}; not overwritten")
        self._raise_for_status(
            reply, mount, path, "create/update", f"writing {where}", ok=(200, 204), with_server_errors=True
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
            raise self.config_error("set_connection needs a connection with a conn_id")
        if serialization not in (None, "uri", "json"):
            raise self.config_error("serialization must be 'uri' or 'json'")
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

        def run(deadline: Deadline) -> int | None:
            mount, path, version = self._writable(kind, key, deadline)
            if version != 2:
                raise self.config_error(f"versions need KV v2; mount {mount!r} is v1")
            what = f"reading metadata of {mount}/{path}"
            reply = self._request("GET", self._q(f"{mount}/metadata/{path}"), deadline, what)
            if reply.status == 404:
                return None
            self._raise_for_status(reply, mount, path, "read", what)
            return int((reply.json().get("data") or {}).get("current_version") or 0) or None

        return self._guarded(run)

    def _delete(self, kind: Kind, key: str, soft: bool) -> bool:
        def run(deadline: Deadline) -> bool:
            mount, path, version = self._writable(kind, key, deadline)
            where = self._where(mount, path)
            if version == 2 and not soft:
                target = f"{mount}/metadata/{path}"  # every version and the metadata
                existed = self._request("GET", self._q(target), deadline, f"reading {target}").status == 200
            else:
                target = self._data_path(mount, path, version)
                existed = self._read_one(mount, path, deadline) is not None
            if not existed:
                return False
            reply = self._request("DELETE", self._q(target), deadline, f"deleting {where}", retry=False)
            self._raise_for_status(reply, mount, path, "delete", f"deleting {where}", ok=(200, 204))
            log.debug("vault: deleted %s (%s)", where, "soft" if soft and version == 2 else "all versions")
            return True

        return self._guarded(run)

    def delete_connection(self, conn_id: str, *, soft: bool = False) -> bool:
        """Delete a connection; KV v2: all versions, or only the current one with ``soft=True``."""
        return self._delete("connection", conn_id, soft)

    def delete_variable(self, key: str, *, soft: bool = False) -> bool:
        return self._delete("variable", key, soft)

    # --- listing -----------------------------------------------------------------------------------

    def _list_tree(self, mount: str, prefix: str, version: int, deadline: Deadline) -> list[str]:
        base = f"{mount}/metadata/{prefix}" if version == 2 else f"{mount}/{prefix}"
        found: list[str] = []
        pending = [""]
        while pending:
            sub = pending.pop()
            folder = f"{base}/{sub}" if prefix else f"{base}{sub}"
            what = f"listing {mount}/{prefix}"
            reply = self._request("LIST", self._q(folder.rstrip("/") + "/"), deadline, what)
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
                secret_mounts = (reply.json().get("data") or {}).get("secret") or {}
                mounts = sorted(m.strip("/") for m, info in secret_mounts.items() if info.get("type") == "kv")
            ids: set[str] = set()
            for mount in mounts:
                version = self._kv_version(mount, deadline)
                if version is None:
                    continue
                for prefix in prefixes:  # every configured path, as reads try them all
                    keys = self._list_tree(mount, prefix, version, deadline)
                    ids.update(keys if self.mount_point else [f"{mount}/{k}" for k in keys])
            return sorted(ids)

        return self._guarded(run)

    def list_connections(self) -> list[str]:
        return self._list("connection")

    def list_variables(self) -> list[str]:
        return self._list("variable")
