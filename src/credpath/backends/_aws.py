"""Shared AWS plumbing for the Secrets Manager and SSM backends: session, clients, retries, errors, and
``AwsBackend``, their common base (prefixes and naming, paginated calls, batch chunking, listing).

boto3/botocore are imported on first use only, so ``import credpath`` (and constructing a backend) stays
free of them. One boto3 session and one client per service per backend instance; clients are thread-safe,
session creation is not, hence the lock.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Unpack

from credpath._deadlines import Deadline, RetriesExhausted, RetryPolicy, call_with_retries, parse_retry_after
from credpath._settings import TIMEOUT, check_number
from credpath.backends._botocore_fast import ClientFactory, set_deferred_credentials, use_narrow_loader
from credpath.backends._naming import TEAM_SEP, KeyNaming, PrefixNamedBackend
from credpath.backends._per_process import PerProcess
from credpath.backends._status import Row, StatusTable
from credpath.errors import AccessDenied, BackendError, BackendTimeout, CredpathError, Throttled
from credpath.protocol import BackendOptions, BaseBackend, Kind, WriteConfirmation, multi_team_enabled

__all__ = [
    "STATUS_TABLE",
    "AwsBackend",
    "AwsOptions",
    "AwsSession",
    "classify",
    "client_error_code",
    "client_error_message",
    "quiet_botocore_bodies",
]


log = logging.getLogger("credpath.backends.aws")

# botocore logs whole request and response bodies at DEBUG ("Making request ... with params", "Response
# body"), i.e. every secret value read or written. Drop those records; other botocore logs stay.
_BODY_LOGGERS = ("botocore.endpoint", "botocore.parsers")


class _DropBodies(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def quiet_botocore_bodies() -> None:
    for name in _BODY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBodies) for f in logger.filters):
            logger.addFilter(_DropBodies())


quiet_botocore_bodies()

#: Seconds a whole lookup may take by default: connect, every read, every retry and every back-off wait.
DEFAULT_TIMEOUT = 10.0
#: Tries per call by default (botocore's own "standard" mode default), inside the deadline.
DEFAULT_ATTEMPTS = 3
# Per-attempt socket timeouts, capped by the deadline: a hung connection gets one more try on a new one.
DEFAULT_CONNECT_TIMEOUT = 3.0

_ARN_IN_MESSAGE = re.compile(r"arn:aws[a-z-]*:(?:iam|sts)::\d{12}:[\w+=,.@/:-]+")
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "RequestThrottled",
        "PriorRequestNotComplete",
    }
)
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "InternalFailure", "InternalError"})
ACCESS_DENIED_CODES = frozenset(
    {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "UnrecognizedClientException"}
)
#: An AWS answer (HTTP status, error code) -> credpath error; the first row that matches wins.
STATUS_TABLE = StatusTable(
    "AWS",
    rows=(
        Row(
            AccessDenied,
            "{what}: access denied ({code}) for {caller}",
            statuses=frozenset({403}),
            codes=ACCESS_DENIED_CODES,
        ),
        Row(
            Throttled,
            "{what}: throttled ({code_or_status}){tries}",
            statuses=frozenset({429}),
            codes=THROTTLING_CODES,
        ),
        Row(BackendError, "{what}: server error {status} ({code}){tries}", server_errors=True),
    ),
    default=Row(BackendError, "{what}: {code} (HTTP {status})"),
)
#: Airflow's ``assume_role_method`` values; credpath implements the first.
ASSUME_ROLE_METHODS = ("assume_role", "assume_role_with_saml", "assume_role_with_web_identity")


def _refused(exc: BaseException) -> bool:
    """True if ``exc`` (or what it wraps) is a refused TCP connection: nothing listens, so fail fast."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        stack += [current.__cause__, current.__context__]
        stack += [v for v in getattr(current, "kwargs", {}).values() if isinstance(v, BaseException)]
        stack += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
    return "connection refused" in str(exc).lower()


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None) or {}
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    return parse_retry_after(headers.get("retry-after"))


def classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retryable, Retry-After) for an exception from a botocore call."""
    import botocore.exceptions as bx

    if isinstance(exc, CredpathError):
        return False, None
    if isinstance(exc, bx.ClientError):
        code = client_error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in ACCESS_DENIED_CODES or status in (401, 403):
            return False, None
        if code in THROTTLING_CODES or code in TRANSIENT_CODES or status == 429 or status >= 500:
            return True, _retry_after(exc)
        return False, None
    if isinstance(exc, bx.EndpointConnectionError) and _refused(exc):
        return False, None  # nothing listens: a definite answer, retrying only delays the fall-through
    if isinstance(
        exc,
        bx.EndpointConnectionError
        | bx.ConnectTimeoutError
        | bx.ReadTimeoutError
        | bx.ConnectionClosedError
        | bx.ResponseStreamingError,
    ):
        return True, None
    return False, None


class AwsSession:
    """Lazily built botocore session and clients for one backend, with API-call accounting.

    ``calls`` counts API operations by name (one per client call, whatever the retries);
    ``requests`` counts HTTP requests actually sent (retries included). Both feed tests and benchmarks.

    botocore's own retries are switched off: :meth:`call` retries with full-jitter back-off inside one
    whole-call deadline (``timeout``), honours ``Retry-After`` only when it fits, and bounds every try against
    a server that trickles bytes. ``config_kwargs`` (Airflow's) still apply; their ``retries`` set the
    number of tries, their ``connect_timeout``/``read_timeout`` cap each try (never beyond the deadline).
    """

    def __init__(
        self,
        backend: BaseBackend,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        region_name: str | None = None,
        profile_name: str | None = None,
        role_arn: str | None = None,
        assume_role_method: str | None = None,
        assume_role_kwargs: dict[str, Any] | None = None,
        endpoint_url: str | None = None,
        verify: bool | str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        session_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        botocore_config: dict[str, Any] | None = None,
        service_config: dict[str, Any] | None = None,
        use_ssl: bool | None = None,
        api_version: str | None = None,
    ) -> None:
        self.backend = backend
        bad = backend.config_error
        for setting, value in (
            ("assume_role_kwargs", assume_role_kwargs),
            ("session_kwargs", session_kwargs),
            ("config_kwargs", config_kwargs),
            ("botocore_config", botocore_config),
            ("service_config", service_config),
        ):
            if value is not None and not isinstance(value, dict):
                raise bad(f"{setting} must be an object")
        check_number(timeout, TIMEOUT, "timeout", bad)
        if verify is not None and not isinstance(verify, bool | str):
            raise bad("verify must be true, false or a CA bundle path")
        if use_ssl is not None and not isinstance(use_ssl, bool):
            raise bad("use_ssl must be true or false")
        if api_version is not None and not isinstance(api_version, str):
            raise bad("api_version must be a string")
        if role_arn and (assume_role_method or "assume_role") not in ASSUME_ROLE_METHODS:
            raise bad(f"assume_role_method must be one of {', '.join(ASSUME_ROLE_METHODS)}")
        if role_arn and assume_role_method not in (None, "assume_role"):
            raise bad(f"assume_role_method {assume_role_method!r} is not supported yet; use 'assume_role'")
        # Airflow's order: explicit keys, then the deprecated session_kwargs.
        session_kwargs = session_kwargs or {}
        if not (aws_access_key_id and aws_secret_access_key):
            aws_access_key_id = aws_access_key_id or session_kwargs.get("aws_access_key_id")
            aws_secret_access_key = aws_secret_access_key or session_kwargs.get("aws_secret_access_key")
        aws_session_token = aws_session_token or session_kwargs.get("aws_session_token")
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise bad("aws_access_key_id and aws_secret_access_key must be given together")
        self.owner = backend.name
        self.timeout = float(timeout)
        self.region_name = region_name
        self.profile_name = profile_name
        self.role_arn = role_arn
        self.assume_role_kwargs = dict(assume_role_kwargs or {})
        self.endpoint_url = endpoint_url
        self.verify = verify
        self.use_ssl = use_ssl
        self.api_version = api_version
        self.service_config: dict[str, Any] = dict(service_config or {})
        self._access_key = aws_access_key_id
        self._secret_key = aws_secret_access_key
        self._session_token = aws_session_token
        # botocore_config (a dict of botocore Config kwargs) under config_kwargs: Airflow's name wins.
        self.config_kwargs = {**(botocore_config or {}), **(config_kwargs or {})}
        self.policy = RetryPolicy(attempts=self._attempts(self.config_kwargs.get("retries")))
        self.calls: Counter[str] = Counter()
        self.requests = 0
        self._session: Any = None
        # service -> client, of this process: a forked child makes its own clients (their connection pools
        # hold the parent's keep-alive sockets) from the same session (credentials are kept).
        self._clients: PerProcess[dict[str, Any]] = PerProcess(dict)
        self._caller_arn: str | None = None

    def _attempts(self, retries: Any) -> int:
        """Tries per call from botocore's ``retries`` dict (``total_max_attempts``, or ``max_attempts``
        retries after the first); botocore's ``mode`` is not used: credpath's back-off replaces it."""
        if retries is None:
            return DEFAULT_ATTEMPTS
        if not isinstance(retries, dict):
            raise self.backend.config_error("config_kwargs: retries must be an object")
        if "total_max_attempts" in retries:
            value, extra = retries["total_max_attempts"], 0
        elif "max_attempts" in retries:
            value, extra = retries["max_attempts"], 1
        else:
            return DEFAULT_ATTEMPTS
        if isinstance(value, bool) or not isinstance(value, int) or value + extra < 1:
            raise self.backend.config_error("config_kwargs: retries attempts must be a positive integer")
        return value + extra

    def __repr__(self) -> str:  # keys and tokens stay out
        return f"<AwsSession {self.owner!r} region={self.region_name!r} endpoint={self.endpoint_url!r}>"

    # --- construction ------------------------------------------------------------------------------

    def _base_session(self) -> Any:
        import botocore.exceptions
        from botocore.session import Session

        try:
            session = Session(profile=self.profile_name)
            use_narrow_loader(session)
            if self._access_key or self._secret_key or self._session_token:
                session.set_credentials(self._access_key, self._secret_key, self._session_token)
            if self.region_name is not None:
                session.set_config_variable("region", self.region_name)
            session.get_scoped_config()  # an unknown profile fails here, not on the first read
            return ClientFactory(session)
        except botocore.exceptions.ProfileNotFound:
            raise self.backend.config_error(
                f"profile_name {self.profile_name!r} not found in the AWS config"
            ) from None

    def _assumed_session(self, base: Any) -> Any:
        """A session whose credentials come from STS AssumeRole, fetched on the first request (inside its
        deadline, not at start-up) and refreshed before they expire."""
        from botocore.credentials import DeferredRefreshableCredentials
        from botocore.session import get_session

        sts_kwargs: dict[str, Any] = {"config": self._config(), "verify": self.verify}
        # Airflow's meaning of service_config: {"sts": {"endpoint_url": ...}} for the AssumeRole call.
        sts_endpoint = (self.service_config.get("sts") or {}).get("endpoint_url")
        if sts_endpoint:
            sts_kwargs["endpoint_url"] = sts_endpoint

        def sts_client() -> Any:
            client = base.client("sts", **sts_kwargs)
            self._count(client)
            return client

        # Of this process, as the store's clients are: a forked child refreshing the credentials it
        # inherited asks STS on connections of its own.
        sts: PerProcess[Any] = PerProcess(sts_client)
        sts.get()  # a bad STS setting fails here, not on the first read
        params = {"RoleSessionName": "credpath", **self.assume_role_kwargs, "RoleArn": self.role_arn}

        def refresh() -> dict[str, str]:
            try:
                creds = sts.get().assume_role(**params)["Credentials"]
            except Exception as exc:  # any failure here is "cannot assume the role"
                raise self.error(exc, f"assume role {self.role_arn}") from None
            log.debug("%s: assumed role %s", self.owner, self.role_arn)
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        botocore_session = get_session()
        use_narrow_loader(botocore_session)
        set_deferred_credentials(
            botocore_session, DeferredRefreshableCredentials(refresh_using=refresh, method="sts-assume-role")
        )
        if base.region_name is not None:
            botocore_session.set_config_variable("region", base.region_name)
        return ClientFactory(botocore_session)

    def _config(self) -> Any:
        from botocore import UNSIGNED
        from botocore.config import Config

        merged = dict(self.config_kwargs)
        if merged.get("signature_version") == "unsigned":  # as Airflow's connection wrapper does
            merged["signature_version"] = UNSIGNED
        # Each try's socket timeouts never outlast the deadline; retries are credpath's (see call()).
        read = merged.get("read_timeout")
        connect = merged.get("connect_timeout")
        merged["read_timeout"] = min(float(read), self.timeout) if read is not None else self.timeout / 2
        merged["connect_timeout"] = min(
            float(connect) if connect is not None else DEFAULT_CONNECT_TIMEOUT, self.timeout
        )
        merged["retries"] = {"total_max_attempts": 1, "mode": "standard"}
        try:
            return Config(**merged)
        except (TypeError, ValueError) as exc:
            raise self.backend.config_error(f"config_kwargs: {exc}") from None

    def _count(self, client: Any) -> None:
        def on_call(model: Any, **_: Any) -> None:
            self.calls[model.name] += 1

        def on_send(**_: Any) -> None:
            self.requests += 1

        client.meta.events.register("before-call.*.*", on_call)
        client.meta.events.register("before-send.*.*", on_send)

    def client(self, service: str) -> Any:
        clients = self._clients.get()
        client = clients.get(service)
        if client is not None:
            return client
        import botocore.exceptions

        with self._clients.lock:
            client = clients.get(service)
            if client is not None:
                return client
            if self._session is None:
                session = self._base_session()
                if self.role_arn:
                    session = self._assumed_session(session)
                self._session = session
            kwargs: dict[str, Any] = {"config": self._config()}
            # endpoint_url is the store's (moto, LocalStack, a VPC endpoint); STS keeps botocore's own
            # resolution (AWS_ENDPOINT_URL_STS / AWS_ENDPOINT_URL / the regional endpoint).
            if self.endpoint_url and service != "sts":
                kwargs["endpoint_url"] = self.endpoint_url
            if self.verify is not None:
                kwargs["verify"] = self.verify
            if self.use_ssl is not None:
                kwargs["use_ssl"] = self.use_ssl
            if self.api_version is not None and service != "sts":
                kwargs["api_version"] = self.api_version
            try:
                client = self._session.client(service, **kwargs)
            except botocore.exceptions.NoRegionError:
                raise self.backend.config_error(
                    "no AWS region; set region_name or AWS_DEFAULT_REGION"
                ) from None
            except (ValueError, botocore.exceptions.UnknownServiceError) as exc:  # e.g. a bad endpoint_url
                raise self.backend.config_error(
                    f"cannot build the {service} client ({type(exc).__name__})"
                ) from None
            except botocore.exceptions.DataNotFoundError:
                raise self.backend.config_error(
                    f"api_version {self.api_version!r} is not a known {service} API version"
                ) from None
            self._count(client)
            clients[service] = client
            return client

    # --- calls -------------------------------------------------------------------------------------

    def call(
        self,
        service: str,
        operation: str,
        params: dict[str, Any],
        what: str,
        deadline: Deadline | None = None,
    ) -> Any:
        """``client.<operation>(**params)`` within ``deadline`` (a new one of ``timeout`` s if None).

        Throttling, 429, 5xx and transient network errors are retried with back-off while time is left.
        Permanent botocore errors (not found, access denied, a bad request) are raised as they are, for the
        caller to map; exhausted retries and timeouts are raised as one-line credpath errors naming ``what``.
        """
        client = self.client(service)
        method = getattr(client, operation)
        deadline = deadline or Deadline(self.timeout)
        api = _api_name(operation)

        def on_timeout(attempts: int) -> BaseException:
            tries = f" ({attempts} attempt(s))" if attempts > 1 else ""
            return self.backend.error(
                f"{api} of {what} timed out after {deadline.seconds:g} s{tries}", BackendTimeout
            )

        try:
            return call_with_retries(
                lambda _: method(**params), deadline, self.policy, classify=classify, on_timeout=on_timeout
            )
        except RetriesExhausted as exc:
            raise self.error(exc.error, what, attempts=exc.attempts, retry_after=exc.retry_after) from None

    # --- errors ------------------------------------------------------------------------------------

    def caller_arn(self, message: str = "") -> str:
        """The caller identity's ARN: from the AWS error message when it has one, else one STS call."""
        found = _ARN_IN_MESSAGE.search(message or "")
        if found:
            return found.group(0)
        if self._caller_arn is None:
            try:
                self._caller_arn = self.call("sts", "get_caller_identity", {}, "the caller identity")["Arn"]
            except Exception:  # best effort, only used in an error message
                return "unknown caller"
        return self._caller_arn

    def error(
        self,
        exc: BaseException,
        what: str,
        *,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> CredpathError:
        """Translate a botocore exception into a one-line credpath error naming ``what``, never a value."""
        import botocore.exceptions as bx

        fail = self.backend.error
        tries = f" after {attempts} attempt(s)"
        if retry_after is not None:
            tries += f" (Retry-After {retry_after:g} s is beyond the {self.timeout:g} s deadline)"
        if isinstance(exc, CredpathError):  # already one line and safe (e.g. ConfigError: no region)
            return exc
        if isinstance(exc, bx.ClientError):
            code = client_error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            fields = {
                "what": what,
                "code": code,
                "status": status,
                "code_or_status": code or status,
                "tries": tries,
                "caller": lambda: self.caller_arn(client_error_message(exc)),
            }
            return STATUS_TABLE.error(status, code, fields, fail)
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return fail(f"{what}: no AWS credentials found ({type(exc).__name__})")
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError):
            return fail(f"{what}: cannot reach the AWS endpoint ({type(exc).__name__}){tries}")
        if isinstance(exc, bx.ReadTimeoutError):
            return fail(f"{what}: the AWS endpoint did not answer in time{tries}")
        return fail(f"{what}: {type(exc).__name__}")

    def close(self) -> None:
        for client in (self._clients.clear() or {}).values():
            client.close()

    def describe(self) -> str:
        parts = [f"region={self._session.region_name if self._session else self.region_name}"]
        if self.endpoint_url:
            parts.append(f"endpoint={self.endpoint_url}")
        if self.profile_name:
            parts.append(f"profile={self.profile_name}")
        if self.role_arn:
            parts.append(f"role={self.role_arn}")
        return ", ".join(parts)


