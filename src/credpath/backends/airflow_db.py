"""Read connections and variables straight from an Apache Airflow metadata database (2.x and 3.x).

The source of ``credpath migrate --from airflow-db``: SQLAlchemy Core over Airflow's ``connection`` and
``variable`` tables, any SQLAlchemy URL (SQLite, PostgreSQL, MySQL). Values are decrypted as Airflow does:
``password`` when ``is_encrypted``, ``extra`` when ``is_extra_encrypted``, ``val`` when ``is_encrypted``,
with the Fernet key(s) from kwarg ``fernet_key`` or ``AIRFLOW__CORE__FERNET_KEY`` (comma-separated: a
MultiFernet, so rotated keys still decrypt). Read-only, by design: Airflow owns that schema.

FIX over Airflow: a variable that cannot be decrypted is an error naming the key (Airflow logs and returns
``None``, which a migration would copy as "missing").
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from credpath.errors import BackendError, ConfigError, CredpathError
from credpath.model import Connection, Variable
from credpath.protocol import BaseBackend

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet
    from sqlalchemy import Engine, Table

log = logging.getLogger(__name__)

_BATCH = 500  # ids per SELECT .. IN
_tables: dict[str, Table] | None = None


def tables() -> dict[str, Table]:
    """The columns credpath reads from Airflow's tables (present since Airflow 2.0; extra ones ignored)."""
    global _tables
    if _tables is None:
        from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, Text

        metadata = MetaData()
        _tables = {
            "connection": Table(
                "connection",
                metadata,
                Column("conn_id", String(250)),
                Column("conn_type", String(500)),
                Column("description", Text),
                Column("host", String(500)),
                Column("schema", String(500)),
                Column("login", Text),
                Column("password", Text),
                Column("port", Integer),
                Column("extra", Text),
                Column("is_encrypted", Boolean),
                Column("is_extra_encrypted", Boolean),
            ),
            "variable": Table(
                "variable",
                metadata,
                Column("key", String(250)),
                Column("val", Text),
                Column("description", Text),
                Column("is_encrypted", Boolean),
            ),
        }
    return _tables


