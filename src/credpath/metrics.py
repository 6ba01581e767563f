"""Counters of store requests, lookups by cache tier, lookup latency, and Vault logins/renewals.

Off until :func:`enable` (``credpath web`` and the Airflow plugin turn it on); while off every hook is one
attribute test (``metrics.on``), and nothing here imports prometheus-client: it is imported only when
``/metrics`` is rendered (:func:`prometheus_text`), so ``import credpath`` stays free of it.

What is counted (the Prometheus names):

- ``credpath_store_requests_total{backend,kind,operation,outcome}``: one per call the search path makes to
  a backend (``SearchPath._call``: get, batch_get, prefetch, list) and per ``check()`` of the web's backends
  view. ``outcome``: hit, miss, error, throttled (an error whose safe message says the store throttled).
  A call refused by an open circuit breaker reaches no store and is counted apart
  (``credpath_breaker_rejections_total``). A backend's own retries inside one call are one request here,
  and each is counted in ``credpath_store_retries_total{backend}`` (every retry is one more request the store
  bills: the retry loops of :mod:`credpath.deadlines` report it for the backend the search path is calling).
- ``credpath_lookups_total{kind,tier,result}`` and ``credpath_lookup_seconds{kind,tier}``: each lookup of an
  instrumented search path (:func:`instrument`) by the tier that served it: ``process`` (the in-process
  cache: no store call), ``shared`` (a shared cache tier, reported by it through :func:`note_tier`),
  ``store`` (a backend was asked), ``stale`` (the serving backend failed and its last good value was
  served). ``result``: found, missing, error.
- ``credpath_logins_total{backend}``, ``credpath_renewals_total{backend}``: Vault login and token-renewal
  requests.

With ``enable(stats=...)`` (inside Airflow: ``airflow.sdk.observability.stats.Stats``) every increment also
goes to Airflow's metrics (StatsD or OpenTelemetry, as the deployment configured), as
``credpath.store_requests``, ``credpath.store_retries``, ``credpath.lookups``, ``credpath.lookup`` (timing),
``credpath.logins`` and ``credpath.renewals`` with the same labels as tags.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

__all__ = [
    "auth_event",
    "breaker_rejected",
    "count_store",
    "disable",
    "enable",
    "instrument",
    "note_tier",
    "on",
    "prometheus_text",
    "reset",
    "snapshot",
    "store_call",
    "store_counts",
    "store_retry",
    "storing_for",
]


#: Whether counting is on (read by the hooks in the search path and the Vault backend).
on = False
_stats: Any = None
_lock = threading.Lock()
_local = threading.local()

#: Lookup latency buckets (seconds): a process-cache hit is microseconds, a store read milliseconds.
BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_store: Counter[tuple[str, str, str, str]] = Counter()  # (backend, kind, operation, outcome)
_rejected: Counter[str] = Counter()  # backend
_retries: Counter[str] = Counter()  # backend
_lookups: Counter[tuple[str, str, str]] = Counter()  # (kind, tier, result)
_latency: dict[tuple[str, str], list[float]] = {}  # (kind, tier) -> per-bucket counts + [sum, count]
_auth: Counter[tuple[str, str]] = Counter()  # (event, backend)

_OPERATIONS = {
    "_read": "get",
    "read_batch": "batch_get",
    "read_all": "prefetch",
    "list_ids": "list",
    "get_conn_values": "batch_get",
    "get_variables": "batch_get",
    "prefetch_connections": "prefetch",
    "prefetch_variables": "prefetch",
    "list_connections": "list",
    "list_variables": "list",
}


def enable(stats: Any = None) -> None:
    """Start counting; ``stats``: an Airflow-style ``Stats`` (``incr``/``timing``) to send to as well."""
    global on, _stats
    if stats is not None:
        _stats = stats
    on = True


def disable() -> None:
    global on, _stats
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


# --- hooks ---------------------------------------------------------------------------------------------


def _classify(func: Any, args: tuple[Any, ...]) -> tuple[str, str]:
    """(kind, operation) of a call ``SearchPath._call`` makes: ``_read(entry, kind, ...)``,
    ``call_backend_method(bound_method, ...)`` or a bound lister."""
    name = getattr(func, "__name__", "")
    if name in ("_read", "read_batch", "read_all", "list_ids") and len(args) >= 2:  # (entry/backend, kind)
        return str(args[1]), _OPERATIONS[name]
    if name == "call_backend_method" and args:
        name = getattr(args[0], "__name__", "")
    operation = _OPERATIONS.get(name, name or "call")
    kind = "variable" if "variable" in name else "connection" if ("conn" in name) else "other"
    return kind, operation


def _outcome(result: Any, error: BaseException | None) -> str:
    if error is not None:
        return "throttled" if "throttl" in str(error).lower() else "error"
    if result is None or (isinstance(result, dict | list | tuple | set) and not result):
        return "miss"
    return "hit"


def store_call(
    backend: str, func: Any, args: tuple[Any, ...], result: Any = None, error: BaseException | None = None
) -> None:
    """One call the search path made to ``backend`` (hook in ``SearchPath._call``)."""
    kind, operation = _classify(func, args)
    count_store(backend, kind, operation, _outcome(result, error))


def count_store(backend: str, kind: str, operation: str, outcome: str) -> None:
    with _lock:
        _store[(backend, kind, operation, outcome)] += 1
    calls = getattr(_local, "calls", None)
    if calls is not None:
        calls.append((backend, outcome))
    if _stats is not None:
        tags = {"backend": backend, "kind": kind, "operation": operation, "outcome": outcome}
        _send("incr", "credpath.store_requests", tags=tags)


def storing_for(backend: str | None) -> str | None:
    """Mark this thread as calling ``backend`` (None: no longer); returns the mark it replaces (hook in
    ``SearchPath._call``, which puts it back after the call), so retries are counted for that backend."""
    outer = getattr(_local, "backend", None)
    _local.backend = backend
    return outer  # type: ignore[no-any-return]


def store_retry() -> None:
    """One more try of a store request inside one call (hook in the retry loops of credpath.deadlines)."""
    backend = getattr(_local, "backend", None)
    if backend is None:  # not a call the search path is making (a CLI check, a migration)
        return
    with _lock:
        _retries[backend] += 1
    if _stats is not None:
        _send("incr", "credpath.store_retries", tags={"backend": backend})


def breaker_rejected(backend: str) -> None:
    with _lock:
        _rejected[backend] += 1


def auth_event(event: str, backend: str) -> None:
    """A Vault ``login`` or ``renewal`` request (hook in the Vault backend)."""
    with _lock:
        _auth[(event, backend)] += 1
    if _stats is not None:
        _send("incr", f"credpath.{event}s", tags={"backend": backend})


def note_tier(tier: str) -> None:
    """Called by a cache tier that served the current lookup (e.g. ``"shared"``)."""
    if getattr(_local, "calls", None) is not None:
        _local.tier = tier


def _send(method: str, stat: str, *args: Any, tags: dict[str, str]) -> None:
    try:
        getattr(_stats, method)(stat, *args, tags=tags)
    except Exception:  # a metrics sink must never break a lookup
        pass


# --- lookups -------------------------------------------------------------------------------------------


def instrument(search_path: Any) -> Any:
    """Count the lookups of ``search_path`` by tier (wraps its ``lookup`` and ``get_connection``)."""
    if getattr(search_path, "_credpath_metrics", False):
        return search_path
    live = {e.name for e in search_path.entries if not e.cache_results}
    for name in ("lookup", "get_connection"):
        original = getattr(search_path, name)
        setattr(search_path, name, _wrap(original, name, live))
    search_path._credpath_metrics = True
    return search_path


def _wrap(original: Any, name: str, live: set[str]) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not on or getattr(_local, "calls", None) is not None:  # off, or inside an outer lookup
            return original(*args, **kwargs)
        kind = args[0] if name == "lookup" else "connection"
        _local.calls, _local.tier = [], None
        started = time.perf_counter()
        result, failed = None, False
        try:
            result = original(*args, **kwargs)
            return result
        except Exception as exc:
            failed = not isinstance(exc, KeyError)  # NotFound is a KeyError: a miss, not an error
            raise
        finally:
            elapsed = time.perf_counter() - started
            calls, tier = _local.calls, _local.tier
            _local.calls = _local.tier = None
            source = getattr(result, "source", None)
            if source is None and result is not None and name == "get_connection":
                source = ""  # a connection object: served, source unknown here
            if tier is None:
                failed_calls = any(o in ("error", "throttled") for _, o in calls)
                if source and any(b == source and o in ("error", "throttled") for b, o in calls):
                    tier = "stale"
                elif result is not None and failed_calls and not any(o == "hit" for _, o in calls):
                    tier = "stale"  # found, yet no store answered with it: the kept last good value
                elif calls or (source and source in live):
                    tier = "store"
                else:
                    tier = "process"
            found = "error" if failed else ("found" if result is not None else "missing")
            _count_lookup(str(kind), tier, found, elapsed)

    return wrapped


def _count_lookup(kind: str, tier: str, result: str, seconds: float) -> None:
    with _lock:
        _lookups[(kind, tier, result)] += 1
        counts = _latency.get((kind, tier))
        if counts is None:
            counts = _latency[(kind, tier)] = [0.0] * (len(BUCKETS) + 2)
        for index, bound in enumerate(BUCKETS):
            if seconds <= bound:
                counts[index] += 1
                break
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
            "store": dict(_store),
            "lookups": dict(_lookups),
            "auth": dict(_auth),
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
        for labels, n in sorted(lookups.items()):
            family.add_metric(list(labels), n)
        yield family
        histogram = HistogramMetricFamily(
            "credpath_lookup_seconds", "Lookup latency by tier.", labels=["kind", "tier"]
        )
        for labels, counts in sorted(latency.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip(BUCKETS, counts, strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", counts[-1]))
            histogram.add_metric(list(labels), buckets, counts[-2])
        yield histogram
        for event in ("login", "renewal"):
            family = CounterMetricFamily(
                f"credpath_{event}s", f"Vault {event} requests, by backend.", labels=["backend"]
            )
            for (kind, name), n in sorted(auth.items()):
                if kind == event:
                    family.add_metric([name], n)
            yield family
