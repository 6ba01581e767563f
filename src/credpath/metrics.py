"""Counters of store requests, lookups by cache tier, lookup latency, and Vault logins/renewals.

Off until :func:`enable` (``credpath web`` and the Airflow plugin turn it on); while off every hook is one
attribute test (``metrics.on``), and nothing here imports prometheus-client: it is imported only when
``/metrics`` is rendered (:func:`prometheus_text`), so ``import credpath`` stays free of it.

What is counted (the Prometheus names):

- ``credpath_store_requests_total{backend,kind,operation,outcome}``: one per call the search path makes to
  a backend (get, batch_get, prefetch, list) and per ``check()`` of the web's backends view. ``outcome``:
  hit, miss, error, throttled (the backend raised :class:`~credpath.errors.Throttled`).
  A call refused by an open circuit breaker reaches no store and is counted apart
  (``credpath_breaker_rejections_total``). A backend's own retries inside one call are one request here,
  and each is counted in ``credpath_store_retries_total{backend}`` (every retry is one more request the store
  bills: the retry loops of :mod:`credpath._deadlines` report it to the trace of the store call in progress).
- ``credpath_lookups_total{kind,tier,result}`` and ``credpath_lookup_seconds{kind,tier}``: each lookup by
  the tier that served it: ``process`` (the in-process cache: no store call), ``shared`` (the shared cache
  tier), ``store`` (a backend answered), ``stale`` (the serving backend failed and its last good value was
  served). ``result``: found, missing, error.

Everything but the Vault login counters and the web's checks arrives as the events of each lookup's trace
(:mod:`credpath._lookup.trace`): :func:`enable` subscribes :func:`_sink`, :func:`disable` unsubscribes it.
Nothing is inferred: the tier, the operation and the outcome are what the trace says.
- ``credpath_logins_total{backend}``, ``credpath_renewals_total{backend}``: Vault login and token-renewal
  requests.

With ``enable(stats=...)`` (inside Airflow: ``airflow.sdk.observability.stats.Stats``) every increment also
goes to Airflow's metrics (StatsD or OpenTelemetry, as the deployment configured), as
``credpath.store_requests``, ``credpath.store_retries``, ``credpath.lookups``, ``credpath.lookup`` (timing),
``credpath.logins`` and ``credpath.renewals`` with the same labels as tags.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from typing import Any

from credpath._lookup import trace as _trace

__all__ = [
    "auth_event",
    "breaker_rejected",
    "count_store",
    "disable",
    "enable",
    "instrument",
    "on",
    "prometheus_text",
    "reset",
    "snapshot",
    "store_counts",
]


#: Whether counting is on (read by the Vault backend's login and renewal hooks).
on = False
_stats: Any = None
_lock = threading.Lock()
_unsubscribe: Callable[[], None] | None = None

#: Lookup latency buckets (seconds): a process-cache hit is microseconds, a store read milliseconds.
BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_store: Counter[tuple[str, str, str, str]] = Counter()  # (backend, kind, operation, outcome)
_rejected: Counter[str] = Counter()  # backend
_retries: Counter[str] = Counter()  # backend
_lookups: Counter[tuple[str, str, str]] = Counter()  # (kind, tier, result)
_latency: dict[tuple[str, str], list[float]] = {}  # (kind, tier) -> per-bucket counts + [sum, count]
_auth: Counter[tuple[str, str]] = Counter()  # (event, backend)


def enable(stats: Any = None) -> None:
    """Start counting; ``stats``: an Airflow-style ``Stats`` (``incr``/``timing``) to send to as well."""
    global on, _stats, _unsubscribe
    if stats is not None:
        _stats = stats
    if _unsubscribe is None:
        _unsubscribe = _trace.subscribe(_sink)
    on = True


def disable() -> None:
    global on, _stats, _unsubscribe
    if _unsubscribe is not None:
        _unsubscribe()
        _unsubscribe = None
    on, _stats = False, None


def reset() -> None:
    """Forget every count (tests)."""
    with _lock:
        _store.clear()
        _rejected.clear()
        _retries.clear()
        _lookups.clear()
        _latency.clear()
        _auth.clear()


def instrument(search_path: Any) -> Any:
    """Kept for callers: every search path's lookups are counted while counting is on (the trace reaches
    the subscriber whichever path resolved it), so there is nothing to attach; returns ``search_path``."""
    return search_path


# --- the trace subscriber ------------------------------------------------------------------------------


def _sink(_context: _trace.LookupContext, event: _trace.Event) -> None:
    """Count one trace event (see the module docstring)."""
    if isinstance(event, _trace.Done):
        _count_lookup(event.kind, event.tier, event.result, event.seconds)
    elif isinstance(event, _trace.StoreCall):
        count_store(event.backend, event.kind, event.operation, event.outcome)
    elif isinstance(event, _trace.Retry):
        with _lock:
            _retries[event.backend] += 1
        if _stats is not None:
            _send("incr", "credpath.store_retries", tags={"backend": event.backend})
    elif isinstance(event, _trace.Rejected):
        breaker_rejected(event.backend)


def count_store(backend: str, kind: str, operation: str, outcome: str) -> None:
    with _lock:
        _store[(backend, kind, operation, outcome)] += 1
    if _stats is not None:
        tags = {"backend": backend, "kind": kind, "operation": operation, "outcome": outcome}
        _send("incr", "credpath.store_requests", tags=tags)


def breaker_rejected(backend: str) -> None:
    with _lock:
        _rejected[backend] += 1


#: Counted authentication and lease events, each a Prometheus family ``credpath_<event>s``.
_AUTH_FAMILIES = {
    "login": "Vault login requests, by backend.",
    "renewal": "Vault renewal requests, by backend.",
    "lease_mint": "Leased credentials minted (a database user, STS keys), by backend.",
    "lease_renewal": "Lease renewals granted, by backend.",
    "lease_revocation": "Leases revoked (process exit, task end, on demand), by backend.",
    "lease_expiration": "Leases that expired before they could be renewed or revoked, by backend.",
    "lease_failure": "Failed lease operations (mint, renew or revoke), by backend.",
}


def auth_event(event: str, backend: str) -> None:
    """A Vault ``login`` or ``renewal`` request, or a lease event (``_AUTH_FAMILIES``)."""
    with _lock:
        _auth[(event, backend)] += 1
    if _stats is not None:
        _send("incr", f"credpath.{event}s", tags={"backend": backend})


def _send(method: str, stat: str, *args: Any, tags: dict[str, str]) -> None:
    try:
        getattr(_stats, method)(stat, *args, tags=tags)
    except Exception:  # a metrics sink must never break a lookup
        pass


def _count_lookup(kind: str, tier: str, result: str, seconds: float) -> None:
    with _lock:
        _lookups[(kind, tier, result)] += 1
        counts = _latency.get((kind, tier))
        if counts is None:
            counts = _latency[(kind, tier)] = [0.0] * (len(BUCKETS) + 2)
        index = bisect_left(BUCKETS, seconds)  # the first bound >= seconds; beyond the last: +Inf only
        if index < len(BUCKETS):
            counts[index] += 1
        counts[-2] += seconds
        counts[-1] += 1
    if _stats is not None:
        _send("incr", "credpath.lookups", tags={"kind": kind, "tier": tier, "result": result})
        _send("timing", "credpath.lookup", seconds * 1000.0, tags={"kind": kind, "tier": tier})


# --- reading the counts --------------------------------------------------------------------------------


def store_counts(backend: str) -> dict[str, int]:
    """Store requests of ``backend`` by outcome (the web's backends view)."""
    with _lock:
        counts: Counter[str] = Counter()
        for (name, _kind, _op, outcome), n in _store.items():
            if name == backend:
                counts[outcome] += n
        counts["rejected by breaker"] += _rejected.get(backend, 0)
        counts["retries"] += _retries.get(backend, 0)
        for (event, name), n in _auth.items():
            if name == backend:
                counts[f"{event}s"] += n
    return {k: v for k, v in counts.items() if v}


def snapshot() -> dict[str, dict[tuple[str, ...], float]]:
    with _lock:
        return {
            "store": {k: float(v) for k, v in _store.items()},
            "lookups": {k: float(v) for k, v in _lookups.items()},
            "auth": {k: float(v) for k, v in _auth.items()},
            "rejected": {(k,): v for k, v in _rejected.items()},
            "retries": {(k,): v for k, v in _retries.items()},
        }


def prometheus_text() -> tuple[bytes, str]:
    """The counts in the Prometheus text format: (body, content type). Needs prometheus-client."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        with _lock:
            store, rejected, lookups, auth = dict(_store), dict(_rejected), dict(_lookups), dict(_auth)
            retries = dict(_retries)
            latency = {k: list(v) for k, v in _latency.items()}
        family = CounterMetricFamily(
            "credpath_store_requests",
            "Calls to a backend's store, by backend, kind, operation and outcome.",
            labels=["backend", "kind", "operation", "outcome"],
        )
        for labels, n in sorted(store.items()):
            family.add_metric(list(labels), n)
        yield family
        family = CounterMetricFamily(
            "credpath_store_retries",
            "Requests a backend retried inside one store call (each one more request to the store).",
            labels=["backend"],
        )
        for name, n in sorted(retries.items()):
            family.add_metric([name], n)
        yield family
        family = CounterMetricFamily(
            "credpath_breaker_rejections",
            "Calls refused by an open circuit breaker (no store request made).",
            labels=["backend"],
        )
        for name, n in sorted(rejected.items()):
            family.add_metric([name], n)
        yield family
        family = CounterMetricFamily(
            "credpath_lookups", "Lookups by the tier that served them.", labels=["kind", "tier", "result"]
        )
        for lookup_labels, n in sorted(lookups.items()):
            family.add_metric(list(lookup_labels), n)
        yield family
        histogram = HistogramMetricFamily(
            "credpath_lookup_seconds", "Lookup latency by tier.", labels=["kind", "tier"]
        )
        for latency_labels, counts in sorted(latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip(BUCKETS, counts, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", counts[-1]))
            histogram.add_metric(list(latency_labels), buckets, counts[-2])
        yield histogram
        from credpath import _audit

        family = CounterMetricFamily(
            "credpath_audit_events",
            "Audit events by fate: written, dropped (queue full), failed (a sink raised), sampled_out.",
            labels=["fate"],
        )
        for fate, n in sorted(_audit.counters().items()):
            family.add_metric([fate], n)
        yield family
        for event, help_text in _AUTH_FAMILIES.items():
            family = CounterMetricFamily(f"credpath_{event}s", help_text, labels=["backend"])
            for (kind, name), n in sorted(auth.items()):
                if kind == event:
                    family.add_metric([name], n)
            yield family
