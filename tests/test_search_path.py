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
    sp = path(backend, cache=CacheSettings(ttl=0.05, miss_ttl=0.05, jitter=0.0))
    sp.get_connection("db")
    time.sleep(0.08)
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
    third = MemoryBackend({"db": URI_A})
    fourth = MemoryBackend({"db": URI_B})
    sp = path(first, second, third, fourth)
    explanation = sp.explain("connection", "db")
    assert explanation.source == "b2"
    outcomes = [(a.backend, a.outcome) for a in explanation.attempts]
    assert outcomes == [("b0", "skipped (pattern)"), ("b1", "error"), ("b2", "hit"), ("b3", "not tried")]
    assert "sealed" in explanation.attempts[1].detail
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
