"""credpath's own metastore: connections and variables in any SQLAlchemy database, encrypted with Fernet.

- Default: embedded SQLite at ``$CREDPATH_HOME/credpath.db`` (``CREDPATH_HOME`` defaults to ``~/.credpath``);
  any SQLAlchemy URL via kwarg ``url`` or ``CREDPATH_METASTORE_URL``.
- Passwords, extras and variable values are stored as Fernet tokens (cryptography's ``MultiFernet``). Keys:
  kwarg ``fernet_key`` or ``CREDPATH_FERNET_KEY`` (comma-separated, the first encrypts, all decrypt), else
  ``$CREDPATH_HOME/fernet.key``, generated on the first write with mode 0600 (atomically: a private temp
  file hard-linked into place, so concurrent first writers agree on one key and no reader sees it half
  written). :meth:`rotate_fernet_key` re-encrypts every value with the first key, compare-and-swap per row,
  so a concurrent write is never reverted.
- The schema is created on the first write and versioned in ``credpath_schema_version``; an uncached read
  costs one SELECT, a write one statement (``INSERT .. ON CONFLICT`` on SQLite and PostgreSQL), batches one
  ``SELECT .. IN`` per 500 ids. ``credpath.db`` (and so its journal, which SQLite creates with the
  database's mode) is created 0600.
- A read of an absent SQLite metastore is a miss and creates nothing (no directory, database or key).
- Multi-team (Airflow 3.2+): each row has an owner, ``team_name`` (NULL: global; schema v2). Reads follow
  Airflow 3.3.2's MetastoreBackend, ``WHERE id = :id AND (team_name = :team OR team_name IS NULL)``: a
  team sees its rows and the global ones, ``team_name=None`` the global ones only, for single and batch
  reads and prefetch. Ids stay unique across owners (as in Airflow). Listing without a team lists every
  id, with a team the ids it can read. ``set_connection(conn, team_name=...)`` /
  ``set_variable(..., team_name=...)`` store the owner; an overwrite never changes a row's owner (a
  ConfigError; delete the row first), so a team's value is never silently made global or another's.
- Schema v1 (before teams) is upgraded in place (``ALTER TABLE .. ADD COLUMN team_name``, rows kept, all
  global) when the SQLAlchemy engine is first made: by the first write on SQLite, by the first use on
  other databases. The stdlib read path reads a v1 file as it is (every row global) and notices the
  column as soon as another process adds it.

This module maps the two tables (Airflow's shape): reads, writes, listing, schema and health. Reads of
an SQLite file go through the standard library's ``sqlite3`` (:mod:`credpath.backends._sqlite_reader`, for
start-up); writes, key rotation (:mod:`credpath.backends._key_rotation`) and every other URL (PostgreSQL,
...) use SQLAlchemy. Where the Fernet keys come from, and the key file's life: ``credpath._keys.KeySource``.

SQLAlchemy and cryptography are imported on first use, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from credpath._keys import KeySource, generate_key
from credpath._settings import credpath_home
from credpath.backends._per_process import PerProcess
from credpath.backends._sql import ALL_TEAMS, ID_COLUMN, TEAM_COLUMN, FernetKeyError, SqlTablesBackend
from credpath.backends._sqlite_reader import Absent, SqliteReader, stdlib_path
from credpath.errors import CredpathError
from credpath.model import Connection, Variable
from credpath.protocol import Capability, Serialization

if TYPE_CHECKING:
    from sqlalchemy import Engine, Table
    from sqlalchemy.engine import URL

    from credpath.backends import _key_rotation
    from credpath.protocol import Kind

__all__ = ["FernetKeyError", "MetastoreBackend", "credpath_home", "generate_key", "tables"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

CONNECTION_TABLE = "credpath_connection"
VARIABLE_TABLE = "credpath_variable"
VERSION_TABLE = "credpath_schema_version"
DB_FILE_NAME = "credpath.db"

#: Seconds an SQLite write waits for another process's write lock (writes are one short statement).
SQLITE_WRITE_WAIT = 30.0
#: Values of ``team_name`` that can be stored: the column's (and Airflow's ``team.name``) length.
_TEAM_MAX = 50
_TABLE_NAMES = {"connection": CONNECTION_TABLE, "variable": VARIABLE_TABLE, "version": VERSION_TABLE}


def _add_team_name(conn: Any) -> None:
    """v1 -> v2: the owner column (NULL: global, so every existing row stays visible as before)."""
    for table in (CONNECTION_TABLE, VARIABLE_TABLE):
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {TEAM_COLUMN} VARCHAR({_TEAM_MAX})")


#: version -> callable(connection) upgrading the schema from version-1 to version (in one transaction).
MIGRATIONS: dict[int, Any] = {2: _add_team_name}


@functools.cache  # built once, on first use (not at import: SQLAlchemy stays unimported)
def tables() -> dict[str, Table]:
    """The metastore's tables (SQLAlchemy Core), built on first use."""
    from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func

    metadata = MetaData()
    return {
        "version": Table(
            VERSION_TABLE,
            metadata,
            Column("version", Integer, primary_key=True, autoincrement=False),
            Column("applied_at", DateTime(timezone=True), server_default=func.current_timestamp()),
        ),
        "connection": Table(
            CONNECTION_TABLE,
            metadata,
            Column("conn_id", String(250), primary_key=True),
            Column("conn_type", String(500)),
            Column("description", Text),
            Column("host", Text),
            Column("login", Text),
            Column("password", Text),  # Fernet token
            Column("schema", String(500)),
            Column("port", Integer),
            Column("extra", Text),  # Fernet token
            Column(TEAM_COLUMN, String(_TEAM_MAX), nullable=True),  # owner (v2); NULL: global
            Column("updated_at", DateTime(timezone=True), server_default=func.current_timestamp()),
        ),
        "variable": Table(
            VARIABLE_TABLE,
            metadata,
            Column("key", String(250), primary_key=True),
            Column("value", Text, nullable=False),  # Fernet token
            Column("description", Text),
            Column(TEAM_COLUMN, String(_TEAM_MAX), nullable=True),  # owner (v2); NULL: global
            Column("updated_at", DateTime(timezone=True), server_default=func.current_timestamp()),
        ),
    }


