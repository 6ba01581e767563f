"""The environment-variables backend (AIRFLOW_CONN_* / AIRFLOW_VAR_*)."""

from __future__ import annotations

import pytest

from credpath.backends.env import EnvironmentBackend
from credpath.model import Connection
from credpath.registry import create_backend
from tests.servers.local import EnvHarness

PW = "pw-s3cr3t-1"


def test_reads_uri_and_json_connections_upper_casing_the_id(env_harness: EnvHarness) -> None:
    env_harness.seed("connection", "my_db", f"postgres://u:{PW}@h:5432/s")
    env_harness.seed("connection", "My_Api", '{"conn_type": "http", "host": "api", "password": "tok-s3cr3t"}')
    backend = env_harness.make_backend()
    assert backend.get_conn_value("my_db") == f"postgres://u:{PW}@h:5432/s"
    assert backend.get_conn_value("MY_DB") == backend.get_conn_value("my_db")
    conn = backend.get_connection("my_api")
    assert conn == Connection(conn_id="my_api", conn_type="http", host="api", password="tok-s3cr3t")
    assert backend.get_conn_value("missing") is None


def test_variables_and_config(env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    env_harness.seed("variable", "Batch_Size", "500")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "32")
    backend = env_harness.make_backend()
    assert backend.get_variable("batch_size") == "500"
    assert backend.get_variable("BATCH_SIZE") == "500"
    assert backend.get_variable("other") is None
    assert backend.get_config("core__parallelism") is None  # like Airflow's env backend


