from __future__ import annotations

import logging
import time

import pytest

from credpath.cache import CacheSettings
from credpath.errors import BackendError, ConfigError, NotFound, ReadOnlyBackend
from credpath.model import Connection
from credpath.search_path import SearchPath
from tests.memory_backend import (
    BatchMemoryBackend,
    ConnectionObjectBackend,
    MemoryBackend,
    Unreachable,
)

URI_A = "postgres://alice:pw-s3cr3t-a@db-a:5432/app"
URI_B = "postgres://bob:pw-s3cr3t-b@db-b:5432/app"


def path(*backends, **kwargs) -> SearchPath:
    return SearchPath([(f"b{i}", b) for i, b in enumerate(backends)], **kwargs)


def test_first_hit_wins_and_source_is_reported():
    first, second = MemoryBackend({"db": URI_A}), MemoryBackend({"db": URI_B, "only2": URI_B})
    sp = path(first, second)
    assert sp.get_connection("db").host == "db-a"
    resolution = sp.lookup("connection", "only2")
    assert (resolution.value.host, resolution.source) == ("db-b", "b1")
    assert ("get_conn_value", "db") not in second.calls


def test_miss_raises_notfound_which_is_a_keyerror():
    sp = path(MemoryBackend())
    with pytest.raises(NotFound) as info:
        sp.get_connection("nope")
    assert isinstance(info.value, KeyError)
    assert "nope" in str(info.value)


def test_variables_default_and_json():
    sp = path(MemoryBackend(variables={"cfg": '{"a": 1}', "plain": "x"}))
    assert sp.get_variable("plain") == "x"
    assert sp.get_variable("cfg", deserialize_json=True) == {"a": 1}
    assert sp.get_variable("missing", default=None) is None
    with pytest.raises(NotFound):
        sp.get_variable("missing")


def test_bad_json_variable_error_names_key_not_value():
    sp = path(MemoryBackend(variables={"broken": "{not json s3cr3t"}))
    with pytest.raises(ConfigError, match="'broken'") as info:
        sp.get_variable("broken", deserialize_json=True)
    assert "s3cr3t" not in str(info.value)


def test_lookup_pattern_means_no_call():
    vault = MemoryBackend({"vault_db": URI_A})
    sp = SearchPath([("vault", vault), ("other", MemoryBackend({"app_db": URI_B}))])
    sp.entries[0].patterns["connection"] = __import__("re").compile("vault_", 2)
    assert sp.get_connection("app_db").host == "db-b"
    assert vault.calls == []
    assert sp.get_connection("VAULT_db".lower()).host == "db-a"


def test_lookup_pattern_is_anchored_at_start_and_case_insensitive():
    backend = MemoryBackend({"x_prod": URI_A, "PROD_x": URI_A}, connections_lookup_pattern="prod")
    assert backend.wants("connection", "PROD_x")
    assert not backend.wants("connection", "x_prod")
    sp = path(backend)
    with pytest.raises(NotFound):
        sp.get_connection("x_prod")
    assert backend.calls == []


def test_failing_backend_is_skipped_by_default_and_logged_without_secrets(caplog):
    broken = MemoryBackend()
    broken.fail_with = Unreachable("vault at http://127.0.0.1:1 unreachable")
    sp = path(broken, MemoryBackend({"db": URI_A}))
    with caplog.at_level(logging.WARNING):
        assert sp.get_connection("db").host == "db-a"
    assert "unreachable" in caplog.text


def test_on_error_fail_raises():
    from credpath.config import BackendSpec  # noqa: F401 - spec path covered in test_config

    broken = MemoryBackend()
    broken.fail_with = Unreachable("down")
    sp = path(broken, MemoryBackend({"db": URI_A}))
    sp.entries[0].on_error = "fail"
    with pytest.raises(BackendError, match="down"):
        sp.get_connection("db")


def test_foreign_exception_message_is_withheld(caplog):
    broken = MemoryBackend()
    broken.fail_with = RuntimeError("token=s3cr3t-token leaked by a third-party library")
    sp = path(broken)
    sp.entries[0].on_error = "fail"
    with pytest.raises(BackendError) as info:
        sp.get_connection("db")
    assert "s3cr3t" not in str(info.value)
    assert "RuntimeError" in str(info.value)


def test_result_behind_a_failed_backend_is_not_cached():
    broken = MemoryBackend({"db": URI_A})
    broken.fail_with = Unreachable("down")
    fallback = MemoryBackend({"db": URI_B})
    sp = path(broken, fallback)
    assert sp.get_connection("db").host == "db-b"
    broken.fail_with = None  # recovered: its value must win now
    assert sp.get_connection("db").host == "db-a"


