"""One watch of a namespace's Secrets per process: change events that invalidate the cached ids at once.

The Kubernetes API streams changes to a collection (``GET .../secrets?watch=true&resourceVersion=R``:
newline-delimited JSON events ``ADDED``/``MODIFIED``/``DELETED``, ``BOOKMARK`` when asked for, and an
``ERROR`` event carrying a ``Status`` with code 410 when ``R`` is older than the server keeps). A backend
configured with ``watch = true`` subscribes here; the first subscriber of an (API server, namespace) starts
one daemon thread that lists once (``limit=1``: only the list's ``resourceVersion``), then watches from it,
resumes from the last seen version when the stream ends, re-lists on 410, and backs off (0.5 s doubling to
30 s) while the server fails. Every event is handed to the subscribers with the Secret's name and
``resourceVersion`` only: an event's ``data`` is dropped as it is parsed, never kept nor logged.

A backend that finds Secrets by label (``kubernetes-labels``) subscribes with a label selector
(:func:`watch_labels`): one watch per (API server, namespace, selector), whose subscribers are also given
the Secret's labels (the ids it serves are label values, not its name).

Gaps: while the stream is down, and between a re-list and the watch that follows it, changes are not
seen; a subscriber is told "anything may have changed" (``name=None``) after each (re)list, and the
cache's TTL bounds what it missed. After ``fork()`` the child has no thread: an at-fork handler starts its
own for each watch it inherited subscribers of (:meth:`Watch.ensure`); its calls go on the child's own
connections (the backend's client is per process). :func:`stop_all` stops and forgets every watch.

Cost: one long-lived request per namespace per process (reconnected every ``timeoutSeconds``, 5 minutes),
plus one LIST of one item per (re)start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

# The threads _restart_in_child starts call the store through this module's worker pool, whose own after-fork
# reset must run before them: at-fork handlers run in the order they were registered, so register it first.
from credpath import _deadlines  # noqa: F401

__all__ = ["WATCH_TIMEOUT", "Watch", "stop_all", "watch_for", "watch_labels"]

log = logging.getLogger("credpath.backends.kubernetes_secrets")

#: The server ends each watch after this many seconds (``timeoutSeconds``); the watch then resumes.
WATCH_TIMEOUT = 300
#: Reconnect back-off after a failure: from BACKOFF_MIN doubling to BACKOFF_MAX seconds.
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0

#: A subscriber: (Secret name or None for "anything may have changed", its resourceVersion or None).
Listener = Callable[[str | None, str | None], None]
#: A subscriber of a label-selected watch: the same, plus the Secret's labels (empty for name None).
LabelListener = Callable[[str | None, str | None, dict[str, str]], None]

_watches: dict[tuple[str, str], Watch] = {}
_lock = threading.Lock()


class Watch:
    """The watch of one namespace of one API server (see the module docstring)."""

    def __init__(self, backend: Any, key: tuple[str, str], selector: str = "", client: Any = None) -> None:
        self.backend = backend  # the first subscriber's backend: its namespace
        self.client = client or backend  # what makes the calls: its API client and its deadline
        self.key = key
        self.selector = selector
        self.listeners: list[Listener] = []
        self.labelled: list[LabelListener] = []
        self.pid = 0
        self.version: str | None = None
        self.events = 0
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, listener: Listener) -> None:
        with _lock:
            self.listeners.append(listener)
        self.ensure()

    def add_labelled(self, listener: LabelListener) -> None:
        with _lock:
            self.labelled.append(listener)
        self.ensure()

    def ensure(self) -> None:
        """Start the thread in this process if it does not run here (first use, or after a fork)."""
        if self.pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with _lock:
            if self.pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            self.pid = os.getpid()
            self.version = None
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="credpath-k8s-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def remove(self, listener: Any) -> None:
        """Unsubscribe ``listener``; the last one gone stops the watch (no stream is kept for nobody)."""
        with _lock:
            for listeners in (self.listeners, self.labelled):
                if listener in listeners:
                    listeners.remove(listener)
            if self.listeners or self.labelled:
                return
            if _watches.get(self.key) is self:
                del _watches[self.key]
        self.stop()

    def _tell(self, name: str | None, version: str | None, labels: dict[str, str] | None = None) -> None:
        for listener in tuple(self.listeners):
            try:
                listener(name, version)
            except Exception:  # a subscriber must never end the watch
                log.debug("kubernetes watch: a subscriber failed", exc_info=True)
        for labelled in tuple(self.labelled):
            try:
                labelled(name, version, labels or {})
            except Exception:
                log.debug("kubernetes watch: a subscriber failed", exc_info=True)

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        stop = self._stop
        while not stop.is_set():
            try:
                self.client.prepare()  # the client (the namespace may come from the kubeconfig)
                self.backend.namespace  # noqa: B018 - resolved before the calls that name it
                if self.version is None:
                    self.version = self._list_version()
                    self.restarts += 1
                    self._tell(None, None)  # changes before the list were not watched
                self._watch_once()
                backoff = BACKOFF_MIN
            except _Expired:
                log.debug("kubernetes watch of %s: resourceVersion too old (410): re-listing", self.key[0])
                self.version = None
            except Exception as exc:
                log.debug(
                    "kubernetes watch of %s failed (%s); again in %.1f s",
                    self.key[0],
                    type(exc).__name__,
                    backoff,
                )
                if stop.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _list_version(self) -> str:
        client = self.client
        status, body = client._call("listing", None, client._http("GET", query={"limit": 1}))
        version = ((body or {}).get("metadata") or {}).get("resourceVersion") if status == 200 else None
        if not version:
            raise RuntimeError(f"list answered HTTP {status} without a resourceVersion")
        return str(version)

    def _watch_once(self) -> None:
        import urllib3

        api_client = self.client.api
        configuration = api_client.configuration
        headers = {"Accept": "application/json"}
        auth = (configuration.auth_settings() or {}).get("BearerToken") or {}
        if auth.get("value"):
            headers[auth.get("key") or "authorization"] = auth["value"]
        url = (
            f"{configuration.host}/api/v1/namespaces/{self.backend.namespace}/secrets?watch=true"
            f"&resourceVersion={self.version}&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT}"
        )
        if self.selector:
            url += f"&labelSelector={quote(self.selector, safe='')}"
        response = api_client.rest_client.pool_manager.request(
            "GET",
            url,
            headers=headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10.0, read=WATCH_TIMEOUT + 30.0),
            retries=False,
        )
        try:
            if response.status == 410:
                raise _Expired
            if response.status != 200:
                raise RuntimeError(f"watch answered HTTP {response.status}")
            buffer = b""
            chunks = response.read_chunked() if response.chunked else response.stream(4096)
            for chunk in chunks:
                if self._stop.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self._event(line)
        finally:
            response.release_conn()

    def _event(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            kind = event.get("type")
            obj = event.get("object") or {}
        except (ValueError, AttributeError):
            raise RuntimeError("the watch sent a line that is not a JSON event") from None
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired
            raise RuntimeError(f"the watch sent an error (HTTP {obj.get('code')})")
        metadata = obj.get("metadata") or {}
        version = metadata.get("resourceVersion")
        if version:
            self.version = str(version)
        if kind in ("ADDED", "MODIFIED", "DELETED") and metadata.get("name"):
            self.events += 1
            raw = metadata.get("labels") if self.labelled else None
            labels = (
                {str(k): v for k, v in raw.items() if isinstance(v, str)} if isinstance(raw, dict) else {}
            )
            self._tell(str(metadata["name"]), None if kind == "DELETED" else self.version, labels)


class _Expired(Exception):
    """The server no longer has the resourceVersion the watch resumes from (410): list again."""


def _restart_in_child() -> None:
    """After ``fork()`` no thread runs in the child: start the watches it inherited subscribers of."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork: never wait on that copy
    for watch in list(_watches.values()):
        if watch.listeners or watch.labelled:
            watch._thread = None
            try:
                watch.ensure()
            except Exception:  # never fail a fork
                log.debug("kubernetes watch: restart after fork failed", exc_info=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_in_child)


