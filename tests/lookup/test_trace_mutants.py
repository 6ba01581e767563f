"""Trace details no other unit test pinned: single_try's scope, a Done's duration and repr, a failing
subscriber logged, and StoreCall's default duration."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from credpath._lookup import trace
from credpath._lookup.trace import Done, StoreCall
from tests.lookup.helpers import quiet_path
from tests.memory_backend import MemoryBackend


def test_retries_are_allowed_except_inside_single_try() -> None:
    assert trace.retries_allowed() is True
    with trace.single_try():
        assert trace.retries_allowed() is False
    assert trace.retries_allowed() is True


def test_a_lookups_done_event_carries_its_own_duration(events: list[Any]) -> None:
    quiet_path(MemoryBackend(variables={"k": "s3cr3t-v"})).get_variable("k")
    done = [e for e in events if isinstance(e, Done)]
    assert len(done) == 1 and 0.0 <= done[0].seconds < 60.0


def test_a_done_events_repr_names_its_facts_and_never_the_value() -> None:
    text = repr(Done("variable", "store", "found", 0.5, "s3cr3t-v"))
    assert text == "Done(kind='variable', tier='store', result='found', seconds=0.5)"


def test_a_failing_subscriber_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_context: Any, _event: Any) -> None:
        raise RuntimeError("subscriber bug")

    unsubscribe = trace.subscribe(broken)
    try:
        with caplog.at_level(logging.DEBUG, logger="credpath.search_path"):
            quiet_path(MemoryBackend(variables={"k": "s3cr3t-v"})).get_variable("k")
    finally:
        unsubscribe()
    failed = [r for r in caplog.records if r.getMessage() == "a lookup trace subscriber failed"]
    assert failed and failed[0].exc_info  # the traceback, for whoever debugs the subscriber


def test_a_store_calls_duration_defaults_to_zero() -> None:
    assert StoreCall("b0", "variable", "get", "hit").seconds == 0.0
