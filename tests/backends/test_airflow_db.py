"""airflow-db: an Airflow metadata database as a read-only source (SQLite here and PostgreSQL when present).

The tables are created with Airflow 3.3's DDL (copied from a database made by ``airflow db migrate``) and
filled the way Airflow writes them (Fernet tokens, is_encrypted flags). A database made by Airflow itself is
tested in tests/test_transfer_airflow.py, and here for multi-team: rows owned by teams, written with
Airflow's own models, read by credpath and by Airflow's MetastoreBackend for the same (team, id) pairs.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, event, text

from credpath.backends.airflow_db import AirflowDatabaseBackend
from credpath.errors import BackendError, ConfigError, ReadOnlyBackend
from credpath.protocol import supports
from credpath.registry import create_backend
from tests.servers.airflow_env import AirflowEnv, clean_environment

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
# Airflow 2.x-3.0's tables: no owner column.
DDL_BEFORE_TEAMS = [
    ddl.replace("team_name VARCHAR(50), ", "").replace(", team_name VARCHAR(50)", "") for ddl in DDL
]


class AirflowDb:
    """An Airflow-shaped database and a writer that stores rows as Airflow does."""

    def __init__(self, url: str, key: str | None, ddl_statements: list[str] = DDL) -> None:
        self.url = url
        self.key = key
        self.engine = create_engine(url)
        with self.engine.begin() as conn:
            for ddl in ddl_statements:
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

    def add_connection(
        self, conn_id: str, key: str | None = None, team_name: str | None = None, **fields: Any
    ) -> None:
        password, enc = self._enc(fields.pop("password", None), key)
        extra, extra_enc = self._enc(fields.pop("extra", None), key)
        row = {"conn_id": conn_id, "password": password, "extra": extra, "is_encrypted": enc,
               "is_extra_encrypted": extra_enc, "conn_type": "generic", "description": None, "host": None,
               "schema": None, "login": None, "port": None, **fields}  # fmt: skip
        team_col, team_val = (", team_name", ", :team") if team_name else ("", "")
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO connection (conn_id, conn_type, description, host, schema, login, port, "
                    f"password, extra, is_encrypted, is_extra_encrypted{team_col}) VALUES (:conn_id, "
                    ":conn_type, :description, :host, :schema, :login, :port, :password, :extra, "
                    f":is_encrypted, :is_extra_encrypted{team_val})"
                ),
                {**row, "team": team_name},
            )

    def add_variable(
        self,
        key_name: str,
        value: str,
        description: str | None = None,
        key: str | None = None,
        team_name: str | None = None,
    ) -> None:
        val, enc = self._enc(value, key)
        team_col, team_val = (", team_name", ", :t") if team_name else ("", "")
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    f'INSERT INTO variable ("key", val, description, is_encrypted{team_col}) '
                    f"VALUES (:k, :v, :d, :e{team_val})"
                ),
                {"k": key_name, "v": val, "d": description, "e": enc, "t": team_name},
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
    assert not supports(backend, "write")
    with pytest.raises(ReadOnlyBackend, match="cannot write variables"):
        backend.set_variable("k", "v")


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


# --- multi-team (Airflow 3.2+): Airflow 3.3.2's MetastoreBackend rule ------------------------------------

TEAMS = (None, "team_a", "team_b", "team_c")
#: id -> owner (None: global). Ids are unique across owners, as Airflow's schema has them.
OWNED = {"shared": None, "a_only": "team_a", "b_only": "team_b"}


def _visible(owner: str | None, team: str | None) -> bool:
    return owner is None or owner == team  # WHERE team_name = :team OR team_name IS NULL


def _seed_teams(db: AirflowDb) -> None:
    for conn_id, owner in OWNED.items():
        db.add_connection(
            conn_id, conn_type="http", host=f"{conn_id}.example.com", password=PW, team_name=owner
        )
        db.add_variable(f"{conn_id}_var", f"{VAR}-{conn_id}", team_name=owner)


def test_team_scoped_reads_follow_airflows_metastore_rule(db: AirflowDb) -> None:
    _seed_teams(db)
    backend = db.backend()
    for team in TEAMS:
        for conn_id, owner in OWNED.items():
            conn = backend.get_connection(conn_id, team_name=team)
            assert (conn is not None) is _visible(owner, team), (conn_id, team)
            assert (backend.get_conn_value(conn_id, team_name=team) is not None) is _visible(owner, team)
            value = backend.get_variable(f"{conn_id}_var", team_name=team)
            assert value == (f"{VAR}-{conn_id}" if _visible(owner, team) else None), (conn_id, team)
        expected = sorted(i for i, owner in OWNED.items() if _visible(owner, team))
        # Batch reads and prefetch (what the search path warms its cache with) follow the same rule.
        assert sorted(backend.get_connections([*OWNED, "missing"], team_name=team)) == expected
        assert sorted(backend.get_conn_values(list(OWNED), team_name=team)) == expected
        assert sorted(backend.prefetch_connections(team_name=team)) == expected
        var_keys = [f"{i}_var" for i in OWNED]
        assert sorted(backend.get_variables(var_keys, team_name=team)) == [f"{i}_var" for i in expected]
        assert sorted(backend.prefetch_variables(team_name=team)) == [f"{i}_var" for i in expected]
        if team is not None:  # a team's listing: what it can read
            assert backend.list_connections(team_name=team) == expected
            assert backend.list_variables(team_name=team) == [f"{i}_var" for i in expected]
    # Without a team, listing shows every id (as `airflow connections list`); reads stay scoped.
    assert backend.list_connections() == sorted(OWNED)
    assert backend.list_variables() == sorted(f"{i}_var" for i in OWNED)


def test_search_path_passes_the_team_to_airflow_db(db: AirflowDb) -> None:
    from credpath._search_path import SearchPath
    from credpath.errors import NotFound

    _seed_teams(db)
    search_path = SearchPath([("afdb", db.backend())])
    assert search_path.get_connection("a_only", team_name="team_a").host == "a_only.example.com"
    with pytest.raises(NotFound):
        search_path.get_connection("a_only", team_name="team_b")
    with pytest.raises(NotFound):
        search_path.get_connection("a_only")
    assert search_path.get_variable("b_only_var", team_name="team_b") == f"{VAR}-b_only"
    assert search_path.get_variable("b_only_var", None, team_name="team_a") is None
    assert search_path.get_variable("shared_var", team_name="team_c") == f"{VAR}-shared"


def test_schema_without_team_name_is_read_team_agnostically(tmp_path: Path, key: str) -> None:
    # Airflow 2.x-3.0: no owner column; every row is global, as credpath read it before teams.
    db = AirflowDb(f"sqlite:///{tmp_path / 'airflow2.db'}", key, DDL_BEFORE_TEAMS)
    try:
        db.add_connection("old_conn", conn_type="http", host="old.example.com", password=PW)
        db.add_variable("old_var", VAR)
        backend = db.backend()
        for team in TEAMS:
            assert backend.get_connection("old_conn", team_name=team).password == PW  # type: ignore[union-attr]
            assert backend.get_variable("old_var", team_name=team) == VAR
            assert list(backend.get_connections(["old_conn"], team_name=team)) == ["old_conn"]
        assert backend.list_connections(team_name="team_a") == ["old_conn"]
    finally:
        db.close()


# --- against Airflow 3.3.2 itself ------------------------------------------------------------------------

_AIRFLOW_SIDE = """
import hashlib, json, sys
from airflow.models import Connection, Variable
from airflow.models.team import Team
from airflow.secrets.metastore import MetastoreBackend
from airflow.utils.session import create_session

