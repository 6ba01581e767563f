"""The trace of a lookup: explain reads it, metrics subscribe to it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from credpath._search_path import SearchPath
from credpath.errors import BackendError, BackendUnavailable, ConfigError, NotFound
from tests.lookup.helpers import (
    URI_A,
    URI_B,
    Clock,
    Node,
    expired_cache,
    no_breaker,
    path,
    quiet_path,
)
from tests.memory_backend import (
    MemoryBackend,
    Unreachable,
)


def test_explain_reports_every_backend():
    first = MemoryBackend(connections_lookup_pattern="^aws_")
    second = MemoryBackend()
    second.fail_with = Unreachable("sealed")
    empty = MemoryBackend()
    third = MemoryBackend({"db": URI_A})
    fourth = MemoryBackend({"db": URI_B})
    sp = path(first, second, empty, third, fourth)
    explanation = sp.explain("connection", "db")
    assert explanation.source == "b3" and explanation.found and explanation.fell_through
    outcomes = [(a.backend, a.outcome) for a in explanation.attempts]
    assert outcomes == [
        ("b0", "skipped (pattern)"),
        ("b1", "error"),
        ("b2", "miss"),
        ("b3", "hit"),
        ("b4", "not tried"),
    ]
    assert "sealed" in explanation.attempts[1].detail
    assert explanation.attempts[3].detail == "served while backend 'b1' failed"
    assert explanation.failed == ["b1"] and not explanation.cached and not explanation.stale
    assert fourth.calls == [] and first.calls == []
    assert all(a.seconds >= 0 for a in explanation.attempts)


def test_fall_through_is_logged_and_explained_and_fail_stops_there(caplog):
    broken = MemoryBackend({"db": URI_A})
    broken.fail_with = Unreachable("backend 'vault' (Memory): sealed")
    sp = SearchPath([("vault", broken), ("env", MemoryBackend({"db": URI_B}))], breaker=no_breaker())
    with caplog.at_level(logging.WARNING):
        assert sp.get_connection("db").host == "db-b"
        sp.get_connection("db")
    assert caplog.text.count("served from 'env' while backend 'vault' failed") == 1  # once per outage
    explanation = sp.explain("connection", "db")
    assert explanation.fell_through and explanation.failed == ["vault"]
    assert explanation.attempts[1].detail == "served while backend 'vault' failed"
    sp.entries[0].on_error = "fail"
    with pytest.raises(BackendError, match="sealed"):
        sp.get_connection("db")


def test_stale_value_is_served_when_the_refresh_fails_once_warned_and_explained(caplog):
    vault = MemoryBackend({"db": URI_A})
    env = MemoryBackend({"db": URI_B})  # a lower backend's different copy
    sp = SearchPath([("vault", vault), ("env", env)], cache=expired_cache(), breaker=no_breaker())
    assert sp.get_connection("db").host == "db-a"
    vault.fail_with = Unreachable("backend 'vault' (Memory): HTTP 503")
    with caplog.at_level(logging.WARNING):
        assert sp.get_connection("db").host == "db-a"  # main: env's copy (db-b)
        assert sp.get_connection("db").host == "db-a"
    warnings = [r for r in caplog.records if "stale-if-error" in r.getMessage()]
    assert len(warnings) == 1
    assert "'vault'" in warnings[0].getMessage() and " s old" in warnings[0].getMessage()
    assert "pw-s3cr3t" not in caplog.text
    assert ("get_conn_value", "db") not in env.calls
    explanation = sp.explain("connection", "db")
    assert explanation.stale and explanation.source == "vault" and explanation.stale_age is not None
    assert [a.outcome for a in explanation.attempts] == ["stale", "not tried"]
    vault.fail_with = None  # recovered: fresh again, and the next outage warns again
    assert sp.get_connection("db").host == "db-a"
    assert not sp.explain("connection", "db").stale


def test_breaker_stops_calling_a_failing_backend_and_explain_shows_it(caplog):
    from credpath._resilience import BreakerSettings

    vault = MemoryBackend()
    vault.fail_with = Unreachable("backend 'vault' (Memory): HTTP 503")
    sp = SearchPath(
        [("vault", vault), ("env", MemoryBackend({"db": URI_B}))],
        breaker=BreakerSettings(failures=3, cool_down=60.0),
    )
    with caplog.at_level(logging.WARNING):
        for i in range(20):
            with pytest.raises(BackendUnavailable):
                sp.get_variable(f"v{i}")
            assert sp.get_connection("db").host == "db-b"
    assert len(vault.calls) == 3  # main: 40
    assert caplog.text.count("circuit breaker open") == 1
    assert sp.breaker_state("vault").startswith("open")
    explanation = sp.explain("connection", "db")
    assert explanation.attempts[0].breaker.startswith("open")
    assert "circuit breaker open" in explanation.attempts[0].detail


def test_explain_times_one_time_startup_apart_from_the_lookup():
    from tests.memory_backend import SlowStartMemoryBackend

    backend = SlowStartMemoryBackend({"db": URI_A}, startup=0.05)
    sp = SearchPath([("slow", backend)])
    attempt = sp.explain("connection", "db").attempts[0]
    assert attempt.outcome == "hit"
    assert attempt.startup_seconds >= 0.05  # prepare() ran before the read and was timed on its own
    assert attempt.seconds < attempt.startup_seconds
    second = sp.explain("connection", "db").attempts[0]
    assert backend.prepared == 2 and second.startup_seconds < 0.05  # idempotent after the first call


def test_explain_use_cache_reports_the_cached_answer_without_calls():
    backend = MemoryBackend({"db": URI_A})
    sp = path(backend)
    fresh = sp.explain("connection", "db", use_cache=True)  # nothing cached yet: resolves
    assert (fresh.cached, fresh.source, [a.outcome for a in fresh.attempts]) == (False, "b0", ["hit"])
    backend.calls.clear()
    cached = sp.explain("connection", "db", use_cache=True)
    assert (cached.cached, cached.source, cached.attempts) == (True, "b0", [])
    assert backend.calls == []
    again = sp.explain("connection", "db")  # use_cache=False: asks the backends again
    assert not again.cached and backend.calls == [("get_conn_value", "db")]
    with pytest.raises(NotFound):
        sp.get_connection("nope")
    miss = sp.explain("connection", "nope", use_cache=True)
    assert (miss.cached, miss.source, miss.found) == (True, None, False)


def test_explain_attempts_that_did_not_run_have_zero_times():
    sp = path(MemoryBackend(connections_lookup_pattern="^zz"), MemoryBackend({"db": URI_A}), MemoryBackend())
    attempts = sp.explain("connection", "db").attempts
    assert [a.outcome for a in attempts] == ["skipped (pattern)", "hit", "not tried"]
    for attempt in (attempts[0], attempts[2]):
        assert (attempt.seconds, attempt.startup_seconds, attempt.detail, attempt.breaker) == (
            0.0,
            0.0,
            "",
            "",
        )
    assert attempts[1].breaker == "closed"


def test_metrics_are_recorded_only_when_on():
    from credpath import metrics
    from credpath._resilience import BreakerSettings

    def seen():
        snap = metrics.snapshot()
        calls = [("call", backend) for backend, *_ in snap["store"]]
        return calls + [("rejected", backend) for (backend,) in snap["rejected"]]

    broken = MemoryBackend()
    broken.fail_with = Unreachable("down")
    sp = path(MemoryBackend({"db": URI_A}), broken, breaker=BreakerSettings(failures=1))
    metrics.reset()
    try:
        sp.get_connection("db")
        with pytest.raises(BackendUnavailable):
            sp.get_variable("x")  # opens b1's breaker (failures=1)
        assert seen() == []
        metrics.enable()
        sp.cache.clear()
        sp.get_connection("db")
        with pytest.raises(BackendUnavailable):
            sp.get_variable("y")  # b1 is open: rejected without a call
        assert ("call", "b0") in seen() and ("rejected", "b1") in seen()
    finally:
        metrics.disable()
        metrics.reset()


def test_metrics_are_not_recorded_for_a_config_error_when_off():
    from credpath import metrics

    def seen():
        return [backend for backend, *_ in metrics.snapshot()["store"]]

    bad = MemoryBackend()
    bad.fail_with = ConfigError("backend 'b0' (Memory): bad key")
    metrics.reset()
    try:
        with pytest.raises(ConfigError):
            path(bad).get_connection("db")
        assert seen() == []
        metrics.enable()
        with pytest.raises(ConfigError):
            path(bad).get_connection("db")
        assert seen() == ["b0"]
    finally:
        metrics.disable()
        metrics.reset()


@pytest.mark.parametrize("metrics_on", [True, False])
def test_a_store_call_is_marked_and_its_version_kept_with_or_without_metrics(metrics_on: bool) -> None:
    from credpath import metrics
    from credpath._lookup import trace

    marks: list[str | None] = []

    class Marked(MemoryBackend):
        def get_variable(self, key: str) -> str | None:
            current = trace._CALLING.get()  # the store call in progress, as the retry loops see it
            marks.append(None if current is None else current[1])
            trace.note_retry()  # an event only where something listens
            trace.note_version(7)  # always: the version is kept with the cached value
            return super().get_variable(key)

    metrics.reset()
    if metrics_on:
        metrics.enable()
    try:
        searched = SearchPath([("marked", Marked(variables={"a": "1"}))])
        searched.get_variable("a")
    finally:
        metrics.disable()
        metrics.reset()
    assert marks == ["marked"]  # marked either way: the backend reports its version to the call
    assert searched.lookup("variable", "a").version == "7"  # type: ignore[union-attr]
    assert trace._CALLING.get() is None  # put back after the call


def test_explain_times_a_failed_attempt_by_its_own_duration():
    broken = MemoryBackend()
    broken.fail_with = Unreachable("down")
    sp = quiet_path(broken, MemoryBackend({"db": URI_A}))
    started = time.perf_counter()
    explanation = sp.explain("connection", "db")
    took = time.perf_counter() - started
    error = explanation.attempts[0]
    assert error.outcome == "error"
    assert 0.0 <= error.seconds <= took


def test_explain_of_a_stale_answer_gives_its_age_and_lists_every_backend_not_tried():
    vault = MemoryBackend({"db": URI_A})
    sp = quiet_path(vault, MemoryBackend({"db": URI_B}), MemoryBackend(), cache=expired_cache())
    sp.get_connection("db")
    vault.fail_with = Unreachable("HTTP 503")
    explanation = sp.explain("connection", "db")
    assert explanation.stale and explanation.tier == "stale"
    assert isinstance(explanation.stale_age, float) and 0.0 <= explanation.stale_age < 60.0
    assert [(a.backend, a.outcome) for a in explanation.attempts] == [
        ("b0", "stale"),
        ("b1", "not tried"),
        ("b2", "not tried"),
    ]


def test_explain_use_cache_tells_the_process_tier_from_the_shared_tier(shared_pair):
    one_backend, two_backend = MemoryBackend({"db": URI_A}), MemoryBackend({"db": URI_A})
    one, two = shared_pair(one_backend), shared_pair(two_backend)
    assert one.get_connection("db").host == "db-a"
    mine = one.explain("connection", "db", use_cache=True)
    assert (mine.cached, mine.tier, mine.source) == (True, "process", "b0")
    theirs = two.explain("connection", "db", use_cache=True)
    assert (theirs.cached, theirs.tier, theirs.source) == (True, "shared", "b0")
    assert two_backend.calls == []
    unknown = two.explain("connection", "nope", use_cache=True)  # in neither tier: the store is asked
    assert (unknown.cached, unknown.tier, unknown.source) == (False, "store", None)


def test_metrics_count_a_shared_hit_under_tier_shared(db: Path, clock: Clock) -> None:
    from credpath import metrics

    a, b = Node(db), Node(db)
    metrics.reset()
    metrics.enable()
    try:
        metrics.instrument(a.path)
        metrics.instrument(b.path)
        a.path.get_variable("k")
        b.path.get_variable("k")
        lookups = metrics.snapshot()["lookups"]
    finally:
        metrics.disable()
        metrics.reset()
    assert lookups[("variable", "store", "found")] == 1
    assert lookups[("variable", "shared", "found")] == 1


# --- the trace and its subscribers ------------------------------------------------------------------------


def test_a_subscriber_hears_each_event_of_a_lookup_and_a_process_hit_only_served_and_ended() -> None:
    from credpath._lookup import trace

    heard: list[tuple[str, object]] = []
    unsubscribe = trace.subscribe(lambda context, event: heard.append((context.key, event)))
    try:
        sp = path(MemoryBackend({"db": URI_A}))
        sp.get_connection("db")
        kinds = [type(event).__name__ for _, event in heard]
        assert kinds == ["StoreCall", "Attempt", "Served", "Done"]
        call = heard[0][1]
        assert (call.backend, call.kind, call.operation, call.outcome, call.version) == (
            "b0",
            "connection",
            "get",
            "hit",
            None,
        )
        heard.clear()
        sp.get_connection("db")  # the process tier: no store call; which tier and backend, then the end
        assert [(key, type(e).__name__, e.tier) for key, e in heard] == [
            ("db", "Served", "process"),
            ("db", "Done", "process"),
        ]
        assert heard[0][1].source == "b0" and heard[1][1].result == "found"
    finally:
        unsubscribe()
    heard.clear()
    sp.cache.clear()
    sp.get_connection("db")
    assert heard == []  # unsubscribed


def test_a_failing_subscriber_never_fails_a_lookup() -> None:
    from credpath._lookup import trace

    def broken(_context: object, _event: object) -> None:
        raise RuntimeError("a broken sink")

    unsubscribe = trace.subscribe(broken)
    try:
        assert path(MemoryBackend({"db": URI_A})).get_connection("db").host == "db-a"
    finally:
        unsubscribe()


def test_a_process_hit_builds_no_context_while_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    from credpath._lookup import operations as sp_mod  # where SearchPath.lookup builds its context

    built: list[str] = []

    class Counted(sp_mod.LookupContext):
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(str(args[1]))
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sp_mod, "LookupContext", Counted)
    sp = path(MemoryBackend({"db": URI_A}, variables={"v": "1"}))
    sp.get_variable("v")
    sp.get_connection("db")
    assert built == ["v", "db"]
    sp.get_variable("v")
    sp.get_connection("db")
    assert built == ["v", "db"]  # the hits made none


def test_throttling_is_told_by_the_error_type_not_its_text() -> None:
    from credpath import metrics
    from credpath.errors import BackendError, BackendUnavailable, Throttled

    worded = MemoryBackend()
    worded.fail_with = BackendError("backend 'b0' (memory): throttled, says the text")
    typed = MemoryBackend()
    typed.fail_with = Throttled("backend 'b1' (memory): rate exceeded")
    metrics.reset()
    metrics.enable()
    try:
        with pytest.raises(BackendUnavailable):
            path(worded, typed).get_variable("v")
        outcomes = {backend: outcome for (backend, _k, _o, outcome) in metrics.snapshot()["store"]}
    finally:
        metrics.disable()
        metrics.reset()
    assert outcomes == {"b0": "error", "b1": "throttled"}  # before: b0 "throttled", b1 "error"


def test_metrics_attach_nothing_to_a_search_path_and_name_no_function() -> None:
    import inspect

    from credpath import metrics

    sp = path(MemoryBackend({"db": URI_A}))
    assert metrics.instrument(sp) is sp
    assert "lookup" not in vars(sp) and "get_connection" not in vars(sp)  # before: both wrapped
    assert "__name__" not in inspect.getsource(metrics)


def test_a_retry_inside_a_store_call_on_another_context_reaches_that_trace() -> None:
    import contextvars
    import threading

    from credpath._lookup import trace

    one, two = (
        trace.LookupContext("variable", "a", keep=True),
        trace.LookupContext("variable", "b", keep=True),
    )
    done = threading.Event()

    def other_thread() -> None:
        with trace.calling(two, "store-b"):
            trace.note_retry()
        done.set()

    with trace.calling(one, "store-a"):
        threading.Thread(target=contextvars.copy_context().run, args=(other_thread,)).start()
        assert done.wait(5)
        trace.note_retry()
    trace.note_retry()  # no store call in progress: nowhere to go
    assert one.events == [trace.Retry("store-a")] and two.events == [trace.Retry("store-b")]


def test_explain_shows_the_lease_behind_a_leased_connection():
    class Leased(MemoryBackend):
        def lease_detail(self, conn_id: str) -> str | None:
            return "database/creds/ro/3f9a… ttl 41s renewals 2" if conn_id == "pg" else None

    path = SearchPath([("leased", Leased(connections={"pg": "postgres://u:pw-s3cr3t@h/d"}))])
    hit = path.explain("connection", "pg").attempts[0]
    assert hit.outcome == "hit" and hit.detail == "lease database/creds/ro/3f9a… ttl 41s renewals 2"
    assert path.explain("connection", "missing").attempts[0].detail == ""
