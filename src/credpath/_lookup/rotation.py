"""After a rotation: deployment-wide invalidation (the epoch check) and forced, rate-limited refreshes.

The epoch: every invalidation through the shared tier moves one MACed epoch record
(:meth:`credpath._shared_cache.SharedTier.epoch`). Each process reads it at most once per
:data:`EPOCH_INTERVAL` on its lookups (one small read of the tier per process per second, never one per
lookup) and, when it moved, drops its process tier: its next lookups go to the shared tier, where the
per-id generations refuse what was invalidated and keep serving everything else. So a change made in one
process is served nowhere after ``EPOCH_INTERVAL`` plus one shared-tier read.

A forced refresh (``get_connection(id, refresh=True)``): one store read per id per
:data:`REFRESH_INTERVAL`, shared by every caller in the process (single-flight) and, through the shared
tier, by every process (an entry read from the store less than that ago is taken as the refresh). So a
failing task retried in a loop cannot hammer the store.
"""

from __future__ import annotations

import logging
import math
import time

from credpath._lookup import tiers
from credpath._lookup.model import CacheKey, Resolution
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext
from credpath.errors import BackendTimeout

__all__ = ["EPOCH_BACKOFF", "EPOCH_INTERVAL", "REFRESH_INTERVAL", "check_epoch", "refresh"]

log = logging.getLogger("credpath.search_path")

#: Seconds between a process's looks at the epoch record: under a second, so that with the one read of the
#: shared tier that follows a change reaches every process within a second.
EPOCH_INTERVAL = 0.9
#: Seconds before a process looks at the epoch again after the shared tier failed to answer.
EPOCH_BACKOFF = 1.0
#: The epoch "seen" while the tier fails: no token looks like it (tokens are hex), so the next read drops.
_UNKNOWN = "unknown"
#: Seconds during which a forced refresh of an id is answered by the last one (per id).
REFRESH_INTERVAL = 1.0


def check_epoch(state: LookupState, now: float) -> None:
    """Drop the process tier if the shared tier's epoch moved since this process last looked."""
    shared = state.shared
    if shared is None:
        state._epoch_next = math.inf
        return
    state._epoch_next = now + EPOCH_INTERVAL
    token = shared.epoch()
    if token is None:
        if getattr(shared, "healthy", True):
            return  # a record that does not verify (written without the key): ignored
        # The tier failed to answer (down, or too slow under load): an invalidation may have passed
        # unseen. Drop the process tier now (what follows comes from the stores) and again when the tier
        # answers; meanwhile look only every few seconds, so a hit never waits on a dead tier each second.
        state._epoch_next = now + EPOCH_BACKOFF
        if state._epoch_seen != _UNKNOWN:
            state._epoch_seen = _UNKNOWN
            state.cache.clear()
        return
    seen, state._epoch_seen = state._epoch_seen, token
    if seen is not None and token != seen:
        state.cache.clear()
        log.debug("shared cache: an id was invalidated elsewhere; the process tier was dropped")


def refresh(state: LookupState, kind: str, key: str, team: str | None) -> Resolution | None:
    """Read ``key`` from the stores again, at most once per :data:`REFRESH_INTERVAL` (see the module
    docstring); returns what a lookup returns."""
    ckey: CacheKey = (kind, key, team)  # type: ignore[assignment]
    return state._flight.run(
        ("refresh", *ckey),
        lambda: _refresh_once(state, ckey),
        None,
        lambda: BackendTimeout(f"{kind} {key!r}: no answer to the refresh"),
    )


def _refresh_once(state: LookupState, ckey: CacheKey) -> Resolution | None:
    kind, key, team = ckey
    now = time.monotonic()
    last = state._refreshed.get(ckey)
    if last is None or now - last >= REFRESH_INTERVAL:
        fresh = None
        if state.shared is not None:
            entry = state.shared.get(ckey)
            if (
                entry is not None
                and entry.fresh(time.time())
                and time.time() - entry.stored_at < REFRESH_INTERVAL
            ):
                fresh = entry  # another process read the store a moment ago: that is the refresh
        if len(state._refreshed) > 4096:
            state._refreshed.clear()
        state._refreshed[ckey] = now
        if fresh is not None:
            state.adopt(ckey, fresh)
        else:
            state.cache.invalidate(ckey)
            if state.shared is not None:
                state.shared.invalidate(ckey)  # every process: the old value is not served after this
    return tiers.lookup(state, LookupContext(kind, key, team))
