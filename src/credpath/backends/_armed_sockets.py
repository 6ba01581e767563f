"""Every socket wait of a requests/urllib3 call capped by the call's deadline, on the caller's thread.

Fenced here because it leans on urllib3's and requests' insides (tests/backends/test_armed_sockets.py checks
each assumption).

A per-read socket timeout alone does not bound a call: a server trickling a byte per second never trips it.
Handing each call to a worker thread does (:func:`credpath._deadlines.call_with_deadline`), but costs two
thread hand-overs per store call, which in an Airflow task process (ten of them starting at once on a small
machine) measured 2-7 ms each way. Instead, inside :func:`bounded_by`, every blocking read and write of a
connection made by :func:`armed_adapter` first sets the socket's timeout to what is left of the deadline,
and fails once nothing is left. Name resolution (getaddrinfo) cannot be bounded that way; it runs on a
worker, once per new connection to a host name. The deadline reaches the sockets through a thread-local:
the one in credpath outside the lookup trace, and only here.

Assumptions (each checked by the test module; if an upgrade breaks one, it fails naming it: then fix this
module, or let :func:`armable` say False and the caller bounds calls on a worker instead):

- urllib3: a pool makes its connections from its ``ConnectionCls``; ``HTTPConnection._new_conn()`` opens
  and returns the TCP socket (resolving ``_dns_host``), and ``connect()`` leaves the socket it talks on in
  ``self.sock`` (the TLS socket wrapping the TCP one for HTTPS); ``PoolManager`` and ``ProxyManager`` pick
  pool classes from ``pool_classes_by_scheme``; with pyOpenSSL injected ``urllib3.util.ssl_.SSLContext`` is
  not ``ssl.SSLContext`` (then the sockets are not the stdlib's).
- requests: ``HTTPAdapter.init_poolmanager`` builds ``self.poolmanager`` and ``proxy_manager_for(proxy)``
  returns the manager a proxied request uses; a SOCKS proxy's sockets are PySocks', never armed.
- the standard library: a connected ``socket.socket`` or ``ssl.SSLSocket`` may switch its ``__class__`` to a
  subclass with no new slots, in place; their blocking reads and writes are the methods overridden here.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from credpath._deadlines import Deadline, call_with_deadline

__all__ = ["armable", "armed_adapter", "bounded_by"]

_current = threading.local()  # .deadline: the deadline of the call this thread is making, if any


def _arm(sock: socket.socket) -> None:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        left = deadline.remaining()
        if left <= 0:
            raise TimeoutError("the call's deadline has passed")
        sock.settimeout(left)


def _armed_class(base: type, methods: tuple[str, ...]) -> type:
    """A subclass of the socket class ``base`` whose ``methods`` (its blocking reads and writes) first
    arm the socket; no new slots, so a connected ``base`` object can switch to it in place."""

    def arming(name: str) -> Any:
        method = getattr(base, name)

        def armed(self: socket.socket, *args: Any) -> Any:
            _arm(self)
            return method(self, *args)

        armed.__name__ = armed.__qualname__ = name
        return armed

    return type(f"_Armed{base.__name__}", (base,), {"__slots__": (), **{m: arming(m) for m in methods}})


#: A connected TCP socket whose reads and writes wait at most what is left of the call's deadline.
_ArmedSocket = _armed_class(socket.socket, ("recv", "recv_into", "send", "sendall"))


@functools.cache
def _armed_ssl_socket() -> type:
    """The same for a TLS socket: its reads and writes are OpenSSL's, on the socket's timeout."""
    import ssl

    return _armed_class(ssl.SSLSocket, ("recv", "recv_into", "read", "send", "write"))


def _armed(sock: Any) -> Any:
    """``sock`` with its class switched to the armed one (same object, same layout; nothing else moves)."""
    import ssl

    if type(sock) is socket.socket:
        sock.__class__ = _ArmedSocket
    elif type(sock) is ssl.SSLSocket:
        sock.__class__ = _armed_ssl_socket()
    return sock


def armable(proxies: dict[str, str]) -> bool:
    """Whether this session's connections to Vault will be plain stdlib sockets that :func:`_armed` can
    switch: not through a SOCKS proxy (PySocks' sockets), not with urllib3's pyOpenSSL TLS injected.
    ``proxies``: the session's, the environment's included."""
    import ssl

    import urllib3.util.ssl_

    if any(str(p).strip().lower().startswith("socks") for p in proxies.values()):
        return False
    return urllib3.util.ssl_.SSLContext is ssl.SSLContext and ssl.SSLContext.sslsocket_class is ssl.SSLSocket


def _is_ip_literal(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _resolve_timeout(conn: Any) -> BaseException:
    # What urllib3 raises for a connect that timed out: requests turns it into ConnectTimeout, which the
    # session reports as the call's timeout.
    from urllib3.exceptions import ConnectTimeoutError

    return ConnectTimeoutError(conn, f"connecting to {conn.host} timed out (name resolution)")


@functools.cache
def armed_adapter() -> type:
    """An HTTPAdapter whose urllib3 connections arm their sockets (built once; imports requests lazily)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class Armed:
        sock: Any  # urllib3's connection keeps the socket it talks on here

        def _new_conn(self) -> Any:
            connect = super()._new_conn  # type: ignore[misc]
            deadline: Deadline | None = getattr(_current, "deadline", None)
            if deadline is None or _is_ip_literal(self._dns_host):  # type: ignore[attr-defined]
                sock = connect()
            else:
                # Resolving a name blocks in getaddrinfo, which no socket timeout ends: a worker thread
                # bounds it (once per new connection; kept-alive requests and IP URLs skip this).
                sock = call_with_deadline(connect, deadline, on_timeout=lambda: _resolve_timeout(self))
            return _armed(sock)  # a tunnel through an HTTP proxy is read through it too

        def connect(self) -> None:
            super().connect()  # type: ignore[misc]
            self.sock = _armed(self.sock)  # TLS: the socket wrapping it

    class ArmedHTTPConnection(Armed, HTTPConnection):
        pass

    class ArmedHTTPSConnection(Armed, HTTPSConnection):
        pass

    class ArmedHTTPPool(HTTPConnectionPool):
        ConnectionCls = ArmedHTTPConnection

    class ArmedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = ArmedHTTPSConnection

    pools = {"http": ArmedHTTPPool, "https": ArmedHTTPSPool}

    class ArmedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            if not proxy.lower().startswith("socks"):
                manager.pool_classes_by_scheme = pools
            return manager

    return ArmedAdapter


@contextmanager
def bounded_by(deadline: Deadline) -> Iterator[None]:
    """Arm the sockets of :func:`armed_adapter` connections used on this thread with ``deadline``."""
    outer, _current.deadline = getattr(_current, "deadline", None), deadline
    try:
        yield
    finally:
        _current.deadline = outer
