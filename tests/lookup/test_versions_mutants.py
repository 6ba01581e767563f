"""The version check at expiry and the single try of a refresh, with a fake store that reports versions
(no servers): what is served, how many requests reach the store, and what the trace records."""

from __future__ import annotations

import time
from typing import Any

import pytest

from credpath._cache import CacheSettings
from credpath._lookup.trace import Attempt, Served, StoreCall
from credpath._resilience import BreakerSettings
from credpath.errors import BackendUnavailable
from tests.lookup.helpers import TRIES, VersionedBackend, path
from tests.memory_backend import MemoryBackend, Unreachable


def expiring(**kwargs: Any) -> CacheSettings:
    # ttl=0: every lookup finds its value expired; stale_if_error keeps it as the backend's last good value
    return CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=600.0, **kwargs)


def calls_of(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.operation, e.outcome) for e in events if isinstance(e, StoreCall)]


def test_an_expired_value_whose_version_is_current_is_served_without_a_read(events: list[Any]) -> None:
    backend = VersionedBackend()
    search_path = path(backend, cache=expiring())
    assert search_path.get_variable("k") == "s3cr3t-v1"
    assert backend.reads == 1 and backend.checks == []  # nothing cached yet: a read, no check
    events.clear()
    assert search_path.get_variable("k") == "s3cr3t-v1"
    assert backend.reads == 1 and backend.checks == ["v1"]
    assert calls_of(events) == [("check", "hit")]
    assert [(a.backend, a.outcome) for a in events if isinstance(a, Attempt)] == [("b0", "hit")]
    assert [(s.tier, s.source) for s in events if isinstance(s, Served)] == [("store", "b0")]
    # the served value keeps its version (what explain --cache shows)
    assert [e.version for e in events if isinstance(e, StoreCall)] == [None]
    assert search_path.explain("variable", "k").attempts[0].outcome == "hit"


def test_a_changed_version_is_read_again(events: list[Any]) -> None:
    backend = VersionedBackend()
    search_path = path(backend, cache=expiring())
    search_path.get_variable("k")
    backend.variables["k"], backend.versions["k"] = "s3cr3t-v2", "v2"
    events.clear()
    assert search_path.get_variable("k") == "s3cr3t-v2"
    assert backend.checks == ["v1"] and backend.reads == 2
    assert calls_of(events) == [("check", "hit"), ("get", "hit")]
    assert [e.version for e in events if isinstance(e, StoreCall)][-1] == "v2"
    events.clear()
    search_path.get_variable("k")  # the new value is checked under its new version
    assert backend.checks == ["v1", "v2"] and backend.reads == 2


def test_a_backend_without_version_check_reads_every_expired_value() -> None:
    backend = VersionedBackend()
    backend.version_check = False
    search_path = path(backend, cache=expiring())
    for _ in range(3):
        assert search_path.get_variable("k") == "s3cr3t-v1"
    assert backend.checks == [] and backend.reads == 3


class UncachedVersioned(VersionedBackend):
    cache_results = False


def test_a_never_cached_backend_is_read_every_time_not_checked() -> None:
    backend = UncachedVersioned()
    search_path = path(backend, cache=expiring())
    for _ in range(2):
        assert search_path.get_variable("k") == "s3cr3t-v1"
    assert backend.checks == [] and backend.reads == 2


def test_a_refresh_holding_a_last_good_value_tries_the_store_once_then_serves_it(events: list[Any]) -> None:
    backend = VersionedBackend()
    backend.version_check = False
    search_path = path(backend, cache=expiring(), breaker=BreakerSettings(failures=10))
    assert search_path.get_variable("k") == "s3cr3t-v1"
    backend.fail_with = Unreachable("b0: store down")
    events.clear()
    assert search_path.get_variable("k") == "s3cr3t-v1"
    assert backend.reads == 2  # one try, not TRIES: the kept value is served at once
    assert [(a.outcome) for a in events if isinstance(a, Attempt)] == ["stale"]
    assert [(s.tier, s.source) for s in events if isinstance(s, Served)] == [("stale", "b0")]


