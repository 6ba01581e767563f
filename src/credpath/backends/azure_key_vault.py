"""Azure Key Vault backend (Airflow's ``AzureKeyVaultBackend`` kwargs), on azure-keyvault-secrets.

Secret name = ``<prefix><sep><id>`` with every ``_`` replaced by ``sep`` (Key Vault names allow only letters,
digits and dashes); an empty prefix means the bare id; a prefix set to ``None`` switches that kind off. Names
are case-insensitive in Key Vault, so ``my_db`` and ``MY-DB`` are the same secret.

Kwargs (Airflow's): ``vault_url``, ``connections_prefix``, ``variables_prefix``, ``config_prefix``,
``sep``, ``tenant_id``/``client_id``/``client_secret`` (a service principal; otherwise
``DefaultAzureCredential``, with ``managed_identity_client_id``/``workload_identity_tenant_id`` passed to
it), and any other keyword, which goes to ``SecretClient`` unchanged (Airflow does the same).
credpath's: the three ``*_lookup_pattern``, ``connection_format``, ``credential`` (any azure-core
``TokenCredential``, or in a config file the dotted path of a credential class built with no arguments),
``client_kwargs`` (a dict for ``SecretClient``, e.g. ``{"connection_verify": "ca.pem", "retry_total": 0}``)
and ``on_deleted``: what a write does when the name is soft-deleted (``"fail"`` default: a clear error;
``"recover"``: recover the deleted secret, then add the new version; ``"purge"``: purge it, then write) and
``purge_on_delete`` (default false: a delete is Key Vault's soft delete, recoverable for the vault's retention
period; true: the deleted secret is purged too, so its name is free at once).

``vault_url`` defaults to ``""`` as in Airflow; a backend without one fails at its first use, with a one-line
message. ``timeout`` (seconds, default 10) bounds a whole lookup: connect, reads, retries and waits.
Multi-team (Airflow 3.2+): a lookup for a team tries ``<prefix><sep><team>--<id>`` first (``_`` mapped to
``sep`` as everywhere in this backend), then the team-agnostic name; in multi-team mode an id whose mapped
name contains ``--`` is never looked up, as the provider does.

Faults: azure-core's retries (10 tries, waits of up to 2 minutes, 300 s socket timeouts) are off; credpath
retries 429, 5xx and transient network errors with full-jitter back-off inside ``timeout`` and honours
``Retry-After`` only when it fits. A ``retry_total`` kwarg (azure-core's name) sets the number of retries.

Differences from Airflow, on purpose: a disabled secret raises :class:`BackendError` naming the secret
(Airflow lets the raw 403 escape); other 403s raise :class:`AccessDenied`; only a 404 is a miss.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from credpath._deadlines import (
    Deadline,
    RetriesExhausted,
    RetryPolicy,
    call_with_deadline,
    call_with_retries,
    parse_retry_after,
    unwrap_retries,
)
from credpath._lookup.trace import note_version
from credpath._settings import RETRIES, TIMEOUT, check_number
from credpath.backends._naming import KeyNaming
from credpath.backends._per_process import PerProcess
from credpath.backends._prefixed import PrefixedSecretsBackend
from credpath.backends._status import Row, StatusTable
from credpath.errors import AccessDenied, BackendError, BackendTimeout, ConfigError, CredpathError
from credpath.protocol import Capability, Kind, PinnedReads, Serialization, pinned_version

if TYPE_CHECKING:
    from credpath.model import Connection

__all__ = ["DISABLED", "ID_TAG", "STATUS_TABLE", "KeyVaultBackend", "OnDeleted"]


log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
#: The inner error code of a read of a disabled secret (a 403 that is not about access).
DISABLED = "SecretDisabled"
#: A Key Vault answer (HTTP status; a disabled secret's 403 as ``DISABLED``) -> credpath error.
STATUS_TABLE = StatusTable(
    "Azure Key Vault",
    rows=(
        Row(BackendError, "{where}: the secret is disabled in the vault", codes=frozenset({DISABLED})),
        Row(AccessDenied, "{where}: access denied ({code_or_403})", statuses=frozenset({403})),
    ),
    default=Row(BackendError, "{where}: {detail}{tries}"),
)
#: Tag keeping the original id, so listing can undo the ``_`` -> ``sep`` mapping for secrets credpath wrote.
ID_TAG = "credpath-id"
OnDeleted = Literal["fail", "recover", "purge"]
_ON_DELETED = ("fail", "recover", "purge")
DEFAULT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
DEFAULT_CONNECT_TIMEOUT = 3.0


def _refused(exc: BaseException | None) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConnectionRefusedError):
            return True
        exc = getattr(exc, "inner_exception", None) or exc.__cause__ or exc.__context__
    return False


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        if headers.get(name):
            try:
                return max(0.0, float(headers[name]) * scale)
            except ValueError:
                pass
    return parse_retry_after(headers.get("Retry-After"))


def classify(exc: BaseException) -> tuple[bool, float | None]:
    """(retryable, Retry-After) for an exception from a Key Vault call."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, CredpathError | ClientAuthenticationError):
        return False, None
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status == 429 or status >= 500:
            return True, _retry_after(exc)
        return False, None
    if isinstance(exc, ServiceRequestError):
        return not _refused(exc), None
    if isinstance(exc, ServiceResponseError):
        return True, None
    return False, None


