"""The one key-map mapping (``backends/_keymap.py``) Vault and Kubernetes Secrets share: a secret's map of
keys -> connection, variable value, and a connection -> the map it is written as. The stores' own tests
(test_vault.py, test_kubernetes_secrets.py) run it against real servers; these pin the rule without one."""

from __future__ import annotations

import json

import pytest

from credpath.backends import _keymap
from credpath.backends.env import EnvironmentBackend
from credpath.errors import ConfigError
from credpath.model import Connection

URI = "postgres://user:s3cr3t@db.example:5432/app"


def _plain() -> EnvironmentBackend:
    return EnvironmentBackend()


def _rds() -> EnvironmentBackend:
    return EnvironmentBackend(connection_format="aws-rds")


def test_conn_value_is_the_uri_key_else_the_map_as_json() -> None:
    assert _keymap.conn_value({"conn_uri": URI, "description": "d"}) == URI
    fields = {"conn_type": "postgres", "host": "db", "port": "5432"}
    assert json.loads(_keymap.conn_value(fields)) == fields
    # An empty conn_uri is not a URI: the fields are the value.
    assert json.loads(_keymap.conn_value({"conn_uri": "", "host": "h"})) == {"conn_uri": "", "host": "h"}


def test_connection_keeps_a_description_beside_the_uri() -> None:
    conn = _keymap.connection(_plain(), "db", {"conn_uri": URI, "description": "the app's db"})
    assert (conn.conn_id, conn.host, conn.port, conn.password) == ("db", "db.example", 5432, "s3cr3t")
    assert conn.description == "the app's db"


def test_connection_from_json_fields() -> None:
    data = {"conn_type": "postgres", "host": "db", "port": "5432", "extra": '{"sslmode": "require"}'}
    conn = _keymap.connection(_plain(), "db", data)
    assert (conn.conn_type, conn.host, conn.port) == ("postgres", "db", 5432)
    assert conn.extra_dejson == {"sslmode": "require"}


def test_connection_goes_through_the_connection_format() -> None:
    data = {"engine": "postgres", "host": "h", "username": "u", "password": "p", "port": 5432}
    conn = _keymap.connection(_rds(), "rds", data)
    assert (conn.conn_type, conn.host, conn.login, conn.password) == ("postgres", "h", "u", "p")


def test_value_of_and_keys_present() -> None:
    assert _keymap.value_of({"value": "v"}) == "v"
    assert _keymap.value_of({"value": {"a": 1}}) == '{"a": 1}'  # a structured value as JSON text
    assert _keymap.value_of({"other": "v"}) is None
    assert _keymap.keys_present({"b": "x", "a": "y"}) == "a, b"
    assert _keymap.keys_present({}) == "none"


def _conn() -> Connection:
    return Connection(
        conn_id="db",
        conn_type="postgres",
        host="db.example",
        login="user",
        password="s3cr3t",
        port=5432,
        description="d",
        extra='{"sslmode":"require"}',
    )


def test_connection_map_json_keeps_types_unless_strings() -> None:
    conn_id, data = _keymap.connection_map(_plain(), _conn(), "json")
    assert conn_id == "db"
    assert data["port"] == 5432 and data["extra"] == {"sslmode": "require"}
    _, text = _keymap.connection_map(_plain(), _conn(), "json", strings=True)
    assert text["port"] == "5432"
    assert text["extra"] == '{"sslmode":"require"}'  # the stored text, not a re-dump
    assert all(isinstance(v, str) for v in text.values())
    assert "schema" not in text  # empty fields left out


def test_connection_map_uri_keeps_the_description() -> None:
    _, data = _keymap.connection_map(_plain(), _conn(), "uri")
    assert set(data) == {"conn_uri", "description"}
    assert Connection.from_uri(data["conn_uri"]).password == "s3cr3t"


def test_connection_map_in_the_connection_format() -> None:
    _, data = _keymap.connection_map(_rds(), _conn(), "json")
    assert data["engine"] == "postgres" and data["username"] == "user" and data["port"] == 5432
    assert _keymap.connection_map(_rds(), _conn(), "json", strings=True)[1]["port"] == "5432"


@pytest.mark.parametrize(
    ("conn", "serialization", "message"),
    [
        (Connection(conn_id="", conn_type="http"), "json", "needs a connection with a conn_id"),
        (Connection(conn_id="c", conn_type="http"), "yaml", "serialization must be 'uri' or 'json'"),
    ],
)
def test_connection_map_refuses_bad_input(conn: Connection, serialization: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _keymap.connection_map(_plain(), conn, serialization)  # type: ignore[arg-type]
