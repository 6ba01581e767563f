"""A loopback HTTP fault proxy for the fault-injection tier, and a raw "accept and hang" listener.

:class:`FaultProxy` sits between a client and a real server (OpenBao, moto, a fake) on 127.0.0.1 and relays
HTTP/1.1 requests one per upstream connection (it sends ``Connection: close`` both ways, so every request is
seen and counted). Rules decide what happens to a request, first match wins:

- ``hang``: read the request and never answer (the client's whole-call deadline must end it);
- ``trickle``: relay the real answer one byte every ``interval`` seconds (per-read timeouts never fire);
- ``delay``: wait ``seconds`` before relaying;
- ``status``: answer ``status`` with ``headers`` and ``body`` (5xx storms, ``429`` with ``Retry-After``);
- ``close``: close the client socket without answering (a reset mid-call).

A rule matches by method and a regex on the path, optionally only the ``nth`` matching request (1-based) or
the first ``times`` ones. ``requests`` records ``(method, path)`` of everything the proxy received, so a test
asserts the number of requests at the server side of the client.

Plain HTTP only (for TLS clients, :class:`HangingListener` gives a raw "accept and hang"). Bounded: every
thread is a daemon, sockets time out after 60 s, and :meth:`FaultProxy.stop` closes every open socket.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

_HEADER_END = b"\r\n\r\n"


@dataclass
class Rule:
    action: str  # "hang" | "trickle" | "delay" | "status" | "close"
    path: str = ".*"
    method: str | None = None
    nth: int | None = None
    times: int | None = None
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    interval: float = 0.5
    seen: int = 0  # matching requests so far
    applied: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if re.search(self.path, path) is None:
            return False
        self.seen += 1
        if self.nth is not None:
            return self.seen == self.nth
        if self.times is not None:
            return self.applied < self.times
        return True


def _read_request(sock: socket.socket) -> bytes | None:
    data = b""
    while _HEADER_END not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(_HEADER_END)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or b"0")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + _HEADER_END + rest


def _with_close(head: bytes) -> bytes:
    """The header block with any Connection header replaced by ``Connection: close``."""
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
    lines.insert(1, b"Connection: close")
    return b"\r\n".join(lines)


class FaultProxy:
    """See the module docstring. ``url`` is the address clients use instead of the real server's."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        #: Requests being answered right now, and the most at once since the start (or ``clear``).
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stopped = threading.Event()
        threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True).start()

    # --- test API ------------------------------------------------------------------------------------

    def add(self, action: str, **kwargs: object) -> Rule:
        rule = Rule(action, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def count(self, path: str = ".*", method: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for m, p in self.requests
                if re.search(path, p) and (method is None or m.upper() == method.upper())
            )

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in list(self._sockets):
                try:
                    sock.close()
                except OSError:
                    pass

    # --- plumbing ------------------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        sock.settimeout(60)
        with self._lock:
            self._sockets.add(sock)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        counted = [False]  # one slot, cleared when the answer leaves (see _answered)
        try:
            request = _read_request(client)
            if request is None:
                return
            method, path = request.split(b" ", 2)[:2]
            method_s, path_s = method.decode(), path.decode()
            with self._lock:
                self.requests.append((method_s, path_s))
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                counted = [True]
                rule = next((r for r in self.rules if r.matches(method_s, path_s)), None)
                if rule is not None:
                    rule.applied += 1
            if rule is None:
                self._relay(client, request, counted=counted)
            elif rule.action == "hang":
                self._stopped.wait(60)
            elif rule.action == "close":
                client.shutdown(socket.SHUT_RDWR)
            elif rule.action == "status":
                headers = {"Content-Type": "application/json", **rule.headers}
                head = f"HTTP/1.1 {rule.status} Injected\r\n" + "".join(
                    f"{k}: {v}\r\n" for k, v in headers.items()
                )
                head += f"Content-Length: {len(rule.body)}\r\nConnection: close\r\n\r\n"
                with self._lock:
                    self._answered(counted)
                client.sendall(head.encode() + rule.body)
            elif rule.action == "delay":
                self._stopped.wait(rule.seconds)
                self._relay(client, request, counted=counted)
            elif rule.action == "trickle":
                self._relay(client, request, trickle=rule.interval)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(client)
                self._answered(counted)
            try:
                client.close()
            except OSError:
                pass

    def _answered(self, counted: list[bool]) -> None:
        """The request no longer counts as in flight (called under the lock, once): before its answer
        is sent, so that a client's next request never overlaps it in the count."""
        if counted[0]:
            counted[0] = False
            self.in_flight -= 1

    def _relay(
        self,
        client: socket.socket,
        request: bytes,
        trickle: float | None = None,
        counted: list[bool] | None = None,
    ) -> None:
        head, _, body = request.partition(_HEADER_END)
        upstream = socket.create_connection(self.upstream, timeout=60)
        self._track(upstream)
        try:
            upstream.sendall(_with_close(head) + _HEADER_END + body)
            response = b""
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                response += chunk
            rhead, sep, rbody = response.partition(_HEADER_END)
            response = _with_close(rhead) + sep + rbody if sep else response
            if trickle is None:
                if counted is not None:
                    with self._lock:
                        self._answered(counted)
                client.sendall(response)
                return
            for i in range(len(response)):
                if self._stopped.is_set():
                    return
                client.sendall(response[i : i + 1])
                time.sleep(trickle)
        finally:
            with self._lock:
                self._sockets.discard(upstream)
            upstream.close()


class HangingListener:
    """A TCP listener that accepts connections and never sends a byte (works for TLS clients too)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stopped = threading.Event()
        threading.Thread(target=self._loop, name="hanging-listener", daemon=True).start()

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(sock)

    def stop(self) -> None:
        self._stopped.set()
        self._listener.close()
        for sock in self._held:
            sock.close()


@pytest.fixture
def fault_proxy() -> Iterator[type[FaultProxy]]:
    """A factory: ``proxy = fault_proxy(host, port)``; every proxy made is stopped after the test."""
    made: list[FaultProxy] = []

    class _Factory(FaultProxy):
        def __init__(self, host: str, port: int) -> None:
            super().__init__(host, port)
            made.append(self)

    yield _Factory
    for proxy in made:
        proxy.stop()


@pytest.fixture
def hanging_listener() -> Iterator[HangingListener]:
    listener = HangingListener()
    yield listener
    listener.stop()