def test_cache_hits_and_misses_avoid_backend_calls():
    backend = MemoryBackend({"db": URI_A})
    sp = path(backend)
    for _ in range(5):
        sp.get_connection("db")
        with pytest.raises(NotFound):
            sp.get_connection("nope")
    assert backend.calls.count(("get_conn_value", "db")) == 1
    assert backend.calls.count(("get_conn_value", "nope")) == 1


def test_cache_expiry_refetches():
    backend = MemoryBackend({"db": URI_A})
    sp = path(backend, cache=CacheSettings(ttl=0.5, miss_ttl=0.5, jitter=0.0))
    sp.get_connection("db")
    sp.get_connection("db")  # a hit before expiry: a TTL under a second still caches
    assert backend.calls.count(("get_conn_value", "db")) == 1
    time.sleep(0.6)
    sp.get_connection("db")
    assert backend.calls.count(("get_conn_value", "db")) == 2


def test_cache_off():
    backend = MemoryBackend({"db": URI_A})
    sp = path(backend, cache=False)
    sp.get_connection("db")
    sp.get_connection("db")
    assert backend.calls.count(("get_conn_value", "db")) == 2


def test_writes_invalidate_cache_and_go_to_named_backend():
    ro = MemoryBackend({"db": URI_A})
    ro.set_connection = None  # type: ignore[assignment]
    store = MemoryBackend()
    sp = SearchPath([("store", store)])
    with pytest.raises(NotFound):
        sp.get_connection("db")
    assert sp.set_connection(Connection.from_uri(URI_B, conn_id="db")) == "store"
    assert sp.get_connection("db").host == "db-b"
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"), to="store")
    assert sp.get_connection("db").host == "db-a"
    assert sp.delete_connection("db", to="store") == "store"
    with pytest.raises(NotFound):
        sp.get_connection("db")
    with pytest.raises(ConfigError, match="no backend named 'nope'"):
        sp.set_variable("k", "v", to="nope")


def test_read_only_backend_refuses_writes():
    from credpath.protocol import BaseBackend

    class ReadOnly(BaseBackend):
        def get_conn_value(self, conn_id):
            return None

        def get_variable(self, key):
            return None

    sp = SearchPath([("ro", ReadOnly())])
    with pytest.raises(ReadOnlyBackend):
        sp.set_variable("k", "v")


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


def test_collisions_listing():
    sp = path(MemoryBackend({"db": URI_A, "a": URI_A}), MemoryBackend({"db": URI_B, "b": URI_B}))
    found, unlistable = sp.list_ids("connection")
    assert found == {"a": ["b0"], "b": ["b1"], "db": ["b0", "b1"]}
    assert unlistable == []


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
    assert single.calls == [("get_conn_value", "c1"), ("get_conn_value", "c2")]
    assert batch.calls == [("get_conn_values", ("c2",))]


def test_secrets_are_masked_in_logs_after_resolution(caplog):
    sp = path(MemoryBackend({"db": URI_A}, variables={"api_key": "key-s3cr3t-1", "plain": "visible-value"}))
    conn = sp.get_connection("db")
    sp.get_variable("api_key")
    logger = logging.getLogger("user.task")
    with caplog.at_level(logging.INFO):
        logger.info("connecting with %s and key %s", conn.password, "key-s3cr3t-1")
        logger.info("plain variable %s", sp.get_variable("plain"))
    assert "s3cr3t" not in caplog.text
    assert "***" in caplog.text
    assert "visible-value" in caplog.text


def test_roll_your_own_backend_from_airflow_settings():
    env = {
        "AIRFLOW__SECRETS__BACKEND": "tests.memory_backend.AirflowStyleBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": '{"prefix": "team_"}',
        "CREDPATH_HOME": "/nonexistent-credpath-home",
    }
    sp = SearchPath.from_config(env=env)
    assert sp.names == ["AirflowStyleBackend", "env", "metastore"]
    resolution = sp.lookup("connection", "team_api")
    assert (resolution.value.host, resolution.value.port, resolution.source) == (
        "team_api.internal",
        8080,
        "AirflowStyleBackend",
    )
    assert sp.get_variable("team_x") == "team_:team_x"


def test_backend_with_only_get_connection_returning_objects():
    sp = SearchPath([("legacy", ConnectionObjectBackend())])
    conn = sp.get_connection("legacy")
    assert (conn.conn_type, conn.host, conn.port, conn.description) == (
        "postgres",
        "legacy-db",
        5432,
        "from an object",
    )
    assert conn.extra_dejson == {"sslmode": "require"}
    assert "pw-s3cr3t" not in repr(conn)


def test_access_denied_is_authoritative_even_when_skipping_errors():
    from credpath.errors import AccessDenied

    denied = MemoryBackend()
    denied.fail_with = AccessDenied("vault: permission denied on secret/connections/db (policy)")
    stale = MemoryBackend({"db": URI_B})
    sp = path(denied, stale)
    assert sp.entries[0].on_error == "skip"
    with pytest.raises(AccessDenied, match="permission denied"):
        sp.get_connection("db")
    assert stale.calls == []
    with pytest.raises(AccessDenied):
        sp.prefetch(connections=["db"])


