"""Pure data model: connections and variables, Airflow 3.3's URI and JSON grammar. No I/O here.

Parsing follows ``airflow.models.Connection`` (the core model behind ``airflow connections get``) so that
every value an Airflow deployment stores reads back with the same fields. Where Airflow silently accepts
bad data (ports out of range, float ports) credpath raises a ``ValueError`` naming the field. Error
messages never quote the value: a connection URI carries the password.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

from credpath.errors import ConfigError

__all__ = [
    "CONNECTION_FIELDS",
    "SENSITIVE_NAMES",
    "Connection",
    "ConnectionFormatError",
    "Variable",
    "is_sensitive_name",
    "json_object",
    "mask_sensitive",
    "sanitize_conn_id",
    "validate_key",
    "validate_lookup_key",
]


EXTRA_KEY = "__extra__"

# Airflow's default sensitive field names, matched case-insensitively as substrings.
SENSITIVE_NAMES: frozenset[str] = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "authorization",
        "passphrase",
        "passwd",
        "password",
        "private_key",
        "proxies",
        "secret",
        "token",
        "keyfile_dict",
        "service_account",
    }
)

CONNECTION_FIELDS = ("conn_type", "host", "login", "password", "schema", "port", "extra")
_JSON_KEYS = frozenset({*CONNECTION_FIELDS, "description", "conn_id", "uri"})


class ConnectionFormatError(ConfigError):
    """A connection value (URI or JSON) is malformed; the message names the field, never the value."""


# airflow.models.connection (3.3.2): the characters a conn_id may hold, and its length bound.
RE_SANITIZE_CONN_ID = re.compile(r"^[\w#!()\-.:/\\]{1,}$")
CONN_ID_MAX_LEN = 250
# airflow.utils.helpers.KEY_REGEX: what `airflow connections add/import` accept as an id.
KEY_REGEX = re.compile(r"^[\w.-]+$")


def sanitize_conn_id(conn_id: str | None, max_length: int = CONN_ID_MAX_LEN) -> str | None:
    """Airflow's ``sanitize_conn_id``: the id if it is made of allowed characters, else ``None``.

    Airflow applies it in ``Connection.__init__`` (so to every connection a backend returns): an id that
    does not match leaves the connection without a conn_id. Same pattern and ``re.match`` as Airflow, so
    its quirks carry over (``$`` also matches before a final newline: ``"abc\\n"`` becomes ``"abc"``).
    """
    if not isinstance(conn_id, str) or len(conn_id) > max_length:
        return None
    match = RE_SANITIZE_CONN_ID.match(conn_id)
    return match.group(0) if match else None


def _airflow_bool(value: str | None) -> bool:
    # airflow.configuration.getboolean: t/true/1 and f/false/0 (any case); anything else is unset here.
    return (value or "").strip().lower() in ("t", "true", "1")


def validate_key(key: str, max_length: int = 250, what: str = "key") -> None:
    """Airflow's ``helpers.validate_key`` (``airflow connections add`` and ``import`` call it with 200).

    Raises ConfigError naming the key (an id is not a secret). ``..`` is refused unless
    ``AIRFLOW__CORE__ALLOW_DOUBLE_DOT_IN_IDS`` is true, as in Airflow.
    """
    if not isinstance(key, str):
        raise ConfigError(f"{what} must be a string, got {type(key).__name__}")
    if len(key) > max_length:
        raise ConfigError(f"{what} {key[:40]!r}... has to be at most {max_length} characters")
    if not KEY_REGEX.match(key):
        raise ConfigError(
            f"{what} {key!r} has to be made of alphanumeric characters, dashes, dots and underscores "
            "exclusively"
        )
    if ".." in key and not _airflow_bool(os.environ.get("AIRFLOW__CORE__ALLOW_DOUBLE_DOT_IN_IDS")):
        raise ConfigError(f"{what} {key!r} must not contain consecutive dots ('..')")


#: Airflow's ID_LEN: the longest variable key its metastore holds.
KEY_MAX_LEN = 250
_LOOKUP_WHAT = {"connection": "connection id", "variable": "variable key", "config": "config key"}


def validate_lookup_key(kind: str, key: object) -> str:
    """``key`` if it can name a ``kind`` at all, else a ConfigError naming it: bad input, not a miss.

    A connection id must be what Airflow's ``Connection`` keeps (``sanitize_conn_id``: letters, digits and
    ``_#!()-.:/\\``, at most 250): Airflow drops any other id, so no store can answer it. Variable and
    config keys must be non-empty, at most 250 characters, without whitespace or control characters
    (Airflow validates no read key; these can name nothing in any store credpath reads).
    """
    what = _LOOKUP_WHAT.get(kind, "key")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{what} must be a non-empty string")
    if kind == "connection":
        if sanitize_conn_id(key) != key:
            raise ConfigError(
                f"{what} {key[:60]!r} is invalid: Airflow allows letters, digits and _#!()-.:/\\ only, "
                f"at most {CONN_ID_MAX_LEN} characters"
            )
    elif len(key) > KEY_MAX_LEN or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(
            f"{what} {key[:60]!r} is invalid: no spaces or control characters, "
            f"at most {KEY_MAX_LEN} characters"
        )
    return key


def is_sensitive_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in SENSITIVE_NAMES)


def normalize_conn_type(conn_type: str) -> str:
    """Airflow's normalisation: ``postgresql`` -> ``postgres``, dashes -> underscores."""
    if conn_type == "postgresql":
        return "postgres"
    if "-" in conn_type:
        return conn_type.replace("-", "_")
    return conn_type


