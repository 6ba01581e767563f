"""THE error policy, the circuit breaker around every store call, and the backed-off stale refresh.

THE ERROR POLICY: the one place that decides what a backend's exception means, for every read path
(lookup and explain, prefetch by id and by prefix, the shadow check of prefix prefetch, listing).

1. ConfigError (MissingDependency, a wrong Fernet key, a malformed stored value) propagates.
   Why: the configuration or the data is wrong; skipping hides it, a retry cannot fix it, and
   "not found" would be a lie (a bad CREDPATH_FERNET_KEY once exited 1 "not found").
2. AccessDenied propagates, whatever on_error says (Airflow's AirflowSecretsBackendAccessDenied).
   Why: falling through could serve a copy the caller is no longer allowed to read; serving a stale
   value would do the same. A denial is a healthy store's answer: no breaker failure, no retry.
3. Anything else is transient (BackendError, CircuitOpen, BackendTimeout, or a foreign exception,
   whose message is withheld because it may carry a secret). It has counted against the breaker
   (:func:`call`); then, in this order:
   a. lookup only: the backend's OWN last good value, if kept within [cache] stale_if_error, is
      served (one WARNING per outage naming backend and age), and the store is not asked again for a
      kept value until its refresh back-off has passed (:class:`~credpath._resilience.RefreshBackoff`).
      Why: it is what the backend said last, better than a lower backend's possibly different copy and
      better than an error; and a dead store asked on every lookup only adds load to its recovery.
   b. on_error="fail": raised (a foreign exception as a BackendError naming the backend). Why: the
      user chose to stop at this backend rather than fall through.
   c. on_error="skip" (default, Airflow's behaviour): logged, and the caller goes on with the next
      backend. Why: Airflow falls through; but the result is never cached (the backend may shadow it
      once it recovers), a hit from a later backend is logged as a fall-through, and if nothing is
      found the lookup raises BackendUnavailable naming the failed backends, never NotFound.
ReadOnlyBackend from a listing method is a capability ("cannot list"), not a failure: listing catches
it before this policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from credpath._lookup import trace as _trace
from credpath._lookup.model import MISS, CacheKey, Entry, Resolution, named
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext, Rejected, StoreCall
from credpath.errors import (
    AccessDenied,
    BackendError,
    CircuitOpen,
    ConfigError,
    ReadOnlyBackend,
    Throttled,
    safe_reason,
)

__all__ = ["call", "failure", "kept"]

log = logging.getLogger("credpath.search_path")


def call(
    context: LookupContext,
    entry: Entry,
    operation: str,
    kind: str,
    func: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Run one store call (``operation``: get, batch_get, prefetch, list) behind the backend's breaker,
    reporting it to the trace when anything listens."""
    breaker = entry.breaker
    if not breaker.allow():
        if context.live:
            context.emit(Rejected(entry.name, breaker.describe()))
        raise breaker.open_error(entry.label)
    context.version = None
    context.valid_until = None
    if context.live:
        return _traced(context, entry, operation, kind, func, *args, **kwargs)
    token = _trace._CALLING.set((context, entry.name))  # the backend reports its version to it
    try:
        result = func(*args, **kwargs)
    except (ConfigError, AccessDenied, ReadOnlyBackend):
        breaker.success()  # the store answered, or the fault is the configuration's: not an outage
        raise
    except BaseException:
        _failed(entry)
        raise
    finally:
        _trace._CALLING.reset(token)
    _succeeded(entry)
    return result


def _traced(
    context: LookupContext,
    entry: Entry,
    operation: str,
    kind: str,
    func: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """:func:`call` with its :class:`StoreCall` event, and the call marked for the retries inside it."""
    started = time.perf_counter()
    token = _trace._CALLING.set((context, entry.name))
    try:
        result = func(*args, **kwargs)
    except (ConfigError, AccessDenied, ReadOnlyBackend) as exc:
        entry.breaker.success()
        if not isinstance(exc, ReadOnlyBackend):  # "cannot list" is a capability, not a store call
            context.emit(StoreCall(entry.name, kind, operation, "error", time.perf_counter() - started))
        raise
    except BaseException as exc:
        outcome = "throttled" if isinstance(exc, Throttled) else "error"
        context.emit(StoreCall(entry.name, kind, operation, outcome, time.perf_counter() - started))
        _failed(entry)
        raise
    finally:
        _trace._CALLING.reset(token)
    _succeeded(entry)
    empty = result is None or (isinstance(result, dict | list | tuple | set) and not result)
    outcome = "miss" if empty else "hit"
    context.emit(
        StoreCall(
            entry.name,
            kind,
            operation,
            outcome,
            time.perf_counter() - started,
            context.version,
            context.valid_until,
        )
    )
    return result


def _succeeded(entry: Entry) -> None:
    entry.breaker.success()
    if entry.refresh.failures:
        entry.refresh.succeeded()


def _failed(entry: Entry) -> None:
    breaker = entry.breaker
    if breaker.failure():
        log.warning(
            "%s failed %d times in a row; failing fast for %g s (circuit breaker open)",
            entry.label,
            breaker.failures,
            breaker.cool_down,
        )


def kept(state: LookupState, ckey: CacheKey, entry: Entry) -> tuple[Resolution, float] | None:
    """``entry``'s own last good value for ``ckey`` still in the stale-if-error window, and its age."""
    stale = state.cache.get_stale(ckey)
    if stale is not None and stale[0] is not MISS and stale[0].source == entry.name:
        return stale
    return None


def failure(
    state: LookupState,
    entry: Entry,
    exc: BaseException,
    what: str,
    *,
    stale_key: CacheKey | None = None,
    then: str = "trying the next backend",
) -> BackendError | tuple[Resolution, float]:
    """Apply the error policy above to ``exc`` from ``entry``: raise it, or return the stale value to
    serve with its age, or return the (safe) transient error the caller records before going on."""
    if isinstance(exc, ConfigError | AccessDenied):  # rules 1 and 2
        raise exc
    if isinstance(exc, BackendError):
        error = exc
    else:
        error = BackendError(f"{entry.label}: {safe_reason(exc)}", backend=entry.name)
    if stale_key is not None and (stale := kept(state, stale_key, entry)) is not None:  # rule 3a
        if not isinstance(error, CircuitOpen):  # a refused call is no failed refresh: no longer wait
            entry.refresh.failed()
        state.warn_once(
            stale_key,
            "stale",
            "%s: %s; serving its last good value, %.0f s old (stale-if-error, up to %g s)",
            what,
            named(entry, error),
            stale[1],
            state.cache.settings.stale_if_error,
        )
        if state.shared is not None:
            state.shared.count("stale_served")
        return stale
    if entry.on_error == "fail":  # rule 3b
        raise error from None
    # rule 3c; a breaker failing fast repeats its one WARNING (logged when it opened) only at DEBUG
    level = logging.DEBUG if isinstance(error, CircuitOpen) else logging.WARNING
    log.log(level, "%s: %s; %s", what, named(entry, error), then)
    return error
