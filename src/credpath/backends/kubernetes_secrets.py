"""Kubernetes Secrets backend: connections, variables and config as Secrets in one namespace.

Written against credpath's declared backend contract only (``protocol.BaseBackend``, with the prefix stores'
one naming rule, ``backends._naming``), on the official ``kubernetes`` client (its ``ApiClient``:
kubeconfig, in-cluster and token auth, TLS, connection pool), imported on first use, never by
``import credpath``.

Naming. A Secret's name is ``<prefix><sep><id>`` mapped to a DNS-1123 subdomain (what Kubernetes accepts:
lower case letters, digits, ``-`` and ``.``, starting and ending with a letter or digit, at most 253
characters): letters are lower-cased and every ``_`` becomes ``-`` (as Key Vault maps ``_``). So ``my_db``,
``MY_DB`` and ``my-db`` name the same Secret, ``airflow-connections-my-db``. An id whose name cannot be a
Secret name (``a/b``, ``x_``) is a miss on read, without a call, and a :class:`ConfigError` on write. An empty
prefix means the bare id; a prefix set to ``None`` switches that kind off.

Secret data (base64 in ``data``, as the API keeps it), the way credpath maps Vault secrets:

- connection: key ``conn_uri`` (the Airflow URI; a ``description`` key beside it is kept), or the JSON fields
  as keys (``conn_type``, ``host``, ``login``, ``password``, ``schema``, ``port``, ``extra`` (JSON text),
  ``description``). Writes use the URI form unless ``serialization="json"``.
- variable and config: key ``value``; a Secret without it is an error naming the Secret and its keys.

Labels and listing. Secrets credpath writes carry ``app.kubernetes.io/managed-by: credpath`` and
``credpath.io/kind: connection|variable|config``, and the annotation ``credpath.io/id`` with the original id
(so listing gives ``my_db`` back, not ``my-db``). Reads by id need no label: a Secret made with
``kubectl create secret generic airflow-connections-my-db --from-literal=conn_uri=...`` is found. Listing,
prefix prefetch and migration see only Secrets with the kind label (``kubectl label secret NAME
credpath.io/kind=connection``): one LIST per page with ``labelSelector``, ``limit`` and ``continue``. Batch
reads (``get_conn_values``/``get_variables``) list once and GET only the ids the labelled listing lacks, so
an unlabelled Secret is never taken for a miss.

Writes: ``overwrite=False`` creates (POST; 409 AlreadyExists -> :class:`ConfigError`); ``overwrite=True``
creates, and on 409 replaces the whole Secret (PUT: labels and annotations other than credpath's are not
kept). Deletes return False on 404.

Kwargs: ``namespace`` (default: the pod's namespace in a cluster, else the kubeconfig context's, else
``default``), ``connections_prefix``/``variables_prefix``/``config_prefix`` (Airflow's ``airflow-*``
defaults), ``sep`` (``-``); how to reach the API server, in this order: ``host`` (+ ``token``, a bearer
token; for tests and proxies), ``in_cluster=True`` (the pod's service account), else ``kubeconfig``
(a path; default ``~/.kube/config``) and ``context``; ``in_cluster=None`` (default) means in-cluster when
``KUBERNETES_SERVICE_HOST`` is set. ``verify_ssl`` (default true), ``ssl_ca_cert`` (a CA bundle path),
``timeout`` (seconds for a whole call, retries of 429/5xx and connection failures included; default 30),
``page_size`` (``limit`` per LIST page; default 500), ``watch`` (default false: one watch of the
namespace's Secrets per process, whose events drop changed ids from the process and shared cache tiers;
README "Rotation"), plus the common options (lookup patterns, ``connection_format``).

Errors: 401 and 403 raise :class:`AccessDenied`; 404 is a miss; 429 and 5xx are retried within the deadline
and then raise :class:`BackendError`; a call that runs out of time raises :class:`BackendTimeout`. Messages
name the backend, the Secret and the HTTP status, never a value.

Teams (Airflow 3.2+ multi-team): reads accept ``team_name`` and do not scope by it. The cncf.kubernetes
provider's backend finds Secrets by label and scopes teams by a label (credpath's ``kubernetes-labels``,
:mod:`credpath.backends.kubernetes_labels`); for names, the Kubernetes unit of isolation is the namespace,
enforced by RBAC: give each team its own backend on its own namespace, rather than a name convention any
reader could step outside.

Works with the kubernetes client before 37 too (the version the cncf.kubernetes provider pins), whose
generated ``ApiClient.call_api`` raises on a non-2xx answer and reads the bearer prefix by another key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar, Unpack

from credpath._deadlines import (
    Deadline,
    Retryable,
    RetryPolicy,
    call_with_deadline,
    parse_retry_after,
    retry_call,
)
from credpath._lookup.trace import ChangeListener, note_version
from credpath._settings import COUNT, TIMEOUT, check_number
from credpath.backends import _keymap
from credpath.backends._naming import KeyNaming, PrefixNamedBackend
from credpath.backends._per_process import PerProcess
from credpath.backends._status import Row, StatusTable
from credpath.errors import AccessDenied, BackendError, BackendTimeout
from credpath.protocol import (
    KINDS,
    PREFIX_SETTINGS,
    BackendOptions,
    Capability,
    Kind,
    Serialization,
    iter_ids,
)

if TYPE_CHECKING:
    from credpath.model import Connection

__all__ = [
    "ANSWERED_STATUSES",
    "ID_ANNOTATION",
    "KIND_LABEL",
    "MANAGED_BY_LABEL",
    "STATUS_TABLE",
    "KubernetesSecretsBackend",
]


log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
KIND_LABEL = "credpath.io/kind"
ID_ANNOTATION = "credpath.io/id"
#: DNS-1123 subdomain: what Kubernetes accepts as a Secret name.
NAME_RE = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: DNS-1123 label: what Kubernetes accepts as a namespace name.
NAMESPACE_RE = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PREFIX_RE = re.compile(r"^([a-z0-9][-a-z0-9.]*)?$")
CONNECTION_KEYS = ("conn_type", "host", "login", "password", "schema", "port", "extra", "description")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Error statuses the callers handle themselves: a miss, a conflict, an expired listing, a refused body.
ANSWERED_STATUSES = frozenset({404, 409, 410, 422})
#: Every other error status -> credpath error (``reason``: the Status body's reason, never its message).
STATUS_TABLE = StatusTable(
    "Kubernetes",
    rows=(
        Row(AccessDenied, "{where}: access denied (HTTP {status} {phrase})", statuses=frozenset({401, 403})),
        Row(BackendError, "{where} failed (HTTP {status}{reason})", statuses=RETRY_STATUSES, retry=True),
    ),
    default=Row(BackendError, "{where} failed (HTTP {status}{reason})"),
)
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def to_secret_name(name: str) -> str:
    """The Kubernetes spelling of a glued ``<prefix><sep><id>``: lower case, ``_`` -> ``-``."""
    return name.lower().replace("_", "-")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _own_pool(inherited: Any) -> Any:
    """A forked child's API client: the inherited pool's idle keep-alive sockets are also the parent's, and
    a request on one reads the parent's answer (or its watch stream) as its own, or the parent ours. A new
    pool on the same settings (no kubeconfig read); the inherited one is only dropped: closing a child's
    copy of a socket does not end the parent's connection."""
    from kubernetes import client

    return client.ApiClient(inherited.configuration)


