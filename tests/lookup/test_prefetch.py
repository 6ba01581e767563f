"""Prefetch by id and by prefix: batches, shadowing, errors per id, the shared tier."""

from __future__ import annotations

import pytest

from credpath._cache import CacheSettings
from credpath._search_path import PrefetchReport, SearchPath
from credpath.errors import NotFound
from credpath.model import Connection
from tests.lookup.helpers import (
    URI_A,
    URI_B,
    BadValuePrefix,
    no_breaker,
    path,
    quiet_path,
)
from tests.memory_backend import (
    BatchMemoryBackend,
    MemoryBackend,
    PrefixMemoryBackend,
    UncachedMemoryBackend,
    Unreachable,
)


def test_prefetch_batches_and_respects_order():
    first = BatchMemoryBackend({"c1": URI_A})
    second = BatchMemoryBackend({"c1": URI_B, "c2": URI_B})
    sp = path(first, second)
    report = sp.prefetch(connections=["c1", "c2", "c3"])
    assert (report["connection"].hits, report["connection"].misses) == (2, 1)
    assert first.calls == [("get_conn_values", ("c1", "c2", "c3"))]
    assert second.calls == [("get_conn_values", ("c2", "c3"))]
    assert sp.get_connection("c1").host == "db-a"  # the first backend wins, as without prefetch
    assert sp.get_connection("c2").host == "db-b"
    with pytest.raises(NotFound):
        sp.get_connection("c3")
    assert len(first.calls) == 1 and len(second.calls) == 1  # everything came from the cache


def test_prefetch_mixes_batch_and_single_backends():
    single = MemoryBackend({"c1": URI_A})
    batch = BatchMemoryBackend({"c2": URI_B})
    sp = path(single, batch)
    sp.prefetch(connections=["c1", "c2"])
    assert sorted(single.calls) == [("get_conn_value", "c1"), ("get_conn_value", "c2")]  # read concurrently
    assert batch.calls == [("get_conn_values", ("c2",))]


def test_prefetched_misses_are_cached_behind_a_never_cached_backend():

    env = UncachedMemoryBackend({})
    store = MemoryBackend({"db": URI_A})
    sp = SearchPath([("env", env), ("store", store)])
    sp.prefetch(connections=["db", "nope"])
    assert sp.lookup("connection", "nope") is None
    assert sp.get_connection("db").host == "db-a"
    assert sorted(store.calls) == [("get_conn_value", "db"), ("get_conn_value", "nope")]  # main: 1 more


def test_prefetch_under_on_error_fail_raises():
    batch = BatchMemoryBackend({"c1": URI_A})
    batch.fail_with = Unreachable("down")
    sp = path(batch, MemoryBackend({"c1": URI_B}), breaker=no_breaker())
    sp.entries[0].on_error = "fail"
    with pytest.raises(Unreachable, match="down"):
        sp.prefetch(connections=["c1"])
    single = MemoryBackend({"c1": URI_A})
    single.fail_with = Unreachable("down too")
    sp = path(single, breaker=no_breaker())
    sp.entries[0].on_error = "fail"
    with pytest.raises(Unreachable, match="down too"):
        sp.prefetch(connections=["c1"])


def test_prefetch_errors_per_id_from_a_single_backend():
    class Flaky(MemoryBackend):
        def get_conn_value(self, conn_id):
            if conn_id == "bad":
                raise Unreachable("flaky")
            return super().get_conn_value(conn_id)

    sp = path(Flaky({"good": URI_A, "later": URI_B}), breaker=no_breaker())
    report = sp.prefetch(connections=["good", "bad", "later", "none"])["connection"]
    assert (report.requested, report.hits, report.misses, report.errors) == (4, 2, 1, 1)
    assert len(sp.cache) == 3  # good and later (hits; the id after the failed one is still read), none
    assert sp.cache.get(("connection", "later", None)).value.host == "db-b"


def test_prefetch_skips_cached_ids_and_empty_lists():
    backend = BatchMemoryBackend({"c1": URI_A, "c2": URI_B})
    sp = path(backend)
    sp.get_connection("c1")
    backend.calls.clear()
    report = sp.prefetch(connections=["c1", "c2"])["connection"]
    assert backend.calls == [("get_conn_values", ("c2",))]
    assert (report.requested, report.hits) == (2, 1)
    assert sp.prefetch() == {}


def test_prefix_prefetch_shadowing_across_two_backends():
    from tests.memory_backend import PrefixMemoryBackend

    first = PrefixMemoryBackend({"a": URI_A})
    second = PrefixMemoryBackend({"a": URI_B, "b": URI_B})
    sp = path(first, second)
    report = sp.prefetch(prefix=True)["connection"]
    assert (report.requested, report.hits, report.errors) == (2, 2, 0)
    first.calls.clear()
    second.calls.clear()
    assert sp.get_connection("a").host == "db-a"  # the first backend's copy, from the cache
    assert sp.get_connection("b").host == "db-b"
    assert first.calls == [] and second.calls == []


def test_prefix_prefetch_behind_a_backend_without_prefix_reads_asks_it_first():
    from tests.memory_backend import PrefixMemoryBackend

    plain = MemoryBackend({"a": URI_A})
    prefixed = PrefixMemoryBackend({"a": URI_B, "b": URI_B})
    sp = path(plain, prefixed)
    report = sp.prefetch(prefix=True)["connection"]
    assert report.hits == 1  # "b" only: "a" is shadowed by the plain backend's copy
    assert ("get_conn_value", "a") in plain.calls
    assert sp.get_connection("a").host == "db-a"


