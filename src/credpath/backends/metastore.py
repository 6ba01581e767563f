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

import functools
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from credpath.backends._sql import ID_COLUMN, SqlTablesBackend
from credpath.errors import BackendError, ConfigError, CredpathError
from credpath.model import Connection, Variable

if TYPE_CHECKING:
    from sqlalchemy import Engine, Table
    from sqlalchemy.engine import URL

    from credpath.protocol import Kind

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: version -> callable(connection) upgrading the schema from version-1 to version (none yet).
MIGRATIONS: dict[int, Any] = {}

CONNECTION_TABLE = "credpath_connection"
VARIABLE_TABLE = "credpath_variable"
VERSION_TABLE = "credpath_schema_version"
KEY_FILE_NAME = "fernet.key"
DB_FILE_NAME = "credpath.db"


class FernetKeyError(BackendError):
    """A stored value cannot be decrypted with the configured key(s): wrong key, or rotated away."""


def credpath_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CREDPATH_HOME") or "~/.credpath").expanduser()


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


class MetastoreBackend(SqlTablesBackend):
    """Connections and variables in a SQL database (SQLite by default), secrets encrypted at rest.

    :param url: SQLAlchemy URL; default ``$CREDPATH_METASTORE_URL``, else SQLite in ``$CREDPATH_HOME``.
    :param fernet_key: comma-separated Fernet keys; default ``$CREDPATH_FERNET_KEY`` or the key file.
    """

    alias: ClassVar[str] = "metastore"
    store_name: ClassVar[str] = "credpath metastore"
    _tables = staticmethod(tables)
    _decrypt_error: ClassVar[type[BackendError]] = FernetKeyError
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
        self.schema_version: int | None = None

    # --- plumbing ------------------------------------------------------------------------------------

    def _engine_options(self, url: URL) -> dict[str, Any]:
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            if not url.database.startswith("file:"):
                Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            # One in-memory database per connection otherwise: threads (migrate) would each see an
            # empty one. A single shared connection keeps one database for the whole engine.
            from sqlalchemy.pool import StaticPool

            return {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        return {}

    def _engine_ready(self, engine: Engine) -> None:
        with self._db("connecting / checking the schema"):
            self._ensure_schema(engine)
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

    def _key_source(self) -> tuple[str, str]:
        if self._fernet_key_arg is not None:
            return self._fernet_key_arg, "fernet_key"
        if os.environ.get("CREDPATH_FERNET_KEY"):
            return os.environ["CREDPATH_FERNET_KEY"], "CREDPATH_FERNET_KEY"
        return self._key_from_file(), str(self.key_file)

    def _no_key_error(self, setting: str) -> CredpathError:
        return ConfigError(f"metastore: {setting} holds no Fernet key")

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
    # One row by primary key (an uncached read costs one SELECT); batches, prefetch and listing are shared.

    def _row(self, kind: Kind, key: str) -> Any:
        from sqlalchemy import select

        t = tables()[kind]
        with self._db(f"reading {kind} {key!r}"), self.engine.connect() as conn:
            return conn.execute(select(t).where(t.c[ID_COLUMN[kind]] == key)).first()

    def get_connection(self, conn_id: str) -> Connection | None:
        if not self.wants("connection", conn_id):
            return None
        row = self._row("connection", conn_id)
        return None if row is None else self._adapted(conn_id, self._row_to_connection(row))

    def get_variable_record(self, key: str) -> Variable | None:
        if not self.wants("variable", key):
            return None
        row = self._row("variable", key)
        return None if row is None else self._row_to_variable(row)

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

    def describe(self) -> str:
        return f"metastore {self.safe_url}"


def generate_key() -> str:
    """A new Fernet key (url-safe base64 text), for ``CREDPATH_FERNET_KEY``."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")
