"""One authenticated HTTP session per process and settings: transport, deadlines, retries, token life cycle.

The counterpart of Airflow's internal ``_VaultClient`` (auth and session), without hvac (see ``auth.py``):
every call runs within one deadline, retried with back-off inside it; concurrent logins share one login and
its failure (single-flight); renewable tokens are renewed at about two thirds of their TTL; a handed-in
token costs no ``lookup-self`` until the process has used it for ``TOKEN_LOOKUP_DELAY`` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from credpath import metrics as _metrics
from credpath._deadlines import (
    Deadline,
    Retryable,
    RetryPolicy,
    call_with_deadline,
    parse_retry_after,
    retry_call,
)
from credpath._resilience import SingleFlight
from credpath.backends._armed_sockets import armable, armed_adapter, bounded_by
from credpath.backends._status import Row, StatusTable
from credpath.backends.vault import auth as methods
from credpath.errors import AccessDenied, BackendError, BackendTimeout, CredpathError, Throttled

if TYPE_CHECKING:
    import requests

    from credpath.backends.vault.settings import ClientSettings

__all__ = [
    "REFRESH_BACKOFF",
    "RENEW_FRACTION",
    "RENEW_JITTER",
    "RETRY_POLICY",
    "RETRY_STATUSES",
    "SEALED",
    "STATUS_TABLE",
    "TOKEN_LOOKUP_DELAY",
    "Reply",
    "Session",
    "forget_session",
    "safe_url",
    "session_for",
]

log = logging.getLogger("credpath.backends.vault")
T = TypeVar("T")

#: The error code of a 503 from a sealed server (Vault has no codes of its own; its errors text says so).
SEALED = "sealed"
# Vault answers 412 on a performance standby that has not caught up yet; 429 when rate-limited.
RETRY_STATUSES = frozenset({412, 429, 500, 502, 503, 504})
RETRY_POLICY = RetryPolicy(attempts=4, base=0.1, cap=2.0)
#: Vault's answers -> credpath errors, in the session's voice ("Vault at <url> ...").
STATUS_TABLE = StatusTable(
    "Vault",
    rows=(
        Row(BackendError, "Vault at {url} is sealed (HTTP 503) while {what}", codes=frozenset({SEALED})),
        Row(
            Throttled,
            "Vault at {url} is throttling requests (HTTP 429) while {what}",
            statuses=frozenset({429}),
        ),
    ),
    default=Row(BackendError, "Vault at {url} answered HTTP {status} while {what}{detail}"),
)
_ONCE = RetryPolicy(attempts=1)
#: Auth methods whose login body is made with network I/O of its own (AWS credentials, an Azure token).
_LOGINS_WITH_OWN_IO = frozenset({"aws_iam", "azure"})
# Renew at this fraction of the TTL (minus up to RENEW_JITTER of it, so a fleet does not renew in step).
RENEW_FRACTION = 2 / 3
RENEW_JITTER = 0.1
# A failed renewal/lookup is tried again after base * 2**n seconds (jittered), never past the expiry.
REFRESH_BACKOFF = RetryPolicy(attempts=0, base=0.5, cap=30.0)
# A handed-in token's TTL is unknown; learning it costs a lookup-self that Airflow never makes. Short task
# processes (most Airflow tasks) finish before this; long-lived ones learn it and renew.
TOKEN_LOOKUP_DELAY = 30.0

_SESSIONS: dict[str, Session] = {}
_SESSIONS_LOCK = threading.Lock()


def safe_url(url: str) -> str:
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


@dataclass(frozen=True)
class Reply:
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

    @property
    def code(self) -> str | None:
        """The store's error code for a status table: ``SEALED`` for a sealed server's 503, else None."""
        return SEALED if self.sealed else None


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


def _timeout(seconds: float) -> Any:
    from urllib3.util.timeout import Timeout

    return Timeout(connect=seconds, read=seconds)


def _as_requests_error(exc: BaseException) -> BaseException:
    """The exception requests' adapter raises for urllib3's ``exc`` (its ``send``), so a direct request
    fails exactly as one sent through requests."""
    import requests.exceptions as rex
    from urllib3 import exceptions as u3

    if isinstance(exc, u3.NewConnectionError):  # a subclass of ConnectTimeoutError, but refused/unreachable
        return rex.ConnectionError(exc)
    if isinstance(exc, u3.ConnectTimeoutError):
        return rex.ConnectTimeout(exc)
    if isinstance(exc, u3.ReadTimeoutError):
        return rex.ReadTimeout(exc)
    if isinstance(exc, u3.SSLError):
        return rex.SSLError(exc)
    if isinstance(exc, u3.ProxyError):
        return rex.ProxyError(exc)
    if isinstance(exc, u3.ProtocolError | u3.ClosedPoolError | OSError):
        return rex.ConnectionError(exc)
    if isinstance(exc, u3.DecodeError):
        return rex.ContentDecodingError(exc)
    if isinstance(exc, u3.HTTPError):
        return rex.RequestException(exc)
    return exc


def _tell_hooks(http: requests.Session, prepared: Any, raw: Any, reply: Reply) -> None:
    """The session's response hooks see a direct request as they see one sent through requests."""
    import requests
    from requests.structures import CaseInsensitiveDict

    response = requests.Response()
    response.status_code = reply.status
    response.headers = CaseInsensitiveDict(raw.headers)
    response._content = reply.body
    response.request = prepared
    response.url = prepared.url or ""
    requests.hooks.dispatch_hook("response", http.hooks, response)  # type: ignore[no-untyped-call]


