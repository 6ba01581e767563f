"""Airflow's local-filesystem formats (.env, .json, .yaml/.yml): parse and serialise. Pure, no state.

Parsing follows ``airflow.secrets.local_filesystem`` (3.3.2), which both the ``LocalFilesystemBackend`` and
``airflow connections/variables import`` use; serialising follows ``airflow connections export`` and
``airflow variables export`` byte for byte. Where Airflow is silently lossy credpath is strict (marked FIX):

- duplicate keys are an error in every format, not only in .env (Airflow keeps the last one in JSON/YAML);
- errors name the file and the 1-based line (Airflow's YAML line numbers are 0-based) and never quote file
  content: a line of a secrets file is a secret (PyYAML's messages embed a snippet, so only its
  ``problem`` text is kept);
- in .env a connection value may be a URI or JSON (Airflow accepts URIs only, so it cannot read back its own
  ``--serialization-format json`` export);
- YAML dates stay strings (``2024-01-01`` is a variable value, not a ``datetime.date``);
- variable values are always strings: non-string JSON/YAML values (null included) are JSON-encoded as
  ``airflow variables import`` stores them (``json.dumps(value, indent=2)``), and the export form
  ``{"value": ..., "description": ...}`` is unwrapped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from credpath.errors import ConfigError, MissingFile
from credpath.model import Connection, ConnectionFormatError, Variable

__all__ = [
    "FileFormat",
    "FileParseError",
    "ParsedFile",
    "SerializationFormat",
    "config_from_parsed",
    "connection_from_entry",
    "file_format",
    "normalize_format",
    "parse_config_file",
    "parse_connections_file",
    "parse_connections_text",
    "parse_file",
    "parse_variable_records",
    "parse_variables_file",
    "parse_variables_text",
    "serialize_connections",
    "serialize_variables",
    "single_entry",
    "variables_from_parsed",
]


FileFormat = Literal["env", "json", "yaml"]
SerializationFormat = Literal["uri", "json"]

#: File suffix (lower case, no dot) -> format.
SUFFIXES: dict[str, FileFormat] = {"env": "env", "json": "json", "yaml": "yaml", "yml": "yaml"}

# Airflow's airflow.utils.file.COMMENT_PATTERN, used with re.match.
_COMMENT = re.compile(r"\s*#.*")

_VARIABLE_WRAPPER_KEYS = frozenset({"value", "description"})


class FileParseError(ConfigError):
    """A secrets file is malformed. The message names the file and line, never the content."""


def _where(path: str | Path, line: int | None) -> str:
    return f"{path}, line {line}" if line else str(path)


def file_format(path: str | Path) -> FileFormat:
    """The format of a secrets file from its suffix, as Airflow decides it."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in SUFFIXES:
        raise ConfigError(
            f"{path}: unsupported file format {('.' + suffix) if suffix else '(no extension)'}; "
            "use one of .env .json .yaml .yml"
        )
    return SUFFIXES[suffix]


def normalize_format(fmt: str) -> FileFormat:
    """Accept ``env``/``.env``, ``json``, ``yaml``/``yml`` (any case)."""
    key = str(fmt).lstrip(".").lower()
    if key not in SUFFIXES:
        raise ConfigError(f"file format {fmt!r} is not supported; use one of env, json, yaml")
    return SUFFIXES[key]


# --- raw parsing: text -> {key: value} with the line of each key -------------------------------------


class ParsedFile:
    """The top-level mapping of a secrets file, with the line where each key is defined (when known)."""

    __slots__ = ("fmt", "lines", "source", "values")

    def __init__(self, source: str, fmt: FileFormat, values: dict[str, Any], lines: dict[str, int]) -> None:
        self.source = source
        self.fmt = fmt
        self.values = values
        self.lines = lines

    def where(self, key: str) -> str:
        return _where(self.source, self.lines.get(key))


def parse_text(text: str, fmt: str, source: str = "<string>") -> ParsedFile:
    """Parse the text of a secrets file into its top-level mapping; errors name ``source`` and the line."""
    fmt = normalize_format(fmt)
    if fmt == "env":
        return _parse_env(text, source)
    if not text:
        # Airflow: "The file is empty." for JSON and YAML (an empty .env is fine).
        raise FileParseError(f"{_where(source, 1)}: the file is empty")
    if fmt == "json":
        return _parse_json(text, source)
    return _parse_yaml(text, source)


