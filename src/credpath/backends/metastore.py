"""credpath's own metastore: connections and variables in any SQLAlchemy database, encrypted with Fernet.

- Default: embedded SQLite at ``$CREDPATH_HOME/credpath.db`` (``CREDPATH_HOME`` defaults to ``~/.credpath``);
  any SQLAlchemy URL via kwarg ``url`` or ``CREDPATH_METASTORE_URL``.
- Passwords, extras and variable values are stored as Fernet tokens (cryptography's ``MultiFernet``). Keys:
  kwarg ``fernet_key`` or ``CREDPATH_FERNET_KEY`` (comma-separated, the first encrypts, all decrypt), else
  ``$CREDPATH_HOME/fernet.key``, generated on first use with mode 0600. :meth:`rotate_fernet_key`
  re-encrypts every value with the first key.
- The schema is created on first use and versioned in ``credpath_schema_version``; an uncached read costs one
  SELECT, a write one statement (``INSERT .. ON CONFLICT`` on SQLite and PostgreSQL), batches one
  ``SELECT .. IN`` per 500 ids.

SQLAlchemy and cryptography are imported on first use, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from credpath.errors import BackendError, ConfigError, CredpathError
from credpath.model import Connection, Variable
from credpath.protocol import BaseBackend

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet
    from sqlalchemy import Engine, Table

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: version -> callable(connection) upgrading the schema from version-1 to version (none yet).
MIGRATIONS: dict[int, Any] = {}

CONNECTION_TABLE = "credpath_connection"
VARIABLE_TABLE = "credpath_variable"
VERSION_TABLE = "credpath_schema_version"
KEY_FILE_NAME = "fernet.key"
DB_FILE_NAME = "credpath.db"
_BATCH = 500  # ids per SELECT .. IN (SQLite allows 32766 bound parameters, PostgreSQL 65535)


class FernetKeyError(BackendError):
    """A stored value cannot be decrypted with the configured key(s): wrong key, or rotated away."""


def credpath_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CREDPATH_HOME") or "~/.credpath").expanduser()


_tables: dict[str, Table] | None = None


def tables() -> dict[str, Table]:
    """The metastore's tables (SQLAlchemy Core), built on first use."""
    global _tables
    if _tables is None:
        from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func

        metadata = MetaData()
        _tables = {
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
                Column("updated_at", DateTime(timezone=True), server_default=func.current_timestamp()),
            ),
            "variable": Table(
                VARIABLE_TABLE,
                metadata,
                Column("key", String(250), primary_key=True),
                Column("value", Text, nullable=False),  # Fernet token
                Column("description", Text),
                Column("updated_at", DateTime(timezone=True), server_default=func.current_timestamp()),
            ),
        }
    return _tables