spec = json.loads(sys.stdin.read())
with create_session() as session:
    for team in spec["teams"]:
        session.add(Team(name=team))
with create_session() as session:
    for c in spec["connections"]:
        session.add(Connection(conn_id=c["id"], conn_type="http", host=c["host"], login="etl",
                               password=c["password"], extra=json.dumps(c["extra"]), team_name=c["team"]))
for v in spec["variables"]:
    Variable.set(v["key"], v["value"], description="d", team_name=v["team"])

def digest(value):
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:16]

backend = MetastoreBackend()
out = {"connection": {}, "variable": {}}
for team in spec["query_teams"]:
    for conn_id in spec["conn_ids"]:
        c = backend.get_connection(conn_id, team_name=team)
        out["connection"][f"{team}|{conn_id}"] = None if c is None else [
            c.conn_id, c.conn_type, c.host, c.login, digest(c.password), c.extra_dejson, c.team_name]
    for key in spec["var_keys"]:
        out["variable"][f"{team}|{key}"] = digest(backend.get_variable(key, team_name=team))
print(json.dumps(out))
"""


def _digest(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.fixture(scope="module")
def airflow_teams(airflow_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> AirflowEnv:
    home = tmp_path_factory.mktemp("airflow-teams-home")
    (home / "dags").mkdir()
    env = AirflowEnv(
        venv=airflow_venv, home=home, dags=home / "dags", base_env=clean_environment(home, airflow_venv)
    )
    env.base_env["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
    env.base_env["AIRFLOW__CORE__MULTI_TEAM"] = "True"
    env.run("db", "migrate", timeout=300, check=True)
    return env


@pytest.mark.airflow
def test_same_answers_as_airflows_metastore_backend(airflow_teams: AirflowEnv) -> None:
    owners = {"shared": None, "a_only": "team_a", "b_only": "team_b", "a_too": "team_a"}
    spec = {
        "teams": ["team_a", "team_b", "team_c"],
        "connections": [
            {
                "id": i,
                "host": f"{i}.example.com",
                "password": f"{PW}-{i}",
                "extra": {"token": f"{TOKEN}-{i}"},
                "team": team,
            }
            for i, team in owners.items()
        ],
        "variables": [{"key": f"{i}_var", "value": f"{VAR}-{i}", "team": team} for i, team in owners.items()],
        "query_teams": [None, "team_a", "team_b", "team_c"],
        "conn_ids": [*owners, "missing"],
        "var_keys": [*(f"{i}_var" for i in owners), "missing_var"],
    }
    result = subprocess.run(
        [str(airflow_teams.bin / "python"), "-c", _AIRFLOW_SIDE],
        input=json.dumps(spec), env=airflow_teams.env(), capture_output=True, text=True, timeout=180,
        cwd=airflow_teams.home,
    )  # fmt: skip
    # The last line of the traceback only, the test marker scrubbed (values never shown whole).
    reason = (result.stderr.strip().splitlines() or [""])[-1][:300].replace("s3cr3t", "<marker>")
    assert result.returncode == 0, f"Airflow's side failed: {reason}"
    airflow_says = json.loads(result.stdout.strip().splitlines()[-1])

    backend = AirflowDatabaseBackend(
        url=f"sqlite:///{airflow_teams.home / 'airflow.db'}",
        fernet_key=airflow_teams.base_env["AIRFLOW__CORE__FERNET_KEY"],
    )
    credpath_says: dict[str, dict[str, Any]] = {"connection": {}, "variable": {}}
    for team in spec["query_teams"]:
        for conn_id in spec["conn_ids"]:
            c = backend.get_connection(conn_id, team_name=team)
            credpath_says["connection"][f"{team}|{conn_id}"] = None if c is None else [
                c.conn_id, c.conn_type, c.host, c.login, _digest(c.password), c.extra_dejson,
                owners[conn_id],
            ]  # fmt: skip
        for key in spec["var_keys"]:
            credpath_says["variable"][f"{team}|{key}"] = _digest(backend.get_variable(key, team_name=team))
    backend.close()
    assert credpath_says == airflow_says
    # Not vacuous: each team saw its own rows and the global ones, never another team's.
    seen = {k for k, v in airflow_says["connection"].items() if v is not None}
    assert "team_a|a_only" in seen and "team_a|shared" in seen and "None|shared" in seen
    assert "team_b|a_only" not in seen and "None|a_only" not in seen and "team_c|b_only" not in seen