# --- one error policy (issue 12 point 1) ------------------------------------------------------------------


def no_breaker():
    from credpath.resilience import BreakerSettings

    return BreakerSettings(enabled=False)


def _denied():
    from credpath.errors import AccessDenied

    return AccessDenied("backend 'b0' (Memory): permission denied (policy)", backend="b0")


def test_access_denied_is_authoritative_on_every_read_path():
    from credpath.errors import AccessDenied
    from tests.memory_backend import PrefixMemoryBackend

    for make in (MemoryBackend, BatchMemoryBackend, PrefixMemoryBackend):
        denied = make({"db": URI_A})
        denied.fail_with = _denied()
        later = PrefixMemoryBackend({"db": URI_B})
        sp = path(denied, later)
        with pytest.raises(AccessDenied):
            sp.lookup("connection", "db")
        with pytest.raises(AccessDenied):
            sp.prefetch(connections=["db"])
        with pytest.raises(AccessDenied):  # main swallowed it in listing ...
            sp.list_ids("connection")
        with pytest.raises(AccessDenied):  # ... and in prefix prefetch (and its shadow check)
            sp.prefetch(prefix=True)
        assert ("get_conn_value", "db") not in later.calls


def test_config_error_from_a_backend_propagates_even_when_skipping():
    broken = MemoryBackend()
    broken.fail_with = ConfigError("backend 'b0' (Memory): CREDPATH_FERNET_KEY is not a valid Fernet key")
    sp = path(broken, MemoryBackend({"db": URI_B}))
    assert sp.entries[0].on_error == "skip"
    for call in (
        lambda: sp.get_connection("db"),
        lambda: sp.prefetch(connections=["db"]),
        lambda: sp.list_ids("connection"),
        lambda: sp.explain("connection", "db"),
    ):
        with pytest.raises(ConfigError, match="CREDPATH_FERNET_KEY"):
            call()


def test_foreign_exception_under_fail_is_a_backend_error_on_every_path():
    for make in (MemoryBackend, BatchMemoryBackend):
        broken = make()
        broken.fail_with = RuntimeError("token=s3cr3t-token from a client library")
        sp = path(broken)
        sp.entries[0].on_error = "fail"
        for call in (
            lambda sp=sp: sp.get_connection("db"),
            lambda sp=sp: sp.prefetch(connections=["db"]),  # main: the RuntimeError escaped raw
            lambda sp=sp: sp.list_ids("connection"),
        ):
            with pytest.raises(BackendError) as info:
                call()
            assert "s3cr3t" not in str(info.value) and "RuntimeError" in str(info.value)
            assert info.value.backend == "b0"


def test_listing_tells_cannot_list_from_failed_to_list(caplog):
    from credpath.protocol import BaseBackend

    class NoListing(BaseBackend):
        def get_conn_value(self, conn_id):
            return None

        def get_variable(self, key):
            return None

    broken = MemoryBackend({"x": URI_A})
    broken.fail_with = Unreachable("backend 'b1' (Memory): cannot reach 127.0.0.1:1")
    sp = SearchPath([("plain", NoListing()), ("b1", broken), ("ok", MemoryBackend({"db": URI_B}))])
    with caplog.at_level(logging.WARNING):
        listing = sp.list_ids("connection")
    found, cannot_list = listing
    assert found == {"db": ["ok"]}
    assert cannot_list == ["plain"]  # main also put the failed 'b1' here ("cannot list")
    assert list(listing.failed) == ["b1"] and "cannot reach" in listing.failed["b1"]
    assert "listing connections" in caplog.text and "cannot reach" in caplog.text


# --- an outage is not "not found" (issue 12 point 8) ------------------------------------------------------


def test_nothing_found_while_a_backend_failed_is_backend_unavailable_not_notfound():
    from credpath.errors import BackendUnavailable

    broken = MemoryBackend({"db": URI_A})
    broken.fail_with = Unreachable("backend 'b0' (Memory): connection refused")
    empty = MemoryBackend()
    sp = path(broken, empty, breaker=no_breaker())
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    assert not isinstance(info.value, NotFound)
    assert info.value.backends == ("b0",)
    assert "'b0'" in str(info.value) and "connection refused" in str(info.value)
    # a default stands in for a missing value, not for an outage
    with pytest.raises(BackendUnavailable):
        sp.get_variable("v", default="fallback")
    with pytest.raises(BackendUnavailable):
        sp.get_config("c", default="fallback")
    # not cached as a miss: once b0 recovers, its value is served
    broken.fail_with = None
    assert sp.get_connection("db").host == "db-a"


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


