"""airflow-db: an Airflow metadata database as a read-only source (SQLite here and PostgreSQL when present).

The tables are created with Airflow 3.3's DDL (copied from a database made by ``airflow db migrate``) and
filled the way Airflow writes them (Fernet tokens, is_encrypted flags). A database made by Airflow itself is
tested in tests/test_transfer_airflow.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, event, text

from credpath.backends.airflow_db import AirflowDatabaseBackend
from credpath.errors import BackendError, ConfigError
from credpath.protocol import can
from credpath.registry import create_backend

PW = "pw-s3cr3t-afdb"
TOKEN = "tok-s3cr3t-afdb"
VAR = "var-s3cr3t-afdb"

# Airflow 3.3.2's tables (sqlite_master of a migrated database), minus the team foreign keys.
DDL = [
    """CREATE TABLE connection (
        id INTEGER NOT NULL PRIMARY KEY, conn_id VARCHAR(250) NOT NULL UNIQUE,
        conn_type VARCHAR(500) NOT NULL,
        description VARCHAR(5000), host VARCHAR(500), schema VARCHAR(500), login TEXT, port INTEGER,
        team_name VARCHAR(50), password TEXT, extra TEXT, is_encrypted BOOLEAN NOT NULL,
        is_extra_encrypted BOOLEAN NOT NULL)""",
    """CREATE TABLE variable (
        id INTEGER NOT NULL PRIMARY KEY, "key" VARCHAR(250) NOT NULL UNIQUE, val TEXT NOT NULL,
        description TEXT, is_encrypted BOOLEAN NOT NULL, team_name VARCHAR(50))""",
]


class AirflowDb:
    """An Airflow-shaped database and a writer that stores rows as Airflow does."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.key = key
        self.engine = create_engine(url)
        with self.engine.begin() as conn:
            for ddl in DDL:
                conn.execute(text(ddl.replace("INTEGER NOT NULL PRIMARY KEY", self._pk())))
        self.backends: list[AirflowDatabaseBackend] = []

    def _pk(self) -> str:
        return (
            "SERIAL PRIMARY KEY"
            if self.engine.dialect.name == "postgresql"
            else "INTEGER NOT NULL PRIMARY KEY"
        )

    def _enc(self, value: str | None, key: str | None) -> tuple[str | None, bool]:
        key = key if key is not None else self.key
        if value is None or not key:
            return value, False
        return Fernet(key.encode()).encrypt(value.encode()).decode(), True

    def add_connection(self, conn_id: str, key: str | None = None, **fields: Any) -> None:
        password, enc = self._enc(fields.pop("password", None), key)
        extra, extra_enc = self._enc(fields.pop("extra", None), key)
        row = {"conn_id": conn_id, "password": password, "extra": extra, "is_encrypted": enc,
               "is_extra_encrypted": extra_enc, "conn_type": "generic", "description": None, "host": None,
               "schema": None, "login": None, "port": None, **fields}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO connection (conn_id, conn_type, description, host, schema, login, port, "
                    "password, extra, is_encrypted, is_extra_encrypted) VALUES (:conn_id, :conn_type, "
                    ":description, :host, :schema, :login, :port, :password, :extra, :is_encrypted, "
                    ":is_extra_encrypted)"
                ),
                row,
            )

    def add_variable(
        self, key_name: str, value: str, description: str | None = None, key: str | None = None
    ) -> None:
        val, enc = self._enc(value, key)
        with self.engine.begin() as conn:
            conn.execute(
                text('INSERT INTO variable ("key", val, description, is_encrypted) VALUES (:k, :v, :d, :e)'),
                {"k": key_name, "v": val, "d": description, "e": enc},
            )

    def backend(self, **kwargs: Any) -> AirflowDatabaseBackend:
        options: dict[str, Any] = {"url": self.url}
        if self.key:
            options["fernet_key"] = self.key
        options.update(kwargs)
        backend = AirflowDatabaseBackend(**options)
        self.backends.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.engine.dispose()


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path, key: str) -> Iterator[AirflowDb]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'airflow.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database("afdb")
    database = AirflowDb(url, key)
    yield database
    database.close()


def _seed(db: AirflowDb) -> None:
    db.add_connection(
        "pg_main", conn_type="postgres", description="warehouse", host="db.example.com", schema="analytics",
        login="etl", port=5432, password=PW, extra=json.dumps({"sslmode": "require", "token": TOKEN}),
    )  # fmt: skip
    db.add_connection("http_plain", conn_type="http", host="api.example.com", key="")  # stored unencrypted
    db.add_variable("api_secret", VAR, description="rotated monthly")
    db.add_variable("plain_var", "hello", key="")