def json_object(text: str, what: str) -> dict[str, Any]:
    """Parse JSON that must be an object; errors name ``what`` and the position, never the text."""
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConnectionFormatError(
            f"{what} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(parsed, dict):
        raise ConnectionFormatError(f"{what} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _validate_port(port: Any, conn_id: str | None) -> int | None:
    where = f" of connection {conn_id!r}" if conn_id else ""
    if port is None or port == "":
        return None
    if isinstance(port, bool) or isinstance(port, float):
        raise ConnectionFormatError(
            f"field 'port'{where} must be an integer 0-65535, got a {type(port).__name__}"
        )
    if isinstance(port, str):
        if not port.strip().isdigit():
            raise ConnectionFormatError(
                f"field 'port'{where} must be an integer 0-65535, got a non-numeric string"
            )
        port = int(port)
    if not isinstance(port, int):
        raise ConnectionFormatError(
            f"field 'port'{where} must be an integer 0-65535, got {type(port).__name__}"
        )
    if not 0 <= port <= 65535:
        raise ConnectionFormatError(f"field 'port'{where} must be an integer 0-65535, got {port}")
    return port


def _validate_extra(extra: Any, conn_id: str | None) -> str | None:
    """Return extra as JSON text of an object (Airflow stores it as text), or None."""
    if extra is None or extra == "" or extra == {}:
        return None
    where = f" of connection {conn_id!r}" if conn_id else ""
    if isinstance(extra, dict):
        try:
            return json.dumps(extra)
        except (TypeError, ValueError) as exc:
            raise ConnectionFormatError(
                f"field 'extra'{where} is not JSON-serialisable: {type(exc).__name__}"
            ) from None
    if not isinstance(extra, str):
        raise ConnectionFormatError(f"field 'extra'{where} must be a JSON object, got {type(extra).__name__}")
    parsed = json_object(extra, f"field 'extra'{where}")
    return extra if parsed else None


def _decode_query_value(value: str) -> Any:
    # Airflow 3.3's URI parser JSON-decodes each non-empty query value ("10" -> 10, "true" -> True).
    if value:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    return value


def _survives_query_form(value: Any) -> bool:
    """True if ``value`` comes back unchanged through ``?key=value`` and the decoding parser."""
    return isinstance(value, str) and _decode_query_value(value) == value


def _hostname_from_netloc(parts: SplitResult) -> str:
    hostname = unquote(parts.hostname or "")
    if "/" in hostname:
        # urlsplit lower-cases hostnames; a host that is a path keeps its case (Airflow does the same).
        hostname = parts.netloc
        if "@" in hostname:
            hostname = hostname.rsplit("@", 1)[1]
        if ":" in hostname:
            hostname = hostname.split(":", 1)[0]
        hostname = unquote(hostname)
    return hostname


@dataclass(frozen=True, eq=True)
class Connection:
    """An Airflow-compatible connection. Immutable, so cached instances can be shared safely."""

    conn_id: str | None = None
    conn_type: str | None = None
    description: str | None = None
    host: str | None = None
    login: str | None = None
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    port: int | None = None
    extra: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.conn_id is not None:
            # Airflow's Connection.__init__ sanitizes the id; one it refuses is dropped (conn_id None).
            object.__setattr__(self, "conn_id", sanitize_conn_id(self.conn_id))
        # Airflow stores an empty password as NULL; login "" is kept (vectors "empty login"/"port only").
        if self.password == "":
            object.__setattr__(self, "password", None)
        if self.conn_type:
            object.__setattr__(self, "conn_type", normalize_conn_type(self.conn_type))
        object.__setattr__(self, "port", _validate_port(self.port, self.conn_id))
        object.__setattr__(self, "extra", _validate_extra(self.extra, self.conn_id))

    # --- parsing -----------------------------------------------------------------------------------

    @classmethod
    def from_uri(cls, uri: str, conn_id: str | None = None, description: str | None = None) -> Connection:
        where = f" for connection {conn_id!r}" if conn_id else ""
        if not isinstance(uri, str):
            raise ConnectionFormatError(f"connection URI{where} must be a string")
        uri = uri.strip()
        schemes = uri.count("://")
        # "//host..." (what get_uri() writes without a conn_type) and "://host..." parse as in Airflow: the
        # conn_type is "". Anything else without a scheme is refused (Airflow turns it into a schema).
        schemeless = (schemes == 0 and uri.startswith("//")) or (schemes == 1 and uri.startswith("://"))
        if schemes == 0 and not schemeless:
            raise ConnectionFormatError(f"connection URI{where} has no '<conn_type>://' scheme")
        if schemes > 2:
            raise ConnectionFormatError(f"connection URI{where} has more than two '://' separators")
        host_with_protocol = schemes == 2
        try:
            conn_type = urlsplit(uri).scheme
        except ValueError as exc:
            raise ConnectionFormatError(
                f"connection URI{where} is malformed: {_url_error_reason(exc)}"
            ) from None
        if not conn_type and not schemeless:
            raise ConnectionFormatError(f"field 'conn_type'{where}: the URI has no valid scheme")
        rest = uri.replace(f"{conn_type}://", "" if host_with_protocol else "//")
        if host_with_protocol:
            protocol_part = rest.split("://", 1)[0]
            if "@" in protocol_part or ":" in protocol_part:
                raise ConnectionFormatError(
                    f"field 'host'{where}: the protocol before '://' in the host is invalid"
                )
        try:
            parts = urlsplit(rest)
            port = parts.port
        except ValueError as exc:
            field_name = "port" if "port" in str(exc).lower() else "host"
            raise ConnectionFormatError(
                f"field {field_name!r}{where} is invalid in the URI: {_url_error_reason(exc)}"
            ) from None
        protocol = parts.scheme if host_with_protocol else None
        host = _hostname_from_netloc(parts)
        if host and protocol:
            host = f"{protocol}://{host}"
        quoted_schema = parts.path[1:]
        extra: str | None = None
        if parts.query:
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            if EXTRA_KEY in query:
                extra = query[EXTRA_KEY]
            else:
                extra = json.dumps({key: _decode_query_value(value) for key, value in query.items()})
        return cls(
            conn_id=conn_id,
            conn_type=normalize_conn_type(conn_type),
            description=description,
            host=host,
            login=unquote(parts.username) if parts.username else parts.username,
            password=unquote(parts.password) if parts.password else parts.password,
            schema=unquote(quoted_schema) if quoted_schema else quoted_schema,
            port=port,
            extra=extra,
        )

    @classmethod
    def from_json(cls, text: str | dict[str, Any], conn_id: str | None = None) -> Connection:
        where = f" for connection {conn_id!r}" if conn_id else ""
        data = dict(text) if isinstance(text, dict) else json_object(text, f"connection JSON{where}")
        return cls.from_dict(data, conn_id=conn_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any], conn_id: str | None = None) -> Connection:
        where = f" for connection {conn_id!r}" if conn_id else ""
        unknown = sorted(set(data) - _JSON_KEYS)
        if unknown:
            raise ConnectionFormatError(f"connection JSON{where} has unknown field(s): {', '.join(unknown)}")
        conn_id = conn_id or data.get("conn_id")
        if "uri" in data:
            # Airflow refuses 'uri' beside a truthy field only: None, "", 0 and {} are "not given".
            mixed = sorted(k for k in CONNECTION_FIELDS if data.get(k))
            if mixed:
                raise ConnectionFormatError(
                    f"connection JSON{where} mixes 'uri' with field(s) {', '.join(mixed)}; use one form"
                )
            return cls.from_uri(data["uri"], conn_id=conn_id, description=data.get("description"))
        # No conn_type is fine, as in Airflow (generic credentials: login, password, host): it stays None.
        for name in ("conn_type", "host", "login", "password", "schema", "description"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise ConnectionFormatError(
                    f"field {name!r}{where} must be a string, got {type(value).__name__}"
                )
        return cls(
            conn_id=conn_id,
            conn_type=data.get("conn_type"),
            description=data.get("description"),
            host=data.get("host"),
            login=data.get("login"),
            password=data.get("password"),
            schema=data.get("schema"),
            # Airflow drops a falsy port ("" or 0) before validation.
            port=data.get("port") or None,
            extra=data.get("extra") or None,
        )

    @classmethod
    def from_value(cls, value: str, conn_id: str | None = None) -> Connection:
        """Airflow's ``deserialize_connection``: strip; ``{`` starts JSON, anything else is a URI."""
        value = value.strip()
        if value.startswith("{"):
            return cls.from_json(value, conn_id=conn_id)
        return cls.from_uri(value, conn_id=conn_id)

    # --- serialisation -----------------------------------------------------------------------------

    @property
    def extra_dejson(self) -> dict[str, Any]:
        return json.loads(self.extra) if self.extra else {}

    def get_uri(self) -> str:
        uri = f"{self.conn_type.lower().replace('_', '-')}://" if self.conn_type else "//"
        host_to_use = self.host
        if self.host and "://" in self.host:
            protocol, bare_host = self.host.split("://", 1)
            if protocol != self.conn_type:
                # As Airflow: the host loses its "<protocol>://" even when the protocol is empty ("://h").
                if protocol:
                    uri += f"{protocol}://"
                host_to_use = bare_host
        authority = ""
        if self.login is not None:
            authority += quote(self.login, safe="")
        if self.password is not None:
            authority += ":" + quote(self.password, safe="")
        if authority:
            uri += authority + "@"
        host_block = quote(host_to_use, safe="") if host_to_use else ""
        if self.port:
            host_block += f":{self.port}" if (host_block or authority) else f"@:{self.port}"
        if self.schema:
            host_block += f"/{quote(self.schema, safe='')}"
        uri += host_block
        if self.extra:
            extra = self.extra_dejson
            query = ""
            # Airflow writes ?k=v even where its own parser would decode v ("10" -> 10); credpath uses
            # __extra__ then, so get_uri() always parses back to the same extra.
            if all(_survives_query_form(v) for v in extra.values()):
                query = urlencode(extra)
                if dict(parse_qsl(query, keep_blank_values=True)) != extra:
                    query = ""
            if not query:
                query = urlencode({EXTRA_KEY: json.dumps(extra)})
            uri += ("?" if self.schema else "/?") + query
        return uri

    def to_dict(self, *, include_conn_id: bool = True, prune_empty: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "conn_id": self.conn_id,
            "conn_type": self.conn_type,
            "description": self.description,
            "host": self.host,
            "login": self.login,
            "password": self.password,
            "schema": self.schema,
            "port": self.port,
            "extra": self.extra_dejson if self.extra else None,
        }
        if not include_conn_id:
            del data["conn_id"]
        if prune_empty:
            data = {k: v for k, v in data.items() if v not in (None, "", {})}
        return data

    def to_json(self) -> str:
        """Airflow's ``as_json``: the JSON form without conn_id; drops None fields only (an empty login
        survives), and ``extra`` when it is empty."""
        return json.dumps({k: v for k, v in self.to_dict(include_conn_id=False).items() if v is not None})

    def with_id(self, conn_id: str) -> Connection:
        return self if conn_id == self.conn_id else replace(self, conn_id=conn_id)

    def secret_values(self) -> list[str]:
        """Every value that must be masked: the password and sensitive extra values."""
        secrets: list[str] = []
        if self.password:
            secrets.append(self.password)
        if self.extra:
            secrets.extend(_sensitive_values(self.extra_dejson))
        return secrets

    def masked_dict(self, mask: str = "***") -> dict[str, Any]:
        data = self.to_dict()
        if data["password"] is not None:
            data["password"] = mask
        if data["extra"]:
            data["extra"] = mask_sensitive(data["extra"], mask)
        return data

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name not in ("password", "extra")
        )
        password = ", password='***'" if self.password is not None else ""
        extra = f", extra={mask_sensitive(self.extra_dejson)!r}" if self.extra else ""
        return f"Connection({shown}{password}{extra})"


def _sensitive_values(data: Any, sensitive_parent: bool = False) -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(_sensitive_values(value, sensitive_parent or is_sensitive_name(str(key))))
    elif isinstance(data, list | tuple):
        for item in data:
            found.extend(_sensitive_values(item, sensitive_parent))
    elif sensitive_parent and data not in (None, "") and not isinstance(data, bool):
        found.append(str(data))
    return found


def mask_sensitive(data: Any, mask: str = "***", sensitive_parent: bool = False) -> Any:
    """Copy of ``data`` with values under sensitive names replaced by ``mask``."""
    if isinstance(data, dict):
        return {
            k: mask_sensitive(v, mask, sensitive_parent or is_sensitive_name(str(k))) for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [mask_sensitive(v, mask, sensitive_parent) for v in data]
    if sensitive_parent and data not in (None, ""):
        return mask
    return data


def _url_error_reason(exc: Exception) -> str:
    # urllib's messages quote the offending text only for ports ("Port could not be cast to integer
    # value as 'x'"), which may be part of a password: keep the first clause only.
    return str(exc).split(" as ", 1)[0].split(":", 1)[0]


@dataclass(frozen=True)
class Variable:
    """A variable: a key and a string value. ``deserialize()`` parses JSON."""

    key: str
    value: str = field(repr=False)
    description: str | None = None

    def deserialize(self) -> Any:
        try:
            return json.loads(self.value)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"variable {self.key!r} is not valid JSON (line {exc.lineno} column {exc.colno}): {exc.msg}"
            ) from None

    @property
    def is_sensitive(self) -> bool:
        return is_sensitive_name(self.key)

    def __repr__(self) -> str:
        return f"Variable(key={self.key!r}, value='***')"