class KeyVaultBackend(PinnedReads, PrefixedSecretsBackend):
    alias: ClassVar[str] = "azure-key-vault"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"write", "list", "versions"})
    version_form: ClassVar[str] = "a version id (32 hexadecimal characters)"
    store_name: ClassVar[str] = "Azure Key Vault"
    requires: ClassVar[tuple[str, ...]] = ("azure.keyvault.secrets", "azure.identity")
    extra: ClassVar[str | None] = "azure"
    name_noun: ClassVar[str] = "secret name"
    name_re: ClassVar[re.Pattern[str]] = _NAME_RE
    name_rules: ClassVar[str] = "letters, digits, '-'; at most 127"

    def __init__(
        self,
        connections_prefix: str | None = "airflow-connections",
        variables_prefix: str | None = "airflow-variables",
        config_prefix: str | None = "airflow-config",
        vault_url: str = "",
        sep: str = "-",
        *,
        tenant_id: str = "",
        client_id: str = "",
        client_secret: str = "",
        managed_identity_client_id: str = "",
        workload_identity_tenant_id: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        credential: Any = None,
        client_kwargs: dict[str, Any] | None = None,
        on_deleted: OnDeleted = "fail",
        purge_on_delete: bool = False,
        connections_lookup_pattern: str | None = None,
        variables_lookup_pattern: str | None = None,
        config_lookup_pattern: str | None = None,
        connection_format: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            connections_lookup_pattern=connections_lookup_pattern,
            variables_lookup_pattern=variables_lookup_pattern,
            config_lookup_pattern=config_lookup_pattern,
            connection_format=connection_format,
        )
        # Airflow's default is "" and it fails only at first use; so does credpath (see ``client``).
        if not isinstance(vault_url, str) or (vault_url and not vault_url.startswith("https://")):
            raise self.config_error("vault_url must be the https:// URL of the vault")
        if not isinstance(sep, str) or not re.fullmatch(r"[0-9a-zA-Z-]*", sep):
            raise self.config_error("sep must consist of letters, digits or '-' (Key Vault name characters)")
        self.timeout = check_number(timeout, TIMEOUT, "timeout", self.config_error)
        self.vault_url = vault_url.rstrip("/")
        # The provider strips a trailing sep from the prefix and maps every "_" to sep (Key Vault names
        # allow no "_"); it refuses team-separator ids for config too, but scopes only connections and
        # variables by team.
        self.naming = KeyNaming.from_settings(
            connections_prefix,
            variables_prefix,
            config_prefix,
            sep=sep,
            strip_sep=True,
            fail=self.config_error,
            spell=lambda name: name.replace("_", sep),
        )
        if on_deleted not in _ON_DELETED:
            raise self.config_error(f"on_deleted must be one of {', '.join(_ON_DELETED)}")
        self.on_deleted: OnDeleted = on_deleted
        if not isinstance(purge_on_delete, bool):
            raise self.config_error("purge_on_delete must be true or false")
        self.purge_on_delete = purge_on_delete
        if client_kwargs is not None and not isinstance(client_kwargs, dict):
            raise self.config_error("client_kwargs must be a mapping of SecretClient keyword arguments")
        self.client_kwargs: dict[str, Any] = {**kwargs, **(client_kwargs or {})}
        # azure-core's retry_total (retries after the first try) sets credpath's tries; the SDK's own
        # retries stay off so that every wait happens inside the deadline.
        retries = self.client_kwargs.pop("retry_total", None)
        if retries is not None:
            check_number(retries, RETRIES, "retry_total", self.config_error)
        self.policy = RetryPolicy(attempts=DEFAULT_ATTEMPTS if retries is None else retries + 1)
        self.connection_timeout = min(
            float(self.client_kwargs.pop("connection_timeout", DEFAULT_CONNECT_TIMEOUT)), self.timeout
        )
        read_timeout = self.client_kwargs.pop("read_timeout", None)
        self.read_timeout = min(float(read_timeout), self.timeout) if read_timeout else self.timeout / 2
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._client_secret = client_secret  # never in repr/describe
        self.managed_identity_client_id = managed_identity_client_id
        self.workload_identity_tenant_id = workload_identity_tenant_id
        self._credential = credential
        self._clients: PerProcess[Any] = PerProcess(self._new_client)

    # --- client ------------------------------------------------------------------------------------

    def _build_credential(self) -> Any:
        if isinstance(self._credential, str):
            # A dotted class path (from a config file), built with no arguments.
            from credpath.registry import load_class

            return load_class(self._credential, setting="credential")()
        if self._credential is not None:
            return self._credential
        from azure.identity import ClientSecretCredential, DefaultAzureCredential

        if self.tenant_id and self.client_id and self._client_secret:
            return ClientSecretCredential(
                tenant_id=self.tenant_id, client_id=self.client_id, client_secret=self._client_secret
            )
        options: dict[str, Any] = {}
        if self.managed_identity_client_id:
            options["managed_identity_client_id"] = self.managed_identity_client_id
        if self.workload_identity_tenant_id:
            options["workload_identity_tenant_id"] = self.workload_identity_tenant_id
        return DefaultAzureCredential(**options)

    def prepare(self) -> None:
        """Import azure-keyvault-secrets and build the credential and client; no request is sent."""
        _ = self.client

    @property
    def client(self) -> Any:
        """This process's client: a forked child makes its own (the inherited client's and credential's
        pooled keep-alive sockets are also the parent's)."""
        if not self.vault_url:
            raise self.config_error("vault_url is not set; give the https:// URL of the vault")
        return self._clients.get()

    def _new_client(self) -> Any:
        try:
            from azure.keyvault.secrets import SecretClient
        except ImportError as exc:
            raise self.config_error(
                f"needs azure-keyvault-secrets and azure-identity (missing module {exc.name!r}); "
                "install them with: pip install 'credpath[azure]'"
            ) from None
        try:
            client = SecretClient(
                vault_url=self.vault_url,
                credential=self._build_credential(),
                **{**self.client_kwargs, "retry_total": 0},
            )
        except (TypeError, ValueError) as exc:
            raise self.config_error(f"bad SecretClient arguments: {exc}") from None
        log.debug("%s: client for %s", self.name, self.vault_url)
        return client

    def _call(self, func: Any, what: str, deadline: Deadline | None = None) -> Any:
        """``func(**transport timeouts)`` within one whole-call deadline, retried with back-off.

        Permanent errors (404, 403, auth) are raised as they are, for the caller to map.
        """
        deadline = deadline or Deadline(self.timeout)

        def attempt(dl: Deadline) -> Any:
            left = max(0.05, dl.remaining())
            return func(
                connection_timeout=min(self.connection_timeout, left),
                read_timeout=min(self.read_timeout, left),
            )

        def on_timeout(attempts: int) -> BaseException:
            tries = f" ({attempts} attempt(s))" if attempts > 1 else ""
            return self.error(f"{what} timed out after {deadline.seconds:g} s{tries}", BackendTimeout)

        return call_with_retries(attempt, deadline, self.policy, classify=classify, on_timeout=on_timeout)

    def _paged(self, pages: Any, what: str) -> Any:
        """Each page of an azure-core pager, fetched within a deadline of its own (no retry: a pager's
        state after a failed fetch is not safe to resume)."""
        iterator = iter(pages.by_page())
        end: Any = object()
        while True:
            page = call_with_deadline(
                lambda: list(p) if (p := next(iterator, end)) is not end else end,
                Deadline(self.timeout),
                on_timeout=lambda: self.error(f"{what} timed out after {self.timeout:g} s", BackendTimeout),
            )
            if page is end:
                return
            yield from page

    # --- naming ------------------------------------------------------------------------------------

    def _fold(self, name: str) -> str:
        # Key Vault names are case-insensitive.
        return name.lower()

    def _in_voice(self, message: str, cls: type[BackendError]) -> BackendError:
        return cls(message, backend=self.name)

    def _error(self, exc: BaseException, name: str, action: str) -> CredpathError:
        """One line naming backend, secret and reason; server text is reduced to its error code."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        where = self._where(name, action)
        exc, tries = unwrap_retries(exc, self.timeout)
        if isinstance(exc, CredpathError):
            return exc
        if isinstance(exc, ClientAuthenticationError):
            return AccessDenied(f"{where}: authentication failed ({type(exc).__name__})", backend=self.name)
        if isinstance(exc, HttpResponseError):
            code, inner = _error_codes(exc)
            status = exc.status_code
            disabled = status == 403 and (inner == DISABLED or "disabled secret" in str(exc.message))
            fields = {
                "where": where,
                "code_or_403": code or 403,
                "detail": f"HTTP {status} {code or ''}".rstrip(),
                "tries": tries,
            }
            return STATUS_TABLE.error(status, DISABLED if disabled else None, fields, self._in_voice)
        if isinstance(exc, ServiceRequestError):
            return BackendError(
                f"{where}: vault unreachable ({type(exc).__name__}){tries}", backend=self.name
            )
        return BackendError(f"{where}: {type(exc).__name__}{tries}", backend=self.name)

    # --- reads -------------------------------------------------------------------------------------

    def accepts_version(self, version: str) -> bool:
        return len(version) == 32 and all(c in "0123456789abcdefABCDEF" for c in version)

    def read_secret(self, name: str, deadline: Deadline | None = None) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        client = self.client
        if (pin := pinned_version()) is not None and not self.accepts_version(pin):
            raise self.config_error(f"version {pin[:80]!r} is not {self.version_form}")
        try:
            secret = self._call(
                lambda **t: client.get_secret(name, pin, **t), f"GetSecret of {name!r}", deadline
            )
        except ResourceNotFoundError:
            log.debug("%s: secret %s not found", self.name, name)
            return None
        except Exception as exc:
            raise self._error(exc, name, "reading") from None
        log.debug("%s: read secret %s", self.name, name)
        note_version(getattr(getattr(secret, "properties", None), "version", None))  # the id's last segment
        value: str | None = secret.value
        return value

    # --- writes ------------------------------------------------------------------------------------

    def _write(self, kind: Kind, key: str, value: str, overwrite: bool) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        policy = self.on_deleted
        name = self._write_name(kind, key)
        client = self.client
        tags = {ID_TAG: key} if len(key) <= 256 else {}
        try:
            if not overwrite:
                try:
                    self._call(lambda **t: client.get_secret(name, **t), f"GetSecret of {name!r}")
                except ResourceNotFoundError:
                    pass
                else:
                    raise self.config_error(
                        f"{kind} {key!r} already exists (secret {name!r}); not overwritten"
                    )
            try:
                self._set(name, value, tags)
            except ResourceExistsError as exc:
                if _error_codes(exc)[1] != "ObjectIsDeletedButRecoverable":
                    raise
                self._handle_deleted(name, kind, key, policy)
                if policy == "purge":
                    self._set_after_purge(name, value, tags)
                else:
                    self._set(name, value, tags)
        except ConfigError:
            raise
        except (AzureError, RetriesExhausted) as exc:
            raise self._error(exc, name, "writing") from None
        log.debug("%s: wrote secret %s", self.name, name)

    def _set(self, name: str, value: str, tags: dict[str, str]) -> None:
        self._call(lambda **t: self.client.set_secret(name, value, tags=tags, **t), f"SetSecret of {name!r}")

    def _handle_deleted(self, name: str, kind: Kind, key: str, policy: OnDeleted) -> None:
        if policy == "fail":
            raise self.config_error(
                f"secret {name!r} for {kind} {key!r} is deleted but recoverable; "
                "recover it (on_deleted='recover', CLI --on-deleted recover) or purge it "
                "(on_deleted='purge', CLI --on-deleted purge)"
            )
        if policy == "recover":
            log.debug("%s: recovering deleted secret %s", self.name, name)
            poller = self._call(
                lambda **t: self.client.begin_recover_deleted_secret(name, **t),
                f"RecoverDeletedSecret of {name!r}",
            )
            poller.wait()
        else:
            log.debug("%s: purging deleted secret %s", self.name, name)
            self._call(
                lambda **t: self.client.purge_deleted_secret(name, **t), f"PurgeDeletedSecret of {name!r}"
            )

    def _set_after_purge(self, name: str, value: str, tags: dict[str, str]) -> None:
        from azure.core.exceptions import ResourceExistsError

        # The service finishes a purge asynchronously; the name stays taken for a few seconds.
        for delay in (0.5, 1, 2, 4, 8):
            try:
                self._set(name, value, tags)
                return
            except ResourceExistsError:
                time.sleep(delay)
        self._set(name, value, tags)

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: Serialization = "json"
    ) -> None:
        if not conn.conn_id:
            raise self.config_error("connection to write has no conn_id")
        value = self.serialize_connection(conn, serialization)
        self._write("connection", conn.conn_id, value, overwrite)

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        self._write("variable", key, value, overwrite)

    def _delete(self, kind: Kind, key: str) -> bool:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        purge = self.purge_on_delete
        name = self._write_name(kind, key)
        try:
            poller = self._call(
                lambda **t: self.client.begin_delete_secret(name, **t), f"DeleteSecret of {name!r}"
            )
            if purge:
                poller.wait()  # purge needs the soft delete to have completed
                self._call(
                    lambda **t: self.client.purge_deleted_secret(name, **t), f"PurgeDeletedSecret of {name!r}"
                )
        except ResourceNotFoundError:
            return False
        except (AzureError, RetriesExhausted) as exc:
            raise self._error(exc, name, "deleting") from None
        log.debug("%s: deleted secret %s%s", self.name, name, " and purged it" if purge else "")
        return True

    def delete_connection(self, conn_id: str) -> bool:
        """Soft delete (recoverable for the retention period); with ``purge_on_delete`` also purges."""
        return self._delete("connection", conn_id)

    def delete_variable(self, key: str) -> bool:
        return self._delete("variable", key)

    def recover_deleted(self, kind: Kind, key: str) -> bool:
        """Recover a soft-deleted secret; False if there is no deleted secret of that name."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        name = self._write_name(kind, key)
        try:
            self._call(
                lambda **t: self.client.begin_recover_deleted_secret(name, **t),
                f"RecoverDeletedSecret of {name!r}",
            ).wait()
        except ResourceNotFoundError:
            return False
        except (AzureError, RetriesExhausted) as exc:
            raise self._error(exc, name, "recovering") from None
        return True

    # --- listing -----------------------------------------------------------------------------------

    def _list_under(self, kind: Kind, start: str) -> list[str]:
        from azure.core.exceptions import AzureError

        ids: list[str] = []
        try:
            for props in self._paged(self.client.list_properties_of_secrets(), "ListSecrets"):
                name = props.name or ""
                key = self._key_under(name, start)
                if key is None:
                    continue
                original = (props.tags or {}).get(ID_TAG)
                # Trust the tag only if it still maps to this name (a tag could be copied by hand).
                if original and (self.secret_name(kind, original) or "").lower() == name.lower():
                    ids.append(original)
                else:
                    ids.append(key)
        except AzureError as exc:
            raise self._error(exc, f"{start}*", "listing") from None
        return ids

    def check(self) -> str:
        from azure.core.exceptions import AzureError

        try:
            pages = self.client.list_properties_of_secrets(max_page_size=1)
            next(iter(self._paged(pages, "ListSecrets")), None)
        except AzureError as exc:
            raise self._error(exc, "*", "listing") from None
        return f"{self.store_name} {self.vault_url}: reachable"

    def close(self) -> None:
        client = self._clients.clear()  # in a forked child: its own (the inherited one is dropped)
        if client is not None:
            client.close()

    def describe(self) -> str:
        return f"{self.alias} ({self.vault_url})"


def _error_codes(exc: Any) -> tuple[str | None, str | None]:
    """(code, innererror code) of an azure-core HttpResponseError."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    inner = getattr(error, "innererror", None) or {}
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    return code, inner_code
