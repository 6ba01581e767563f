"""What a :class:`credpath._search_path.SearchPath` method does beyond one call: the latest value's lookup
with its trace, explain, and a prefetch of both kinds. The facade keeps only signatures, documentation and
the inlined process-tier hit of ``get_connection`` (the hot path)."""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic

from credpath._cache import ABSENT
from credpath._deadlines import Deadline
from credpath._lookup import prefetch as _prefetch
from credpath._lookup import rotation, tiers
from credpath._lookup import trace as _trace
from credpath._lookup.model import MISS, Explanation, PrefetchReport, Resolution
from credpath._lookup.resolution import resolve
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext
from credpath.errors import BackendUnavailable
from credpath.protocol import Kind

__all__ = ["explain", "lookup", "prefetch"]


def lookup(state: LookupState, kind: Kind, key: str, team: str | None) -> Resolution | None:
    """The latest value through the tiers then the backends (``SearchPath.lookup`` without a version);
    subscribers of the trace hear which tier served it, then that it ended."""
    if (now := monotonic()) >= state._epoch_next:
        rotation.check_epoch(state, now)
    context = LookupContext(kind, key, team) if _trace._sinks else None
    found = tiers.settled(state, (kind, key, team))
    if found is not ABSENT:  # a process-tier hit
        if context is not None:
            context.served("process", None if found is MISS else found.source)
            context.done(*(("missing", None) if found is MISS else ("found", found.value)))
        return None if found is MISS else found
    if context is None:
        return tiers.lookup(state, LookupContext(kind, key, team))
    try:
        resolution = tiers.lookup(state, context)
    except BaseException:
        context.done("error")
        raise
    context.done(*(("missing", None) if resolution is None else ("found", resolution.value)))
    return resolution


def explain(state: LookupState, kind: Kind, key: str, use_cache: bool, team: str | None) -> Explanation:
    """``SearchPath.explain`` of the latest value: the cached answer and its tier with ``use_cache``, else
    the kept trace of one resolution (an outage is in the trace, not raised)."""
    held = tiers.held(state, (kind, key, team))
    if use_cache:
        found, tier = tiers.cached(state, (kind, key, team))
        if found is not ABSENT:
            source, version = (None, None) if found is MISS else (found.source, found.version)
            return Explanation(
                kind, key, source, cached=True, team_name=team, tier=tier, version=version, held=held
            )
    context = LookupContext(kind, key, team, keep=True)
    if state.shared is not None:
        state.shared.count("store_reads")
    try:
        resolve(state, context)
    except BackendUnavailable:
        pass  # the trace says which failed
    finally:
        if state.shared is not None:
            state.shared.flush()
    explanation = Explanation.from_trace(context)
    explanation.held = held
    return explanation


def prefetch(
    state: LookupState,
    kinds: tuple[tuple[Kind, Sequence[str]], ...],
    prefix: bool,
    team: str | None,
    concurrency: int,
    timeout: float | None,
) -> dict[Kind, PrefetchReport]:
    """``SearchPath.prefetch``: each kind's ids (or, with ``prefix``, everything under the prefixes), one
    audit event per kind; ``timeout`` bounds the whole prefetch."""
    from credpath import _audit  # a few ms of start-up that a lookup never needs

    _prefetch.check_concurrency(concurrency)
    deadline = None if timeout is None else Deadline(timeout)
    reports: dict[Kind, PrefetchReport] = {}
    for kind, ids in kinds:
        if not ids and not prefix:
            continue
        with _audit.timed("prefetch", kind, "*", team=team) as audit:  # one event per batch
            if ids:
                unique = list(dict.fromkeys(ids))
                report = _prefetch.prefetch_ids(
                    state, kind, unique, team, concurrency=concurrency, deadline=deadline
                )
            else:
                report = _prefetch.prefetch_prefix(state, kind, team)
            reports[kind] = report
            audit.update(_audit.prefetch_facts(report, ids))
    return reports
