"""One secret = a key map: the mapping the stores that keep a map of keys per secret share (Vault KV,
Kubernetes Secrets).

- a connection is the key ``conn_uri`` (an Airflow URI; a ``description`` key beside it is kept), or its
  JSON fields as keys (``conn_type``, ``host``, ``login``, ``password``, ``schema``, ``port``, ``extra``,
  ``description``);
- a variable or config value is the key ``value``;
- a connection is written as its fields (``serialization="json"``), as ``conn_uri`` (plus ``description``)
  with ``"uri"``, or in the backend's ``connection_format``.

Stores differ only in what a missing ``value`` key means (Vault: a miss with a warning, as Airflow;
Kubernetes: an error) and whether the map holds strings only (Kubernetes' ``data``): those stay theirs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from credpath.model import Connection
    from credpath.protocol import BaseBackend, Serialization

__all__ = ["conn_value", "connection", "connection_map", "keys_present", "value_of"]


def conn_value(data: Mapping[str, Any]) -> str:
    """A connection's raw value: ``conn_uri`` when set, else the whole map as JSON (Airflow's JSON form)."""
    uri = data.get("conn_uri")
    if uri:
        return str(uri)
    return json.dumps(dict(data))


def connection(backend: BaseBackend, conn_id: str, data: Mapping[str, Any]) -> Connection:
    """The connection a key map holds, through the backend's ``connection_format`` when it has one."""
    if backend._connection_adapter is not None:
        return backend.deserialize_connection(conn_id, conn_value(data))
    from credpath.model import Connection

    uri = data.get("conn_uri")
    if uri:
        # A description stored next to conn_uri survives (Airflow would drop it).
        return Connection.from_uri(str(uri), conn_id=conn_id, description=data.get("description"))
    return Connection.from_json(dict(data), conn_id=conn_id)


def value_of(data: Mapping[str, Any]) -> str | None:
    """The ``value`` key as text (a non-string value as JSON); None when the map has no ``value`` key."""
    if "value" not in data:
        return None
    value = data["value"]
    return value if isinstance(value, str) else json.dumps(value)


def keys_present(data: Mapping[str, Any]) -> str:
    """The map's keys for a message about a missing key (names only, never a value)."""
    return ", ".join(sorted(map(str, data))) or "none"


def connection_map(
    backend: BaseBackend, conn: Connection, serialization: Serialization, *, strings: bool = False
) -> tuple[str, dict[str, Any]]:
    """(conn_id, the key map ``conn`` is written as); ``strings=True`` for a store whose values are text
    only (a non-string field as JSON, ``extra`` as its own text, empty fields left out)."""
    if not conn.conn_id:
        raise backend.config_error("set_connection needs a connection with a conn_id")
    if serialization not in ("uri", "json"):
        raise backend.config_error(f"serialization must be 'uri' or 'json', got {serialization!r}")
    data: dict[str, Any]
    adapter = backend._connection_adapter
    if adapter is not None:
        value = adapter.to_value(conn)
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        data = parsed if isinstance(parsed, dict) else {"conn_uri": value}
    elif serialization == "json":
        data = conn.to_dict(include_conn_id=False, prune_empty=True)
        if strings and conn.extra:
            data["extra"] = conn.extra  # the text as given, not re-dumped
    else:
        data = {"conn_uri": conn.get_uri()}
        if conn.description:
            data["description"] = conn.description
    if strings:
        data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if v is not None}
    return conn.conn_id, data
