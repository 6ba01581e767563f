"""The metastore's stdlib read path: an SQLite file read with the standard library's ``sqlite3``.

It exists for start-up: on the README's set-up (``credpath connections get my_db``) importing SQLAlchemy
cost ~160 ms of a 0.37 s run (``python -X importtime``), ``sqlite3`` ~2 ms; see bench/startup.py. Same
schema, same rows and Fernet tokens as the SQLAlchemy path, through a read-only connection; writes, key
rotation and every other URL use SQLAlchemy. ``sqlite3`` is imported on first use.
"""

from __future__ import annotations

import re
import threading
from collections import namedtuple
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credpath.backends._per_process import PerProcess
from credpath.backends._sql import ALL_TEAMS, ID_COLUMN, TEAM_COLUMN, team_visible

if TYPE_CHECKING:
    import sqlite3

    from credpath.errors import CredpathError
    from credpath.protocol import Kind

__all__ = ["Absent", "SqliteReader", "stdlib_path"]

#: SQLite file URLs the stdlib read path takes; anything else (query options, ``file:`` URIs, percent
#: escapes, ``:memory:``) is left to SQLAlchemy, which parses it.
_SQLITE_FILE_URL = re.compile(r"sqlite(?:\+pysqlite)?:///([^?#%@:]+)")
_BATCH = 500
#: Rows of the stdlib read path, with the attribute names of SQLAlchemy's rows.
_ROW_TYPES: dict[str, Any] = {
    "connection": namedtuple(
        "ConnectionRow", "conn_id conn_type description host login password schema port extra"
    ),
    "variable": namedtuple("VariableRow", "key value description"),
}


def stdlib_path(url: str) -> Path | None:
    """The SQLite file ``url`` names when the stdlib read path takes it, else None (SQLAlchemy reads)."""
    match = _SQLITE_FILE_URL.fullmatch(url)
    return Path(match.group(1)).expanduser() if match else None


class Absent(Exception):
    """The SQLite metastore does not exist yet (or has no schema yet): every read is a miss."""