def watch_for(backend: Any, listener: Listener) -> Watch:
    """Subscribe ``listener`` to the watch of ``backend``'s namespace (one per server and namespace per
    process), starting it if needed."""
    # Keyed by the settings that name server and namespace: the client is built in the thread, so that
    # subscribing costs no import and no kubeconfig read.
    key = (str(backend.describe()), "")
    with _lock:
        watch = _watches.get(key)
        if watch is None:
            watch = _watches[key] = Watch(backend, key)
    watch.add(listener)
    return watch


def watch_labels(backend: Any, client: Any, selector: str, listener: LabelListener) -> Watch:
    """Subscribe ``listener`` to the watch of the Secrets matching ``selector`` in ``backend``'s namespace
    (one per server, namespace and selector per process); ``client`` makes the calls (``prepare``,
    ``api``, ``_call``, ``_http``: a name-based backend on the same server), ``backend`` names the
    namespace."""
    key = (str(backend.describe()), selector)
    with _lock:
        watch = _watches.get(key)
        if watch is None:
            watch = _watches[key] = Watch(backend, key, selector, client)
    watch.add_labelled(listener)
    return watch


def stop_all() -> None:
    """Stop and forget every watch of this process (a process shutting down; a test leaving none behind).

    Each thread ends at its stream's next line (the server sends one at least every ``timeoutSeconds``);
    a forked child restarts none of them. A backend subscribing afterwards starts a new watch."""
    with _lock:
        watches = list(_watches.values())
        _watches.clear()
    for watch in watches:
        watch.stop()
