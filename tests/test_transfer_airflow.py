"""Import/export and migration against files and databases made by real Apache Airflow 3.3.2 (``-m airflow``).

An own AIRFLOW_HOME with a Fernet key (the shared ``airflow`` fixture has none), filled with
``airflow connections add`` / ``airflow variables set``:

- files written by ``airflow connections export`` / ``airflow variables export`` (.json, .yaml, .env in both
  serialisations) import into credpath unchanged;
- files written by credpath import into Airflow with ``airflow connections import`` / ``variables import``;
- the encrypted database migrates into credpath's metastore and into OpenBao, field for field.

Airflow's own output may show passwords, so it is never printed; only exit codes are asserted on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath import _formats as formats
from credpath import _transfer as transfer
from credpath._migrate import connection_key, migrate
from credpath._search_path import SearchPath
from credpath.backends.airflow_db import AirflowDatabaseBackend
from credpath.backends.metastore import MetastoreBackend
from credpath.model import Connection
from tests.conftest import assert_no_secret
from tests.servers.airflow_env import AirflowEnv, clean_environment
from tests.servers.openbao import OpenBao

pytestmark = pytest.mark.airflow

URIS = {
    "af_pg": "postgres://etl:pw%40s3cr3t-1@db.example.com:5432/analytics?sslmode=require&connect_timeout=10",
    "af_http": "https://svc:tok-s3cr3t-2@api.example.com/v1",
}
JSON_CONN = {
    "conn_type": "aws",
    "login": "AKIAEXAMPLE",
    "password": "aws-s3cr3t-3",
    "description": "prod account",
    "extra": {"region_name": "eu-west-1", "api_key": "key-s3cr3t-3", "retries": 3},
}
VARIABLES = {"af_plain": "hello", "af_json": '{"a": 1, "token": "t-s3cr3t-4"}', "af_secret": "v-s3cr3t-5"}


def expected_connections() -> dict[str, Connection]:
    expected = {cid: Connection.from_uri(uri, conn_id=cid) for cid, uri in URIS.items()}
    expected["af_json"] = Connection.from_dict(JSON_CONN, conn_id="af_json")
    return expected


@pytest.fixture(scope="module")
def airflow_fernet(airflow_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> AirflowEnv:
    home = tmp_path_factory.mktemp("airflow-fernet-home")
    (home / "dags").mkdir()
    env = AirflowEnv(
        venv=airflow_venv, home=home, dags=home / "dags", base_env=clean_environment(home, airflow_venv)
    )
    env.base_env["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
    env.run("db", "migrate", timeout=300, check=True)
    for conn_id, uri in URIS.items():
        env.run("connections", "add", conn_id, "--conn-uri", uri, check=True)
    env.run("connections", "add", "af_json", "--conn-json", json.dumps(JSON_CONN), check=True)
    for key, value in VARIABLES.items():
        env.run("variables", "set", key, value, check=True)
    env.run("variables", "set", "af_described", "x", "--description", "a described variable", check=True)
    return env


def _airflow_db(env: AirflowEnv, **kwargs: Any) -> AirflowDatabaseBackend:
    return AirflowDatabaseBackend(
        url=f"sqlite:///{env.home / 'airflow.db'}",
        fernet_key=env.base_env["AIRFLOW__CORE__FERNET_KEY"],
        **kwargs,
    )


def _decoded(value: str | None) -> Any:
    try:
        return json.loads(value or "")
    except ValueError:
        return value


def _metastore(tmp_path: Path, name: str = "m") -> MetastoreBackend:
    return MetastoreBackend(
        url=f"sqlite:///{tmp_path / f'{name}.db'}", fernet_key=Fernet.generate_key().decode()
    )


def test_database_is_encrypted_and_read_back_field_for_field(airflow_fernet: AirflowEnv) -> None:
    import sqlite3

    with sqlite3.connect(airflow_fernet.home / "airflow.db") as db:
        flags = db.execute(
            "SELECT is_encrypted, is_extra_encrypted FROM connection WHERE conn_id='af_pg'"
        ).fetchone()
        stored = db.execute("SELECT password FROM connection WHERE conn_id='af_pg'").fetchone()[0]
    assert flags == (1, 1) and "s3cr3t" not in stored
    backend = _airflow_db(airflow_fernet)
    for conn_id, conn in expected_connections().items():
        got = backend.get_connection(conn_id)
        assert got is not None and connection_key(got) == connection_key(conn), conn_id
    assert {k: backend.get_variable(k) for k in VARIABLES} == VARIABLES
    assert backend.get_variable_record("af_described").description == "a described variable"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("file_name", "extra_args"),
    [
        ("conns.json", []),
        ("conns.yaml", []),
        ("conns_uri.env", ["--serialization-format", "uri"]),
        ("conns_json.env", ["--serialization-format", "json"]),
    ],
)
def test_airflow_connection_exports_import_unchanged(
    airflow_fernet: AirflowEnv, tmp_path: Path, file_name: str, extra_args: list[str]
) -> None:
    file = tmp_path / file_name
    airflow_fernet.run("connections", "export", str(file), *extra_args, check=True)
    parsed = formats.parse_connections_file(file)
    truth = _airflow_db(airflow_fernet)
    assert set(parsed) == set(truth.list_connections())
    for conn_id, conn in parsed.items():
        expected = truth.get_connection(conn_id)
        assert expected is not None
        if file_name == "conns_uri.env":
            expected = Connection.from_uri(expected.get_uri(), conn_id=conn_id)  # a URI has no description
        assert connection_key(conn) == connection_key(expected), conn_id
    # Through credpath's importer into a store, and out again with the same content.
    store = _metastore(tmp_path)
    result = transfer.import_connections(SearchPath([store], cache=False), file, to="metastore")
    assert result.written == len(parsed)
    for conn_id, conn in parsed.items():
        assert connection_key(store.get_connection(conn_id)) == connection_key(conn)  # type: ignore[arg-type]


def test_airflow_variable_export_imports_unchanged(airflow_fernet: AirflowEnv, tmp_path: Path) -> None:
    file = tmp_path / "vars.json"
    airflow_fernet.run("variables", "export", str(file), check=True)
    records = formats.parse_variable_records(file)
    # Airflow's export decodes JSON values and its import re-encodes them (indent=2): same JSON, new text.
    assert {k: _decoded(records[k].value) for k in VARIABLES} == {
        k: _decoded(v) for k, v in VARIABLES.items()
    }
    assert records["af_described"].description == "a described variable"
    store = _metastore(tmp_path)
    transfer.import_variables(SearchPath([store], cache=False), file, to="metastore")
    assert {k: store.get_variable(k) for k in VARIABLES} == {k: records[k].value for k in VARIABLES}


@pytest.mark.parametrize("suffix", ["json", "yaml", "env"])
def test_credpath_exports_import_into_airflow(
    airflow_fernet: AirflowEnv, tmp_path: Path, suffix: str
) -> None:
    store = _metastore(tmp_path)
    conns = {
        f"cp_{suffix}_{cid}": conn.with_id(f"cp_{suffix}_{cid}")
        for cid, conn in expected_connections().items()
    }
    for conn in conns.values():
        store.set_connection(conn)
    store.set_variable(f"cp_{suffix}_var", "from-credpath")
    path = SearchPath([store], cache=False)
    conn_file, var_file = tmp_path / f"c.{suffix}", tmp_path / f"v.{suffix}"
    assert transfer.export_connections(path, conn_file, source="metastore") == len(conns)
    transfer.export_variables(path, var_file, source="metastore")

    assert airflow_fernet.run("connections", "import", str(conn_file)).returncode == 0
    assert airflow_fernet.run("variables", "import", str(var_file)).returncode == 0
    truth = _airflow_db(airflow_fernet)
    for conn_id, conn in conns.items():
        got = truth.get_connection(conn_id)
        assert got is not None, conn_id
        if suffix == "env":
            conn = Connection.from_uri(conn.get_uri(), conn_id=conn_id)  # .env holds URIs: no description
        assert connection_key(got) == connection_key(conn), conn_id
    assert truth.get_variable(f"cp_{suffix}_var") == "from-credpath"


def test_airflow_database_migrates_into_metastore_and_vault(
    airflow_fernet: AirflowEnv, openbao: OpenBao, tmp_path: Path
) -> None:
    from credpath.backends.vault import VaultBackend

    source = _airflow_db(airflow_fernet, connections_lookup_pattern="^af_", variables_lookup_pattern="^af_")
    ids = source.list_connections()
    assert ids == sorted(expected_connections())
    store = _metastore(tmp_path)
    report = migrate(source, store)
    assert report.exit_code == 0 and report.verified == len(ids) + len(VARIABLES) + 1
    assert_no_secret(report.to_json())

    mount = openbao.enable_kv(2)
    try:
        vault = VaultBackend(url=openbao.addr, token=openbao.root_token, mount_point=mount)
        report = migrate(source, vault, concurrency=4)
        assert report.exit_code == 0 and report.summary()["added"] == len(ids) + len(VARIABLES) + 1
        for target in (store, vault):
            for conn_id, conn in expected_connections().items():
                got = target.get_connection(conn_id)
                assert got is not None and connection_key(got) == connection_key(conn), conn_id
            assert {k: target.get_variable(k) for k in VARIABLES} == VARIABLES
        again = migrate(source, vault)
        assert again.written == 0 and again.summary()["unchanged"] == len(ids) + len(VARIABLES) + 1
    finally:
        openbao.disable(mount)


def test_cli_migrate_from_airflow_db_with_env_fernet_key(
    airflow_fernet: AirflowEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from credpath.cli import cli

    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CREDPATH_CONFIG", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", airflow_fernet.base_env["AIRFLOW__CORE__FERNET_KEY"])
    dst = tmp_path / "dst.db"
    key = Fernet.generate_key().decode()
    src_kwargs = json.dumps({"url": f"sqlite:///{airflow_fernet.home / 'airflow.db'}"})
    dst_kwargs = json.dumps({"url": f"sqlite:///{dst}", "fernet_key": key})
    result = CliRunner().invoke(
        cli,
        ["migrate", "--from", "airflow-db", "--from-kwargs", src_kwargs, "--to", "metastore", "--to-kwargs",
         dst_kwargs, "--include", "af_*"],
    )  # fmt: skip
    assert_no_secret(result.stdout + result.stderr)
    assert result.exit_code == 0, result.stderr
    assert "verified 7" in result.stdout
    stored = MetastoreBackend(url=f"sqlite:///{dst}", fernet_key=key)
    assert connection_key(stored.get_connection("af_pg")) == connection_key(expected_connections()["af_pg"])  # type: ignore[arg-type]
