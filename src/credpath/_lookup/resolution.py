"""Asking the backends in order for one id: the first hit wins; failures follow the one error policy."""

from __future__ import annotations

import logging
import time
from typing import Any

from credpath import _reading as reading
from credpath._lookup import trace
from credpath._lookup.freshness import checks_versions, unchanged
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
    """One id from one backend behind its breaker (:func:`credpath._reading.read`)."""
    return call(
        context, entry, "get", kind, reading.read, entry.backend, kind, key, team_name=team, name=entry.name
    )


def resolve(state: LookupState, context: LookupContext) -> Resolution | None:
    """Ask every backend that wants the id, in order; cache the answer (a hit unless its backend says
    never, and a miss); raise BackendUnavailable if nothing was found and a backend failed."""
    ckey: CacheKey = (context.kind, context.key, context.team)  # type: ignore[assignment]
    description = what(*ckey)
    failed: list[tuple[Entry, BackendError]] = []
    for index, entry in enumerate(state.entries):
        outcome, answer = _ask(state, context, entry, ckey, description, failed)
        if outcome == "hit":
            return _hit(state, context, index, entry, ckey, answer, failed)
        if outcome == "stale":
            return _serve_stale(state, context, index, entry, *answer)
        if outcome == "error":
            failed.append((entry, answer))
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


def _ask(
    state: LookupState,
    context: LookupContext,
    entry: Entry,
    ckey: CacheKey,
    description: str,
    failed: list[tuple[Entry, BackendError]],
) -> tuple[str, Any]:
    """One backend's answer: ("skipped" | "miss", None), ("hit", value), ("error", the safe error) or
    ("stale", (its last good value and age, seconds until its store is asked again))."""
    kind, key, team = ckey
    if not entry.wants(kind, key):
        context.attempt(entry.name, "skipped (pattern)")
        return "skipped", None
    breaker = entry.breaker.describe() if context.live else ""
    keep = context.events is not None
    # Lookups leave a store that just failed a refresh alone for a while; explain (keep) is a probe.
    if entry.refresh.failures and not keep and (wait := entry.refresh.waiting()) > 0:
        stale = kept(state, ckey, entry)
        if stale is not None:  # the store failed a moment ago: its last good value, no request
            context.attempt(
                entry.name, "stale", 0.0, f"refresh backing off: next try in {wait:.1f} s", 0.0, breaker
            )
            return "stale", (stale, wait)
    startup = 0.0
    started = time.perf_counter()
    try:
        if keep and isinstance(entry.backend, BaseBackend):
            entry.backend.prepare()  # one-time start-up, timed apart from the lookup
            startup = time.perf_counter() - started
            started = time.perf_counter()
        last = kept(state, ckey, entry) if entry.cache_results else None
        # An expired value whose version the store still reports current is not read again.
        value = unchanged(context, entry, ckey, last[0]) if last and checks_versions(entry) else None
        if value is None and last is not None:
            # stale-if-error holds this backend's last good value: one try, then serve it if the store fails
            with trace.single_try():
                value = read(state, context, entry, kind, key, team)
        elif value is None:
            value = read(state, context, entry, kind, key, team)
    except Exception as exc:
        elapsed = time.perf_counter() - started
        outcome = failure(state, entry, exc, description, stale_key=ckey)
        if isinstance(outcome, tuple):  # the backend's own last good value
            context.attempt(entry.name, "stale", elapsed, safe_reason(exc), startup, breaker)
            return "stale", (outcome, entry.refresh.waiting())
        context.attempt(entry.name, "error", elapsed, safe_reason(exc), startup, breaker)
        return "error", outcome
    elapsed = time.perf_counter() - started
    if value is None:
        context.attempt(entry.name, "miss", elapsed, "", startup, breaker)
        return "miss", None
    detail = f"served while {names(failed)} failed" if failed else ""
    if context.live and kind == "connection" and isinstance(entry.backend, BaseBackend):
        lease = entry.backend.lease_detail(key)
        if lease:
            detail = f"{detail}; lease {lease}" if detail else f"lease {lease}"
    context.attempt(entry.name, "hit", elapsed, detail, startup, breaker)
    return "hit", value


def _hit(
    state: LookupState,
    context: LookupContext,
    index: int,
    entry: Entry,
    ckey: CacheKey,
    value: Any,
    failed: list[tuple[Entry, BackendError]],
) -> Resolution:
    if context.live:
        _not_tried(state, context, index)
    resolution = Resolution(value, entry.name, context.version, context.valid_until)
    state.register_secrets(ckey[0], ckey[1], value)
    if failed:
        # Airflow's fall-through, kept by default; never cached: the failed backend may shadow it.
        state.warn_once(
            ckey, "fall-through", "%s served from %r while %s failed", what(*ckey), entry.name, names(failed)
        )
    else:
        state.episode_over(ckey)
        if entry.cache_results:
            state.put(ckey, resolution)
    log.debug("resolved %s from backend %r", what(*ckey), entry.name)
    context.served("store", entry.name)
    return resolution


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
            return Resolution(value, entry.name, context.version)
    context.served(tier, None if cached is MISS else cached.source)
    return None if cached is MISS else cached
