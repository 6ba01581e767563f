"""VaultBackend under faults, against real OpenBao behind a loopback fault proxy: each bound asserted.

Bounds are generous (2 shared cores); each names what the old code did. Requests are
counted at the proxy, i.e. at the server side of the client.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from credpath.backends.vault import VaultBackend
from credpath.backends.vault import session as vault
from credpath.errors import AccessDenied, BackendError, BackendTimeout, MissingFile
from tests.conftest import assert_no_secret
from tests.servers._util import free_port, stop_process
from tests.servers.openbao import OpenBao, RequestLog, _start, restart

SECRET = "value-s3cr3t-faults"
DATA = "/v1/secret/data/faults/variables/"


@pytest.fixture(scope="module")
def seeded(openbao: OpenBao) -> OpenBao:
    openbao.put("secret", 2, "faults/variables/v", {"value": SECRET})
    openbao.policy("faults-reader", 'path "secret/data/faults/*" { capabilities = ["read"] }')
    return openbao


@pytest.fixture
def proxy(seeded: OpenBao, fault_proxy) -> Any:
    parts = urlsplit(seeded.addr)
    return fault_proxy(parts.hostname, parts.port)


@pytest.fixture
def make(seeded: OpenBao) -> Iterator[Callable[..., VaultBackend]]:
    made: list[VaultBackend] = []

    def build(url: str, **kwargs: Any) -> VaultBackend:
        kwargs.setdefault("token", seeded.root_token)
        backend = VaultBackend(url=url, variables_path="faults/variables", **kwargs)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        backend.close()


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        result = func()
    except Exception as exc:  # the error is the result
        result = exc
    return time.monotonic() - started, result


def run_threads(count: int, func: Callable[[], Any]) -> tuple[float, list[Any]]:
    """``count`` threads start ``func`` together; (wall time, results or exceptions)."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = func()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return time.monotonic() - started, results


# --- whole-call deadline ---------------------------------------------------------------------------------


def test_a_listener_that_never_answers_costs_one_timeout(hanging_listener, make) -> None:
    # Old: 2 x timeout (the lookup-self at first use, then the read), "cannot reach Vault (ConnectionError)".
    backend = make(hanging_listener.url, timeout=2)
    elapsed, error = timed(lambda: backend.get_variable("v"))
    assert isinstance(error, BackendTimeout), error
    assert 1.9 <= elapsed < 3.0
    message = str(error)
    assert message.startswith("backend 'vault' (HashiCorp Vault): reading secret/faults/variables/v")
    assert "timed out after 2 s" in message and "ConnectionError" not in message
    assert hanging_listener.accepted == 1


def test_a_trickling_server_is_cut_off_at_the_deadline(proxy, make) -> None:
    # Old: the timeout is per socket read, so one byte every 0.5 s never trips it (107.7 s and going).
    proxy.add("trickle", path=DATA, interval=0.5)
    backend = make(proxy.url, timeout=2)
    elapsed, error = timed(lambda: backend.get_variable("v"))
    assert isinstance(error, BackendTimeout), error
    assert elapsed < 3.5
    assert "timed out after 2 s" in str(error)


# --- on the caller's thread, every socket wait capped by the deadline -------------------

# sys.audit events of http.client in this process while a test records them: (event, thread id).
_AUDIT: list[tuple[str, int]] | None = None


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT is not None and event in ("http.client.send", "http.client.connect"):
        _AUDIT.append((event, threading.get_ident()))


sys.addaudithook(_audit_hook)  # a hook cannot be removed; it records only while _AUDIT is a list


def test_a_healthy_read_runs_on_the_callers_thread_and_starts_no_thread(seeded: OpenBao, make) -> None:
    # Old: every request ran on a worker thread (two hand-overs per store call, ~17 ms each when loaded).
    global _AUDIT
    backend = make(seeded.addr, timeout=5)
    assert backend.get_variable("v") == SECRET  # warm: connection and KV version
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    _AUDIT = []
    threading.Thread.start = counting_start  # type: ignore[method-assign]
    try:
        for _ in range(20):
            assert backend.get_variable("v") == SECRET
    finally:
        threading.Thread.start = real_start  # type: ignore[method-assign]
        events, _AUDIT = _AUDIT, None
    assert started == []
    me = threading.get_ident()
    assert [e for e in events if e[0] == "http.client.send"] == [("http.client.send", me)] * 20
    assert not [e for e in events if e[0] == "http.client.connect"]  # one kept-alive connection