# --- stale-if-error (issue 12 point 7) ----------------------------------------------------------------------


def _expired_cache(**kwargs):
    # ttl=0: every lookup refreshes, and the last good value is kept for stale-if-error (no sleeping)
    return CacheSettings(ttl=0.0, miss_ttl=0.0, jitter=0.0, **kwargs)


def test_stale_value_is_served_when_the_refresh_fails_once_warned_and_explained(caplog):
    vault = MemoryBackend({"db": URI_A})
    env = MemoryBackend({"db": URI_B})  # a lower backend's different copy
    sp = SearchPath([("vault", vault), ("env", env)], cache=_expired_cache(), breaker=no_breaker())
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


def test_no_stale_value_on_access_denied_config_error_or_miss():
    from credpath.errors import AccessDenied

    vault = MemoryBackend({"db": URI_A})
    sp = SearchPath([("vault", vault)], cache=_expired_cache())
    sp.get_connection("db")
    vault.fail_with = _denied()
    with pytest.raises(AccessDenied):
        sp.get_connection("db")
    vault.fail_with = ConfigError("backend 'vault' (Memory): bad setting")
    with pytest.raises(ConfigError):
        sp.get_connection("db")
    vault.fail_with = None
    del vault.connections["db"]  # the store answers "gone": that is the truth, not an outage
    with pytest.raises(NotFound):
        sp.get_connection("db")


def test_stale_window_ends_and_zero_disables():
    from credpath.errors import BackendUnavailable

    vault = MemoryBackend({"db": URI_A})
    sp = SearchPath([("vault", vault)], cache=_expired_cache(stale_if_error=0.0))
    sp.get_connection("db")
    vault.fail_with = Unreachable("down")
    with pytest.raises(BackendUnavailable):
        sp.get_connection("db")
    vault.fail_with = None
    sp = SearchPath([("vault", vault)], cache=_expired_cache(stale_if_error=0.05))
    sp.get_connection("db")
    vault.fail_with = Unreachable("down")
    time.sleep(0.1)  # past the window (a lower bound: sleep never returns early)
    with pytest.raises(BackendUnavailable):
        sp.get_connection("db")


def test_stale_applies_under_on_error_fail_too():
    vault = MemoryBackend({"db": URI_A})
    sp = SearchPath([("vault", vault)], cache=_expired_cache())
    sp.entries[0].on_error = "fail"
    sp.get_connection("db")
    vault.fail_with = Unreachable("down")
    assert sp.get_connection("db").host == "db-a"  # the backend's own last answer, not a fall-through


# --- circuit breaker (issue 12 point 4) ------------------------------------------------------------------


def test_breaker_stops_calling_a_failing_backend_and_explain_shows_it(caplog):
    from credpath.errors import BackendUnavailable
    from credpath.resilience import BreakerSettings

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


def test_breaker_probe_after_cool_down_closes_on_success():
    from credpath.resilience import BreakerSettings

    vault = MemoryBackend({"db": URI_A})
    vault.fail_with = Unreachable("down")
    sp = SearchPath([("vault", vault)], cache=False, breaker=BreakerSettings(failures=2, cool_down=1.0))
    clock = [0.0]
    sp.entries[0].breaker.clock = lambda: clock[0]
    for _ in range(5):
        with pytest.raises(BackendError):
            sp.get_connection("db")
    assert len(vault.calls) == 2
    vault.fail_with = None
    clock[0] = 1.5  # after the cool-down: one probe goes through and succeeds
    assert sp.get_connection("db").host == "db-a"
    assert sp.breaker_state("vault") == "closed"


# --- single-flight (issue 12 point 5) -----------------------------------------------------------------------


def test_32_concurrent_lookups_of_one_id_make_one_store_read():
    import threading

    from tests.memory_backend import GatedMemoryBackend

    store = GatedMemoryBackend({"db": URI_A})
    sp = SearchPath([("store", store)])
    hosts: list[str] = []
    threads = [threading.Thread(target=lambda: hosts.append(sp.get_connection("db").host)) for _ in range(32)]
    for t in threads:
        t.start()
    assert store.entered.wait(10)
    for _ in range(1000):  # bounded: until the 31 others wait on the first one's read
        if sp._flight.shared == 31:
            break
        time.sleep(0.005)
    store.gate.set()
    for t in threads:
        t.join(10)
    assert hosts == ["db-a"] * 32
    assert store.calls == [("get_conn_value", "db")]  # main: 32 reads


def test_concurrent_lookups_share_the_error_too():
    import threading

    from credpath.errors import BackendUnavailable
    from tests.memory_backend import GatedMemoryBackend

    store = GatedMemoryBackend({"db": URI_A})
    store.fail_with = Unreachable("down")
    sp = SearchPath([("store", store)])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sp.get_connection("db")
        except BackendUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    assert store.entered.wait(10)
    for _ in range(1000):
        if sp._flight.shared == 15:
            break
        time.sleep(0.005)
    store.gate.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 16 and len(store.calls) == 1


