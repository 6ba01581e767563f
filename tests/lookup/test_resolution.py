"""Resolution: the backends asked in order, the first hit wins, and the one error policy."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from credpath._masking import Masker
from credpath._search_path import Resolution, SearchPath
from credpath._settings import BackendSpec, Settings
from credpath.errors import BackendError, BackendUnavailable, ConfigError, NotFound
from credpath.model import Connection
from tests.lookup.helpers import (
    URI_A,
    URI_B,
    BadValueBatch,
    denied_error,
    no_breaker,
    path,
    quiet_path,
)
from tests.memory_backend import (
    BatchMemoryBackend,
    ConnectionObjectBackend,
    MemoryBackend,
    PrefixMemoryBackend,
    Unreachable,
)


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
    from credpath._settings import BackendSpec  # noqa: F401 - spec path covered in test_config

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


def test_access_denied_is_authoritative_on_every_read_path():
    from credpath.errors import AccessDenied

    for make in (MemoryBackend, BatchMemoryBackend, PrefixMemoryBackend):
        denied = make({"db": URI_A})
        denied.fail_with = denied_error()
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


def test_breaker_probe_after_cool_down_closes_on_success():
    from credpath._resilience import BreakerSettings

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


def test_an_empty_masker_given_is_the_one_used():
    from credpath._masking import default_masker

    masker = Masker()
    sp = path(MemoryBackend({"db": URI_A}), masker=masker)
    assert sp.masker is masker  # main: the process-wide masker (an empty Masker is falsy)
    sp.get_connection("db")
    assert "pw-s3cr3t-a" not in masker.redact("pw-s3cr3t-a")
    assert default_masker() is not masker


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


def test_small_public_helpers_of_the_search_path():
    from credpath._search_path import as_connection, read_connection

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


def test_explanation_flags():
    from credpath._search_path import Explanation

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


def test_backend_kwargs_override_a_configured_backends_settings():
    from credpath._settings import BackendSpec, Settings

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


def test_a_resolution_is_immutable():
    resolution = Resolution("v", "b0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolution.value = "other"  # type: ignore[misc]


def test_backend_kwargs_for_unknown_backends_name_the_first_in_order():
    settings = Settings(backends=[BackendSpec(type="memory", name="vault")])
    with pytest.raises(ConfigError) as info:
        SearchPath.from_settings(settings, backend_kwargs={"zz": {}, "aa": {}})
    assert "no backend named 'aa'" in str(info.value)
    assert "'zz'" not in str(info.value)


def test_an_unknown_backend_type_names_the_entry_when_it_has_no_origin():
    with pytest.raises(ConfigError) as info:
        SearchPath([BackendSpec(type="no-such-store", name="mine")])
    assert "mine type" in str(info.value)
    with pytest.raises(ConfigError) as info:
        SearchPath([BackendSpec(type="no-such-store", name="mine", origin="credpath.toml backends[1]")])
    assert "credpath.toml backends[1] type" in str(info.value)


def test_backend_unavailable_labels_the_first_failure_with_its_own_backend():
    one, two = MemoryBackend(), MemoryBackend()
    one.fail_with = Unreachable("down-one")
    two.fail_with = Unreachable("down-two")
    sp = quiet_path(one, two)
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    message = str(info.value)
    assert "backend 'b0' (memory): down-one" in message
    assert "'b1' (memory)" not in message


def test_a_message_that_already_names_its_backend_names_it_once():
    broken = MemoryBackend()
    broken.fail_with = Unreachable("backend 'b0' (memory): down")
    sp = quiet_path(broken)
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    assert str(info.value).count("backend 'b0' (memory)") == 1
    assert str(info.value).endswith("backend 'b0' (memory): down")
    listing = sp.list_ids("connection")
    assert listing.failed == {"b0": "backend 'b0' (memory): down"}


def test_messages_name_the_team_only_when_there_is_one():
    broken = MemoryBackend()
    broken.fail_with = Unreachable("down")
    sp = quiet_path(broken)
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db", team_name="blue")
    assert str(info.value).startswith("connection 'db' (team 'blue'): not found")
    with pytest.raises(BackendUnavailable) as info:
        sp.get_connection("db")
    assert str(info.value).startswith("connection 'db': not found")
    assert "team" not in str(info.value)


def test_a_bad_value_in_a_batch_fails_that_id_only():
    backend = BadValueBatch({"bad": URI_A, "good": URI_B, "also": URI_A})
    sp = quiet_path(backend)
    report = sp.prefetch(connections=["bad", "good", "also"])["connection"]
    assert (report.requested, report.hits, report.misses, report.errors) == (3, 2, 0, 1)
    assert sp.cache.get(("connection", "good", None)).value.host == "db-b"
    assert sp.cache.get(("connection", "also", None)).value.host == "db-a"
    assert len(sp.cache) == 2  # not the failed id, nor a miss for it