def test_prefix_prefetch_failure_stops_and_a_failed_shadow_check_does_not_cache():
    from tests.memory_backend import PrefixMemoryBackend

    broken = PrefixMemoryBackend({"a": URI_A})
    broken.fail_with = Unreachable("down")
    later = PrefixMemoryBackend({"b": URI_B})
    sp = path(broken, later, breaker=no_breaker())
    report = sp.prefetch(prefix=True)["connection"]
    assert (report.hits, report.errors) == (0, 1)
    assert later.calls == []  # stopped: its values could be shadowed by the failed one
    plain = MemoryBackend()
    plain.fail_with = Unreachable("down")
    sp = path(plain, PrefixMemoryBackend({"b": URI_B}), breaker=no_breaker())
    report = sp.prefetch(prefix=True)["connection"]
    assert report.hits == 0 and len(sp.cache) == 0


def test_prefix_prefetch_of_connection_objects_takes_the_requested_id():
    from tests.memory_backend import PrefixMemoryBackend

    class Objects(PrefixMemoryBackend):
        def prefetch_connections(self):
            return {"new": Connection.from_uri(URI_A, conn_id="old")}

    sp = path(Objects())
    assert sp.prefetch(prefix=True)["connection"].hits == 1
    cached = sp.cache.get(("connection", "new", None))
    assert cached.value.conn_id == "new" and cached.source == "b0"


def test_prefetch_by_id_goes_past_a_backend_whose_pattern_wants_none():
    picky = BatchMemoryBackend({"c1": URI_A}, connections_lookup_pattern="^zz")
    later = BatchMemoryBackend({"c1": URI_B})
    sp = path(picky, later)
    assert sp.prefetch(connections=["c1"])["connection"].hits == 1
    assert picky.calls == [] and sp.get_connection("c1").host == "db-b"


def test_prefix_shadow_check_goes_past_an_earlier_backend_that_does_not_want_the_id():
    from tests.memory_backend import PrefixMemoryBackend

    picky = MemoryBackend(connections_lookup_pattern="^zz")
    holder = MemoryBackend({"a": URI_A})
    prefixed = PrefixMemoryBackend({"a": URI_B, "b": URI_B})
    sp = path(picky, holder, prefixed)
    assert sp.prefetch(prefix=True)["connection"].hits == 1  # "b"; "a" is the holder's
    assert sp.get_connection("a").host == "db-a"


def test_an_empty_prefetch_report_counts_nothing():
    assert PrefetchReport() == PrefetchReport(0, 0, 0, 0)
    assert PrefetchReport().requested == 0


def test_a_bad_value_in_a_prefix_prefetch_fails_that_id_only():
    backend = BadValuePrefix({"bad": URI_A, "good": URI_B, "also": URI_A})
    sp = quiet_path(backend)
    report = sp.prefetch(prefix=True)["connection"]
    assert (report.requested, report.hits, report.errors) == (2, 2, 1)
    assert sp.cache.get(("connection", "also", None)).value.host == "db-a"
    assert len(sp.cache) == 2


def test_a_stopped_prefix_prefetch_reports_nothing_requested():
    broken = PrefixMemoryBackend({"a": URI_A})
    broken.fail_with = Unreachable("down")
    report = quiet_path(broken).prefetch(prefix=True)["connection"]
    assert (report.requested, report.hits, report.misses, report.errors) == (0, 0, 0, 1)


def test_prefetched_misses_are_cached_for_the_miss_ttl():
    backend = BatchMemoryBackend({"c1": URI_A})
    sp = quiet_path(backend, cache=CacheSettings(ttl=100.0, miss_ttl=0.0))
    report = sp.prefetch(connections=["c1", "nope"])["connection"]
    assert (report.hits, report.misses) == (1, 1)
    assert len(sp.cache) == 1  # the hit only: a miss_ttl of 0 keeps no miss


def test_prefix_prefetch_checks_every_earlier_backend_for_shadowing():
    prefixed_first = PrefixMemoryBackend({"other": URI_A})  # lists its all: no "a"
    plain = MemoryBackend({"a": URI_A})  # cannot list: asked per id
    prefixed_last = PrefixMemoryBackend({"a": URI_B})
    sp = quiet_path(prefixed_first, plain, prefixed_last)
    sp.prefetch(prefix=True)
    assert ("get_conn_value", "a") in plain.calls
    assert sp.get_connection("a").host == "db-a"  # plain's copy, never prefixed_last's


def test_prefetch_adopts_what_another_process_read(shared_pair):
    one = shared_pair(MemoryBackend({"c1": URI_A}))
    two_backend = MemoryBackend({"c1": URI_A, "c2": URI_B})
    two = shared_pair(two_backend)
    one.get_connection("c1")
    report = two.prefetch(connections=["c1", "c2"])["connection"]
    assert report.requested == 2
    assert two_backend.calls == [("get_conn_value", "c2")]  # c1 came from the shared tier
    two_backend.calls.clear()
    assert two.get_connection("c1").host == "db-a"
    assert two.get_connection("c2").host == "db-b"
    assert two_backend.calls == []