def test_reads_and_decrypts_like_airflow(db: AirflowDb) -> None:
    _seed(db)
    backend = db.backend()
    conn = backend.get_connection("pg_main")
    assert conn is not None
    fields = (conn.conn_type, conn.description, conn.host, conn.schema, conn.login, conn.port, conn.password)
    assert fields == ("postgres", "warehouse", "db.example.com", "analytics", "etl", 5432, PW)
    assert conn.extra_dejson == {"sslmode": "require", "token": TOKEN}
    plain = backend.get_connection("http_plain")
    assert plain is not None and plain.host == "api.example.com" and plain.password is None
    assert backend.get_variable("api_secret") == VAR
    assert backend.get_variable_record("api_secret").description == "rotated monthly"  # type: ignore[union-attr]
    assert backend.get_variable("plain_var") == "hello"
    assert backend.get_connection("nope") is None and backend.get_variable("nope") is None
    # get_conn_value is JSON (keeps the description) and parses back to the same connection.
    raw = backend.get_conn_value("pg_main")
    assert raw is not None and backend.deserialize_connection("pg_main", raw) == conn


def test_listing_batches_and_one_select_per_batch(db: AirflowDb) -> None:
    _seed(db)
    backend = db.backend()
    assert backend.list_connections() == ["http_plain", "pg_main"]
    assert backend.list_variables() == ["api_secret", "plain_var"]
    statements: list[str] = []
    event.listen(backend.engine, "before_cursor_execute", lambda *a, **k: statements.append(a[2]))
    found = backend.get_connections(["pg_main", "http_plain", "missing"])
    assert sorted(found) == ["http_plain", "pg_main"]
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert backend.get_variables(["api_secret", "plain_var", "x"]) == {
        "api_secret": VAR,
        "plain_var": "hello",
    }
    assert set(backend.prefetch_connections()) == {"http_plain", "pg_main"}
    assert backend.prefetch_variables()["plain_var"] == "hello"


def test_rotated_keys_decrypt_with_multifernet(db: AirflowDb, key: str) -> None:
    old = Fernet.generate_key().decode()
    db.add_connection("old_conn", conn_type="http", password=PW, key=old)
    db.add_connection("new_conn", conn_type="http", password=PW, key=key)
    assert db.backend(fernet_key=f"{key},{old}").get_connection("old_conn").password == PW  # type: ignore[union-attr]
    only_new = db.backend(fernet_key=key)
    assert only_new.get_connection("new_conn").password == PW  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as info:  # a wrong key is a configuration error
        only_new.get_connection("old_conn")
    message = str(info.value)
    assert "old_conn" in message and "fernet_key" in message and PW not in message


def test_key_from_airflow_environment_and_missing_key(
    db: AirflowDb, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(db)
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", key)
    assert AirflowDatabaseBackend(url=db.url).get_variable("api_secret") == VAR
    monkeypatch.delenv("AIRFLOW__CORE__FERNET_KEY")
    keyless = AirflowDatabaseBackend(url=db.url)
    assert keyless.get_variable("plain_var") == "hello"  # unencrypted rows need no key
    with pytest.raises(ConfigError, match="AIRFLOW__CORE__FERNET_KEY"):
        keyless.get_variable("api_secret")
    keyless.close()


def test_wrong_key_never_yields_a_value(db: AirflowDb) -> None:
    _seed(db)
    backend = db.backend(fernet_key=Fernet.generate_key().decode())
    with pytest.raises(ConfigError) as info:
        backend.get_variable("api_secret")
    assert "api_secret" in str(info.value) and VAR not in str(info.value)


def test_lookup_patterns_and_read_only(db: AirflowDb) -> None:
    _seed(db)
    backend = db.backend(connections_lookup_pattern="^pg_", variables_lookup_pattern="^plain")
    assert backend.list_connections() == ["pg_main"]
    assert backend.get_connection("http_plain") is None
    assert backend.list_variables() == ["plain_var"]
    for operation in ("set_connection", "set_variable", "delete_connection", "delete_variable"):
        assert not can(backend, operation)


def test_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    with pytest.raises(ConfigError, match="url is required"):
        AirflowDatabaseBackend()
    with pytest.raises(ConfigError, match="no database file"):
        AirflowDatabaseBackend(url=f"sqlite:///{tmp_path / 'missing.db'}").list_connections()
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ConfigError, match="key #1 of fernet_key"):
        AirflowDatabaseBackend(url="sqlite://", fernet_key="not-a-key")._fernet_obj()
    with pytest.raises(ConfigError, match="unknown kwarg"):
        create_backend("airflow-db", {"url": "sqlite://", "fernet": "x"})


def test_created_by_alias_and_database_errors_hide_the_password(db: AirflowDb) -> None:
    _seed(db)
    backend = create_backend("airflow-db", {"url": db.url, "fernet_key": db.key})
    assert isinstance(backend, AirflowDatabaseBackend)
    assert backend.list_connections() == ["http_plain", "pg_main"]
    assert "s3cr3t" not in backend.describe() and "s3cr3t" not in backend.check()
    backend.close()
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE variable"))
    broken = db.backend()
    with pytest.raises(BackendError, match="listing variables failed") as info:
        broken.list_variables()
    assert "s3cr3t" not in str(info.value)
