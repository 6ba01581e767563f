"""A fake of the Kubernetes core/v1 Secrets API on loopback HTTP, for the official ``kubernetes`` client.

Drive it with ``kubernetes.client.Configuration(host=fake.endpoint)`` and the bearer token ``fake.token``
(``fake.client()`` builds a ``CoreV1Api`` so). Follows the published API reference (``Secret v1``,
``SecretList``, ``Status``, "API Concepts": retrieving large results sets in chunks, label selectors):

- ``GET /api/v1/namespaces/{ns}/secrets/{name}``: the Secret, or 404 ``Status`` (reason ``NotFound``,
  message ``secrets "{name}" not found``, details ``{name, kind: "secrets"}``);
- ``GET /api/v1/namespaces/{ns}/secrets``: a ``SecretList`` (items in name order, as etcd keys sort;
  items carry no ``kind``/``apiVersion``, as the server sends them), ``labelSelector`` with the equality
  forms ``k=v``, ``k==v``, ``k!=v``, the set forms ``k in (a,b)``, ``k notin (a,b)`` and existence ``k`` /
  ``!k``, terms joined by ``,`` (AND); ``limit`` and ``continue`` paging (``metadata.continue`` while
  more items remain, ``metadata.remainingItemCount``); a malformed selector or continue token is 400
  ``BadRequest``, and so is a selector value that is no valid label value (at most 63 characters,
  ``[A-Za-z0-9._-]``, starting and ending with a letter or digit, or empty), as the server validates it;
  ``resourceVersion`` (``""``: the latest, consistent read; ``"0"``: any, served from the watch cache;
  a number: not older than it), a non-numeric one is 400; the fake keeps no history and no cache, so
  every form answers the current state; ``list_queries`` records each LIST's query parameters;
- ``POST .../secrets``: create; 409 ``AlreadyExists``; 422 ``Invalid`` for a name that is not a DNS-1123
  subdomain or a data key outside ``[-._a-zA-Z0-9]+``; 400 for a body namespace that differs from the path's
  or ``data`` that is not base64; ``stringData`` is merged into ``data`` (base64) and not kept, as the server
  does; ``type`` defaults to ``Opaque``; ``metadata.uid``, ``creationTimestamp``, ``resourceVersion`` are set;
- ``PUT .../secrets/{name}``: replace; 404 if absent; 400 if the body names another Secret; 409 ``Conflict``
  if the body carries a ``resourceVersion`` that is not the current one (optimistic concurrency);
- ``DELETE .../secrets/{name}``: a ``Status`` with ``status: Success`` and ``details``; 404 if absent;
- ``resourceVersion`` is one counter for the whole fake, incremented on every write (like etcd's revision);
- authentication: every request needs ``Authorization: Bearer <token>``, else 401 ``Unauthorized``;
- authorization: ``deny(namespace, name=None, verb=None)`` answers 403 ``Forbidden`` with the server's
  message shape (``secrets "x" is forbidden: User "..." cannot get resource "secrets" ...``), standing in
  for RBAC (``name=None``: every Secret of the namespace and the list; ``verb=None``: every verb);
- fault injection: ``fail_next(status, count, retry_after=None)`` answers the next requests with that
  status (a ``Status`` body; ``Retry-After`` if given); ``count()`` / ``requests`` record what was asked.

- watch (API Concepts, "Efficient detection of changes"): ``GET .../secrets?watch=true`` (or ``1``) with
  ``resourceVersion=R`` streams, chunked, one JSON event per line (``{"type": "ADDED"|"MODIFIED"|"DELETED",
  "object": <Secret>}``) for every write after ``R`` (``R`` absent or ``"0"``: from now), until
  ``timeoutSeconds`` (default 1800) or the fake stops; an ``R`` older than the kept history
  (``compact()`` drops it, as etcd compaction does) gets one ``ERROR`` event whose object is a ``Status``
  with code 410, reason ``Expired`` ("too old resource version"), and the stream ends, as the server
  answers a watch; ``allowWatchBookmarks=true`` adds a ``BOOKMARK`` event (an object with only
  ``metadata.resourceVersion``) every ``bookmark_interval`` seconds; ``watch_requests`` counts watches;
  ``drop_watches()`` ends every open stream (a connection lost); ``labelSelector`` filters the events as
  the watch cache does: a Secret that comes to match is ``ADDED``, one that stops matching is ``DELETED``
  (with its previous object), one that matched neither before nor after is not sent;

Not emulated: other resources and API groups, discovery (``/api``, ``/apis``, ``/version``),
``fieldSelector``, ``resourceVersion`` on GET of one Secret, ``resourceVersionMatch``, ``PATCH`` (all patch
types), ``deletecollection``, ``dryRun``, ``fieldManager``/managed fields, server-side apply,
``propagationPolicy``, finalizers and graceful deletion, ``immutable`` Secrets, Secret types other than stored
as given (no validation of ``kubernetes.io/tls`` etc.), the 1 MiB object size limit, the continue token's
expiry (410 ``Expired``) and the consistent snapshot across pages (pages are cut from the current state), TLS,
client certificates, other authentication methods, RBAC itself (only ``deny``), admission, audit, API priority
and fairness (429 only when injected), Protobuf, ``Table`` output, ``pretty``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from tests.servers._fake_http import LoopbackHttpFake, Reply

NAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DATA_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_PATH_RE = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/secrets(?:/(?P<name>[^/]+))?/?$")
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}
LABEL_VALUE_RE = re.compile(r"^(?=.{0,63}$)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}


class ApiError(Exception):
    def __init__(
        self, code: int, message: str, reason: str | None = None, details: dict | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details


def status_body(code: int, message: str, reason: str, details: dict | None = None) -> dict[str, Any]:
    """A metav1.Status, as the API server sends with every error (and a successful DELETE)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    if code < 400:
        del body["message"], body["reason"]
    return body