# --- start-up timed apart (issue 10 point 5) ------------------------------------------------------------


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


# --- cache_results, masker, team_name (issue 13 points 10, 11, 14) ------------------------------------------


def test_backends_that_say_so_are_never_served_from_the_cache():
    from tests.memory_backend import UncachedMemoryBackend

    env = UncachedMemoryBackend({"db": URI_A})
    store = MemoryBackend({"other": URI_B})
    sp = SearchPath([("env", env), ("store", store)])
    for _ in range(3):
        assert sp.get_connection("db").host == "db-a"
        with pytest.raises(NotFound):
            sp.get_connection("nope")
    assert env.calls.count(("get_conn_value", "db")) == 3  # main: 1 (cached 300 s)
    assert env.calls.count(("get_conn_value", "nope")) == 3  # asked live for a cached miss too (main: 60 s)
    env.connections["nope"] = URI_B  # "exported after start-up": seen at once
    assert sp.get_connection("nope").host == "db-b"
    sp.get_connection("other")
    sp.get_connection("other")
    assert store.calls.count(("get_conn_value", "other")) == 1  # the caching backend's hit is cached
    sp.prefetch(connections=["db"])
    assert ("connection", "db", None) not in sp.cache._data


def test_a_cached_answer_still_asks_the_never_cached_backends_ahead_of_it_live():
    from tests.memory_backend import UncachedMemoryBackend

    env = UncachedMemoryBackend({})
    store = MemoryBackend({"db": URI_A})
    sp = SearchPath([("env", env), ("store", store)])
    assert sp.get_connection("db").host == "db-a"
    with pytest.raises(NotFound):
        sp.get_connection("nope")
    env.connections["db"] = URI_B  # an AIRFLOW_CONN_DB exported after the store's answer was cached
    env.connections["nope"] = URI_B  # and one for an id whose miss was cached
    assert sp.get_connection("db").host == "db-b"
    assert sp.lookup("connection", "db").source == "env"
    assert sp.get_connection("nope").host == "db-b"
    del env.connections["db"], env.connections["nope"]
    assert sp.get_connection("db").host == "db-a"  # the cached answer again
    with pytest.raises(NotFound):
        sp.get_connection("nope")
    # The store was asked once for each id: the cache kept its answers, only env was asked live.
    assert store.calls == [("get_conn_value", "db"), ("get_conn_value", "nope")]


def test_prefetched_misses_are_cached_behind_a_never_cached_backend():
    from tests.memory_backend import UncachedMemoryBackend

    env = UncachedMemoryBackend({})
    store = MemoryBackend({"db": URI_A})
    sp = SearchPath([("env", env), ("store", store)])
    sp.prefetch(connections=["db", "nope"])
    assert sp.lookup("connection", "nope") is None
    assert sp.get_connection("db").host == "db-a"
    assert store.calls == [("get_conn_value", "db"), ("get_conn_value", "nope")]  # main: 1 more


def test_an_empty_masker_given_is_the_one_used():
    from credpath.masking import Masker, default_masker

    masker = Masker()
    sp = path(MemoryBackend({"db": URI_A}), masker=masker)
    assert sp.masker is masker  # main: the process-wide masker (an empty Masker is falsy)
    sp.get_connection("db")
    assert "pw-s3cr3t-a" not in masker.redact("pw-s3cr3t-a")
    assert default_masker() is not masker


def test_team_name_is_forwarded_only_where_accepted_and_keys_the_cache():
    from tests.memory_backend import TeamMemoryBackend

    legacy = MemoryBackend({"legacy_db": URI_A})  # pre-3.2 signature: get_conn_value(conn_id)
    teamed = TeamMemoryBackend({"db": URI_A}, team_connections={("blue", "db"): URI_B})
    sp = SearchPath([("legacy", legacy), ("teamed", teamed)])
    assert sp.get_connection("db").host == "db-a"
    assert sp.get_connection("db", team_name="blue").host == "db-b"
    assert sp.get_connection("db", team_name="blue").host == "db-b"  # cached per team
    assert sp.get_connection("db").host == "db-a"
    assert teamed.calls == [("get_conn_value", "db", None), ("get_conn_value", "db", "blue")]
    assert sp.get_connection("legacy_db", team_name="blue").host == "db-a"  # answered globally
    assert legacy.calls[-1] == ("get_conn_value", "legacy_db")
    teamed.team_variables[("blue", "v")] = "blue-value"
    teamed.variables["v"] = "global-value"
    assert sp.get_variable("v", team_name="blue") == "blue-value"
    assert sp.get_variable("v") == "global-value"
    assert sp.explain("variable", "v", team_name="blue").source == "teamed"
    sp.prefetch(connections=["x"], team_name="blue")
    assert ("get_conn_value", "x", "blue") in teamed.calls
    # a write invalidates every team's copy
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"), to="legacy")
    assert ("connection", "db", "blue") not in sp.cache._data