def test_a_lookup_with_nothing_kept_lets_the_store_retry() -> None:
    backend = VersionedBackend()
    backend.fail_with = Unreachable("b0: store down")
    search_path = path(backend, cache=expiring(), breaker=BreakerSettings(failures=10))
    with pytest.raises(BackendUnavailable):
        search_path.get_variable("k")
    assert backend.reads == TRIES


def test_a_failed_version_check_goes_on_to_one_read_then_serves_the_kept_value(events: list[Any]) -> None:
    backend = VersionedBackend()
    search_path = path(backend, cache=expiring(), breaker=BreakerSettings(failures=10))
    search_path.get_variable("k")
    backend.check_fails = True
    backend.fail_with = Unreachable("b0: store down")
    events.clear()
    assert search_path.get_variable("k") == "s3cr3t-v1"
    assert backend.checks == ["v1"] and backend.reads == 2
    assert calls_of(events) == [("check", "error"), ("get", "error")]


def test_a_failed_version_check_with_a_healthy_store_reads_the_value() -> None:
    backend = VersionedBackend()
    search_path = path(backend, cache=expiring(), breaker=BreakerSettings(failures=10))
    search_path.get_variable("k")
    backend.check_fails = True
    backend.variables["k"] = "s3cr3t-v2"
    assert search_path.get_variable("k") == "s3cr3t-v2"
    assert backend.reads == 2


def test_an_unchanged_check_carries_the_stores_next_change_to_the_cache() -> None:
    backend = VersionedBackend()
    search_path = path(backend, cache=CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, stale_if_error=600.0))
    search_path.get_variable("k")
    backend.next_change = time.time() - 1.0  # the store announces the value has changed already
    search_path.get_variable("k")  # unchanged, but capped at a change in the past
    backend.fail_with = Unreachable("b0: store down")
    with pytest.raises(BackendUnavailable):  # no tier serves it past the announced change, stale neither
        search_path.get_variable("k")


class SlowStart(MemoryBackend):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(variables={"k": "s3cr3t-slow"}, **kwargs)
        self.started = False

    def prepare(self) -> None:
        if not self.started:
            time.sleep(0.05)
            self.started = True


def test_only_explain_times_the_start_up_apart(events: list[Any]) -> None:
    search_path = path(SlowStart(), cache=False)
    search_path.get_variable("k")  # a lookup does not call the start-up hook: nothing timed apart
    assert [a.startup_seconds for a in events if isinstance(a, Attempt)] == [0.0]
    explained = path(SlowStart(), cache=False).explain("variable", "k")
    assert explained.attempts[0].startup_seconds >= 0.05
    assert explained.attempts[0].seconds < 0.05


def test_the_refresh_back_off_ends_and_the_store_is_asked_again(events: list[Any]) -> None:
    backend = VersionedBackend()
    backend.version_check = False
    breaker = BreakerSettings(failures=10, cool_down=0.05, max_cool_down=0.05)
    search_path = path(backend, cache=expiring(), breaker=breaker)
    search_path.get_variable("k")
    backend.fail_with = Unreachable("b0: store down")
    search_path.get_variable("k")  # the failed refresh: the back-off starts
    reads = backend.reads
    events.clear()
    assert search_path.get_variable("k") == "s3cr3t-v1"  # within the back-off: no request
    assert backend.reads == reads
    (attempt,) = [a for a in events if isinstance(a, Attempt)]
    assert (attempt.outcome, attempt.seconds, attempt.startup_seconds) == ("stale", 0.0, 0.0)
    (served,) = [s for s in events if isinstance(s, Served)]
    assert served.refresh_in is not None and 0.0 < served.refresh_in <= 0.05
    assert served.stale_age is not None and served.stale_age >= 0.0
    time.sleep(0.06)
    backend.fail_with = None
    backend.variables["k"] = "s3cr3t-v2"
    assert search_path.get_variable("k") == "s3cr3t-v2"  # the back-off is over: the store answers
    backend.fail_with = Unreachable("b0: store down")
    reads = backend.reads
    search_path.get_variable("k")  # the success ended the back-off: the store is tried again
    assert backend.reads == reads + 1
