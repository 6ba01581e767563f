"""RefreshBackoff's default first wait (the breaker's default cool-down, one second)."""

from __future__ import annotations

from credpath._resilience import RefreshBackoff


def test_the_first_failed_refresh_waits_one_second_by_default() -> None:
    backoff = RefreshBackoff(clock=lambda: 100.0)
    assert backoff.waiting() == 0.0
    assert backoff.failed() == 1.0
    assert backoff.waiting() == 1.0
