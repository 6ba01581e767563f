"""The one reader (credpath.reading): batched where the backend declares "batch", structured where it
declares "structured", one id at a time otherwise; per-id failures never hide the other ids' answers."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from credpath import reading
from credpath.backends.files import LocalFilesystemBackend
from credpath.backends.metastore import MetastoreBackend
from credpath.errors import BackendError, ConfigError, ReadOnlyBackend
from credpath.migrate import migrate
from credpath.model import Connection, Variable
from credpath.protocol import BaseBackend
from tests.memory_backend import AirflowStyleBackend, BatchMemoryBackend, MemoryBackend, Unreachable

URI = "postgres://u:pw-s3cr3t-r@db.example.com:5432/app"


def test_batch_backends_are_read_in_chunks_and_a_failed_chunk_fails_only_its_ids() -> None:
    store = BatchMemoryBackend({f"c{i}": URI for i in range(5)})
    calls: list[tuple[str, ...]] = []
    real = store.get_conn_values

    def chunked(ids: list[str]) -> dict[str, str]:
        calls.append(tuple(ids))
        if "c3" in ids:
            raise Unreachable("down")
        return real(ids)

    store.get_conn_values = chunked  # type: ignore[method-assign]
    found = reading.read_many(store, "connection", [f"c{i}" for i in range(5)] + ["nope"], chunk=2)
    assert calls == [("c0", "c1"), ("c2", "c3"), ("c4", "nope")]
    assert {k for k, v in found.items() if isinstance(v, Connection)} == {"c0", "c1", "c4"}
    assert isinstance(found["c2"], Unreachable) and isinstance(found["c3"], Unreachable)
    assert "nope" not in found  # misses are absent
    assert found["c0"].conn_id == "c0" and found["c0"].host == "db.example.com"


def test_without_batch_one_read_per_id_concurrently_and_a_failure_is_its_ids_own() -> None:
    class Flaky(MemoryBackend):
        def get_conn_value(self, conn_id: str) -> str | None:
            if conn_id == "bad":
                raise Unreachable("down")
            return super().get_conn_value(conn_id)

    store = Flaky({"a": URI, "b": URI})
    with ThreadPoolExecutor(2) as pool:
        found = reading.read_many(store, "connection", ["a", "bad", "b", "miss"], pool=pool)
    assert set(found) == {"a", "bad", "b"} and isinstance(found["bad"], Unreachable)
    assert [c for c in store.calls if c[0] == "get_conn_values"] == []


def test_a_malformed_value_in_a_batch_fails_its_id_only() -> None:
    store = BatchMemoryBackend({"good": URI, "broken": "postgres://u:pw-s3cr3t-x@h:notaport/db"})
    found = reading.read_batch(store, "connection", ["good", "broken"])
    assert isinstance(found["good"], Connection)
    assert isinstance(found["broken"], ConfigError)
    assert "broken" in str(found["broken"]) and "s3cr3t" not in str(found["broken"])


def test_a_foreign_backend_is_read_by_its_methods() -> None:
    foreign = AirflowStyleBackend(prefix="team")
    found = reading.read_many(foreign, "connection", ["team_a", "other"])
    assert set(found) == {"team_a"} and found["team_a"].host == "team_a.internal"
    assert reading.read(foreign, "variable", "team_x") == "team:team_x"
    with pytest.raises(ReadOnlyBackend, match="cannot list connections"):
        reading.list_ids(foreign, "connection")


def test_a_value_that_is_not_a_string_names_the_backend_and_id() -> None:
    class Numbers(MemoryBackend):
        def get_variable(self, key: str):  # type: ignore[override]
            return 42

    with pytest.raises(BackendError, match=r"backend 'memory' \(memory\): returned a int for variable 'n'"):
        reading.read(Numbers(), "variable", "n")


def test_exists_does_not_parse_a_stored_connection() -> None:
    store = MemoryBackend({"broken": "postgres://u@h:notaport/db"})
    assert reading.exists(store, "connection", "broken")
    assert not reading.exists(store, "connection", "absent")
    with pytest.raises(ConfigError):
        reading.read(store, "connection", "broken")


def test_records_come_from_a_structured_store_with_descriptions(tmp_path: Path) -> None:
    variables = tmp_path / "variables.json"
    variables.write_text(json.dumps({"plain": "v1", "described": {"value": "v2", "description": "why"}}))
    files = LocalFilesystemBackend(variables_file_path=str(variables))
    found = reading.read_many(files, "variable", ["plain", "described", "miss"], records=True)
    assert found == {"plain": Variable("plain", "v1"), "described": Variable("described", "v2", "why")}
    plain = reading.read_many(files, "variable", ["described"])
    assert plain == {"described": "v2"}


def test_migrate_copies_variable_descriptions_from_files_into_the_metastore(tmp_path: Path) -> None:
    # Files declared "batch" but the reader asked its get_variables, which has no descriptions: the
    # metastore got none. Now the one reader asks a structured store for records.
    variables = tmp_path / "variables.json"
    variables.write_text(json.dumps({"described": {"value": "v2", "description": "why"}}))
    files = LocalFilesystemBackend(variables_file_path=str(variables))
    metastore = MetastoreBackend(
        url=f"sqlite:///{tmp_path / 'm.db'}", fernet_key=Fernet.generate_key().decode()
    )
    report = migrate(files, metastore, connections=False)
    assert report.verified == 1 and not report.failed
    assert metastore.get_variable_record("described") == Variable("described", "v2", "why")


def test_the_default_records_of_a_plain_backend_have_no_description() -> None:
    store = MemoryBackend(variables={"k": "v"})
    assert store.get_variable_records(["k", "miss"]) == {"k": Variable("k", "v")}
    assert BatchMemoryBackend(variables={"k": "v"}).get_variable_records(["k"]) == {"k": Variable("k", "v")}
    assert isinstance(store, BaseBackend)


# --- a backend written from protocol.py alone --------------------------------------------------------------


class _ProtocolOnly(BaseBackend):
    """Written from credpath.protocol's docstring only: every capability, over one dict."""

    alias = "protocol-only"
    store_name = "Protocol Only"
    capabilities = frozenset({"write", "list", "batch", "prefetch"})

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.data: dict[str, dict[str, str]] = {"connection": {}, "variable": {}}
        self.batches = 0

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        return self.data["connection"].get(conn_id) if self.wants("connection", conn_id) else None

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return self.data["variable"].get(key) if self.wants("variable", key) else None

    def set_connection(self, conn: Connection, *, overwrite: bool = True, serialization="json") -> None:
        self._set("connection", conn.conn_id, self.serialize_connection(conn, serialization), overwrite)

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        self._set("variable", key, value, overwrite)

    def _set(self, kind: str, key: str, value: str, overwrite: bool) -> None:
        if not overwrite and key in self.data[kind]:
            raise self.config_error(f"{kind} {key!r} already exists")
        self.data[kind][key] = value

    def delete_connection(self, conn_id: str) -> bool:
        return self.data["connection"].pop(conn_id, None) is not None

    def delete_variable(self, key: str) -> bool:
        return self.data["variable"].pop(key, None) is not None

    def list_connections(self) -> list[str]:
        return sorted(self.data["connection"])

    def list_variables(self) -> list[str]:
        return sorted(self.data["variable"])

    def get_conn_values(self, ids: list[str], team_name: str | None = None) -> dict[str, str]:
        self.batches += 1
        return {i: self.data["connection"][i] for i in ids if i in self.data["connection"]}

    def get_variables(self, keys: list[str], team_name: str | None = None) -> dict[str, str]:
        self.batches += 1
        return {k: self.data["variable"][k] for k in keys if k in self.data["variable"]}

    def prefetch_connections(self) -> dict[str, str]:
        return dict(self.data["connection"])

    def prefetch_variables(self) -> dict[str, str]:
        return dict(self.data["variable"])


