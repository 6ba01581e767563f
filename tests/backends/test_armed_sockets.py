"""The assumptions ``credpath.backends._armed_sockets`` makes about urllib3's, requests' and the standard
library's insides.

Each test fails with a message naming the assumption an upgrade broke, and what to do about it. Local only:
a loopback server that trickles its answer.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

requests = pytest.importorskip("requests")
urllib3 = pytest.importorskip("urllib3")

from credpath._deadlines import Deadline  # noqa: E402
from credpath.backends import _armed_sockets as armed  # noqa: E402

FIX = "Update credpath.backends._armed_sockets, or make armable() say False (calls then run on a worker)."


def _broken(what: str) -> str:
    return (
        f"urllib3 {urllib3.__version__} / requests {requests.__version__} broke an assumption: {what}. {FIX}"
    )


@pytest.fixture
def trickle() -> Iterator[str]:
    """A loopback HTTP server that sends its headers, then one body byte every 0.2 s for 10 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
            for _ in range(50):
                if stop.wait(0.2):
                    break
                try:
                    conn.sendall(b"x")
                except OSError:
                    break
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    thread.join(5)
    listener.close()


def test_a_pool_makes_its_connections_from_its_connection_class() -> None:
    from urllib3.connection import HTTPConnection
    from urllib3.connectionpool import HTTPConnectionPool

    assert HTTPConnectionPool.ConnectionCls is HTTPConnection, _broken("HTTPConnectionPool.ConnectionCls")
    assert callable(getattr(HTTPConnection, "_new_conn", None)), _broken("HTTPConnection._new_conn()")
    conn = HTTPConnection("localhost", 1)
    assert conn._dns_host == "localhost", _broken("HTTPConnection._dns_host")


def test_managers_pick_pools_by_scheme() -> None:
    from requests.adapters import HTTPAdapter

    adapter = armed.armed_adapter()()
    pools = adapter.poolmanager.pool_classes_by_scheme
    assert pools["http"].ConnectionCls.__name__ == "ArmedHTTPConnection", _broken(
        "PoolManager.pool_classes_by_scheme (set in HTTPAdapter.init_poolmanager)"
    )
    proxy = adapter.proxy_manager_for("http://127.0.0.1:3128")
    assert isinstance(adapter, HTTPAdapter)
    assert proxy.pool_classes_by_scheme is pools, _broken("HTTPAdapter.proxy_manager_for / ProxyManager")
    assert not armed.armable({"https": "socks5://127.0.0.1:1080"})  # PySocks' sockets: never armed


def test_the_stdlib_ssl_context_is_what_urllib3_uses_unless_pyopenssl_is_injected() -> None:
    import urllib3.util.ssl_

    assert urllib3.util.ssl_.SSLContext is ssl.SSLContext, _broken("urllib3.util.ssl_.SSLContext")
    assert armed.armable({}) is True


@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_a_connected_socket_switches_class_in_place(kind: str) -> None:
    sock: Any = socket.socket()
    if kind == "tls":
        sock = ssl.create_default_context().wrap_socket(
            sock, server_hostname="localhost", do_handshake_on_connect=False
        )
    switched = armed._armed(sock)
    assert switched is sock and type(sock).__name__.startswith("_Armed"), _broken(
        f"switching a {type(sock).__name__}'s __class__ in place"
    )
    sock.close()


def test_a_trickling_answer_is_cut_at_the_deadline_on_the_callers_thread(trickle: str) -> None:
    session = requests.Session()
    session.mount("http://", armed.armed_adapter()())
    threads = threading.active_count()
    started = time.monotonic()
    with pytest.raises(requests.exceptions.RequestException), armed.bounded_by(Deadline(1.0)):
        session.get(trickle, timeout=(5, 5)).content  # noqa: B018 - reading the body is the point
    elapsed = time.monotonic() - started
    assert elapsed < 3, _broken(f"a trickle ran {elapsed:.1f} s past a 1 s deadline (socket reads not armed)")
    assert threading.active_count() == threads  # an IP URL: no worker thread
    session.close()