class KubernetesSecretsBackend(PrefixNamedBackend):
    alias: ClassVar[str] = "kubernetes-secrets"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {"write", "list", "batch", "prefetch", "structured", "change_events"}
    )
    store_name: ClassVar[str] = "Kubernetes Secrets"
    requires: ClassVar[tuple[str, ...]] = ("kubernetes",)
    extra: ClassVar[str | None] = "kubernetes"

    def __init__(
        self,
        namespace: str | None = None,
        connections_prefix: str | None = "airflow-connections",
        variables_prefix: str | None = "airflow-variables",
        config_prefix: str | None = "airflow-config",
        sep: str = "-",
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool | None = None,
        host: str | None = None,
        token: str | None = None,
        verify_ssl: bool = True,
        ssl_ca_cert: str | None = None,
        timeout: float = 30.0,
        page_size: int = 500,
        watch: bool = False,
        **options: Unpack[BackendOptions],
    ) -> None:
        super().__init__(**options)
        if not isinstance(watch, bool):
            raise self.config_error("watch must be true or false")
        #: Watch the namespace's Secrets (one stream per process) and drop changed ids from the caches.
        self.watch = watch
        self._watching: list[tuple[Any, Any]] = []  # (watch, listener) this backend subscribed
        if not isinstance(sep, str):
            raise self.config_error("sep must be a string")
        # No team scoping and no team-separator refusal (see "Teams" above); the prefix is kept as given.
        self.naming = KeyNaming.from_settings(
            connections_prefix,
            variables_prefix,
            config_prefix,
            sep=sep,
            strip_sep=False,
            fail=self.config_error,
            spell=to_secret_name,
            team_kinds=frozenset(),
            refused_kinds=frozenset(),
        )
        for kind in self.naming.prefixes:
            head = self.naming.head(kind)
            if head is not None and not _PREFIX_RE.match(head):
                raise self.config_error(
                    f"{PREFIX_SETTINGS[kind]} and sep must give the start of a Kubernetes Secret name "
                    "(letters, digits, '-', '_', '.'; starting with a letter or digit)"
                )
        if namespace is not None and (not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace)):
            raise self.config_error(
                "namespace must be a Kubernetes namespace name (lower case letters, digits, '-'; at most 63)"
            )
        self._namespace = namespace
        self.timeout = check_number(timeout, TIMEOUT, "timeout", self.config_error)
        self.page_size = check_number(page_size, COUNT, "page_size", self.config_error)
        if in_cluster not in (None, True, False):
            raise self.config_error("in_cluster must be true, false or null")
        if host is not None and (not isinstance(host, str) or not host.startswith(("http://", "https://"))):
            raise self.config_error("host must be an http:// or https:// URL of the API server")
        if token is not None and not isinstance(token, str):
            raise self.config_error("token must be a string")
        self.kubeconfig = kubeconfig
        self.context = context
        self.in_cluster = in_cluster
        self.host = host
        self._token = token
        self.verify_ssl = bool(verify_ssl)
        self.ssl_ca_cert = ssl_ca_cert
        self.retry_policy = RetryPolicy()
        self._apis: PerProcess[Any] = PerProcess(self._build_api, _own_pool)  # see api
        self._exceptions: tuple[type[BaseException], ...] = ()
        self._timeouts: tuple[type[BaseException], ...] = ()

    # --- client ------------------------------------------------------------------------------------

    def _use_in_cluster(self) -> bool:
        if self.host:
            return False
        if self.in_cluster is None:
            return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        return self.in_cluster

    def prepare(self) -> None:
        """Import the client, read the kubeconfig or the pod's service account, build the API object."""
        self.api  # noqa: B018 - the property builds it

    @property
    def _lock(self) -> threading.Lock | threading.RLock:
        """This process's client lock (a thread of a forked child's parent may have held the parent's)."""
        return self._apis.lock

    @property
    def api(self) -> Any:
        """This process's API client: a forked child makes its own (see ``_own_pool``)."""
        return self._apis.get()

    def _build_api(self) -> Any:
        import urllib3
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        namespace = self._namespace
        source = "setting" if namespace else "default"
        try:
            if self.host:
                configuration.host = self.host.rstrip("/")
                if self._token:
                    # kubernetes 36.0.x reads the token by "BearerToken" and its prefix by that key only
                    # (no alias), older and newer clients by "authorization": set both.
                    configuration.api_key = {"authorization": self._token, "BearerToken": self._token}
                    configuration.api_key_prefix = {"authorization": "Bearer", "BearerToken": "Bearer"}
            elif self._use_in_cluster():
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                if namespace is None and os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
                    with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
                        namespace = handle.read().strip() or None
                    source = "service account" if namespace else source
            else:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=self.kubeconfig,
                    context=self.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
                if namespace is None:
                    contexts, active = config.list_kube_config_contexts(self.kubeconfig)  # type: ignore[no-untyped-call]
                    if self.context:
                        active = next((c for c in contexts or [] if c.get("name") == self.context), None)
                    namespace = ((active or {}).get("context") or {}).get("namespace")
                    source = "kubeconfig" if namespace else source
        except ConfigException as exc:
            where = (
                "in-cluster config"
                if self._use_in_cluster()
                else f"kubeconfig {self.kubeconfig or '~/.kube/config'!r}"
            )
            raise self.config_error(f"cannot load the {where}: {type(exc).__name__}") from None
        except OSError as exc:
            raise self.config_error(
                f"cannot read the kubeconfig or service account ({exc.strerror})"
            ) from None
        if not self.verify_ssl:
            configuration.verify_ssl = False
        if self.ssl_ca_cert:
            configuration.ssl_ca_cert = self.ssl_ca_cert
        configuration.retries = False  # credpath retries, within one deadline for the whole call
        self.namespace = namespace or "default"
        #: Where the namespace came from: "setting", "service account", "kubeconfig" or "default".
        self.namespace_source = source
        self._exceptions = (urllib3.exceptions.HTTPError, OSError)
        # (timeouts, what urllib3 files under them but is not one: a refused connection)
        self._timeouts = (urllib3.exceptions.TimeoutError, urllib3.exceptions.NewConnectionError)
        return client.ApiClient(configuration)

    def describe(self) -> str:
        where = self.host or ("in-cluster" if self._use_in_cluster() else self.kubeconfig or "~/.kube/config")
        return f"{self.alias} namespace={self._namespace or '(from config)'} api={where}"

    def close(self) -> None:
        while self._watching:  # a closed backend hears no more changes
            watch, listener = self._watching.pop()
            watch.remove(listener)
        api = self._apis.clear()
        if api is not None:
            api.close()

    # --- one call ----------------------------------------------------------------------------------

    def _http(
        self,
        method: str,
        name: str | None = None,
        *,
        query: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Callable[[Any, tuple[float, float]], Any]:
        """One request of the Secrets API through the client's ApiClient (its auth, TLS, proxy, pool).

        ``CoreV1Api`` is not used: importing it costs about 2 s (hundreds of validated methods), more than
        the whole start-up of the other stores; the ApiClient is the same transport its methods call.
        """
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        params = [(k, v) for k, v in (query or {}).items() if v is not None]

        def send(api_client: Any, timeout: tuple[float, float]) -> Any:
            # The namespace is known once the client is built (it may come from the kubeconfig).
            path = f"/api/v1/namespaces/{self.namespace}/secrets" + (f"/{name}" if name else "")
            if not hasattr(api_client, "param_serialize"):
                return _send_before_v37(api_client, method, path, params, dict(headers), body, timeout)
            request = api_client.param_serialize(
                method,
                path,
                query_params=params,
                header_params=dict(headers),
                body=body,
                auth_settings=["BearerToken"],
            )
            response = api_client.call_api(*request, _request_timeout=timeout)
            response.read()
            return response

        return send

    def _call(self, what: str, secret: str | None, request: Callable[[Any, tuple[float, float]], Any]) -> Any:
        """Run ``request(api_client, request_timeout)`` under one deadline; ``(status, JSON body)``.

        2xx and the statuses callers handle (404, 409, 410, 422) come back; 401/403 raise AccessDenied;
        429/5xx and connection failures are retried within the deadline, then raise BackendError.
        """
        api_client = self.api
        from kubernetes.client.exceptions import ApiException

        caught: tuple[type[BaseException], ...] = (ApiException, *self._exceptions)

        deadline = Deadline(self.timeout)
        target = f" {secret!r}" if secret else ""
        where = (
            f"{what} secret{target} in namespace {self.namespace!r}"
            if secret
            else f"{what} in namespace {self.namespace!r}"
        )

        def attempt(deadline: Deadline) -> tuple[int, Any]:
            remaining = max(deadline.remaining(), 0.001)
            timeout = (min(remaining, 10.0), remaining)
            try:
                response = call_with_deadline(
                    lambda: request(api_client, timeout), deadline, on_timeout=timed_out
                )
            except BackendError:
                raise
            except caught as exc:  # ApiException(status=0): TLS, proxy
                if isinstance(exc, self._timeouts[0]) and not isinstance(exc, self._timeouts[1]):
                    raise timed_out() from None  # the socket timeout is the deadline's remainder
                raise Retryable(
                    self.error(f"{where}: cannot reach the API server ({type(exc).__name__})")
                ) from None
            status = int(response.status)
            if status >= 400 and status not in ANSWERED_STATUSES:
                reason = _status_reason(response.data)
                fields = {
                    "where": where,
                    "status": status,
                    "reason": f" {reason}" if reason else "",
                    "phrase": lambda: reason or HTTPStatus(status).phrase,
                }
                row, message = STATUS_TABLE.message(status, None, fields)
                error = self.error(message, row.error)
                if row.retry:
                    raise Retryable(error, parse_retry_after(response.getheader("Retry-After")))
                raise error
            try:
                return status, json.loads(response.data or b"null")
            except ValueError:
                raise self.error(f"{where}: the answer is not JSON (HTTP {status})") from None

        def timed_out() -> BackendError:
            return self.error(f"{where} timed out after {self.timeout:g} s", BackendTimeout)

        return retry_call(attempt, deadline, self.retry_policy, on_timeout=timed_out)

    # --- naming ------------------------------------------------------------------------------------

    name_noun: ClassVar[str] = "Secret name"
    name_rules: ClassVar[str] = (
        "lower case letters, digits, '-', '.'; starting and ending with a letter or digit; at most 253"
    )

    def _can_exist(self, name: str) -> bool:
        return NAME_RE.match(name) is not None

    def _key_of(self, kind: Kind, item: dict[str, Any]) -> str | None:
        """The id of a listed Secret of ``kind``: its id annotation if that still names it, else the name
        without the prefix; None if the Secret is not under this backend's prefix."""
        start = self.naming.head(kind)
        if start is None:
            return None
        metadata = item.get("metadata") or {}
        name = metadata.get("name") or ""
        if not name.startswith(start) or len(name) == len(start):
            return None
        original = (metadata.get("annotations") or {}).get(ID_ANNOTATION)
        if isinstance(original, str) and self.secret_name(kind, original) == name:
            return original
        return name[len(start) :]

    # --- reading Secrets ---------------------------------------------------------------------------

    def _decode(self, name: str, item: Any) -> dict[str, str]:
        if not isinstance(item, dict) or item.get("kind", "Secret") != "Secret":
            raise self.error(f"reading secret {name!r}: the answer is not a Secret")
        data = item.get("data") or {}
        if not isinstance(data, dict):
            raise self.error(f"secret {name!r}: 'data' is not a map")
        decoded: dict[str, str] = {}
        for key, value in data.items():
            try:
                decoded[key] = base64.b64decode(value or "", validate=True).decode("utf-8")
            except (binascii.Error, ValueError, TypeError):
                raise self.error(f"secret {name!r}: key {key!r} is not base64 of UTF-8 text") from None
        return decoded

    def read_secret(self, name: str) -> dict[str, str] | None:
        """The decoded data of Secret ``name``, or None if there is none (404)."""
        status, body = self._call(
            "reading",
            name,
            self._http("GET", name),
        )
        if status == 404:
            return None
        self._expect(status, "reading", name)
        log.debug("%s: read secret %r", self.name, name)
        if isinstance(body, dict):
            note_version((body.get("metadata") or {}).get("resourceVersion"))
        return self._decode(name, body)

    def _expect(self, status: int, what: str, name: str | None, ok: Iterable[int] = (200, 201)) -> None:
        if status not in ok:
            target = f" secret {name!r}" if name else ""
            raise self.error(f"{what}{target} in namespace {self.namespace!r} failed (HTTP {status})")

    def _list_items(self, kind: Kind) -> Iterator[dict[str, Any]]:
        """Every Secret labelled ``credpath.io/kind=<kind>``, page by page (``limit`` and ``continue``)."""
        token: str | None = None
        selector = f"{KIND_LABEL}={kind}"
        while True:
            page = self._http(
                "GET", query={"labelSelector": selector, "limit": self.page_size, "continue": token}
            )
            status, body = self._call(f"listing {kind} secrets", None, page)
            if status == 410:
                # The continue token expired (the snapshot is gone): start over rather than miss ids.
                raise self.error(
                    f"listing {kind} secrets: the listing changed while paging (HTTP 410); retry"
                )
            self._expect(status, f"listing {kind} secrets", None, ok=(200,))
            if not isinstance(body, dict) or not isinstance(body.get("items", []), list):
                raise self.error(f"listing {kind} secrets: the answer is not a SecretList")
            yield from body.get("items") or []
            token = (body.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def _listed(self, kind: Kind) -> dict[str, tuple[str, dict[str, Any]]]:
        """{id: (name, Secret)} of the labelled Secrets of ``kind`` under this backend's prefix."""
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for item in self._list_items(kind):
            key = self._key_of(kind, item)
            if key is not None:
                found[key] = ((item.get("metadata") or {}).get("name", ""), item)
        return found

    # --- values from Secret data -------------------------------------------------------------------

    # The mapping is the one Vault's secrets use (backends._keymap).
    _conn_value = staticmethod(_keymap.conn_value)

    def _connection_from(self, conn_id: str, data: dict[str, str]) -> Connection:
        return _keymap.connection(self, conn_id, data)

    def _value_from(self, name: str, data: dict[str, str]) -> str:
        value = _keymap.value_of(data)
        if value is None:
            raise self.error(
                f"secret {name!r} has no 'value' key (keys present: {_keymap.keys_present(data)})"
            )
        return value

    # --- change events ---------------------------------------------------------------------------

    def subscribe_changes(self, changed: ChangeListener) -> bool:
        """With ``watch = true``: tell ``changed`` about every Secret of the namespace that changes, as
        ``(backend name, ids it may hold, a test of an id, its new resourceVersion or None)``; ids None:
        anything may have changed (the watch restarted). Returns whether a watch was started."""
        if not self.watch:
            return False
        from credpath.backends._kubernetes_watch import watch_for

        def on_event(name: str | None, version: str | None) -> None:
            if name is None:
                changed(self.name, None, None, None)
                return
            ids: list[tuple[str, str]] = []
            for kind in KINDS:
                key = self._key_of(kind, {"metadata": {"name": name}})
                if key:
                    ids.append((kind, key))

            def matches(kind: str, key: str) -> bool:
                return kind in KINDS and self.secret_name(kind, key) == name

            changed(self.name, ids, matches, version)

        self._watching.append((watch_for(self, on_event), on_event))
        return True

    # --- reads -------------------------------------------------------------------------------------

    def _read(self, kind: Kind, key: str) -> tuple[str, dict[str, str]] | None:
        names = self._lookup_names(kind, key)
        if not names:
            return None
        name = names[0]
        data = self.read_secret(name)
        return None if data is None else (name, data)

    def get_conn_value(self, conn_id: str, *, team_name: str | None = None) -> str | None:
        found = self._read("connection", conn_id)
        return None if found is None else self._conn_value(found[1])

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        found = self._read("connection", conn_id)
        return None if found is None else self._connection_from(conn_id, found[1])

    def get_variable(self, key: str, *, team_name: str | None = None) -> str | None:
        found = self._read("variable", key)
        return None if found is None else self._value_from(*found)

    def get_config(self, key: str, *, team_name: str | None = None) -> str | None:
        found = self._read("config", key)
        return None if found is None else self._value_from(*found)

    # --- batches and prefetch ------------------------------------------------------------------------

    def _batch(self, kind: Kind, ids: Iterable[str]) -> dict[str, tuple[str, dict[str, str]]]:
        wanted = [i for i in dict.fromkeys(ids) if self._lookup_names(kind, i)]
        if not wanted:
            return {}
        if len(wanted) == 1:
            found = self._read(kind, wanted[0])
            return {} if found is None else {wanted[0]: found}
        listed: dict[str, dict[str, Any]] = {}
        for item in self._list_items(kind):
            name = (item.get("metadata") or {}).get("name")
            if name:
                listed[name] = item
        out: dict[str, tuple[str, dict[str, str]]] = {}
        for key in wanted:
            name = self._lookup_names(kind, key)[0]
            if name in listed:
                out[key] = (name, self._decode(name, listed[name]))
            else:
                # A Secret without the kind label is not listed, yet exists for a read by name.
                found = self._read(kind, key)
                if found is not None:
                    out[key] = found
        return out

    def get_conn_values(self, ids: Iterable[str], *, team_name: str | None = None) -> dict[str, str]:
        """Hits only: one LIST of the labelled connection Secrets, then a GET per id it lacks."""
        return {key: self._conn_value(data) for key, (_, data) in self._batch("connection", ids).items()}

    def get_connections(self, ids: Iterable[str], *, team_name: str | None = None) -> dict[str, Connection]:
        """Hits only, as connections: as get_conn_values, keeping a ``description`` beside ``conn_uri``."""
        return {
            key: self._connection_from(key, data) for key, (_, data) in self._batch("connection", ids).items()
        }

    def get_variables(self, keys: Iterable[str], *, team_name: str | None = None) -> dict[str, str]:
        return {
            key: self._value_from(name, data) for key, (name, data) in self._batch("variable", keys).items()
        }

    def _prefetch(self, kind: Kind) -> dict[str, tuple[str, dict[str, str]]]:
        return {
            key: (name, self._decode(name, item))
            for key, (name, item) in self._listed(kind).items()
            if self.wants(kind, key)
        }

    def prefetch_connections(self) -> dict[str, str]:
        return {key: self._conn_value(data) for key, (_, data) in self._prefetch("connection").items()}

    def prefetch_variables(self) -> dict[str, str]:
        return {key: self._value_from(name, data) for key, (name, data) in self._prefetch("variable").items()}

    # --- listing -----------------------------------------------------------------------------------

    def list_connections(self) -> list[str]:
        return iter_ids(self._listed("connection")) if self.prefixes["connection"] is not None else []

    def list_variables(self) -> list[str]:
        return iter_ids(self._listed("variable")) if self.prefixes["variable"] is not None else []

    # --- writes ------------------------------------------------------------------------------------

    def _body(self, kind: Kind, key: str, name: str, data: dict[str, str]) -> dict[str, Any]:
        annotations = {ID_ANNOTATION: key} if len(key) <= 253 else {}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {MANAGED_BY_LABEL: "credpath", KIND_LABEL: kind},
                "annotations": annotations,
            },
            "data": {k: _b64(v) for k, v in data.items()},
        }

    def _write(self, kind: Kind, key: str, data: dict[str, str], *, overwrite: bool) -> None:
        name = self._write_name(kind, key)
        self.api  # noqa: B018 - resolves the namespace before the body names it
        body = self._body(kind, key, name, data)
        for _ in range(3):  # create, or replace; a Secret deleted between the two is created again
            status, _answer = self._call(
                "creating",
                name,
                self._http("POST", body=body),
            )
            if status != 409:
                self._expect(status, "creating", name)
                log.debug("%s: created secret %r", self.name, name)
                return
            if not overwrite:
                raise self.config_error(f"{kind} {key!r} already exists (secret {name!r})")
            status, _answer = self._call(
                "replacing",
                name,
                self._http("PUT", name, body=body),
            )
            if status != 404:
                self._expect(status, "replacing", name)
                log.debug("%s: replaced secret %r", self.name, name)
                return
        raise self.error(f"writing secret {name!r}: it kept changing between create and replace")

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: Serialization = "json"
    ) -> None:
        """Store the JSON fields as keys (the default), or ``conn_uri`` (plus ``description``) with
        ``serialization="uri"``; a backend with a ``connection_format`` stores that format's value."""
        conn_id, data = _keymap.connection_map(self, conn, serialization, strings=True)
        self._write("connection", conn_id, data, overwrite=overwrite)

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        if not isinstance(value, str):
            raise self.config_error(
                f"variable {key!r}: the value must be a string, got {type(value).__name__}"
            )
        self._write("variable", key, {"value": value}, overwrite=overwrite)

    def _delete(self, kind: Kind, key: str) -> bool:
        name = self._write_name(kind, key)
        status, _body = self._call(
            "deleting",
            name,
            self._http("DELETE", name),
        )
        if status == 404:
            return False
        self._expect(status, "deleting", name, ok=(200, 202))
        log.debug("%s: deleted secret %r", self.name, name)
        return True

    def delete_connection(self, conn_id: str) -> bool:
        return self._delete("connection", conn_id)

    def delete_variable(self, key: str) -> bool:
        return self._delete("variable", key)

    # --- check -------------------------------------------------------------------------------------

    def check(self) -> str:
        """One LIST of at most one labelled connection Secret: the API server answers and lets us list."""
        status, _body = self._call(
            "listing secrets",
            None,
            self._http("GET", query={"labelSelector": f"{KIND_LABEL}=connection", "limit": 1}),
        )
        self._expect(status, "listing secrets", None, ok=(200,))
        return f"namespace {self.namespace!r} reachable; listing allowed"


