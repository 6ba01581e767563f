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
``"recover"``: recover the deleted secret, then add the new version; ``"purge"``: purge it, then write).

Differences from Airflow, on purpose: a disabled secret raises :class:`BackendError` naming the secret
(Airflow lets the raw 403 escape); other 403s raise :class:`AccessDenied`; only a 404 is a miss.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, ClassVar, Literal

from credpath.backends._prefixed import PrefixedSecretsBackend, prefix_setting
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.protocol import Kind

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
#: Tag keeping the original id, so listing can undo the ``_`` -> ``sep`` mapping for secrets credpath wrote.
ID_TAG = "credpath-id"
OnDeleted = Literal["fail", "recover", "purge"]
_ON_DELETED = ("fail", "recover", "purge")


class KeyVaultBackend(PrefixedSecretsBackend):
    alias: ClassVar[str] = "azure-key-vault"
    store_name: ClassVar[str] = "Azure Key Vault"
    requires: ClassVar[tuple[str, ...]] = ("azure.keyvault.secrets", "azure.identity")
    extra: ClassVar[str | None] = "azure"
    service: ClassVar[str] = "Key Vault"
    name_noun: ClassVar[str] = "name"
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
        credential: Any = None,
        client_kwargs: dict[str, Any] | None = None,
        on_deleted: OnDeleted = "fail",
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
        if not isinstance(vault_url, str) or not vault_url.startswith("https://"):
            raise ConfigError(f"vault_url of backend {self.alias!r} must be an https:// URL of the vault")
        if not isinstance(sep, str) or not re.fullmatch(r"[0-9a-zA-Z-]*", sep):
            raise ConfigError("sep must consist of letters, digits or '-' (Key Vault name characters)")
        self.vault_url = vault_url.rstrip("/")
        self.sep = sep
        self.prefixes: dict[Kind, str | None] = {}
        kind: Kind
        for kind, prefix in (
            ("connection", connections_prefix),
            ("variable", variables_prefix),
            ("config", config_prefix),
        ):
            if prefix is not None and not isinstance(prefix, str):
                raise ConfigError(f"{prefix_setting(kind)} must be a string or null")
            # Airflow strips a trailing sep from the prefix.
            self.prefixes[kind] = prefix.rstrip(sep) if prefix is not None and sep else prefix
        if on_deleted not in _ON_DELETED:
            raise ConfigError(f"on_deleted must be one of {', '.join(_ON_DELETED)}")
        self.on_deleted: OnDeleted = on_deleted
        if client_kwargs is not None and not isinstance(client_kwargs, dict):
            raise ConfigError("client_kwargs must be a mapping of SecretClient keyword arguments")
        self.client_kwargs: dict[str, Any] = {**kwargs, **(client_kwargs or {})}
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._client_secret = client_secret  # never in repr/describe
        self.managed_identity_client_id = managed_identity_client_id
        self.workload_identity_tenant_id = workload_identity_tenant_id
        self._credential = credential
        self._client: Any = None
        self._lock = threading.Lock()

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

    @property
    def client(self) -> Any:
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None:
                try:
                    from azure.keyvault.secrets import SecretClient
                except ImportError as exc:
                    raise ConfigError(
                        f"backend {self.name!r} needs azure-keyvault-secrets and azure-identity "
                        f"(missing module {exc.name!r}); install them with: pip install 'credpath[azure]'"
                    ) from None
                try:
                    self._client = SecretClient(
                        vault_url=self.vault_url, credential=self._build_credential(), **self.client_kwargs
                    )
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"backend {self.name!r}: bad SecretClient arguments: {exc}") from None
                log.debug("%s: client for %s", self.name, self.vault_url)
        return self._client

    # --- naming ------------------------------------------------------------------------------------

    def _map_name(self, name: str) -> str:
        # Airflow's mapping: Key Vault names allow no '_'.
        return name.replace("_", self.sep)

    def _fold(self, name: str) -> str:
        # Key Vault names are case-insensitive.
        return name.lower()

    def _error(self, exc: Exception, name: str, action: str) -> BackendError:
        """One line naming backend, secret and reason; server text is reduced to its error code."""
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        where = self._where(name, action)
        if isinstance(exc, ClientAuthenticationError):
            return AccessDenied(f"{where}: authentication failed ({type(exc).__name__})", backend=self.name)
        if isinstance(exc, HttpResponseError):
            code, inner = _error_codes(exc)
            if exc.status_code == 403 and (
                inner == "SecretDisabled" or "disabled secret" in str(exc.message)
            ):
                return BackendError(f"{where}: the secret is disabled in the vault", backend=self.name)
            if exc.status_code == 403:
                return AccessDenied(f"{where}: access denied ({code or 403})", backend=self.name)
            return BackendError(f"{where}: HTTP {exc.status_code} {code or ''}".rstrip(), backend=self.name)
        if isinstance(exc, ServiceRequestError):
            return BackendError(f"{where}: vault unreachable ({type(exc).__name__})", backend=self.name)
        return BackendError(f"{where}: {type(exc).__name__}", backend=self.name)

    # --- reads -------------------------------------------------------------------------------------

    def read_secret(self, name: str) -> str | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        client = self.client
        try:
            secret = client.get_secret(name)
        except ResourceNotFoundError:
            log.debug("%s: secret %s not found", self.name, name)
            return None
        except AzureError as exc:
            raise self._error(exc, name, "reading") from None
        log.debug("%s: read secret %s", self.name, name)
        return secret.value

    # --- writes ------------------------------------------------------------------------------------

    def _write(self, kind: Kind, key: str, value: str, overwrite: bool, on_deleted: OnDeleted | None) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        policy = on_deleted or self.on_deleted
        if policy not in _ON_DELETED:
            raise ConfigError(f"on_deleted must be one of {', '.join(_ON_DELETED)}")
        name = self._write_name(kind, key)
        client = self.client
        tags = {ID_TAG: key} if len(key) <= 256 else {}
        try:
            if not overwrite:
                try:
                    client.get_secret(name)
                except ResourceNotFoundError:
                    pass
                else:
                    raise ConfigError(
                        f"backend {self.name!r}: {kind} {key!r} already exists (secret {name!r}); "
                        "not overwritten"
                    )
            try:
                client.set_secret(name, value, tags=tags)
            except ResourceExistsError as exc:
                if _error_codes(exc)[1] != "ObjectIsDeletedButRecoverable":
                    raise
                self._handle_deleted(name, kind, key, policy)
                if policy == "purge":
                    self._set_after_purge(name, value, tags)
                else:
                    client.set_secret(name, value, tags=tags)
        except ConfigError:
            raise
        except AzureError as exc:
            raise self._error(exc, name, "writing") from None
        log.debug("%s: wrote secret %s", self.name, name)

    def _handle_deleted(self, name: str, kind: Kind, key: str, policy: OnDeleted) -> None:
        if policy == "fail":
            raise ConfigError(
                f"backend {self.name!r}: secret {name!r} for {kind} {key!r} is deleted but recoverable; "
                "recover it (on_deleted='recover', CLI --on-deleted recover) or purge it "
                "(on_deleted='purge', CLI --on-deleted purge)"
            )
        if policy == "recover":
            log.debug("%s: recovering deleted secret %s", self.name, name)
            self.client.begin_recover_deleted_secret(name).wait()
        else:
            log.debug("%s: purging deleted secret %s", self.name, name)
            self.client.purge_deleted_secret(name)

    def _set_after_purge(self, name: str, value: str, tags: dict[str, str]) -> None:
        from azure.core.exceptions import ResourceExistsError

        # The service finishes a purge asynchronously; the name stays taken for a few seconds.
        for delay in (0.5, 1, 2, 4, 8):
            try:
                self.client.set_secret(name, value, tags=tags)
                return
            except ResourceExistsError:
                time.sleep(delay)
        self.client.set_secret(name, value, tags=tags)

    def set_connection(
        self,
        conn: Any,
        *,
        overwrite: bool = True,
        on_deleted: OnDeleted | None = None,
        serialization: str = "json",
    ) -> None:
        if not conn.conn_id:
            raise ConfigError("connection to write has no conn_id")
        self._write(
            "connection", conn.conn_id, self.serialize_connection(conn, serialization), overwrite, on_deleted
        )

    def set_variable(
        self, key: str, value: str, *, overwrite: bool = True, on_deleted: OnDeleted | None = None
    ) -> None:
        self._write("variable", key, value, overwrite, on_deleted)

    def _delete(self, kind: Kind, key: str, purge: bool) -> bool:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        name = self._write_name(kind, key)
        try:
            poller = self.client.begin_delete_secret(name)
            if purge:
                poller.wait()  # purge needs the soft delete to have completed
                self.client.purge_deleted_secret(name)
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise self._error(exc, name, "deleting") from None
        log.debug("%s: deleted secret %s%s", self.name, name, " and purged it" if purge else "")
        return True

    def delete_connection(self, conn_id: str, *, purge: bool = False) -> bool:
        """Soft delete (recoverable for the vault's retention period); ``purge=True`` also purges."""
        return self._delete("connection", conn_id, purge)

    def delete_variable(self, key: str, *, purge: bool = False) -> bool:
        return self._delete("variable", key, purge)

    def recover_deleted(self, kind: Kind, key: str) -> bool:
        """Recover a soft-deleted secret; False if there is no deleted secret of that name."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        name = self._write_name(kind, key)
        try:
            self.client.begin_recover_deleted_secret(name).wait()
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise self._error(exc, name, "recovering") from None
        return True

    # --- listing -----------------------------------------------------------------------------------

    def _list_under(self, kind: Kind, start: str) -> list[str]:
        from azure.core.exceptions import AzureError

        ids: list[str] = []
        try:
            for props in self.client.list_properties_of_secrets():
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
            next(iter(self.client.list_properties_of_secrets(max_page_size=1).by_page()), None)
        except AzureError as exc:
            raise self._error(exc, "*", "listing") from None
        return f"{self.store_name} {self.vault_url}: reachable"

    def close(self) -> None:
        client, self._client = self._client, None
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
