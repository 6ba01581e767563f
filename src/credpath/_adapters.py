"""Adapters for connections stored in a non-Airflow shape (``connection_format`` on any backend).

A backend given ``connection_format`` turns each raw secret (a JSON object) into a :class:`Connection`
with the adapter that :func:`build_adapter` returns. Formats:

- ``"aws-rds"``: what RDS / Secrets Manager rotation writes: ``engine``, ``host``, ``username``,
  ``password``, ``dbname``, ``port``; ``engine`` gives the conn_type (``aurora-postgresql`` -> ``postgres``,
  ``mariadb`` -> ``mysql``, ``sqlserver-ex`` -> ``mssql``, ...); other keys (``dbInstanceIdentifier``) go to
  extra.
- ``"username-password"``: a map with ``user``/``username``, ``pass``/``password``, ``host``, ``port``
  (and optional ``conn_type``, ``schema``/``database``); other keys go to extra.
- a declarative mapping: ``{"conn_type": "<constant>", "fields": {"login": "user", "password": "pass"},
  "extra": "rest" | "none"}``. A field may name one key or a list of keys (the first present wins).
  ``"preset": "aws-rds"`` starts from a preset and overrides parts of it.

Error messages name the conn_id, the format and the field or key, never a value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from credpath.errors import ConfigError
from credpath.model import Connection, ConnectionFormatError, json_object

__all__ = ["MAPPABLE_FIELDS", "PRESETS", "ConnectionAdapter", "MappingAdapter", "build_adapter"]


#: Connection fields a mapping may fill from secret keys.
MAPPABLE_FIELDS = ("conn_type", "description", "host", "login", "password", "schema", "port")
_EXTRA_MODES = ("rest", "none")
_SPEC_KEYS = frozenset({"preset", "conn_type", "fields", "extra", "conn_type_map"})

# RDS engine names (AWS's `engine` values) -> Airflow conn_type.
RDS_ENGINES: dict[str, str] = {
    "postgres": "postgres",
    "postgresql": "postgres",
    "aurora-postgresql": "postgres",
    "mysql": "mysql",
    "aurora": "mysql",
    "aurora-mysql": "mysql",
    "mariadb": "mysql",
    "oracle": "oracle",
    "oracle-ee": "oracle",
    "oracle-ee-cdb": "oracle",
    "oracle-se2": "oracle",
    "oracle-se2-cdb": "oracle",
    "sqlserver": "mssql",
    "sqlserver-ee": "mssql",
    "sqlserver-se": "mssql",
    "sqlserver-ex": "mssql",
    "sqlserver-web": "mssql",
    "redshift": "redshift",
    "db2": "db2",
}

PRESETS: dict[str, dict[str, Any]] = {
    "aws-rds": {
        "fields": {
            "conn_type": "engine",
            "host": "host",
            "login": "username",
            "password": "password",
            "schema": "dbname",
            "port": "port",
        },
        "conn_type_map": RDS_ENGINES,
        "extra": "rest",
    },
    "username-password": {
        "fields": {
            "conn_type": "conn_type",
            "host": "host",
            "login": ["user", "username"],
            "password": ["pass", "password"],
            "schema": ["schema", "database"],
            "port": "port",
        },
        "extra": "rest",
    },
}

ConnectionAdapter = Callable[[str, str], Connection]


@dataclass(frozen=True)
class MappingAdapter:
    """Callable ``(conn_id, raw_value) -> Connection`` built from a validated mapping."""

    name: str
    fields: dict[str, tuple[str, ...]]
    conn_type: str | None = None
    extra: str = "rest"
    conn_type_map: dict[str, str] = field(default_factory=dict)

    def __call__(self, conn_id: str, value: str) -> Connection:
        where = f"connection {conn_id!r} (connection_format {self.name!r})"
        data = _json_object(value, where)
        used: set[str] = set()
        values: dict[str, Any] = {}
        for target, keys in self.fields.items():
            used.update(k for k in keys if k in data)
            for key in keys:
                if data.get(key) is not None:
                    values[target] = data[key]
                    break
        for target, found in values.items():
            if target == "port":
                continue  # Connection validates the port (int or digit string) and names the field
            if not isinstance(found, str):
                raise ConnectionFormatError(
                    f"{where}: key for field {target!r} must hold a string, got {type(found).__name__}"
                )
        conn_type = values.pop("conn_type", None)
        if conn_type is not None:
            conn_type = self.conn_type_map.get(conn_type.lower(), conn_type)
        elif self.conn_type is not None:
            conn_type = self.conn_type
        extra: dict[str, Any] | None = None
        if self.extra == "rest":
            extra = {k: v for k, v in data.items() if k not in used} or None
        try:
            return Connection(
                conn_id=conn_id,
                conn_type=conn_type,
                extra=json.dumps(extra) if extra else None,
                **values,
            )
        except ConfigError as exc:
            raise ConnectionFormatError(f"{where}: {exc}") from None

    def to_value(self, conn: Connection) -> str:
        """The inverse mapping: a JSON object in this format (extra keys go back to the top level)."""
        data: dict[str, Any] = {}
        if self.extra == "rest" and conn.extra:
            data.update(json.loads(conn.extra))
        inverse_types = {v: k for k, v in reversed(list(self.conn_type_map.items()))}
        for target, keys in self.fields.items():
            value = getattr(conn, target)
            if value is None:
                continue
            if target == "conn_type":
                value = inverse_types.get(value, value)
            data[keys[0]] = value
        return json.dumps(data)


def _json_object(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise ConnectionFormatError(f"{where}: the secret must be a JSON object, got {type(value).__name__}")
    return json_object(value, f"{where}: the secret")


def _keys(value: Any, setting: str) -> tuple[str, ...]:
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list | tuple) and value and all(isinstance(k, str) and k for k in value):
        return tuple(value)
    raise ConfigError(f"{setting} must be a secret key name or a non-empty list of key names")


def build_adapter(connection_format: str | Mapping[str, Any]) -> MappingAdapter:
    """Validate ``connection_format`` (a preset name or a mapping) and return its adapter."""
    setting = "connection_format"
    if isinstance(connection_format, str):
        if connection_format not in PRESETS:
            raise ConfigError(
                f"{setting}: unknown preset {connection_format!r}; use one of {', '.join(sorted(PRESETS))} "
                "or a mapping {conn_type, fields, extra}"
            )
        return _from_spec(connection_format, PRESETS[connection_format], setting)
    if not isinstance(connection_format, Mapping):
        raise ConfigError(
            f"{setting} must be a preset name or a mapping, got {type(connection_format).__name__}"
        )
    spec = dict(connection_format)
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(
            f"{setting}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(_SPEC_KEYS))}"
        )
    name = "custom"
    if "preset" in spec:
        preset = spec.pop("preset")
        if preset not in PRESETS:
            raise ConfigError(
                f"{setting}.preset: unknown preset {preset!r}; use one of {', '.join(sorted(PRESETS))}"
            )
        base = PRESETS[preset]
        merged_fields = {**base["fields"], **(spec.get("fields") or {})}
        if spec.get("conn_type") is not None:
            # A constant conn_type replaces the preset's conn_type key.
            merged_fields.pop("conn_type", None)
        spec = {**base, **spec, "fields": merged_fields}
        name = f"{preset} (customised)"
    return _from_spec(name, spec, setting)


def _from_spec(name: str, spec: Mapping[str, Any], setting: str) -> MappingAdapter:
    raw_fields = spec.get("fields")
    if not isinstance(raw_fields, Mapping) or not raw_fields:
        raise ConfigError(f"{setting}.fields must be a non-empty mapping of connection field -> secret key")
    fields: dict[str, tuple[str, ...]] = {}
    for target, keys in raw_fields.items():
        if target not in MAPPABLE_FIELDS:
            raise ConfigError(
                f"{setting}.fields: {target!r} is not a connection field; use {', '.join(MAPPABLE_FIELDS)}"
            )
        fields[target] = _keys(keys, f"{setting}.fields.{target}")
    conn_type = spec.get("conn_type")
    if conn_type is not None and (not isinstance(conn_type, str) or not conn_type):
        raise ConfigError(f"{setting}.conn_type must be a non-empty string (a constant conn_type)")
    if conn_type is not None and "conn_type" in fields:
        raise ConfigError(f"{setting}: give conn_type as a constant or in fields, not both")
    extra = spec.get("extra", "rest")
    if extra not in _EXTRA_MODES:
        raise ConfigError(f"{setting}.extra must be one of {', '.join(_EXTRA_MODES)}")
    type_map = spec.get("conn_type_map") or {}
    if not isinstance(type_map, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in type_map.items()
    ):
        raise ConfigError(f"{setting}.conn_type_map must map strings to strings")
    return MappingAdapter(
        name=name,
        fields=fields,
        conn_type=conn_type,
        extra=extra,
        conn_type_map={k.lower(): v for k, v in type_map.items()},
    )
