"""The fault proxy itself: every action does what the fault tier relies on, bounded in time."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.error
import urllib.request

import pytest


@pytest.fixture
def upstream():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def test_relays_and_counts(fault_proxy, upstream):
    proxy = fault_proxy("127.0.0.1", upstream)
    assert _get(proxy.url + "/v1/a") == (200, b'{"ok": true}')
    assert _get(proxy.url + "/v1/b") == (200, b'{"ok": true}')
    assert proxy.count("/v1/a") == 1 and proxy.count() == 2


def test_status_nth_and_times(fault_proxy, upstream):
    proxy = fault_proxy("127.0.0.1", upstream)
    proxy.add("status", path="/x", nth=2, status=503)
    proxy.add("status", path="/y", times=1, status=429, headers={"Retry-After": "3600"})
    assert _get(proxy.url + "/x")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as second:
        _get(proxy.url + "/x")
    assert second.value.code == 503
    assert _get(proxy.url + "/x")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as throttled:
        _get(proxy.url + "/y")
    assert throttled.value.code == 429 and throttled.value.headers["Retry-After"] == "3600"
    assert _get(proxy.url + "/y")[0] == 200


def test_hang_and_trickle_defeat_a_read_timeout_only_as_expected(fault_proxy, upstream):
    proxy = fault_proxy("127.0.0.1", upstream)
    proxy.add("hang", path="/hang")
    proxy.add("trickle", path="/slow", interval=0.01)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _get(proxy.url + "/hang", timeout=0.5)
    assert time.monotonic() - started < 3
    # Each byte arrives well within the 0.5 s read timeout, so the whole answer takes far longer than it.
    started = time.monotonic()
    assert _get(proxy.url + "/slow", timeout=0.5)[0] == 200
    assert time.monotonic() - started > 0.8


def test_hanging_listener_accepts_and_never_answers(hanging_listener):
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _get(hanging_listener.url + "/", timeout=0.3)
    assert time.monotonic() - started < 3 and hanging_listener.accepted == 1
