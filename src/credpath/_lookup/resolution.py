"""Asking the backends in order for one id: the first hit wins; failures follow the one error policy."""

from __future__ import annotations

import logging
import time
from typing import Any

from credpath import reading
from credpath._lookup.model import MISS, Attempt, CacheKey, Entry, Resolution, named, names, what
from credpath._lookup.policy import call, failure, kept
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext
from credpath.errors import BackendError, BackendUnavailable, safe_reason
from credpath.protocol import BaseBackend, Kind

__all__ = ["ask_live", "read", "resolve"]

log = logging.getLogger("credpath.search_path")


def read(
    state: LookupState, context: LookupContext, entry: Entry, kind: Kind, key: str, team: str | None
) -> Any:
    """One id from one backend behind its breaker (:func:`credpath.reading.read`)."""
    return call(
        context, entry, "get", kind, reading.read, entry.backend, kind, key, team_name=team, name=entry.name
    )


def resolve(state: LookupState, context: LookupContext) -> Resolution | None:
    """Ask every backend that wants the id, in order; cache the answer (a hit unless its backend says
    never, and a miss); raise BackendUnavailable if nothing was found and a backend failed."""
    kind, key, team = context.kind, context.key, context.team
    ckey: CacheKey = (kind, key, team)  # type: ignore[assignment]
    description = what(kind, key, team)
    failed: list[tuple[Entry, BackendError]] = []
    live, keep = context.live, context.events is not None
    for index, entry in enumerate(state.entries):
        if not entry.wants(kind, key):  # type: ignore[arg-type]
            if live:
                context.emit(Attempt(entry.name, "skipped (pattern)"))
            continue
        breaker = entry.breaker.describe() if live else ""
        # Lookups leave a store that just failed a refresh alone for a while; explain (keep) is a probe.
        if entry.refresh.failures and not keep and (wait := entry.refresh.waiting()) > 0:
            stale = kept(state, ckey, entry)
            if stale is not None:  # the store failed a moment ago: its last good value, no request
                if live:
                    detail = f"refresh backing off: next try in {wait:.1f} s"
                    context.emit(Attempt(entry.name, "stale", 0.0, detail, 0.0, breaker))
                return _serve_stale(state, context, index, entry, stale, wait)
        startup = 0.0
        started = time.perf_counter()
        try:
            if keep and isinstance(entry.backend, BaseBackend):
                entry.backend.prepare()  # one-time start-up, timed apart from the lookup
                startup = time.perf_counter() - started
                started = time.perf_counter()
            value = read(state, context, entry, kind, key, team)  # type: ignore[arg-type]
        except Exception as exc:
            elapsed = time.perf_counter() - started
            outcome = failure(state, entry, exc, description, stale_key=ckey)
            if isinstance(outcome, tuple):  # the backend's own last good value
                if live:
                    context.emit(Attempt(entry.name, "stale", elapsed, safe_reason(exc), startup, breaker))
                return _serve_stale(state, context, index, entry, outcome, entry.refresh.waiting())
            if live:
                context.emit(Attempt(entry.name, "error", elapsed, safe_reason(exc), startup, breaker))
            failed.append((entry, outcome))
            continue
        if value is None:
            if live:
                context.emit(Attempt(entry.name, "miss", time.perf_counter() - started, "", startup, breaker))
            continue
        if live:
            detail = f"served while {names(failed)} failed" if failed else ""
            context.emit(Attempt(entry.name, "hit", time.perf_counter() - started, detail, startup, breaker))
            _not_tried(state, context, index)
        resolution = Resolution(value, entry.name)
        state.register_secrets(kind, key, value)  # type: ignore[arg-type]
        if failed:
            # Airflow's fall-through, kept by default; never cached: the failed backend may shadow it.
            state.warn_once(
                ckey,
                "fall-through",
                "%s served from %r while %s failed",
                description,
                entry.name,
                names(failed),
            )
        else:
            state.episode_over(ckey)
            if entry.cache_results:
                state.put(ckey, resolution)
        log.debug("resolved %s from backend %r", description, entry.name)
        context.served("store", entry.name)
        return resolution
    if failed:
        raise BackendUnavailable(
            f"{description}: not found in the backends that answered, but {names(failed)} failed "
            f"(an outage, not a miss): {named(failed[0][0], failed[0][1])}",
            backends=tuple(e.name for e, _ in failed),
        )
    state.episode_over(ckey)
    state.put(ckey, MISS, miss=True)
    log.debug("%s not found in the search path", description)
    context.served("store", None)
    return None


def _serve_stale(
    state: LookupState,
    context: LookupContext,
    index: int,
    entry: Entry,
    stale: tuple[Resolution, float],
    wait: float,
) -> Resolution:
    if context.live:
        _not_tried(state, context, index)
        context.served("stale", entry.name, stale_age=stale[1], refresh_in=wait)
    else:
        context.tier = "stale"
    return stale[0]


def _not_tried(state: LookupState, context: LookupContext, index: int) -> None:
    for later in state.entries[index + 1 :]:
        context.emit(Attempt(later.name, "not tried"))


def ask_live(
    state: LookupState, context: LookupContext, live: tuple[Entry, ...], cached: Any, tier: str
) -> Resolution | None:
    """The first never-cached backend ahead of the cached answer that has the id, else the cached answer
    (served by ``tier``). A failing live backend sends the lookup down the whole path (one error policy)."""
    kind, key, team = context.kind, context.key, context.team
    for entry in live:
        if not entry.wants(kind, key):  # type: ignore[arg-type]
            continue
        try:
            value = read(state, context, entry, kind, key, team)  # type: ignore[arg-type]
        except Exception:
            return resolve(state, context)
        if value is not None:
            state.register_secrets(kind, key, value)  # type: ignore[arg-type]
            context.served("store", entry.name)
            return Resolution(value, entry.name)
    context.served(tier, None if cached is MISS else cached.source)
    return None if cached is MISS else cached  # type: ignore[no-any-return]