def test_api_forwards_team_name(monkeypatch):
    import credpath
    from credpath import api
    from tests.memory_backend import TeamMemoryBackend

    teamed = TeamMemoryBackend({"db": URI_A}, team_connections={("blue", "db"): URI_B})
    api.set_default_search_path(SearchPath([("teamed", teamed)]))
    try:
        assert credpath.get_connection("db", team_name="blue").host == "db-b"
        assert credpath.get_variable("nope", default=None, team_name="blue") is None
    finally:
        api.set_default_search_path(None)


def test_write_messages_speak_for_the_library():
    sp = SearchPath([("store", MemoryBackend())])
    with pytest.raises(ConfigError) as info:
        sp.set_variable("k", "v", to="nope")
    assert str(info.value).startswith("no backend named 'nope'")  # main: "--to: no backend named ..."


# --- issue 16: the search path's remaining gaps ---------------------------------------------------------


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


def test_lookup_patterns_from_credpath_toml_prevent_the_call(tmp_path):
    (tmp_path / "credpath.toml").write_text(
        """
        [[backends]]
        name = "vault"
        type = "tests.memory_backend.MemoryBackend"
        connections_lookup_pattern = "^vault_"
        variables_lookup_pattern = "^v_"
        kwargs = { connections = { app_db = "postgres://u@h/db", vault_db = "postgres://u@v/db" } }

        [[backends]]
        name = "other"
        type = "tests.memory_backend.MemoryBackend"
        kwargs = { connections = { app_db = "postgres://u@o/db" }, variables = { k = "v" } }
        """
    )
    sp = SearchPath.from_config(env={"CREDPATH_HOME": str(tmp_path)})
    vault = sp.backend("vault")
    assert sp.get_connection("app_db").host == "o"  # the pattern kept it from vault's copy
    assert sp.get_variable("k") == "v"
    assert vault.calls == []
    assert sp.get_connection("vault_db").host == "v"
    assert vault.calls == [("get_conn_value", "vault_db")]


def test_backend_by_name():
    first, second = MemoryBackend(), MemoryBackend()
    sp = SearchPath([("one", first), ("two", second)])
    assert sp.backend("one") is first and sp.backend("two") is second
    assert sp.names == ["one", "two"]
    with pytest.raises(ConfigError, match=r"no backend named 'three' in the search path \(have: one, two\)"):
        sp.backend("three")


def test_duplicate_backend_names_are_refused():
    with pytest.raises(ConfigError, match="duplicate backend name 'x'"):
        SearchPath([("x", MemoryBackend()), ("x", MemoryBackend())])


def test_a_non_string_variable_from_a_backend_is_a_failure_naming_it():
    backend = MemoryBackend(variables={"num": 5, "cfg_key": ["a"]})
    backend.config["cfg"] = 7
    fallback = MemoryBackend(variables={"num": "five"})
    sp = path(backend, fallback, breaker=no_breaker())
    assert sp.get_variable("num") == "five"  # a transient failure: falls through, as for an error
    from credpath.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="returned a list for variable 'cfg_key', not a string"):
        sp.get_variable("cfg_key")
    with pytest.raises(BackendUnavailable, match="returned a int for config 'cfg'"):
        sp.get_config("cfg")
    sp.entries[0].on_error = "fail"
    with pytest.raises(BackendError, match="returned a int for variable 'num'"):
        sp.get_variable("num")


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


def test_ids_behind_a_failed_batch_are_not_cached_and_errors_are_counted(caplog):
    broken = BatchMemoryBackend({"c1": URI_A, "c3": URI_A})
    broken.fail_with = Unreachable("down")
    fallback = BatchMemoryBackend({"c1": URI_B})
    sp = path(broken, fallback, breaker=no_breaker())
    report = sp.prefetch(connections=["c1", "c2", "c3", "c1"])["connection"]
    assert (report.requested, report.hits, report.misses, report.errors) == (3, 1, 0, 3)
    assert fallback.calls == [("get_conn_values", ("c1", "c2", "c3"))]
    assert len(sp.cache) == 0  # neither c1's fall-through value nor the misses behind the failure
    broken.fail_with = None  # recovered: its values win now
    assert sp.get_connection("c1").host == "db-a"
    assert sp.get_connection("c3").host == "db-a"
    assert "a batch read of 3 connection(s)" in caplog.text


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


