"""Airflow's LocalFilesystemBackend: connections, variables and config from .env, .json or .yaml files.

Same kwargs and formats as ``airflow.secrets.local_filesystem.LocalFilesystemBackend`` (see
:mod:`credpath._formats`). Airflow re-reads and re-parses the file on every lookup; credpath parses a file
once and re-parses only when ``stat()`` says it changed (mtime_ns, size, inode, device), so a lookup costs one
``stat`` call (a file modified less than a second before it was read is re-parsed until it is older: see
``RACY_WINDOW_NS``). A file that fails to parse raises :class:`ConfigError` naming the file and line, on every
lookup until it is fixed (the last good content is never served: it may be the value that was wrong).

Reads cost one ``stat`` and may change under the process, so the search path never caches this backend
(``cache_results = False``): an edited file is seen on the next lookup. A missing file raises
:class:`MissingFile`, which is also a ``FileNotFoundError`` (what Airflow raises). Airflow's
``LocalFilesystemBackend`` does not scope by team (it accepts ``team_name`` and ignores it); neither does this
backend.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Generic, TypeVar, Unpack

from credpath import _formats as formats
from credpath.errors import ConfigError, MissingFile
from credpath.model import Connection, Variable
from credpath.protocol import BackendOptions, BaseBackend, Capability, iter_ids

__all__ = ["LocalFilesystemBackend"]


log = logging.getLogger(__name__)

T = TypeVar("T")


# File timestamps come from the kernel's coarse clock (one tick, <= 10 ms) and a rewrite may keep the size:
# a file changed within the same tick as our read would keep its stamp. Like git's "racy clean" rule, a
# parse is trusted only if the file was already older than this when it was read; until then every lookup
# re-parses (only files written in the last second pay for it).
RACY_WINDOW_NS = 1_000_000_000


@dataclass(frozen=True)
class _Entries(Generic[T]):
    stamp: tuple[int, int, int, int]
    values: dict[str, T]
    trusted: bool


class _WatchedFile(Generic[T]):
    """One secrets file, parsed once per distinct ``stat()`` signature."""

    def __init__(
        self,
        owner: BaseBackend,
        setting: str,
        path: str,
        build: Callable[[formats.ParsedFile], dict[str, T]],
    ) -> None:
        self.owner = owner
        self.setting = setting
        self.path = path
        self._build = build
        self._entries: _Entries[T] | None = None
        self._lock = threading.Lock()
        #: How many times the file was parsed (for tests and benchmarks).
        self.parse_count = 0

    def load(self) -> dict[str, T]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise MissingFile(
                f"{self.owner.label}: {self.setting} {self.path} does not exist", filename=self.path
            ) from None
        except OSError as exc:
            raise self.owner.error(
                f"cannot stat {self.setting} {self.path} ({exc.strerror or type(exc).__name__})"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        entries = self._entries
        if entries is not None and entries.trusted and entries.stamp == stamp:
            return entries.values
        with self._lock:
            entries = self._entries
            if entries is not None and entries.trusted and entries.stamp == stamp:
                return entries.values
            log.debug("%s: parsing %s %s", self.owner.label, self.setting, self.path)
            self.parse_count += 1
            read_at = time.time_ns()
            try:
                values = self._build(formats.parse_file(self.path))
            except ConfigError as exc:
                self._entries = None  # never serve stale content after a failed re-read
                raise _labelled(self.owner, exc) from None
            self._entries = _Entries(stamp, values, trusted=read_at - st.st_mtime_ns > RACY_WINDOW_NS)
            return values


def _labelled(owner: BaseBackend, exc: ConfigError) -> ConfigError:
    """The same error class, its message prefixed with the backend's label (the one voice)."""
    try:
        relabelled = type(exc)(f"{owner.label}: {exc}")
    except TypeError:  # a subclass with a different constructor: keep it as it is
        return exc
    if isinstance(exc, MissingFile) and isinstance(relabelled, MissingFile):
        relabelled.filename = exc.filename
    return relabelled


