"""Filling the cache for many ids with as few store calls as the backends allow (by id, or by prefix).

A backend without batch reads (Vault, GCP, Azure, Kubernetes by name...) is read id by id, but
``concurrency`` reads at once (default :data:`CONCURRENCY`): one after another, 1,000 Vault ids cost 1,000
round trips end to end; bounded, so the store is not flooded, and within the HTTP session's kept-alive
connection pool (Vault keeps 16). Each read still goes through the backend's breaker and the error
policy, and reads of one id by concurrent prefetches share one store call (single-flight).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from credpath import _reading as reading
from credpath._cache import ABSENT
from credpath._deadlines import Deadline
from credpath._lookup.model import MISS, Entry, PrefetchReport, Resolution, what
from credpath._lookup.policy import call, failure
from credpath._lookup.resolution import read
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext
from credpath.errors import BackendTimeout, ConfigError
from credpath.protocol import Kind, supports

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["CONCURRENCY", "prefetch_ids", "prefetch_prefix"]

#: Reads at once against a backend without batch reads (within Vault's 16 pooled connections).
CONCURRENCY = 8


def check_concurrency(concurrency: int) -> int:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 64:
        raise ConfigError(f"prefetch concurrency must be an integer 1-64, got {concurrency!r}")
    return concurrency


def prefetch_ids(
    state: LookupState,
    kind: Kind,
    ids: list[str],
    team: str | None,
    *,
    concurrency: int = CONCURRENCY,
    deadline: Deadline | None = None,
) -> PrefetchReport:
    """Each id not cached yet: from the shared tier, else backend by backend (batched where it can,
    ``concurrency`` reads at once where it cannot). Past ``deadline`` no read starts; ids left unread are
    errors (not cached, not misses)."""
    check_concurrency(concurrency)
    report = PrefetchReport(requested=len(ids))
    context = LookupContext(kind, "*", team)
    remaining = [i for i in ids if state.cache.get((kind, i, team)) is ABSENT]
    if state.shared is not None:
        remaining = _from_shared(state, kind, remaining, team)
    errored: set[str] = set()
    for entry in state.entries:
        if not remaining:
            break
        wanted = [i for i in remaining if entry.wants(kind, i)]
        if not wanted:
            continue
        if reading.batched(entry.backend, kind):
            found = _batch(state, context, entry, kind, wanted, team, errored, report)
        else:
            found = _one_by_one(
                state, context, entry, kind, wanted, team, errored, report, concurrency, deadline
            )
        _keep(state, entry, kind, team, found, errored, report)
        remaining = [i for i in remaining if i not in found]
    for key in remaining:
        if key not in errored:
            state.put((kind, key, team), MISS, miss=True)
            report.misses += 1
    return report


def _keep(
    state: LookupState,
    entry: Entry,
    kind: Kind,
    team: str | None,
    found: dict[str, Any],
    errored: set[str],
    report: PrefetchReport,
) -> None:
    """Register the secrets of what ``entry`` found and cache it (unless never cached, or the id failed)."""
    for key, value in found.items():
        state.register_secrets(kind, key, value)
        if key not in errored and entry.cache_results:
            state.put((kind, key, team), Resolution(value, entry.name))
        report.hits += 1


def _from_shared(state: LookupState, kind: Kind, ids: list[str], team: str | None) -> list[str]:
    """What another process already read is not read again: the ids the shared tier has not."""
    shared = state.shared
    assert shared is not None
    now = time.time()
    remaining = []
    for i in ids:
        entry = shared.get((kind, i, team))
        if entry is not None and entry.fresh(now):
            shared.count("shared_hits")
            state.adopt((kind, i, team), entry)
        else:
            remaining.append(i)
    return remaining


def _batch(
    state: LookupState,
    context: LookupContext,
    entry: Entry,
    kind: Kind,
    wanted: list[str],
    team: str | None,
    errored: set[str],
    report: PrefetchReport,
) -> dict[str, Any]:
    try:
        batch = call(
            context, entry, "batch_get", kind, reading.read_batch, entry.backend, kind, wanted, team_name=team
        )
    except Exception as exc:
        failure(state, entry, exc, f"a batch read of {len(wanted)} {kind}(s)")
        errored.update(wanted)
        report.errors += len(wanted)
        return {}
    found: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, BaseException):  # this id's value could not be parsed
            failure(state, entry, value, what(kind, key, team))
            errored.add(key)
            report.errors += 1
            continue
        found[key] = value
    return found


def _one_by_one(
    state: LookupState,
    context: LookupContext,
    entry: Entry,
    kind: Kind,
    wanted: list[str],
    team: str | None,
    errored: set[str],
    report: PrefetchReport,
    concurrency: int = 1,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """``wanted`` read id by id, ``concurrency`` at once; outcomes are handled on the caller's thread in id
    order, so ``on_error="fail"`` raises here (and the reads not started yet are dropped)."""
    outcomes: dict[str, Future[Any]] = {}
    workers = min(concurrency, len(wanted))
    if workers <= 1 and deadline is None:
        for key in wanted:
            outcomes[key] = _settled(lambda key=key: _read_once(state, context, entry, kind, key, team))
    else:
        outcomes = _concurrently(state, context, entry, kind, wanted, team, max(workers, 1), deadline)
    found: dict[str, Any] = {}
    for key in wanted:
        future = outcomes[key]
        exc = future.exception() if future.done() and not future.cancelled() else None
        if not future.done() or future.cancelled():
            exc = BackendTimeout(f"{what(kind, key, team)}: not read within the prefetch's deadline")
        if exc is not None:
            try:
                failure(state, entry, exc, what(kind, key, team))
            except BaseException:
                for pending in outcomes.values():
                    pending.cancel()
                raise
            errored.add(key)
            report.errors += 1
            continue
        value = future.result()
        if value is not None:
            found[key] = value
    return found


def _settled(func: Any) -> Future[Any]:
    """``func()``'s outcome as a done future (the sequential path shares the concurrent one's handling)."""
    from concurrent.futures import Future

    future: Future[Any] = Future()
    try:
        future.set_result(func())
    except Exception as exc:
        future.set_exception(exc)
    return future


def _read_once(
    state: LookupState, context: LookupContext, entry: Entry, kind: Kind, key: str, team: str | None
) -> Any:
    """One id from one backend, shared with any other prefetch reading it from that backend right now."""
    return state._flight.run(
        ("prefetch", entry.name, kind, key, team), lambda: read(state, context, entry, kind, key, team)
    )


def _concurrently(
    state: LookupState,
    context: LookupContext,
    entry: Entry,
    kind: Kind,
    wanted: list[str],
    team: str | None,
    workers: int,
    deadline: Deadline | None,
) -> dict[str, Future[Any]]:
    """Submit every read to a bounded pool; wait until all are done or ``deadline`` passes. The pool's
    threads end with their last read (each store call has its own deadline): none outlives it."""
    # concurrent.futures is imported at the first prefetch, not with the lookup path (start-up budget).
    from concurrent.futures import ThreadPoolExecutor, wait

    stop = threading.Event()

    def one(key: str) -> Any:
        if stop.is_set() or (deadline is not None and deadline.expired):
            raise BackendTimeout(f"{what(kind, key, team)}: not read within the prefetch's deadline")
        return _read_once(state, context, entry, kind, key, team)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="credpath-prefetch")
    try:
        futures = {key: pool.submit(one, key) for key in wanted}
        wait(futures.values(), timeout=None if deadline is None else deadline.remaining())
    finally:
        stop.set()
        pool.shutdown(wait=deadline is None or not deadline.expired, cancel_futures=True)
    return futures


def prefetch_prefix(state: LookupState, kind: Kind, team: str | None) -> PrefetchReport:
    """Everything under each backend's prefix, cached only where no earlier backend has the id."""
    report = PrefetchReport()
    context = LookupContext(kind, "*", team)
    known: list[tuple[Entry, dict[str, Any] | None]] = []  # per earlier backend: its full set, or None
    for entry in state.entries:
        values: dict[str, Any] | None = None
        if supports(entry.backend, "prefetch"):
            try:
                values = call(
                    context, entry, "prefetch", kind, reading.read_all, entry.backend, kind, team_name=team
                )
            except Exception as exc:
                # Later backends' values could be shadowed by this one's: stop here.
                failure(state, entry, exc, f"a prefix prefetch of {kind}s", then="stopping the prefetch")
                report.errors += 1
                return report
            assert values is not None
            for key, value in values.items():
                if not entry.wants(kind, key) or _shadowed(state, context, kind, key, team, known):
                    continue
                if isinstance(value, BaseException):  # this id's value could not be parsed
                    failure(state, entry, value, what(kind, key, team))
                    report.errors += 1
                    continue
                state.register_secrets(kind, key, value)
                if entry.cache_results:
                    state.put((kind, key, team), Resolution(value, entry.name))
                report.hits += 1
        known.append((entry, values))
    report.requested = report.hits
    return report


def _shadowed(
    state: LookupState,
    context: LookupContext,
    kind: Kind,
    key: str,
    team: str | None,
    earlier: list[tuple[Entry, dict[str, Any] | None]],
) -> bool:
    """True if an earlier backend has ``key`` or cannot say (it failed): then it is not cached."""
    for entry, values in earlier:
        if not entry.wants(kind, key):
            continue
        if values is not None:
            if key in values:
                return True
            continue
        try:
            if read(state, context, entry, kind, key, team) is not None:
                return True
        except Exception as exc:
            failure(state, entry, exc, what(kind, key, team), then="not caching it")
            return True
    return False
