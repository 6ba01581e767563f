"""OpenTelemetry spans of lookups and audited operations (``[audit] otel = true``; the ``otel`` extra).

Imported only when spans are on: without it ``import credpath`` and every lookup import nothing of
OpenTelemetry. Only the API is used: the deployment (or Airflow, when its OpenTelemetry traces are
configured) installs the SDK's tracer provider; with none, the API's no-op tracer costs next to nothing.

Span tree: one span per lookup (``credpath.lookup <kind>``), one child span per store call
(``credpath.store <operation>``). A lookup's trace reports each store call when it has ended, with its
duration, and the lookup when it is done: the spans are built then, with the start and end times the trace
measured, under the span current at that moment. Inside an Airflow 3 task with ``[traces] otel_on``, that
is the task runner's ``worker.<task_id>`` span (itself a child of the ``context_carrier`` Airflow hands the
task), so credpath's spans join the task's trace. A process with no current span (an operator's
subprocess, a script) takes its parent from the ``TRACEPARENT`` / ``TRACESTATE`` environment variables,
OpenTelemetry's carrier for a parent process's context, when they are set. A retry is a
span event (``retry``) on its store call's span, and a call refused by an open breaker an event
(``breaker_rejected``) on the lookup's span: the trace gives the moment of each, not a duration.

Errors: the span's status is ERROR with the outcome (error, denied) as description, plus an
``exception`` event carrying ``exception.type`` only: an exception's message may hold a secret, so
``record_exception`` (which writes the message and traceback) is never used.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from credpath._lookup import trace as _trace
from credpath.errors import MissingDependency

__all__ = ["Spans", "check"]


def check() -> None:
    """Raise MissingDependency (one line, exit 2) when the API is not installed."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "[audit] otel = true needs OpenTelemetry: pip install 'credpath[otel]'", module="opentelemetry"
        ) from None


class Spans:
    """Builds the spans from the events :mod:`credpath._audit` hands it (same thread as the lookup)."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode

        self.trace = trace
        self.tracer = trace.get_tracer("credpath")
        self.error_status: Callable[[str], Any] = lambda description: Status(StatusCode.ERROR, description)
        self.local = threading.local()
        self._env_parent: tuple[tuple[str | None, str | None], Any] = ((None, None), None)

    def parent(self) -> Any:
        """The context the spans start under: the current one (its active span: Airflow's task span), or
        else the parent the environment carries (``TRACEPARENT``), else None (a new trace)."""
        if self.trace.get_current_span().get_span_context().is_valid:
            return None  # the current context is the parent
        carried = (os.environ.get("TRACEPARENT"), os.environ.get("TRACESTATE"))
        if carried[0] is None:
            return None
        if carried != self._env_parent[0]:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            carrier = {"traceparent": carried[0], **({"tracestate": carried[1]} if carried[1] else {})}
            self._env_parent = (carried, TraceContextTextMapPropagator().extract(carrier))
        return self._env_parent[1]

    def _state(self, context: _trace.LookupContext) -> dict[str, Any]:
        state = getattr(self.local, "state", None)
        if state is None or state["context"] is not context:
            state = {"context": context, "calls": [], "retries": [], "rejected": []}
            self.local.state = state
        return state

    def store_call(self, context: _trace.LookupContext, event: _trace.StoreCall) -> None:
        state = self._state(context)
        retries = [at for backend, at in state["retries"] if backend == event.backend]
        state["retries"] = [r for r in state["retries"] if r[0] != event.backend]
        state["calls"].append((event, time.time_ns(), retries))

    def other(self, context: _trace.LookupContext, event: _trace.Event) -> None:
        if isinstance(event, _trace.Retry):
            self._state(context)["retries"].append((event.backend, time.time_ns()))
        elif isinstance(event, _trace.Rejected):
            self._state(context)["rejected"].append((event.backend, time.time_ns()))

    def lookup(
        self,
        context: _trace.LookupContext,
        done: _trace.Done,
        outcome: str,
        source: str | None,
        version: str | None,
        error: str | None,
    ) -> None:
        state = self._state(context)
        self.local.state = None
        end = time.time_ns()
        attributes = _attributes(
            "lookup",
            context.kind,
            context.key,
            context.team,
            outcome,
            source,
            context.tier,
            version,
            done.seconds,
        )
        span = self.tracer.start_span(
            f"credpath.lookup {context.kind}",
            context=self.parent(),
            start_time=end - int(done.seconds * 1e9),
            attributes=attributes,
        )
        parent = self.trace.set_span_in_context(span)
        for backend, at in state["rejected"]:
            span.add_event("breaker_rejected", {"credpath.backend": backend}, timestamp=at)
        for call, call_end, retries in state["calls"]:
            child = self.tracer.start_span(
                f"credpath.store {call.operation}",
                context=parent,
                start_time=call_end - int(call.seconds * 1e9),
                attributes={
                    "credpath.backend": call.backend,
                    "credpath.kind": call.kind,
                    "credpath.id": context.key,
                    "credpath.operation": call.operation,
                    "credpath.outcome": call.outcome,
                    "credpath.retries": len(retries),
                    **({"credpath.version": call.version} if call.version is not None else {}),
                },
            )
            for at in retries:
                child.add_event("retry", timestamp=at)
            if call.outcome in ("error", "throttled"):
                child.set_status(self.error_status(call.outcome))
            child.end(end_time=call_end)
        if error is not None:
            span.set_status(self.error_status(outcome))
            span.add_event("exception", {"exception.type": error})
        span.end(end_time=end)

    def operation(self, item: tuple[Any, ...]) -> None:
        """A span for an operation recorded by :func:`credpath._audit.record` (a write, a prefetch...)."""
        (_stamp, operation, kind, key, team, outcome, backend, tier, version, seconds, _pid, _task, error) = (
            item[:13]
        )
        end = time.time_ns()
        attributes = _attributes(operation, kind, key, team, outcome, backend, tier, version, seconds)
        span = self.tracer.start_span(
            f"credpath.{operation} {kind}",
            context=self.parent(),
            start_time=end - int((seconds or 0.0) * 1e9),
            attributes=attributes,
        )
        if error is not None:
            span.set_status(self.error_status(outcome))
            span.add_event("exception", {"exception.type": error})
        span.end(end_time=end)


def _attributes(
    operation: str,
    kind: str,
    key: str,
    team: str | None,
    outcome: str,
    backend: str | None,
    tier: str | None,
    version: str | None,
    seconds: float | None,
) -> dict[str, Any]:
    """The audit event's fields as span attributes (``credpath.*``; the caller's: ``credpath.caller.*``)."""
    from credpath import _audit

    host, user = _audit.identity()
    attributes: dict[str, Any] = {
        "credpath.operation": operation,
        "credpath.kind": kind,
        "credpath.id": key,
        "credpath.outcome": outcome,
        "credpath.caller.host": host,
        "credpath.caller.pid": os.getpid(),
        "credpath.caller.user": user,
    }
    for name, value in (("team", team), ("backend", backend), ("tier", tier), ("version", version)):
        if value is not None:
            attributes[f"credpath.{name}"] = value
    if seconds is not None:
        attributes["credpath.latency_ms"] = round(seconds * 1000.0, 3)
    task = _audit._task()
    for name, value in zip(("dag_id", "task_id", "run_id", "try_number", "map_index"), task, strict=True):
        if value is not None:
            attributes[f"credpath.caller.{name}"] = value
    return attributes
