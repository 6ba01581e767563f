"""The two cache tiers in front of the stores: each step says which tier served (``context.served``).

Order: the process tier (a dict read); on a miss, one flight per id in this process (single-flight),
then the shared tier (another process's fresh answer, or its lock so that one process reads the store),
then a resolution. Never-cached backends (env, files) ahead of a cached answer are still asked live.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from credpath._cache import ABSENT
from credpath._lookup.model import MISS, CacheKey, Resolution, what
from credpath._lookup.resolution import ask_live, resolve
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext
from credpath.errors import BackendTimeout

if TYPE_CHECKING:
    from credpath._shared_cache import SharedEntry

__all__ = ["cached", "held", "lookup", "lookup_once", "settled"]

log = logging.getLogger("credpath.search_path")


def lookup(state: LookupState, context: LookupContext) -> Resolution | None:
    """The answer for the context's id from the first tier that has it (see the module docstring)."""
    ckey: CacheKey = (context.kind, context.key, context.team)  # type: ignore[assignment]
    found = state.cache.get(ckey)
    if found is not ABSENT:
        if state.shared is not None:
            state.shared.count("process_hits")
        return _from_process(state, context, found)
    deadline = context.deadline
    return state._flight.run(
        ckey,
        lambda: lookup_once(state, context),
        deadline,
        lambda: BackendTimeout(f"{what(*ckey)}: no answer within the lookup's deadline"),
    )


def settled(state: LookupState, ckey: CacheKey) -> Any:
    """The process tier's answer when no never-cached backend must be asked first, else ABSENT (the hot
    path of a lookup: one dict read and a clock comparison)."""
    found = state.cache.get(ckey)
    if found is ABSENT or (state._live_all if found is MISS else state._live_before.get(found.source, ())):
        return ABSENT
    if state.shared is not None:
        state.shared.count("process_hits")
    return found


def lookup_once(state: LookupState, context: LookupContext) -> Resolution | None:
    """One flight: the process tier again (a flight that ended just before this one may have filled it),
    then the shared tier, then the stores."""
    ckey: CacheKey = (context.kind, context.key, context.team)  # type: ignore[assignment]
    found = state.cache.get(ckey)
    if found is not ABSENT:
        return _from_process(state, context, found)
    if state.shared is not None:
        return _lookup_shared(state, context, ckey)
    return resolve(state, context)


def _from_process(state: LookupState, context: LookupContext, found: Any) -> Resolution | None:
    live = state._live_all if found is MISS else state._live_before.get(found.source, ())
    if live:
        return ask_live(state, context, live, found, "process")
    context.served("process", None if found is MISS else found.source)
    return None if found is MISS else found


def _lookup_shared(state: LookupState, context: LookupContext, ckey: CacheKey) -> Resolution | None:
    """Process tier missed: the shared tier's fresh entry, else one store read across processes.

    A miss takes the key's lock (lease ``[cache] shared_lease``); other processes wait for the
    holder's entry, and take over if its lease runs out. An expired entry still in its stale window
    is kept in this process, so a failed refresh serves it (stale-if-error across processes). Any
    failure of the tier is a miss (logged once by the tier): the stores are asked directly.
    """
    assert state.shared is not None
    shared = state.shared
    # A store that can: the look and the lock at once.
    entry, held = shared.get_or_acquire(ckey, context.deadline)
    if entry is not None:
        if entry.fresh(time.time()):
            return _serve_shared(state, context, ckey, entry)
        state.adopt(ckey, entry)  # expired: this process's last good value for stale-if-error
    shared.count("shared_misses")
    if held is None:
        held = shared.acquire(ckey)
        if held:
            entry = shared.get(ckey)  # another process may have written it and let go since our look
            if entry is not None and entry.fresh(time.time()):
                shared.release(ckey)
                return _serve_shared(state, context, ckey, entry)
    if held is False:
        entry, held = shared.wait(ckey, context.deadline)
        if entry is not None:
            return _serve_shared(state, context, ckey, entry)
    try:
        shared.reading_store()
        return resolve(state, context)
    finally:
        if held:
            shared.release(ckey)
            shared.flush()  # a store read is slow anyway: publish this process's counters now


def _serve_shared(
    state: LookupState, context: LookupContext, ckey: CacheKey, entry: SharedEntry
) -> Resolution | None:
    shared = state.shared
    assert shared is not None
    shared.count("shared_hits")
    shared.flush_soon()
    value = state.adopt(ckey, entry)
    if value is not MISS and value.source not in state._live_before:
        return resolve(state, context)  # a backend this path does not have: not ours to serve
    live = state._live_all if value is MISS else state._live_before[value.source]
    if live:
        return ask_live(state, context, live, value, "shared")
    log.debug("%s from the shared cache (backend %r)", what(*ckey), None if value is MISS else value.source)
    context.served("shared", None if value is MISS else value.source)
    return None if value is MISS else value


def cached(state: LookupState, ckey: CacheKey) -> tuple[Any, str]:
    """What the tiers hold for ``ckey`` without asking a store: ``(value or MISS, tier)``, or
    ``(ABSENT, "")`` (``explain --cache``)."""
    found = state.cache.get(ckey)
    if found is not ABSENT:
        return found, "process"
    if state.shared is not None:
        entry = state.shared.get(ckey)
        if entry is not None and entry.fresh(time.time()):
            return (MISS if entry.miss else Resolution(entry.value, entry.source, entry.version)), "shared"  # type: ignore[arg-type]
    return ABSENT, ""


def held(state: LookupState, ckey: CacheKey) -> dict[str, str | None]:
    """The store version each tier holds for ``ckey`` ("process", "shared"; None: held, no version), for
    ``explain``: a tier holding nothing fresh for the id is left out."""
    versions: dict[str, str | None] = {}
    found = state.cache.get(ckey)
    if found is not ABSENT and found is not MISS:
        versions["process"] = found.version
    if state.shared is not None:
        entry = state.shared.get(ckey)
        if entry is not None and entry.fresh(time.time()) and not entry.miss:
            versions["shared"] = entry.version
    return versions
