"""The one reader (credpath._reading): batched where the backend declares "batch", structured where it
declares "structured", one id at a time otherwise; per-id failures never hide the other ids' answers."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from credpath import _reading as reading
from credpath._migrate import migrate
from credpath.backends.files import LocalFilesystemBackend
from credpath.backends.metastore import MetastoreBackend
from credpath.errors import BackendError, ConfigError, ReadOnlyBackend
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
    from credpath._search_path import SearchPath

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


# --- gaps the mutation run of reading.py showed -------------------------------------------------------------


def test_read_many_chunks_at_100_ids_by_default() -> None:
    store = BatchMemoryBackend({f"c{i}": URI for i in range(250)})
    found = reading.read_many(store, "connection", [f"c{i}" for i in range(250)])
    sizes = [len(ids) for name, ids in store.calls if name == "get_conn_values"]
    assert sizes == [100, 100, 50] and reading.READ_CHUNK == 100
    assert len(found) == 250


class _Nameless:
    """A foreign backend with no ``name`` attribute: messages fall back to its class name."""

    capabilities = frozenset({"batch"})

    def get_conn_value(self, conn_id: str) -> str | None:
        return None

    def get_variable(self, key: str):  # type: ignore[no-untyped-def]
        return 7 if key == "seven" else None

    def get_config(self, key: str) -> str | None:
        return None

    def get_conn_values(self, ids: list[str]) -> dict[str, object]:
        return dict.fromkeys(ids)  # a broken store: "hits" without values

    def get_variables(self, keys: list[str]) -> dict[str, str]:
        return {}


def test_a_foreign_backend_without_a_name_is_named_by_its_class() -> None:
    assert reading.name_of(_Nameless()) == "_Nameless"
    assert reading.label_of(_Nameless()) == "backend '_Nameless'"
    assert reading.label_of(_Nameless(), "prod") == "backend 'prod'"
    with pytest.raises(BackendError) as info:
        reading.read(_Nameless(), "variable", "seven")
    assert info.value.backend == "_Nameless"
    assert "backend '_Nameless': returned a int for variable 'seven'" in str(info.value)


def test_a_foreign_batch_hit_without_a_value_is_an_error_of_its_id() -> None:
    found = reading.read_batch(_Nameless(), "connection", ["a"])
    assert isinstance(found["a"], BackendError)
    assert "backend '_Nameless': returned nothing for connection 'a'" in str(found["a"])


def test_exists_for_variables_and_config() -> None:
    store = MemoryBackend(variables={"k": "v"}, config={"c": "x"})
    assert reading.exists(store, "variable", "k") is True
    assert reading.exists(store, "variable", "missing") is False
    assert reading.exists(store, "config", "c") is True
    assert reading.exists(store, "config", "missing") is False


def test_batch_reads_give_plain_values_unless_records_are_asked_for() -> None:
    store = BatchMemoryBackend(variables={"k": "v"})
    assert reading.read_batch(store, "variable", ["k", "miss"]) == {"k": "v"}
    assert reading.read_batch(store, "variable", ["k"], records=True) == {"k": Variable("k", "v")}


def test_one_at_a_time_records_only_for_variables() -> None:
    class Described(MemoryBackend):
        def get_variable_record(self, key: str, team_name: str | None = None) -> Variable | None:
            value = self.variables.get(key)
            return None if value is None else Variable(key, value, "described")

    store = Described({"c": URI}, variables={"k": "v"})
    assert reading.read_many(store, "variable", ["k", "miss"], records=True) == {
        "k": Variable("k", "v", "described")
    }
    assert reading.read_many(store, "variable", ["k"]) == {"k": "v"}  # no records asked: the plain read
    found = reading.read_many(store, "connection", ["c"], records=True)  # records apply to variables only
    assert isinstance(found["c"], Connection) and found["c"].host == "db.example.com"


def test_a_record_whose_value_is_not_a_string_fails_its_id() -> None:
    class Odd(MemoryBackend):
        def get_variable_record(self, key: str, team_name: str | None = None) -> Variable | None:
            return Variable(key, 3) if key == "n" else None  # type: ignore[arg-type]

    found = reading.read_many(Odd(variables={"ok": "v"}), "variable", ["n", "ok"], records=True)
    assert isinstance(found["n"], BackendError) and "returned a int for variable 'n'" in str(found["n"])
    assert "ok" not in found  # Odd's records know only "n": the plain value is not asked


def test_a_batch_of_a_credpath_backend_parses_with_its_own_deserializer() -> None:
    class Tagged(BatchMemoryBackend):
        def deserialize_connection(self, conn_id: str, value: str) -> Connection:
            parsed = Connection.from_value(value, conn_id=conn_id)
            return dataclasses.replace(parsed, description="parsed by the store")

    found = reading.read_batch(Tagged({"c": URI}), "connection", ["c"])
    assert found["c"].description == "parsed by the store"  # type: ignore[union-attr]