class SqliteReader:
    """Reads of the metastore's SQLite file through one read-only stdlib connection, one statement at a
    time; team-scoped as the SQLAlchemy reads are (Airflow's rule, in SQL).

    :param tables: kind -> table name, and ``"version"`` -> the schema version table.
    :param opened: called with the file's schema version when the file is first opened (raises to refuse).
    :param error: the store's error in its voice, from a message.
    """

    def __init__(
        self,
        path: Path,
        url: str,
        *,
        tables: Mapping[str, str],
        opened: Callable[[int], None],
        error: Callable[[str], CredpathError],
    ) -> None:
        self.path = path
        self._url = url
        self._tables = tables
        self._opened = opened
        self._error_in_voice = error
        # One stdlib connection, one statement at a time; a forked child's own (see PerProcess).
        # The connection and the lock of this process: a forked child opens its own (SQLite's state of its
        # file's locks is per process) and takes a lock a parent thread cannot have held. Reentrant: a read
        # holds the lock while it asks for the connection.
        self._conns: PerProcess[sqlite3.Connection] = PerProcess(self._open, reentrant=True)
        #: The file has the team_name column (v2, or seen added since it was opened).
        self._teams = False

    @property
    def _lock(self) -> threading.Lock | threading.RLock:
        return self._conns.lock

    @staticmethod
    def prepare() -> None:
        import sqlite3  # noqa: F401  (the stdlib read path: SQLAlchemy is imported by writes only)

    def close(self) -> None:
        with self._lock:
            conn = self._conns.clear()  # None in a forked child: the inherited one is only dropped
            if conn is not None:
                conn.close()

    def connection(self) -> sqlite3.Connection:
        """A read-only stdlib connection to the SQLite file, opened (and its schema checked) once; the
        caller holds the lock.

        Raises :class:`Absent` while the file or its schema does not exist: nothing is created, and the
        next read looks again (a write in this or another process may create it).
        """
        return self._conns.get()

    def _open(self) -> sqlite3.Connection:
        import sqlite3

        path = self.path
        if not path.exists():
            raise Absent
        try:
            # mode=ro: a read never creates or changes the file; autocommit (isolation_level=None): no
            # transaction is held between reads, so writers are never blocked by an idle reader.
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=5.0,  # pysqlite's default, as the SQLAlchemy engine has it
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            if not path.exists():
                raise Absent from None
            raise self._error("opening the database", exc) from None
        try:
            version = self._schema_version(conn)
            self._opened(version)
        except BaseException:
            conn.close()
            raise
        self._teams = version >= 2
        return conn

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        import sqlite3

        try:
            version: int | None = conn.execute(
                f"SELECT max(version) FROM {self._tables['version']}"
            ).fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise Absent from None  # created empty (0600) by a writer that has not made its schema yet
            raise self._error("checking the schema", exc) from None
        except sqlite3.Error as exc:
            raise self._error("checking the schema", exc) from None
        if version is None:
            raise Absent
        return version

    def _error(self, action: str, exc: Exception) -> CredpathError:
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        return self._error_in_voice(f"{self._url}: {action} failed: {reason}")

    def select(self, kind: Kind, action: str, ids: list[str] | None, team: Any) -> list[Any]:
        """Rows of ``kind`` (those among ``ids``, or all) that ``team`` may read; :data:`ALL_TEAMS`: all."""
        import sqlite3

        with self._lock:
            try:
                conn = self.connection()
            except Absent:
                return []
            chunks: list[list[str] | None] = (
                [None] if ids is None else [ids[i : i + _BATCH] for i in range(0, len(ids), _BATCH)]
            )
            rows: list[Any] = []
            try:
                for chunk in chunks:
                    rows.extend(self._select_chunk(conn, kind, chunk, team))
            except sqlite3.Error as exc:
                raise self._error(action, exc) from None
            return rows

    def _select_chunk(
        self, conn: sqlite3.Connection, kind: Kind, chunk: list[str] | None, team: Any
    ) -> list[Any]:
        row_type = _ROW_TYPES[kind]
        where, params = [], []
        if chunk is not None:
            where.append(f'"{ID_COLUMN[kind]}" IN ({", ".join("?" * len(chunk))})')
            params.extend(chunk)
        if not self._teams:
            # v1: the owner column may have been added since this file was opened.
            return self._select_any_schema(conn, kind, where, params, team)
        if team is not ALL_TEAMS:  # Airflow's rule, in SQL
            where.append(f'("{TEAM_COLUMN}" = ? OR "{TEAM_COLUMN}" IS NULL)')
            params.append(team)
        columns = ", ".join(f'"{name}"' for name in row_type._fields)
        found = conn.execute(self._query(kind, columns, where), params).fetchall()
        return [row_type(*r) for r in found]

    def _select_any_schema(
        self, conn: sqlite3.Connection, kind: Kind, where: list[str], params: list[str], team: Any
    ) -> list[Any]:
        """Every column of a file opened as v1, the owner checked here if another process added it."""
        row_type = _ROW_TYPES[kind]
        cursor = conn.execute(self._query(kind, "*", where), params)
        found = cursor.fetchall()
        names = [d[0] for d in cursor.description]
        if TEAM_COLUMN in names:
            self._teams = True  # upgraded to v2 by another process meanwhile
        rows = []
        for r in found:
            values = dict(zip(names, r, strict=True))
            if team is ALL_TEAMS or team_visible(values.get(TEAM_COLUMN), team):
                rows.append(row_type(*(values[f] for f in row_type._fields)))
        return rows

    def _query(self, kind: Kind, columns: str, where: list[str]) -> str:
        query = f"SELECT {columns} FROM {self._tables[kind]}"
        return query + " WHERE " + " AND ".join(where) if where else query

    def ids(self, kind: Kind, team: Any) -> list[str]:
        """The ids ``team`` can read, sorted; :data:`ALL_TEAMS`: every id."""
        column = ID_COLUMN[kind]
        if (
            team is not ALL_TEAMS
        ):  # a team's listing: the ids its reads can see (rare: the whole rows are read)
            return sorted(getattr(r, column) for r in self.select(kind, f"listing {kind}s", None, team))
        import sqlite3

        with self._lock:
            try:
                conn = self.connection()
            except Absent:
                return []
            try:
                found = conn.execute(
                    f'SELECT "{column}" FROM {self._tables[kind]} ORDER BY "{column}"'
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._error(f"listing {kind}s", exc) from None
        return [r[0] for r in found]

    def first_secret(self) -> tuple[Kind, str, str] | None:
        """(kind, id, Fernet token) of one stored secret (a variable's value, else a connection's
        password), or None; :class:`Absent` when there is no schema yet."""
        import sqlite3

        with self._lock:
            conn = self.connection()
            try:
                row = conn.execute(
                    f'SELECT "key", "value" FROM {self._tables["variable"]} LIMIT 1'
                ).fetchone()
                if row is not None:
                    return "variable", row[0], row[1]
                row = conn.execute(
                    f"SELECT conn_id, password FROM {self._tables['connection']} "
                    "WHERE password IS NOT NULL LIMIT 1"
                ).fetchone()
            except sqlite3.Error as exc:
                raise self._error("checking", exc) from None
        return None if row is None else ("connection", row[0], row[1])
