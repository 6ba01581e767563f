"""Prefetch by id from a store without batch reads (Vault), against real OpenBao behind the counting proxy:
reads run concurrently but bounded, one failing id fails only itself, the prefetch's deadline holds with
a hanging store, and no prefetch thread outlives its reads. Requests are counted at the proxy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from credpath._search_path import SearchPath
from credpath.backends.vault import VaultBackend
from credpath.errors import ConfigError
from tests.memory_backend import MemoryBackend
from tests.servers.openbao import OpenBao

N = 32
IDS = [f"v{i:02d}" for i in range(N)]
DATA = "/v1/secret/data/prefetch/variables/"


@pytest.fixture(scope="module")
def seeded(openbao: OpenBao) -> OpenBao:
    for i, key in enumerate(IDS):
        openbao.put("secret", 2, f"prefetch/variables/{key}", {"value": f"value-s3cr3t-{i}"})
    return openbao


@pytest.fixture
def proxy(seeded: OpenBao, fault_proxy: Any) -> Any:
    parts = urlsplit(seeded.addr)
    return fault_proxy(parts.hostname, parts.port)


@pytest.fixture
def make(seeded: OpenBao) -> Iterator[Callable[..., SearchPath]]:
    made: list[VaultBackend] = []

    def build(url: str, **kwargs: Any) -> SearchPath:
        backend = VaultBackend(
            url=url,
            token=seeded.root_token,
            variables_path="prefetch/variables",
            kv_engine_version=2,
            **kwargs,
        )
        made.append(backend)
        return SearchPath([("vault", backend)])

    yield build
    for backend in made:
        backend.close()


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("credpath-prefetch")]


def test_reads_run_concurrently_within_the_bound_and_no_thread_is_left(proxy: Any, make: Any) -> None:
    # Each read takes 0.15 s at the server, so reads one after another never overlap (the old code: 1).
    proxy.add("delay", path=DATA, seconds=0.15)
    sp = make(proxy.url)
    report = sp.prefetch(variables=IDS, concurrency=4)["variable"]
    assert (report.hits, report.misses, report.errors) == (N, 0, 0)
    assert proxy.count(DATA) == N  # one request per id, as one by one
    assert proxy.max_in_flight == 4
    assert not prefetch_threads()
    assert sp.get_variable("v05") == "value-s3cr3t-5" and proxy.count(DATA) == N  # served from the cache

    proxy.clear()
    proxy.add("delay", path=DATA, seconds=0.15)
    sp = make(proxy.url)
    sp.prefetch(variables=IDS)  # the default bound: 8, within Vault's 16 pooled connections
    assert proxy.count(DATA) == N and proxy.max_in_flight == 8
    assert not prefetch_threads()


def test_one_failing_id_does_not_fail_the_others(proxy: Any, make: Any) -> None:
    proxy.add("status", path=DATA + "v07", status=403, body=b'{"errors":["permission denied"]}')
    proxy.add("status", path=DATA + "v11", status=500, body=b'{"errors":["boom"]}')
    proxy.add("delay", path=DATA, seconds=0.1)
    sp = make(proxy.url)
    with pytest.raises(Exception) as denied:  # AccessDenied propagates, as on a lookup
        sp.prefetch(variables=IDS)
    assert "v07" in str(denied.value) and "s3cr3t" not in str(denied.value)
    proxy.clear()
    proxy.add("status", path=DATA + "v11", status=500, body=b'{"errors":["boom"]}')
    proxy.add("delay", path=DATA, seconds=0.1)
    sp = make(proxy.url)
    report = sp.prefetch(variables=IDS)["variable"]
    assert (report.hits, report.misses, report.errors) == (N - 1, 0, 1)
    assert proxy.max_in_flight > 1
    before = proxy.count(DATA)
    assert sp.get_variable("v12") == "value-s3cr3t-12" and proxy.count(DATA) == before
    assert not prefetch_threads()


def test_the_prefetch_deadline_holds_with_a_hanging_store(proxy: Any, make: Any) -> None:
    proxy.add("hang", path=DATA)
    sp = make(proxy.url, timeout=2)
    started = time.monotonic()
    report = sp.prefetch(variables=IDS[:20], timeout=0.5)["variable"]
    elapsed = time.monotonic() - started
    assert elapsed < 1.5  # not 20 x 2 s one by one, nor 3 x 2 s in rounds of 8
    assert (report.hits, report.misses, report.errors) == (0, 0, 20)
    assert proxy.count(DATA) <= 8  # reads not started by the deadline are not sent
    # The reads in flight end with their own store deadline (2 s): no prefetch thread outlives them.
    until = time.monotonic() + 6
    while prefetch_threads() and time.monotonic() < until:
        time.sleep(0.05)
    assert not prefetch_threads()


def test_a_trickling_read_is_cut_at_its_deadline_and_the_others_are_read(proxy: Any, make: Any) -> None:
    # The answer comes a byte every 0.3 s (about 90 s whole): no socket timeout fires, the store call's
    # deadline (1 s) must, while the other reads go on.
    proxy.add("trickle", path=DATA + "v03$", interval=0.3)
    sp = make(proxy.url, timeout=1)
    started = time.monotonic()
    report = sp.prefetch(variables=IDS)["variable"]
    elapsed = time.monotonic() - started
    assert (report.hits, report.misses, report.errors) == (N - 1, 0, 1)
    assert elapsed < 4
    assert proxy.count(DATA) == N and proxy.max_in_flight <= 8  # a timeout is not sent again
    assert sp.get_variable("v04") == "value-s3cr3t-4" and proxy.count(DATA) == N
    assert not prefetch_threads()


def test_concurrent_prefetches_of_one_id_share_one_read() -> None:
    gate = threading.Event()

    class Slow(MemoryBackend):
        def get_variable(self, key: str) -> str | None:
            gate.wait(5)
            return super().get_variable(key)

    ids = IDS[:6]  # fewer than the bound: every read of the three prefetches is in flight at once
    store = Slow(variables={k: "value-s3cr3t" for k in ids})
    sp = SearchPath([("slow", store)])
    threads = [threading.Thread(target=sp.prefetch, kwargs={"variables": ids}) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(10)
    assert sorted(key for _, key in store.calls) == ids  # each id read once, not three times


def test_prefetch_concurrency_is_checked() -> None:
    sp = SearchPath([("m", MemoryBackend())])
    with pytest.raises(ConfigError, match="concurrency"):
        sp.prefetch(variables=["a"], concurrency=0)
