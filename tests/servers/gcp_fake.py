"""A fake of GCP Secret Manager's REST API (v1) on plain HTTP loopback, for the real client library.

Drive it with ``SecretManagerServiceClient(credentials=AnonymousCredentials(), transport="rest",
client_options={"api_endpoint": fake.endpoint})``. Follows ``tests/servers/gcp-azure-fakes.md``:

- resource paths ``/v1/projects/{p}[/locations/{l}]/secrets[/{s}[/versions[/{v}]]]`` with the custom verbs
  ``:addVersion``, ``:access``, ``:disable``, ``:enable``, ``:destroy``; create (``?secretId=``), get, patch
  (labels/annotations), delete (returns ``{}``), list secrets and versions (``pageSize``, ``pageToken``,
  ``filter``; results sorted by name; ``nextPageToken``, ``totalSize``);
- version states 1 ENABLED / 2 DISABLED / 3 DESTROYED; ``latest`` is the newest version *whatever its state*,
  so accessing a disabled/destroyed latest answers 400 FAILED_PRECONDITION (no fallback to an older version);
- 404 "Secret [..] not found or has no versions." for a missing secret or one with no versions;
- 403 PERMISSION_DENIED for secrets the test marks as denied (``deny``), 409 ALREADY_EXISTS on create,
  400 INVALID_ARGUMENT for bad secret ids (``[A-Za-z0-9_-]{1,255}``), payloads over 64 KiB and wrong CRC32C;
- error bodies ``{"error": {"code", "message", "status", "details"}}``;
- payloads carry ``dataCrc32c`` (int64 as a string); ``corrupt`` makes the fake return a wrong checksum;
- returned names use the project NUMBER (like the service), requests may use the id or the number;
- list filters: ``name:TEXT`` (substring), ``labels.KEY=VALUE``, ``labels.KEY:*``, ``state:ENABLED``
  (versions), joined with ``AND`` / ``OR`` (no parentheses, no NOT);
- fault injection: ``fail_next(status_code, count)`` answers the next requests with 429/503 etc.

Not emulated: authentication and IAM policies (no token is checked; ``deny`` stands in for IAM), etags,
replication/CMEK, rotation, topics, TTL/expire_time, version aliases, version destroy TTL, annotations limits,
``getIamPolicy``/``setIamPolicy``/``testIamPermissions``, ``enableManagedRotation``, locations API, gRPC,
quotas (only injected faults), the filter grammar beyond the forms above, eventual consistency.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.servers._fake_http import FakeHarness, LoopbackHttpFake, Reply

ENABLED, DISABLED, DESTROYED = 1, 2, 3
STATE_NAMES = {ENABLED: "ENABLED", DISABLED: "DISABLED", DESTROYED: "DESTROYED"}
STATUS_BY_CODE = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
SECRET_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
MAX_PAYLOAD = 64 * 1024

_PATH_RE = re.compile(
    r"^/v1/projects/(?P<project>[^/:]+)(?:/locations/(?P<location>[^/:]+))?/secrets"
    r"(?:/(?P<secret>[^/:]+)(?:/versions(?:/(?P<version>[^/:]+))?)?)?(?::(?P<verb>[A-Za-z]+))?$"
)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the service computes it (bitwise; payloads are small)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def project_number(project: str) -> str:
    if project.isdigit():
        return project
    return str(100000000000 + zlib.crc32(project.encode()) % 899999999999)


class ApiError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_BY_CODE.get(code, "UNKNOWN")
        self.retry_after: str | None = None


@dataclass
class Version:
    number: int
    data: bytes
    create_time: str
    state: int = ENABLED
    corrupt: bool = False


@dataclass
class Secret:
    parent: str  # projects/{number}[/locations/{l}]
    secret_id: str
    create_time: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    versions: list[Version] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.parent}/secrets/{self.secret_id}"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "createTime": self.create_time,
            "replication": {"automatic": {}},
            "etag": f'"{len(self.versions)}"',
        }
        if self.labels:
            body["labels"] = dict(self.labels)
        if self.annotations:
            body["annotations"] = dict(self.annotations)
        return body

    def version_json(self, version: Version) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": f"{self.name}/versions/{version.number}",
            "createTime": version.create_time,
            "state": version.state,
            "replicationStatus": {"automatic": {}},
            "etag": f'"{version.state}"',
            "clientSpecifiedPayloadChecksum": True,
        }
        if version.state == DESTROYED:
            body["destroyTime"] = version.create_time
        return body


class _Filter:
    """The subset of the list filter grammar the fake understands (see module docstring)."""

    def __init__(self, text: str) -> None:
        self.alternatives: list[list[tuple[str, str, str]]] = []
        if not text.strip():
            return
        for alternative in re.split(r"\s+OR\s+", text.strip()):
            terms = []
            for term in re.split(r"\s+AND\s+", alternative.strip()):
                match = re.fullmatch(r"\s*([A-Za-z_.]+[A-Za-z0-9_]*)\s*([:=])\s*(\"?)(.*?)\3\s*", term)
                if not match:
                    raise ApiError(400, f"Invalid filter: unsupported term {term!r}")
                terms.append((match.group(1), match.group(2), match.group(4)))
            self.alternatives.append(terms)

    def matches(self, fields: dict[str, Any]) -> bool:
        if not self.alternatives:
            return True
        return any(all(self._term(fields, *term) for term in terms) for terms in self.alternatives)

    @staticmethod
    def _term(fields: dict[str, Any], key: str, op: str, value: str) -> bool:
        if key.startswith("labels."):
            labels = fields.get("labels", {})
            label = key.split(".", 1)[1]
            if op == ":" and value == "*":
                return label in labels
            return label in labels and (labels[label] == value if op == "=" else value in labels[label])
        if key not in fields:
            raise ApiError(400, f"Invalid filter: unknown field {key!r}")
        actual = str(fields[key])
        return actual == value if op == "=" else value.lower() in actual.lower()


class GcpSecretManagerFake(LoopbackHttpFake):
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], Secret] = {}  # (parent, secret_id) -> Secret
        self.denied: set[str] = set()
        self.max_page_size = 25000  # the service caps pageSize; tests lower it to force paging
        self.requests: list[tuple[str, str]] = []
        self._faults: list[tuple[int, str | None]] = []
        self.lock = threading.RLock()
        self.serve("gcp-fake")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    # --- test controls -----------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.secrets.clear()
            self.denied.clear()
            self.requests.clear()
            self._faults.clear()
            self.max_page_size = 25000
        self.clear_slow()

    def fail_next(self, status_code: int, count: int = 1, retry_after: str | None = None) -> None:
        with self.lock:
            self._faults.extend([(status_code, retry_after)] * count)

    def deny(self, project: str, secret_id: str) -> None:
        """Answer 403 PERMISSION_DENIED for this secret (stands in for an IAM policy)."""
        self.denied.add(f"projects/{project_number(project)}/secrets/{secret_id}")

    def client(self) -> Any:
        """The official client, wired to this fake (the tests' 'native client')."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import secretmanager

        return secretmanager.SecretManagerServiceClient(
            credentials=AnonymousCredentials(),
            transport="rest",
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )

    def set_version_state(self, project: str, secret_id: str, version: int | str, state: int) -> None:
        with self.lock:
            secret = self.secrets[(f"projects/{project_number(project)}", secret_id)]
            found = self._find_version(secret, str(version))
            found.state = state
            if state == DESTROYED:
                found.data = b""

    def corrupt(self, project: str, secret_id: str) -> None:
        """Make the latest version's access answer carry a wrong CRC32C (a damaged payload)."""
        with self.lock:
            self.secrets[(f"projects/{project_number(project)}", secret_id)].versions[-1].corrupt = True

    def count(self, verb: str | None = None) -> int:
        """Requests seen so far, optionally only those whose path ends with ``:verb``."""
        with self.lock:
            if verb is None:
                return len(self.requests)
            return sum(1 for _, path in self.requests if path.endswith(f":{verb}"))

    # --- request handling ---------------------------------------------------------------------------

    def respond(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:
        try:
            return Reply(*self.handle(method, raw_path, body))
        except ApiError as exc:
            error = {"code": exc.code, "message": exc.message, "status": exc.status, "details": []}
            headers = {"Retry-After": exc.retry_after} if exc.retry_after else {}
            return Reply(exc.code, {"error": error}, headers)

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self.lock:
            self.requests.append((method, path))
            if self._faults:
                code, retry_after = self._faults.pop(0)
                error = ApiError(
                    code, "The service is currently unavailable." if code == 503 else "Quota exceeded."
                )
                error.retry_after = retry_after
                raise error
        match = _PATH_RE.match(path)
        if not match:
            raise ApiError(404, f"Requested entity was not found: {path}")
        try:
            payload = json.loads(body) if body else {}
        except json.JSONDecodeError:
            raise ApiError(400, "Invalid JSON payload received.") from None
        project, location = match["project"], match["location"]
        parent = f"projects/{project_number(project)}" + (f"/locations/{location}" if location else "")
        secret_id, version, verb = match["secret"], match["version"], match["verb"]
        with self.lock:
            if secret_id is None:
                if method == "POST" and verb is None:
                    return 200, self._create(parent, query, payload)
                if method == "GET" and verb is None:
                    return 200, self._list_secrets(parent, query)
                raise ApiError(404, f"Method not found: {method} {path}")
            if not SECRET_ID_RE.match(secret_id):
                raise ApiError(400, f"Invalid resource field value in the request: secret id {secret_id!r}")
            name = f"{parent}/secrets/{secret_id}"
            if name in self.denied:
                raise ApiError(
                    403,
                    f"Permission 'secretmanager.versions.access' denied for resource '{name}' "
                    "(or it may not exist).",
                )
            secret = self.secrets.get((parent, secret_id))
            if version is None and "/versions" not in path:
                return self._secret_op(method, verb, parent, secret_id, secret, query, payload)
            if secret is None:
                raise ApiError(404, f"Secret [{name}] not found or has no versions.")
            if version is None:
                if method == "GET" and verb is None:
                    return 200, self._list_versions(secret, query)
                raise ApiError(404, f"Method not found: {method} {path}")
            return self._version_op(method, verb, secret, version)

    def _create(self, parent: str, query: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
        secret_id = query.get("secretId", "")
        if not SECRET_ID_RE.match(secret_id):
            raise ApiError(400, "Invalid secret id: must match [A-Za-z0-9_-]{1,255}.")
        if "replication" not in payload:
            raise ApiError(400, "Secret.replication is required.")
        if (parent, secret_id) in self.secrets:
            raise ApiError(409, f"Secret [{parent}/secrets/{secret_id}] already exists.")
        secret = Secret(
            parent=parent,
            secret_id=secret_id,
            create_time=_now(),
            labels=dict(payload.get("labels") or {}),
            annotations=dict(payload.get("annotations") or {}),
        )
        self.secrets[(parent, secret_id)] = secret
        return secret.to_json()

    def _secret_op(
        self,
        method: str,
        verb: str | None,
        parent: str,
        secret_id: str,
        secret: Secret | None,
        query: dict[str, str],
        payload: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        name = f"{parent}/secrets/{secret_id}"
        if secret is None:
            raise ApiError(404, f"Secret [{name}] not found.")
        if verb == "addVersion" and method == "POST":
            return 200, self._add_version(secret, payload)
        if verb is not None:
            raise ApiError(404, f"Method not found: {method} {name}:{verb}")
        if method == "GET":
            return 200, secret.to_json()
        if method == "DELETE":
            del self.secrets[(parent, secret_id)]
            return 200, {}
        if method == "PATCH":
            mask = [m.strip() for m in query.get("updateMask", "").split(",") if m.strip()]
            if not mask:
                raise ApiError(400, "update_mask is required.")
            for item in mask:
                if item not in ("labels", "annotations"):
                    raise ApiError(400, f"update_mask path {item!r} is not supported.")
                setattr(secret, item, dict(payload.get(item) or {}))
            return 200, secret.to_json()
        raise ApiError(404, f"Method not found: {method} {name}")

    def _add_version(self, secret: Secret, payload: dict[str, Any]) -> dict[str, Any]:
        data_b64 = (payload.get("payload") or {}).get("data", "")
        try:
            data = base64.b64decode(data_b64, validate=True)
        except ValueError:
            raise ApiError(400, "Invalid value at 'payload.data': not base64.") from None
        if len(data) > MAX_PAYLOAD:
            raise ApiError(400, "Secret payload data length must be less than or equal to 65536 bytes.")
        checksum = (payload.get("payload") or {}).get("dataCrc32c")
        if checksum is not None and int(checksum) != crc32c(data):
            raise ApiError(400, "Checksum mismatch: the payload's data_crc32c does not match the data.")
        version = Version(number=len(secret.versions) + 1, data=data, create_time=_now())
        secret.versions.append(version)
        return secret.version_json(version)

    @staticmethod
    def _find_version(secret: Secret, version: str) -> Version:
        if version == "latest":
            if not secret.versions:
                raise ApiError(404, f"Secret [{secret.name}] not found or has no versions.")
            return secret.versions[-1]
        if not version.isdigit() or int(version) < 1:
            raise ApiError(400, f"Invalid version id {version!r}.")
        if int(version) > len(secret.versions):
            raise ApiError(404, f"Secret Version [{secret.name}/versions/{version}] not found.")
        return secret.versions[int(version) - 1]

    def _version_op(self, method: str, verb: str | None, secret: Secret, version_id: str) -> tuple[int, dict]:
        version = self._find_version(secret, version_id)
        vname = f"{secret.name}/versions/{version.number}"
        if method == "GET" and verb == "access":
            if version.state != ENABLED:
                raise ApiError(
                    400,
                    f"Secret Version [{vname}] is in {STATE_NAMES[version.state]} state.",
                    "FAILED_PRECONDITION",
                )
            checksum = crc32c(version.data) ^ (1 if version.corrupt else 0)
            return 200, {
                "name": vname,
                "payload": {"data": base64.b64encode(version.data).decode(), "dataCrc32c": str(checksum)},
            }
        if method == "GET" and verb is None:
            return 200, secret.version_json(version)
        if method == "POST" and verb in ("disable", "enable", "destroy"):
            if version.state == DESTROYED:
                raise ApiError(400, f"Secret Version [{vname}] is in DESTROYED state.", "FAILED_PRECONDITION")
            version.state = {"disable": DISABLED, "enable": ENABLED, "destroy": DESTROYED}[verb]
            if version.state == DESTROYED:
                version.data = b""
            return 200, secret.version_json(version)
        raise ApiError(404, f"Method not found: {method} {vname}")

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], key: str) -> dict[str, Any]:
        try:
            size = min(int(query.get("pageSize") or self.max_page_size), self.max_page_size)
            start = int(query.get("pageToken") or 0)
        except ValueError:
            raise ApiError(400, "Invalid page token or page size.") from None
        if size < 1 or start < 0 or start > len(items):
            raise ApiError(400, "Invalid page token or page size.")
        page = items[start : start + size]
        body: dict[str, Any] = {key: page, "totalSize": len(items)}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        return body

    def _list_secrets(self, parent: str, query: dict[str, str]) -> dict[str, Any]:
        flt = _Filter(query.get("filter", ""))
        items = [
            s.to_json()
            for (p, _), s in sorted(self.secrets.items())
            if p == parent
            and flt.matches({"name": s.secret_id, "labels": s.labels, "create_time": s.create_time})
        ]
        return self._page(items, query, "secrets")

    def _list_versions(self, secret: Secret, query: dict[str, str]) -> dict[str, Any]:
        flt = _Filter(query.get("filter", ""))
        items = [
            secret.version_json(v)
            for v in reversed(secret.versions)  # newest first, like the service
            if flt.matches({"name": str(v.number), "state": STATE_NAMES[v.state]})
        ]
        return self._page(items, query, "versions")


# --- fixtures ---------------------------------------------------------------------------------------

_projects = itertools.count(1)


@pytest.fixture(scope="session")
def gcp_fake() -> Any:
    fake = GcpSecretManagerFake().start()
    yield fake
    fake.stop()


class GcpSecretManagerHarness(FakeHarness):
    """Contract-suite harness: a fresh project per harness, native writes through the official client."""

    fake: GcpSecretManagerFake

    def __init__(self, fake: GcpSecretManagerFake) -> None:
        super().__init__(fake)
        self.project = f"credpath-test-{next(_projects)}"

    def backend_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        from google.auth.credentials import AnonymousCredentials

        base: dict[str, Any] = {
            "project_id": self.project,
            "credentials": AnonymousCredentials(),
            "transport": "rest",
            "client_options": {"api_endpoint": self.fake.endpoint},
        }
        base.update(kwargs)
        return base

    def make_backend(self, **kwargs: Any) -> Any:
        from credpath.backends.gcp_secret_manager import SecretManagerBackend

        return SecretManagerBackend(**self.backend_kwargs(**kwargs))

    secret_id = FakeHarness.secret_name  # Secret Manager calls names ids

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        self.seed_secret(self.secret_id(kind, key), raw_value)

    def seed_secret(self, secret_id: str, raw_value: str | bytes) -> None:
        from google.api_core.exceptions import AlreadyExists, Conflict

        parent = f"projects/{self.project}"
        try:
            self.client.create_secret(
                request={
                    "parent": parent,
                    "secret_id": secret_id,
                    "secret": {"replication": {"automatic": {}}},
                }
            )
        except (AlreadyExists, Conflict):
            pass
        data = raw_value.encode() if isinstance(raw_value, str) else raw_value
        self.client.add_secret_version(
            request={
                "parent": f"{parent}/secrets/{secret_id}",
                "payload": {"data": data, "data_crc32c": crc32c(data)},
            }
        )


@pytest.fixture
def gcp_secret_manager_harness(gcp_fake: GcpSecretManagerFake) -> GcpSecretManagerHarness:
    gcp_fake.reset()
    return GcpSecretManagerHarness(gcp_fake)
