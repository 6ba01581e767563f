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