class MetastoreBackend(SqlTablesBackend):
    """Connections and variables in a SQL database (SQLite by default), secrets encrypted at rest.

    :param url: SQLAlchemy URL; default ``$CREDPATH_METASTORE_URL``, else SQLite in ``$CREDPATH_HOME``.
    :param fernet_key: comma-separated Fernet keys; default ``$CREDPATH_FERNET_KEY`` or the key file.
    """

    alias: ClassVar[str] = "metastore"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {"write", "list", "batch", "prefetch", "structured"}
    )
    store_name: ClassVar[str] = "credpath metastore"
    keeps_variable_descriptions: ClassVar[bool] = True  # set_variable(description=): migrations copy it
    _tables = staticmethod(tables)
    _driver_hint: ClassVar[str] = "; for PostgreSQL install 'credpath[postgres]'"
    _key_hint: ClassVar[str] = (
        " (32 url-safe base64-encoded bytes; see credpath.backends.metastore.generate_key())"
    )
    _reason_cut_mark: ClassVar[str] = "..."

    def _configure(self, url: str | None) -> None:
        self.home = credpath_home()
        env_url = os.environ.get("CREDPATH_METASTORE_URL") or None
        # The default file is named by the variable that would change it.
        self._url_setting = "url" if url else "CREDPATH_METASTORE_URL"
        self.url = url or env_url or f"sqlite:///{self.home / DB_FILE_NAME}"
        self._default_url = not (url or env_url)
        self.schema_version: int | None = None
        path = stdlib_path(self.url)
        #: Reads of an SQLite file with the stdlib ``sqlite3`` module, or None (SQLAlchemy reads).
        self._reader = (
            None
            if path is None
            else SqliteReader(path, self.url, tables=_TABLE_NAMES, opened=self._opened, error=self.error)
        )
        # SQLite: one write transaction at a time in this process (a forked child's lock is its own).
        self._write_locks: PerProcess[threading.Lock] = PerProcess(threading.Lock)
        self._keys_checked = False
        self._fernet_keys = KeySource(self._fernet_key_arg, self)

    @property
    def safe_url(self) -> str:
        if self._reader is not None:
            return self.url  # an SQLite file URL holds no password (and needs no SQLAlchemy to show)
        return super().safe_url

    # --- plumbing ------------------------------------------------------------------------------------

    def _sqlite_file(self) -> Path | None:
        """The database file when the URL names an SQLite file (SQLAlchemy parses the URLs the stdlib
        path does not take), else None."""
        if self._reader is not None:
            return self._reader.path
        if not self.url.startswith("sqlite"):
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.url)
        except ArgumentError:
            return None  # the engine reports the bad URL
        database = url.database
        if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return None
        if database.startswith("file:") or url.query.get("uri"):
            return None  # an SQLite URI: its options decide where the file is
        return Path(database).expanduser()

    def _absent(self) -> bool:
        path = self._sqlite_file()
        return path is not None and not path.exists()

    def _create_database_file(self, path: Path) -> None:
        """Create the directory (0700) and an empty database file (0600) before SQLite opens it: SQLite
        would create the file 0644, and its journal and WAL files take the database file's mode."""
        where = "CREDPATH_HOME" if self._default_url else self._url_setting
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise self.config_error(
                f"cannot create the directory {path.parent} ({where}): {exc.strerror or type(exc).__name__}"
            ) from None
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise self.config_error(
                f"cannot create the database file {path} ({where}): {exc.strerror or type(exc).__name__}"
            ) from None

    def _engine_options(self, url: URL) -> dict[str, Any]:
        path = self._sqlite_file()
        if path is not None:
            self._create_database_file(path)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            # One in-memory database per connection otherwise: threads (migrate) would each see an
            # empty one. A single shared connection keeps one database for the whole engine.
            from sqlalchemy.pool import StaticPool

            return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        if url.get_backend_name() == "sqlite":
            # How long a write waits for another process's write lock before it fails.
            return {"connect_args": {"timeout": SQLITE_WRITE_WAIT}}
        return {}

    def _engine_ready(self, engine: Engine) -> None:
        with self._db("connecting / checking the schema"):
            self._ensure_schema(engine)
        self._team_columns = {"connection": True, "variable": True}  # v2, made or upgraded just now
        log.debug("metastore: using %s (schema v%s)", self.safe_url, self.schema_version)

    def _ensure_schema(self, engine: Engine) -> None:
        from sqlalchemy import func, insert, inspect, select
        from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

        t = tables()
        version_col = t["version"].c.version
        with engine.connect() as conn:
            try:
                # The common case costs one query: the schema exists and is current.
                version = conn.execute(select(func.max(version_col))).scalar()
            except (OperationalError, ProgrammingError):
                # No schema yet (or another process is making it): decided below, under the lock.
                conn.rollback()
                version = None
        if version is None:
            try:
                with engine.begin() as conn:
                    # Concurrent first writers (2-4 processes on a fresh CREDPATH_HOME) raced here: one
                    # saw the tables of another half made ("table already exists", "no such table").
                    # One creator at a time; the others wait, then find the schema made.
                    self._schema_lock(conn)
                    if inspect(conn).has_table(VERSION_TABLE):
                        version = conn.execute(select(func.max(version_col))).scalar()
                    if version is None:
                        t["version"].metadata.create_all(conn, checkfirst=True)
                        conn.execute(insert(t["version"]).values(version=SCHEMA_VERSION))
                        log.debug("metastore: created schema v%d", SCHEMA_VERSION)
                        version = SCHEMA_VERSION
            except (IntegrityError, OperationalError, ProgrammingError):
                # Other databases: another process created it at the same time; read what it wrote.
                with engine.connect() as conn:
                    version = conn.execute(select(func.max(version_col))).scalar()
                if version is None:
                    raise
        self._check_version(version)
        if version < SCHEMA_VERSION:
            with engine.begin() as conn:
                # One upgrader at a time (as the creation above); a second one finds it done.
                self._schema_lock(conn)
                version = conn.execute(select(func.max(version_col))).scalar() or version
                self._check_version(version)  # a newer credpath may have upgraded it meanwhile
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[target](conn)
                    conn.execute(insert(t["version"]).values(version=target))
                    log.info("metastore: upgraded %s to schema v%d", self.safe_url, target)
            version = SCHEMA_VERSION
        self.schema_version = version

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Any]:
        """A write transaction. On SQLite, one writer at a time: this process's threads queue on a lock,
        and BEGIN IMMEDIATE takes the file's write lock up front under the busy timeout. A deferred
        transaction takes it only at its first write, where SQLite may answer "database is locked" at
        once instead of waiting (it does not wait on a lock upgrade that could deadlock); under
        `migrate --concurrency 8` that lost 1-3 writes in 2,000."""
        engine = self.engine
        if engine.dialect.name != "sqlite":
            with engine.begin() as conn:
                yield conn
            return
        with self._write_locks.get(), engine.begin() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @staticmethod
    def _schema_lock(conn: Any) -> None:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7325041)")  # "credpath schema"

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise self.error(
                f"{self.safe_url}: database schema version {version} is newer than this credpath "
                f"supports ({SCHEMA_VERSION}); upgrade credpath"
            )

    def _opened(self, version: int) -> None:
        """The stdlib read path opened the file at schema ``version``."""
        self._check_version(version)
        self.schema_version = version

    def _check_key_setting(self) -> None:
        """A configured (not file) key that is malformed is a configuration error on every read, not
        only when a value is decrypted; checked without importing cryptography."""
        if self._keys_checked:
            return
        configured = self._fernet_keys.configured()
        if configured is not None:
            self._checked_keys(*configured)
        self._keys_checked = True

    def prepare(self) -> None:
        if self._reader is not None:
            self._reader.prepare()
        else:
            super().prepare()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        super().close()

    # --- Fernet --------------------------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        return self._fernet_keys.path

    def _key_source(self, create: bool = False) -> tuple[str, str]:
        return self._fernet_keys.load(create)

    @property
    def key_origin(self) -> str:
        """Where the keys come from: ``"fernet_key"``, ``"CREDPATH_FERNET_KEY"`` or ``"file"``."""
        return self._fernet_keys.origin

    def key_count(self) -> int:
        """How many keys the configured key setting holds (checked; a missing key file: an error)."""
        return len(self._checked_keys(*self._key_source()))

    def _keys_changed(self) -> bool:
        if not self._fernet_keys.replaced():
            return False
        with self._lock:
            self._fernet = None
            self._fernet_keys.forget()
        return True

    def _no_key_error(self, setting: str) -> CredpathError:
        return self.config_error(f"{setting} holds no Fernet key")

    def _has_encrypted_rows(self) -> bool:
        from sqlalchemy import select

        t = tables()
        conns, variables = t["connection"], t["variable"]
        # Only rows holding a Fernet token count: a connection with neither password nor extra was stored
        # without a key, and must not make the first secret's writer refuse to create one.
        encrypted = (
            select(1).select_from(conns).where(conns.c.password.is_not(None) | conns.c.extra.is_not(None)),
            select(1).select_from(variables),
        )
        with self._db("checking for stored values"), self.engine.connect() as conn:
            return any(conn.execute(query.limit(1)).first() is not None for query in encrypted)

    def _encrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        self._keys_changed()  # a write encrypts with the key file as it is now (a stat per value)
        return self._fernet_obj(create=True).encrypt(value.encode("utf-8")).decode("ascii")

    # --- model -> rows ------------------------------------------------------------------------------

    def _connection_values(self, conn: Connection) -> dict[str, Any]:
        return {
            "conn_type": conn.conn_type,
            "description": conn.description,
            "host": conn.host,
            "login": conn.login,
            "password": self._encrypt(conn.password),
            "schema": conn.schema,
            "port": conn.port,
            "extra": self._encrypt(conn.extra),
        }

    # --- reads ---------------------------------------------------------------------------------------
    # An uncached read costs one SELECT; a read of an absent SQLite metastore costs a stat() and is a miss.

    def _rows(self, kind: Kind, ids: list[str] | None = None, team: Any = None) -> list[Any]:
        self._check_key_setting()
        if ids is not None:
            ids = list(dict.fromkeys(i for i in ids if self.wants(kind, i)))
            if not ids:
                return []
        if self._reader is not None:
            return self._reader.select(kind, f"reading {kind}s", ids, team)
        if self._absent():
            return []
        return super()._rows(kind, ids, team)

    def _row(self, kind: Kind, key: str, team: str | None) -> Any:
        self._check_key_setting()
        if self._reader is not None:
            rows = self._reader.select(kind, f"reading {kind} {key!r}", [key], team)
            return rows[0] if rows else None
        if self._absent():
            return None
        t = tables()[kind]
        with self._db(f"reading {kind} {key!r}"), self.engine.connect() as conn:
            return conn.execute(self._select(kind, team).where(t.c[ID_COLUMN[kind]] == key)).first()

    def _list(self, kind: Kind, team: Any = ALL_TEAMS) -> list[str]:
        self._check_key_setting()
        if self._reader is not None:
            return [i for i in self._reader.ids(kind, team) if self.wants(kind, i)]
        if self._absent():
            return []
        return super()._list(kind, team)

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        if not self.wants("connection", conn_id):
            return None
        row = self._row("connection", conn_id, team_name)
        return None if row is None else self._adapted(conn_id, self._row_to_connection(row))

    def get_variable_record(self, key: str, team_name: str | None = None) -> Variable | None:
        if not self.wants("variable", key):
            return None
        row = self._row("variable", key, team_name)
        return None if row is None else self._row_to_variable(row)

    # --- writes --------------------------------------------------------------------------------------

    def _owner(self, team_name: Any) -> str | None:
        if team_name is not None and (
            not isinstance(team_name, str) or not team_name or len(team_name) > _TEAM_MAX
        ):
            raise self.config_error(f"team_name must be a non-empty string of at most {_TEAM_MAX} characters")
        return team_name

    def _write(
        self,
        table: Table,
        pk: str,
        key: str,
        values: dict[str, Any],
        overwrite: bool,
        kind: str,
        team: str | None,
    ) -> None:
        from sqlalchemy import func, insert, update
        from sqlalchemy.exc import IntegrityError

        engine = self.engine
        row = {pk: key, **values, TEAM_COLUMN: team}
        owner = table.c[TEAM_COLUMN]
        dialect = engine.dialect.name
        # An overwrite keeps the row's owner and refuses another owner's row (Airflow's upsert silently
        # keeps the old owner: a team's new value would be served to whoever could read the old one).
        owner_error = self.config_error(
            f"{kind} {key!r} exists with another owner (global or another team); an overwrite never "
            "changes the owner: delete it first"
        )
        with self._db(f"writing {kind} {key!r}"):
            try:
                with self._writing() as conn:
                    if not overwrite:
                        conn.execute(insert(table).values(row))
                    elif dialect in ("sqlite", "postgresql"):
                        upsert: Any
                        if dialect == "sqlite":
                            from sqlalchemy.dialects.sqlite import insert as upsert
                        else:
                            from sqlalchemy.dialects.postgresql import insert as upsert
                        stmt = upsert(table).values(row)
                        changes: dict[str, Any] = {name: stmt.excluded[name] for name in values}
                        changes["updated_at"] = func.current_timestamp()
                        same_owner = owner.is_not_distinct_from(stmt.excluded[TEAM_COLUMN])
                        stmt = stmt.on_conflict_do_update(index_elements=[pk], set_=changes, where=same_owner)
                        # Nothing written: the WHERE kept another owner's row. psycopg reports no rowcount
                        # for an upsert, so PostgreSQL says it with RETURNING (SQLite < 3.35 has none).
                        if dialect == "postgresql":
                            written = conn.execute(stmt.returning(table.c[pk])).first() is not None
                        else:
                            written = conn.execute(stmt).rowcount > 0
                        if not written:
                            raise owner_error
                    else:
                        changed = conn.execute(
                            update(table)
                            .where(table.c[pk] == key, owner.is_not_distinct_from(team))
                            .values(**values, updated_at=func.current_timestamp())
                        )
                        if changed.rowcount == 0:
                            conn.execute(insert(table).values(row))
            except IntegrityError:
                if not overwrite:
                    raise self.config_error(f"{kind} {key!r} already exists") from None
                if dialect not in ("sqlite", "postgresql"):
                    raise owner_error from None  # the UPDATE found no row of this owner, the INSERT a row
                raise
        log.debug("metastore: wrote %s %r", kind, key)

    def set_connection(
        self,
        conn: Connection,
        *,
        overwrite: bool = True,
        serialization: Serialization = "json",
        team_name: str | None = None,
    ) -> None:
        """Store ``conn``'s fields (``serialization`` does not apply: rows, not strings); ``team_name``:
        its owner (None: global, readable by every team)."""
        if not conn.conn_id:
            raise self.config_error("a connection needs a conn_id to be stored")
        team = self._owner(team_name)
        values = self._connection_values(conn)
        self._write(tables()["connection"], "conn_id", conn.conn_id, values, overwrite, "connection", team)

    def set_variable(
        self,
        key: str,
        value: str,
        *,
        overwrite: bool = True,
        description: str | None = None,
        team_name: str | None = None,
    ) -> None:
        """Store a variable; ``team_name``: its owner (None: global, readable by every team)."""
        if not isinstance(key, str) or not key:
            raise self.config_error("a variable needs a non-empty key")
        if not isinstance(value, str):
            raise self.config_error(
                f"the value of variable {key!r} must be a string, got {type(value).__name__}"
            )
        team = self._owner(team_name)
        values = {"value": self._encrypt(value), "description": description}
        self._write(tables()["variable"], "key", key, values, overwrite, "variable", team)

    def _delete(self, table: str, column: str, key: str, kind: str) -> bool:
        from sqlalchemy import delete

        if self._absent():
            return False  # nothing to delete, and nothing to create

        t = tables()[table]
        with self._db(f"deleting {kind} {key!r}"), self._writing() as conn:
            return bool(conn.execute(delete(t).where(t.c[column] == key)).rowcount > 0)

    def delete_connection(self, conn_id: str) -> bool:
        return self._delete("connection", "conn_id", conn_id, "connection")

    def delete_variable(self, key: str) -> bool:
        return self._delete("variable", "key", key, "variable")

    # --- key rotation --------------------------------------------------------------------------------

    def rotate_fernet_key(self) -> int:
        """Re-encrypt with the first configured key every stored secret that another key encrypted;
        returns the number of values re-encrypted (a value the first key already encrypted is left as
        it is: a rotation with nothing to do writes nothing and returns 0).

        Never reverts a concurrent write: every row is rewritten with a compare-and-swap on the tokens it
        was read with (``UPDATE .. WHERE id = :id AND password IS NOT DISTINCT FROM :old ..``), in one
        transaction. A row another process changed since it was read is re-read under a row lock
        (``SELECT .. FOR UPDATE`` on PostgreSQL; on SQLite the transaction already holds the write lock)
        and rotated as it now is. Every value is decrypted before anything is written: if one cannot be,
        nothing is changed. (The work is :mod:`credpath.backends._key_rotation`'s.)
        """
        from credpath.backends import _key_rotation

        return _key_rotation.rotate_fernet_key(self)

    def rotate_key_file(self) -> int | None:
        """Replace the generated key file's key with a new one; returns the number of values re-encrypted,
        or None when there is nothing to rotate (no key file and no stored secret).

        Crash-safe: the file first holds ``NEW,OLD`` (written whole, fsynced), then every value is
        re-encrypted with NEW, then the file holds NEW alone; at any point every value decrypts with what
        the file holds. A file that already holds several keys is an interrupted rotation: it is finished
        with the file's first key, no new key is made. Only for keys from the file: a configured key
        (``fernet_key``, ``CREDPATH_FERNET_KEY``) is rotated with :meth:`rotate_fernet_key`.
        """
        from credpath.backends import _key_rotation

        return _key_rotation.rotate_key_file(self)

    def _rotation_plan(self) -> list[_key_rotation.Plan]:
        """The tables a key rotation rewrites, with their encrypted columns."""
        from credpath.backends import _key_rotation

        t = tables()
        return [
            _key_rotation.Plan("connection", t["connection"], "conn_id", ("password", "extra")),
            _key_rotation.Plan("variable", t["variable"], "key", ("value",)),
        ]

    # --- health --------------------------------------------------------------------------------------

    def check(self) -> str:
        """Connects, checks the schema and decrypts one stored value (proves the Fernet key)."""
        path = self._sqlite_file()
        if path is not None and not path.exists():
            return f"{self.safe_url}: no database yet (created on the first write)"
        if self._reader is not None:
            # The stdlib read path: SQLAlchemy's import alone cost 0.3-1 s of the check.
            try:
                secret = self._reader.first_secret()
            except Absent:
                return f"{self.safe_url}: no schema yet (made on the first write)"
            self._check_key_setting()
        else:
            secret = self._first_secret()
        if secret is not None:
            kind, key, token = secret
            field = "value" if kind == "variable" else "password"
            self._decrypt(token, f"the {field} of {kind} {key!r}")
        return f"{self.safe_url} (schema v{self.schema_version})"

    def _first_secret(self) -> tuple[Kind, str, str] | None:
        """(kind, id, Fernet token) of one stored secret (a variable's value, else a connection's
        password), or None."""
        from sqlalchemy import select

        variables, conns = tables()["variable"], tables()["connection"]
        with self._db("checking"), self.engine.connect() as conn:
            row = conn.execute(select(variables.c.key, variables.c.value).limit(1)).first()
            if row is not None:
                return "variable", row.key, row.value
            row = conn.execute(
                select(conns.c.conn_id, conns.c.password).where(conns.c.password.is_not(None)).limit(1)
            ).first()
        return None if row is None else ("connection", row.conn_id, row.password)

    def describe(self) -> str:
        return f"metastore {self.safe_url}"