def _reason(exc: BaseException) -> str:
    """The driver's first line, never SQL parameters (the engine hides them too)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    text = text.split(" [SQL:", 1)[0].split("(Background on this error", 1)[0].strip()
    return f"{type(orig).__name__}: {text[:200]}" if text else type(orig).__name__


class AirflowDatabaseBackend(BaseBackend):
    """Airflow's metadata database as a read-only source.

    :param url: SQLAlchemy URL of the Airflow database; default ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``.
    :param fernet_key: comma-separated Fernet keys; default ``AIRFLOW__CORE__FERNET_KEY``.
    """

    alias: ClassVar[str] = "airflow-db"
    store_name: ClassVar[str] = "Airflow metadata database"

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
            raise ConfigError("airflow-db: url must be a non-empty SQLAlchemy URL string")
        if fernet_key is not None and not isinstance(fernet_key, str):
            raise ConfigError("airflow-db: fernet_key must be a string of comma-separated Fernet keys")
        env_url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or None
        if not url and not env_url:
            raise ConfigError("airflow-db: url is required (or set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")
        self._url_setting = "url" if url else "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
        self.url: str = url or env_url or ""
        if fernet_key is not None:
            self._key_text, self._key_setting = fernet_key, "fernet_key"
        else:
            self._key_text = os.environ.get("AIRFLOW__CORE__FERNET_KEY", "")
            self._key_setting = "AIRFLOW__CORE__FERNET_KEY"
        self._engine: Engine | None = None
        self._fernet: MultiFernet | None = None
        self._lock = threading.Lock()

    # --- plumbing ------------------------------------------------------------------------------------

    @property
    def safe_url(self) -> str:
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return self.url.split(":", 1)[0] + ":..."

    @contextlib.contextmanager
    def _db(self, action: str) -> Iterator[None]:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except CredpathError:
            raise
        except SQLAlchemyError as exc:
            raise BackendError(
                f"airflow-db ({self.safe_url}): {action} failed: {_reason(exc)}", backend=self.name
            ) from None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Engine:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(self.url)
        except ArgumentError:
            raise ConfigError(f"airflow-db: {self._url_setting} is not a valid SQLAlchemy URL") from None
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            if not url.database.startswith("file:") and not os.path.isfile(url.database):
                # SQLite would create an empty file and report "no such table": say what is wrong.
                raise ConfigError(f"airflow-db: {self._url_setting}: no database file at {url.database}")
        try:
            # hide_parameters: errors and echo logs would otherwise show bound values.
            return create_engine(url, hide_parameters=True)
        except (NoSuchModuleError, ImportError) as exc:
            raise ConfigError(
                f"airflow-db: no database driver for {url.drivername!r} ({type(exc).__name__})"
            ) from None
        except ArgumentError as exc:
            raise ConfigError(f"airflow-db: {self._url_setting} is not usable: {_reason(exc)}") from None

    def _fernet_obj(self) -> MultiFernet:
        if self._fernet is None:
            with self._lock:
                if self._fernet is None:
                    self._fernet = self._load_fernet()
        return self._fernet

    def _load_fernet(self) -> MultiFernet:
        from cryptography.fernet import Fernet, MultiFernet

        keys = [k.strip() for k in self._key_text.split(",") if k.strip()]
        if not keys:
            raise BackendError(
                f"airflow-db ({self.safe_url}): values are encrypted but no Fernet key is configured; "
                "set fernet_key or AIRFLOW__CORE__FERNET_KEY",
                backend=self.name,
            )
        fernets = []
        for position, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key.encode("ascii")))
            except (ValueError, TypeError, UnicodeEncodeError):
                raise ConfigError(
                    f"airflow-db: key #{position} of {self._key_setting} is not a valid Fernet key"
                ) from None
        return MultiFernet(fernets)

    def _decrypt(self, token: str | None, encrypted: bool | None, what: str) -> str | None:
        if token is None or not encrypted:
            return token
        from cryptography.fernet import InvalidToken

        fernet = self._fernet_obj()
        try:
            return fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError, ValueError):
            raise BackendError(
                f"airflow-db ({self.safe_url}): cannot decrypt {what} with the Fernet key(s) from "
                f"{self._key_setting}: wrong key, or the key it was encrypted with was rotated away",
                backend=self.name,
            ) from None

    def _row_to_connection(self, row: Any) -> Connection:
        where = f"connection {row.conn_id!r}"
        conn = Connection(
            conn_id=row.conn_id,
            conn_type=row.conn_type,
            description=row.description,
            host=row.host,
            login=row.login,
            password=self._decrypt(row.password, row.is_encrypted, f"the password of {where}"),
            schema=row.schema,
            port=row.port,
            extra=self._decrypt(row.extra, row.is_extra_encrypted, f"the extra of {where}"),
        )
        if self._connection_adapter is not None:
            return self.deserialize_connection(row.conn_id, conn.to_json())
        return conn

    def _row_to_variable(self, row: Any) -> Variable:
        value = self._decrypt(row.val, row.is_encrypted, f"the value of variable {row.key!r}")
        return Variable(key=row.key, value=value or "", description=row.description)

    # --- reads ---------------------------------------------------------------------------------------

    def get_connection(self, conn_id: str) -> Connection | None:
        if not self.wants("connection", conn_id):
            return None
        return self.get_connections([conn_id]).get(conn_id)

    def get_conn_value(self, conn_id: str) -> str | None:
        conn = self.get_connection(conn_id)  # JSON, not a URI: it keeps the description
        return None if conn is None else conn.to_json()

    def get_variable_record(self, key: str) -> Variable | None:
        if not self.wants("variable", key):
            return None
        return self.get_variable_records([key]).get(key)

    def get_variable(self, key: str) -> str | None:
        record = self.get_variable_record(key)
        return None if record is None else record.value

    def get_config(self, key: str) -> str | None:
        return None  # Airflow's database holds no secrets-backend config

    # --- batches -------------------------------------------------------------------------------------

    def get_connections(self, ids: list[str]) -> dict[str, Connection]:
        """Hits among ``ids``: one ``SELECT .. WHERE conn_id IN (..)`` per 500 ids."""
        from sqlalchemy import select

        wanted = list(dict.fromkeys(i for i in ids if self.wants("connection", i)))
        t = tables()["connection"]
        rows: list[Any] = []
        with self._db("reading connections"), self.engine.connect() as conn:
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                rows.extend(conn.execute(select(t).where(t.c.conn_id.in_(chunk))))
        return {row.conn_id: self._row_to_connection(row) for row in rows}

    def get_conn_values(self, ids: list[str]) -> dict[str, str]:
        return {i: c.to_json() for i, c in self.get_connections(ids).items()}

    def get_variable_records(self, keys: list[str]) -> dict[str, Variable]:
        from sqlalchemy import select

        wanted = list(dict.fromkeys(k for k in keys if self.wants("variable", k)))
        t = tables()["variable"]
        rows: list[Any] = []
        with self._db("reading variables"), self.engine.connect() as conn:
            for start in range(0, len(wanted), _BATCH):
                chunk = wanted[start : start + _BATCH]
                rows.extend(conn.execute(select(t).where(t.c.key.in_(chunk))))
        return {row.key: self._row_to_variable(row) for row in rows}

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

    # --- misc ----------------------------------------------------------------------------------------

    def check(self) -> str:
        from sqlalchemy import func, select

        t = tables()
        with self._db("checking the tables"), self.engine.connect() as conn:
            conns = conn.execute(select(func.count()).select_from(t["connection"])).scalar()
            variables = conn.execute(select(func.count()).select_from(t["variable"])).scalar()
        return f"{self.safe_url}: {conns} connection(s), {variables} variable(s)"

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def describe(self) -> str:
        return f"airflow-db ({self.safe_url})"
