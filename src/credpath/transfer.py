"""Import and export in Airflow's file formats (.json, .yaml, .env), from or to any backend in the path.

Input is parsed and validated in full before the first write, so bad input writes nothing. Exports are
written to a temporary file with mode 0600 and renamed into place: they hold secrets.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from credpath.errors import ConfigError
from credpath.search_path import read_connection

if TYPE_CHECKING:
    from credpath.model import Connection
    from credpath.search_path import SearchPath

_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".env": "env"}


@dataclass
class ImportResult:
    written: int
    skipped: int
    target: str


def file_format_of(file: Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    fmt = _EXTENSIONS.get(file.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{file}: unknown file extension {file.suffix!r}; use .json, .yaml, .yml or .env")
    return fmt


def collect_connections(search_path: SearchPath, source: str | None = None) -> dict[str, Connection]:
    if source is not None:
        backend = search_path.backend(source)
        lister = getattr(backend, "list_connections", None)
        if not callable(lister):
            raise ConfigError(f"--from: backend {source!r} cannot list connections")
        result = {}
        for conn_id in lister():
            conn = read_connection(backend, conn_id)
            if conn is not None:
                result[conn_id] = conn
        return result
    ids, _ = search_path.list_ids("connection")
    result = {}
    for conn_id in ids:
        resolution = search_path.lookup("connection", conn_id)
        if resolution is not None:
            result[conn_id] = resolution.value
    return result


def collect_variables(search_path: SearchPath, source: str | None = None) -> dict[str, str]:
    if source is not None:
        backend = search_path.backend(source)
        lister = getattr(backend, "list_variables", None)
        if not callable(lister):
            raise ConfigError(f"--from: backend {source!r} cannot list variables")
        values = {key: backend.get_variable(key) for key in lister()}
        return {k: v for k, v in values.items() if v is not None}
    keys, _ = search_path.list_ids("variable")
    result = {}
    for key in keys:
        resolution = search_path.lookup("variable", key)
        if resolution is not None:
            result[key] = resolution.value
    return result


def export_connections(
    search_path: SearchPath,
    file: Path,
    *,
    source: str | None = None,
    file_format: str | None = None,
    serialization_format: str = "uri",
) -> int:
    from credpath import formats

    fmt = file_format_of(file, file_format)
    conns = collect_connections(search_path, source)
    write_private(file, formats.serialize_connections(conns, fmt, serialization_format=serialization_format))
    return len(conns)


def export_variables(
    search_path: SearchPath, file: Path, *, source: str | None = None, file_format: str | None = None
) -> int:
    from credpath import formats

    fmt = file_format_of(file, file_format)
    values = collect_variables(search_path, source)
    write_private(file, formats.serialize_variables(values, fmt))
    return len(values)


def import_connections(
    search_path: SearchPath, file: Path, *, to: str | None = None, overwrite: bool = False
) -> ImportResult:
    from credpath import formats

    conns = formats.parse_connections_file(file)  # all parsed before the first write
    entry = search_path.writable_backend(to, "set_connection")
    written = skipped = 0
    for conn_id, conn in conns.items():
        if not overwrite and read_connection(entry.backend, conn_id) is not None:
            skipped += 1
            continue
        search_path.set_connection(conn.with_id(conn_id), to=entry.name, overwrite=True)
        written += 1
    return ImportResult(written, skipped, entry.name)


def import_variables(
    search_path: SearchPath, file: Path, *, to: str | None = None, overwrite: bool = True
) -> ImportResult:
    from credpath import formats

    values = formats.parse_variables_file(file)
    entry = search_path.writable_backend(to, "set_variable")
    written = skipped = 0
    for key, value in values.items():
        if not overwrite and entry.backend.get_variable(key) is not None:
            skipped += 1
            continue
        search_path.set_variable(key, value, to=entry.name, overwrite=True)
        written += 1
    return ImportResult(written, skipped, entry.name)


def write_private(file: Path, text: str) -> None:
    file = file.expanduser()
    directory = file.parent if str(file.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