def test_a_backend_written_from_the_protocol_works_with_migrate_prefetch_and_listing(tmp_path: Path) -> None:
    from credpath.search_path import SearchPath

    metastore = MetastoreBackend(
        url=f"sqlite:///{tmp_path / 'm.db'}", fernet_key=Fernet.generate_key().decode()
    )
    metastore.set_connection(Connection.from_uri(URI, conn_id="db"))
    metastore.set_variable("var", "value-s3cr3t-p")
    mine = _ProtocolOnly()
    report = migrate(metastore, mine, connection_format="uri")
    assert report.verified == 2 and not report.failed
    assert mine.data["connection"]["db"].startswith("postgres://")  # --format uri reached the store
    assert mine.batches > 0  # planned and verified with its batch reads
    back = MetastoreBackend(url=f"sqlite:///{tmp_path / 'b.db'}", fernet_key=Fernet.generate_key().decode())
    assert migrate(mine, back).verified == 2
    assert back.get_connection("db").host == "db.example.com"

    path = SearchPath([("mine", mine)])
    assert path.list_ids("connection").found == {"db": ["mine"]}
    reports = path.prefetch(prefix=True)
    assert reports["connection"].hits == 1 and reports["variable"].hits == 1
    assert path.get_connection("db").host == "db.example.com"
    assert path.set_variable("new", "v", to="mine") == "mine"