def test_delete_variable_and_set_variable_invalidate_the_cache():
    store = MemoryBackend(variables={"k": "v1"})
    sp = path(store)
    assert sp.get_variable("k") == "v1"
    assert sp.set_variable("k", "v2") == "b0"
    assert sp.get_variable("k") == "v2"
    assert sp.delete_variable("k") == "b0"
    with pytest.raises(NotFound):
        sp.get_variable("k")
    assert sp.delete_variable("k") is None  # nothing deleted
    assert sp.delete_connection("nope") is None
    with pytest.raises(ConfigError, match="value must be a string, got int"):
        sp.set_variable("k", 5)


def test_a_failing_backend_in_list_ids_is_reported_and_the_others_listed(caplog):
    broken = MemoryBackend({"x": URI_A})
    broken.fail_with = Unreachable("down")
    sp = path(broken, MemoryBackend({"a": URI_A}), breaker=no_breaker())
    listing = sp.list_ids("connection")
    assert listing.found == {"a": ["b1"]} and listing.cannot_list == []
    assert list(listing.failed) == ["b0"] and "down" in listing.failed["b0"]
    assert "listing the other backends" in caplog.text
    sp.entries[0].on_error = "fail"
    with pytest.raises(Unreachable):
        sp.list_ids("connection")


def test_writes_take_no_store_options_and_a_team_only_where_writes_are_team_scoped():
    # Store behaviour is a backend setting (issue 11 point 4): the search path's writes take none.
    store = MemoryBackend()
    sp = path(store)
    conn = Connection.from_uri(URI_A, conn_id="db")
    with pytest.raises(TypeError):
        sp.set_connection(conn, on_deleted="recover")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"backend 'b0' .*has no team-scoped writes"):
        sp.set_connection(conn, team_name="blue")
    with pytest.raises(ConfigError, match="has no team-scoped writes"):
        sp.set_variable("k", "v", team_name="blue")
    assert store.connections == {} and store.variables == {}
    assert sp.set_connection(conn, overwrite=True) == "b0"
    with pytest.raises(ConfigError, match="no conn_id"):
        sp.set_connection(Connection(conn_type="x"))


def test_set_connection_passes_the_serialization_to_the_store():
    class Recording(MemoryBackend):
        def set_connection(self, conn, *, overwrite=True, serialization="json"):
            self.calls.append(("set_connection", serialization))
            super().set_connection(conn, overwrite=overwrite, serialization=serialization)

    store = Recording()
    sp = path(store)
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"), serialization="uri")
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"))
    assert [c for c in store.calls if c[0] == "set_connection"] == [
        ("set_connection", "uri"),
        ("set_connection", "json"),  # the store's default
    ]


def test_writes_go_to_the_metastore_first_else_the_first_writable():
    from credpath.protocol import BaseBackend

    class ReadOnly(BaseBackend):
        def get_conn_value(self, conn_id):
            return None

    ro, first, meta = ReadOnly(), MemoryBackend(), MemoryBackend()
    sp = SearchPath([("ro", ro), ("first", first), ("metastore", meta)])
    assert sp.set_variable("k", "v") == "metastore"
    sp = SearchPath([("ro", ro), ("first", first)])
    assert sp.set_variable("k", "v") == "first"
    with pytest.raises(ReadOnlyBackend, match="cannot write variables"):
        sp.set_variable("k", "v", to="ro")


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


def test_a_cached_answer_asks_every_live_backend_ahead_past_one_that_does_not_want_the_key():
    from tests.memory_backend import UncachedMemoryBackend

    picky = UncachedMemoryBackend(connections_lookup_pattern="^zz")
    live = UncachedMemoryBackend()
    cached = MemoryBackend({"db": URI_A})
    sp = path(picky, live, cached)
    assert sp.get_connection("db").host == "db-a"
    live.connections["db"] = URI_B  # exported later: shadows the cached answer
    assert sp.get_connection("db").host == "db-b"
    assert sp.lookup("connection", "db").source == "b1"


def test_backend_unavailable_names_the_first_failure():
    from credpath.errors import BackendUnavailable

    one, two = MemoryBackend(), MemoryBackend()
    one.fail_with = Unreachable("down-one")
    two.fail_with = Unreachable("down-two")
    sp = path(one, two, breaker=no_breaker())
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    message = str(info.value)
    assert "backends 'b0', 'b1' failed" in message and "down-one" in message and "down-two" not in message
    assert info.value.backends == ("b0", "b1")


def test_a_miss_is_cached_with_the_miss_ttl_not_the_hit_ttl():
    backend = MemoryBackend()
    sp = path(backend, cache=CacheSettings(ttl=100.0, miss_ttl=0.0))
    for _ in range(2):
        with pytest.raises(NotFound):
            sp.get_connection("nope")
    assert backend.calls.count(("get_conn_value", "nope")) == 2
    assert len(sp.cache) == 0


