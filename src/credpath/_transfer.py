"""Import and export in Airflow's file formats (.json, .yaml, .env), from or to any backend in the path.

Input is parsed and validated in full before the first write, so bad input writes nothing. An export reads
everything first and fails (nothing written) if any backend fails to list or read: a partial export would
look complete. It is written to a temporary file in the same directory with mode 0600 and renamed into place
(it holds secrets); ``-`` writes to standard output, as Airflow's ``export -``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from credpath import _reading as reading
from credpath.errors import BackendError, ConfigError, CredpathError, ReadOnlyBackend
from credpath.protocol import supports

if TYPE_CHECKING:
    from credpath._search_path import SearchPath
    from credpath.protocol import Backend, Kind

__all__ = [
    "ON_EXISTING",
    "STDOUT",
    "ImportResult",
    "OnExisting",
    "collect",
    "export_connections",
    "export_variables",
    "file_format_of",
    "import_connections",
    "import_variables",
    "is_stdout",
    "resolve_on_existing",
    "write_private",
]

_EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".env": "env"}

#: Airflow's choices: ``variables import --action-on-existing-key`` (default overwrite) and ``connections
#: import [--overwrite]`` (default skip).
OnExisting = Literal["overwrite", "fail", "skip"]
ON_EXISTING: tuple[str, ...] = ("overwrite", "fail", "skip")

STDOUT = "-"


@dataclass
class ImportResult:
    """What an import did in ``target``: ids added (new), overwritten (existed) and skipped (existed)."""

    target: str
    added: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def written(self) -> int:
        return len(self.added) + len(self.overwritten)


def is_stdout(file: Path | str) -> bool:
    return str(file) == STDOUT


def file_format_of(file: Path, explicit: str | None = None) -> str:
    """Airflow's choice: ``explicit`` (``--file-format``), else JSON for ``-``, else the file's extension."""
    if explicit:
        from credpath import _formats as formats

        return formats.normalize_format(explicit)
    if is_stdout(file):
        return "json"
    fmt = _EXTENSIONS.get(file.suffix.lower())
    if fmt is None:
        raise ConfigError(f"{file}: unknown file extension {file.suffix!r}; use .json, .yaml, .yml or .env")
    return fmt


def _checked(name: str, what: str, call: Any, *args: Any) -> Any:
    # Any failure aborts the export (whatever the backend's on_error): never a partial file.
    try:
        return call(*args)
    except CredpathError:
        raise
    except Exception as exc:
        from credpath.errors import safe_reason

        raise BackendError(f"backend {name!r} failed to {what}: {safe_reason(exc)}", backend=name) from None


def _read_all(name: str, backend: Backend, kind: Kind, ids: list[str]) -> dict[str, Any]:
    """The values of ``ids`` (hits only), batched where the backend can; any failure aborts."""
    values: dict[str, Any] = _checked(name, f"read {kind}s", reading.read_many, backend, kind, ids)
    for key in ids:  # in id order, so the error names the first id that failed
        value = values.get(key)
        if isinstance(value, BaseException):
            _checked(name, f"read {kind} {key!r}", _raise, value)
    return values


def _raise(exc: BaseException) -> None:
    raise exc


def collect(search_path: SearchPath, kind: Kind, source: str | None = None) -> dict[str, Any]:
    """Every listable id of ``kind`` with its value: from one backend, or through the whole path (first
    backend in path order that has it wins, as a lookup). Raises if any backend fails: no partial result."""
    if source is not None:
        backend = search_path.backend(source)
        if not supports(backend, "list"):
            raise ConfigError(f"source backend {source!r} cannot list {kind}s")
        ids = _checked(source, f"list {kind}s", reading.list_ids, backend, kind)
        values = _read_all(source, backend, kind, list(ids))
        return {key: values[key] for key in ids if key in values}
    found: set[str] = set()
    for entry in search_path.entries:
        if not supports(entry.backend, "list"):
            continue
        try:
            ids = _checked(entry.name, f"list {kind}s", reading.list_ids, entry.backend, kind)
        except ReadOnlyBackend:
            continue  # this store cannot list: its ids are not exported (as `list` shows it)
        found.update(key for key in ids if entry.wants(kind, key))
    result: dict[str, Any] = {}
    remaining = sorted(found)
    for entry in search_path.entries:  # every backend, listable or not, may shadow a later one
        wanted = [key for key in remaining if entry.wants(kind, key)]
        if not wanted:
            continue
        result.update(_read_all(entry.name, entry.backend, kind, wanted))
        remaining = [key for key in remaining if key not in result]
    return {key: result[key] for key in sorted(result)}


def _output(file: Path, text: str) -> None:
    if is_stdout(file):
        # A terminal or a pipe gets whole lines (a file keeps its exact bytes).
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    else:
        write_private(file, text)


def export_connections(
    search_path: SearchPath,
    file: Path,
    *,
    source: str | None = None,
    file_format: str | None = None,
    serialization_format: str | None = None,
) -> int:
    """Airflow's ``connections export``: ``serialization_format`` (uri, the default, or json) applies to
    .env only and is refused for the other formats, as Airflow refuses it."""
    from credpath import _formats as formats

    fmt = file_format_of(file, file_format)
    if serialization_format is not None and fmt != "env":
        raise ConfigError(
            f"serialization format applies to the env file format only (the file format is {fmt})"
        )
    conns = collect(search_path, "connection", source)
    text = formats.serialize_connections(conns, fmt, serialization_format=serialization_format or "uri")
    _output(file, text)
    return len(conns)


def export_variables(
    search_path: SearchPath, file: Path, *, source: str | None = None, file_format: str | None = None
) -> int:
    from credpath import _formats as formats

    fmt = file_format_of(file, file_format)
    values = collect(search_path, "variable", source)
    _output(file, formats.serialize_variables(values, fmt))
    return len(values)


def resolve_on_existing(on_existing: str | None, overwrite: bool) -> str:
    if on_existing is None:
        return "overwrite" if overwrite else "skip"
    if on_existing not in ON_EXISTING:
        raise ConfigError(f"on_existing must be one of {', '.join(ON_EXISTING)}, got {on_existing!r}")
    return on_existing


def import_connections(
    search_path: SearchPath,
    file: Path,
    *,
    to: str | None = None,
    overwrite: bool = False,
    on_existing: OnExisting | None = None,
) -> ImportResult:
    """Airflow's ``connections import``: existing ids are skipped unless ``overwrite`` (or ``on_existing``
    says overwrite or fail). Ids must pass Airflow's ``validate_key`` (200 characters); where Airflow skips
    a bad id and imports the rest, credpath refuses the file (nothing written)."""
    from credpath import _formats as formats
    from credpath.model import validate_key

    action = resolve_on_existing(on_existing, overwrite)
    conns = formats.parse_connections_file(file)  # all parsed before the first write
    for conn_id in conns:
        validate_key(conn_id, max_length=200, what=f"{file}: connection id")
    return _write_all(search_path, "connection", {k: c.with_id(k) for k, c in conns.items()}, to, action)


def import_variables(
    search_path: SearchPath,
    file: Path,
    *,
    to: str | None = None,
    overwrite: bool = True,
    on_existing: OnExisting | None = None,
) -> ImportResult:
    """Airflow's ``variables import``: ``--action-on-existing-key`` overwrite (default), fail or skip."""
    from credpath import _formats as formats

    action = resolve_on_existing(on_existing, overwrite)
    return _write_all(search_path, "variable", formats.parse_variables_file(file), to, action)


def _write_all(
    search_path: SearchPath, kind: Kind, items: dict[str, Any], to: str | None, action: str
) -> ImportResult:
    entry = search_path.writable_backend(to, f"set_{kind}")
    existing = {key for key in items if reading.exists(entry.backend, kind, key)}
    if action == "fail" and existing:
        raise ConfigError(
            f"{kind}(s) already in backend {entry.name!r}: {', '.join(sorted(existing))}; "
            "nothing imported (overwrite or skip them instead)"
        )
    result = ImportResult(entry.name)
    for key, value in items.items():
        if key in existing and action == "skip":
            result.skipped.append(key)
            continue
        if kind == "connection":
            search_path.set_connection(value, to=entry.name, overwrite=True)
        else:
            search_path.set_variable(key, value, to=entry.name, overwrite=True)
        (result.overwritten if key in existing else result.added).append(key)
    return result


def write_private(file: Path, text: str) -> None:
    file = file.expanduser()
    directory = file.parent if str(file.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # the rename must never expose a file whose content is not on disk
        os.chmod(tmp, 0o600)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
