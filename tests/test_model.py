"""The parser against Airflow 3.3.2's recorded vectors, plus properties of the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credpath.errors import ConfigError
from credpath.model import (
    Connection,
    ConnectionFormatError,
    Variable,
    mask_sensitive,
    sanitize_conn_id,
    validate_key,
)

VECTORS_FILE = Path(__file__).resolve().parent / "vectors" / "connections.json"
VECTORS = json.loads(VECTORS_FILE.read_text())["vectors"]
FIELDS = ("conn_type", "host", "login", "password", "schema", "port")


def _parse(vector: dict) -> Connection:
    if "uri" in vector:
        return Connection.from_uri(vector["uri"], conn_id="vec")
    return Connection.from_json(vector["json"], conn_id="vec")


def _fields(conn: Connection) -> dict:
    got = {name: getattr(conn, name) for name in FIELDS}
    got["extra"] = conn.extra_dejson if conn.extra else None
    return got


def test_vectors_file_is_present_and_nonempty():
    assert len(VECTORS) >= 30


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_airflow_vector(vector):
    if vector["expect"] == "error":
        with pytest.raises(ValueError, match="'port'"):
            _parse(vector)
        return
    conn = _parse(vector)
    assert _fields(conn) == vector["expect"]


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["expect"] != "error"], ids=lambda v: v["name"])
def test_get_uri_round_trips_to_same_fields(vector):
    conn = _parse(vector)
    again = Connection.from_uri(conn.get_uri(), conn_id="vec")
    expected = dict(vector["expect"])
    # A JSON-born connection has None for host/schema; the URI form cannot tell None from "".
    for name in ("host", "schema"):
        if expected[name] is None:
            expected[name] = ""
    assert _fields(again) == expected
    # Airflow's own URI parses to the same fields as ours.
    assert _fields(Connection.from_uri(vector["airflow_get_uri"], conn_id="vec")) == _fields(again)


def test_get_uri_matches_airflow_string_for_every_vector():
    mismatches = [
        v["name"] for v in VECTORS if v["expect"] != "error" and _parse(v).get_uri() != v["airflow_get_uri"]
    ]
    assert mismatches == []


@pytest.mark.parametrize("port", [-1, 65536, "70000", "12a", 1.5, True])
def test_bad_ports_raise_naming_the_field(port):
    with pytest.raises(ConnectionFormatError, match="'port'"):
        Connection(conn_id="c", conn_type="x", port=port)


def test_bad_uri_port_error_does_not_leak_password():
    with pytest.raises(ConnectionFormatError) as info:
        Connection.from_uri("mysql://user:hunter2secret@host:99999/db", conn_id="c")
    assert "hunter2secret" not in str(info.value)
    assert "port" in str(info.value)


def test_unknown_json_field_is_named():
    with pytest.raises(ConnectionFormatError, match="bogus"):
        Connection.from_json('{"conn_type": "x", "bogus": 1}')


def test_json_without_conn_type_is_accepted_as_airflow():
    # airflow.models.Connection.from_json pops conn_type only if present; Connection() leaves it None.
    conn = Connection.from_json('{"login": "u", "password": "pw-s3cr3t", "host": "h"}', conn_id="generic")
    assert (conn.conn_type, conn.host, conn.login, conn.password) == (None, "h", "u", "pw-s3cr3t")
    assert Connection.from_value('  {"host": "h"} ', conn_id="g").host == "h"
    assert Connection.from_json("{}", conn_id="g") == Connection(conn_id="g")
    conn = Connection.from_json('{"uri": "postgres://u:p@h:5/db", "description": "d"}', conn_id="x")
    assert (conn.conn_type, conn.host, conn.port, conn.description) == ("postgres", "h", 5, "d")


def test_invalid_json_error_names_position_not_value():
    with pytest.raises(ConnectionFormatError, match="line 1 column"):
        Connection.from_json('{"conn_type": "x", "password": "topsecret"')


def test_extra_must_be_object():
    with pytest.raises(ConnectionFormatError, match="'extra'"):
        Connection(conn_type="x", extra="[1, 2]")
    with pytest.raises(ConnectionFormatError, match="'extra'"):
        Connection.from_uri("x://h/?__extra__=notjson")


def test_repr_hides_password_and_sensitive_extras():
    conn = Connection(
        conn_id="c",
        conn_type="x",
        password="pw-should-hide",
        extra=json.dumps({"api_key": "key-should-hide", "region": "eu", "nested": {"token": "tok-hide"}}),
    )
    text = repr(conn) + str(conn)
    for secret in ("pw-should-hide", "key-should-hide", "tok-hide"):
        assert secret not in text
    assert "eu" in text
    assert sorted(conn.secret_values()) == ["key-should-hide", "pw-should-hide", "tok-hide"]


def test_variable_repr_and_json():
    var = Variable("cfg", '{"a": [1, 2]}')
    assert var.deserialize() == {"a": [1, 2]}
    assert "[1, 2]" not in repr(var)


def test_mask_sensitive_is_case_insensitive_substring():
    assert mask_sensitive({"My_Password_2": "x", "user": "y"}) == {"My_Password_2": "***", "user": "y"}


def test_to_json_drops_only_none_as_airflow_as_json():
    # Airflow's as_json: to_dict(prune_empty=True) is prune_dict(mode="strict") (None only), then extra
    # only when extra_dejson is non-empty, then conn_id popped. Key order is Airflow's.
    conn = Connection(conn_id="c", conn_type="http", host="", login="", schema="", port=None)
    assert conn.to_json() == '{"conn_type": "http", "host": "", "login": "", "schema": ""}'
    again = Connection.from_json(conn.to_json(), conn_id="c")
    assert (again.login, again.host, again.schema) == ("", "", "")
    full = Connection(conn_id="c", conn_type="x", description="d", host="h", login="l", schema="s", port=1)
    assert list(json.loads(full.with_id("c").to_json())) == [
        "conn_type",
        "description",
        "host",
        "login",
        "schema",
        "port",
    ]
    assert json.loads(Connection(conn_type="x", extra='{"a": 1}').to_json()) == {
        "conn_type": "x",
        "extra": {"a": 1},
    }


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # Airflow 3.3.2 core _parse_from_uri: urlsplit("//abc").scheme == "" -> conn_type "", host "abc".
        ("//abc", ("", "abc", None, None, "", None)),
        ("://abc", ("", "abc", None, None, "", None)),
        ("//u:pw@abc:5/db", ("", "abc", "u", "pw", "db", 5)),
    ],
)
def test_from_uri_without_scheme_parses_as_airflow(uri, expected):
    conn = Connection.from_uri(uri, conn_id="c")
    assert (conn.conn_type, conn.host, conn.login, conn.password, conn.schema, conn.port) == expected


def test_get_uri_without_conn_type_parses_back():
    conn = Connection(conn_id="c", host="abc", login="u", port=5)
    assert conn.get_uri() == "//u@abc:5"
    again = Connection.from_uri(conn.get_uri(), conn_id="c")
    assert (again.conn_type, again.host, again.login, again.port) == ("", "abc", "u", 5)


@pytest.mark.parametrize("uri", ["abc", "host:5432/db", "1abc://host"])
def test_uri_without_scheme_or_slashes_is_refused(uri):
    # Airflow turns these into a schema ("bc"); credpath refuses them (an intended difference).
    with pytest.raises(ConnectionFormatError, match="scheme"):
        Connection.from_uri(uri, conn_id="c")


@pytest.mark.parametrize(
    ("conn_id", "expected"),
    [
        ("my_db", "my_db"),
        ("a-b.c:d/e\\f#g!(h)", "a-b.c:d/e\\f#g!(h)"),
        ("ünïcode_ok", "ünïcode_ok"),  # \w is Unicode-aware, as in Airflow
        ("x" * 250, "x" * 250),
        ("x" * 251, None),  # CONN_ID_MAX_LEN
        ("has space", None),
        ("<script>", None),
        ("", None),
        ("abc\n", "abc"),  # re.match + "$" matches before a final newline: Airflow keeps "abc"
    ],
)
def test_conn_id_is_sanitized_as_airflow(conn_id, expected):
    assert sanitize_conn_id(conn_id) == expected
    # Airflow applies it in Connection.__init__; an id it refuses leaves conn_id unset (None).
    assert Connection(conn_id=conn_id, conn_type="x").conn_id == expected
    assert Connection.from_uri("x://h", conn_id=conn_id).conn_id == expected
    assert Connection.from_json('{"conn_type": "x"}', conn_id=conn_id).conn_id == expected


def test_validate_key_as_airflow_connections_add():
    validate_key("ok.id-1_x", max_length=200)
    for bad, pattern in [
        ("a b", "alphanumeric"),
        ("a/b", "alphanumeric"),
        ("x" * 201, "at most 200"),
        ("a..b", "consecutive dots"),
    ]:
        with pytest.raises(ConfigError, match=pattern):
            validate_key(bad, max_length=200, what="connection id")


def test_validate_key_double_dot_allowed_by_airflow_setting(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__ALLOW_DOUBLE_DOT_IN_IDS", "True")
    validate_key("a..b")


def test_to_json_round_trip_keeps_description():
    conn = Connection(conn_id="a", conn_type="postgres", description="main db", host="h", port=5432)
    assert conn.to_json() == '{"conn_type": "postgres", "description": "main db", "host": "h", "port": 5432}'
    again = Connection.from_json(conn.to_json(), conn_id="a")
    assert again == conn and again.description == "main db"


# --- property-based round trip ------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20
)
_ascii = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=20)
_conn_types = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True).filter(lambda t: t != "postgresql")
_extra_keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True).filter(lambda k: k != "__extra__")
_extra_values = st.one_of(
    st.integers(-5, 5), st.booleans(), st.none(), _text, st.lists(st.integers(0, 3), max_size=3)
)


@st.composite
def connections(draw, empty_strings: bool = False):
    # empty_strings: also "" for host/login/schema (the URI form cannot keep "" apart from None).
    def maybe(strategy):
        return (
            st.one_of(st.none(), st.just(""), strategy) if empty_strings else st.one_of(st.none(), strategy)
        )

    return Connection(
        conn_id="prop",
        conn_type=draw(_conn_types),
        host=draw(maybe(_ascii.filter(lambda h: "://" not in h))),
        login=draw(maybe(_text)),
        password=draw(st.one_of(st.none(), _text)),
        schema=draw(maybe(_text)),
        port=draw(st.one_of(st.none(), st.integers(1, 65535))),
        extra=draw(
            st.one_of(st.none(), st.dictionaries(_extra_keys, _extra_values, max_size=4).map(json.dumps))
        ),
    )


def _normalised(conn: Connection) -> dict:
    got = _fields(conn)
    got["host"] = got["host"] or ""
    if "/" not in got["host"]:
        got["host"] = got["host"].lower()  # urlsplit lower-cases host names, as in Airflow
    got["schema"] = got["schema"] or ""
    if got["extra"] == {}:
        got["extra"] = None
    if got["login"] is None and (got["password"] is not None or (got["port"] and not got["host"])):
        got["login"] = ""  # ":pw@" and "@:port" carry an empty login, as Airflow's own URIs do
    return got


@given(connections())  # examples: the Hypothesis profile (tests/conftest.py)
def test_uri_round_trip_property(conn):
    assert _normalised(Connection.from_uri(conn.get_uri(), conn_id="prop")) == _normalised(conn)


@given(connections(empty_strings=True))
def test_json_round_trip_property(conn):
    # to_json keeps empty strings, as Airflow's as_json does: every field comes back as it was.
    assert Connection.from_json(conn.to_json(), conn_id="prop") == conn
    # ... and writes exactly the fields that are set: no null, no conn_id, no empty extra.
    data = json.loads(conn.to_json())
    expected = {
        k
        for k in ("conn_type", "host", "login", "password", "schema", "port")
        if getattr(conn, k) is not None
    }
    if conn.extra_dejson:
        expected.add("extra")
    assert set(data) == expected and None not in data.values()


def test_get_uri_drops_an_empty_protocol_from_the_host_as_airflow():
    # Airflow 3.3.2: Connection(conn_type="mysql", host="://0", port=8959).get_uri() == "mysql://0:8959"
    assert Connection(conn_id="c", conn_type="mysql", host="://0", port=8959).get_uri() == "mysql://0:8959"
    assert Connection(conn_id="c", conn_type="mysql", host="://://", port=8959).get_uri() == (
        "mysql://%3A%2F%2F:8959"
    )


def test_json_uri_beside_empty_fields_is_the_uri_as_airflow():
    text = json.dumps({"uri": "postgres://", "conn_type": None, "password": "", "extra": {}, "port": None})
    conn = Connection.from_json(text, conn_id="c")
    assert (conn.conn_type, conn.host, conn.schema, conn.password) == ("postgres", "", "", None)
    with pytest.raises(ValueError, match="mixes 'uri' with field"):
        Connection.from_json(json.dumps({"uri": "postgres://h", "host": "other"}), conn_id="c")


# --- with_id, masked_dict, exact JSON, odd URIs ----------------------------------------------


def test_with_id_returns_a_new_connection_for_a_new_id_only():
    conn = Connection(conn_id="old", conn_type="x", host="h", password="pw-1", extra='{"a": 1}')
    same = conn.with_id("old")
    assert same is conn
    moved = conn.with_id("new")
    assert moved is not conn and moved.conn_id == "new" and conn.conn_id == "old"
    assert moved.to_dict(include_conn_id=False) == conn.to_dict(include_conn_id=False)
    assert Connection(conn_type="x").with_id("n").conn_id == "n"


def test_masked_dict_hides_the_password_and_sensitive_extras_only():
    conn = Connection(
        conn_id="c",
        conn_type="x",
        host="h",
        login="u",
        password="pw-1",
        port=1,
        extra=json.dumps({"token": "t-1", "region": "eu"}),
    )
    assert conn.masked_dict() == {
        "conn_id": "c",
        "conn_type": "x",
        "description": None,
        "host": "h",
        "login": "u",
        "password": "***",
        "schema": None,
        "port": 1,
        "extra": {"token": "***", "region": "eu"},
    }
    assert conn.masked_dict("<hidden>")["password"] == "<hidden>"
    assert conn.masked_dict("<hidden>")["extra"]["token"] == "<hidden>"
    bare = Connection(conn_id="c", conn_type="x").masked_dict()
    assert bare["password"] is None and bare["extra"] is None


def test_to_json_exact_string_for_every_field():
    conn = Connection(
        conn_id="c",
        conn_type="postgres",
        description="d",
        host="h",
        login="u",
        password="p",
        schema="s",
        port=5,
        extra='{"k": [1, 2]}',
    )
    assert conn.to_json() == (
        '{"conn_type": "postgres", "description": "d", "host": "h", "login": "u", "password": "p", '
        '"schema": "s", "port": 5, "extra": {"k": [1, 2]}}'
    )
    assert Connection().to_json() == "{}"


def test_to_dict_options():
    conn = Connection(conn_id="c", conn_type="x", host="", login="u")
    assert conn.to_dict(prune_empty=True) == {"conn_id": "c", "conn_type": "x", "login": "u"}
    assert "conn_id" not in conn.to_dict(include_conn_id=False)
    assert conn.to_dict()["host"] == ""


@pytest.mark.parametrize("uri", ["a://b://c://d", "x://h://://p", "x://u:p@h:1/s://t://u"])
def test_uri_with_three_separators_is_refused(uri):
    with pytest.raises(ConnectionFormatError, match="more than two '://' separators"):
        Connection.from_uri(uri, conn_id="c")


@pytest.mark.parametrize(
    "uri", ["x://[::1/db", "x://u:pw-hide@[::1:5432/db", "x://h://[fe80::1/db", "x://[::1x]/db"]
)
def test_malformed_ipv6_host_is_a_format_error_without_the_value(uri):
    with pytest.raises(ConnectionFormatError) as info:
        Connection.from_uri(uri, conn_id="c")
    message = str(info.value)
    assert "'c'" in message and "pw-hide" not in message and "::1" not in message


def test_ipv6_host_parses():
    conn = Connection.from_uri("x://u:p@[::1]:5432/db", conn_id="c")
    assert (conn.host, conn.port, conn.schema) == ("::1", 5432, "db")


def test_host_with_protocol_round_trips_and_a_bad_protocol_is_refused():
    conn = Connection.from_uri("http://https://example.com:443/api", conn_id="c")
    assert (conn.conn_type, conn.host, conn.port, conn.schema) == ("http", "https://example.com", 443, "api")
    assert conn.get_uri() == "http://https://example.com:443/api"
    with pytest.raises(ConnectionFormatError, match="protocol before"):
        Connection.from_uri("http://u@s://example.com", conn_id="c")


@pytest.mark.parametrize(("port", "ok"), [(0, 0), (1, 1), (65535, 65535), ("80", 80), ("", None)])
def test_port_bounds_accepted(port, ok):
    assert Connection(conn_type="x", port=port).port == ok


@pytest.mark.parametrize("port", [65536, -1, "-1", "8o", 1.0, True, [1]])
def test_port_bounds_refused(port):
    with pytest.raises(ConnectionFormatError, match="field 'port'"):
        Connection(conn_id="c", conn_type="x", port=port)


def test_conn_type_normalisation_and_empty_password():
    assert Connection(conn_type="postgresql").conn_type == "postgres"
    assert Connection(conn_type="google-cloud-platform").conn_type == "google_cloud_platform"
    assert Connection(conn_type="mysql").conn_type == "mysql"
    assert Connection(conn_type="x", password="").password is None
    assert Connection(conn_type="x", login="").login == ""


def test_extra_forms():
    assert Connection(conn_type="x", extra={}).extra is None
    assert Connection(conn_type="x", extra="{}").extra is None
    assert Connection(conn_type="x", extra={"a": 1}).extra_dejson == {"a": 1}
    with pytest.raises(ConnectionFormatError, match="not JSON-serialisable"):
        Connection(conn_type="x", extra={"a": object()})
    with pytest.raises(ConnectionFormatError, match="must be a JSON object, got int"):
        Connection(conn_type="x", extra=5)


def test_secret_values_and_mask_sensitive_edges():
    conn = Connection(
        conn_type="x",
        password="pw-1",
        extra=json.dumps({"keys": {"api_key": ["k-1", "k-2"]}, "secret_flag": True, "token": "", "n": "x"}),
    )
    assert conn.secret_values() == ["pw-1", "k-1", "k-2"]
    assert Connection(conn_type="x").secret_values() == []
    assert mask_sensitive({"password": None, "token": "", "a": [{"secret": 1}]}) == {
        "password": None,
        "token": "",
        "a": [{"secret": "***"}],
    }
    assert mask_sensitive(("x", "y"), sensitive_parent=True) == ["***", "***"]


def test_variable_sensitivity_and_bad_json_message():
    assert Variable("db_password", "x").is_sensitive and not Variable("region", "x").is_sensitive
    with pytest.raises(ConfigError, match=r"variable 'v' is not valid JSON \(line 1 column 2\)"):
        Variable("v", "{nope").deserialize()


def test_validate_key_length_bound_and_types():
    validate_key("a" * 250)
    with pytest.raises(ConfigError, match="at most 250 characters"):
        validate_key("a" * 251)
    validate_key("a" * 10, max_length=10)
    with pytest.raises(ConfigError, match="at most 9"):
        validate_key("a" * 10, max_length=9)
    with pytest.raises(ConfigError, match="key must be a string, got int"):
        validate_key(5)


def test_sanitize_conn_id_length_bound():
    assert sanitize_conn_id("a" * 250) == "a" * 250
    assert sanitize_conn_id("a" * 251) is None
    assert sanitize_conn_id(5) is None


def test_from_value_strips_and_dispatches():
    assert Connection.from_value('  {"conn_type": "x", "host": "h"}  ', conn_id="c").host == "h"
    assert Connection.from_value("  x://h  ", conn_id="c").host == "h"


def test_from_dict_mixing_uri_and_fields_and_type_errors():
    with pytest.raises(ConnectionFormatError, match="mixes 'uri' with field"):
        Connection.from_dict({"uri": "x://h", "host": "h"}, conn_id="c")
    ok = Connection.from_dict({"uri": "x://h", "host": "", "port": 0, "description": "d"}, conn_id="c")
    assert (ok.host, ok.description) == ("h", "d")
    with pytest.raises(
        ConnectionFormatError, match="field 'host' for connection 'c' must be a string, got int"
    ):
        Connection.from_dict({"conn_type": "x", "host": 5}, conn_id="c")
    assert Connection.from_dict({"conn_type": "x", "conn_id": "inner"}).conn_id == "inner"


def test_error_messages_name_the_connection_and_cut_long_keys():
    with pytest.raises(ConfigError) as info:
        validate_key("k" * 300)
    assert str(info.value) == f"key {'k' * 40!r}... has to be at most 250 characters"
    with pytest.raises(ConnectionFormatError, match="field 'extra' of connection 'c' must be a JSON object"):
        Connection(conn_id="c", conn_type="x", extra=5)
    with pytest.raises(ConnectionFormatError, match=r"^field 'extra' must be a JSON object"):
        Connection(conn_type="x", extra=5)
    with pytest.raises(ConnectionFormatError, match="field 'port' of connection 'c'"):
        Connection(conn_id="c", conn_type="x", port=-1)
    with pytest.raises(ConnectionFormatError, match=r"^field 'port' must be"):
        Connection(conn_type="x", port=-1)


def test_extra_that_json_refuses_with_a_value_error_is_a_format_error():
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ConnectionFormatError, match="not JSON-serialisable: ValueError"):
        Connection(conn_type="x", extra=circular)


def test_a_bad_port_in_a_uri_keeps_urllibs_reason_but_not_the_value():
    with pytest.raises(ConnectionFormatError) as info:
        Connection.from_uri("x://u:pw@h:notaport/db", conn_id="c")
    message = str(info.value)
    assert (
        "field 'port' for connection 'c' is invalid in the URI: Port could not be cast to integer value"
        in (message)
    )
    assert "notaport" not in message and "pw" not in message


def test_json_errors_name_the_connection_only_when_known():
    with pytest.raises(ConnectionFormatError, match=r"^connection JSON must be a JSON object, got list"):
        Connection.from_json("[1]")
    with pytest.raises(
        ConnectionFormatError, match=r"^connection JSON for connection 'c' must be a JSON object"
    ):
        Connection.from_json("[1]", conn_id="c")


def test_a_host_that_is_a_path_survives_an_at_sign_in_the_password():
    conn = Connection.from_uri("postgres://u:p@ss@%2Fvar%2Frun%2Fpg:5432/db")
    assert (conn.host, conn.login, conn.port, conn.schema) == ("/var/run/pg", "u", 5432, "db")


def test_connection_and_variable_are_frozen_and_hashable():
    import dataclasses

    from credpath.model import Variable

    conn = Connection(conn_id="x", conn_type="http")
    with pytest.raises(dataclasses.FrozenInstanceError):
        conn.host = "h"  # type: ignore[misc]
    assert hash(conn) == hash(Connection(conn_id="x", conn_type="http"))
    var = Variable(key="k", value="v")
    with pytest.raises(dataclasses.FrozenInstanceError):
        var.value = "w"  # type: ignore[misc]


def test_repr_shows_a_password_mask_only_when_there_is_a_password():
    assert "password" not in repr(Connection(conn_id="x", conn_type="http"))
    assert ", password='***'" in repr(Connection(conn_id="x", conn_type="http", password="pw-s3cr3t"))


def test_url_error_reason_keeps_the_first_clause_only():
    from credpath.model import _url_error_reason

    assert _url_error_reason(ValueError("Port could not be cast to integer value as 'pw-s3cr3t'")) == (
        "Port could not be cast to integer value"
    )
    assert _url_error_reason(ValueError("Invalid IPv6 URL: [pw-s3cr3t")) == "Invalid IPv6 URL"
    assert _url_error_reason(ValueError("plain")) == "plain"


@pytest.mark.parametrize(
    ("kind", "key", "valid"),
    [
        ("connection", "aws_default", True),
        ("connection", "team#1:path/to.(x)!", True),  # Airflow's sanitize_conn_id characters
        ("connection", "", False),
        ("connection", "my conn", False),
        ("connection", "abc\n", False),  # sanitize_conn_id's `$` quirk would keep "abc": not the id asked
        ("connection", "x" * 250, True),
        ("connection", "x" * 251, False),
        ("connection", "semi;colon", False),
        ("variable", "feature.flags-1/x", True),
        ("variable", "", False),
        ("variable", "two words", False),
        ("variable", "bell\a", False),
        ("config", "sql_alchemy_conn", True),
        ("config", " ", False),
    ],
)
def test_lookup_keys_are_checked_at_the_edge(kind: str, key: str, valid: bool) -> None:
    from credpath.model import validate_lookup_key

    if valid:
        assert validate_lookup_key(kind, key) == key
    else:
        with pytest.raises(ConfigError, match=f"^{kind} (id|key)"):
            validate_lookup_key(kind, key)
