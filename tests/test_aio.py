"""Async lookups (credpath._aio, credpath.aget_connection / aget_variable, CredpathBackend.aget_*).

Unit tests on an in-process gated backend (how many store calls, what each waiter gets), then fault tests
on a real HTTP server (the Kubernetes fake behind the fault proxy): 1,000 coroutines on one cold id are one
request at the server, across coroutines of several loops and plain threads; a hanging store never stalls
the loop (lag measured by a ticker coroutine); a waiter's timeout and cancellation leave the shared
request running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import credpath
from credpath import _aio
from credpath._search_path import SearchPath
from credpath.errors import BackendTimeout, BackendUnavailable, NotFound
from credpath.protocol import BaseBackend
from tests.airflow._side import ticker
from tests.servers.kubernetes_fake import KubernetesLabelsHarness

PW = "pw-s3cr3t-aio"
URI = f"postgres://app:{PW}@db.example.com:5432/analytics"


class GateBackend(BaseBackend):
    """Answers from a dict once ``gate`` is open; counts every read."""

    alias = "gate"
    store_name = "Gate"

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}
        self.calls = 0
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def _read(self, key: str) -> str | None:
        with self._lock:
            self.calls += 1
        assert self.gate.wait(10), "the test never opened the gate"
        return self.values.get(key)

    def get_conn_value(self, conn_id: str) -> str | None:
        return self._read(conn_id)

    def get_variable(self, key: str) -> str | None:
        return self._read(key)


@pytest.fixture
def gate() -> Iterator[GateBackend]:
    backend = GateBackend()
    yield backend
    backend.gate.set()


def _path(*backends: Any) -> SearchPath:
    return SearchPath([(f"b{i}", b) for i, b in enumerate(backends)])


# --- units --------------------------------------------------------------------------------------------------


def test_concurrent_coroutines_share_one_store_call(gate: GateBackend) -> None:
    gate.values["db"] = URI
    path = _path(gate)

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(_aio.aget_connection(path, "db")) for _ in range(1000)]
        await asyncio.sleep(0.05)
        gate.gate.set()
        return await asyncio.gather(*tasks)

    conns = asyncio.run(main())
    assert gate.calls == 1
    assert {c.password for c in conns} == {PW}


def test_answers_and_errors_match_the_sync_reads(gate: GateBackend) -> None:
    gate.gate.set()
    gate.values.update(db=URI, flags='{"a": 1}')
    path = _path(gate)

    async def main() -> None:
        assert (await _aio.aget_connection(path, "db")).host == "db.example.com"
        with pytest.raises(NotFound):
            await _aio.aget_connection(path, "missing")
        assert await _aio.aget_variable(path, "flags", deserialize_json=True) == {"a": 1}
        assert await _aio.aget_variable(path, "nope", default=None) is None
        with pytest.raises(NotFound):
            await _aio.aget_variable(path, "nope")
        assert await _aio.aget_config(path, "cfg", default="d") == "d"

    asyncio.run(main())
    calls = gate.calls
    asyncio.run(main())
    assert gate.calls == calls  # the second round is served by the cache tier, misses included


def test_the_package_root_functions_use_the_default_search_path(gate: GateBackend) -> None:
    gate.gate.set()
    gate.values.update(db=URI, v="value")
    credpath.set_default_search_path(_path(gate))
    try:

        async def main() -> tuple[Any, Any]:
            return await credpath.aget_connection("db"), await credpath.aget_variable("v")

        conn, value = asyncio.run(main())
    finally:
        credpath.set_default_search_path(None)
    assert conn.password == PW and value == "value"


def test_cancelling_one_waiter_leaves_the_shared_lookup_running(gate: GateBackend) -> None:
    gate.values["db"] = URI
    path = _path(gate)

    async def main() -> tuple[list[Any], bool]:
        tasks = [asyncio.ensure_future(_aio.aget_connection(path, "db")) for _ in range(3)]
        await asyncio.sleep(0.05)
        tasks[0].cancel()
        await asyncio.sleep(0.05)
        gate.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, tasks[0].cancelled()

    results, cancelled = asyncio.run(main())
    assert cancelled
    assert [r.password for r in results[1:]] == [PW, PW]
    assert gate.calls == 1


def test_a_waiter_timeout_raises_and_the_lookup_still_fills_the_cache(gate: GateBackend) -> None:
    gate.values["v"] = "late"
    path = _path(gate)

    async def main() -> float:
        started = time.monotonic()
        with pytest.raises(BackendTimeout) as info:
            await _aio.aget_variable(path, "v", timeout=0.1)
        assert "'v'" in str(info.value)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0
    gate.gate.set()
    deadline = time.monotonic() + 5
    while path.lookup("variable", "v") is None and time.monotonic() < deadline:  # pragma: no cover
        time.sleep(0.01)
    assert path.get_variable("v") == "late" and gate.calls == 1
    with pytest.raises(ValueError):
        asyncio.run(_aio.aget_variable(path, "v", timeout=0))


# --- fault tests on a real server ---------------------------------------------------------------------------


@pytest.fixture
def k8s(kubernetes_labels_harness: KubernetesLabelsHarness, fault_proxy: Any) -> Any:
    harness = kubernetes_labels_harness
    proxy = fault_proxy("127.0.0.1", harness.fake.port)

    def path(timeout: float = 5.0) -> SearchPath:
        backend = harness.make_backend(host=proxy.url, timeout=timeout)
        backend.prepare()  # the client import (seconds) is not what these tests time
        return SearchPath([("k8s", backend)])

    return harness, proxy, path


def test_1000_coroutines_on_one_cold_id_are_one_request_at_the_server(k8s: Any) -> None:
    harness, proxy, make_path = k8s
    harness.seed_labelled("connection", "cold_db", {"value": URI})
    proxy.add("delay", seconds=0.3)
    path = make_path()

    async def main() -> list[Any]:
        return await asyncio.gather(*(_aio.aget_connection(path, "cold_db") for _ in range(1000)))

    conns = asyncio.run(main())
    assert {c.password for c in conns} == {PW}
    assert proxy.count("/secrets") == 1


def test_coroutines_of_several_loops_and_threads_share_one_request(k8s: Any) -> None:
    harness, proxy, make_path = k8s
    harness.seed_labelled("variable", "shared_key", {"value": "one"})
    proxy.add("delay", seconds=0.5)
    path = make_path()
    start = threading.Barrier(8)
    results: list[Any] = []

    def loop_thread() -> None:
        async def main() -> list[Any]:
            return await asyncio.gather(*(_aio.aget_variable(path, "shared_key") for _ in range(250)))

        start.wait()
        results.extend(asyncio.run(main()))

    def sync_thread() -> None:
        start.wait()
        results.append(path.get_variable("shared_key"))

    threads = [threading.Thread(target=loop_thread) for _ in range(4)]
    threads += [threading.Thread(target=sync_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 1004 and set(results) == {"one"}
    assert proxy.count("/secrets") == 1


def test_a_hanging_store_never_stalls_the_loop(k8s: Any) -> None:
    _, proxy, make_path = k8s
    proxy.add("hang")
    path = make_path(timeout=1.0)
    lags: list[float] = []

    async def main() -> list[Any]:
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticker(stop, lags))
        await asyncio.sleep(0.05)
        # More distinct cold ids than worker threads: the queue waits, the loop does not.
        answers = await asyncio.gather(
            *(_aio.aget_variable(path, f"hang_{i}") for i in range(_aio.MAX_WORKERS + 4)),
            return_exceptions=True,
        )
        stop.set()
        await tick
        return answers

    started = time.monotonic()
    answers = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert all(isinstance(a, BackendUnavailable) for a in answers), answers
    assert max(lags) < 0.2, f"the loop stalled for {max(lags):.3f} s"
    assert elapsed < 6.0  # two rounds of the 1 s store deadline, not one per id
    assert len(lags) > 50  # the ticker kept running throughout


def test_a_waiter_deadline_under_a_hanging_store_and_cancellation(k8s: Any) -> None:
    harness, proxy, make_path = k8s
    harness.seed_labelled("variable", "slow_key", {"value": "eventually"})
    proxy.add("delay", seconds=0.8)
    path = make_path()

    async def main() -> tuple[float, list[Any]]:
        started = time.monotonic()
        waiters = [asyncio.ensure_future(_aio.aget_variable(path, "slow_key")) for _ in range(3)]
        with pytest.raises(BackendTimeout):
            await _aio.aget_variable(path, "slow_key", timeout=0.2)
        waited = time.monotonic() - started
        waiters[0].cancel()
        return waited, await asyncio.gather(*waiters, return_exceptions=True)

    waited, answers = asyncio.run(main())
    assert waited < 0.6
    assert isinstance(answers[0], asyncio.CancelledError)
    assert answers[1:] == ["eventually", "eventually"]
    assert proxy.count("/secrets") == 1


# --- CredpathBackend's async methods (Airflow's base class aside) -------------------------------------------


class DeniedBackend(GateBackend):
    def _read(self, key: str) -> str | None:
        from credpath.errors import AccessDenied

        raise AccessDenied(f"backend 'denied': {key!r} refused")


def test_the_airflow_backend_awaits_the_same_answers_and_denials(gate: GateBackend) -> None:
    from credpath.airflow import _CredpathBackendMixin

    gate.gate.set()
    gate.values["plain"] = "value"
    backend = _CredpathBackendMixin.__new__(_CredpathBackendMixin)
    backend.search_path = _path(gate)
    denied = _CredpathBackendMixin.__new__(_CredpathBackendMixin)
    denied.search_path = _path(DeniedBackend())

    async def main() -> None:
        assert await backend.aget_variable("plain") == "value"
        assert await backend.aget_variable("plain", team_name=None) == "value"
        assert await backend.aget_variable("absent") is None
        assert await backend.aget_connection("absent") is None
        # Without Airflow installed the authoritative denial is a PermissionError (Airflow's own class
        # where it is installed): it never turns into a miss.
        with pytest.raises(PermissionError):
            await denied.aget_variable("k")

    asyncio.run(main())
