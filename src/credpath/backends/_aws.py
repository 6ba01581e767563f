"""Shared AWS plumbing for the Secrets Manager and SSM backends: session, clients, retries, errors.

boto3/botocore are imported on first use only, so ``import credpath`` (and constructing a backend) stays
free of them. One boto3 session and one client per service per backend instance; clients are thread-safe,
session creation is not, hence the lock.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from typing import Any

from credpath.errors import AccessDenied, BackendError, ConfigError, CredpathError

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

# botocore "standard" retry mode: exponential backoff with jitter on throttling, 5xx and transient
# network errors. 5 attempts keeps a throttled lookup under ~15 s worst case.
DEFAULT_CONFIG: dict[str, Any] = {
    "retries": {"mode": "standard", "total_max_attempts": 5},
    "connect_timeout": 5,
    "read_timeout": 15,
}

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
    }
)
ACCESS_DENIED_CODES = frozenset(
    {"AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "UnrecognizedClientException"}
)


class AwsSession:
    """Lazily built boto3 session and clients for one backend, with API-call accounting.

    ``calls`` counts API operations by name (one per client call, whatever the retries);
    ``requests`` counts HTTP requests actually sent (retries included). Both feed tests and benchmarks.
    """

    def __init__(
        self,
        owner: str,
        *,
        region_name: str | None = None,
        profile_name: str | None = None,
        role_arn: str | None = None,
        assume_role_kwargs: dict[str, Any] | None = None,
        endpoint_url: str | None = None,
        verify: bool | str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        config_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ConfigError(f"{owner}: aws_access_key_id and aws_secret_access_key must be given together")
        if assume_role_kwargs is not None and not isinstance(assume_role_kwargs, dict):
            raise ConfigError(f"{owner}: assume_role_kwargs must be an object")
        if config_kwargs is not None and not isinstance(config_kwargs, dict):
            raise ConfigError(f"{owner}: config_kwargs must be an object")
        if verify is not None and not isinstance(verify, bool | str):
            raise ConfigError(f"{owner}: verify must be true, false or a CA bundle path")
        self.owner = owner
        self.region_name = region_name
        self.profile_name = profile_name
        self.role_arn = role_arn
        self.assume_role_kwargs = dict(assume_role_kwargs or {})
        self.endpoint_url = endpoint_url
        self.verify = verify
        self._access_key = aws_access_key_id
        self._secret_key = aws_secret_access_key
        self._session_token = aws_session_token
        self.config_kwargs = dict(config_kwargs or {})
        self.calls: Counter[str] = Counter()
        self.requests = 0
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._caller_arn: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # keys and tokens stay out
        return f"<AwsSession {self.owner!r} region={self.region_name!r} endpoint={self.endpoint_url!r}>"

    # --- construction ------------------------------------------------------------------------------

    def _base_session(self) -> Any:
        import botocore.exceptions
        from botocore.session import Session

        try:
            session = Session(profile=self.profile_name)
            if self._access_key or self._secret_key or self._session_token:
                session.set_credentials(self._access_key, self._secret_key, self._session_token)
            if self.region_name is not None:
                session.set_config_variable("region", self.region_name)
            session.get_scoped_config()  # an unknown profile fails here, not on the first read
            return _ClientFactory(session)
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(
                f"{self.owner}: profile_name {self.profile_name!r} not found in the AWS config"
            ) from None

    def _assumed_session(self, base: Any) -> Any:
        """A session whose credentials come from STS AssumeRole and refresh before they expire."""
        from botocore.credentials import RefreshableCredentials
        from botocore.session import get_session

        sts = base.client("sts", config=self._config(), verify=self.verify)
        self._count(sts)
        params = {"RoleSessionName": "credpath", **self.assume_role_kwargs, "RoleArn": self.role_arn}

        def refresh() -> dict[str, str]:
            try:
                creds = sts.assume_role(**params)["Credentials"]
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
        # Refreshed lazily by botocore before expiry; no STS call until the first real request.
        botocore_session._credentials = RefreshableCredentials.create_from_metadata(
            metadata=refresh(), refresh_using=refresh, method="sts-assume-role"
        )
        if base.region_name is not None:
            botocore_session.set_config_variable("region", base.region_name)
        return _ClientFactory(botocore_session)

    def _config(self) -> Any:
        from botocore.config import Config

        merged = {**DEFAULT_CONFIG, **self.config_kwargs}
        try:
            return Config(**merged)
        except TypeError as exc:
            raise ConfigError(f"{self.owner}: config_kwargs: {exc}") from None

    def _count(self, client: Any) -> None:
        def on_call(model: Any, **_: Any) -> None:
            self.calls[model.name] += 1

        def on_send(**_: Any) -> None:
            self.requests += 1

        client.meta.events.register("before-call.*.*", on_call)
        client.meta.events.register("before-send.*.*", on_send)

    def client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is not None:
            return client
        import botocore.exceptions

        with self._lock:
            client = self._clients.get(service)
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
            try:
                client = self._session.client(service, **kwargs)
            except botocore.exceptions.NoRegionError:
                raise ConfigError(
                    f"{self.owner}: no AWS region; set region_name or AWS_DEFAULT_REGION"
                ) from None
            except ValueError as exc:  # e.g. a malformed endpoint_url
                raise ConfigError(f"{self.owner}: cannot build the {service} client: {exc}") from None
            self._count(client)
            self._clients[service] = client
            return client

    # --- errors ------------------------------------------------------------------------------------

    def caller_arn(self, message: str = "") -> str:
        """The caller identity's ARN: from the AWS error message when it has one, else one STS call."""
        found = _ARN_IN_MESSAGE.search(message or "")
        if found:
            return found.group(0)
        if self._caller_arn is None:
            try:
                self._caller_arn = self.client("sts").get_caller_identity()["Arn"]
            except Exception:  # best effort, only used in an error message
                return "unknown caller"
        return self._caller_arn

    def error(self, exc: BaseException, what: str) -> CredpathError:
        """Translate a botocore exception into a one-line credpath error naming ``what``, never a value."""
        import botocore.exceptions as bx

        where = f"{self.owner}: {what}"
        if isinstance(exc, CredpathError):  # already one line and safe (e.g. ConfigError: no region)
            return exc
        if isinstance(exc, bx.ClientError):
            code = client_error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            if code in ACCESS_DENIED_CODES or status == 403:
                message = str(exc.response.get("Error", {}).get("Message", ""))
                return AccessDenied(
                    f"{where}: access denied ({code}) for {self.caller_arn(message)}", backend=self.owner
                )
            if code in THROTTLING_CODES:
                return BackendError(
                    f"{where}: throttled ({code}) after {attempts + 1} attempt(s)", backend=self.owner
                )
            if status is not None and status >= 500:
                return BackendError(
                    f"{where}: server error {status} ({code}) after {attempts + 1} attempt(s)",
                    backend=self.owner,
                )
            return BackendError(f"{where}: {code} (HTTP {status})", backend=self.owner)
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return BackendError(
                f"{where}: no AWS credentials found ({type(exc).__name__})", backend=self.owner
            )
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ConnectionClosedError):
            return BackendError(
                f"{where}: cannot reach the AWS endpoint ({type(exc).__name__})", backend=self.owner
            )
        if isinstance(exc, bx.ReadTimeoutError):
            return BackendError(f"{where}: the AWS endpoint timed out", backend=self.owner)
        if isinstance(exc, bx.BotoCoreError):
            return BackendError(f"{where}: {type(exc).__name__}", backend=self.owner)
        return BackendError(f"{where}: {type(exc).__name__}", backend=self.owner)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def describe(self) -> str:
        parts = [f"region={self._session.region_name if self._session else self.region_name}"]
        if self.endpoint_url:
            parts.append(f"endpoint={self.endpoint_url}")
        if self.profile_name:
            parts.append(f"profile={self.profile_name}")
        if self.role_arn:
            parts.append(f"role={self.role_arn}")
        return ", ".join(parts)


def client_error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def client_error_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Message", ""))


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _ClientFactory:
    """boto3's Session surface that credpath uses, on botocore alone.

    boto3 adds nothing the Secrets Manager, SSM and STS clients need, but importing it also imports
    s3transfer: about 60 ms more of every CLI start (`python -X importtime`: boto3 237 ms, botocore.session
    177 ms), which is most of what separates `credpath connections get` from a 10x lead over Airflow's.
    """

    def __init__(self, session: Any) -> None:
        self._session = session

    @property
    def region_name(self) -> str | None:
        return self._session.get_config_variable("region")

    def client(self, service: str, **kwargs: Any) -> Any:
        return self._session.create_client(service, **kwargs)