def parse_file(path: str | Path) -> ParsedFile:
    fmt = file_format(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        # Also a FileNotFoundError, as Airflow raises here.
        raise MissingFile(f"{path}: file not found", filename=str(path)) from None
    except UnicodeDecodeError as exc:
        raise FileParseError(f"{path}: not valid UTF-8 (byte offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    return parse_text(text, fmt, str(path))


def _parse_env(text: str, source: str) -> ParsedFile:
    values: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line or _COMMENT.match(line):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise FileParseError(
                f"{_where(source, line_no)}: invalid line, expected KEY=VALUE (no '=' found)"
            )
        if not key:
            raise FileParseError(f"{_where(source, line_no)}: invalid line, the key before '=' is empty")
        if not value:
            raise FileParseError(f"{_where(source, line_no)}: invalid line, the value of {key!r} is empty")
        if key in values:
            raise FileParseError(
                f"{_where(source, line_no)}: duplicate key {key!r} (first defined on line {lines[key]})"
            )
        values[key] = value
        lines[key] = line_no
    return ParsedFile(source, "env", values, lines)


class _DuplicateJSONKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateJSONKey(key)
        result[key] = value
    return result


_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def _json_key_lines(text: str) -> dict[str, list[int]]:
    """Lines on which each ``"key":`` appears, in one pass over the text (line numbers for messages only)."""
    found: dict[str, list[int]] = {}
    line, pos = 1, 0
    for match in _JSON_KEY.finditer(text):
        line += text.count("\n", pos, match.start())
        pos = match.start()
        try:
            key = json.loads(f'"{match.group(1)}"')
        except ValueError:
            continue
        found.setdefault(key, []).append(line)
    return found


def _parse_json(text: str, source: str) -> ParsedFile:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise FileParseError(
            f"{_where(source, exc.lineno)}: invalid JSON: {exc.msg} (column {exc.colno})"
        ) from None
    except _DuplicateJSONKey as exc:
        found = _json_key_lines(text).get(exc.key, [])
        line = found[1] if len(found) > 1 else None
        first = f" (first defined on line {found[0]})" if len(found) > 1 else ""
        raise FileParseError(f"{_where(source, line)}: duplicate key {exc.key!r}{first}") from None
    if not isinstance(data, dict):
        raise FileParseError(
            f"{_where(source, 1)}: the file must contain a JSON object, got {type(data).__name__}"
        )
    # First occurrence of each top-level key (a nested key of the same name earlier in the file may win;
    # the line only decorates error messages).
    key_lines = _json_key_lines(text)
    lines = {key: key_lines[key][0] for key in data if key in key_lines}
    return ParsedFile(source, "json", data, lines)


_yaml_loader: type | None = None


def _loader_class() -> type:
    """A safe YAML loader that rejects duplicate keys and keeps dates as strings (built once, lazily)."""
    global _yaml_loader
    if _yaml_loader is not None:
        return _yaml_loader
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _StrictLoader(base):  # type: ignore[valid-type, misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # '<<' merges may legitimately repeat keys of the merged mapping
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable key: the base constructor reports it
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise FileParseError(
                        f"{_where(self._credpath_source, line)}: duplicate key {key!r} "
                        f"(first defined on line {first})"
                    )
                seen[key] = line
            mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
            return mapping

    # Without the timestamp resolver, 2024-01-01 stays the string it is meant to be.
    _StrictLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }
    _yaml_loader = _StrictLoader
    return _StrictLoader


def _parse_yaml(text: str, source: str) -> ParsedFile:
    import yaml

    loader = _loader_class()(text)
    loader._credpath_source = source
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        # exc.problem is a fixed phrase ("could not find expected ':'"); str(exc) would quote the file.
        raise FileParseError(
            f"{_where(source, line)}: invalid YAML: {exc.problem or 'syntax error'}"
        ) from None
    except yaml.YAMLError as exc:
        raise FileParseError(f"{source}: invalid YAML ({type(exc).__name__})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = "nothing" if data is None else type(data).__name__
        raise FileParseError(f"{_where(source, 1)}: the file must contain a mapping, got {kind}")
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
    values = {str(k): v for k, v in data.items()}
    return ParsedFile(source, "yaml", values, lines)


# --- connections ----------------------------------------------------------------------------------------


def connection_from_entry(conn_id: str, value: Any, where: str = "<string>") -> Connection:
    """One connection entry: a URI or JSON string, or an object (Airflow's ``_create_connection``)."""
    try:
        if isinstance(value, str):
            return Connection.from_value(value, conn_id=conn_id)
        if isinstance(value, dict):
            data = dict(value)
            if "extra_dejson" in data:
                if "extra" in data:
                    raise ConnectionFormatError(
                        f"connection {conn_id!r} sets both 'extra' and 'extra_dejson' (mutually exclusive)"
                    )
                data["extra"] = data.pop("extra_dejson")
            if "conn_id" in data:
                if data["conn_id"] != conn_id:
                    raise ConnectionFormatError(
                        f"connection {conn_id!r} has a mismatching 'conn_id' field {data['conn_id']!r}"
                    )
                del data["conn_id"]
            return Connection.from_dict(data, conn_id=conn_id)
    except ConfigError as exc:
        raise ConnectionFormatError(f"{where}: {exc}") from None
    raise ConnectionFormatError(
        f"{where}: connection {conn_id!r} must be a URI string or an object, got {type(value).__name__}"
    )


def single_entry(kind: str, key: str, value: Any, where: str) -> tuple[bool, Any]:
    """Airflow's one-element lists (``{"id": ["mysql://h"]}``): ``(present, value)``.

    A one-element list is its element; an empty list defines nothing (Airflow skips it); a longer list is
    refused, as Airflow refuses it (ConnectionNotUnique), naming the file, the line and the key.
    """
    if not isinstance(value, list):
        return True, value
    if len(value) > 1:
        raise ConnectionFormatError(
            f"{where}: {kind} {key!r} has {len(value)} values in a list; give exactly one"
        )
    return (True, value[0]) if value else (False, None)


def connections_from_parsed(parsed: ParsedFile) -> dict[str, Connection]:
    result: dict[str, Connection] = {}
    for key, value in parsed.values.items():
        present, value = single_entry("connection", key, value, parsed.where(key))
        if present:
            result[key] = connection_from_entry(key, value, parsed.where(key))
    return result


def parse_connections_text(text: str, fmt: str, source: str = "<string>") -> dict[str, Connection]:
    return connections_from_parsed(parse_text(text, fmt, source))


def parse_connections_file(path: str | Path) -> dict[str, Connection]:
    """``{conn_id: Connection}`` from an Airflow connections file (.env, .json, .yaml, .yml)."""
    return connections_from_parsed(parse_file(path))


# --- variables and config -----------------------------------------------------------------------------


def _as_string(value: Any) -> str:
    # airflow variables import: strings verbatim, anything else Variable.set(serialize_json=True), so a
    # JSON null is stored as the text "null" (and `variables export` writes it back as null).
    return value if isinstance(value, str) else json.dumps(value, indent=2)


def variable_from_entry(key: str, value: Any, where: str = "<string>") -> Variable:
    description = None
    if isinstance(value, dict) and "value" in value and set(value) <= _VARIABLE_WRAPPER_KEYS:
        # The form `airflow variables export` writes for described variables.
        description = value.get("description")
        if description is not None and not isinstance(description, str):
            raise ConfigError(f"{where}: the description of variable {key!r} must be a string")
        value = value["value"]
    try:
        text = _as_string(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: variable {key!r} has a value of type {type(value).__name__}") from None
    return Variable(key=key, value=text, description=description)


def variables_from_parsed(parsed: ParsedFile) -> dict[str, Variable]:
    return {key: variable_from_entry(key, value, parsed.where(key)) for key, value in parsed.values.items()}


def parse_variable_records(path: str | Path) -> dict[str, Variable]:
    """``{key: Variable}`` (with descriptions, when the file has the export form) from a variables file."""
    return variables_from_parsed(parse_file(path))


def parse_variables_text(text: str, fmt: str, source: str = "<string>") -> dict[str, str]:
    return {k: v.value for k, v in variables_from_parsed(parse_text(text, fmt, source)).items()}


def parse_variables_file(path: str | Path) -> dict[str, str]:
    """``{key: value}`` from an Airflow variables file (.env, .json, .yaml, .yml)."""
    return {k: v.value for k, v in parse_variable_records(path).items()}


def config_from_parsed(parsed: ParsedFile) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in parsed.values.items():
        if isinstance(value, list):
            # Airflow's load_configs_dict: a list must hold exactly one value, which is the value.
            if len(value) != 1:
                raise ConfigError(
                    f"{parsed.where(key)}: config key {key!r} has {len(value)} values in a list; "
                    "give exactly one"
                )
            value = value[0]
        try:
            result[key] = _as_string(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{parsed.where(key)}: config key {key!r} has a value of type {type(value).__name__}"
            ) from None
    return result


def parse_config_file(path: str | Path) -> dict[str, str]:
    """``{key: value}`` from a config file (credpath's addition to Airflow's file backend)."""
    return config_from_parsed(parse_file(path))


# --- serialisation --------------------------------------------------------------------------------------


def _yaml_dump(data: Any) -> str:
    # airflow.utils.yaml.dump: yaml.dump with the (C) SafeDumper and PyYAML's defaults (keys sorted).
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper)


def _airflow_connection_dict(conn: Connection) -> dict[str, Any]:
    # airflow.cli.commands.connection_command._connection_to_dict: this key order, extra as stored text.
    return {
        "conn_type": conn.conn_type,
        "description": conn.description,
        "login": conn.login,
        "password": conn.password,
        "host": conn.host,
        "port": conn.port,
        "schema": conn.schema,
        "extra": conn.extra,
    }


def _env_key(kind: str, key: str) -> str:
    if not key or "=" in key or "\n" in key or "\r" in key or _COMMENT.match(key):
        raise ConfigError(
            f"{kind} id {key!r} cannot be written to a .env file (empty, '=', '#' or a newline)"
        )
    return key


def serialize_connections(
    conns: Iterable[Connection] | Mapping[str, Connection],
    fmt: str,
    serialization_format: str = "uri",
) -> str:
    """What ``airflow connections export --file-format FMT [--serialization-format uri|json]`` writes.

    Connections are sorted by conn_id (Airflow exports ``ORDER BY conn_id``). ``serialization_format``
    only applies to .env, as in Airflow.
    """
    fmt = normalize_format(fmt)
    if serialization_format not in ("uri", "json"):
        raise ConfigError(f"serialization format {serialization_format!r} is not supported; use uri or json")
    if isinstance(conns, Mapping):
        items = [conn.with_id(conn_id) for conn_id, conn in conns.items()]
    else:
        items = list(conns)
    for conn in items:
        if not conn.conn_id:
            raise ConfigError("a connection without conn_id cannot be exported")
    items.sort(key=lambda c: c.conn_id or "")
    if fmt == "env":
        lines = []
        for conn in items:
            value = (
                conn.get_uri()
                if serialization_format == "uri"
                else json.dumps(_airflow_connection_dict(conn))
            )
            lines.append(f"{_env_key('connection', conn.conn_id or '')}={value}\n")
        return "".join(lines)
    data = {conn.conn_id: _airflow_connection_dict(conn) for conn in items}
    if fmt == "yaml":
        return _yaml_dump(data)
    return json.dumps(data, indent=2)


def _export_value(value: str, description: str | None) -> Any:
    # airflow variables export: decode JSON unless it decodes to a string; wrap when described (or when
    # the value itself looks like the wrapper, so import does not unwrap it).
    try:
        decoded: Any = json.JSONDecoder().decode(value)
    except ValueError:
        decoded = value
    if isinstance(decoded, str):
        decoded = value
    if description or (isinstance(decoded, dict) and "value" in decoded):
        return {"value": decoded, "description": description}
    return decoded


def serialize_variables(variables: Mapping[str, str | Variable] | Iterable[Variable], fmt: str) -> str:
    """What ``airflow variables export`` writes (JSON); YAML uses the same structure, .env writes KEY=VALUE.

    .env cannot hold descriptions (dropped), empty values or values with line breaks (a ConfigError naming
    the key, never the value).
    """
    fmt = normalize_format(fmt)
    records: list[Variable] = []
    if isinstance(variables, Mapping):
        for key, item in variables.items():
            records.append(item if isinstance(item, Variable) else Variable(key=key, value=item))
    else:
        records = list(variables)
    for record in records:
        if not isinstance(record.value, str):
            raise ConfigError(
                f"variable {record.key!r} must have a string value, got {type(record.value).__name__}"
            )
    records.sort(key=lambda v: v.key)
    if fmt == "env":
        out = []
        for record in records:
            if not record.value or "\n" in record.value or "\r" in record.value:
                raise ConfigError(
                    f"variable {record.key!r} cannot be written to a .env file: "
                    "its value is empty or spans lines; "
                    "use json or yaml"
                )
            out.append(f"{_env_key('variable', record.key)}={record.value}\n")
        return "".join(out)
    data = {record.key: _export_value(record.value, record.description) for record in records}
    if fmt == "yaml":
        return _yaml_dump(data)
    return json.dumps(data, sort_keys=True, indent=4)