def test_tls_reads_run_on_the_callers_thread_over_one_connection(openbao_tls: OpenBao) -> None:
    # The armed HTTPS connection class keeps TLS verification and keep-alive as requests' own does.
    global _AUDIT
    openbao_tls.put("secret", 2, "faults/variables/v", {"value": SECRET})

    def make() -> VaultBackend:
        return VaultBackend(
            url=openbao_tls.addr,
            token=openbao_tls.root_token,
            verify=openbao_tls.ca_cert,
            variables_path="faults/variables",
            timeout=5,
        )

    # An earlier test's session (shared by these settings) may hold a kept-alive connection the server has
    # since closed, which urllib3 would resend on: close it, so the reads below start on a new session.
    earlier = make()
    earlier.get_variable("v")
    earlier.close()
    backend = make()
    _AUDIT = []
    try:
        for _ in range(5):
            assert backend.get_variable("v") == SECRET
    finally:
        events, _AUDIT = _AUDIT, None
        backend.close()
    me = threading.get_ident()
    assert [e for e in events if e[0] == "http.client.send"] == [("http.client.send", me)] * 5
    assert len(events) <= 6  # at most one connect (the session may be another test's, warm already)


def test_a_trickle_is_cut_at_the_deadline_and_the_next_request_works(proxy, make) -> None:
    proxy.add("trickle", path=DATA, interval=0.5, times=1)
    backend = make(proxy.url, timeout=2)
    elapsed, error = timed(lambda: backend.get_variable("v"))
    assert isinstance(error, BackendTimeout), error
    assert "timed out after 2 s" in str(error) and elapsed < 4.0
    assert backend.get_variable("v") == SECRET  # the session's pool hands out a working connection
    assert proxy.count(DATA) == 2


def test_a_tls_handshake_that_never_completes_is_cut_at_the_deadline(hanging_listener, make) -> None:
    # The socket is armed from the moment it connects: a TLS server that never says hello is cut too.
    backend = make(f"https://127.0.0.1:{hanging_listener.port}", timeout=2)
    elapsed, error = timed(lambda: backend.get_variable("v"))
    assert isinstance(error, BackendTimeout), error
    assert "timed out after 2 s" in str(error) and "SSL" not in str(error)
    assert elapsed < 4.0


def test_a_trickle_over_tls_is_cut_at_the_deadline(make, tmp_path) -> None:
    # The reads are inside TLS (one byte per 0.5 s: a fixed per-read timeout never fires): each read of the
    # TLS socket waits at most what is left, and the caller sees the timeout, not an SSL error.
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    handshakes = threading.Event()

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            tls = context.wrap_socket(raw, server_side=True)
            held.append(tls)
            tls.recv(65536)  # the request
            handshakes.set()
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            for _ in range(100):
                tls.sendall(b" ")
                time.sleep(0.5)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        backend = make(f"https://127.0.0.1:{listener.getsockname()[1]}", timeout=2, verify=str(ca_pem))
        elapsed, error = timed(lambda: backend.get_variable("v"))
        assert handshakes.is_set()
        assert isinstance(error, BackendTimeout), error
        assert "timed out after 2 s" in str(error) and "SSL" not in str(error)
        assert elapsed < 4.0
    finally:
        listener.close()
        for sock in held:
            sock.close()


