"""The metastore backend on SQLite and on a real PostgreSQL server (every test runs on both)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, event, text

from credpath.backends.metastore import (
    CONNECTION_TABLE,
    SCHEMA_VERSION,
    VARIABLE_TABLE,
    VERSION_TABLE,
    FernetKeyError,
    MetastoreBackend,
)
from credpath.errors import BackendError, ConfigError
from credpath.model import Connection
from tests.conftest import assert_no_secret

PW = "pw-s3cr3t-1"
TOKEN = "tok-s3cr3t-2"
VAR_VALUE = "var-s3cr3t-3"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CREDPATH_HOME", str(home))
    monkeypatch.delenv("CREDPATH_FERNET_KEY", raising=False)
    monkeypatch.delenv("CREDPATH_METASTORE_URL", raising=False)
    return home


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def metastore_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database: a new SQLite file, or a new database on the PostgreSQL test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'credpath.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database("meta")


class MetastoreHarness:
    """Contract-suite harness: fresh backends on one empty database; seeding writes rows with plain SQL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fernet_key = Fernet.generate_key().decode()
        self._backends: list[MetastoreBackend] = []
        self._engine = create_engine(url)

    def make_backend(self, **kwargs: Any) -> MetastoreBackend:
        kwargs.setdefault("url", self.url)
        kwargs.setdefault("fernet_key", self.fernet_key)
        backend = MetastoreBackend(**kwargs)
        self._backends.append(backend)
        return backend

    def _ensure_schema(self) -> None:
        MetastoreBackend(url=self.url, fernet_key=self.fernet_key).engine.dispose()

    def _encrypt(self, value: str | None) -> str | None:
        return None if value is None else Fernet(self.fernet_key.encode()).encrypt(value.encode()).decode()

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        if kind == "config":
            pytest.skip("the metastore holds no config values")
        self._ensure_schema()
        with self._engine.begin() as conn:
            if kind == "connection":
                c = Connection.from_value(raw_value, conn_id=key)
                conn.execute(text(f"DELETE FROM {CONNECTION_TABLE} WHERE conn_id = :id"), {"id": key})
                conn.execute(
                    text(
                        f"INSERT INTO {CONNECTION_TABLE} "
                        "(conn_id, conn_type, description, host, login, password, schema, port, extra) "
                        "VALUES (:id, :type, :desc, :host, :login, :pw, :schema, :port, :extra)"
                    ),
                    {
                        "id": key,
                        "type": c.conn_type,
                        "desc": c.description,
                        "host": c.host,
                        "login": c.login,
                        "pw": self._encrypt(c.password),
                        "schema": c.schema,
                        "port": c.port,
                        "extra": self._encrypt(c.extra),
                    },
                )
            elif kind == "variable":
                conn.execute(text(f'DELETE FROM {VARIABLE_TABLE} WHERE "key" = :k'), {"k": key})
                conn.execute(
                    text(f'INSERT INTO {VARIABLE_TABLE} ("key", value) VALUES (:k, :v)'),
                    {"k": key, "v": self._encrypt(raw_value)},
                )
            else:
                raise ValueError(f"unknown kind {kind!r}")

    def raw_rows(self, table: str) -> list[tuple[Any, ...]]:
        with self._engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table}"))]

    def close(self) -> None:
        for backend in self._backends:
            backend.close()
        self._engine.dispose()


@pytest.fixture
def metastore_harness(metastore_url: str) -> Iterator[MetastoreHarness]:
    harness = MetastoreHarness(metastore_url)
    yield harness
    harness.close()


class StatementCounter:
    """Statements sent by SQLAlchemy (writes, PostgreSQL) and by the stdlib read path (SQLite files)."""

    def __init__(self, backend: MetastoreBackend) -> None:
        self.statements: list[str] = []
        event.listen(backend.engine, "before_cursor_execute", self._on_execute)  # creates the schema
        if backend._reader is not None:
            backend._reader.connection().set_trace_callback(self._on_sql)  # opened (schema checked) first

    def _on_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement.split()[0].upper())

    def _on_sql(self, statement: str) -> None:
        self.statements.append(statement.split()[0].upper())

    def reset(self) -> None:
        self.statements.clear()

    def __len__(self) -> int:
        return len(self.statements)