class _Selector:
    """The label selector grammar of the reference (see the module docstring); ',' means AND."""

    _SET = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
    _EQ = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
    _EXISTS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*$")
    _EQ_ANY = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)")

    def __init__(self, text: str) -> None:
        self.terms: list[tuple[str, str, tuple[str, ...]]] = []
        for term in _split_terms(text):
            if match := self._SET.match(term):
                values = tuple(v.strip() for v in match.group(3).split(",") if v.strip())
                self.terms.append((match.group(1), match.group(2), values))
            elif match := self._EQ.match(term):
                op = "!=" if match.group(2) == "!=" else "="
                self.terms.append((match.group(1), op, (match.group(3),)))
            elif self._EQ_ANY.match(term):
                raise ApiError(400, f"unable to parse requirement: invalid label value in {term!r}")
            elif match := self._EXISTS.match(term):
                self.terms.append((match.group(2), "!" if match.group(1) else "exists", ()))
            else:
                raise ApiError(400, f"unable to parse requirement: {term!r}")

    def matches(self, labels: dict[str, str]) -> bool:
        for key, op, values in self.terms:
            present = key in labels
            if op == "exists" and not present:
                return False
            if op == "!" and present:
                return False
            if op == "=" and labels.get(key) != values[0]:
                return False
            if op == "!=" and present and labels[key] == values[0]:
                return False
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and present and labels[key] in values:
                return False
        return True


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b`` is two terms)."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip() or terms:
        terms.append(current)
    return [t for t in terms if t.strip()]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubernetesSecretsFake(LoopbackHttpFake):
    methods = ("GET", "POST", "PUT", "DELETE", "PATCH")
    content_type = "application/json"

    def __init__(self, token: str = "fake-token-k8s") -> None:
        self.token = token
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.denied: set[tuple[str, str | None, str | None]] = set()
        self.requests: list[tuple[str, str]] = []
        self.list_queries: list[dict[str, str]] = []
        self.max_page = 500  # a server-side cap on limit, so tests can force paging without asking
        self._faults: list[tuple[int, float | None]] = []
        self._revision = itertools.count(1000)
        self.lock = threading.RLock()
        #: (revision, namespace, event type, the object) of every write, oldest first; ``compact()`` drops
        #: them up to a revision. Watchers wait on ``changed``.
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted = 0
        self.changed = threading.Condition(self.lock)
        self.watch_requests = 0
        self.bookmark_interval = 1.0
        self._generation = 0  # bumped by drop_watches(): open streams end
        self.serve("kubernetes-fake")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    # --- test controls -----------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.secrets.clear()
            self.denied.clear()
            self.requests.clear()
            self.list_queries.clear()
            self._faults.clear()
            self.history.clear()
            self.compacted = 0
            self.watch_requests = 0
            self._generation += 1
            self.changed.notify_all()
            self.max_page = 500

    def compact(self) -> None:
        """Forget the history up to now: a watch resuming from an older resourceVersion gets 410."""
        with self.lock:
            self.compacted = int(next(self._revision))
            self.history.clear()

    def drop_watches(self) -> None:
        """End every open watch stream (as a lost connection or an API server restart would)."""
        with self.lock:
            self._generation += 1
            self.changed.notify_all()

    def _record(self, namespace: str, kind: str, secret: dict[str, Any]) -> None:
        with self.lock:
            self.history.append(
                (int(secret["metadata"]["resourceVersion"]), namespace, kind, json.loads(json.dumps(secret)))
            )
            del self.history[:-10000]
            self.changed.notify_all()

    def _selected(
        self, selector: _Selector, revision: int, namespace: str, kind: str, obj: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """An event as a watch with ``selector`` sees it; ("", obj) when it is not sent."""
        name = obj["metadata"]["name"]
        with self.lock:
            before = [
                o
                for r, ns, k, o in self.history
                if r < revision and ns == namespace and o["metadata"]["name"] == name
            ]
        previous = before[-1] if before and kind != "ADDED" else None
        was = previous is not None and selector.matches(previous["metadata"].get("labels") or {})
        now = selector.matches(obj["metadata"].get("labels") or {})
        if kind == "DELETED":
            return ("DELETED", obj) if now or was else ("", obj)
        if now:
            return ("MODIFIED" if was else "ADDED", obj)
        return ("DELETED", previous) if was and previous is not None else ("", obj)

    def serve(self, thread_name: str, tls: Any = None) -> None:
        super().serve(thread_name, tls)
        base = self.server.RequestHandlerClass
        fake = self

        class WatchHandler(base):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                if query.get("watch") in ("true", "1"):
                    fake._watch(self, unquote(parts.path), query)
                else:
                    base.do_GET(self)

        self.server.RequestHandlerClass = WatchHandler

    def _watch(self, handler: Any, path: str, query: dict[str, str]) -> None:
        """Stream the events of one watch (see the module docstring)."""
        try:
            with self.lock:
                self.requests.append(("WATCH", path))
                self.watch_requests += 1
            if (handler.headers.get("Authorization") or "") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized")
            match = _PATH_RE.match(path)
            if not match or match["name"]:
                raise ApiError(404, "the server could not find the requested resource")
            namespace = match["ns"]
            self._authorize(namespace, None, "watch")
            selector = _Selector(query.get("labelSelector", "")) if query.get("labelSelector") else None
            since = query.get("resourceVersion") or "0"
            if not since.isdigit():
                raise ApiError(400, f"invalid resource version: {since!r}")
        except ApiError as exc:
            data = json.dumps(status_body(exc.code, exc.message, exc.reason, exc.details)).encode()
            handler.send_response(exc.code)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(event: dict[str, Any]) -> None:
            line = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            handler.wfile.flush()

        ends = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        with self.lock:
            generation = self._generation
            seen = int(since) if since != "0" else int(next(self._revision))
            too_old = since != "0" and seen < self.compacted
        try:
            if too_old:
                send(
                    {
                        "type": "ERROR",
                        "object": status_body(
                            410, f"too old resource version: {since} ({self.compacted})", "Expired"
                        ),
                    }
                )
                return
            next_bookmark = time.monotonic() + self.bookmark_interval
            while not self.stopped.is_set():
                with self.lock:
                    events = [e for e in self.history if e[0] > seen and e[1] == namespace]
                    if not events and generation == self._generation:
                        self.changed.wait(0.2)
                        events = [e for e in self.history if e[0] > seen and e[1] == namespace]
                    dropped = generation != self._generation
                for revision, _ns, kind, obj in events:
                    seen = max(seen, revision)
                    if selector is not None:
                        kind, obj = self._selected(selector, revision, namespace, kind, obj)
                        if not kind:
                            continue
                    send({"type": kind, "object": obj})
                if dropped or time.monotonic() >= ends:
                    return
                if bookmarks and time.monotonic() >= next_bookmark:
                    next_bookmark = time.monotonic() + self.bookmark_interval
                    send(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": "Secret",
                                "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(seen)},
                            },
                        }
                    )
        except OSError:
            return
        finally:
            try:
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
            except OSError:
                pass

    def deny(self, namespace: str, name: str | None = None, verb: str | None = None) -> None:
        """403 to ``verb`` (get, list, create, update, delete; None: any) on Secret ``name`` (None: any)."""
        self.denied.add((namespace, name, verb))

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        with self.lock:
            self._faults.extend([(status, retry_after)] * count)

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, _ in self.requests if method is None or m == method)

    def client(self) -> Any:
        """The official client's CoreV1Api, wired to this fake (the tests' native client)."""
        from kubernetes import client

        configuration = client.Configuration(host=self.endpoint)
        # Both keys: kubernetes 36.0.x looks the prefix up by "BearerToken" only.
        configuration.api_key = {"authorization": self.token, "BearerToken": self.token}
        configuration.api_key_prefix = {"authorization": "Bearer", "BearerToken": "Bearer"}
        return client.CoreV1Api(client.ApiClient(configuration))

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (with base64 ``data``), for assertions."""
        with self.lock:
            return self.secrets.get((namespace, name))

    # --- request handling ---------------------------------------------------------------------------

    def respond(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:
        try:
            status, payload = self.handle(method, raw_path, headers, body)
            return Reply(status, payload)
        except ApiError as exc:
            extra: dict[str, str] = {}
            if exc.code in (429, 503) and getattr(exc, "retry_after", None) is not None:
                extra["Retry-After"] = f"{exc.retry_after:g}"  # type: ignore[attr-defined]
            return Reply(exc.code, status_body(exc.code, exc.message, exc.reason, exc.details), extra)

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self.lock:
            self.requests.append((method, path))
            if self._faults:
                code, retry_after = self._faults.pop(0)
                error = ApiError(code, "injected fault")
                error.retry_after = retry_after  # type: ignore[attr-defined]
                raise error
        if (headers.get("Authorization") or "") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized")
        match = _PATH_RE.match(path)
        if not match:
            raise ApiError(404, "the server could not find the requested resource")
        namespace, name = match["ns"], match["name"]
        verb = _VERBS.get(method, method.lower())
        if name is None and method == "GET":
            verb = "list"
        self._authorize(namespace, name, verb)
        with self.lock:
            if name is None:
                if method == "GET":
                    return 200, self._list(namespace, query)
                if method == "POST":
                    return 201, self._create(namespace, _json(body))
                raise ApiError(405, f"{method} is not supported on the collection", "MethodNotAllowed")
            if method == "GET":
                return 200, self._get(namespace, name)
            if method == "PUT":
                return 200, self._replace(namespace, name, _json(body))
            if method == "DELETE":
                return 200, self._delete(namespace, name)
            raise ApiError(405, f"{method} is not emulated", "MethodNotAllowed")

    def _authorize(self, namespace: str, name: str | None, verb: str) -> None:
        for ns, denied_name, denied_verb in self.denied:
            if ns != namespace or (denied_verb is not None and denied_verb != verb):
                continue
            if denied_name is None or denied_name == name:
                target = f'secrets "{name}"' if name else "secrets"
                raise ApiError(
                    403,
                    f'{target} is forbidden: User "system:serviceaccount:{namespace}:credpath" cannot {verb} '
                    f'resource "secrets" in API group "" in the namespace "{namespace}"',
                    details={"name": name, "kind": "secrets"} if name else {"kind": "secrets"},
                )

    @staticmethod
    def _not_found(name: str) -> ApiError:
        return ApiError(404, f'secrets "{name}" not found', details={"name": name, "kind": "secrets"})

    def _get(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.secrets.get((namespace, name))
        if found is None:
            raise self._not_found(name)
        return json.loads(json.dumps(found))

    def _validated(self, namespace: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("kind", "Secret") != "Secret":
            raise ApiError(400, "the body is not a Secret")
        metadata = dict(body.get("metadata") or {})
        name = metadata.get("name") or ""
        if metadata.get("namespace") not in (None, namespace):
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent")
        if not NAME_RE.match(name):
            raise ApiError(
                422,
                f'Secret "{name}" is invalid: metadata.name: Invalid value: "{name}": a lowercase RFC 1123 '
                "subdomain must consist of lower case alphanumeric characters, '-' or '.'",
                details={"name": name, "kind": "Secret"},
            )
        data = dict(body.get("data") or {})
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise ApiError(400, f"data[{key}]: illegal base64 data") from None
        for key, value in (body.get("stringData") or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()  # stringData wins, as documented
        for key in data:
            if not DATA_KEY_RE.match(key):
                raise ApiError(
                    422,
                    f'Secret "{name}" is invalid: data[{key}]: Invalid value: a valid config key must '
                    "consist of alphanumeric characters, '-', '_' or '.'",
                    details={"name": name, "kind": "Secret"},
                )
        metadata["namespace"] = namespace
        return {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": metadata,
            "type": body.get("type") or "Opaque",
            "data": data,
        }

    def _create(self, namespace: str, body: Any) -> dict[str, Any]:
        secret = self._validated(namespace, body)
        name = secret["metadata"]["name"]
        if (namespace, name) in self.secrets:
            raise ApiError(
                409, f'secrets "{name}" already exists', "AlreadyExists", {"name": name, "kind": "secrets"}
            )
        secret["metadata"].update(
            uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=str(next(self._revision))
        )
        self.secrets[(namespace, name)] = secret
        self._record(namespace, "ADDED", secret)
        return json.loads(json.dumps(secret))

    def _replace(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        current = self.secrets.get((namespace, name))
        if current is None:
            raise self._not_found(name)
        secret = self._validated(namespace, body)
        if secret["metadata"]["name"] != name:
            raise ApiError(400, "the name of the object does not match the name on the URL")
        wanted = secret["metadata"].get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on secrets "{name}": the object has been modified; please '
                "apply your changes to the latest version and try again",
                "Conflict",
                {"name": name, "kind": "secrets"},
            )
        secret["metadata"].update(
            uid=current["metadata"]["uid"],
            creationTimestamp=current["metadata"]["creationTimestamp"],
            resourceVersion=str(next(self._revision)),
        )
        self.secrets[(namespace, name)] = secret
        self._record(namespace, "MODIFIED", secret)
        return json.loads(json.dumps(secret))

    def _delete(self, namespace: str, name: str) -> dict[str, Any]:
        current = self.secrets.pop((namespace, name), None)
        if current is None:
            raise self._not_found(name)
        gone = json.loads(json.dumps(current))
        gone["metadata"]["resourceVersion"] = str(next(self._revision))
        self._record(namespace, "DELETED", gone)
        return status_body(200, "", "", {"name": name, "kind": "secrets", "uid": current["metadata"]["uid"]})

    def _list(self, namespace: str, query: dict[str, str]) -> dict[str, Any]:
        self.list_queries.append(dict(query))
        selector = _Selector(query.get("labelSelector", ""))
        for _key, _op, values in selector.terms:
            bad = [v for v in values if not LABEL_VALUE_RE.match(v)]
            if bad:
                raise ApiError(
                    400,
                    f"unable to parse requirement: values[0]: Invalid value: {bad[0]!r}: a valid label must "
                    "be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
                    "start and end with an alphanumeric character",
                )
        version = query.get("resourceVersion", "")
        if version and not version.isdigit():
            raise ApiError(400, f"invalid resource version: {version!r}")
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise ApiError(400, "limit must be an integer") from None
        start = ""
        if query.get("continue"):
            try:
                start = json.loads(base64.urlsafe_b64decode(query["continue"]))["start"]
            except (binascii.Error, ValueError, KeyError, TypeError):
                raise ApiError(
                    400, "continue key is not valid: incorrect encoded start resourceVersion"
                ) from None
        names = sorted(n for (ns, n) in self.secrets if ns == namespace and n > start)
        items = []
        for name in names:
            secret = self.secrets[(namespace, name)]
            if selector.matches(secret["metadata"].get("labels") or {}):
                item = json.loads(json.dumps(secret))
                del item["kind"], item["apiVersion"]  # list items come without them
                items.append(item)
        page_size = min(limit, self.max_page) if limit > 0 else self.max_page
        metadata: dict[str, Any] = {"resourceVersion": str(next(self._revision))}
        if len(items) > page_size:
            last = items[page_size - 1]["metadata"]["name"]
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps({"start": last}).encode()).decode()
            metadata["remainingItemCount"] = len(items) - page_size
            items = items[:page_size]
        return {"kind": "SecretList", "apiVersion": "v1", "metadata": metadata, "items": items}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None


# --- fixtures ---------------------------------------------------------------------------------------

_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def kubernetes_fake() -> Any:
    fake = KubernetesSecretsFake().start()
    yield fake
    fake.stop()


class KubernetesSecretsHarness:
    """Contract-suite harness: a fresh namespace per harness; native writes through the official client,
    shaped as an operator would create them (``kubectl create secret generic`` plus the kind label)."""

    connections_prefix = "airflow-connections"
    variables_prefix = "airflow-variables"
    config_prefix = "airflow-config"

    def __init__(self, fake: KubernetesSecretsFake) -> None:
        self.fake = fake
        self.namespace = f"credpath-test-{next(_namespaces)}"
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.fake.client()
        return self._client

    def backend_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "namespace": self.namespace,
            "host": self.fake.endpoint,
            "token": self.fake.token,
        }
        base.update(kwargs)
        return base

    def make_backend(self, **kwargs: Any) -> Any:
        from credpath.backends.kubernetes_secrets import KubernetesSecretsBackend

        return KubernetesSecretsBackend(**self.backend_kwargs(**kwargs))

    def secret_name(self, kind: str, key: str) -> str:
        prefix = {"connection": self.connections_prefix, "variable": self.variables_prefix}.get(
            kind, self.config_prefix
        )
        return f"{prefix}-{key}".lower().replace("_", "-")

    def api_calls(self) -> int:
        return self.fake.count()

    def seed(self, kind: str, key: str, raw_value: str, *, labelled: bool = True) -> None:
        if kind not in ("connection", "variable", "config"):
            raise ValueError(f"unknown kind {kind!r}")
        if kind == "connection":
            stripped = raw_value.strip()
            if stripped.startswith("{"):
                fields = json.loads(stripped)  # malformed JSON cannot be split into keys: ValueError
                data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
            else:
                data = {"conn_uri": raw_value}
        else:
            data = {"value": raw_value}
        self.seed_secret(
            self.secret_name(kind, key), data, labels={"credpath.io/kind": kind} if labelled else {}
        )

    def seed_secret(
        self, name: str, string_data: dict[str, str], labels: dict[str, str] | None = None
    ) -> None:
        from kubernetes import client

        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels or None), string_data=string_data
        )
        self.client.create_namespaced_secret(self.namespace, body)


@pytest.fixture
def kubernetes_secrets_harness(kubernetes_fake: KubernetesSecretsFake) -> KubernetesSecretsHarness:
    kubernetes_fake.reset()
    return KubernetesSecretsHarness(kubernetes_fake)


class KubernetesLabelsHarness(KubernetesSecretsHarness):
    """Contract-suite harness for the label-based backend (the cncf.kubernetes provider's layout): each
    Secret gets a name unrelated to its id, as External Secrets Operator names them, the id in the kind's
    label and the value under ``value``."""

    labels = {
        "connection": "airflow.apache.org/connection-id",
        "variable": "airflow.apache.org/variable-key",
        "config": "airflow.apache.org/config-key",
    }

    def make_backend(self, **kwargs: Any) -> Any:
        from credpath.backends.kubernetes_labels import KubernetesLabelSecretsBackend

        return KubernetesLabelSecretsBackend(**self.backend_kwargs(**kwargs))

    def seed(self, kind: str, key: str, raw_value: str, *, labelled: bool = True) -> None:
        if kind not in self.labels:
            raise ValueError(f"unknown kind {kind!r}")
        self.seed_labelled(kind, key, {"value": raw_value})

    def seed_labelled(
        self,
        kind: str,
        key: str,
        string_data: dict[str, str] | None,
        *,
        extra_labels: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        """A Secret labelled ``<kind label>=key`` (plus ``extra_labels``); returns its name."""
        from kubernetes import client

        name = name or f"es-{uuid.uuid4().hex[:12]}"
        labels = {self.labels[kind]: key, **(extra_labels or {})}
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels), string_data=string_data or None
        )
        self.client.create_namespaced_secret(self.namespace, body)
        return name


@pytest.fixture
def kubernetes_labels_harness(kubernetes_fake: KubernetesSecretsFake) -> KubernetesLabelsHarness:
    kubernetes_fake.reset()
    return KubernetesLabelsHarness(kubernetes_fake)
