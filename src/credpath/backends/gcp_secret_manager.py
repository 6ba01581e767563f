"""GCP Secret Manager backend (Airflow's ``CloudSecretManagerBackend`` kwargs) on google-cloud-secret-manager.

Secret id = ``<prefix><sep><id>`` (``airflow-connections-my_db``); the payload of version ``version``
(default ``latest``) is the raw value. A prefix set to ``None`` switches that kind of lookup off.

Kwargs (Airflow's): ``connections_prefix``, ``variables_prefix``, ``config_prefix``, ``sep``,
``project_id``, ``gcp_key_path``, ``gcp_keyfile_dict``, ``gcp_credential_config_file``, ``gcp_scopes``,
``impersonation_chain``;
credpath's: the three ``*_lookup_pattern``, ``connection_format``, ``version`` (pin a version number),
``timeout`` (seconds a whole lookup may take: connect, reads, retries with back-off and any
``Retry-After`` wait that fits; default 10), and for tests/embedding ``credentials``
(a ``google.auth`` credentials object; in a config file the string ``"anonymous"`` for emulators, or the
dotted path of a credentials class built with no arguments), ``transport`` (``"grpc"`` default,
``"rest"``), ``client_options``
(dict or ``ClientOptions``, e.g. ``{"api_endpoint": "http://127.0.0.1:8080"}``).

Names are always ``<prefix><sep><id>``, as the google provider's ``build_path`` glues them: an empty prefix
gives ``-<id>`` (with the default ``sep``). Multi-team (Airflow 3.2+): a lookup for a team tries
``<prefix><sep><team>--<id>`` first, then the team-agnostic name; in multi-team mode an id containing
``--`` is refused (not looked up) for connections and variables, as the provider does.

Faults: the client's own retries (429/503 for up to 60 s) are off; credpath retries 429, 5xx and transient
network errors with full-jitter back-off inside ``timeout``, and bounds every try (a server trickling one
byte at a time cannot stretch it). Auth failures are not retried; a refused connection fails at once.

Differences from Airflow, on purpose: one client per backend instance (Airflow builds one per access);
permission denied raises :class:`AccessDenied` (Airflow returns "not found"); a disabled or destroyed
version raises :class:`BackendError` naming the secret and the state; payload CRC32C is verified.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, ClassVar, Unpack

from credpath._deadlines import (
    Deadline,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
    unwrap_retries,
)
from credpath._lookup.trace import note_version
from credpath._settings import TIMEOUT, check_number
from credpath.backends._naming import KeyNaming
from credpath.backends._per_process import PerProcess
from credpath.backends._prefixed import PrefixedSecretsBackend
from credpath.backends._status import Row, StatusTable
from credpath.errors import AccessDenied, BackendError, BackendTimeout, ConfigError, CredpathError
from credpath.protocol import (
    PREFIX_SETTINGS,
    BackendOptions,
    Capability,
    Kind,
    PinnedReads,
    Serialization,
    pinned_version,
)

__all__ = ["STATUS_TABLE", "SecretManagerBackend", "crc32c"]


log = logging.getLogger(__name__)

_PREFIX_RE = re.compile(r"^[a-zA-Z0-9-_]*$")
_SECRET_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_STATE_RE = re.compile(r"\b(DISABLED|DESTROYED)\b")
_DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: A Secret Manager answer (its HTTP status; a 400's version state as the code) -> credpath error.
STATUS_TABLE = StatusTable(
    "Google Secret Manager",
    rows=(
        Row(AccessDenied, "{where}: permission denied ({code})", statuses=frozenset({401, 403})),
        Row(
            BackendError,
            "{where}: version {version} is {state} (Secret Manager does not fall back to an older version; "
            "enable it or add a new version)",
            codes=frozenset({"DISABLED", "DESTROYED"}),
        ),
    ),
    default=Row(BackendError, "{where}: {name} ({status}){tries}"),
)


def _refused(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ConnectionRefusedError):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retryable, Retry-After) for an exception from a Secret Manager call."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as aexc

    if isinstance(exc, CredpathError):
        return False, None
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.code or 0
        if isinstance(exc, gexc.ResourceExhausted | gexc.ServiceUnavailable | gexc.DeadlineExceeded) or (
            code in _RETRYABLE_STATUS
        ):
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            return True, parse_retry_after(headers.get("Retry-After") if hasattr(headers, "get") else None)
        return False, None
    if isinstance(exc, aexc.TransportError):  # the token endpoint could not be reached
        return not _refused(exc), None
    if isinstance(exc, aexc.GoogleAuthError):
        return False, None
    try:
        import requests
    except ImportError:  # gRPC transport only: its failures arrive as GoogleAPICallError
        return False, None
    if isinstance(exc, requests.exceptions.Timeout):
        return True, None
    if isinstance(exc, requests.exceptions.ConnectionError):
        return not _refused(exc), None
    return False, None


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data``; pure Python because google-crc32c is an optional wheel."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _credentials_from_name(name: str) -> Any:
    """``"anonymous"`` or a dotted class path, so credentials can be chosen from a config file."""
    if name == "anonymous":
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    from credpath.registry import load_class

    return load_class(name, setting="credentials")()


class SecretManagerBackend(PinnedReads, PrefixedSecretsBackend):
    alias: ClassVar[str] = "gcp-secret-manager"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"write", "list", "versions"})
    version_form: ClassVar[str] = "a version number (1, 2, ...)"
    store_name: ClassVar[str] = "GCP Secret Manager"
    requires: ClassVar[tuple[str, ...]] = ("google.cloud.secretmanager", "google.auth")
    extra: ClassVar[str | None] = "gcp"
    name_noun: ClassVar[str] = "secret id"
    name_re: ClassVar[re.Pattern[str]] = _SECRET_ID_RE
    name_rules: ClassVar[str] = "letters, digits, '-', '_'; at most 255"

    def __init__(
        self,
        connections_prefix: str | None = "airflow-connections",
        variables_prefix: str | None = "airflow-variables",
        config_prefix: str | None = "airflow-config",
        gcp_keyfile_dict: dict[str, Any] | str | None = None,
        gcp_key_path: str | None = None,
        gcp_credential_config_file: dict[str, Any] | str | None = None,
        gcp_scopes: str | list[str] | None = None,
        project_id: str | None = None,
        sep: str = "-",
        impersonation_chain: str | list[str] | None = None,
        *,
        version: str | int = "latest",
        timeout: float = DEFAULT_TIMEOUT,
        credentials: Any = None,
        transport: str | None = None,
        client_options: Any = None,
        **options: Unpack[BackendOptions],
    ) -> None:
        super().__init__(**options)
        if not isinstance(sep, str):
            raise self.config_error("sep must be a string")
        # The google provider uses BaseSecretsBackend.build_path as is: prefix, sep and id always joined
        # (an empty prefix gives "-<id>"), the prefix kept as given; its get_config neither scopes by team
        # nor refuses team-separator ids.
        self.naming = KeyNaming.from_settings(
            connections_prefix,
            variables_prefix,
            config_prefix,
            sep=sep,
            strip_sep=False,
            fail=self.config_error,
            glue_empty_prefix=True,
            refused_kinds=frozenset({"connection", "variable"}),
        )
        for kind, prefix in self.naming.prefixes.items():
            if prefix is not None and not _PREFIX_RE.match(prefix + sep):
                raise self.config_error(
                    f"{PREFIX_SETTINGS[kind]} and sep must match ^[a-zA-Z0-9-_]*$ "
                    "(Secret Manager ids allow letters, digits, '-' and '_')"
                )
        version = str(version)
        if version != "latest" and not (version.isdigit() and int(version) > 0):
            raise self.config_error("version must be 'latest' or a positive version number")
        self.version = version
        self.timeout = check_number(timeout, TIMEOUT, "timeout", self.config_error)
        self.policy = RetryPolicy(attempts=DEFAULT_ATTEMPTS)
        if transport not in (None, "grpc", "rest"):
            raise self.config_error("transport must be 'grpc' or 'rest'")
        self.transport = transport
        self.client_options = client_options
        self.project_id = project_id
        self.gcp_keyfile_dict = gcp_keyfile_dict
        self.gcp_key_path = gcp_key_path
        self.gcp_credential_config_file = gcp_credential_config_file
        if isinstance(gcp_scopes, str):
            gcp_scopes = [s.strip() for s in gcp_scopes.split(",") if s.strip()]
        self.gcp_scopes: list[str] = list(gcp_scopes or _DEFAULT_SCOPES)
        if isinstance(impersonation_chain, str):
            impersonation_chain = [impersonation_chain]
        self.impersonation_chain: list[str] = list(impersonation_chain or [])
        self._credentials = credentials
        self._clients: PerProcess[Any] = PerProcess(self._new_client)

    # --- client ------------------------------------------------------------------------------------

    def _build_credentials(self) -> tuple[Any, str | None]:
        import google.auth
        from google.oauth2 import service_account

        project: str | None = None
        if isinstance(self._credentials, str):
            credentials = _credentials_from_name(self._credentials)
        elif self._credentials is not None:
            credentials = self._credentials
        elif self.gcp_key_path:
            credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                self.gcp_key_path, scopes=self.gcp_scopes
            )
            project = credentials.project_id
        elif self.gcp_keyfile_dict:
            info = self.gcp_keyfile_dict
            if isinstance(info, str):
                try:
                    info = json.loads(info)
                except json.JSONDecodeError as exc:
                    raise self.config_error(
                        f"gcp_keyfile_dict is not valid JSON (line {exc.lineno})"
                    ) from None
            credentials = service_account.Credentials.from_service_account_info(info, scopes=self.gcp_scopes)  # type: ignore[no-untyped-call]
            project = credentials.project_id
        elif self.gcp_credential_config_file:
            source = self.gcp_credential_config_file
            if isinstance(source, dict) or (isinstance(source, str) and source.lstrip().startswith("{")):
                info = source if isinstance(source, dict) else json.loads(source)
                credentials, project = google.auth.load_credentials_from_dict(info, scopes=self.gcp_scopes)  # type: ignore[no-untyped-call]
            else:
                credentials, project = google.auth.load_credentials_from_file(source, scopes=self.gcp_scopes)  # type: ignore[no-untyped-call]
        else:
            credentials, project = google.auth.default(scopes=self.gcp_scopes)
        if self.impersonation_chain:
            from google.auth import impersonated_credentials

            credentials = impersonated_credentials.Credentials(  # type: ignore[no-untyped-call]
                source_credentials=credentials,
                target_principal=self.impersonation_chain[-1],
                delegates=self.impersonation_chain[:-1] or None,
                target_scopes=self.gcp_scopes,
            )
        return credentials, project

    def prepare(self) -> None:
        """Import the client stack, load the credentials and build the client; no Secret Manager request."""
        _ = self.client

    @property
    def client(self) -> Any:
        """This process's client: a forked child makes its own (the inherited one's connections, HTTP
        keep-alive sockets or a gRPC channel, are also the parent's)."""
        return self._clients.get()

    def _new_client(self) -> Any:
        try:
            from google.auth.exceptions import GoogleAuthError
            from google.cloud import secretmanager
        except ImportError as exc:
            raise self.config_error(
                f"needs google-cloud-secret-manager (missing module {exc.name!r}); "
                "install it with: pip install 'credpath[gcp]'"
            ) from None
        try:
            credentials, project = self._build_credentials()
        except GoogleAuthError as exc:
            raise self.error(f"cannot load credentials: {type(exc).__name__}") from None
        except OSError as exc:
            raise self.config_error(f"cannot read the credentials file ({exc.strerror})") from None
        self.project_id = self.project_id or project
        if not self.project_id:
            raise self.config_error("project_id is not set and the credentials name no project")
        kwargs: dict[str, Any] = {"credentials": credentials}
        if self.transport:
            kwargs["transport"] = self.transport
        if self.client_options is not None:
            kwargs["client_options"] = self.client_options
        client = secretmanager.SecretManagerServiceClient(**kwargs)
        log.debug("%s: client for project %s (transport %s)", self.name, self.project_id, self.transport)
        return client

    def _rpc(self, method: Any, request: dict[str, Any], what: str, deadline: Deadline | None = None) -> Any:
        """``method(request=...)`` within one whole-call deadline, retried with back-off.

        The client's own retry is off (``retry=None``); each try's transport timeout is the time left
        (at most half the deadline, so a hung connection leaves room for one more try on a new one).
        Permanent API errors are raised as they are, for the caller to map.
        """
        deadline = deadline or Deadline(self.timeout)

        def attempt(dl: Deadline) -> Any:
            per_try = max(0.05, min(dl.remaining(), self.timeout / 2))
            return method(request=request, retry=None, timeout=per_try)

        def on_timeout(attempts: int) -> BaseException:
            tries = f" ({attempts} attempt(s))" if attempts > 1 else ""
            return self.error(f"{what} timed out after {deadline.seconds:g} s{tries}", BackendTimeout)

        return call_with_retries(attempt, deadline, self.policy, classify=classify, on_timeout=on_timeout)

    def _parent(self) -> str:
        _ = self.client  # resolves project_id
        return f"projects/{self.project_id}"

    def _in_voice(self, message: str, cls: type[BackendError]) -> BackendError:
        return cls(message, backend=self.name)

    def _error(self, exc: BaseException, secret_id: str, action: str) -> CredpathError:
        """One line naming the backend, secret and reason; server text is reduced to a state or code."""
        from google.api_core import exceptions as gexc

        where = self._where(secret_id, action)
        exc, tries = unwrap_retries(exc, self.timeout)
        if isinstance(exc, CredpathError):
            return exc
        if isinstance(exc, gexc.GoogleAPICallError):
            found = _STATE_RE.search(str(getattr(exc, "message", ""))) if exc.code == 400 else None
            state = found.group(1) if found else None
            fields = {
                "where": where,
                "code": exc.code,
                "version": pinned_version() or self.version,
                "state": state,
                "name": type(exc).__name__,
                "status": getattr(exc, "grpc_status_code", None) or exc.code,
                "tries": tries,
            }
            return STATUS_TABLE.error(exc.code, state, fields, self._in_voice)
        return BackendError(f"{where}: {type(exc).__name__}{tries}", backend=self.name)

    # --- reads -------------------------------------------------------------------------------------

    def access(self, secret_id: str, deadline: Deadline | None = None) -> str | None:
        from google.api_core import exceptions as gexc

        client = self.client
        if (pin := pinned_version()) is not None and not self.accepts_version(pin):
            raise self.config_error(f"version {pin[:80]!r} is not {self.version_form}")
        name = f"projects/{self.project_id}/secrets/{secret_id}/versions/{pin or self.version}"
        try:
            response = self._rpc(
                client.access_secret_version,
                {"name": name},
                f"AccessSecretVersion of {secret_id!r}",
                deadline,
            )
        except gexc.NotFound:
            log.debug("%s: secret %s version %s not found", self.name, secret_id, self.version)
            return None
        except Exception as exc:  # transport errors (requests / grpc) carry URLs, not values
            raise self._error(exc, secret_id, "reading") from None
        data: bytes = response.payload.data
        expected = response.payload.data_crc32c
        if expected is not None and getattr(response.payload, "_pb", None) is not None:
            has_crc = response.payload._pb.HasField("data_crc32c")
        else:
            has_crc = expected is not None
        if has_crc and crc32c(data) != int(expected):
            raise self.error(
                f"secret {secret_id!r} payload failed its CRC32C check (corrupted in transit); "
                "refusing the value"
            )
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"secret {secret_id!r} is not UTF-8 text") from None
        log.debug("%s: read secret %s", self.name, secret_id)
        # The resource name says which version "latest" was: projects/p/secrets/s/versions/N.
        note_version(str(getattr(response, "name", "") or "").rpartition("/versions/")[2] or None)
        return value

    def accepts_version(self, version: str) -> bool:
        # Numbers only: "latest" (or an alias) moves, so it is no pin.
        return version.isascii() and version.isdigit() and int(version) > 0

    def read_secret(self, name: str, deadline: Deadline | None = None) -> str | None:
        """What the shared reads call: one secret's latest version (or the pinned one)."""
        return self.access(name, deadline)

    # --- writes, listing ---------------------------------------------------------------------------

    def _write(self, kind: Kind, key: str, value: str, overwrite: bool) -> None:
        from google.api_core import exceptions as gexc

        secret_id = self._write_name(kind, key)
        data = value.encode("utf-8")
        if len(data) > 65536:
            raise self.config_error(f"{kind} {key!r} is larger than Secret Manager's 64 KiB")
        client, parent = self.client, self._parent()
        try:
            try:
                # Migration writes mostly new ids: create first (2 calls new, 2 calls existing).
                self._rpc(
                    client.create_secret,
                    {
                        "parent": parent,
                        "secret_id": secret_id,
                        "secret": {"replication": {"automatic": {}}, "labels": {"managed-by": "credpath"}},
                    },
                    f"CreateSecret of {secret_id!r}",
                )
            except (gexc.AlreadyExists, gexc.Conflict):
                if not overwrite:
                    raise self.config_error(
                        f"{kind} {key!r} already exists (secret {secret_id!r}); not overwritten"
                    ) from None
            self._rpc(
                client.add_secret_version,
                {
                    "parent": f"{parent}/secrets/{secret_id}",
                    "payload": {"data": data, "data_crc32c": crc32c(data)},
                },
                f"AddSecretVersion of {secret_id!r}",
            )
        except ConfigError:
            raise
        except Exception as exc:
            raise self._error(exc, secret_id, "writing") from None
        log.debug("%s: wrote secret %s", self.name, secret_id)

    def set_connection(
        self, conn: Any, *, overwrite: bool = True, serialization: Serialization = "json"
    ) -> None:
        if not conn.conn_id:
            raise self.config_error("connection to write has no conn_id")
        self._write("connection", conn.conn_id, self.serialize_connection(conn, serialization), overwrite)

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        self._write("variable", key, value, overwrite)

    def _delete(self, kind: Kind, key: str) -> bool:
        from google.api_core import exceptions as gexc

        secret_id = self._write_name(kind, key)
        try:
            self._rpc(
                self.client.delete_secret,
                {"name": f"{self._parent()}/secrets/{secret_id}"},
                f"DeleteSecret of {secret_id!r}",
            )
        except gexc.NotFound:
            return False
        except Exception as exc:
            raise self._error(exc, secret_id, "deleting") from None
        log.debug("%s: deleted secret %s", self.name, secret_id)
        return True

    def delete_connection(self, conn_id: str) -> bool:
        return self._delete("connection", conn_id)

    def delete_variable(self, key: str) -> bool:
        return self._delete("variable", key)

    def _pages(self, request: dict[str, Any], what: str) -> Any:
        """Each ListSecrets page, one retried call with its own deadline per page."""
        request = dict(request)
        while True:
            page = self._rpc(self.client.list_secrets, request, what)
            yield page
            token = page.next_page_token  # the pager hands attributes on to the page's response
            if not token:
                return
            request["page_token"] = token

    def _list_under(self, kind: Kind, start: str) -> list[str]:
        request: dict[str, Any] = {"parent": self._parent(), "page_size": 250}
        if start:
            request["filter"] = f"name:{start}"  # server-side narrowing; "name:" is a substring match
        ids: list[str] = []
        try:
            for page in self._pages(request, "ListSecrets"):
                for secret in page.secrets:
                    # Returned names carry the project number, so take the last segment only.
                    key = self._key_under(secret.name.rsplit("/", 1)[-1], start)
                    if key is not None:
                        ids.append(key)
        except (ConfigError, BackendError):
            raise
        except Exception as exc:
            raise self._error(exc, f"{start}*", "listing") from None
        return ids

    def check(self) -> str:
        try:
            self._rpc(self.client.list_secrets, {"parent": self._parent(), "page_size": 1}, "ListSecrets")
        except (ConfigError, BackendError):
            raise
        except Exception as exc:
            raise self._error(exc, "*", "listing") from None
        return f"{self.store_name} project {self.project_id}: reachable"

    def close(self) -> None:
        client = self._clients.clear()  # in a forked child: its own (the inherited one is dropped)
        if client is not None:
            try:
                client.transport.close()
            except Exception:  # closing is best effort
                log.debug("%s: error closing the client", self.name, exc_info=True)

    def describe(self) -> str:
        return f"{self.alias} (project {self.project_id or 'from credentials'}, version {self.version})"
