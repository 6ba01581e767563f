"""What a backend reports during its store call (a version, the store's next change) and what the trace
keeps of it: the earliest announced change wins, and a report of nothing erases nothing."""

from __future__ import annotations

from typing import Any

import pytest

from credpath._lookup import trace
from credpath._lookup.trace import StoreCall
from tests.lookup.helpers import quiet_path
from tests.memory_backend import MemoryBackend


class Reports(MemoryBackend):
    """Reports what it is told to, in order, during each read (a lease end and a rotation date...)."""

    def __init__(self, *reports: tuple[str, Any]) -> None:
        super().__init__(variables={"k": "s3cr3t-k"})
        self.reports = reports

    def get_variable(self, key: str) -> str | None:
        for what, value in self.reports:
            if what == "version":
                trace.note_version(value)
            else:
                trace.note_valid_until(value)
        return super().get_variable(key)


@pytest.mark.parametrize(
    ("reports", "version", "valid_until"),
    [
        ((("until", 2e9), ("until", 1e9)), None, 1e9),  # the earlier date, whichever comes first
        ((("until", 1e9), ("until", 2e9)), None, 1e9),
        ((("until", 1e9), ("until", None)), None, 1e9),  # "no date" erases none
        ((("version", 7), ("version", None)), "7", None),  # "no version" neither
        ((("version", None),), None, None),
    ],
)
def test_a_store_calls_reports_are_kept_earliest_date_first(
    events: list[Any], reports: Any, version: str | None, valid_until: float | None
) -> None:
    quiet_path(Reports(*reports), cache=False).get_variable("k")
    (call,) = [e for e in events if isinstance(e, StoreCall)]
    assert (call.version, call.valid_until) == (version, valid_until)
    assert call.valid_until is None or isinstance(call.valid_until, float)


def test_reports_outside_a_store_call_go_nowhere(events: list[Any]) -> None:
    trace.note_version("9")
    trace.note_valid_until(1e9)
    trace.note_retry()
    quiet_path(MemoryBackend(variables={"k": "s3cr3t-k"}), cache=False).get_variable("k")
    (call,) = [e for e in events if isinstance(e, StoreCall)]
    assert (call.version, call.valid_until) == (None, None)
    assert [type(e).__name__ for e in events if not isinstance(e, StoreCall)] == ["Attempt", "Served", "Done"]


def test_subscribed_tells_whether_anything_listens() -> None:
    assert trace.subscribed() is False
    unsubscribe = trace.subscribe(lambda _context, _event: None)
    try:
        assert trace.subscribed() is True
    finally:
        unsubscribe()
    assert trace.subscribed() is False