def test_reads_the_environment_at_call_time(env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = env_harness.make_backend()
    assert backend.get_variable("late") is None
    monkeypatch.setenv("AIRFLOW_VAR_LATE", "now")
    assert backend.get_variable("late") == "now"
    monkeypatch.delenv("AIRFLOW_VAR_LATE")
    assert backend.get_variable("late") is None


def test_listing_lower_cases_ids(env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    env_harness.seed("connection", "Zeta", "http://z")
    env_harness.seed("connection", "alpha", "http://a")
    env_harness.seed("variable", "B_VAR", "1")
    monkeypatch.setenv("AIRFLOW_CONN_", "http://no-id")  # a bare prefix names nothing
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND", "x")  # not a connection
    backend = env_harness.make_backend()
    assert backend.list_connections() == ["alpha", "zeta"]
    assert backend.list_variables() == ["b_var"]


def test_lookup_patterns(env_harness: EnvHarness) -> None:
    env_harness.seed("connection", "aws_default", "aws://")
    env_harness.seed("connection", "pg", "postgres://h")
    env_harness.seed("variable", "app_x", "1")
    backend = env_harness.make_backend(connections_lookup_pattern="^AWS", variables_lookup_pattern="^nothing")
    assert backend.get_conn_value("aws_default") == "aws://"  # case-insensitive match
    assert backend.get_conn_value("pg") is None
    assert backend.get_variable("app_x") is None
    assert backend.list_connections() == ["aws_default"]
    assert backend.get_conn_values(["aws_default", "pg", "none"]) == {"aws_default": "aws://"}


def test_batches(env_harness: EnvHarness) -> None:
    env_harness.seed("variable", "a", "1")
    env_harness.seed("variable", "b", "2")
    assert env_harness.make_backend().get_variables(["a", "b", "c"]) == {"a": "1", "b": "2"}


def test_is_read_only_and_loadable_by_alias_and_airflow_path() -> None:
    from credpath.errors import ReadOnlyBackend

    backend = create_backend("env")
    assert isinstance(backend, EnvironmentBackend)
    assert isinstance(
        create_backend("airflow.secrets.environment_variables.EnvironmentVariablesBackend"),
        EnvironmentBackend,
    )
    with pytest.raises(ReadOnlyBackend):
        backend.set_variable("x", "y")


# --- multi-team, as airflow/secrets/environment_variables.py (3.3.2) -----------------------------------


def test_team_name_reads_the_team_name_first(
    env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN__TEAM_A___MY_DB", "postgres://team-host/db")
    monkeypatch.setenv("AIRFLOW_CONN_MY_DB", "postgres://global-host/db")
    monkeypatch.setenv("AIRFLOW_VAR__TEAM_A___SIZE", "7")
    monkeypatch.setenv("AIRFLOW_VAR_SIZE", "1")
    backend = env_harness.make_backend()
    assert backend.get_conn_value("my_db", team_name="team_a") == "postgres://team-host/db"
    assert backend.get_connection("my_db", team_name="Team_A").host == "team-host"  # upper-cased, as Airflow
    assert backend.get_variable("size", team_name="team_a") == "7"
    # Another team, or no team: the team-agnostic name.
    assert backend.get_conn_value("my_db", team_name="team_b") == "postgres://global-host/db"
    assert backend.get_conn_value("my_db") == "postgres://global-host/db"
    assert backend.get_variable("size") == "1"
    assert backend.get_conn_values(["my_db", "none"], team_name="team_a") == {
        "my_db": "postgres://team-host/db"
    }
    assert backend.get_variables(["size"], team_name="team_a") == {"size": "7"}


def test_empty_team_value_falls_through_as_airflow(
    env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Airflow: `if team_name and (team_var := os.environ.get(...))` -- an empty team value is falsy.
    monkeypatch.setenv("AIRFLOW_VAR__TEAM_A___K", "")
    monkeypatch.setenv("AIRFLOW_VAR_K", "global")
    assert env_harness.make_backend().get_variable("k", team_name="team_a") == "global"


@pytest.mark.parametrize("setting", ["True", "true", "1", "t"])
def test_ids_spelling_a_team_namespace_never_resolve_in_multi_team_mode(
    env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", setting)
    monkeypatch.setenv("AIRFLOW_CONN__TEAM_B___DB", "postgres://team-b-only/db")
    monkeypatch.setenv("AIRFLOW_VAR__TEAM_B___K", "team-b-only")
    backend = env_harness.make_backend()
    # "_team_b___db" upper-cases to the team's name: Airflow refuses any id containing "___".
    assert backend.get_conn_value("_team_b___db") is None
    assert backend.get_connection("_team_b___db", team_name="team_a") is None
    assert backend.get_variable("_team_b___k") is None
    assert backend.get_variable("_team_b___k", team_name="team_b") is None
    # Listing shows what a lookup resolves: the team's own ids only with its team_name.
    assert backend.list_connections() == []
    assert backend.list_connections(team_name="team_b") == ["db"]
    assert backend.list_variables(team_name="team_b") == ["k"]


def test_without_multi_team_a_triple_underscore_id_is_an_ordinary_id(
    env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Airflow checks the namespace only when [core] multi_team is on.
    monkeypatch.delenv("AIRFLOW__CORE__MULTI_TEAM", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_A___B", "plain")
    backend = env_harness.make_backend()
    assert backend.get_variable("a___b") == "plain"
    assert env_harness.make_backend(multi_team=True).get_variable("a___b") is None
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    assert env_harness.make_backend(multi_team=False).get_variable("a___b") == "plain"


def test_empty_connection_value_is_a_miss_as_airflow(
    env_harness: EnvHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BaseSecretsBackend.get_connection: `if value:` -- an empty value is no connection (not an error).
    monkeypatch.setenv("AIRFLOW_CONN_EMPTY", "")
    assert env_harness.make_backend().get_connection("empty") is None


def test_not_cacheable() -> None:
    # os.environ costs microseconds and may change: the search path must never serve it from its cache.
    assert EnvironmentBackend.cache_results is False


def test_read_methods_accept_team_name_keyword() -> None:
    import inspect

    for method in ("get_conn_value", "get_connection", "get_variable", "get_conn_values", "get_variables"):
        assert "team_name" in inspect.signature(getattr(EnvironmentBackend, method)).parameters, method


def test_bad_multi_team_kwarg_names_the_setting() -> None:
    from credpath.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^backend 'env' \(environment variables\): multi_team must be"):
        EnvironmentBackend(multi_team="yes")  # type: ignore[arg-type]