def _api_name(operation: str) -> str:
    """``get_secret_value`` -> ``GetSecretValue`` (the name AWS documents and logs)."""
    return "".join(part.capitalize() for part in operation.split("_"))


def client_error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def client_error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", ""))


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class AwsOptions(BackendOptions, total=False):
    """The AWS settings both stores accept, besides the common options.

    Airflow's backends pop ``use_ssl`` and ``api_version`` for the client and hand every other kwarg to the
    AWS hook as connection extras: these are the extras that hook reads, with its meaning. ``timeout`` is
    credpath's whole-call deadline (Vault's name), ``botocore_config`` a dict of botocore ``Config`` kwargs
    under ``config_kwargs``.
    """

    timeout: float
    region_name: str | None
    profile_name: str | None
    role_arn: str | None
    assume_role_method: str | None
    assume_role_kwargs: dict[str, Any] | None
    endpoint_url: str | None
    verify: bool | str | None
    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_session_token: str | None
    session_kwargs: dict[str, Any] | None
    config_kwargs: dict[str, Any] | None
    botocore_config: dict[str, Any] | None
    service_config: dict[str, Any] | None
    use_ssl: bool | None
    api_version: str | None


_SESSION_SETTINGS = frozenset(AwsOptions.__annotations__) - frozenset(BackendOptions.__annotations__)


