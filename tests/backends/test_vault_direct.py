"""Vault requests sent straight to urllib3's pool (no requests.Session machinery on the way), against real
OpenBao behind the loopback fault proxy: one request per read at the proxy, the session's response hooks
and mounted adapters still honoured, redirects still followed, and each fault failing with the same error
as when requests sends the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from credpath.backends.vault import VaultBackend
from tests.servers._util import free_port
from tests.servers.openbao import OpenBao, RequestLog

SECRET = "value-s3cr3t-direct"
DATA = "/v1/secret/data/direct/variables/"


@pytest.fixture(scope="module")
def seeded(openbao: OpenBao) -> OpenBao:
    for i in range(3):
        openbao.put("secret", 2, f"direct/variables/v{i}", {"value": f"{SECRET}-{i}"})
    return openbao


@pytest.fixture
def proxy(seeded: OpenBao, fault_proxy: Any) -> Any:
    parts = urlsplit(seeded.addr)
    return fault_proxy(parts.hostname, parts.port)


@pytest.fixture
def make(seeded: OpenBao) -> Iterator[Callable[..., VaultBackend]]:
    made: list[VaultBackend] = []

    def build(url: str, **kwargs: Any) -> VaultBackend:
        kwargs.setdefault("token", seeded.root_token)
        backend = VaultBackend(url=url, variables_path="direct/variables", kv_engine_version=2, **kwargs)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        backend.close()


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs sent through requests.Session.send (the path that costs the CPU)."""
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
    assert [backend.get_variable(f"v{i}") for i in range(3)] == [f"{SECRET}-{i}" for i in range(3)]
    assert backend.get_variable("absent") is None
    assert proxy.count(DATA) == 4  # one request per read, counted at the server side
    assert sends == []  # the old code sent every read through requests.Session.send
    assert log.requests == [f"GET {DATA}v0", f"GET {DATA}v1", f"GET {DATA}v2", f"GET {DATA}absent"]
    assert log.statuses == [200, 200, 200, 404]


def test_a_mounted_adapter_still_carries_every_request(proxy: Any, make: Any) -> None:
    backend = make(proxy.url)
    carried: list[str] = []

    class Counting(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            carried.append(request.path_url)
            return super().send(request, **kwargs)

    backend.http_session.mount("http://", Counting(max_retries=0))
    assert backend.get_variable("v1") == f"{SECRET}-1"
    assert carried == [f"{DATA}v1"] and proxy.count(DATA) == 1


def test_a_redirect_is_followed_as_requests_follows_it(seeded: OpenBao, proxy: Any, make: Any) -> None:
    # A standby that redirects to the active node: the pool does not follow, requests does.
    proxy.add("status", path=DATA, status=307, headers={"Location": f"{seeded.addr}{DATA}v2"})
    backend = make(proxy.url)
    assert backend.get_variable("v2") == f"{SECRET}-2"
    assert backend.get_variable("v0") == f"{SECRET}-2"  # every read is redirected to v2 here
    # The first read's redirect is seen twice (the pool's answer, then requests'), later ones once.
    assert proxy.count(DATA) == 3


FAULTS: dict[str, Callable[[Any], None]] = {
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
            backend.get_variable("v0")
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
            backend.get_variable("v0")
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1] and "connection refused" in errors[0][1]