def _conn(conn_id: str = "pg_main", **overrides: Any) -> Connection:
    fields: dict[str, Any] = {
        "conn_id": conn_id,
        "conn_type": "postgres",
        "description": "main warehouse",
        "host": "db.example.com",
        "login": "etl",
        "password": PW,
        "schema": "analytics",
        "port": 5432,
        "extra": json.dumps({"sslmode": "require", "token": TOKEN}),
    }
    fields.update(overrides)
    return Connection(**fields)


# --- reads and writes ----------------------------------------------------------------------------------


def test_connection_round_trip_keeps_every_field(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    original = _conn()
    backend.set_connection(original)
    assert backend.get_connection("pg_main") == original
    # get_conn_value is JSON (not a URI) so the description survives the search path.
    assert Connection.from_value(backend.get_conn_value("pg_main"), conn_id="pg_main") == original


def test_misses_return_none(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    assert backend.get_connection("nope") is None
    assert backend.get_conn_value("nope") is None
    assert backend.get_variable("nope") is None
    assert backend.get_config("anything") is None


def test_overwrite_replaces_and_overwrite_false_refuses(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    backend.set_connection(_conn(host="old.example.com"))
    backend.set_connection(_conn(host="new.example.com", description=None, extra=None, password=None))
    got = backend.get_connection("pg_main")
    assert got is not None and got.host == "new.example.com" and got.password is None and got.extra is None
    with pytest.raises(ConfigError, match="connection 'pg_main' already exists") as info:
        backend.set_connection(_conn(password="pw-s3cr3t-other"), overwrite=False)
    assert_no_secret(str(info.value))
    assert backend.get_connection("pg_main").host == "new.example.com"  # unchanged

    backend.set_variable("v", VAR_VALUE, description="first")
    with pytest.raises(ConfigError, match="variable 'v' already exists"):
        backend.set_variable("v", "other-s3cr3t", overwrite=False)
    backend.set_variable("v", "second")
    record = backend.get_variable_record("v")
    assert record is not None and record.value == "second" and record.description is None


def test_variables_are_strings_with_description(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    backend.set_variable("cfg", '{"a": [1, 2]}', description="json config")
    backend.set_variable("empty", "")
    assert backend.get_variable("cfg") == '{"a": [1, 2]}'
    assert backend.get_variable("empty") == ""
    assert backend.get_variable_record("cfg").description == "json config"
    with pytest.raises(ConfigError, match="variable 'n' must be a string"):
        backend.set_variable("n", 5)  # type: ignore[arg-type]


def test_list_and_delete(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    for conn_id in ("b", "a", "c"):
        backend.set_connection(_conn(conn_id))
    backend.set_variable("y", "1")
    backend.set_variable("x", "2")
    assert backend.list_connections() == ["a", "b", "c"]
    assert backend.list_variables() == ["x", "y"]
    assert backend.delete_connection("b") is True
    assert backend.delete_connection("b") is False
    assert backend.delete_variable("x") is True
    assert backend.delete_variable("zz") is False
    assert backend.list_connections() == ["a", "c"]
    assert backend.list_variables() == ["y"]
    assert backend.get_connection("b") is None


def test_reads_seeded_rows(metastore_harness: MetastoreHarness) -> None:
    metastore_harness.seed("connection", "seeded", f"mysql://u:{PW}@h:3306/db?charset=utf8")
    metastore_harness.seed("variable", "seeded_var", VAR_VALUE)
    backend = metastore_harness.make_backend()
    got = backend.get_connection("seeded")
    assert (got.conn_type, got.host, got.port, got.password, got.extra_dejson) == (
        "mysql",
        "h",
        3306,
        PW,
        {"charset": "utf8"},
    )
    assert backend.get_variable("seeded_var") == VAR_VALUE


# --- encryption at rest --------------------------------------------------------------------------------


def test_secrets_are_encrypted_at_rest(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    backend.set_connection(_conn())
    backend.set_variable("api", VAR_VALUE)
    conn_rows = metastore_harness.raw_rows(CONNECTION_TABLE)
    var_rows = metastore_harness.raw_rows(VARIABLE_TABLE)
    dump = repr(conn_rows) + repr(var_rows)
    for secret in (PW, TOKEN, VAR_VALUE, "sslmode"):
        assert secret not in dump
    assert "db.example.com" in dump  # non-secret fields stay queryable
    fernet = Fernet(metastore_harness.fernet_key.encode())
    tokens = [v for row in conn_rows for v in row if isinstance(v, str) and v.startswith("gAAAAA")]
    assert sorted(fernet.decrypt(t.encode()).decode() for t in tokens) == sorted([PW, _conn().extra])
    assert fernet.decrypt(var_rows[0][1].encode()).decode() == VAR_VALUE


def test_sqlite_file_has_no_plaintext(tmp_path: Path) -> None:
    db = tmp_path / "raw.db"
    backend = MetastoreBackend(url=f"sqlite:///{db}", fernet_key=Fernet.generate_key().decode())
    backend.set_connection(_conn())
    backend.set_variable("api", VAR_VALUE)
    backend.close()
    raw = db.read_bytes()
    assert b"db.example.com" in raw
    for secret in (PW, TOKEN, VAR_VALUE):
        assert secret.encode() not in raw


def test_rotation_re_encrypts_with_the_first_key(metastore_harness: MetastoreHarness) -> None:
    old, new = metastore_harness.fernet_key, Fernet.generate_key().decode()
    metastore_harness.make_backend(fernet_key=old).set_connection(_conn())
    metastore_harness.make_backend(fernet_key=old).set_connection(
        _conn("no_secrets", password=None, extra=None)
    )
    metastore_harness.make_backend(fernet_key=old).set_variable("api", VAR_VALUE)
    before = metastore_harness.raw_rows(CONNECTION_TABLE) + metastore_harness.raw_rows(VARIABLE_TABLE)

    rotating = metastore_harness.make_backend(fernet_key=f"{new},{old}")
    assert rotating.get_variable("api") == VAR_VALUE  # old tokens still readable before rotation
    assert rotating.rotate_fernet_key() == 3

    after = metastore_harness.raw_rows(CONNECTION_TABLE) + metastore_harness.raw_rows(VARIABLE_TABLE)
    old_tokens = {v for row in before for v in row if isinstance(v, str) and v.startswith("gAAAAA")}
    new_tokens = {v for row in after for v in row if isinstance(v, str) and v.startswith("gAAAAA")}
    assert len(old_tokens) == len(new_tokens) == 3 and not old_tokens & new_tokens

    only_new = metastore_harness.make_backend(fernet_key=new)
    assert only_new.get_connection("pg_main") == _conn()
    assert only_new.get_variable("api") == VAR_VALUE
    only_old = metastore_harness.make_backend(fernet_key=old)
    with pytest.raises(FernetKeyError):
        only_old.get_variable("api")
    # Rows without secrets are untouched and readable with any key.
    assert only_old.get_connection("no_secrets").host == "db.example.com"


def test_rotation_with_a_key_that_cannot_decrypt_changes_nothing(metastore_harness: MetastoreHarness) -> None:
    metastore_harness.make_backend().set_variable("api", VAR_VALUE)
    before = metastore_harness.raw_rows(VARIABLE_TABLE)
    stranger = metastore_harness.make_backend(fernet_key=Fernet.generate_key().decode())
    with pytest.raises(
        FernetKeyError, match=r"cannot rotate the value of variable 'api'.*nothing was changed"
    ):
        stranger.rotate_fernet_key()
    assert metastore_harness.raw_rows(VARIABLE_TABLE) == before


def test_wrong_key_gives_a_clear_error_and_never_a_value(metastore_harness: MetastoreHarness) -> None:
    metastore_harness.make_backend().set_connection(_conn())
    metastore_harness.make_backend().set_variable("api", VAR_VALUE)
    wrong = metastore_harness.make_backend(fernet_key=Fernet.generate_key().decode())
    with pytest.raises(FernetKeyError) as info:
        wrong.get_connection("pg_main")
    # A wrong key is a configuration error (the search path propagates it; the CLI exits 2).
    assert isinstance(info.value, ConfigError) and not isinstance(info.value, BackendError)
    message = str(info.value)
    assert "cannot decrypt the password of connection 'pg_main'" in message
    assert "fernet_key" in message and "\n" not in message
    assert_no_secret(message, metastore_harness.fernet_key)
    with pytest.raises(FernetKeyError, match="the value of variable 'api'"):
        wrong.get_variable("api")
    with pytest.raises(FernetKeyError):
        wrong.get_conn_values(["pg_main"])
    with pytest.raises(FernetKeyError):
        wrong.check()


@pytest.mark.parametrize(
    ("key", "position"),
    [("not-a-key", 1), (f"{Fernet.generate_key().decode()},xx-s3cr3t-yy", 2), (" , ", None)],
    ids=["garbage", "second-bad", "empty"],
)
def test_invalid_fernet_key_is_a_config_error(tmp_path: Path, key: str, position: int | None) -> None:
    backend = MetastoreBackend(url=f"sqlite:///{tmp_path / 'x.db'}", fernet_key=key)
    with pytest.raises(ConfigError) as info:
        backend.set_variable("v", "x")
    message = str(info.value)
    assert "fernet_key" in message
    if position:
        assert f"key #{position}" in message
    assert_no_secret(message)
    assert "not-a-key" not in message


def test_env_key_and_url_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    db = tmp_path / "from-env.db"
    monkeypatch.setenv("CREDPATH_FERNET_KEY", key)
    monkeypatch.setenv("CREDPATH_METASTORE_URL", f"sqlite:///{db}")
    backend = MetastoreBackend()
    backend.set_variable("api", VAR_VALUE)
    assert db.exists()
    assert not (tmp_path / "home" / "fernet.key").exists()
    raw = MetastoreHarness(f"sqlite:///{db}").raw_rows(VARIABLE_TABLE)
    assert Fernet(key.encode()).decrypt(raw[0][1].encode()).decode() == VAR_VALUE
    monkeypatch.setenv("CREDPATH_FERNET_KEY", "bad")
    with pytest.raises(ConfigError, match="CREDPATH_FERNET_KEY"):
        MetastoreBackend().get_variable("api")


def test_default_is_sqlite_in_home_with_generated_key(_isolated_home: Path) -> None:
    backend = MetastoreBackend()
    assert backend.url == f"sqlite:///{_isolated_home / 'credpath.db'}"
    backend.set_variable("api", VAR_VALUE)
    key_file = _isolated_home / "fernet.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(_isolated_home.stat().st_mode) == 0o700
    Fernet(key_file.read_text().strip().encode())  # a valid key
    # A second process (new backend) reuses the key instead of generating another.
    assert MetastoreBackend().get_variable("api") == VAR_VALUE
    assert [p.name for p in _isolated_home.iterdir() if p.name.startswith(".fernet-")] == []


def test_lost_key_file_with_existing_data_is_refused(_isolated_home: Path) -> None:
    MetastoreBackend().set_variable("api", VAR_VALUE)
    (_isolated_home / "fernet.key").unlink()
    with pytest.raises(ConfigError, match="holds encrypted values but no Fernet key"):
        MetastoreBackend().get_variable("api")
    assert not (_isolated_home / "fernet.key").exists()


# --- schema --------------------------------------------------------------------------------------------


def test_schema_is_created_once_and_versioned(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    backend.set_variable("first", "write")  # the first write creates the schema (a read creates nothing)
    assert backend.check().endswith(f"(schema v{SCHEMA_VERSION})")
    assert [row[0] for row in metastore_harness.raw_rows(VERSION_TABLE)] == [SCHEMA_VERSION]
    # A second backend (a new process) finds the schema with a single query.
    from sqlalchemy.engine import Engine

    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        metastore_harness.make_backend().engine  # noqa: B018
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert len(seen) == 1 and "max" in seen[0].lower()


def test_newer_schema_is_refused(metastore_harness: MetastoreHarness) -> None:
    metastore_harness.make_backend().set_variable("first", "write")
    with metastore_harness._engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {VERSION_TABLE} (version) VALUES (99)"))
    with pytest.raises(BackendError, match="schema version 99 is newer than this credpath supports"):
        metastore_harness.make_backend().get_variable("x")


# --- API-call accounting -------------------------------------------------------------------------------


def test_one_statement_per_read_and_write(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    counter = StatementCounter(backend)
    # upsert: one statement (on SQLite after BEGIN IMMEDIATE, which takes the write lock up front)
    write = ["BEGIN", "INSERT"] if metastore_harness.url.startswith("sqlite") else ["INSERT"]
    backend.set_connection(_conn())
    assert counter.statements == write
    counter.reset()
    backend.set_connection(_conn(host="other"))
    assert counter.statements == write
    counter.reset()
    backend.get_connection("pg_main")
    backend.get_variable("missing")
    assert counter.statements == ["SELECT", "SELECT"]


def test_batches_use_one_select_in(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    for i in range(5):
        backend.set_connection(_conn(f"c{i}"))
        backend.set_variable(f"v{i}", f"value-{i}")
    counter = StatementCounter(backend)
    got = backend.get_conn_values(["c0", "c3", "missing", "c4", "c0"])
    assert counter.statements == ["SELECT"]
    assert sorted(got) == ["c0", "c3", "c4"]
    assert Connection.from_value(got["c3"], conn_id="c3") == _conn("c3")
    counter.reset()
    assert backend.get_variables(["v1", "v2", "nope"]) == {"v1": "value-1", "v2": "value-2"}
    assert counter.statements == ["SELECT"]
    counter.reset()
    ids = [f"id{i}" for i in range(1200)] + ["c1"]
    assert list(backend.get_conn_values(ids)) == ["c1"]
    assert counter.statements == ["SELECT", "SELECT", "SELECT"]  # 500 ids per SELECT .. IN
    counter.reset()
    assert sorted(backend.prefetch_connections()) == [f"c{i}" for i in range(5)]
    assert len(backend.prefetch_variables()) == 5
    assert counter.statements == ["SELECT", "SELECT"]


def test_lookup_pattern_skips_the_database(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend(
        connections_lookup_pattern="^pg_", variables_lookup_pattern="^app_"
    )
    backend.set_connection(_conn("mysql_x"))
    backend.set_variable("other", "1")
    counter = StatementCounter(backend)
    assert backend.get_connection("mysql_x") is None
    assert backend.get_variable("other") is None
    assert backend.get_conn_values(["mysql_x"]) == {}
    assert counter.statements == []


# --- failures ------------------------------------------------------------------------------------------


def test_unreachable_database_is_a_backend_error_without_password() -> None:
    from tests.servers._util import free_port

    url = f"postgresql+psycopg://user:pw-s3cr3t-9@127.0.0.1:{free_port()}/db?connect_timeout=2"
    backend = MetastoreBackend(url=url, fernet_key=Fernet.generate_key().decode())
    assert "pw-s3cr3t-9" not in repr(backend) + backend.describe()
    with pytest.raises(BackendError) as info:
        backend.get_variable("x")
    message = str(info.value)
    assert "127.0.0.1" in message and "***" in message
    assert "\n" not in message
    assert_no_secret(message)


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="url is not a valid SQLAlchemy URL"):
        MetastoreBackend(url="::not a url::").get_variable("x")
    with pytest.raises(ConfigError, match="no database driver"):
        MetastoreBackend(url="nosuchdb://h/x").get_variable("x")


def test_import_is_lazy(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from credpath.backends.metastore import MetastoreBackend\n"
        "b = MetastoreBackend()\n"
        "print(sorted(m for m in ('sqlalchemy', 'cryptography') if m in sys.modules))\n"
    )
    env = {**os.environ, "CREDPATH_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
    assert not list(tmp_path.iterdir())  # the constructor did no I/O


def test_embedded_default_reads_without_sqlalchemy_or_rich(tmp_path: Path) -> None:
    # Importing SQLAlchemy was ~160 ms of the README's `credpath connections get my_db`
    # (0.37-0.48 s); SQLite files are read with the stdlib, tables drawn without rich when they can be.
    env = {**os.environ, "CREDPATH_HOME": str(tmp_path / "home")}
    for name in (
        "CREDPATH_FERNET_KEY",
        "CREDPATH_METASTORE_URL",
        "CREDPATH_CONFIG",
        "AIRFLOW__SECRETS__BACKEND",
    ):
        env.pop(name, None)
    seed = (
        "from credpath.backends.metastore import MetastoreBackend\n"
        "from credpath.model import Connection\n"
        "MetastoreBackend().set_connection(Connection.from_value("
        "'postgres://app:pw-s3cr3t-4@db.example.com:5432/analytics', conn_id='my_db'))\n"
    )
    subprocess.run([sys.executable, "-c", seed], env=env, check=True, timeout=60)
    code = (
        "import sys\n"
        "from credpath.cli import main\n"
        "sys.argv = ['credpath', 'connections', 'get', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'rich') if m in sys.modules), file=sys.stderr)\n"
    )
    for conn_id, found in (("my_db", True), ("no_such_db", False)):
        out = subprocess.run(
            [sys.executable, "-c", code, conn_id], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr
        assert ("db.example.com" in out.stdout) is found
        assert_no_secret(out.stdout + out.stderr)


def test_a_first_secret_after_a_connection_without_secrets_creates_the_key(tmp_path, monkeypatch):
    # A connection with no password or extra is stored without a key; the first secret written after it
    # must create the key file, not refuse with "holds encrypted values but no Fernet key".
    from credpath.backends.metastore import MetastoreBackend
    from credpath.model import Connection

    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CREDPATH_FERNET_KEY", raising=False)
    monkeypatch.delenv("CREDPATH_METASTORE_URL", raising=False)
    MetastoreBackend().set_connection(Connection(conn_id="plain", conn_type="mysql", host="h"))
    backend = MetastoreBackend()
    backend.set_variable("v", "pw-s3cr3t-first")
    assert backend.get_variable("v") == "pw-s3cr3t-first"
    assert (tmp_path / "home" / "fernet.key").is_file()


# --- multi-team (Airflow 3.2+): owners, Airflow 3.3.2's MetastoreBackend read rule, schema v2 --------------

TEAMS = (None, "team_a", "team_b", "team_c")
OWNED = {"shared": None, "a_only": "team_a", "b_only": "team_b"}


def _visible(owner: str | None, team: str | None) -> bool:
    return owner is None or owner == team  # WHERE team_name = :team OR team_name IS NULL


def _seed_teams(backend: MetastoreBackend) -> None:
    for conn_id, owner in OWNED.items():
        backend.set_connection(_conn(conn_id, host=f"{conn_id}.example.com"), team_name=owner)
        backend.set_variable(f"{conn_id}_var", f"{VAR_VALUE}-{conn_id}", team_name=owner)


def _assert_team_rule(backend: MetastoreBackend, owners: dict[str, str | None]) -> None:
    for team in TEAMS:
        for conn_id, owner in owners.items():
            conn = backend.get_connection(conn_id, team_name=team)
            assert (conn is not None) is _visible(owner, team), (conn_id, team)
            assert (backend.get_conn_value(conn_id, team_name=team) is not None) is _visible(owner, team)
            assert (backend.get_variable(f"{conn_id}_var", team_name=team) is not None) is _visible(
                owner, team
            )
        expected = sorted(i for i, owner in owners.items() if _visible(owner, team))
        keys = [f"{i}_var" for i in expected]
        assert sorted(backend.get_conn_values([*owners, "missing"], team_name=team)) == expected
        assert sorted(backend.get_variables([f"{i}_var" for i in owners], team_name=team)) == keys
        assert sorted(backend.prefetch_connections(team_name=team)) == expected
        assert sorted(backend.prefetch_variables(team_name=team)) == keys
        if team is not None:
            assert backend.list_connections(team_name=team) == expected
            assert backend.list_variables(team_name=team) == keys
    assert backend.list_connections() == sorted(owners)  # without a team: every id (ids only)


def test_team_rows_are_read_by_their_team_only(metastore_harness: MetastoreHarness) -> None:
    writer = metastore_harness.make_backend()
    _seed_teams(writer)
    assert writer.get_connection("a_only", team_name="team_a").password == PW  # type: ignore[union-attr]
    _assert_team_rule(writer, OWNED)
    _assert_team_rule(metastore_harness.make_backend(), OWNED)  # a fresh reader (another process)
    # Stored as the owner, in the column (NULL for a global row).
    with metastore_harness._engine.connect() as conn:
        owners = dict(conn.execute(text(f"SELECT conn_id, team_name FROM {CONNECTION_TABLE}")).all())
    assert owners == OWNED


def test_a_team_read_is_still_one_select(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    _seed_teams(backend)
    counter = StatementCounter(backend)
    backend.get_connection("a_only", team_name="team_a")
    backend.get_variable("b_only_var", team_name="team_a")
    backend.get_conn_values(["a_only", "b_only"], team_name="team_b")
    assert counter.statements == ["SELECT", "SELECT", "SELECT"]


def test_an_overwrite_never_changes_the_owner(metastore_harness: MetastoreHarness) -> None:
    backend = metastore_harness.make_backend()
    _seed_teams(backend)
    for conn_id, team in (("shared", "team_a"), ("a_only", None), ("a_only", "team_b")):
        with pytest.raises(ConfigError, match="exists with another owner") as info:
            backend.set_connection(_conn(conn_id, host="changed.example.com"), team_name=team)
        assert_no_secret(str(info.value))
        with pytest.raises(ConfigError, match="exists with another owner"):
            backend.set_variable(f"{conn_id}_var", "changed", team_name=team)
    _assert_team_rule(backend, OWNED)  # nothing moved
    assert backend.get_connection("shared").host == "shared.example.com"  # type: ignore[union-attr]
    # The owner's own overwrite works and keeps it private.
    backend.set_connection(_conn("a_only", host="new.example.com"), team_name="team_a")
    backend.set_variable("a_only_var", "new", team_name="team_a")
    assert backend.get_connection("a_only", team_name="team_a").host == "new.example.com"  # type: ignore[union-attr]
    assert backend.get_variable("a_only_var", team_name="team_a") == "new"
    assert backend.get_connection("a_only") is None and backend.get_variable("a_only_var", "team_b") is None
    with pytest.raises(ConfigError, match="already exists"):
        backend.set_connection(_conn("a_only"), team_name="team_a", overwrite=False)
    # Deleting (an administrator's act, team-agnostic) frees the id for another owner.
    assert backend.delete_connection("a_only")
    backend.set_connection(_conn("a_only"), team_name="team_b")
    assert backend.get_connection("a_only", team_name="team_b") is not None


@pytest.mark.parametrize("team", ["", "t" * 51, 7])
def test_a_bad_team_name_is_refused_before_anything_is_written(
    metastore_harness: MetastoreHarness, team: Any
) -> None:
    backend = metastore_harness.make_backend()
    with pytest.raises(ConfigError, match="team_name must be a non-empty string of at most 50"):
        backend.set_connection(_conn("c"), team_name=team)
    with pytest.raises(ConfigError, match="team_name must be"):
        backend.set_variable("v", VAR_VALUE, team_name=team)
    assert backend.list_connections() == [] and backend.list_variables() == []


def _make_v1_database(url: str, fernet_key: str) -> None:
    """A metastore as credpath wrote it before teams (schema v1): the same tables without team_name."""
    from sqlalchemy import MetaData, Table

    from credpath.backends.metastore import tables

    metadata = MetaData()
    v1 = {
        k: Table(t.name, metadata, *(c._copy() for c in t.c if c.name != "team_name"))
        for k, t in tables().items()
    }
    fernet = Fernet(fernet_key.encode())
    engine = create_engine(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(v1["version"].insert().values(version=1))
            for conn_id in ("old_db", "old_api"):
                conn.execute(
                    v1["connection"]
                    .insert()
                    .values(
                        conn_id=conn_id,
                        conn_type="postgres",
                        host=f"{conn_id}.example.com",
                        password=fernet.encrypt(PW.encode()).decode(),
                    )
                )
            conn.execute(
                v1["variable"]
                .insert()
                .values(key="old_var", value=fernet.encrypt(VAR_VALUE.encode()).decode())
            )
    finally:
        engine.dispose()


def test_a_v1_database_is_upgraded_in_place_keeping_its_rows(metastore_harness: MetastoreHarness) -> None:
    _make_v1_database(metastore_harness.url, metastore_harness.fernet_key)
    reader = metastore_harness.make_backend()  # opened on v1 (SQLite: the stdlib read path, read-only)
    for team in TEAMS:  # before teams every row is global
        assert reader.get_connection("old_db", team_name=team).password == PW  # type: ignore[union-attr]
        assert reader.get_variable("old_var", team_name=team) == VAR_VALUE
    writer = metastore_harness.make_backend()
    writer.set_connection(_conn("a_only"), team_name="team_a")  # upgrades, then writes
    writer.set_variable("a_only_var", VAR_VALUE, team_name="team_a")
    assert sorted(r[0] for r in metastore_harness.raw_rows(VERSION_TABLE)) == [1, 2]
    assert writer.check().endswith("(schema v2)")
    owners = {"old_db": None, "old_api": None, "a_only": "team_a"}
    with metastore_harness._engine.connect() as conn:
        rows = conn.execute(text(f"SELECT conn_id, team_name FROM {CONNECTION_TABLE} ORDER BY conn_id")).all()
    assert dict(rows) == owners  # the old rows are kept, global
    for backend in (writer, metastore_harness.make_backend(), reader):
        # The reader opened before the upgrade sees the new column: a team's row never leaks to it.
        for team in TEAMS:
            assert backend.get_connection("old_db", team_name=team).password == PW  # type: ignore[union-attr]
            assert backend.get_variable("old_var", team_name=team) == VAR_VALUE
            visible = team == "team_a"
            assert (backend.get_connection("a_only", team_name=team) is not None) is visible, team
            assert (backend.get_variable("a_only_var", team_name=team) is not None) is visible, team
            assert sorted(backend.get_conn_values(list(owners), team_name=team)) == sorted(
                i for i, o in owners.items() if _visible(o, team)
            )


def test_concurrent_upgrades_of_a_v1_database_agree(metastore_harness: MetastoreHarness) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _make_v1_database(metastore_harness.url, metastore_harness.fernet_key)
    backends = [metastore_harness.make_backend() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: b.set_variable(f"k{id(b)}", "x", team_name="team_a"), backends))
    assert sorted(r[0] for r in metastore_harness.raw_rows(VERSION_TABLE)) == [1, 2]
    assert backends[0].get_variable("old_var") == VAR_VALUE
    assert len(backends[0].list_variables(team_name="team_a")) == 5


def test_search_path_and_cli_write_and_read_with_a_team(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from credpath._search_path import SearchPath
    from credpath.api import set_default_search_path
    from credpath.cli import cli
    from credpath.errors import NotFound

    backend = MetastoreBackend(
        url=f"sqlite:///{tmp_path / 'sp.db'}", fernet_key=Fernet.generate_key().decode()
    )
    search_path = SearchPath([("metastore", backend)])
    with pytest.raises(NotFound):
        search_path.get_connection("team_db", team_name="team_a")  # a cached miss, then the write
    assert search_path.set_connection(_conn("team_db"), team_name="team_a") == "metastore"
    assert search_path.get_connection("team_db", team_name="team_a").password == PW
    with pytest.raises(NotFound):
        search_path.get_connection("team_db")
    search_path.set_variable("team_var", VAR_VALUE, team_name="team_b")
    assert search_path.get_variable("team_var", team_name="team_b") == VAR_VALUE
    assert search_path.get_variable("team_var", None, team_name="team_a") is None
    backend.close()

    # The CLI on the embedded default: --team on `connections add` and `variables set`.
    set_default_search_path(None)
    runner = CliRunner()
    uri = f"postgres://app:{PW}@db.example.com:5432/analytics"
    for args in (
        ["connections", "add", "cli_db", "--conn-uri", uri, "--team", "team_a"],
        ["variables", "set", "cli_var", VAR_VALUE, "--team", "team_a"],
    ):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert_no_secret(result.output)
    home = MetastoreBackend()
    assert home.get_connection("cli_db", team_name="team_a").password == PW  # type: ignore[union-attr]
    assert home.get_connection("cli_db") is None and home.get_variable("cli_var", "team_b") is None
    assert home.get_variable("cli_var", team_name="team_a") == VAR_VALUE
    home.close()
    got = runner.invoke(
        cli, ["connections", "get", "cli_db", "--team", "team_a", "--json"], catch_exceptions=False
    )
    assert got.exit_code == 0 and json.loads(got.stdout)["host"] == "db.example.com"
    assert runner.invoke(cli, ["connections", "get", "cli_db"], catch_exceptions=False).exit_code != 0
    set_default_search_path(None)


def test_check_of_an_sqlite_file_reads_through_the_stdlib_without_sqlalchemy(tmp_path: Path) -> None:
    """`backends check` on the default SQLite metastore took 0.3-1.0 s, nearly all of it importing
    SQLAlchemy: the check reads the file as lookups do."""
    key = Fernet.generate_key().decode()
    url = f"sqlite:///{tmp_path / 'c.db'}"
    MetastoreBackend(url=url, fernet_key=key).set_variable("api", VAR_VALUE)
    code = (
        "import sys\n"
        "from credpath.backends.metastore import MetastoreBackend\n"
        f"print(MetastoreBackend(url={url!r}, fernet_key={key!r}).check())\n"
        "print('sqlalchemy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.splitlines() == [f"{url} (schema v2)", "False"]
    with pytest.raises(FernetKeyError, match="cannot decrypt the value of variable 'api'"):
        MetastoreBackend(url=url, fernet_key=Fernet.generate_key().decode()).check()
    empty = MetastoreBackend(url=f"sqlite:///{tmp_path / 'none.db'}", fernet_key=key)
    assert "no database yet" in empty.check()
