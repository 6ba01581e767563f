"""Fixtures of the lookup tests (helpers that are not fixtures: tests/lookup/helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers._util import stop_process


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
