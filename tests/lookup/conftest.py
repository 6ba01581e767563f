"""Fixtures of the lookup tests (helpers that are not fixtures: tests/lookup/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath import _cache as cache_mod
from credpath import _search_path as sp_mod
from credpath import _shared_cache as sc
from credpath._cache import CacheSettings
from credpath._lookup import prefetch as lookup_prefetch
from credpath._lookup import state as lookup_state
from credpath._lookup import tiers as lookup_tiers
from credpath._lookup import trace
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedTier
from tests.lookup.helpers import Clock
from tests.servers._util import stop_process


@pytest.fixture
def events() -> Iterator[list[Any]]:
    """Every trace event emitted while the test runs, in order."""
    seen: list[Any] = []
    unsubscribe = trace.subscribe(lambda _context, event: seen.append(event))
    try:
        yield seen
    finally:
        unsubscribe()


@pytest.fixture
def sm(aws_secrets_manager_harness: Any, fault_proxy: Any) -> tuple[Any, Any, Any]:
    """(harness, proxy, backend): a Secrets Manager backend whose every request goes through the proxy."""
    h = aws_secrets_manager_harness
    proxy = fault_proxy("127.0.0.1", h.server.port)
    backend = h.make_backend(
        endpoint_url=proxy.url, config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 3}}
    )
    return h, proxy, backend


@pytest.fixture
def own_openbao(tmp_path: Path) -> Iterator[Any]:
    """A private OpenBao server that the test may kill (stopped at the end if still running)."""
    from tests.servers.openbao import _start

    server = _start(tmp_path)
    yield server
    stop_process(server.proc)


@pytest.fixture
def store_calls() -> Iterator[list[Any]]:
    """Every store call the search path makes while the test runs, as the lookup traces report them."""
    from credpath._lookup import trace

    calls: list[Any] = []
    unsubscribe = trace.subscribe(
        lambda _context, event: calls.append(event) if isinstance(event, trace.StoreCall) else None
    )
    yield calls
    unsubscribe()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


@pytest.fixture
def shared_pair(tmp_path):
    """Two search paths (two "processes") on one shared tier, each with its own backend copy."""

    key = Fernet.generate_key()
    stores = []

    def make(backend, cache=None):
        store = FileStore(tmp_path / "shared.db")
        stores.append(store)
        tier = SharedTier(store, [key], "scope")
        return SearchPath([("b0", backend)], cache=cache or CacheSettings(ttl=100.0, jitter=0.0), shared=tier)

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    for module in (lookup_state, lookup_tiers, lookup_prefetch, cache_mod, sc):
        monkeypatch.setattr(module, "time", fake)
    monkeypatch.setattr(sp_mod, "_monotonic", fake.monotonic)
    return fake
