"""Shared AWS plumbing for the Secrets Manager and SSM backends: session, clients, retries, errors, and
``AwsBackend``, their common base (prefixes and naming, paginated calls, batch chunking, listing).

boto3/botocore are imported on first use only, so ``import credpath`` (and constructing a backend) stays
free of them. One boto3 session and one client per service per backend instance; clients are thread-safe,
session creation is not, hence the lock.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Unpack

from credpath.errors import AccessDenied, BackendError, ConfigError, CredpathError
from credpath.protocol import BackendOptions, BaseBackend, Kind

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
            _use_narrow_loader(session)
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
        _use_narrow_loader(botocore_session)
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


# The Airflow kwarg that sets each kind's prefix, for messages.
PREFIX_SETTINGS: dict[Kind, str] = {
    "connection": "connections_prefix",
    "variable": "variables_prefix",
    "config": "config_prefix",
}


class AwsOptions(BackendOptions, total=False):
    """The AWS session settings both stores accept (Airflow's names), besides the common options."""

    region_name: str | None
    profile_name: str | None
    role_arn: str | None
    assume_role_kwargs: dict[str, Any] | None
    endpoint_url: str | None
    verify: bool | str | None
    aws_access_key_id: str | None
    aws_secret_access_key: str | None
    aws_session_token: str | None
    config_kwargs: dict[str, Any] | None


_SESSION_SETTINGS = frozenset(AwsOptions.__annotations__) - frozenset(BackendOptions.__annotations__)


class AwsBackend(BaseBackend):
    """What the Secrets Manager and SSM backends share: prefixes, name mapping, pagination, batches, listing.

    Names are ``<prefix><sep><key>`` (Airflow's ``build_path``); an empty prefix means the bare key, a null
    prefix switches that kind off. Subclasses build ``self.aws`` after their own kwarg checks (so those
    errors come before the session's) and supply the store's calls: ``_get``, ``_batch_get``, ``_prefetch``,
    ``_list_keys``, ``_list_request``, ``_write``.
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
        **options: Unpack[AwsOptions],
    ) -> None:
        session = {k: options.pop(k) for k in list(options) if k in _SESSION_SETTINGS}  # type: ignore[misc]
        super().__init__(**options)
        self._session_settings: dict[str, Any] = session
        if not isinstance(sep, str) or not sep:
            raise ConfigError("sep must be a non-empty string")
        given: dict[Kind, str | None] = {
            "connection": connections_prefix,
            "variable": variables_prefix,
            "config": config_prefix,
        }
        for kind, prefix in given.items():
            if prefix is not None and not isinstance(prefix, str):
                raise ConfigError(
                    f"{PREFIX_SETTINGS[kind]} must be a string or null, got {type(prefix).__name__}"
                )
        self.sep = sep
        # Airflow strips a trailing separator; "" stays "" (bare ids), None switches the kind off.
        self.prefixes: dict[Kind, str | None] = {
            kind: prefix.rstrip(sep) if prefix else prefix for kind, prefix in given.items()
        }

    def _open_session(self) -> AwsSession:
        # Called by each store after its own checks, so their errors keep coming before the session's.
        return AwsSession(self.alias, **self._session_settings)

    @property
    def client(self) -> Any:
        return self.aws.client(self.service)

    @property
    def connections_prefix(self) -> str | None:
        return self.prefixes["connection"]

    @property
    def variables_prefix(self) -> str | None:
        return self.prefixes["variable"]

    @property
    def config_prefix(self) -> str | None:
        return self.prefixes["config"]

    # --- naming ------------------------------------------------------------------------------------

    def _join(self, prefix: str, key: str) -> str:
        """Airflow's ``build_path``: ``<prefix><sep><key>``, the bare key under an empty prefix."""
        return f"{prefix}{self.sep}{key}" if prefix else key

    def _can_exist(self, name: str) -> bool:
        """False for a name the store cannot hold: a lookup of it is a miss without a call."""
        return True

    def name_of(self, kind: Kind, key: str) -> str | None:
        """The store's name for ``key``, or None when that kind is switched off or the pattern skips it."""
        prefix = self.prefixes[kind]
        if prefix is None or not self.wants(kind, key):
            return None
        return self._join(prefix, key)

    def _names(self, kind: Kind, keys: list[str]) -> dict[str, str]:
        """{store name: key} for the keys this backend would look up, each once."""
        names: dict[str, str] = {}
        for key in dict.fromkeys(keys):
            name = self.name_of(kind, key)
            if name is not None and self._can_exist(name):
                names[name] = key
        return names

    def _target(self, kind: Kind, key: str) -> str:
        """The name a write or delete of ``key`` goes to; a switched-off kind is a ConfigError."""
        prefix = self.prefixes[kind]
        if prefix is None:
            raise ConfigError(
                f"{self.name}: {PREFIX_SETTINGS[kind]} is null, so {kind}s are switched off in this backend"
            )
        return self._join(prefix, key)

    # --- calls -------------------------------------------------------------------------------------

    def _pages(self, operation: str, params: dict[str, Any], what: str) -> Iterator[dict[str, Any]]:
        """Each response of the client's ``operation``, following NextToken.

        A failure is a one-line credpath error naming ``what``.
        """
        params = dict(params)
        while True:
            try:
                response = getattr(self.client, operation)(**params)
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
        prefix = self.prefixes[kind]
        if not prefix:
            # Null: kind is off. Empty: everything in the account would match; refuse to list it all.
            return
        head = self._join(prefix, "")
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

    # --- store-specific ----------------------------------------------------------------------------

    def _get(self, kind: Kind, key: str) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

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

    def _write(self, kind: Kind, key: str, value: str, *, overwrite: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _connection_value(self, conn_id: str, raw: str) -> str:
        """The connection value as read, or as the store's format needs it rewritten."""
        return raw

    # --- reads -------------------------------------------------------------------------------------

    def get_conn_value(self, conn_id: str) -> str | None:
        raw = self._get("connection", conn_id)
        return None if raw is None else self._connection_value(conn_id, raw)

    def get_variable(self, key: str) -> str | None:
        return self._get("variable", key)

    def get_config(self, key: str) -> str | None:
        return self._get("config", key)

    def get_conn_values(self, ids: list[str]) -> dict[str, str]:
        found = self._batch_get(self._names("connection", list(ids)))
        return {key: self._connection_value(key, raw) for key, raw in found.items()}

    def get_variables(self, keys: list[str]) -> dict[str, str]:
        return self._batch_get(self._names("variable", list(keys)))

    def prefetch_connections(self) -> dict[str, str]:
        found = self._prefetch("connection")
        return {key: self._connection_value(key, raw) for key, raw in found.items()}

    def prefetch_variables(self) -> dict[str, str]:
        return self._prefetch("variable")

    def list_connections(self) -> list[str]:
        return sorted(self._list_keys("connection"))

    def list_variables(self) -> list[str]:
        return sorted(self._list_keys("variable"))

    # --- writes and misc ---------------------------------------------------------------------------

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"variable {key!r}: value must be a string, got {type(value).__name__}")
        self._write("variable", key, value, overwrite=overwrite)

    def describe(self) -> str:
        return f"{self.alias} ({self.aws.describe()})"

    def close(self) -> None:
        self.aws.close()


SERVICES = frozenset({"secretsmanager", "ssm", "sts"})


class _KnownServices:
    """What botocore's loader reports as available: credpath's services without listing any folder.

    botocore only asks ``name in services`` before loading a model; any other name (a credential
    provider's ``sso``, say) and iteration fall back to botocore's full listing.
    """

    def __init__(self, full_listing: Any) -> None:
        self._full_listing = full_listing

    def __contains__(self, name: object) -> bool:
        return name in SERVICES or name in self._full_listing()

    def __iter__(self) -> Iterator[str]:
        return iter(self._full_listing())


def _use_narrow_loader(session: Any) -> None:
    """Give ``session`` a data loader that finds credpath's services without listing them all.

    botocore's own loader checks a service name against every service it ships: one ``listdir`` per
    folder, 882 calls and 49 ms of each process's first client (cProfile; client creation 104 -> 27 ms).
    The CLI pays that on every run. Search paths (``AWS_DATA_PATH``, ``~/.aws/models``) stay botocore's.
    """
    import os

    from botocore.loaders import Loader

    class NarrowLoader(Loader):  # type: ignore[misc]
        def list_available_services(self, type_name: str) -> Any:
            return _KnownServices(lambda: Loader.list_available_services(self, type_name))

    data_path = session.get_config_variable("data_path")
    paths = (
        [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
        if data_path
        else None
    )
    session.register_component("data_loader", NarrowLoader(extra_search_paths=paths))