class _Answer:
    """A non-2xx answer of a kubernetes client before 37 (which raises it), shaped as a response."""

    def __init__(self, exc: Any) -> None:
        self.status = exc.status
        body = exc.body
        self.data = body.encode() if isinstance(body, str) else body or b""
        self._headers = exc.headers or {}

    def getheader(self, name: str, default: Any = None) -> Any:
        return self._headers.get(name, default)


def _send_before_v37(
    api_client: Any,
    method: str,
    path: str,
    params: list[tuple[str, Any]],
    headers: dict[str, str],
    body: Any,
    timeout: tuple[float, float],
) -> Any:
    """One request through the older generated ApiClient (kubernetes < 37, which the cncf.kubernetes
    provider pins): the same transport, but ``call_api`` raises on a non-2xx answer."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = api_client.call_api(
            path,
            method,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
    except ApiException as exc:
        if not exc.status:  # status 0: TLS or a request that could not be built, not an answer
            raise
        return _Answer(exc)
    response.data  # noqa: B018 - reads the body now, inside the deadline
    return response


def _json_body(body: Any) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (TypeError, ValueError):
        return None


def _status_reason(body: Any) -> str:
    """The ``reason`` of a metav1.Status body ("NotFound", "Forbidden"), never its free-text message."""
    parsed = _json_body(body)
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    if isinstance(reason, str):
        return reason
    return ""
