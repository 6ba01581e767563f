"""Airflow's file formats: parsing as ``LocalFilesystemBackend`` does, writing as ``airflow ... export`` does.

Expected outputs marked "recorded" were produced by apache-airflow 3.3.2 itself (``_format_connections``,
``airflow variables export``, ``airflow variables import``, ``load_connections_dict``) on 2026-11-23.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credpath import _formats as formats
from credpath.errors import ConfigError
from credpath.model import Connection, Variable
from tests.conftest import assert_no_secret

PW = "pw-s3cr3t-1"
TOK = "tok/s3cr3t?&="

EXPORT_CONNS = [
    Connection(
        conn_id="pg_main",
        conn_type="postgres",
        description="main db",
        host="db.example.com",
        login="user",
        password=PW,
        schema="analytics",
        port=5432,
        extra=json.dumps({"sslmode": "require", "connect_timeout": "10"}),
    ),
    Connection(
        conn_id="a_http",
        conn_type="http",
        host="https://api.example.com",
        password=TOK,
        extra=json.dumps({"headers": {"X": 1}, "verify": False}),
    ),
    Connection(conn_id="bare", conn_type="aws"),
]

_JSON_EXPORT = (
    '{\n  "a_http": {\n    "conn_type": "http",\n    "description": null,\n    "login": null,\n'
    '    "password": "tok/s3cr3t?&=",\n    "host": "https://api.example.com",\n    "port": null,\n'
    '    "schema": null,\n    "extra": "{\\"headers\\": {\\"X\\": 1}, \\"verify\\": false}"\n  },\n'
    '  "bare": {\n    "conn_type": "aws",\n    "description": null,\n    "login": null,\n'
    '    "password": null,\n'
    '    "host": null,\n    "port": null,\n    "schema": null,\n    "extra": null\n  },\n'
    '  "pg_main": {\n    "conn_type": "postgres",\n    "description": "main db",\n    "login": "user",\n'
    '    "password": "pw-s3cr3t-1",\n    "host": "db.example.com",\n    "port": 5432,\n'
    '    "schema": "analytics",\n'
    '    "extra": "{\\"sslmode\\": \\"require\\", \\"connect_timeout\\": \\"10\\"}"\n  }\n}'
)
_YAML_EXPORT = (
    "a_http:\n  conn_type: http\n  description: null\n"
    '  extra: \'{"headers": {"X": 1}, "verify": false}\'\n  host: https://api.example.com\n'
    "  login: null\n  password: tok/s3cr3t?&=\n  port: null\n  schema: null\n"
    "bare:\n  conn_type: aws\n  description: null\n  extra: null\n  host: null\n  login: null\n"
    "  password: null\n  port: null\n  schema: null\n"
    "pg_main:\n  conn_type: postgres\n  description: main db\n"
    '  extra: \'{"sslmode": "require", "connect_timeout": "10"}\'\n  host: db.example.com\n'
    "  login: user\n  password: pw-s3cr3t-1\n  port: 5432\n  schema: analytics\n"
)
_ENV_JSON_EXPORT = (
    'a_http={"conn_type": "http", "description": null, "login": null, "password": "tok/s3cr3t?&=", '
    '"host": "https://api.example.com", "port": null, "schema": null, '
    '"extra": "{\\"headers\\": {\\"X\\": 1}, \\"verify\\": false}"}\n'
    'bare={"conn_type": "aws", "description": null, "login": null, "password": null, "host": null, '
    '"port": null, "schema": null, "extra": null}\n'
    'pg_main={"conn_type": "postgres", "description": "main db", "login": "user", "password": "pw-s3cr3t-1", '
    '"host": "db.example.com", "port": 5432, "schema": "analytics", '
    '"extra": "{\\"sslmode\\": \\"require\\", \\"connect_timeout\\": \\"10\\"}"}\n'
)
_ENV_URI_EXPORT = (
    "a_http=http://https://:tok%2Fs3cr3t%3F%26%3D@api.example.com/"
    "?__extra__=%7B%22headers%22%3A+%7B%22X%22%3A+1%7D%2C+%22verify%22%3A+false%7D\n"
    "bare=aws://\n"
    "pg_main=postgres://user:pw-s3cr3t-1@db.example.com:5432/analytics?sslmode=require&connect_timeout=10\n"
)

# Airflow writes ?connect_timeout=10 for the *string* "10", which its own parser reads back as the int 10.
# credpath writes __extra__ for such values so that the export parses back to exactly the same extra.
_ENV_URI_EXPORT_LOSSLESS = _ENV_URI_EXPORT.replace(
    "?sslmode=require&connect_timeout=10",
    "?__extra__=%7B%22sslmode%22%3A+%22require%22%2C+%22connect_timeout%22%3A+%2210%22%7D",
)


@pytest.mark.parametrize(
    ("fmt", "serialization", "expected"),
    [
        ("json", "uri", _JSON_EXPORT),
        ("json", "json", _JSON_EXPORT),
        ("yaml", "uri", _YAML_EXPORT),
        ("yaml", "json", _YAML_EXPORT),
        ("env", "json", _ENV_JSON_EXPORT),
        ("env", "uri", _ENV_URI_EXPORT_LOSSLESS),
    ],
)
def test_connections_export_matches_airflow(fmt: str, serialization: str, expected: str) -> None:
    # Input order is irrelevant: Airflow exports ORDER BY conn_id.
    assert formats.serialize_connections(list(reversed(EXPORT_CONNS)), fmt, serialization) == expected
    assert (
        formats.serialize_connections({c.conn_id: c for c in EXPORT_CONNS}, "." + fmt, serialization)
        == expected
    )


@pytest.mark.parametrize(
    ("fmt", "serialization"), [("json", "uri"), ("yaml", "uri"), ("env", "json"), ("env", "uri")]
)
def test_connections_export_parses_back(fmt: str, serialization: str) -> None:
    text = formats.serialize_connections(EXPORT_CONNS, fmt, serialization)
    parsed = formats.parse_connections_text(text, fmt)
    for conn in EXPORT_CONNS:
        expected = conn
        if (fmt, serialization) == ("env", "uri"):
            expected = Connection(**{**conn.to_dict(), "description": None})  # a URI has no description
        got = parsed[conn.conn_id]
        # A URI cannot tell "" from None for login/schema (Airflow's neither); extra round-trips exactly.
        uri = (fmt, serialization) == ("env", "uri")
        assert _fields(got, uri) == _fields(expected, uri)
        assert got.extra_dejson == conn.extra_dejson


def _fields(conn: Connection, lossy_extra: bool = False) -> dict[str, object]:
    data = conn.to_dict()
    if lossy_extra:
        data["extra"] = {
            k: json.loads(v) if isinstance(v, str) and v.isdigit() else v
            for k, v in conn.extra_dejson.items()
        }
    else:
        data["extra"] = json.loads(conn.extra) if conn.extra else None
    return {k: (None if v == "" else v) for k, v in data.items()}


# --- parsing, compared with Airflow's load_connections_dict (recorded) -----------------------------------

_YAML_CONNS = """\
# comment
pg_main:
  conn_type: postgres
  host: db.example.com
  login: etl
  password: pw-s3cr3t-1
  port: 5432
  schema: analytics
  description: main warehouse
  extra:
    sslmode: require
    connect_timeout: 10
