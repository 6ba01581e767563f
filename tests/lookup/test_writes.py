"""Writes: which backend takes them, team scoping, and invalidating both cache tiers."""

from __future__ import annotations

from pathlib import Path

import pytest

from credpath._search_path import SearchPath
from credpath.errors import ConfigError, NotFound, ReadOnlyBackend
from credpath.model import Connection
from tests.lookup.helpers import (
    CKEY,
    URI_A,
    URI_B,
    VALUE,
    Clock,
    Node,
    path,
    quiet_path,
)
from tests.memory_backend import (
    MemoryBackend,
)


def test_writes_invalidate_cache_and_go_to_named_backend():
    ro = MemoryBackend({"db": URI_A})
    ro.set_connection = None  # type: ignore[assignment]
    store = MemoryBackend()
    sp = SearchPath([("store", store)])
    with pytest.raises(NotFound):
        sp.get_connection("db")
    assert sp.set_connection(Connection.from_uri(URI_B, conn_id="db")) == "store"
    assert sp.get_connection("db").host == "db-b"
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"), to="store")
    assert sp.get_connection("db").host == "db-a"
    assert sp.delete_connection("db", to="store") == "store"
    with pytest.raises(NotFound):
        sp.get_connection("db")
    with pytest.raises(ConfigError, match="no backend named 'nope'"):
        sp.set_variable("k", "v", to="nope")


def test_read_only_backend_refuses_writes():
    from credpath.protocol import BaseBackend

    class ReadOnly(BaseBackend):
        def get_conn_value(self, conn_id):
            return None

        def get_variable(self, key):
            return None

    sp = SearchPath([("ro", ReadOnly())])
    with pytest.raises(ReadOnlyBackend):
        sp.set_variable("k", "v")


def test_write_messages_speak_for_the_library():
    sp = SearchPath([("store", MemoryBackend())])
    with pytest.raises(ConfigError) as info:
        sp.set_variable("k", "v", to="nope")
    assert str(info.value).startswith("no backend named 'nope'")  # main: "--to: no backend named ..."


def test_delete_variable_and_set_variable_invalidate_the_cache():
    store = MemoryBackend(variables={"k": "v1"})
    sp = path(store)
    assert sp.get_variable("k") == "v1"
    assert sp.set_variable("k", "v2") == "b0"
    assert sp.get_variable("k") == "v2"
    assert sp.delete_variable("k") == "b0"
    with pytest.raises(NotFound):
        sp.get_variable("k")
    assert sp.delete_variable("k") is None  # nothing deleted
    assert sp.delete_connection("nope") is None
    with pytest.raises(ConfigError, match="value must be a string, got int"):
        sp.set_variable("k", 5)


def test_writes_take_no_store_options_and_a_team_only_where_writes_are_team_scoped():
    # Store behaviour is a backend setting: the search path's writes take none.
    store = MemoryBackend()
    sp = path(store)
    conn = Connection.from_uri(URI_A, conn_id="db")
    with pytest.raises(TypeError):
        sp.set_connection(conn, on_deleted="recover")  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"backend 'b0' .*has no team-scoped writes"):
        sp.set_connection(conn, team_name="blue")
    with pytest.raises(ConfigError, match="has no team-scoped writes"):
        sp.set_variable("k", "v", team_name="blue")
    assert store.connections == {} and store.variables == {}
    assert sp.set_connection(conn, overwrite=True) == "b0"
    with pytest.raises(ConfigError, match="no conn_id"):
        sp.set_connection(Connection(conn_type="x"))


def test_set_connection_passes_the_serialization_to_the_store():
    class Recording(MemoryBackend):
        def set_connection(self, conn, *, overwrite=True, serialization="json"):
            self.calls.append(("set_connection", serialization))
            super().set_connection(conn, overwrite=overwrite, serialization=serialization)

    store = Recording()
    sp = path(store)
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"), serialization="uri")
    sp.set_connection(Connection.from_uri(URI_A, conn_id="db"))
    assert [c for c in store.calls if c[0] == "set_connection"] == [
        ("set_connection", "uri"),
        ("set_connection", "json"),  # the store's default
    ]


def test_writes_go_to_the_metastore_first_else_the_first_writable():
    from credpath.protocol import BaseBackend

    class ReadOnly(BaseBackend):
        def get_conn_value(self, conn_id):
            return None

    ro, first, meta = ReadOnly(), MemoryBackend(), MemoryBackend()
    sp = SearchPath([("ro", ro), ("first", first), ("metastore", meta)])
    assert sp.set_variable("k", "v") == "metastore"
    sp = SearchPath([("ro", ro), ("first", first)])
    assert sp.set_variable("k", "v") == "first"
    with pytest.raises(ReadOnlyBackend, match="cannot write variables"):
        sp.set_variable("k", "v", to="ro")


def test_a_write_invalidates_the_cached_value_of_every_team():
    from tests.memory_backend import TeamMemoryBackend

    store = TeamMemoryBackend(variables={"k": "v1"})
    sp = path(store)
    assert sp.get_variable("k", team_name="t") == "v1"
    assert sp.get_variable("k") == "v1"
    sp.set_variable("k", "v2")
    assert sp.get_variable("k", team_name="t") == "v2"
    assert sp.get_variable("k") == "v2"


def test_set_variable_overwrites_by_default():
    class Recording(MemoryBackend):
        def set_variable(self, key, value, *, overwrite=True):
            self.calls.append(("set_variable", overwrite))
            super().set_variable(key, value, overwrite=overwrite)

    store = Recording()
    sp = quiet_path(store)
    sp.set_variable("k", "v")
    sp.set_variable("k", "w", overwrite=False)
    assert [c for c in store.calls if c[0] == "set_variable"] == [
        ("set_variable", True),
        ("set_variable", False),
    ]


def test_a_write_invalidates_the_shared_entry(db: Path, clock: Clock) -> None:
    a, b = Node(db), Node(db)
    a.path.get_variable("k")
    b.path.set_variable("k", "s3cr3t-new")
    assert a.tier.get(CKEY) is None
    c = Node(db)
    c.backend.variables["k"] = "s3cr3t-new"
    assert c.path.get_variable("k") == "s3cr3t-new"
    assert c.reads == 1


@pytest.mark.parametrize("other_team", [None, "k"])  # "k": a team named like the key
def test_a_write_invalidates_a_team_entry_adopted_from_the_shared_tier(
    db: Path, clock: Clock, other_team: str | None
) -> None:
    a, b = Node(db), Node(db)
    b.path.get_variable("other", None, team_name=other_team)
    a.path.get_variable("k", team_name="t1")
    assert b.path.get_variable("k", team_name="t1") == VALUE
    assert b.backend.calls == [("get_variable", "other")]  # "k" came from the shared tier
    b.path.set_variable("k", "s3cr3t-new")
    assert b.path.get_variable("k", team_name="t1") == "s3cr3t-new"


@pytest.mark.parametrize("other_team", [None, "k"])
def test_a_write_invalidates_a_team_entry_this_process_read(
    db: Path, clock: Clock, other_team: str | None
) -> None:
    a = Node(db)
    a.path.get_variable("other", None, team_name=other_team)
    a.path.get_variable("k", team_name="t1")
    a.path.set_variable("k", "s3cr3t-new")
    assert a.path.get_variable("k", team_name="t1") == "s3cr3t-new"
