"""Import and export in Airflow's file formats (.json, .yaml, .env), from or to any backend in the path.

Input is parsed and validated in full before the first write, so bad input writes nothing. Exports are
written to a temporary file with mode 0600 and renamed into place: they hold secrets.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credpath.errors import ConfigError
from credpath.search_path import read_connection

if TYPE_CHECKING:
    from credpath.protocol import Kind
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


def _read(backend: Any, kind: Kind, key: str) -> Any:
    return read_connection(backend, key) if kind == "connection" else backend.get_variable(key)


def collect(search_path: SearchPath, kind: Kind, source: str | None = None) -> dict[str, Any]:
    """Every listable id of ``kind`` with its value: from one backend, or through the whole path."""
    if source is not None:
        backend = search_path.backend(source)
        lister = getattr(backend, f"list_{kind}s", None)
        if not callable(lister):
            raise ConfigError(f"--from: backend {source!r} cannot list {kind}s")
        values = {key: _read(backend, kind, key) for key in lister()}
    else:
        ids, _ = search_path.list_ids(kind)
        resolutions = {key: search_path.lookup(kind, key) for key in ids}
        values = {key: r.value for key, r in resolutions.items() if r is not None}
    return {key: value for key, value in values.items() if value is not None}


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
    conns = collect(search_path, "connection", source)
    write_private(file, formats.serialize_connections(conns, fmt, serialization_format=serialization_format))
    return len(conns)


def export_variables(
    search_path: SearchPath, file: Path, *, source: str | None = None, file_format: str | None = None
) -> int:
    from credpath import formats

    fmt = file_format_of(file, file_format)
    values = collect(search_path, "variable", source)
    write_private(file, formats.serialize_variables(values, fmt))
    return len(values)


def import_connections(
    search_path: SearchPath, file: Path, *, to: str | None = None, overwrite: bool = False
) -> ImportResult:
    from credpath import formats

    conns = formats.parse_connections_file(file)  # all parsed before the first write
    return _write_all(search_path, "connection", {k: c.with_id(k) for k, c in conns.items()}, to, overwrite)


def import_variables(
    search_path: SearchPath, file: Path, *, to: str | None = None, overwrite: bool = True
) -> ImportResult:
    from credpath import formats

    return _write_all(search_path, "variable", formats.parse_variables_file(file), to, overwrite)


def _write_all(
    search_path: SearchPath, kind: Kind, items: dict[str, Any], to: str | None, overwrite: bool
) -> ImportResult:
    entry = search_path.writable_backend(to, f"set_{kind}")
    written = skipped = 0
    for key, value in items.items():
        if not overwrite and _read(entry.backend, kind, key) is not None:
            skipped += 1
            continue
        if kind == "connection":
            search_path.set_connection(value, to=entry.name, overwrite=True)
        else:
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
