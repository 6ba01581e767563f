"""Read connections and variables straight from an Apache Airflow metadata database (2.x and 3.x).

The source of ``credpath migrate --from airflow-db``: SQLAlchemy Core over Airflow's ``connection`` and
``variable`` tables, any SQLAlchemy URL (SQLite, PostgreSQL, MySQL). Values are decrypted as Airflow does:
``password`` when ``is_encrypted``, ``extra`` when ``is_extra_encrypted``, ``val`` when ``is_encrypted``,
with the Fernet key(s) from kwarg ``fernet_key`` or ``AIRFLOW__CORE__FERNET_KEY`` (comma-separated: a
MultiFernet, so rotated keys still decrypt). Read-only, by design: Airflow owns that schema.

Multi-team (Airflow 3.2+): every read takes ``team_name`` and filters exactly as Airflow 3.3.2's
``MetastoreBackend`` (``WHERE conn_id = :id AND (team_name = :team OR team_name IS NULL)``): a team sees
its own rows and the global ones, ``team_name=None`` the global ones only; batch reads and prefetch apply
the same rule. Listing without a team lists every id (as ``airflow connections list``), with a team the
ids that team can read. A database without the ``team_name`` column (Airflow 2.x-3.1; 3.1's
``team_id`` is not read) is read team-agnostically, as before; the column is looked for once, when the
engine is created.

FIX over Airflow: a variable that cannot be decrypted is an error naming the key (Airflow logs and returns
``None``, which a migration would copy as "missing"). A wrong or missing key is a configuration error
(:class:`~credpath.backends._sql.FernetKeyError`, a ConfigError).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any, ClassVar

from credpath.backends._sql import FernetKeyError, SqlTablesBackend
from credpath.errors import CredpathError
from credpath.model import Connection
from credpath.protocol import Capability

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.engine import URL

__all__ = ["AirflowDatabaseBackend"]


log = logging.getLogger(__name__)


@functools.cache  # built once, on first use (not at import: SQLAlchemy stays unimported)
def tables() -> dict[str, Table]:
    """The columns credpath reads from Airflow's tables (present since Airflow 2.0, ``team_name`` since
    3.2; extra ones ignored)."""
    from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, Text

    metadata = MetaData()
    return {
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
            Column("team_name", String(50)),  # Airflow 3.2+; selected only when the database has it
        ),
        "variable": Table(
            "variable",
            metadata,
            Column("key", String(250)),
            Column("val", Text),
            Column("description", Text),
            Column("is_encrypted", Boolean),
            Column("team_name", String(50)),  # Airflow 3.2+
        ),
    }


class AirflowDatabaseBackend(SqlTablesBackend):
    """Airflow's metadata database as a read-only source.

    :param url: SQLAlchemy URL of the Airflow database; default ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``.
    :param fernet_key: comma-separated Fernet keys; default ``AIRFLOW__CORE__FERNET_KEY``.
    """

    alias: ClassVar[str] = "airflow-db"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"list", "batch", "prefetch", "structured"})
    store_name: ClassVar[str] = "Airflow metadata database"
    _tables = staticmethod(tables)
    _value_column: ClassVar[str] = "val"

    def _configure(self, url: str | None) -> None:
        env_url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or None
        if not url and not env_url:
            raise self.config_error("url is required (or set AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)")
        self._url_setting = "url" if url else "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"
        self.url = url or env_url or ""
        # The environment's key is read at construction, like the URL.
        if self._fernet_key_arg is not None:
            self._key_text, self._key_setting = self._fernet_key_arg, "fernet_key"
        else:
            self._key_text = os.environ.get("AIRFLOW__CORE__FERNET_KEY", "")
            self._key_setting = "AIRFLOW__CORE__FERNET_KEY"

    def _key_source(self, create: bool = False) -> tuple[str, str]:
        return self._key_text, self._key_setting

    def _no_key_error(self, setting: str) -> CredpathError:
        # A configuration error: the values are there, the setting that would decrypt them is not.
        return FernetKeyError(
            f"{self.label}: values are encrypted but no Fernet key is configured; "
            "set fernet_key or AIRFLOW__CORE__FERNET_KEY",
            backend=self.name,
        )

    def _engine_options(self, url: URL) -> dict[str, Any]:
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            if not url.database.startswith("file:") and not os.path.isfile(url.database):
                # SQLite would create an empty file and report "no such table": say what is wrong.
                raise self.config_error(f"{self._url_setting}: no database file at {url.database}")
        return {}

    def _encrypted(self, row: Any, column: str) -> bool | None:
        # Airflow flags each row: an unencrypted value is stored as is (no key configured when written).
        flag: bool | None = row.is_extra_encrypted if column == "extra" else row.is_encrypted
        return flag

    def _row_to_connection(self, row: Any) -> Connection:
        # Every read (single, batch, prefetch) goes through connection_format, as Airflow's backends do.
        return self._adapted(row.conn_id, super()._row_to_connection(row))

    # --- misc ----------------------------------------------------------------------------------------

    def check(self) -> str:
        from sqlalchemy import func, select

        t = tables()
        with self._db("checking the tables"), self.engine.connect() as conn:
            conns = conn.execute(select(func.count()).select_from(t["connection"])).scalar()
            variables = conn.execute(select(func.count()).select_from(t["variable"])).scalar()
        return f"{self.safe_url}: {conns} connection(s), {variables} variable(s)"

    def describe(self) -> str:
        return f"airflow-db ({self.safe_url})"