def test_a_name_that_never_resolves_is_cut_at_the_deadline(
    seeded: OpenBao, make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resolver that never answers is a state no test server can be put in: getaddrinfo blocks here, as
    # it does under a dead nameserver. No socket exists to shut down yet, so a worker bounds the lookup.
    import socket

    port = urlsplit(seeded.addr).port
    real = socket.getaddrinfo
    resolving = threading.Event()
    release = threading.Event()

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "vault.hangs.example":
            resolving.set()
            release.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    backend = make(f"http://vault.hangs.example:{port}", timeout=1)
    try:
        elapsed, error = timed(lambda: backend.get_variable("v"))
    finally:
        release.set()
    assert resolving.is_set()
    assert isinstance(error, BackendTimeout), error
    assert "timed out after 1 s" in str(error) and elapsed < 3.0


def test_a_name_is_resolved_once_per_connection_and_an_ip_url_starts_no_thread(
    seeded: OpenBao, make, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    port = urlsplit(seeded.addr).port
    lookups: list[tuple[str, str]] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        lookups.append((str(host), threading.current_thread().name))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    by_name = make(f"http://localhost:{port}", timeout=5)
    for _ in range(3):
        assert by_name.get_variable("v") == SECRET
    assert [host for host, _ in lookups] == ["localhost"]  # kept alive: one connection, one lookup
    assert lookups[0][1] == "credpath-store-call"  # bounded on a worker
    lookups.clear()
    by_ip = make(f"http://127.0.0.1:{port}", timeout=5)
    assert by_ip.get_variable("v") == SECRET
    assert {thread for _, thread in lookups} == {threading.current_thread().name}


def test_a_forked_child_cuts_a_trickle_at_the_deadline(proxy, make) -> None:
    # Airflow's task process is forked from a supervisor that has used Vault (its session and sockets).
    backend = make(proxy.url, timeout=1)
    assert backend.get_variable("v") == SECRET
    proxy.add("trickle", path=DATA, interval=0.5, times=1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            elapsed, error = timed(lambda: backend.get_variable("v"))
            if isinstance(error, BackendTimeout) and elapsed < 3.0:
                code = 0 if backend.get_variable("v") == SECRET else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert proxy.count(DATA) == 3


# --- retries that back off -----------------------------------------------------------------------------


def test_a_5xx_storm_is_retried_a_bounded_number_of_times(proxy, make) -> None:
    proxy.add("status", path=DATA, status=503, body=b'{"errors":["overloaded"]}')
    backend = make(proxy.url, timeout=10)
    elapsed, error = timed(lambda: backend.get_variable("v"))
    assert type(error) is BackendError, error
    assert proxy.count(DATA) == vault.RETRY_POLICY.attempts == 4
    assert elapsed < 5
    assert "answered HTTP 503 while reading secret/faults/variables/v: overloaded" in str(error)


def test_gateway_errors_are_retried_until_the_store_answers(proxy, make) -> None:
    # Old: 504 was not retried (status_forcelist 412, 429, 500, 502, 503).
    proxy.add("status", path=DATA, status=504, times=3)
    backend = make(proxy.url, timeout=10)
    assert backend.get_variable("v") == SECRET
    assert proxy.count(DATA) == 4


def test_retry_after_beyond_the_deadline_fails_now(proxy, make) -> None:
    # Old: urllib3 slept Retry-After (up to 6 h per retry): one lookup could take 3 h.
    proxy.add("status", path=DATA, status=429, headers={"Retry-After": "3600"})
    backend = make(proxy.url, timeout=5)
    elapsed, error = timed(lambda: backend.get_variable("v"))
    assert type(error) is BackendError, error
    assert elapsed < 1.5 and proxy.count(DATA) == 1
    assert "HTTP 429" in str(error) and "Retry-After of 3600 s exceeds the 5 s timeout" in str(error)


def test_retry_after_inside_the_deadline_is_honoured(proxy, make) -> None:
    proxy.add("status", path=DATA, status=429, headers={"Retry-After": "1"}, times=1)
    backend = make(proxy.url, timeout=5)
    elapsed, value = timed(lambda: backend.get_variable("v"))
    assert value == SECRET
    assert 1.0 <= elapsed < 3.0 and proxy.count(DATA) == 2


def test_refused_connections_fail_fast(make) -> None:
    backend = make(f"http://127.0.0.1:{free_port()}", timeout=30)
    elapsed, error = timed(lambda: backend.get_variable("v"))
    assert type(error) is BackendError and "connection refused" in str(error)
    assert elapsed < 1.0


# --- logins ----------------------------------------------------------------------------------------------


@pytest.fixture
def approle(seeded: OpenBao) -> dict[str, str]:
    role_id, secret_id = seeded.approle("faults", ["faults-reader"], token_ttl="10m")
    return {"auth_type": "approle", "role_id": role_id, "secret_id": secret_id, "token": None}


def test_one_503_on_an_approle_login_is_retried_not_access_denied(proxy, make, approle) -> None:
    # Old: AccessDenied (authoritative: skips on_error and later backends); the login was not retried.
    proxy.add("status", path="/v1/auth/approle/login", status=503, nth=1)
    backend = make(proxy.url, timeout=10, **approle)
    assert backend.get_variable("v") == SECRET
    assert proxy.count("/v1/auth/approle/login") == 2
    assert backend.session.logins == 1


def test_a_login_storm_is_a_retryable_backend_error(proxy, make, approle) -> None:
    proxy.add("status", path="/v1/auth/approle/login", status=503)
    backend = make(proxy.url, timeout=10, **approle)
    error = timed(lambda: backend.get_variable("v"))[1]
    assert type(error) is BackendError, error
    assert "logging in with auth_type 'approle'" in str(error)
    assert_no_secret(str(error), approle["secret_id"])


def test_concurrent_callers_share_one_hanging_login(proxy, make, approle) -> None:
    # Old: each waiter retried the login itself, one after the other (8 threads, timeout=3: 6.5 ... 48.5 s).
    proxy.add("hang", path="/v1/auth/approle/login")
    backend = make(proxy.url, timeout=2, **approle)
    elapsed, results = run_threads(16, lambda: backend.get_variable("v"))
    assert all(isinstance(r, BackendTimeout) for r in results), results
    assert elapsed < 4.0
    assert proxy.count("/v1/auth/approle/login") == 1


def test_concurrent_callers_share_one_failing_login(proxy, make, approle) -> None:
    proxy.add("status", path="/v1/auth/approle/login", status=503)
    backend = make(proxy.url, timeout=10, **approle)
    elapsed, results = run_threads(16, lambda: backend.get_variable("v"))
    assert all(type(r) is BackendError for r in results), results
    assert proxy.count("/v1/auth/approle/login") <= vault.RETRY_POLICY.attempts
    assert elapsed < 5
    # Each caller got its own copy, labelled once.
    assert all(str(r).count("backend 'vault'") == 1 for r in results)


def test_32_threads_on_a_cold_start_make_one_request(proxy, make) -> None:
    # Old: 65 requests (a lookup-self, 32 KV-version detections, 32 reads).
    proxy.add("delay", path=DATA, seconds=0.3)  # all 32 arrive while the first read is in flight
    backend = make(proxy.url, timeout=10)
    _, results = run_threads(32, lambda: backend.get_variable("v"))
    assert results == [SECRET] * 32
    assert proxy.requests == [("GET", DATA + "v")]


def test_kv_detection_happens_once_per_mount_per_process(proxy, make) -> None:
    proxy.add("delay", path="/v1/sys/internal/ui/mounts/", seconds=0.3)
    backend = make(proxy.url, timeout=10, kv_engine_version="auto")
    _, results = run_threads(32, lambda: backend.get_variable("v"))
    assert results == [SECRET] * 32
    assert proxy.count("/v1/sys/internal/ui/mounts/secret") == 1
    assert proxy.count(DATA) <= 2  # reads that start after detection may not find the first in flight
    make(proxy.url, timeout=10, kv_engine_version="auto").get_variable("v")  # same session: no new probe
    assert proxy.count("/v1/sys/internal/ui/mounts/secret") == 1


# --- token life cycle ----------------------------------------------------------------------------------


def test_renewal_failures_back_off_and_the_token_lives_on(seeded: OpenBao, proxy, make, monkeypatch) -> None:
    # Old: one 503 on renew-self switched renewal off; from the token's expiry on every read was denied.
    monkeypatch.setattr(vault, "TOKEN_LOOKUP_DELAY", 0.0)
    token = seeded.admin.auth.token.create(policies=["faults-reader"], ttl="4s", renewable=True)
    proxy.add("status", path="/v1/auth/token/renew-self", status=503, times=vault.RETRY_POLICY.attempts)
    backend = make(proxy.url, timeout=5, token=token["auth"]["client_token"])
    started = time.monotonic()
    while time.monotonic() - started < 9:  # more than twice the TTL
        assert backend.get_variable("v") == SECRET
        time.sleep(0.2)
    renewals = proxy.count("/v1/auth/token/renew-self")
    assert renewals >= vault.RETRY_POLICY.attempts + 2  # the failed ones, then renewals that worked
    assert backend.session.renewals >= 2
    assert proxy.count("lookup-self") == 1


def test_a_handed_in_token_costs_no_lookup_self_in_a_short_process(proxy, make) -> None:
    # Old: a lookup-self per process before the first read (Airflow's provider makes none).
    backend = make(proxy.url)
    for _ in range(5):
        assert backend.get_variable("v") == SECRET
    assert proxy.requests == [("GET", DATA + "v")] * 5


def test_a_404_from_lookup_self_is_not_a_token_lookup_failure(proxy, make) -> None:
    # Old: "Vault token lookup failed (HTTP 404)" before any read.
    proxy.add("status", path="/v1/auth/token/lookup-self", status=404)
    backend = make(proxy.url)
    assert backend.get_variable("v") == SECRET
    with pytest.raises(BackendError, match="HTTP 404 to a token lookup: is it a Vault server"):
        backend.check()


def test_revoked_token_is_access_denied_with_no_fall_through(seeded: OpenBao, monkeypatch) -> None:
    from credpath._search_path import SearchPath
    from credpath._settings import BackendSpec

    token = seeded.admin.auth.token.create(policies=["faults-reader"], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("AIRFLOW_VAR_V", "shadow-from-env")
    kwargs = {"url": seeded.addr, "token": token, "variables_path": "faults/variables"}
    specs = [BackendSpec(type="vault", name="vault", kwargs=kwargs), BackendSpec(type="env", name="env")]
    search_path = SearchPath(specs, cache=False)
    try:
        assert search_path.get_variable("v") == SECRET
        seeded.admin.auth.token.revoke(token)
        with pytest.raises(AccessDenied, match="expired or was revoked") as info:
            search_path.get_variable("v")
        assert token not in str(info.value)
    finally:
        search_path.close()


def test_missing_kubernetes_jwt_file_is_also_a_file_not_found_error(seeded: OpenBao, tmp_path: Path) -> None:
    backend = VaultBackend(
        url=seeded.addr, auth_type="kubernetes", kubernetes_role="r", kubernetes_jwt_path=str(tmp_path / "no")
    )
    with pytest.raises(FileNotFoundError) as info:
        backend.get_variable("v")
    assert isinstance(info.value, MissingFile)
    assert str(info.value).startswith("backend 'vault' (HashiCorp Vault): kubernetes_jwt_path: file ")
    assert info.value.filename == str(tmp_path / "no")
    backend.close()


# --- a sealed Vault, and a restart on the same port ------------------------------------------------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[list[OpenBao]]:
    """A private OpenBao (killed and restarted by the test); the list holds the current incarnation."""
    servers = [_start(tmp_path)]
    yield servers
    stop_process(servers[-1].proc)


def test_a_sealed_vault_in_a_fresh_process_says_it_is_sealed(own_server: list[OpenBao]) -> None:
    # Old: "cannot detect the KV version of mount 'secret' (HTTP 503)".
    server = own_server[0]
    server.admin.sys.seal()
    for kv in (2, "auto"):
        backend = VaultBackend(url=server.addr, token=server.root_token, kv_engine_version=kv, timeout=5)
        with pytest.raises(BackendError) as info:
            backend.get_variable("v")
        assert f"Vault at {server.addr} is sealed (HTTP 503)" in str(info.value)
        assert "cannot detect" not in str(info.value) and not isinstance(info.value, AccessDenied)
        backend.close()


def test_recovery_after_a_restart_on_the_same_port(own_server: list[OpenBao]) -> None:
    server = own_server[0]

    def seed(s: OpenBao) -> tuple[str, str]:
        s.put("secret", 2, "variables/v", {"value": SECRET})
        s.policy("reader", 'path "secret/data/variables/*" { capabilities = ["read"] }')
        s.enable_auth("approle")
        s.admin.auth.approle.create_or_update_approle("app", token_policies=["reader"], token_ttl="10m")
        s.admin.write("auth/approle/role/app/role-id", role_id="app-role-id")
        s.admin.write("auth/approle/role/app/custom-secret-id", secret_id="app-secret-s3cr3t")
        return "app-role-id", "app-secret-s3cr3t"

    role_id, secret_id = seed(server)
    root = VaultBackend(url=server.addr, token=server.root_token, timeout=5)
    app = VaultBackend(url=server.addr, auth_type="approle", role_id=role_id, secret_id=secret_id, timeout=5)
    assert root.get_variable("v") == app.get_variable("v") == SECRET

    stop_process(server.proc)
    for backend in (root, app):
        elapsed, error = timed(lambda b=backend: b.get_variable("v"))
        assert type(error) is BackendError and elapsed < 1.5, error

    own_server.append(restart(server))  # in-memory: empty again; the same root token, the same AppRole ids
    seed(own_server[-1])
    assert root.get_variable("v") == SECRET
    assert app.get_variable("v") == SECRET  # the old token died with the server: one new login
    assert app.session.logins == 2
    root.close()
    app.close()


# --- requests straight to urllib3's pool ------------------------------------------------------------------
# A read skips requests.Session's machinery (~0.4 ms of CPU per request) when it would add nothing; each
# fault must still fail as through requests (a session with a cookie sends every call through requests).


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs sent through requests.Session.send."""
    sent: list[str] = []
    original = requests.Session.send

    def send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        sent.append(request.url)
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", send)
    return sent


def test_reads_go_to_the_pool_directly_one_request_each_and_hooks_see_them(
    proxy: Any, make: Any, sends: list[str]
) -> None:
    backend = make(proxy.url)
    log = RequestLog().attach(backend)
    assert [backend.get_variable("v") for _ in range(3)] == [SECRET] * 3
    assert backend.get_variable("absent") is None
    assert proxy.count(DATA) == 4  # one request per read, counted at the server side
    assert sends == []  # the old code sent every read through requests.Session.send
    assert log.requests == [f"GET {DATA}v"] * 3 + [f"GET {DATA}absent"]
    assert log.statuses == [200, 200, 200, 404]


def test_a_mounted_adapter_still_carries_every_request(proxy: Any, make: Any) -> None:
    backend = make(proxy.url)
    carried: list[str] = []

    class Counting(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            carried.append(request.path_url)
            return super().send(request, **kwargs)

    backend.http_session.mount("http://", Counting(max_retries=0))
    assert backend.get_variable("v") == SECRET
    assert carried == [f"{DATA}v"] and proxy.count(DATA) == 1


def test_a_cookie_the_store_sets_is_kept_and_sent_back_as_requests_does(
    proxy: Any, make: Any, sends: list[str]
) -> None:
    # A load balancer's sticky-session cookie: requests keeps it in the session and sends it back.
    proxy.add("status", path=DATA, times=1, status=404, headers={"Set-Cookie": "lb=node-1; Path=/"})
    backend = make(proxy.url)
    assert backend.get_variable("v") is None and sends == []
    assert backend.http_session.cookies.get("lb") == "node-1"
    assert backend.get_variable("v") == SECRET
    assert sends == [f"{proxy.url}{DATA}v"]  # from then on through requests, which sends the cookie


def test_a_redirect_is_followed_as_requests_follows_it(seeded: OpenBao, proxy: Any, make: Any) -> None:
    # A standby that redirects to the active node: the pool does not follow, requests does.
    proxy.add("status", path=DATA, status=307, headers={"Location": f"{seeded.addr}{DATA}v"})
    backend = make(proxy.url)
    assert backend.get_variable("v") == SECRET
    assert backend.get_variable("other") == SECRET  # every read is redirected to v here
    # The first read's redirect is seen twice (the pool's answer, then requests'), later ones once.
    assert proxy.count(DATA) == 3


FAULTS: dict[str, Callable[[Any], Any]] = {
    "reset": lambda proxy: proxy.add("close", path=DATA),
    "503 storm": lambda proxy: proxy.add("status", path=DATA, status=503, body=b'{"errors":["busy"]}'),
    "sealed": lambda proxy: proxy.add(
        "status", path=DATA, status=503, body=b'{"errors":["Vault is sealed"]}'
    ),
    "403": lambda proxy: proxy.add("status", path=DATA, status=403, body=b'{"errors":["denied"]}'),
    "429 beyond the deadline": lambda proxy: proxy.add(
        "status", path=DATA, status=429, headers={"Retry-After": "3600"}
    ),
    "hang": lambda proxy: proxy.add("hang", path=DATA),
    "trickle": lambda proxy: proxy.add("trickle", path=DATA, interval=0.3),
    "not JSON": lambda proxy: proxy.add("status", path=DATA, status=200, body=b"<html>proxy</html>"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_fails_as_through_requests(fault: str, proxy: Any, make: Any) -> None:
    FAULTS[fault](proxy)

    def outcome(backend: VaultBackend) -> tuple[type[BaseException], str, int]:
        proxy.requests.clear()
        with pytest.raises(Exception) as caught:
            backend.get_variable("v")
        assert SECRET not in str(caught.value)
        return type(caught.value), str(caught.value), proxy.count(DATA)

    direct = make(proxy.url, timeout=1.5)
    through_requests = make(proxy.url, timeout=1.5, verify=False)  # another session
    through_requests.http_session.cookies.set("sticky", "1")  # a cookie: requests sends every call
    kind, message, count = outcome(direct)
    old_kind, old_message, old_count = outcome(through_requests)
    assert (kind, message) == (old_kind, old_message)
    if fault not in ("503 storm", "reset"):  # retries' number depends on jittered back-off in the deadline
        assert count == old_count


def test_a_refused_connection_fails_fast_as_through_requests(make: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    direct = make(url, timeout=5)
    through_requests = make(url, timeout=5, verify=False)
    through_requests.http_session.cookies.set("sticky", "1")
    errors = []
    for backend in (direct, through_requests):
        with pytest.raises(Exception) as caught:
            backend.get_variable("v")
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1] and "connection refused" in errors[0][1]
