"""The version check at expiry: ask the store whether a cached value's version is still current.

Where a backend declares the capability "version_check" and is configured with ``version_check = true``
(Secrets Manager ``DescribeSecret``, Vault KV v2 metadata), an expired value that carries the store's
version is not read again at once: the backend is asked for the current version (a metadata request, never
the value). Unchanged: the value is served and cached for another TTL, still capped at the store's next
announced change (``valid_until``). Changed, or no answer: the value is read as without the check. The
check is a store call like a read (behind the backend's breaker, in the trace as operation "check"), tried
once: a failing store goes on to the read, where the error policy (stale-if-error) decides.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from credpath._lookup import trace
from credpath._lookup.model import CacheKey, Entry, Resolution
from credpath._lookup.policy import call
from credpath._lookup.trace import LookupContext, VersionCheck
from credpath.protocol import enabled

__all__ = ["checks_versions", "unchanged"]

log = logging.getLogger("credpath.search_path")


def checks_versions(entry: Entry) -> bool:
    """Whether ``entry``'s backend declares "version_check" and was configured with it on."""
    return enabled(entry.backend, "version_check")


def unchanged(context: LookupContext, entry: Entry, ckey: CacheKey, cached: Resolution) -> Any:
    """The cached value if the store says its version is still current (the context then carries its
    version and new cap, as a read would), else None: read it."""
    if cached.version is None:
        return None
    kind, key, team = ckey
    try:
        with trace.single_try():
            answer = call(
                context,
                entry,
                "check",
                kind,
                cast(Any, entry.backend).check_version,  # declared "version_check" (checks_versions)
                kind,
                key,
                team,
                cached.version,
            )
    except Exception as exc:  # the read that follows meets the same store under the error policy
        log.debug(
            "%s: version check of %s %r failed (%s): reading it", entry.name, kind, key, type(exc).__name__
        )
        return None
    if not isinstance(answer, VersionCheck) or not answer.unchanged:
        return None
    context.version = cached.version
    context.valid_until = answer.valid_until
    log.debug("%s: %s %r unchanged at version %s: not read again", entry.name, kind, key, cached.version)
    return cached.value
