"""Async lookups on a search path: the same tiers and answers, never blocking the event loop.

A lookup runs the search path's synchronous :meth:`~credpath._search_path.SearchPath.lookup` (process cache,
shared tier, then the stores, each store call under its own deadline) in a small bounded thread pool owned
by credpath, so a slow or hanging store holds a worker thread, never the loop. Concurrent coroutines of
one event loop asking for the same ``(search path, kind, id, team)`` share one pool job; the search path's
own single-flight merges that job with the same lookup from other threads and other loops: 1,000
coroutines on one cold id are one store request.

Each waiter awaits the shared job through :func:`asyncio.shield`: cancelling one waiter (or its
``timeout`` running out, a :class:`~credpath.errors.BackendTimeout`) leaves the job running for the
others, and its answer still lands in the cache.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from credpath._search_path import _UNSET, Resolution, SearchPath, answer
from credpath.errors import BackendTimeout, NotFound
from credpath.model import Connection

__all__ = ["MAX_WORKERS", "aget_config", "aget_connection", "aget_variable", "alookup", "run_blocking"]

T = TypeVar("T")

#: Worker threads for blocking lookups; more concurrent cold lookups than this wait in the queue (each
#: store call is bounded by its backend's deadline, so the queue drains).
MAX_WORKERS = 16

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()
# Per event loop: the pool job of each lookup in flight, keyed by (search path, kind, id, team). Only
# the loop's own thread touches its table, so it needs no lock.
_inflight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], asyncio.Future[Any]]]
_inflight = weakref.WeakKeyDictionary()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_pid
    pid = os.getpid()
    if _pool is None or _pool_pid != pid:  # a forked child inherits no worker threads: start a new pool
        with _pool_lock:
            if _pool is None or _pool_pid != pid:
                _pool = concurrent.futures.ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="credpath-aio")
                _pool_pid = pid
    return _pool


async def run_blocking(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in credpath's bounded pool, awaited without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(_executor(), func, *args)


def _lookup_sync(
    search_path: SearchPath, kind: Any, key: str, team_name: str | None, version: str | int | None = None
) -> Resolution | None:
    # team_name (and version) only when set: a roll-your-own search path need not know the keywords.
    extra: dict[str, Any] = {} if team_name is None else {"team_name": team_name}
    if version is not None:
        extra["version"] = version
    return search_path.lookup(kind, key, **extra)


async def _shared(key: tuple[Any, ...], start: Callable[[], asyncio.Future[T]], timeout: float | None) -> T:
    loop = asyncio.get_running_loop()
    table = _inflight.setdefault(loop, {})
    job = table.get(key)
    if job is None:
        job = start()
        table[key] = job

        def forget(done: asyncio.Future[Any], key: tuple[Any, ...] = key) -> None:
            if table.get(key) is done:
                del table[key]
            if not done.cancelled():
                done.exception()  # retrieved: no "exception never retrieved" when every waiter left

        job.add_done_callback(forget)
    if timeout is None:
        return await asyncio.shield(job)
    try:
        return await asyncio.wait_for(asyncio.shield(job), timeout)
    except TimeoutError:
        kind, name = key[1], key[2]
        raise BackendTimeout(
            f"{kind} {name!r}: no answer within {timeout:g} s (the lookup goes on)"
        ) from None


async def alookup(
    search_path: SearchPath,
    kind: Any,
    key: str,
    *,
    team_name: str | None = None,
    timeout: float | None = None,
    version: str | int | None = None,
) -> Resolution | None:
    """:meth:`SearchPath.lookup` for coroutines (see the module docstring); ``timeout`` bounds this
    waiter only (:class:`BackendTimeout`), each store call keeps its backend's own deadline."""
    if timeout is not None and (isinstance(timeout, bool) or not timeout > 0):
        raise ValueError("timeout must be a positive number of seconds or None")
    loop = asyncio.get_running_loop()
    flight = (id(search_path), kind, key, team_name, version)
    # The search path itself is held by the job's arguments while it runs, so its id is not reused.
    return await _shared(
        flight,
        lambda: loop.run_in_executor(_executor(), _lookup_sync, search_path, kind, key, team_name, version),
        timeout,
    )


async def aget_connection(
    search_path: SearchPath,
    conn_id: str,
    *,
    team_name: str | None = None,
    timeout: float | None = None,
    version: str | int | None = None,
) -> Connection:
    resolution = await alookup(
        search_path, "connection", conn_id, team_name=team_name, timeout=timeout, version=version
    )
    if resolution is None:
        raise NotFound("connection", conn_id)
    value: Connection = resolution.value
    return value


async def aget_variable(
    search_path: SearchPath,
    key: str,
    default: Any = _UNSET,
    *,
    deserialize_json: bool = False,
    team_name: str | None = None,
    timeout: float | None = None,
    version: str | int | None = None,
) -> Any:
    resolution = await alookup(
        search_path, "variable", key, team_name=team_name, timeout=timeout, version=version
    )
    return answer("variable", key, resolution, default, deserialize_json)


async def aget_config(
    search_path: SearchPath,
    key: str,
    default: Any = _UNSET,
    *,
    team_name: str | None = None,
    timeout: float | None = None,
) -> Any:
    resolution = await alookup(search_path, "config", key, team_name=team_name, timeout=timeout)
    return answer("config", key, resolution, default)