def test_a_write_invalidates_the_cached_value_of_every_team():
    from tests.memory_backend import TeamMemoryBackend

    store = TeamMemoryBackend(variables={"k": "v1"})
    sp = path(store)
    assert sp.get_variable("k", team_name="t") == "v1"
    assert sp.get_variable("k") == "v1"
    sp.set_variable("k", "v2")
    assert sp.get_variable("k", team_name="t") == "v2"
    assert sp.get_variable("k") == "v2"


def test_metrics_are_recorded_only_when_on():
    from credpath import metrics
    from credpath.errors import BackendUnavailable
    from credpath.resilience import BreakerSettings

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


def test_small_public_helpers_of_the_search_path():
    from credpath.search_path import as_connection, read_connection

    closed = []

    class Closing(MemoryBackend):
        def close(self):
            closed.append(self.name)

    sp = SearchPath([("a", Closing({"db": URI_A})), ("plain", ConnectionObjectBackend()), ("c", Closing())])
    sp.close()
    assert closed == ["a", "c"]
    assert sp.breaker_state("a") == "closed"
    assert sp.get_conn_value("db") == Connection.from_uri(URI_A, conn_id="db").get_uri()
    assert sp.get_conn_value("nope") is None
    assert sp.get_config("nope", default="d") == "d"
    with pytest.raises(NotFound):
        sp.get_config("nope")
    conn = Connection.from_uri(URI_A, conn_id="x")
    assert as_connection(None, "x") is None and as_connection(conn, "x") is conn
    assert as_connection(URI_B, "y").host == "db-b" and as_connection(URI_B, "y").conn_id == "y"
    assert read_connection(object(), "db") is None  # nothing to read with


def test_prefix_prefetch_of_connection_objects_takes_the_requested_id():
    from tests.memory_backend import PrefixMemoryBackend

    class Objects(PrefixMemoryBackend):
        def prefetch_connections(self):
            return {"new": Connection.from_uri(URI_A, conn_id="old")}

    sp = path(Objects())
    assert sp.prefetch(prefix=True)["connection"].hits == 1
    cached = sp.cache.get(("connection", "new", None))
    assert cached.value.conn_id == "new" and cached.source == "b0"


def test_explanation_flags():
    from credpath.search_path import Explanation

    e = Explanation(kind="connection", key="k", source=None)
    assert not e.found and not e.unavailable and not e.fell_through
    e.failed.append("b0")
    assert e.unavailable and not e.fell_through
    e.source = "b1"
    assert e.found and e.fell_through and not e.unavailable
    e.stale = True
    assert not e.fell_through


def test_a_failing_prepare_is_an_error_attempt_with_no_startup_time():
    class BadStart(MemoryBackend):
        def prepare(self):
            raise Unreachable("cannot start")

    explanation = path(BadStart(), MemoryBackend({"db": URI_A}), breaker=no_breaker()).explain(
        "connection", "db"
    )
    bad = explanation.attempts[0]
    assert (bad.outcome, bad.startup_seconds) == ("error", 0.0) and "cannot start" in bad.detail
    assert explanation.source == "b1"


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


def test_backend_kwargs_override_a_configured_backends_settings():
    from credpath.config import BackendSpec, Settings

    settings = Settings(
        backends=[
            BackendSpec(
                type="tests.memory_backend.SettingMemoryBackend", name="soft", kwargs={"on_deleted": "fail"}
            )
        ]
    )
    assert SearchPath.from_settings(settings).backend("soft").on_deleted == "fail"
    built = SearchPath.from_settings(settings, backend_kwargs={"soft": {"on_deleted": "purge"}})
    assert built.backend("soft").on_deleted == "purge"
    assert settings.backends[0].kwargs == {"on_deleted": "fail"}  # the configuration is not changed
    with pytest.raises(ConfigError, match="no backend named 'nope' in the search path"):
        SearchPath.from_settings(settings, backend_kwargs={"nope": {"on_deleted": "purge"}})


@pytest.mark.parametrize("metrics_on", [True, False])
def test_a_store_call_is_marked_for_the_retry_counter_only_while_metrics_are_on(metrics_on: bool) -> None:
    from credpath import metrics
    from credpath._lookup import trace

    marks: list[str | None] = []

    class Marked(MemoryBackend):
        def get_variable(self, key: str) -> str | None:
            current = trace._CALLING.get()  # the store call in progress, as the retry loops see it
            marks.append(None if current is None else current[1])
            return super().get_variable(key)

    metrics.reset()
    if metrics_on:
        metrics.enable()
    try:
        SearchPath([("marked", Marked(variables={"a": "1"}))]).get_variable("a")
    finally:
        metrics.disable()
        metrics.reset()
    assert marks == (["marked"] if metrics_on else [None])
    assert trace._CALLING.get() is None  # put back after the call