class LocalFilesystemBackend(BaseBackend):
    """Connections, variables and config from local files (Airflow's ``LocalFilesystemBackend``).

    :param variables_file_path: .env/.json/.yaml/.yml file of variables.
    :param connections_file_path: file of connections (URI strings or objects; URI or JSON in .env).
    :param configs_file_path: file of config values (Airflow's name).
    :param config_file_path: the same, credpath's spelling; give one of the two.
    """

    alias: ClassVar[str] = "files"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"list", "batch", "prefetch", "structured"})
    store_name: ClassVar[str] = "local files"
    # A lookup is one stat(); an edited file must be seen at once, never through the search-path cache.
    cache_results: ClassVar[bool] = False

    def __init__(
        self,
        variables_file_path: str | os.PathLike[str] | None = None,
        connections_file_path: str | os.PathLike[str] | None = None,
        configs_file_path: str | os.PathLike[str] | None = None,
        config_file_path: str | os.PathLike[str] | None = None,
        **options: Unpack[BackendOptions],
    ) -> None:
        super().__init__(**options)
        if (
            configs_file_path
            and config_file_path
            and os.fspath(configs_file_path) != os.fspath(config_file_path)
        ):
            raise self.config_error("give configs_file_path or config_file_path, not both")
        self.variables_file = self._path("variables_file_path", variables_file_path)
        self.connections_file = self._path("connections_file_path", connections_file_path)
        self.configs_file = self._path("configs_file_path", configs_file_path or config_file_path)
        self._connections = (
            _WatchedFile(self, "connections_file_path", self.connections_file, self._build_connections)
            if self.connections_file
            else None
        )
        self._variables = (
            _WatchedFile(self, "variables_file_path", self.variables_file, formats.variables_from_parsed)
            if self.variables_file
            else None
        )
        self._configs = (
            _WatchedFile(self, "configs_file_path", self.configs_file, formats.config_from_parsed)
            if self.configs_file
            else None
        )

    def _path(self, setting: str, value: str | os.PathLike[str] | None) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str | os.PathLike):
            raise self.config_error(f"{setting} must be a file path, got {type(value).__name__}")
        path = os.path.expanduser(os.fspath(value))
        try:
            formats.file_format(path)  # unsupported extension: fail at configuration time, not per lookup
        except ConfigError as exc:
            raise _labelled(self, exc) from None
        return path

    def _build_connections(self, parsed: formats.ParsedFile) -> dict[str, tuple[str, Connection]]:
        # Keep the raw string (what get_conn_value returns, like env) next to the parsed Connection.
        result: dict[str, tuple[str, Connection]] = {}
        for conn_id, entry in parsed.values.items():
            # Airflow's one-element lists ({"id": ["mysql://h"]}); longer lists are refused with the line.
            present, value = formats.single_entry("connection", conn_id, entry, parsed.where(conn_id))
            if not present:
                continue
            conn = formats.connection_from_entry(conn_id, value, parsed.where(conn_id))
            raw = value.strip() if isinstance(value, str) else conn.to_json()
            result[conn_id] = (raw, conn)
        return result

    # --- reads ---------------------------------------------------------------------------------------

    # Reads accept team_name as Airflow's LocalFilesystemBackend does, and ignore it as it does: one file
    # serves every team.

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        if self._connections is None or not self.wants("connection", conn_id):
            return None
        entry = self._connections.load().get(conn_id)
        return entry[0] if entry else None

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        if self._connections is None or not self.wants("connection", conn_id):
            return None
        entry = self._connections.load().get(conn_id)
        if entry is None:
            return None
        if self._connection_adapter is not None:
            return self.deserialize_connection(conn_id, entry[0])
        return entry[1]

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        if self._variables is None or not self.wants("variable", key):
            return None
        record = self._variables.load().get(key)
        return record.value if record else None

    def get_variable_record(self, key: str, team_name: str | None = None) -> Variable | None:
        """The variable with its description (files in the ``airflow variables export`` form carry one)."""
        if self._variables is None or not self.wants("variable", key):
            return None
        return self._variables.load().get(key)

    def get_config(self, key: str) -> str | None:
        if self._configs is None or not self.wants("config", key):
            return None
        return self._configs.load().get(key)

    # --- batches and listing -------------------------------------------------------------------------

    def get_conn_values(self, ids: list[str], team_name: str | None = None) -> dict[str, str]:
        if self._connections is None:
            return {}
        entries = self._connections.load()
        return {i: entries[i][0] for i in ids if i in entries and self.wants("connection", i)}

    def get_variables(self, keys: list[str], team_name: str | None = None) -> dict[str, str]:
        if self._variables is None:
            return {}
        records = self._variables.load()
        return {k: records[k].value for k in keys if k in records and self.wants("variable", k)}

    def get_connections(self, ids: list[str], team_name: str | None = None) -> dict[str, Connection]:
        """Hits among ``ids`` as connections, with what the file's fields carry (``description``)."""
        if self._connections is None:
            return {}
        entries = self._connections.load()
        found = [i for i in ids if i in entries and self.wants("connection", i)]
        if self._connection_adapter is not None:
            return {i: self.deserialize_connection(i, entries[i][0]) for i in found}
        return {i: entries[i][1] for i in found}

    def get_variable_records(self, keys: list[str], *, team_name: str | None = None) -> dict[str, Variable]:
        if self._variables is None:
            return {}
        records = self._variables.load()
        return {k: records[k] for k in keys if k in records and self.wants("variable", k)}

    def prefetch_connections(self) -> dict[str, str]:
        if self._connections is None:
            return {}
        return {i: e[0] for i, e in self._connections.load().items() if self.wants("connection", i)}

    def prefetch_variables(self) -> dict[str, str]:
        if self._variables is None:
            return {}
        return {k: r.value for k, r in self._variables.load().items() if self.wants("variable", k)}

    def list_connections(self) -> list[str]:
        return iter_ids(self.prefetch_connections())

    def list_variables(self) -> list[str]:
        return iter_ids(self.prefetch_variables())

    def parse_counts(self) -> dict[str, int]:
        """How often each file was parsed in this process (stat-only lookups do not count)."""
        return {
            name: watched.parse_count
            for name, watched in (
                ("connections", self._connections),
                ("variables", self._variables),
                ("config", self._configs),
            )
            if watched is not None
        }

    def check(self) -> str:
        for watched in (self._connections, self._variables, self._configs):
            if watched is not None:
                watched.load()
        files = [p for p in (self.connections_file, self.variables_file, self.configs_file) if p]
        return f"{len(files)} file(s) readable and valid" if files else "no files configured"

    def describe(self) -> str:
        parts = [
            f"{name}={Path(path).name}"
            for name, path in (
                ("connections", self.connections_file),
                ("variables", self.variables_file),
                ("config", self.configs_file),
            )
            if path
        ]
        return f"files ({', '.join(parts) or 'none'})"
