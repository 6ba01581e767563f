"""OpenTelemetry spans of lookups: structure and attributes checked with the SDK's in-memory exporter;
without ``[audit] otel`` nothing of OpenTelemetry is imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from credpath import _audit
from credpath._cache import CacheSettings
from credpath._lookup import trace as lookup_trace
from credpath._resilience import BreakerSettings
from credpath._search_path import SearchPath
from credpath.errors import AccessDenied, BackendUnavailable
from tests import otel_exporter
from tests.memory_backend import MemoryBackend


@pytest.fixture
def spans():
    _audit.configure(_audit.AuditSettings())
    _audit.configure(_audit.AuditSettings(otel=True))
    yield otel_exporter.install()
    _audit.configure(_audit.AuditSettings())


class Retrying(MemoryBackend):
    """Reports two retries inside its read, as the retry loops of credpath._deadlines do."""

    def get_variable(self, key: str) -> str | None:
        lookup_trace.note_retry()
        lookup_trace.note_retry()
        return super().get_variable(key)


def sp(*backends: Any) -> SearchPath:
    return SearchPath(list(backends), cache=CacheSettings(jitter=0.0), breaker=BreakerSettings(enabled=False))


def test_lookup_span_with_store_call_children_and_retry_events(spans: InMemorySpanExporter) -> None:
    path = sp(("miss", MemoryBackend()), ("mem", Retrying(variables={"v": "s3cr3t-v"})))
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("airflow task") as task:
        path.get_variable("v")
    finished = {s.name: s for s in spans.get_finished_spans()}
    lookup = finished["credpath.lookup variable"]
    calls = [s for s in spans.get_finished_spans() if s.name == "credpath.store get"]
    assert lookup.parent is not None and lookup.parent.span_id == task.get_span_context().span_id
    assert [c.attributes["credpath.backend"] for c in calls] == ["miss", "mem"]
    assert all(c.parent is not None and c.parent.span_id == lookup.context.span_id for c in calls)
    assert [c.attributes["credpath.outcome"] for c in calls] == ["miss", "hit"]
    assert [len(c.events) for c in calls] == [0, 2] and calls[1].events[0].name == "retry"
    assert calls[1].attributes["credpath.retries"] == 2
    assert lookup.start_time <= calls[0].start_time <= calls[1].end_time <= lookup.end_time
    attributes = dict(lookup.attributes or {})
    assert {k: attributes[k] for k in ("credpath.kind", "credpath.id", "credpath.outcome")} == {
        "credpath.kind": "variable",
        "credpath.id": "v",
        "credpath.outcome": "hit",
    }
    assert (attributes["credpath.backend"], attributes["credpath.tier"]) == ("mem", "store")
    assert attributes["credpath.caller.pid"] > 0 and "credpath.latency_ms" in attributes
    path.get_variable("v")  # a process-cache hit: a span, no store call
    last = spans.get_finished_spans()[-1]
    assert (last.name, last.attributes["credpath.tier"]) == ("credpath.lookup variable", "process")


def test_errors_are_recorded_on_the_span_without_messages(spans: InMemorySpanExporter) -> None:
    failing = MemoryBackend()
    failing.fail_with = RuntimeError("s3cr3t-in-message")
    with pytest.raises(BackendUnavailable):
        sp(("bad", failing)).get_variable("v")
    denied = MemoryBackend()
    denied.fail_with = AccessDenied("backend denied: permission denied")
    with pytest.raises(AccessDenied):
        sp(("deny", denied)).get_variable("v")
    lookups = [s for s in spans.get_finished_spans() if s.name.startswith("credpath.lookup")]
    assert [(s.status.status_code, s.attributes["credpath.outcome"]) for s in lookups] == [
        (StatusCode.ERROR, "error"),
        (StatusCode.ERROR, "denied"),
    ]
    assert [e.attributes["exception.type"] for s in lookups for e in s.events] == [
        "BackendUnavailable",
        "AccessDenied",
    ]
    call = next(s for s in spans.get_finished_spans() if s.name == "credpath.store get")
    assert call.status.status_code == StatusCode.ERROR
    assert "s3cr3t" not in repr([s.to_json() for s in spans.get_finished_spans()])


def test_writes_and_prefetch_are_spans_too(spans: InMemorySpanExporter) -> None:
    path = sp(("mem", MemoryBackend(variables={"a": "1"})))
    path.set_variable("b", "s3cr3t-b")
    path.prefetch(variables=["a"])
    names = [s.name for s in spans.get_finished_spans()]
    assert names == ["credpath.write variable", "credpath.prefetch variable"]


def test_without_the_setting_nothing_of_opentelemetry_is_imported() -> None:
    code = textwrap.dedent(
        """
        import sys
        import credpath
        from credpath import _audit
        from credpath._search_path import SearchPath
        from tests.memory_backend import MemoryBackend
        _audit.configure(_audit.AuditSettings(enabled=True, sinks=("logger",)))
        path = SearchPath([("mem", MemoryBackend(variables={"v": "1"}))])
        path.get_variable("v"); path.get_variable("v"); path.set_variable("w", "2")
        _audit.flush()
        loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_without_a_current_span_the_parent_comes_from_traceparent(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's subprocess has no current span: the W3C TRACEPARENT its parent exported is used."""
    trace_id, parent_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    monkeypatch.setenv("TRACEPARENT", f"00-{trace_id:032x}-{parent_id:016x}-01")
    path = sp(("mem", MemoryBackend(variables={"v": "s3cr3t-v"})))
    path.get_variable("v")
    [lookup] = [s for s in spans.get_finished_spans() if s.name == "credpath.lookup variable"]
    assert lookup.context.trace_id == trace_id
    assert lookup.parent is not None and lookup.parent.span_id == parent_id
    # A current span wins over the environment (inside an Airflow task: the task's span).
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("worker.task") as task:
        path.get_variable("v")
    last = [s for s in spans.get_finished_spans() if s.name == "credpath.lookup variable"][-1]
    assert last.parent is not None and last.parent.span_id == task.get_span_context().span_id


def test_with_the_extra_absent_lookups_work_and_otel_true_is_one_line() -> None:
    code = textwrap.dedent(
        """
        import sys

        class NoOpenTelemetry:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opentelemetry":
                    raise ImportError(name)

        sys.meta_path.insert(0, NoOpenTelemetry())
        import credpath
        from credpath import _audit
        from credpath._search_path import SearchPath
        from credpath.errors import MissingDependency
        from tests.memory_backend import MemoryBackend
        _audit.configure(_audit.AuditSettings(enabled=True, sinks=("logger",)))
        path = SearchPath([("mem", MemoryBackend(variables={"v": "1"}))])
        assert path.get_variable("v") == "1"
        try:
            _audit.configure(_audit.AuditSettings(enabled=True, sinks=("logger",), otel=True))
        except MissingDependency as exc:
            assert "\\n" not in str(exc) and "credpath[otel]" in str(exc), str(exc)
        else:
            raise AssertionError("otel = true without OpenTelemetry was accepted")
        assert path.get_variable("v") == "1"
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