# --- auth methods: default mount, required kwargs and login body ------------------------------------------


class Session:
    """One HTTP session and its token, shared by all backend instances with equal settings in a process."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self.url: str = settings.url
        self.safe_url = safe_url(self.url)
        self.auth_type: str = settings.auth_type
        self.auth_mount: str = methods.auth_mount(settings)
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
        # Requests run on the caller's thread with armed sockets (above), unless the sockets will not be
        # the stdlib's (SOCKS proxy, pyOpenSSL): then on a worker thread bounded by call_with_deadline.
        self._armed: bool | None = None  # decided when the HTTP session is built (it imports urllib3)
        self._adapter: Any = None  # the transport adapter the session was built with
        self._direct: tuple[Any, Any, Any] | None = None  # ((verify, cert), adapter, its urllib3 pool)
        self._redirected = False  # the server answered a redirect: requests follows them, the pool does not
        parts = urlsplit(self.url)
        # A URL with user info: requests sends it as Basic auth, so requests sends those calls.
        self._origin = "" if parts.username or parts.password else f"{parts.scheme}://{parts.netloc}"
        self._reset_locks()

    def _reset_locks(self) -> None:
        self._build_lock = threading.Lock()
        self._refreshing = threading.Lock()
        self.flights = SingleFlight()

    def after_fork(self) -> None:
        """In a forked child: keep the token and KV versions, drop the parent's sockets and locks."""
        self._reset_locks()
        self._http = None  # not closed: the sockets still belong to the parent
        self._direct = None

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
        # The environment is read once, here, the way requests reads it on every request (~0.15 ms each,
        # in every task process): HTTP(S)_PROXY/ALL_PROXY unless NO_PROXY covers the URL, and winning over
        # the configured proxies, as in requests; REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE when verify is on. Not
        # read: ~/.netrc (it could only add Basic auth, which Vault ignores).
        session.trust_env = False
        configured = dict(s.proxies or {})
        environ = requests.utils.get_environ_proxies(self.url, no_proxy=configured.get("no_proxy"))
        session.proxies = {**configured, **environ}
        # credpath retries itself, inside the deadline; urllib3's retries would sleep outside it. Pool size:
        # room for 16 threads at once without "connection pool is full" churn; not more, because a new pool
        # (in every forked task process) fills its queue with that many slots first (64 cost ~1 ms there).
        self._armed = armable(session.proxies)
        adapter = (armed_adapter() if self._armed else HTTPAdapter)(
            max_retries=0, pool_connections=4, pool_maxsize=16
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._adapter = adapter
        self._direct = None
        verify = s.verify
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.verify = verify
        if s.cert is not None:
            session.cert = s.cert
        return session

    def timeout_error(self, what: str, deadline: Deadline) -> BackendTimeout:
        return BackendTimeout(f"{what} timed out after {deadline.seconds:g} s (Vault at {self.safe_url})")

    def status_error(self, reply: Reply, what: str, secrets: Sequence[str] = ()) -> BackendError:
        def detail() -> str:
            found = _scrub(reply.errors(), list(secrets))
            return f": {found}" if found else ""

        fields = {"url": self.safe_url, "what": what, "status": reply.status, "detail": detail}
        return STATUS_TABLE.error(reply.status, reply.code, fields)

    def _exchange(
        self, method: str, path: str, body: Any, token: str | None, deadline: Deadline, what: str
    ) -> Reply:
        """One HTTP request and its whole answer, bounded by the deadline even against a trickling server."""
        http = self.http
        headers = {"X-Vault-Request": "true"}
        if token:
            headers["X-Vault-Token"] = token
        if self.settings.namespace:
            headers["X-Vault-Namespace"] = self.settings.namespace
        url = f"{self.url}/v1/{path}"
        pool = self._direct_pool(http, url)
        if pool is not None:
            reply = self._exchange_direct(http, pool, method, url, body, headers, deadline)
            if reply is not None:
                return reply

        def run() -> Reply:
            # Socket timeouts = what is left: it ends an abandoned worker's wait (SOCKS); armed sockets
            # re-arm every wait with what is left by then.
            left = max(deadline.remaining(), 0.001)
            with http.request(
                method, url, json=body, headers=headers, timeout=(left, left), stream=True
            ) as response:
                chunks = []
                for chunk in response.iter_content(65536):
                    if deadline.expired:  # the caller has gone: close the connection, stop reading
                        raise TimeoutError
                    chunks.append(chunk)
                return Reply(
                    response.status_code,
                    b"".join(chunks),
                    parse_retry_after(response.headers.get("Retry-After")),
                )

        if not self._armed:  # sockets that are not the stdlib's (SOCKS, pyOpenSSL): bound on a worker
            return call_with_deadline(run, deadline, on_timeout=lambda: self.timeout_error(what, deadline))
        try:
            with bounded_by(deadline):
                return run()
        except BaseException:
            if deadline.expired:  # whatever the cut made of it (urllib3's timeout or "connection aborted")
                raise TimeoutError from None
            raise

    def _direct_pool(self, http: requests.Session, url: str) -> Any:
        """The urllib3 pool requests itself would send ``url`` through, when requests would add nothing to
        the call but CPU (it costs ~0.4 ms of client CPU per request on top of urllib3's ~0.35 ms: request
        preparation, settings merging, cookies, the response object); else None, and requests sends it.
        requests sends it when the session has more than this session builds: a proxy (or sockets that
        cannot be armed), another mounted adapter, cookies the store set, auth or params; or once the server
        answered a redirect (requests follows redirects)."""
        if (
            not self._armed
            or not self._origin
            or self._redirected
            or http.proxies
            or http.auth is not None
            or http.params
            or len(http.cookies)
            or http.get_adapter(url) is not self._adapter
        ):
            return None
        adapter: Any = self._adapter
        tls = (http.verify, http.cert)
        direct = self._direct
        if direct is not None and direct[0] == tls and direct[1] is adapter:
            return direct[2]
        import requests

        # The pool, and its TLS settings (verify, CA bundle, client certificate), as requests' adapter
        # picks them for this URL (only the request's URL is read).
        probe = requests.Request("GET", url).prepare()
        pick = getattr(adapter, "get_connection_with_tls_context", None)
        if pick is not None:
            pool = pick(probe, http.verify, proxies=None, cert=http.cert)
        else:  # requests < 2.32
            pool = adapter.get_connection(probe.url, None)
        adapter.cert_verify(pool, probe.url, http.verify, http.cert)
        self._direct = (tls, adapter, pool)
        return pool

    def _exchange_direct(
        self,
        http: requests.Session,
        pool: Any,
        method: str,
        url: str,
        body: Any,
        headers: dict[str, str],
        deadline: Deadline,
    ) -> Reply | None:
        """``_exchange`` on urllib3's pool, with requests' headers and body encoding and its mapping of
        urllib3's errors; None after a redirect (the caller sends the request again through requests)."""
        import requests

        sent = dict(http.headers)  # requests' defaults (User-Agent, Accept-Encoding ...), as it sends them
        sent.update(headers)
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode()
            sent["Content-Type"] = "application/json"
        if data is not None or method not in ("GET", "HEAD"):
            sent["Content-Length"] = str(len(data or b""))
        target = url[len(self._origin) :]
        left = max(deadline.remaining(), 0.001)
        try:
            with bounded_by(deadline):
                # Armed sockets bound every wait, the body's reads included (read whole, here).
                response = pool.urlopen(
                    method,
                    target,
                    body=data,
                    headers=sent,
                    retries=False,  # credpath retries, inside the deadline
                    redirect=False,
                    assert_same_host=False,
                    timeout=_timeout(left),
                    preload_content=True,
                )
        except BaseException as exc:
            if deadline.expired:  # whatever the cut made of it (urllib3's timeout or "connection aborted")
                raise TimeoutError from None
            raise _as_requests_error(exc) from None
        if 300 <= response.status < 400 and response.headers.get("Location"):
            self._redirected = True
            return None
        reply = Reply(response.status, response.data, parse_retry_after(response.headers.get("Retry-After")))
        if "Set-Cookie" in response.headers or http.hooks["response"]:
            prepared = requests.Request(method, url, headers=sent, data=data).prepare()
            if "Set-Cookie" in response.headers:  # from now on requests sends them back
                requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
                    http.cookies, prepared, response
                )
            _tell_hooks(http, prepared, response, reply)
        return reply

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
    ) -> Reply:
        """A request with retries (``retry``) inside the deadline; a 5xx/429/412 left after them raises."""
        import requests

        def attempt(dl: Deadline) -> Reply:
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
    ) -> Reply:
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

    def shared_get(self, path: str, *, deadline: Deadline, what: str) -> Reply:
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
        return self.auth_type != "token" or bool(self.settings.token_path)

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

    def _attempt(self, func: Callable[[], Reply]) -> Reply | None:
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
        what = f"logging in with auth_type {self.auth_type!r} at auth/{self.auth_mount}"
        if self.auth_type in _LOGINS_WITH_OWN_IO:
            # STS AssumeRole, the AWS credential chain (IMDS) or an Azure token request: their clients'
            # own timeouts and retries run to minutes, so they are bounded by the login's deadline too.
            path, body = call_with_deadline(
                lambda: methods.login_request(self.settings),
                deadline,
                on_timeout=lambda: self.timeout_error(what, deadline),
            )
        else:
            path, body = methods.login_request(self.settings)
        secrets = [str(v) for v in body.values() if isinstance(v, str)]
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
        token = methods.static_token(self.settings)
        # No lookup-self here (Airflow makes none): the TTL is learnt only if the process lives long enough.
        self.logins += 1
        self._set_token(token, 0, False, ttl_known=False)
        return token

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        self._http = None
        self._direct = None
        self._token = None
        self._expires_at = None
        self._refresh_at = None


def session_for(settings: ClientSettings) -> Session:
    """The process's session for these settings (one login shared by every backend that has them).

    A forked child keeps its parent's sessions (token included) but not their sockets: see _after_fork."""
    key = settings.session_key()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = Session(settings)
        return session


def forget_session(session: Session) -> None:
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
