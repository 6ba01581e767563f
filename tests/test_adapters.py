"""connection_format adapters: presets, declarative mappings, errors that never quote a value."""

from __future__ import annotations

import json

import pytest

from credpath._adapters import build_adapter
from credpath._search_path import SearchPath
from credpath.errors import ConfigError
from credpath.model import ConnectionFormatError

PW = "pw-s3cr3t-rds"


def _rds(engine: str = "postgres", **more: object) -> str:
    data = {
        "engine": engine,
        "host": "mydb.abc.eu-west-1.rds.amazonaws.com",
        "username": "app",
        "password": PW,
        "dbname": "orders",
        "port": 5432,
        "dbInstanceIdentifier": "mydb",
    }
    data.update(more)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("engine", "conn_type"),
    [
        ("postgres", "postgres"),
        ("aurora-postgresql", "postgres"),
        ("mysql", "mysql"),
        ("aurora-mysql", "mysql"),
        ("mariadb", "mysql"),
        ("sqlserver-ex", "mssql"),
        ("oracle-ee", "oracle"),
        ("redshift", "redshift"),
        ("someengine", "someengine"),
    ],
)
def test_aws_rds_preset_maps_engine_and_fields(engine: str, conn_type: str) -> None:
    conn = build_adapter("aws-rds")("orders_db", _rds(engine))
    assert conn.conn_id == "orders_db"
    assert conn.conn_type == conn_type
    assert (conn.host, conn.login, conn.password, conn.schema, conn.port) == (
        "mydb.abc.eu-west-1.rds.amazonaws.com",
        "app",
        PW,
        "orders",
        5432,
    )
    # Keys the preset does not map are kept in extra, not dropped.
    assert conn.extra_dejson == {"dbInstanceIdentifier": "mydb"}


def test_username_password_preset_accepts_both_spellings() -> None:
    adapter = build_adapter("username-password")
    short = adapter(
        "svc", json.dumps({"user": "u1", "pass": PW, "host": "h", "port": "8080", "region": "eu"})
    )
    long = adapter("svc", json.dumps({"username": "u1", "password": PW, "host": "h", "port": 8080}))
    assert (short.login, short.password, short.host, short.port) == ("u1", PW, "h", 8080)
    assert (long.login, long.password, long.host, long.port) == ("u1", PW, "h", 8080)
    assert short.extra_dejson == {"region": "eu"}
    assert long.extra is None


def test_declarative_mapping_with_constant_type_and_no_extra() -> None:
    adapter = build_adapter(
        {
            "conn_type": "snowflake",
            "fields": {"login": "user", "password": "secret", "host": "account"},
            "extra": "none",
        }
    )
    conn = adapter("sf", json.dumps({"user": "loader", "secret": PW, "account": "xy123", "warehouse": "WH"}))
    assert (conn.conn_type, conn.login, conn.password, conn.host) == ("snowflake", "loader", PW, "xy123")
    assert conn.extra is None


def test_declarative_mapping_rest_goes_to_extra_and_inverse_round_trips() -> None:
    adapter = build_adapter(
        {"conn_type": "http", "fields": {"host": "url", "password": "token"}, "extra": "rest"}
    )
    raw = json.dumps({"url": "api.example.com", "token": PW, "timeout": 30})
    conn = adapter("api", raw)
    assert conn.extra_dejson == {"timeout": 30}
    assert json.loads(adapter.to_value(conn)) == json.loads(raw)


def test_preset_can_be_customised() -> None:
    adapter = build_adapter({"preset": "username-password", "conn_type": "ftp"})
    conn = adapter("f", json.dumps({"user": "u", "pass": PW, "host": "ftp.example.com"}))
    assert conn.conn_type == "ftp" and conn.login == "u"


@pytest.mark.parametrize(
    "raw",
    [
        f"postgres://app:{PW}@host/db",  # a URI, not a JSON object
        json.dumps(["app", PW]),  # JSON, but a list
        f'{{"username": "app", "password": "{PW}"',  # truncated JSON
    ],
    ids=["uri", "list", "truncated"],
)
def test_values_that_are_not_json_objects_name_the_conn_id_not_the_value(raw: str) -> None:
    with pytest.raises(ConnectionFormatError) as info:
        build_adapter("aws-rds")("orders_db", raw)
    message = str(info.value)
    assert "orders_db" in message and "aws-rds" in message
    assert PW not in message and "s3cr3t" not in message


def test_bad_field_types_and_ports_name_the_field() -> None:
    adapter = build_adapter("aws-rds")
    with pytest.raises(ConnectionFormatError, match="'host'"):
        adapter("x", _rds(host=["a", "b"]))
    with pytest.raises(ConnectionFormatError, match="port") as info:
        adapter("x", _rds(port="54x32"))
    assert PW not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("vault-kv", "unknown preset"),
        ({"fields": {"passwd": "p"}}, "not a connection field"),
        ({"fields": {}}, "non-empty mapping"),
        ({"fields": {"login": "u"}, "extra": "all"}, "extra must be one of"),
        ({"fields": {"login": "u"}, "colour": "red"}, "unknown key"),
        ({"fields": {"conn_type": "t"}, "conn_type": "http"}, "not both"),
        ({"fields": {"login": 3}}, "key name"),
        (42, "preset name or a mapping"),
    ],
)
def test_invalid_specs_are_config_errors(spec: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build_adapter(spec)  # type: ignore[arg-type]


def test_backend_with_connection_format_resolves_through_the_search_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from credpath.backends.env import EnvironmentBackend

    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", _rds("mysql", port=3306))
    backend = EnvironmentBackend(connection_format="aws-rds")
    conn = SearchPath([backend], cache=False).get_connection("orders_db")
    assert (conn.conn_type, conn.port, conn.password) == ("mysql", 3306, PW)
    # Without the format the same secret is not an Airflow connection.
    with pytest.raises(ConnectionFormatError, match="unknown field"):
        EnvironmentBackend().get_connection("orders_db")