def _reason(exc: BaseException) -> str:
    """A one-line reason for a database error: the driver's first line, never SQL parameters."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    # SQLAlchemy appends "[SQL: ...]" and a background link; keep the driver's sentence only.
    text = text.split(" [SQL:", 1)[0].split("(Background on this error", 1)[0].strip()
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__


class MetastoreBackend(BaseBackend):
    """Connections and variables in a SQL database (SQLite by default), secrets encrypted at rest.

    :param url: SQLAlchemy URL; default ``$CREDPATH_METASTORE_URL``, else SQLite in ``$CREDPATH_HOME``.
    :param fernet_key: comma-separated Fernet keys; default ``$CREDPATH_FERNET_KEY`` or the key file.
    """

    alias: ClassVar[str] = "metastore"
    store_name: ClassVar[str] = "credpath metastore"

    def __init__(
        self,
        url: str | None = None,
        fernet_key: str | None = None,
        *,
        connections_lookup_pattern: str | None = None,
        variables_lookup_pattern: str | None = None,
        config_lookup_pattern: str | None = None,
        connection_format: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            connections_lookup_pattern=connections_lookup_pattern,
            variables_lookup_pattern=variables_lookup_pattern,
            config_lookup_pattern=config_lookup_pattern,
            connection_format=connection_format,
        )
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ConfigError("metastore: url must be a non-empty SQLAlchemy URL string")
        if fernet_key is not None and not isinstance(fernet_key, str):
            raise ConfigError("metastore: fernet_key must be a string of comma-separated Fernet keys")
        self.home = credpath_home()
        env_url = os.environ.get("CREDPATH_METASTORE_URL") or None
        self._url_setting = "url" if url else ("CREDPATH_METASTORE_URL" if env_url else "default")
        self.url: str = url or env_url or f"sqlite:///{self.home / DB_FILE_NAME}"
        self._fernet_key_arg = fernet_key
        self._engine: Engine | None = None
        self._fernet: MultiFernet | None = None
        self._key_setting = ""
        self._lock = threading.RLock()
        self.schema_version: int | None = None

    # --- plumbing ------------------------------------------------------------------------------------

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (safe for messages and logs)."""
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL: show only its scheme
            return self.url.split(":", 1)[0] + ":..."

    def _fail(self, action: str, exc: BaseException) -> BackendError:
        return BackendError(
            f"metastore ({self.safe_url}): {action} failed: {_reason(exc)}", backend=self.name
        )

    @contextlib.contextmanager
    def _db(self, action: str) -> Iterator[None]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except CredpathError:
            raise
        except SQLAlchemyError as exc:
            raise self._fail(action, exc) from None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, created (and the schema checked) on first use."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Engine:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        setting = "url" if self._url_setting == "url" else "CREDPATH_METASTORE_URL"
        try:
            url = make_url(self.url)
        except ArgumentError:
            raise ConfigError(f"metastore: {setting} is not a valid SQLAlchemy URL") from None
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            if not url.database.startswith("file:"):
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # hide_parameters: SQLAlchemy errors and echo logs would otherwise show bound values.
            options: dict[str, Any] = {"hide_parameters": True}
            if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
                # One in-memory database per connection otherwise: threads (migrate) would each see an
                # empty one. A single shared connection keeps one database for the whole engine.
                from sqlalchemy.pool import StaticPool

                options.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
            engine = create_engine(url, **options)
        except (NoSuchModuleError, ImportError) as exc:
            raise ConfigError(
                f"metastore: no database driver for {url.drivername!r} ({type(exc).__name__}); "
                "for PostgreSQL install 'credpath[postgres]'"
            ) from None
        except ArgumentError as exc:
            raise ConfigError(f"metastore: {setting} is not usable: {_reason(exc)}") from None
        with self._db("connecting / checking the schema"):
            self._ensure_schema(engine)
        log.debug("metastore: using %s (schema v%s)", self.safe_url, self.schema_version)
        return engine

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
                conn.rollback()
                if inspect(conn).has_table(VERSION_TABLE):
                    raise
                version = None
        if version is None:
            try:
                with engine.begin() as conn:
                    t["version"].metadata.create_all(conn, checkfirst=True)
                    conn.execute(insert(t["version"]).values(version=SCHEMA_VERSION))
                log.debug("metastore: created schema v%d", SCHEMA_VERSION)
                version = SCHEMA_VERSION
            except (IntegrityError, OperationalError, ProgrammingError):
                # Another process created it at the same time: read what it wrote.
                with engine.connect() as conn:
                    version = conn.execute(select(func.max(version_col))).scalar()
                if version is None:
                    raise
        if version > SCHEMA_VERSION:
            raise BackendError(
                f"metastore ({self.safe_url}): database schema version {version} is newer than this credpath "
                f"supports ({SCHEMA_VERSION}); upgrade credpath",
                backend=self.name,
            )
        if version < SCHEMA_VERSION:
            with engine.begin() as conn:
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[target](conn)
                    conn.execute(insert(t["version"]).values(version=target))
            version = SCHEMA_VERSION
        self.schema_version = version

    # --- Fernet --------------------------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        return self.home / KEY_FILE_NAME

    def _fernet_obj(self) -> MultiFernet:
        if self._fernet is None:
            with self._lock:
                if self._fernet is None:
                    self._fernet = self._load_fernet()
        return self._fernet

    def _load_fernet(self) -> MultiFernet:
        from cryptography.fernet import Fernet, MultiFernet

        if self._fernet_key_arg is not None:
            text, setting = self._fernet_key_arg, "fernet_key"
        elif os.environ.get("CREDPATH_FERNET_KEY"):
            text, setting = os.environ["CREDPATH_FERNET_KEY"], "CREDPATH_FERNET_KEY"
        else:
            text, setting = self._key_from_file(), str(self.key_file)
        keys = [k.strip() for k in text.split(",") if k.strip()]
        if not keys:
            raise ConfigError(f"metastore: {setting} holds no Fernet key")
        fernets = []
        for position, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, TypeError, UnicodeEncodeError):
                raise ConfigError(
                    f"metastore: key #{position} of {setting} is not a valid Fernet key "
                    "(32 url-safe base64-encoded bytes; see credpath.backends.metastore.generate_key())"
                ) from None
        self._key_setting = setting
        return MultiFernet(fernets)

    def _key_from_file(self) -> str:
        path = self.key_file
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            return self._generate_key_file(path)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("metastore: key file %s is readable by group/others; chmod 600 it", path)
        try:
            return path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"metastore: cannot read the key file {path} ({type(exc).__name__})") from None

    def _generate_key_file(self, path: Path) -> str:
        from cryptography.fernet import Fernet

        # A new key cannot decrypt what an old one wrote: refuse instead of orphaning existing data.
        if self._has_encrypted_rows():
            raise ConfigError(
                f"metastore ({self.safe_url}) holds encrypted values but no Fernet key is configured and "
                f"{path} is missing; set CREDPATH_FERNET_KEY (or fernet_key) or restore the key file"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Fernet.generate_key().decode("ascii")
        # Write a private temp file, then link it into place: atomic, and a concurrent creator wins cleanly.
        fd, tmp = tempfile.mkstemp(prefix=".fernet-", dir=path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(key + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                return path.read_text(encoding="ascii").strip()
        finally:
            os.unlink(tmp)
        log.info("metastore: generated a new Fernet key in %s (mode 0600); back it up", path)
        return key

    def _has_encrypted_rows(self) -> bool:
        from sqlalchemy import select

        t = tables()
        with self._db("checking for stored values"), self.engine.connect() as conn:
            for table in (t["connection"], t["variable"]):
                if conn.execute(select(1).select_from(table).limit(1)).first() is not None:
                    return True
        return False

    def _encrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        return self._fernet_obj().encrypt(value.encode("utf-8")).decode("ascii")

    def _decrypt(self, token: str | None, what: str) -> str | None:
        if token is None:
            return None
        from cryptography.fernet import InvalidToken

        fernet = self._fernet_obj()
        try:
            return fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise FernetKeyError(
                f"metastore ({self.safe_url}): cannot decrypt {what} with the Fernet key(s) from "
                f"{self._key_setting}: wrong key, or the key it was encrypted with was rotated away",
                backend=self.name,
            ) from None

    # --- rows <-> model ------------------------------------------------------------------------------

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

    def _row_to_connection(self, row: Any) -> Connection:
        where = f"connection {row.conn_id!r}"
        return Connection(
            conn_id=row.conn_id,
            conn_type=row.conn_type,
            description=row.description,
            host=row.host,
            login=row.login,
            password=self._decrypt(row.password, f"the password of {where}"),
            schema=row.schema,
            port=row.port,
            extra=self._decrypt(row.extra, f"the extra of {where}"),
        )

    def _row_to_variable(self, row: Any) -> Variable:
        value = self._decrypt(row.value, f"the value of variable {row.key!r}")
        return Variable(key=row.key, value=value or "", description=row.description)

    # --- reads ---------------------------------------------------------------------------------------

    def get_connection(self, conn_id: str) -> Connection | None:
        if not self.wants("connection", conn_id):
            return None
        from sqlalchemy import select

        t = tables()["connection"]
        with self._db(f"reading connection {conn_id!r}"), self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.conn_id == conn_id)).first()
        if row is None:
            return None
        found = self._row_to_connection(row)
        if self._connection_adapter is not None:
            return self.deserialize_connection(conn_id, found.to_json())
        return found

    def get_conn_value(self, conn_id: str) -> str | None:
        # JSON rather than a URI: it keeps the description.
        conn = self.get_connection(conn_id)
        return None if conn is None else conn.to_json()

    def get_variable_record(self, key: str) -> Variable | None:
        if not self.wants("variable", key):
            return None
        from sqlalchemy import select

        t = tables()["variable"]
        with self._db(f"reading variable {key!r}"), self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.key == key)).first()
        return None if row is None else self._row_to_variable(row)

    def get_variable(self, key: str) -> str | None:
        record = self.get_variable_record(key)
        return None if record is None else record.value

    def get_config(self, key: str) -> str | None:
        return None  # the metastore holds no config (Airflow's neither)

    # --- batches -------------------------------------------------------------------------------------

    def get_connections(self, ids: list[str]) -> dict[str, Connection]:
        """Hits among ``ids``: one ``SELECT .. WHERE conn_id IN (..)`` per 500 ids."""
        from sqlalchemy import select

        wanted = list(dict.fromkeys(i for i in ids if self.wants("connection", i)))
        t = tables()["connection"]
        found: dict[str, Connection] = {}
        with self._db("reading connections"), self.engine.connect() as conn:
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                for row in conn.execute(select(t).where(t.c.conn_id.in_(chunk))):
                    found[row.conn_id] = self._row_to_connection(row)
        return found

    def get_conn_values(self, ids: list[str]) -> dict[str, str]:
        return {i: c.to_json() for i, c in self.get_connections(ids).items()}

    def get_variable_records(self, keys: list[str]) -> dict[str, Variable]:
        from sqlalchemy import select

        wanted = list(dict.fromkeys(k for k in keys if self.wants("variable", k)))
        t = tables()["variable"]
        found: dict[str, Variable] = {}
        with self._db("reading variables"), self.engine.connect() as conn:
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                for row in conn.execute(select(t).where(t.c.key.in_(chunk))):
                    found[row.key] = self._row_to_variable(row)
        return found

    def get_variables(self, keys: list[str]) -> dict[str, str]:
        return {k: v.value for k, v in self.get_variable_records(keys).items()}

    def prefetch_connections(self) -> dict[str, str]:
        from sqlalchemy import select

        t = tables()["connection"]
        with self._db("reading connections"), self.engine.connect() as conn:
            rows = conn.execute(select(t)).all()
        return {
            r.conn_id: self._row_to_connection(r).to_json()
            for r in rows
            if self.wants("connection", r.conn_id)
        }

    def prefetch_variables(self) -> dict[str, str]:
        from sqlalchemy import select

        t = tables()["variable"]
        with self._db("reading variables"), self.engine.connect() as conn:
            rows = conn.execute(select(t)).all()
        return {r.key: self._row_to_variable(r).value for r in rows if self.wants("variable", r.key)}

    # --- listing -------------------------------------------------------------------------------------

    def _list(self, table: str, column: str, kind: str) -> list[str]:
        from sqlalchemy import select

        col = tables()[table].c[column]
        with self._db(f"listing {table}s"), self.engine.connect() as conn:
            ids = conn.execute(select(col).order_by(col)).scalars().all()
        return [i for i in ids if self.wants(kind, i)]  # type: ignore[arg-type]

    def list_connections(self) -> list[str]:
        return self._list("connection", "conn_id", "connection")

    def list_variables(self) -> list[str]:
        return self._list("variable", "key", "variable")

    # --- writes --------------------------------------------------------------------------------------

    def _write(
        self, table: Table, pk: str, key: str, values: dict[str, Any], overwrite: bool, kind: str
    ) -> None:
        from sqlalchemy import func, insert, update
        from sqlalchemy.exc import IntegrityError

        engine = self.engine
        row = {pk: key, **values}
        dialect = engine.dialect.name
        with self._db(f"writing {kind} {key!r}"):
            try:
                with engine.begin() as conn:
                    if not overwrite:
                        conn.execute(insert(table).values(row))
                    elif dialect in ("sqlite", "postgresql"):
                        if dialect == "sqlite":
                            from sqlalchemy.dialects.sqlite import insert as upsert
                        else:
                            from sqlalchemy.dialects.postgresql import insert as upsert
                        stmt = upsert(table).values(row)
                        changes = {name: stmt.excluded[name] for name in values}
                        changes["updated_at"] = func.current_timestamp()
                        conn.execute(stmt.on_conflict_do_update(index_elements=[pk], set_=changes))
                    else:
                        changed = conn.execute(
                            update(table)
                            .where(table.c[pk] == key)
                            .values(**values, updated_at=func.current_timestamp())
                        )
                        if changed.rowcount == 0:
                            conn.execute(insert(table).values(row))
            except IntegrityError:
                if not overwrite:
                    raise ConfigError(f"{kind} {key!r} already exists in the metastore") from None
                raise
        log.debug("metastore: wrote %s %r", kind, key)

    def set_connection(self, conn: Connection, *, overwrite: bool = True) -> None:
        if not conn.conn_id:
            raise ConfigError("metastore: a connection needs a conn_id to be stored")
        values = self._connection_values(conn)
        self._write(tables()["connection"], "conn_id", conn.conn_id, values, overwrite, "connection")

    def set_variable(
        self, key: str, value: str, *, overwrite: bool = True, description: str | None = None
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigError("metastore: a variable needs a non-empty key")
        if not isinstance(value, str):
            raise ConfigError(
                f"metastore: the value of variable {key!r} must be a string, got {type(value).__name__}"
            )
        values = {"value": self._encrypt(value), "description": description}
        self._write(tables()["variable"], "key", key, values, overwrite, "variable")

    def _delete(self, table: str, column: str, key: str, kind: str) -> bool:
        from sqlalchemy import delete

        t = tables()[table]
        with self._db(f"deleting {kind} {key!r}"), self.engine.begin() as conn:
            return conn.execute(delete(t).where(t.c[column] == key)).rowcount > 0

    def delete_connection(self, conn_id: str) -> bool:
        return self._delete("connection", "conn_id", conn_id, "connection")

    def delete_variable(self, key: str) -> bool:
        return self._delete("variable", "key", key, "variable")

    # --- key rotation --------------------------------------------------------------------------------

    def rotate_fernet_key(self) -> int:
        """Re-encrypt every stored secret with the first configured key; returns the number of rows rewritten.

        One transaction: if any value cannot be decrypted, nothing is changed.
        """
        from cryptography.fernet import InvalidToken
        from sqlalchemy import bindparam, select, update

        fernet = self._fernet_obj()
        t = tables()

        def rotate(token: str | None, what: str) -> str | None:
            if token is None:
                return None
            try:
                return fernet.rotate(token.encode("ascii")).decode("ascii")
            except (InvalidToken, ValueError):
                raise FernetKeyError(
                    f"metastore ({self.safe_url}): cannot rotate {what}: "
                    f"no key in {self._key_setting} decrypts it; "
                    "nothing was changed",
                    backend=self.name,
                ) from None

        with self._db("rotating the Fernet key"), self.engine.begin() as conn:
            conns = t["connection"]
            conn_rows = [
                {
                    "b_id": r.conn_id,
                    "b_password": rotate(r.password, f"the password of connection {r.conn_id!r}"),
                    "b_extra": rotate(r.extra, f"the extra of connection {r.conn_id!r}"),
                }
                for r in conn.execute(select(conns.c.conn_id, conns.c.password, conns.c.extra))
            ]
            if conn_rows:
                conn.execute(
                    update(conns)
                    .where(conns.c.conn_id == bindparam("b_id"))
                    .values(password=bindparam("b_password"), extra=bindparam("b_extra")),
                    conn_rows,
                )
            variables = t["variable"]
            var_rows = [
                {"b_key": r.key, "b_value": rotate(r.value, f"the value of variable {r.key!r}")}
                for r in conn.execute(select(variables.c.key, variables.c.value))
            ]
            if var_rows:
                conn.execute(
                    update(variables)
                    .where(variables.c.key == bindparam("b_key"))
                    .values(value=bindparam("b_value")),
                    var_rows,
                )
        log.info("metastore: re-encrypted %d connection(s) and %d variable(s)", len(conn_rows), len(var_rows))
        return len(conn_rows) + len(var_rows)

    # --- health --------------------------------------------------------------------------------------

    def check(self) -> str:
        """Connects, checks the schema and decrypts one stored value (proves the Fernet key)."""
        from sqlalchemy import select

        t = tables()
        with self._db("checking"), self.engine.connect() as conn:
            row = conn.execute(select(t["variable"].c.key, t["variable"].c.value).limit(1)).first()
            crow = None
            if row is None:
                crow = conn.execute(
                    select(t["connection"].c.conn_id, t["connection"].c.password)
                    .where(t["connection"].c.password.is_not(None))
                    .limit(1)
                ).first()
        if row is not None:
            self._decrypt(row.value, f"the value of variable {row.key!r}")
        elif crow is not None:
            self._decrypt(crow.password, f"the password of connection {crow.conn_id!r}")
        return f"{self.safe_url} (schema v{self.schema_version})"

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def describe(self) -> str:
        return f"metastore {self.safe_url}"


def generate_key() -> str:
    """A new Fernet key (url-safe base64 text), for ``CREDPATH_FERNET_KEY``."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")