uri_one: "mysql://u:p%40ss@h:3306/db?charset=utf8"
with_dejson:
  conn_type: http
  host: https://api.example.com
  extra_dejson:
    headers: {"X": "1"}
"""
_JSON_CONNS = """\
{
  "pg_main": {"conn_type": "postgres", "host": "h", "port": "5432", "extra": "{\\"a\\": \\"1\\"}"},
  "uri_one": "aws://?region_name=eu-west-1",
  "with_id": {"conn_id": "with_id", "conn_type": "sftp", "login": "x"}
}
"""
_ENV_CONNS = "pg_env=postgres://u:pw@h:5432/db\n  # indented comment\nhttp_env=http://https://api.example.com/?timeout=5\n"

# (conn_type, description, host, login, password, schema, port, extra) as Airflow 3.3.2 parsed them.
_AIRFLOW_PARSED = {
    "yaml": {
        "pg_main": (
            "postgres",
            "main warehouse",
            "db.example.com",
            "etl",
            PW,
            "analytics",
            5432,
            '{"sslmode": "require", "connect_timeout": 10}',
        ),
        "uri_one": ("mysql", None, "h", "u", "p@ss", "db", 3306, '{"charset": "utf8"}'),
        "with_dejson": (
            "http",
            None,
            "https://api.example.com",
            None,
            None,
            None,
            None,
            '{"headers": {"X": "1"}}',
        ),
    },
    "json": {
        # Airflow keeps the port string "5432"; credpath validates it into an int.
        "pg_main": ("postgres", None, "h", None, None, None, 5432, '{"a": "1"}'),
        "uri_one": ("aws", None, "", None, None, "", None, '{"region_name": "eu-west-1"}'),
        "with_id": ("sftp", None, None, "x", None, None, None, None),
    },
    "env": {
        "pg_env": ("postgres", None, "h", "u", "pw", "db", 5432, None),
        "http_env": ("http", None, "https://api.example.com", None, None, "", None, '{"timeout": 5}'),
    },
}


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("yaml", _YAML_CONNS),
        ("json", _JSON_CONNS),
        ("env", _ENV_CONNS),
    ],
)
def test_parse_connections_like_airflow(tmp_path: Path, fmt: str, text: str) -> None:
    path = tmp_path / f"conns.{fmt}"
    path.write_text(text)
    parsed = formats.parse_connections_file(path)
    assert list(parsed) == list(_AIRFLOW_PARSED[fmt])
    for conn_id, expected in _AIRFLOW_PARSED[fmt].items():
        conn = parsed[conn_id]
        assert conn.conn_id == conn_id
        got = (conn.conn_type, conn.description, conn.host, conn.login, conn.password, conn.schema, conn.port)
        assert got == expected[:7]
        # The stored extra text, as Airflow keeps it (extra_dejson is a plain json.loads in Airflow).
        assert (json.loads(conn.extra) if conn.extra else None) == (
            json.loads(expected[7]) if expected[7] else None
        )


def test_env_connection_may_be_json(tmp_path: Path) -> None:
    path = tmp_path / "c.env"
    path.write_text('j={"conn_type": "http", "host": "h", "description": "d"}\nu=http://h2\n')
    parsed = formats.parse_connections_file(path)
    assert parsed["j"] == Connection(conn_id="j", conn_type="http", host="h", description="d")
    assert parsed["u"].host == "h2"


# --- variables ----------------------------------------------------------------------------------------------

# `airflow variables export` output for these variables (recorded).
_VARS = [
    Variable("plain", "hello world"),
    Variable("num", "42"),
    Variable("obj", '{"a": [1, 2], "b": "x"}'),
    Variable("described", "v1", description="the first"),
    Variable("quoted", '"a string in quotes"'),
    Variable("wrapperlike", '{"value": 1, "other": 2}'),
]
_VARS_EXPORT = (
    '{\n    "described": {\n        "description": "the first",\n        "value": "v1"\n    },\n'
    '    "num": 42,\n    "obj": {\n        "a": [\n            1,\n            2\n        ],\n'
    '        "b": "x"\n    },\n'
    '    "plain": "hello world",\n    "quoted": "\\"a string in quotes\\"",\n'
    '    "wrapperlike": {\n        "description": null,\n        "value": {\n            "other": 2,\n'
    '            "value": 1\n        }\n    }\n}'
)


def test_variables_export_matches_airflow() -> None:
    assert formats.serialize_variables(_VARS, "json") == _VARS_EXPORT
    assert formats.serialize_variables({v.key: v for v in _VARS}, ".json") == _VARS_EXPORT


def test_variables_import_matches_airflow(tmp_path: Path) -> None:
    path = tmp_path / "imp.yaml"
    path.write_text(
        "y_str: hello\ny_int: 5\ny_obj:\n  k: [1, 2]\n"
        'y_wrapped:\n  value: {"z": 1}\n  description: wrapped one\n'
    )
    # What `airflow variables import` stored (recorded via `airflow variables list --show-values`).
    assert formats.parse_variables_file(path) == {
        "y_str": "hello",
        "y_int": "5",
        "y_obj": '{\n  "k": [\n    1,\n    2\n  ]\n}',
        "y_wrapped": '{\n  "z": 1\n}',
    }
    assert formats.parse_variable_records(path)["y_wrapped"].description == "wrapped one"


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_variables_export_import_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"vars.{fmt}"
    path.write_text(formats.serialize_variables(_VARS, fmt))
    records = formats.parse_variable_records(path)
    assert records["described"].description == "the first"
    for var in _VARS:
        got = records[var.key].value
        # Airflow's import re-serialises JSON values with indent=2: compare what they mean.
        try:
            assert json.loads(got) == json.loads(var.value)
        except json.JSONDecodeError:
            assert got == var.value


def test_variables_env_round_trip_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "v.env"
    path.write_text(formats.serialize_variables({"b": "2", "a": "x=y # not a comment"}, "env"))
    assert path.read_text() == "a=x=y # not a comment\nb=2\n"
    assert formats.parse_variables_file(path) == {"a": "x=y # not a comment", "b": "2"}
    with pytest.raises(ConfigError, match=r"variable 'multi' cannot be written to a \.env file") as info:
        formats.serialize_variables({"multi": "line1-s3cr3t\nline2"}, "env")
    assert_no_secret(str(info.value))
    with pytest.raises(ConfigError, match=r"cannot be written to a \.env file"):
        formats.serialize_variables({"k=v": "x"}, "env")


def test_yaml_keeps_dates_and_types_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "v.yml"
    path.write_text("day: 2024-01-01\nflag: true\nratio: 0.5\nlist: [a, b]\n")
    assert formats.parse_variables_file(path) == {
        "day": "2024-01-01",
        "flag": "true",
        "ratio": "0.5",
        "list": '[\n  "a",\n  "b"\n]',
    }


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
        max_size=6,
    ),
    st.sampled_from(["json", "yaml"]),
)
def test_variables_round_trip_property(variables: dict[str, str], fmt: str) -> None:
    text = formats.serialize_variables(variables, fmt)
    if not variables and fmt == "yaml":
        text = "{}\n"
    parsed = formats.parse_variables_text(text, fmt)
    assert set(parsed) == set(variables)
    for key, value in variables.items():
        try:
            original = json.loads(value)
        except ValueError:
            assert parsed[key] == value
            continue
        if isinstance(original, str):
            assert parsed[key] == value
        else:  # compared as JSON text: NaN != NaN
            assert json.dumps(json.loads(parsed[key]), sort_keys=True) == json.dumps(original, sort_keys=True)


# --- errors: file and line, never content ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("a.env", "GOOD=1\nno-equals-s3cr3t\n", r"a\.env, line 2: invalid line, expected KEY=VALUE"),
        ("a.env", "=pw-s3cr3t\n", r"a\.env, line 1: invalid line, the key before '=' is empty"),
        ("a.env", "\nK=\n", r"a\.env, line 2: invalid line, the value of 'K' is empty"),
        (
            "a.env",
            "K=1-s3cr3t\n#c\nK=2-s3cr3t\n",
            r"a\.env, line 3: duplicate key 'K' \(first defined on line 1\)",
        ),
        (
            "a.json",
            '{\n  "a": "x-s3cr3t",\n  "b" "y"\n}',
            r"a\.json, line 3: invalid JSON: Expecting ':' delimiter",
        ),
        (
            "a.json",
            '{\n "k": "1-s3cr3t",\n "k": "2"\n}',
            r"a\.json, line 3: duplicate key 'k' \(first defined on line 2\)",
        ),
        ("a.json", '["s3cr3t"]', r"a\.json, line 1: the file must contain a JSON object, got list"),
        ("a.json", "", r"a\.json, line 1: the file is empty"),
        ("a.yaml", "a: 1\nb: [pw-s3cr3t\nc: 2\n", r"a\.yaml, line \d+: invalid YAML: "),
        (
            "a.yaml",
            "a: x-s3cr3t\nb:\n  k: 1\n  k: 2\n",
            r"a\.yaml, line 4: duplicate key 'k' \(first defined on line 3\)",
        ),
        ("a.yaml", "- x-s3cr3t\n", r"a\.yaml, line 1: the file must contain a mapping, got list"),
        ("a.yml", "", r"a\.yml, line 1: the file is empty"),
    ],
    ids=[
        "env-no-equals",
        "env-empty-key",
        "env-empty-value",
        "env-duplicate",
        "json-syntax",
        "json-duplicate",
        "json-not-object",
        "json-empty",
        "yaml-syntax",
        "yaml-duplicate",
        "yaml-not-mapping",
        "yaml-empty",
    ],
)
def test_syntax_errors_name_file_and_line(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    for parse in (formats.parse_variables_file, formats.parse_connections_file, formats.parse_config_file):
        with pytest.raises(ConfigError, match=pattern) as info:
            parse(path)
        assert str(path) in str(info.value)
        assert_no_secret(str(info.value))
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            '{"c": "postgres://u:pw-s3cr3t@h:notaport/db"}',
            r"c\.json, line 1: field 'port' of connection 'c'|port",
        ),
        (
            '{\n"c": {"conn_type": "http", "conn_id": "other"}}',
            r"c\.json, line 2: connection 'c' has a mismatching",
        ),
        ('{"c": {"conn_type": "http", "extra": {}, "extra_dejson": {}}}', r"'extra' and 'extra_dejson'"),
        ('{"c": {"conn_type": "http", "colour": "red"}}', r"unknown field\(s\): colour"),
        ('{"c": 5}', r"connection 'c' must be a URI string or an object, got int"),
        (
            '{\n"ok": ["http://h"],\n"c": ["http://a", "http://b-s3cr3t"]}',
            r"c\.json, line 3: connection 'c' has 2 values in a list; give exactly one",
        ),
        ('{"c": [5]}', r"connection 'c' must be a URI string or an object, got int"),
    ],
    ids=["bad-port", "id-mismatch", "extra-twice", "unknown-key", "wrong-type", "list-of-two", "list-of-int"],
)
def test_bad_connection_entries(tmp_path: Path, text: str, pattern: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        formats.parse_connections_file(path)
    assert str(path) in str(info.value)
    assert_no_secret(str(info.value))


def test_unsupported_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"unsupported file format \.txt; use one of \.env \.json \.yaml \.yml"
    ):
        formats.parse_variables_file(tmp_path / "v.txt")
    with pytest.raises(ConfigError, match="file not found"):
        formats.parse_variables_file(tmp_path / "missing.json")
    # Also what Airflow raises there (FileNotFoundError, an OSError), for callers that catch those.
    with pytest.raises(FileNotFoundError) as info:
        formats.parse_connections_file(tmp_path / "missing.yaml")
    assert isinstance(info.value, ConfigError)
    assert info.value.filename == str(tmp_path / "missing.yaml")
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: file not found"
    with pytest.raises(ConfigError, match="file format 'xml' is not supported"):
        formats.serialize_variables({}, "xml")
    with pytest.raises(ConfigError, match="serialization format 'xml'"):
        formats.serialize_connections([], "env", "xml")


def test_comments_blank_lines_and_airflow_env_quirks(tmp_path: Path) -> None:
    path = tmp_path / "v.env"
    # Airflow does not strip keys, values or quotes in .env; credpath reads them the same way.
    path.write_text("# top\n\n   # indented\nA=1\nB = 2\nC='3'\nD=a=b\n")
    assert formats.parse_variables_file(path) == {"A": "1", "B ": " 2", "C": "'3'", "D": "a=b"}


def test_connection_without_conn_type_in_a_file_is_read_as_airflow(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"c": {"host": "h", "login": "u", "password": "pw-s3cr3t"}}')
    conn = formats.parse_connections_file(path)["c"]
    assert (conn.conn_id, conn.conn_type, conn.host, conn.login) == ("c", None, "h", "u")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.json", '{"uri_form": ["mysql://host_1"], "obj_form": [{"uri": "mysql://host_2"}], "none": []}'),
        ("c.yaml", "uri_form:\n  - mysql://host_1\nobj_form:\n  - uri: mysql://host_2\nnone: []\n"),
    ],
)
def test_one_element_lists_are_read_as_airflow(tmp_path: Path, name: str, text: str) -> None:
    # airflow.secrets.local_filesystem.load_connections_dict: a list of one is its element; an empty list
    # defines no connection; a longer list is ConnectionNotUnique.
    path = tmp_path / name
    path.write_text(text)
    conns = formats.parse_connections_file(path)
    assert sorted(conns) == ["obj_form", "uri_form"]
    assert (conns["uri_form"].conn_type, conns["uri_form"].host) == ("mysql", "host_1")
    assert (conns["obj_form"].conn_id, conns["obj_form"].host) == ("obj_form", "host_2")


def test_config_lists_of_one_are_unwrapped_as_airflow(tmp_path: Path) -> None:
    # airflow.secrets.local_filesystem.load_configs_dict: values[0] of a one-element list; other lengths
    # are VariableNotUnique.
    path = tmp_path / "cfg.json"
    path.write_text('{"a": ["x"], "b": "y"}')
    assert formats.parse_config_file(path) == {"a": "x", "b": "y"}
    path.write_text('{"a": "x",\n"b": ["y", "z"]}')
    with pytest.raises(ConfigError, match=r"cfg\.json, line 2: config key 'b' has 2 values in a list"):
        formats.parse_config_file(path)