class AwsBackend(PrefixNamedBackend):
    """What the Secrets Manager and SSM backends share: prefixes, name mapping, pagination, batches, listing.

    Names are ``<prefix><sep><key>`` (Airflow's ``build_path``); an empty prefix means the bare key, a null
    prefix switches that kind off. A lookup for a team tries ``<prefix><sep><team>--<key>`` first, then the
    team-agnostic name (``team_secret_name``; the 3.3.2-era provider's rule); in multi-team mode an id
    containing ``--`` is never looked up. All of it is the backend's :class:`KeyNaming`. Subclasses build
    ``self.aws`` after their own kwarg checks (so those errors come before the session's) and supply the
    store's calls: ``_get_name``, ``_batch_get``, ``_prefetch``, ``_list_keys``, ``_list_request``,
    ``_write``; every call goes through ``_call`` (deadline, retries).
    """

    #: botocore service name of the store's client.
    service: ClassVar[str] = ""
    #: What the store calls an entry, for messages ("secret", "parameter").
    noun: ClassVar[str] = ""
    #: Most names one batch-read call accepts (the AWS limit).
    batch_size: ClassVar[int] = 1
    #: The key of the entries in a listing response.
    list_results: ClassVar[str] = ""

    aws: AwsSession  # set by the subclass's __init__

    def __init__(
        self,
        connections_prefix: str | None,
        variables_prefix: str | None,
        config_prefix: str | None,
        *,
        sep: str,
        absolute: bool = False,
        team_under_empty_prefix: bool = False,
        **options: Unpack[AwsOptions],
    ) -> None:
        session = {k: options.pop(k) for k in list(options) if k in _SESSION_SETTINGS}  # type: ignore[misc]
        common: BackendOptions = options  # what is left after the session settings are popped
        super().__init__(**common)
        self._session_settings: dict[str, Any] = session
        if not isinstance(sep, str) or not sep:
            raise self.config_error("sep must be a non-empty string")
        # Airflow strips a trailing separator; "" stays "" (bare ids), None switches the kind off.
        self.naming = KeyNaming.from_settings(
            connections_prefix,
            variables_prefix,
            config_prefix,
            sep=sep,
            strip_sep=True,
            fail=self.config_error,
            absolute=absolute,
            team_under_empty_prefix=team_under_empty_prefix,
        )

    def _open_session(self) -> AwsSession:
        # Called by each store after its own checks, so their errors keep coming before the session's.
        return AwsSession(self, **self._session_settings)

    def prepare(self) -> None:
        """Import botocore and build the session and the store's client; no request is sent."""
        _ = self.client

    @property
    def timeout(self) -> float:
        return self.aws.timeout

    @property
    def client(self) -> Any:
        return self.aws.client(self.service)

    # --- naming ------------------------------------------------------------------------------------

    def _batch_lookup(self, kind: Kind, keys: list[str], team_name: str | None) -> dict[str, str]:
        """{key: raw} for the hits among ``keys``; a team-scoped value wins over the team-agnostic one."""
        wanted = {key: self._lookup_names(kind, key, team_name) for key in dict.fromkeys(keys)}
        names = {name: name for tried in wanted.values() for name in tried}
        found = self._batch_get(names)  # keyed by name here
        out: dict[str, str] = {}
        for key, tried in wanted.items():
            for name in tried:
                if name in found:
                    out[key] = found[name]
                    break
        return out

    # --- calls -------------------------------------------------------------------------------------

    def _pages(self, operation: str, params: dict[str, Any], what: str) -> Iterator[dict[str, Any]]:
        """Each response of the client's ``operation``, following NextToken.

        A failure is a one-line credpath error naming ``what``.
        """
        params = dict(params)
        while True:
            try:
                response = self._call(operation, params, what)
            except Exception as exc:  # translated, never re-raised raw
                raise self.aws.error(exc, what) from None
            yield response
            token = response.get("NextToken")
            if not token:
                return
            params["NextToken"] = token

    def _batch_responses(
        self, names: Iterable[str], operation: str, names_param: str, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """The responses of a batch read of ``names``, at most ``batch_size`` names a call."""
        for chunk in chunks(list(names), self.batch_size):
            what = f"batch read of {len(chunk)} {self.noun}(s) from {chunk[0]!r}"
            yield from self._pages(operation, {names_param: chunk, **params}, what)

    def _listed(self, kind: Kind, **params: Any) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(name, key, entry) for each entry under the kind's prefix whose key the lookup pattern wants.

        ``params`` are added to the store's listing request (``_list_request``).
        """
        if not self.prefixes[kind]:
            # Null: kind is off. Empty: everything in the account would match; refuse to list it all.
            return
        head = self.naming.join(self.prefixes[kind] or "", "")
        operation, request, what = self._list_request(head)
        for response in self._pages(operation, {**request, **params}, what):
            for entry in response.get(self.list_results, []):
                name = entry.get("Name", "")
                # The store's prefix filter is not a strict prefix match everywhere: check again.
                if not name.startswith(head):
                    continue
                key = name[len(head) :]
                if key and self.wants(kind, key):
                    yield name, key, entry

    def _call(
        self, operation: str, params: dict[str, Any], what: str, deadline: Deadline | None = None
    ) -> Any:
        """One store API call within a whole-call deadline, retried with back-off (``AwsSession.call``)."""
        return self.aws.call(self.service, operation, params, what, deadline)

    # --- store-specific ----------------------------------------------------------------------------

    def _get_name(
        self, kind: Kind, key: str, name: str, deadline: Deadline
    ) -> str | None:  # pragma: no cover
        """The raw value of the store entry ``name`` or None: one read, within ``deadline``."""
        raise NotImplementedError

    def _get(self, kind: Kind, key: str, team_name: str | None = None) -> str | None:
        return self._first_found(
            kind, key, team_name, lambda name, dl: self._get_name(kind, key, name, dl), self.timeout
        )

    def _batch_get(self, names: dict[str, str]) -> dict[str, str]:  # pragma: no cover - abstract
        """{key: raw value} for the hits among ``names`` ({store name: key})."""
        raise NotImplementedError

    def _prefetch(self, kind: Kind) -> dict[str, str]:  # pragma: no cover - abstract
        """{key: raw value} for everything under the kind's prefix."""
        raise NotImplementedError

    def _list_keys(self, kind: Kind) -> Iterable[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _list_request(self, head: str) -> tuple[str, dict[str, Any], str]:  # pragma: no cover - abstract
        """(client operation, params, what for errors) listing the names that start with ``head``."""
        raise NotImplementedError

    def _write(
        self, kind: Kind, key: str, value: str, *, overwrite: bool
    ) -> WriteConfirmation | None:  # pragma: no cover
        """Write one value; the store's confirmation of it when the store answers one."""
        raise NotImplementedError

    def _connection_value(self, conn_id: str, raw: str) -> str:
        """The connection value as read, or as the store's format needs it rewritten."""
        return raw

    # --- reads -------------------------------------------------------------------------------------

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        raw = self._get("connection", conn_id, team_name)
        return None if raw is None else self._connection_value(conn_id, raw)

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        raw = self.get_conn_value(conn_id, team_name=team_name)
        return None if raw is None else self.deserialize_connection(conn_id, raw)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return self._get("variable", key, team_name)

    def get_config(self, key: str) -> str | None:
        return self._get("config", key)

    def get_conn_values(self, ids: list[str], team_name: str | None = None) -> dict[str, str]:
        found = self._batch_lookup("connection", list(ids), team_name)
        return {key: self._connection_value(key, raw) for key, raw in found.items()}

    def get_variables(self, keys: list[str], team_name: str | None = None) -> dict[str, str]:
        return self._batch_lookup("variable", list(keys), team_name)

    def _scoped(self, found: dict[str, str], team_name: str | None) -> dict[str, str]:
        """What a prefix listing holds for a caller of ``team_name``: in multi-team mode (or for a team)
        ids with the team separator are not ids; the team's own entries win over team-agnostic ones."""
        if not team_name and not multi_team_enabled():
            return found
        out = {key: raw for key, raw in found.items() if TEAM_SEP not in key}
        if team_name:
            head = f"{team_name}{TEAM_SEP}"
            for key, raw in found.items():
                rest = key[len(head) :]
                if key.startswith(head) and rest and TEAM_SEP not in rest:
                    out[rest] = raw
        return out

    def prefetch_connections(self, team_name: str | None = None) -> dict[str, str]:
        found = self._scoped(self._prefetch("connection"), team_name)
        return {key: self._connection_value(key, raw) for key, raw in found.items()}

    def prefetch_variables(self, team_name: str | None = None) -> dict[str, str]:
        return self._scoped(self._prefetch("variable"), team_name)

    def list_connections(self) -> list[str]:
        return sorted(self._list_keys("connection"))

    def list_variables(self) -> list[str]:
        return sorted(self._list_keys("variable"))

    # --- writes and misc ---------------------------------------------------------------------------

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> WriteConfirmation | None:
        if not isinstance(value, str):
            raise self.config_error(f"variable {key!r}: value must be a string, got {type(value).__name__}")
        return self._write("variable", key, value, overwrite=overwrite)

    def describe(self) -> str:
        return f"{self.alias} ({self.aws.describe()})"

    def close(self) -> None:
        self.aws.close()
