"""A fake of Azure Key Vault's secrets data plane over HTTPS on loopback, for the real azure-keyvault-secrets.

Drive it with ``SecretClient(vault_url=fake.vault_url, credential=StaticTokenCredential(fake.token),
verify_challenge_resource=False, connection_verify=fake.ca_path, retry_total=0)``. TLS uses a certificate
made by trustme for SAN IP 127.0.0.1 (the client has no plain-HTTP mode). Follows
``tests/servers/gcp-azure-fakes.md``:

- the bearer challenge first: a request without ``Authorization`` gets 401 with ``WWW-Authenticate: Bearer
  authorization=..., resource=https://vault.azure.net`` before any other check; a wrong token gets 401 too;
- ``PUT /secrets/{name}`` (a new version each time), ``GET``/``PATCH /secrets/{name}/{version}``
  (empty version = latest), ``GET /secrets`` and ``/secrets/{name}/versions`` with ``maxresults`` and
  absolute ``nextLink`` paging, ``DELETE /secrets/{name}`` (soft delete, returns a DeletedSecretBundle),
  ``GET /deletedsecrets[/{name}]``,
  ``DELETE /deletedsecrets/{name}`` (purge, 204), ``POST /deletedsecrets/{name}/recover``;
- names ``^[0-9a-zA-Z-]{1,127}$`` (else 400 BadParameter), matched case-insensitively, first spelling kept;
- a disabled version answers 403 Forbidden / innererror SecretDisabled; missing answers 404 SecretNotFound;
  setting a soft-deleted name answers 409 Conflict / innererror ObjectIsDeletedButRecoverable;
- ``purge_protection = True`` makes purge answer 403 (recoveryLevel ``Recoverable``);
- delete/recover/purge complete synchronously, so the client's pollers finish on their first poll.

Not emulated: real Entra ID tokens (one static token is accepted), RBAC/access policies (``deny_all``
stands in for a 403), nbf/exp enforcement, managed secrets, backup/restore, the keys and certificates
APIs, throttling (only ``fail_next``), api-version differences (any is accepted), asynchronous delete/purge
delays, recovery windows (nothing is purged on schedule), eventual consistency of lists.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import pytest

from tests.servers._fake_http import FakeHarness, LoopbackHttpFake, Reply

NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
DEFAULT_TOKEN = "fake-kv-token"
TENANT = "00000000-0000-0000-0000-000000000000"


class KvError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner
        self.retry_after: str | None = None

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


@dataclass
class KvVersion:
    version: str
    value: str
    created: int
    updated: int
    enabled: bool = True
    content_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class KvSecret:
    name: str
    versions: list[KvVersion] = field(default_factory=list)
    deleted_date: int | None = None


class StaticTokenCredential:
    """A TokenCredential that always returns one token (accepts azure-core's tenant_id/enable_cae)."""

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<StaticTokenCredential>"


class AzureKeyVaultFake(LoopbackHttpFake):
    methods: ClassVar[tuple[str, ...]] = ("GET", "PUT", "PATCH", "DELETE", "POST")
    content_type: ClassVar[str] = "application/json; charset=utf-8"
    fixed_headers: ClassVar[dict[str, str]] = {"x-ms-keyvault-service-version": "1.9.0.0"}

    def __init__(self, tls_dir: Path, page_size: int = 25) -> None:
        import trustme

        self.secrets: dict[str, KvSecret] = {}  # lower-case name -> secret (live or soft-deleted)
        self.requests: list[tuple[str, str]] = []
        self.page_size = page_size
        self.purge_protection = False
        self.deny_all = False
        self.token = DEFAULT_TOKEN
        self._faults: list[tuple[int, str | None]] = []
        self.lock = threading.RLock()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        tls_dir.mkdir(parents=True, exist_ok=True)
        self.ca_path = str(tls_dir / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        self.serve("azure-fake", tls=context)
        self.vault_url = f"https://127.0.0.1:{self.port}"

    # --- test controls -----------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.secrets.clear()
            self.requests.clear()
            self._faults.clear()
            self.page_size = 25
            self.purge_protection = False
            self.deny_all = False
        self.clear_slow()

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        with self.lock:
            self._faults.extend([(status, retry_after)] * count)

    def count(self, method: str | None = None, authorized_only: bool = True) -> int:
        with self.lock:
            return sum(
                1
                for m, path in self.requests
                if (method is None or m == method) and (not authorized_only or not path.startswith("!"))
            )

    def client(self) -> Any:
        from azure.keyvault.secrets import SecretClient

        return SecretClient(
            vault_url=self.vault_url,
            credential=StaticTokenCredential(self.token),
            verify_challenge_resource=False,
            connection_verify=self.ca_path,
            retry_total=0,
        )

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self.lock:
            self.secrets[name.lower()].versions[-1].enabled = enabled

    # --- request handling ---------------------------------------------------------------------------

    def respond(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:
        try:
            return Reply(*self.handle(method, raw_path, headers, body))
        except _Challenge:
            error = {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", '
                'resource="https://vault.azure.net"'
            )
            return Reply(401, {"error": error}, {"WWW-Authenticate": challenge})
        except KvError as exc:
            headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
            return Reply(exc.status, exc.body(), headers)

    def handle(
        self, method: str, raw_path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        auth = headers.get("Authorization")
        with self.lock:
            if auth is None:
                self.requests.append((method, "!" + path))  # the challenge round trip, not billed as an op
                raise _Challenge()
            self.requests.append((method, path))
            if auth != f"Bearer {self.token}":
                raise _Challenge()
            if self._faults:
                status, retry_after = self._faults.pop(0)
                error = KvError(
                    status, "Throttled" if status == 429 else "ServiceUnavailable", "Injected fault."
                )
                error.retry_after = retry_after
                raise error
            if self.deny_all:
                raise KvError(403, "Forbidden", "Caller is not authorized to perform action on resource.")
            try:
                payload = json.loads(body) if body else {}
            except json.JSONDecodeError:
                raise KvError(400, "BadParameter", "The request body is not valid JSON.") from None
            return self._route(method, path, query, payload)

    def _route(self, method: str, path: str, query: dict[str, str], payload: dict) -> tuple[int, dict | None]:
        segments = path.strip("/").split("/") if path.strip("/") else []
        trailing = path.endswith("/") and len(segments) == 2
        if not segments or segments[0] not in ("secrets", "deletedsecrets"):
            raise KvError(404, "NotFound", f"Resource {path} not found.")
        if segments[0] == "secrets":
            if len(segments) == 1 and method == "GET":
                return 200, self._list(query, deleted=False)
            if len(segments) >= 2:
                self._check_name(segments[1])
            if len(segments) == 2 and method == "PUT" and not trailing:
                return 200, self._set(segments[1], payload)
            if len(segments) == 2 and method == "DELETE" and not trailing:
                return 200, self._delete(segments[1])
            if len(segments) == 3 and segments[2] == "versions" and method == "GET":
                return 200, self._list_versions(segments[1], query)
            if len(segments) in (2, 3) and method in ("GET", "PATCH"):
                version = segments[2] if len(segments) == 3 else ""
                if method == "GET":
                    return 200, self._get(segments[1], version)
                return 200, self._update(segments[1], version, payload)
        else:
            if len(segments) == 1 and method == "GET":
                return 200, self._list(query, deleted=True)
            self._check_name(segments[1])
            if len(segments) == 2 and method == "GET":
                return 200, self._deleted_bundle(self._deleted(segments[1]))
            if len(segments) == 2 and method == "DELETE":
                return 204, self._purge(segments[1])
            if len(segments) == 3 and segments[2] == "recover" and method == "POST":
                return 200, self._recover(segments[1])
        raise KvError(405, "MethodNotAllowed", f"{method} is not allowed on {path}.")

    @staticmethod
    def _check_name(name: str) -> None:
        if not NAME_RE.match(name):
            raise KvError(
                400,
                "BadParameter",
                "The request URI contains an invalid name: " + name,
            )

    def _not_found(self, name: str) -> KvError:
        return KvError(
            404,
            "SecretNotFound",
            f"A secret with (name/id) {name} was not found in this key vault. If you recently deleted "
            "this secret you may be able to recover it using the correct recovery command. For help "
            "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
        )

    def _live(self, name: str) -> KvSecret:
        secret = self.secrets.get(name.lower())
        if secret is None or secret.deleted_date is not None or not secret.versions:
            raise self._not_found(name)
        return secret

    def _deleted(self, name: str) -> KvSecret:
        secret = self.secrets.get(name.lower())
        if secret is None or secret.deleted_date is None:
            raise KvError(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return secret

    @property
    def _recovery_level(self) -> str:
        return "Recoverable" if self.purge_protection else "Recoverable+Purgeable"

    def _attributes(self, version: KvVersion) -> dict[str, Any]:
        return {
            "enabled": version.enabled,
            "created": version.created,
            "updated": version.updated,
            "recoveryLevel": self._recovery_level,
            "recoverableDays": 90,
        }

    def _bundle(self, secret: KvSecret, version: KvVersion, with_value: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": f"{self.vault_url}/secrets/{secret.name}/{version.version}",
            "attributes": self._attributes(version),
            "tags": dict(version.tags),
        }
        if version.content_type is not None:
            body["contentType"] = version.content_type
        if with_value:
            body["value"] = version.value
        return body

    def _item(self, secret: KvSecret, version: KvVersion | None = None) -> dict[str, Any]:
        latest = secret.versions[-1]
        shown = version or latest
        item: dict[str, Any] = {
            "id": f"{self.vault_url}/secrets/{secret.name}" + (f"/{version.version}" if version else ""),
            "attributes": self._attributes(shown),
            "tags": dict(shown.tags),
        }
        if shown.content_type is not None:
            item["contentType"] = shown.content_type
        return item

    def _deleted_bundle(self, secret: KvSecret, item: bool = False) -> dict[str, Any]:
        body = self._item(secret) if item else self._bundle(secret, secret.versions[-1], with_value=False)
        body.update(
            {
                "recoveryId": f"{self.vault_url}/deletedsecrets/{secret.name}",
                "deletedDate": secret.deleted_date,
                "scheduledPurgeDate": (secret.deleted_date or 0) + 90 * 86400,
            }
        )
        return body

    def _set(self, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(payload.get("value"), str):
            raise KvError(400, "BadParameter", "Property 'value' is required.")
        secret = self.secrets.get(name.lower())
        if secret is not None and secret.deleted_date is not None:
            raise KvError(
                409,
                "Conflict",
                f"Secret {secret.name} is currently in a deleted but recoverable state, and its name "
                "cannot be reused; in this state, the secret can only be recovered or purged.",
                "ObjectIsDeletedButRecoverable",
            )
        if secret is None:
            secret = self.secrets[name.lower()] = KvSecret(name=name)
        now = int(time.time())
        attributes = payload.get("attributes") or {}
        version = KvVersion(
            version=uuid.uuid4().hex,
            value=payload["value"],
            created=now,
            updated=now,
            enabled=attributes.get("enabled", True),
            content_type=payload.get("contentType"),
            tags=dict(payload.get("tags") or {}),
        )
        secret.versions.append(version)
        return self._bundle(secret, version)

    def _find_version(self, secret: KvSecret, version_id: str) -> KvVersion:
        if not version_id:
            return secret.versions[-1]
        for version in secret.versions:
            if version.version == version_id.lower():
                return version
        raise KvError(
            404, "SecretNotFound", f"A secret with (name/id) {secret.name}/{version_id} was not found."
        )

    def _get(self, name: str, version_id: str) -> dict[str, Any]:
        secret = self._live(name)
        version = self._find_version(secret, version_id)
        if not version.enabled:
            raise KvError(
                403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"
            )
        return self._bundle(secret, version)

    def _update(self, name: str, version_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        secret = self._live(name)
        version = self._find_version(secret, version_id)
        attributes = payload.get("attributes") or {}
        if "enabled" in attributes:
            version.enabled = bool(attributes["enabled"])
        if "tags" in payload:
            version.tags = dict(payload["tags"] or {})
        if "contentType" in payload:
            version.content_type = payload["contentType"]
        version.updated = int(time.time())
        return self._bundle(secret, version, with_value=False)

    def _delete(self, name: str) -> dict[str, Any]:
        secret = self._live(name)
        secret.deleted_date = int(time.time())
        return self._deleted_bundle(secret)

    def _purge(self, name: str) -> None:
        secret = self._deleted(name)
        if self.purge_protection:
            raise KvError(
                403,
                "Forbidden",
                'Operation "purge" is not allowed because purge protection is enabled for secret '
                f"{secret.name}.",
            )
        del self.secrets[name.lower()]
        return None

    def _recover(self, name: str) -> dict[str, Any]:
        secret = self._deleted(name)
        secret.deleted_date = None
        return self._bundle(secret, secret.versions[-1], with_value=False)

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], path: str) -> dict[str, Any]:
        try:
            size = min(int(query.get("maxresults") or self.page_size), self.page_size)
            start = int(query.get("$skiptoken") or 0)
        except ValueError:
            raise KvError(400, "BadParameter", "Invalid maxresults or $skiptoken.") from None
        if size < 1 or start < 0:
            raise KvError(400, "BadParameter", "Invalid maxresults or $skiptoken.")
        body: dict[str, Any] = {"value": items[start : start + size], "nextLink": None}
        if start + size < len(items):
            params = {"api-version": query.get("api-version", "7.6"), "$skiptoken": str(start + size)}
            params["maxresults"] = str(size)
            body["nextLink"] = f"{self.vault_url}{path}?{urlencode(params)}"
        return body

    def _list(self, query: dict[str, str], deleted: bool) -> dict[str, Any]:
        chosen = sorted(
            (s for s in self.secrets.values() if (s.deleted_date is not None) == deleted and s.versions),
            key=lambda s: s.name.lower(),
        )
        if deleted:
            items = [self._deleted_bundle(s, item=True) for s in chosen]
            return self._page(items, query, "/deletedsecrets")
        return self._page([self._item(s) for s in chosen], query, "/secrets")

    def _list_versions(self, name: str, query: dict[str, str]) -> dict[str, Any]:
        secret = self.secrets.get(name.lower())
        if secret is None or secret.deleted_date is not None:
            return {"value": [], "nextLink": None}  # the service answers 200 with nothing
        items = [self._item(secret, v) for v in secret.versions]
        return self._page(items, query, f"/secrets/{secret.name}/versions")


class _Challenge(Exception):
    pass


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def azure_fake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fake = AzureKeyVaultFake(tmp_path_factory.mktemp("azure-tls")).start()
    yield fake
    fake.stop()


class AzureKeyVaultHarness(FakeHarness):
    """Contract-suite harness: the fake is wiped per harness; native writes through SecretClient."""

    fake: AzureKeyVaultFake

    def backend_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "vault_url": self.fake.vault_url,
            "credential": StaticTokenCredential(self.fake.token),
            "client_kwargs": {
                "verify_challenge_resource": False,
                "connection_verify": self.fake.ca_path,
                "retry_total": 0,
            },
        }
        base.update(kwargs)
        return base

    def make_backend(self, **kwargs: Any) -> Any:
        from credpath.backends.azure_key_vault import KeyVaultBackend

        return KeyVaultBackend(**self.backend_kwargs(**kwargs))

    def map_name(self, name: str) -> str:
        return name.replace("_", self.sep)  # the backend's mapping: Key Vault names allow no '_'

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        self.client.set_secret(self.secret_name(kind, key), raw_value)


@pytest.fixture
def azure_key_vault_harness(azure_fake: AzureKeyVaultFake) -> AzureKeyVaultHarness:
    azure_fake.reset()
    return AzureKeyVaultHarness(azure_fake)
