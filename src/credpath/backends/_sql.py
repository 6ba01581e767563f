"""Shared reading for the SQL backends (``metastore`` and ``airflow-db``).

Both read tables of the same shape, ``connection`` (conn_id, conn_type, description, host, login, password,
schema, port, extra) and ``variable`` (key, value, description), with Fernet-encrypted fields, over
SQLAlchemy Core. :class:`SqlTablesBackend` holds the engine, the Fernet keys, the error wrapping and every
read; a subclass supplies its tables, where its URL and keys come from, and the wording that differs.

SQLAlchemy and cryptography are imported on first use, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Unpack

from credpath._keys import KeySettingError, parse_keys
from credpath.backends._per_process import PerProcess
from credpath.errors import ConfigError, CredpathError
from credpath.model import Connection, Variable
from credpath.protocol import BackendOptions, BaseBackend

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

    from credpath.protocol import Kind

__all__ = [
    "ALL_TEAMS",
    "ID_COLUMN",
    "TEAM_COLUMN",
    "FernetKeyError",
    "SqlTablesBackend",
    "team_visible",
]


_BATCH = 500  # ids per SELECT .. IN (SQLite allows 32766 bound parameters, PostgreSQL 65535)
#: The id column of each kind's table (the table's key in ``_tables()`` is the kind).
ID_COLUMN: dict[str, str] = {"connection": "conn_id", "variable": "key"}
#: The owner column (Airflow 3.2+ multi-team): NULL is a global row, else the team that owns the row.
TEAM_COLUMN = "team_name"


class _AllTeams:
    """``team`` of a listing: every row, whoever owns it (the administrator's view; ids only)."""

    def __repr__(self) -> str:
        return "ALL_TEAMS"


#: Passed as ``team`` to read every row regardless of owner (listings without a team).
ALL_TEAMS: Any = _AllTeams()


def team_visible(row_team: str | None, team: str | None) -> bool:
    """Airflow 3.3.2's MetastoreBackend rule, ``team_name = :team OR team_name IS NULL``: a global row is
    visible to every caller, a team's row only to that team (never to another team or to no team)."""
    return row_team is None or (team is not None and row_team == team)


class FernetKeyError(ConfigError):
    """A stored value does not decrypt with the configured key(s): wrong key, or the key it was written
    with was rotated away. A configuration error (the search path propagates it; the CLI exits 2); the
    message names the key setting, never a key or a value."""

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


def _reason(exc: BaseException, cut_mark: str = "") -> str:
    """A one-line reason for a database error: the driver's first line, never SQL parameters."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    # SQLAlchemy appends "[SQL: ...]" and a background link; keep the driver's sentence only.
    text = text.split(" [SQL:", 1)[0].split("(Background on this error", 1)[0].strip()
    if len(text) > 200:
        text = text[:200] + cut_mark
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__


def _fresh_pool(engine: Engine) -> Engine:
    """A forked child's engine: a new, empty pool. The inherited one's connections are the parent's too
    (a query on one reads the parent's answer, and closing one sends the server a goodbye that ends the
    parent's session), so they are let go without closing, as SQLAlchemy advises for ``os.fork``."""
    engine.dispose(close=False)
    return engine


class SqlTablesBackend(BaseBackend):
    """Connections and variables read from a SQL database's two tables, secrets as Fernet tokens.

    Subclasses set ``_tables`` (and ``_value_column`` if not "value"), implement :meth:`_configure`,
    :meth:`_key_source` and :meth:`_no_key_error`, and may override the other hooks; messages speak in
    the backend's one voice (``self.error`` / ``self.config_error``).
    """

    #: ``staticmethod`` returning ``{"connection": Table, "variable": Table, ...}``.
    _tables: ClassVar[Any]
    #: The variable table's value column.
    _value_column: ClassVar[str] = "value"
    #: Appended to "no database driver" and "not a valid Fernet key" errors.
    _driver_hint: ClassVar[str] = ""
    _key_hint: ClassVar[str] = ""
    #: Appended to a driver message cut at 200 characters.
    _reason_cut_mark: ClassVar[str] = ""

    def __init__(
        self,
        url: str | None = None,
        fernet_key: str | None = None,
        **options: Unpack[BackendOptions],
    ) -> None:
        super().__init__(**options)
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise self.config_error("url must be a non-empty SQLAlchemy URL string")
        if fernet_key is not None and not isinstance(fernet_key, str):
            raise self.config_error("fernet_key must be a string of comma-separated Fernet keys")
        self._fernet_key_arg = fernet_key
        self.url: str = ""
        self._url_setting = "url"  # what to name in URL errors: "url" or the environment variable
        self._key_setting = ""  # where the working keys came from, once loaded
        # The engine of this process: a forked child gets a fresh pool on the same engine (see _adopt).
        # Its lock is also the Fernet keys' (reentrant: loading the metastore's key may create the engine,
        # to look for stored rows, under it).
        self._engines: PerProcess[Engine] = PerProcess(self._create_engine, _fresh_pool, reentrant=True)
        self._fernet: MultiFernet | None = None
        #: kind -> the table has ``team_name`` (set by ``_engine_ready``; absent: an older schema).
        self._team_columns: dict[str, bool] = {}
        self._configure(url)

    # --- what subclasses supply ----------------------------------------------------------------------

    def _configure(self, url: str | None) -> None:  # pragma: no cover - abstract
        """Set ``self.url`` and ``self._url_setting``, and what else the subclass reads at construction."""
        raise NotImplementedError

    def _key_source(self, create: bool = False) -> tuple[str, str]:  # pragma: no cover - abstract
        """(comma-separated keys, the setting they came from); ``create``: for a write (the metastore
        may then generate its key file; a read never creates anything)."""
        raise NotImplementedError

    def _no_key_error(self, setting: str) -> CredpathError:  # pragma: no cover - abstract
        raise NotImplementedError

    def _engine_options(self, url: URL) -> dict[str, Any]:
        """Extra ``create_engine`` options; may check or prepare the database's location first."""
        return {}

    def _engine_ready(self, engine: Engine) -> None:
        """Runs once on the new engine before it is used: finds which tables have ``team_name`` (the
        metastore checks and upgrades its schema instead)."""
        from sqlalchemy import inspect
        from sqlalchemy.exc import NoSuchTableError

        with self._db("inspecting the tables"):
            inspector = inspect(engine)
            for kind in ID_COLUMN:
                try:
                    names = {c["name"] for c in inspector.get_columns(self._tables()[kind].name)}
                except NoSuchTableError:
                    names = set()  # the read reports the missing table
                self._team_columns[kind] = TEAM_COLUMN in names

    def _encrypted(self, row: Any, column: str) -> bool | None:
        """Whether ``column`` of ``row`` holds a Fernet token rather than the plain value."""
        return True

    def _team_scoped(self, kind: Kind) -> bool:
        """Whether ``kind``'s table has the ``team_name`` column (decided when the engine is made)."""
        return self._team_columns.get(kind, False)

    # --- plumbing ------------------------------------------------------------------------------------

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (safe for messages and logs)."""
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL: show only its scheme
            return self.url.split(":", 1)[0] + ":..."

    @contextlib.contextmanager
    def _db(self, action: str) -> Iterator[None]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except CredpathError:
            raise
        except SQLAlchemyError as exc:
            raise self.error(
                f"{self.safe_url}: {action} failed: {_reason(exc, self._reason_cut_mark)}"
            ) from None

    @property
    def _lock(self) -> threading.Lock | threading.RLock:
        """This process's lock (a thread of a forked child's parent may have held the parent's)."""
        return self._engines.lock

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine of this process, created on first use."""
        return self._engines.get()

    def _create_engine(self) -> Engine:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(self.url)
        except ArgumentError:
            raise self.config_error(f"{self._url_setting} is not a valid SQLAlchemy URL") from None
        options = self._engine_options(url)
        try:
            # hide_parameters: SQLAlchemy errors and echo logs would otherwise show bound values.
            engine = create_engine(url, hide_parameters=True, **options)
        except (NoSuchModuleError, ImportError) as exc:
            raise self.config_error(
                f"{self._url_setting}: no database driver for {url.drivername!r} ({type(exc).__name__})"
                f"{self._driver_hint}"
            ) from None
        except ArgumentError as exc:
            raise self.config_error(
                f"{self._url_setting} is not usable: {_reason(exc, self._reason_cut_mark)}"
            ) from None
        self._engine_ready(engine)
        return engine

    def prepare(self) -> None:
        """Imports SQLAlchemy and builds the table objects (no connection is opened)."""
        self._tables()

    def close(self) -> None:
        engine = self._engines.clear()
        if engine is not None:
            engine.dispose()

    # --- Fernet --------------------------------------------------------------------------------------

    def _fernet_obj(self, create: bool = False) -> MultiFernet:
        if self._fernet is None:
            with self._lock:
                if self._fernet is None:
                    self._fernet = self._load_fernet(create)
        return self._fernet

    def _checked_keys(self, text: str, setting: str) -> list[bytes]:
        try:
            return parse_keys(text, setting)
        except KeySettingError as exc:
            if exc.position is None:
                raise self._no_key_error(setting) from None
            raise self.config_error(
                f"key #{exc.position} of {setting} is not a valid Fernet key{self._key_hint}"
            ) from None

    def _load_fernet(self, create: bool = False) -> MultiFernet:
        from cryptography.fernet import Fernet, MultiFernet

        text, setting = self._key_source(create)
        keys = self._checked_keys(text, setting)
        self._key_setting = setting
        return MultiFernet([Fernet(key) for key in keys])

    def _keys_changed(self) -> bool:
        """Whether the keys loaded earlier may be out of date (the metastore's key file was replaced):
        then they are dropped and the next use loads them again."""
        return False

    def _decrypt(self, token: str | None, what: str, encrypted: bool | None = True) -> str | None:
        if token is None or not encrypted:
            return token
        from cryptography.fernet import InvalidToken

        fernet = self._fernet_obj()  # outside the try: a missing key is its own ConfigError
        try:
            try:
                return fernet.decrypt(token.encode("ascii")).decode("utf-8")
            except InvalidToken:
                if not self._keys_changed():
                    raise
            # A rotation in another process replaced the key file since this one read it.
            fernet = self._fernet_obj()
            return fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise FernetKeyError(
                f"{self.label}: cannot decrypt {what} with the Fernet key(s) from {self._key_setting}: "
                "wrong key, or the key it was encrypted with was rotated away",
                backend=self.name,
            ) from None

    # --- rows -> model -------------------------------------------------------------------------------

    def _row_to_connection(self, row: Any) -> Connection:
        where = f"connection {row.conn_id!r}"
        return Connection(
            conn_id=row.conn_id,
            conn_type=row.conn_type,
            description=row.description,
            host=row.host,
            login=row.login,
            password=self._decrypt(
                row.password, f"the password of {where}", self._encrypted(row, "password")
            ),
            schema=row.schema,
            port=row.port,
            extra=self._decrypt(row.extra, f"the extra of {where}", self._encrypted(row, "extra")),
        )

    def _row_to_variable(self, row: Any) -> Variable:
        column = self._value_column
        token = getattr(row, column)
        value = self._decrypt(token, f"the value of variable {row.key!r}", self._encrypted(row, column))
        return Variable(key=row.key, value=value or "", description=row.description)

    def _adapted(self, conn_id: str, conn: Connection) -> Connection:
        """``conn`` as its ``connection_format`` reads it, when one is set."""
        if self._connection_adapter is not None:
            return self.deserialize_connection(conn_id, conn.to_json())
        return conn

    def _select(self, kind: Kind, team: Any) -> Any:
        """``SELECT`` of ``kind``'s columns, scoped to what ``team`` may read (Airflow's rule) when the
        table has owners; ``team`` :data:`ALL_TEAMS` selects every row."""
        from sqlalchemy import or_, select

        t = self._tables()[kind]
        scoped = self._team_scoped(kind)
        stmt = select(*(c for c in t.c if scoped or c.name != TEAM_COLUMN))
        if scoped and team is not ALL_TEAMS:
            owner = t.c[TEAM_COLUMN]
            stmt = stmt.where(or_(owner == team, owner.is_(None)))  # as airflow/secrets/metastore.py
        return stmt

    def _rows(self, kind: Kind, ids: list[str] | None = None, team: Any = None) -> list[Any]:
        """The rows of ``kind``'s table that ``team`` may read, or those whose id is among ``ids`` (and
        wanted by the lookup pattern): one ``SELECT .. WHERE id IN (..)`` per 500 ids."""
        if ids is None:
            with self._db(f"reading {kind}s"), self.engine.connect() as conn:
                return list(conn.execute(self._select(kind, team)).all())
        wanted = list(dict.fromkeys(i for i in ids if self.wants(kind, i)))
        rows: list[Any] = []
        if not wanted:
            return rows
        with self._db(f"reading {kind}s"), self.engine.connect() as conn:
            id_column = self._tables()[kind].c[ID_COLUMN[kind]]
            stmt = self._select(kind, team)
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                rows.extend(conn.execute(stmt.where(id_column.in_(chunk))))
        return rows

    # --- reads ---------------------------------------------------------------------------------------
    # team_name (Airflow 3.2+ multi-team): a read sees the team's rows and the global ones (team_name
    # NULL); team_name=None sees the global rows only. A table without the column: every row is global.

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        if not self.wants("connection", conn_id):
            return None
        return self.get_connections([conn_id], team_name=team_name).get(conn_id)

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        conn = self.get_connection(conn_id, team_name)  # JSON, not a URI: it keeps the description
        return None if conn is None else conn.to_json()

    def get_variable_record(self, key: str, team_name: str | None = None) -> Variable | None:
        if not self.wants("variable", key):
            return None
        return self.get_variable_records([key], team_name=team_name).get(key)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        record = self.get_variable_record(key, team_name)
        return None if record is None else record.value

    def get_config(self, key: str) -> str | None:
        return None  # neither database holds secrets-backend config (Airflow's metadata database neither)

    # --- batches (the same team rule as single reads: the search path's prefetch relies on it) ----------

    def get_connections(self, ids: list[str], *, team_name: str | None = None) -> dict[str, Connection]:
        """Hits among ``ids``: one ``SELECT .. WHERE conn_id IN (..)`` per 500 ids."""
        return {row.conn_id: self._row_to_connection(row) for row in self._rows("connection", ids, team_name)}

    def get_conn_values(self, ids: list[str], *, team_name: str | None = None) -> dict[str, str]:
        return {i: c.to_json() for i, c in self.get_connections(ids, team_name=team_name).items()}

    def get_variable_records(self, keys: list[str], *, team_name: str | None = None) -> dict[str, Variable]:
        return {row.key: self._row_to_variable(row) for row in self._rows("variable", keys, team_name)}

    def get_variables(self, keys: list[str], *, team_name: str | None = None) -> dict[str, str]:
        return {k: v.value for k, v in self.get_variable_records(keys, team_name=team_name).items()}

    def prefetch_connections(self, *, team_name: str | None = None) -> dict[str, str]:
        return {
            r.conn_id: self._row_to_connection(r).to_json()
            for r in self._rows("connection", None, team_name)
            if self.wants("connection", r.conn_id)
        }

    def prefetch_variables(self, *, team_name: str | None = None) -> dict[str, str]:
        return {
            r.key: self._row_to_variable(r).value
            for r in self._rows("variable", None, team_name)
            if self.wants("variable", r.key)
        }

    # --- listing -------------------------------------------------------------------------------------
    # Ids only. Without a team: every id, whoever owns it (as ``airflow connections list``); with a team:
    # the ids that team can read (its own and the global ones).

    def _list(self, kind: Kind, team: Any = ALL_TEAMS) -> list[str]:
        from sqlalchemy import or_, select

        t = self._tables()[kind]
        col = t.c[ID_COLUMN[kind]]
        with self._db(f"listing {kind}s"), self.engine.connect() as conn:
            stmt = select(col).order_by(col)
            if team is not ALL_TEAMS and self._team_scoped(kind):
                owner = t.c[TEAM_COLUMN]
                stmt = stmt.where(or_(owner == team, owner.is_(None)))
            ids = conn.execute(stmt).scalars().all()
        return [i for i in ids if self.wants(kind, i)]

    def list_connections(self, *, team_name: str | None = None) -> list[str]:
        return self._list("connection", ALL_TEAMS if team_name is None else team_name)

    def list_variables(self, *, team_name: str | None = None) -> list[str]:
        return self._list("variable", ALL_TEAMS if team_name is None else team_name)
