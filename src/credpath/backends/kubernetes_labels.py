"""Kubernetes Secrets found by label: the cncf.kubernetes provider's ``KubernetesSecretsBackend``.

The provider class ``airflow.providers.cncf.kubernetes.secrets.kubernetes_secrets_backend.
KubernetesSecretsBackend`` (apache-airflow-providers-cncf-kubernetes 10.25.0, team scoping included) maps
here, with its kwargs and answers; credpath's name-based mode (``airflow-connections-<id>`` Secrets,
:mod:`credpath.backends.kubernetes_secrets`) stays the ``kubernetes-secrets`` alias. This is the layout
External Secrets Operator and Sealed Secrets produce: the Secret's name is free, a label names the id.

A read is one LIST of the namespace's Secrets with ``labelSelector=<label>=<id>`` and
``resourceVersion=0`` (the API server answers from its watch cache), as the provider asks:

- ``connections_label`` (``airflow.apache.org/connection-id``), ``variables_label``
  (``airflow.apache.org/variable-key``), ``config_label`` (``airflow.apache.org/config-key``): the label
  whose value is the id; ``None`` switches that kind off (no call);
- ``connections_data_key`` / ``variables_data_key`` / ``config_data_key`` (``value``): the key of the
  Secret's ``data`` holding the value (a URI or JSON for a connection), base64-decoded as UTF-8;
- several matching Secrets: the first of the list (the API server lists by name), with a WARNING naming
  the selector; a first Secret without the data key (or without data) is a miss, with a WARNING, even if
  a later one has it (as the provider);
- ``team_label`` (``airflow.apache.org/team``; ``None``: no team scoping): a read with a ``team_name``
  asks ``<label>=<id>,<team_label>=<team>`` first, then, if that gives nothing (no Secret, or no data
  key), the global ``<label>=<id>,!<team_label>``; a read without one asks only the global selector, and
  an id shaped as a team-scoped one (``_<team>___<id>``) is a miss without a call. Config reads are global.
- ``namespace``: the setting, else the pod's service account file
  (``/var/run/secrets/kubernetes.io/serviceaccount/namespace``), else (credpath only) the kubeconfig
  context's namespace; none of them is a :class:`ConfigError` naming the setting, as the provider fails.

Differences from the provider, all at the edge: an id (or team) that cannot be a label value (more than
63 characters, or characters outside ``[A-Za-z0-9._-]``, or not starting and ending with a letter or
digit) is a miss without a call, where the provider sends it and the API server answers 400 (which
Airflow logs and skips, so the search path's answer is the same); a value that is not base64 of UTF-8 is
a :class:`BackendError` naming the Secret (the provider raises ``UnicodeDecodeError``); how to reach the
API server is, beyond the provider's in-cluster config, also ``host`` + ``token`` or a kubeconfig (the
name-based backend's kwargs), with one deadline per call (``timeout``) and retries of 429/5xx inside it.

Change events (credpath's own kwarg ``watch``, default false; the provider has none): one watch per
process of the namespace's Secrets carrying each kind's label (``labelSelector=<label>``, one stream per
label that is not ``None``); an event's Secret is mapped to the ids it serves by its labels, as reads map
them (the value of the kind's label), plus the ids it served before (a Secret whose label value changed
no longer serves its old id). The cached ids are dropped at once (README "Rotation"). Events carry names,
labels and versions only, never data.

Listing (``credpath connections list``): the label values of the Secrets carrying the kind's label
(global ones: without the team label), one paged LIST. No writes: the Secrets belong to the operator
that makes them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from pathlib import Path
from typing import Any, ClassVar, Unpack

from credpath._lookup.trace import ChangeListener, note_version
from credpath.backends import kubernetes_secrets as _names
from credpath.protocol import BackendOptions, BaseBackend, Capability, Kind

__all__ = [
    "DEFAULT_CONFIG_LABEL",
    "DEFAULT_CONNECTIONS_LABEL",
    "DEFAULT_TEAM_LABEL",
    "DEFAULT_VARIABLES_LABEL",
    "KubernetesLabelSecretsBackend",
]

log = logging.getLogger(__name__)

DEFAULT_CONNECTIONS_LABEL = "airflow.apache.org/connection-id"
DEFAULT_VARIABLES_LABEL = "airflow.apache.org/variable-key"
DEFAULT_CONFIG_LABEL = "airflow.apache.org/config-key"
DEFAULT_TEAM_LABEL = "airflow.apache.org/team"
#: A label value as the API server validates it in a selector (an empty value matches no id).
LABEL_VALUE_RE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: A label key: an optional DNS subdomain prefix and ``/``, then a name of at most 63 characters.
LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(?=[^/]{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
DATA_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
#: The provider's test for a team-scoped id asked without a team.
_TEAM_SCOPED_ID = re.compile(r"_[^_]+___.+")


class KubernetesLabelSecretsBackend(BaseBackend):
    alias: ClassVar[str] = "kubernetes-labels"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"list", "change_events"})
    store_name: ClassVar[str] = "Kubernetes Secrets by label"
    requires: ClassVar[tuple[str, ...]] = ("kubernetes",)
    extra: ClassVar[str | None] = "kubernetes"
    #: Where the provider reads the pod's namespace (a class attribute there too).
    SERVICE_ACCOUNT_NAMESPACE_PATH: ClassVar[str] = _names.SERVICE_ACCOUNT_NAMESPACE

    def __init__(
        self,
        namespace: str | None = None,
        connections_label: str | None = DEFAULT_CONNECTIONS_LABEL,
        variables_label: str | None = DEFAULT_VARIABLES_LABEL,
        config_label: str | None = DEFAULT_CONFIG_LABEL,
        team_label: str | None = DEFAULT_TEAM_LABEL,
        connections_data_key: str = "value",
        variables_data_key: str = "value",
        config_data_key: str = "value",
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
        #: Watch the Secrets carrying the kinds' labels (credpath's kwarg); drop changed ids from the caches.
        self.watch = watch
        self._watching: list[tuple[Any, Any]] = []  # (watch, listener) this backend subscribed
        #: With ``watch``: the ids each Secret (by name) was last seen serving, by a read or an event.
        self._served: dict[str, set[tuple[Kind, str]]] = {}
        self._served_lock = threading.Lock()
        labels = {
            "connections_label": connections_label,
            "variables_label": variables_label,
            "config_label": config_label,
            "team_label": team_label,
        }
        for setting, label in labels.items():
            if label is not None and (not isinstance(label, str) or not LABEL_KEY_RE.match(label)):
                raise self.config_error(
                    f"{setting} must be a Kubernetes label key ([prefix/]name, name at most 63 characters "
                    "of letters, digits, '-', '_', '.') or null"
                )
        data_keys = {
            "connections_data_key": connections_data_key,
            "variables_data_key": variables_data_key,
            "config_data_key": config_data_key,
        }
        for setting, key in data_keys.items():
            if not isinstance(key, str) or not DATA_KEY_RE.match(key):
                raise self.config_error(
                    f"{setting} must be a Secret data key (letters, digits, '-', '_', '.')"
                )
        self.labels: dict[Kind, str | None] = {
            "connection": connections_label,
            "variable": variables_label,
            "config": config_label,
        }
        self.data_keys: dict[Kind, str] = {
            "connection": connections_data_key,
            "variable": variables_data_key,
            "config": config_data_key,
        }
        self.team_label = team_label
        # The name-based backend is the transport: its client, auth, TLS, deadline and retries.
        self._transport = _names.KubernetesSecretsBackend(
            namespace=namespace,
            kubeconfig=kubeconfig,
            context=context,
            in_cluster=in_cluster,
            host=host,
            token=token,
            verify_ssl=verify_ssl,
            ssl_ca_cert=ssl_ca_cert,
            timeout=timeout,
            page_size=page_size,
        )
        # The transport's messages in this backend's voice (its configured name, read when they are made).
        self._transport.error = self.error  # type: ignore[method-assign]
        self._transport.config_error = self.config_error  # type: ignore[method-assign]
        self._namespace = namespace
        self._resolved_namespace: str | None = None

    # --- client ------------------------------------------------------------------------------------

    def prepare(self) -> None:
        self._transport.prepare()

    @property
    def namespace(self) -> str:
        """The configured namespace, else the service account's, else the kubeconfig context's."""
        if self._resolved_namespace is None:
            transport = self._transport
            transport.api  # noqa: B018 - builds the client (and reads the kubeconfig's namespace)
            found = self._namespace
            if not found:
                try:
                    found = Path(self.SERVICE_ACCOUNT_NAMESPACE_PATH).read_text().strip() or None
                except FileNotFoundError:
                    found = None
                except OSError as exc:
                    raise self.config_error(
                        f"cannot read {self.SERVICE_ACCOUNT_NAMESPACE_PATH} ({exc.strerror}); set 'namespace'"
                    ) from None
            if not found and transport.namespace_source == "kubeconfig":
                found = transport.namespace
            if not found:
                raise self.config_error(
                    f"could not detect the namespace from {self.SERVICE_ACCOUNT_NAMESPACE_PATH} (is "
                    "automountServiceAccountToken disabled?); set 'namespace' in the backend kwargs"
                )
            transport.namespace = found
            self._resolved_namespace = found
        return self._resolved_namespace

    def describe(self) -> str:
        labels = ",".join(f"{k}={v}" for k, v in self.labels.items() if v)
        namespace = self._namespace or "(auto)"
        return f"{self.alias} namespace={namespace} labels={labels} ({self._transport.describe()})"

    def close(self) -> None:
        while self._watching:  # a closed backend hears no more changes
            watch, listener = self._watching.pop()
            watch.remove(listener)
        self._transport.close()

    # --- one read ----------------------------------------------------------------------------------

    def _list(self, selector: str, query: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        """One LIST of the namespace's Secrets matching ``selector``: the items in the server's order, and
        the continue token of the next page (None on the last)."""
        namespace = self.namespace
        transport = self._transport
        status, body = transport._call(
            f"listing secrets with labels {selector!r}",
            None,
            transport._http("GET", query={"labelSelector": selector, **query}),
        )
        transport._expect(status, f"listing secrets with labels {selector!r}", None, ok=(200,))
        if not isinstance(body, dict) or not isinstance(body.get("items") or [], list):
            raise self.error(f"listing secrets in namespace {namespace!r}: the answer is not a SecretList")
        token = (body.get("metadata") or {}).get("continue") or None
        return list(body.get("items") or []), token if isinstance(token, str) else None

    def _select(self, kind: Kind, selector: str, *, log_missing: bool = True) -> str | None:
        items, _ = self._list(selector, {"resourceVersion": "0"})
        if not items:
            if log_missing:
                log.debug("%s: no secret with labels %s in namespace %r", self.name, selector, self.namespace)
            return None
        first = items[0]
        name = (first.get("metadata") or {}).get("name", "")
        metadata = first.get("metadata") or {}
        note_version(metadata.get("resourceVersion"))  # a watch event of this version changes nothing
        if self.watch:
            self._remember(name, self._ids_of(metadata.get("labels")))
        if len(items) > 1:
            log.warning(
                "%s: %d secrets with labels %s in namespace %r (%s); using the first, %r",
                self.label,
                len(items),
                selector,
                self.namespace,
                ", ".join(repr((i.get("metadata") or {}).get("name", "")) for i in items),
                name,
            )
        data = first.get("data")
        data_key = self.data_keys[kind]
        if not isinstance(data, dict) or data_key not in data:
            log.warning("%s: secret %r has no data key %r", self.label, name, data_key)
            return None
        try:
            # Not validated, as the provider decodes: characters outside the alphabet are dropped.
            return base64.b64decode(data[data_key] or "").decode("utf-8")
        except (binascii.Error, ValueError, TypeError):
            raise self.error(f"secret {name!r}: data key {data_key!r} is not base64 of UTF-8 text") from None

    def _read(self, kind: Kind, key: str, team_name: str | None) -> str | None:
        label = self.labels[kind]
        if label is None or not self.wants(kind, key):
            return None
        if kind != "config" and team_name is None and _TEAM_SCOPED_ID.fullmatch(key):
            return None  # a team's id asked without the team: never the global answer
        if not LABEL_VALUE_RE.match(key):
            # No Secret can carry it as a label value; the API server would refuse the selector (400).
            log.debug("%s: %s id %r cannot be a label value; not looked up", self.name, kind, key)
            return None
        team_label = self.team_label
        if team_name and team_label and kind != "config" and LABEL_VALUE_RE.match(team_name):
            found = self._select(kind, f"{label}={key},{team_label}={team_name}", log_missing=False)
            if found is not None:
                return found
        return self._select(kind, f"{label}={key}" + (f",!{team_label}" if team_label else ""))

    def get_conn_value(self, conn_id: str, *, team_name: str | None = None) -> str | None:
        return self._read("connection", conn_id, team_name)

    def get_variable(self, key: str, *, team_name: str | None = None) -> str | None:
        return self._read("variable", key, team_name)

    def get_config(self, key: str, *, team_name: str | None = None) -> str | None:
        return self._read("config", key, None)

    # --- change events ---------------------------------------------------------------------------

    def _ids_of(self, labels: Any) -> set[tuple[Kind, str]]:
        """The (kind, id) a Secret with these labels serves: the value of each kind's label."""
        found: set[tuple[Kind, str]] = set()
        if isinstance(labels, dict):
            for kind, label in self.labels.items():
                value = labels.get(label) if label else None
                if isinstance(value, str) and value:
                    found.add((kind, value))
        return found

    def _remember(self, name: str, ids: set[tuple[Kind, str]]) -> set[tuple[Kind, str]]:
        """Record what ``name`` serves now; returns what it served before."""
        with self._served_lock:
            before = self._served.pop(name, set())
            if ids:
                self._served[name] = ids
        return before

    def subscribe_changes(self, changed: ChangeListener) -> bool:
        """With ``watch = true``: tell ``changed`` about every Secret carrying a kind's label that changes,
        as ``(backend name, the ids it serves or served, a test of an id, its new resourceVersion or
        None)``; ids None: anything may have changed (a watch restarted). Returns whether it watches."""
        if not self.watch:
            return False
        from credpath.backends._kubernetes_watch import watch_labels

        def on_event(name: str | None, version: str | None, labels: dict[str, str]) -> None:
            if name is None:
                changed(self.name, None, None, None)
                return
            now = self._ids_of(labels)
            ids = now | self._remember(name, now if version is not None else set())
            if not ids:
                return
            changed(self.name, sorted(ids), lambda kind, key: (kind, key) in ids, version)

        for label in dict.fromkeys(v for v in self.labels.values() if v):
            self._watching.append((watch_labels(self, self._transport, label, on_event), on_event))
        return True

    # --- listing -----------------------------------------------------------------------------------

    def _ids(self, kind: Kind) -> list[str]:
        label = self.labels[kind]
        if label is None:
            return []
        selector = label + (f",!{self.team_label}" if self.team_label else "")
        ids: set[str] = set()
        token: str | None = None
        while True:
            page, token = self._list(selector, {"limit": self._transport.page_size, "continue": token})
            for item in page:
                value = ((item.get("metadata") or {}).get("labels") or {}).get(label)
                if isinstance(value, str) and value and self.wants(kind, value):
                    ids.add(value)
            if not token:
                return sorted(ids)

    def list_connections(self) -> list[str]:
        return self._ids("connection")

    def list_variables(self) -> list[str]:
        return self._ids("variable")

    def check(self) -> str:
        """One LIST of at most one Secret: the API server answers and lets us list."""
        self._list(self.labels["connection"] or DEFAULT_CONNECTIONS_LABEL, {"limit": 1})
        return f"namespace {self.namespace!r} reachable; listing allowed"
