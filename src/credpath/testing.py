"""The backend contract suite, shipped with credpath so any backend, in-tree or third-party, runs it.

The same behaviours credpath's own stores pass (tests/backends/test_contract.py), as a test class to
subclass, in the manner of keyring's ``BackendBasicTests``::

    import pytest
    from credpath.testing import BackendContract

    class TestMyStore(BackendContract):
        @pytest.fixture
        def harness(self):
            return MyStoreHarness()  # make_backend(**kwargs) and seed(kind, key, raw_value)

A harness has ``make_backend(**kwargs)`` (a fresh backend on a clean namespace of the store; ``kwargs`` are
backend options such as ``connections_lookup_pattern``) and ``seed(kind, key, raw_value)`` (a raw write of a
``connection``/``variable``/``config`` with the store's native client, not through the backend). Optional:
``api_calls() -> int``, the number of API calls the store has seen (used to prove "no call"). ``seed`` raises
``ValueError`` for a value the store cannot hold (a malformed URI in a store of structured rows), which skips
the tests that need it; a store without config lookups (``get_config`` not implemented) skips the config test;
write, list and delete tests run where the backend implements them. The rotation capabilities'
cases build the backend with the capability's setting on (``make_backend(version_check=True)``, ``watch``,
``cap_at_rotation``: :data:`credpath.protocol.CAPABILITY_SETTINGS`).

:func:`harness_fixture` builds a ``harness`` fixture parametrised over several stores from their own
fixtures (``<alias>_harness``); a store whose fixture is missing FAILS, it is never skipped.

This module imports pytest; ``import credpath`` never imports it.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from credpath.errors import ConfigError, CredpathError, ReadOnlyBackend
from credpath.model import Connection
from credpath.protocol import (
    CAPABILITIES,
    CAPABILITY_METHODS,
    CAPABILITY_SETTINGS,
    BaseBackend,
    Capability,
    WriteConfirmation,
    check_capabilities,
    enabled,
    supports,
)

__all__ = [
    "API_KEY",
    "PASSWORD",
    "BackendContract",
    "NoNetwork",
    "harness_fixture",
    "harness_fixture_name",
    "new_id",
    "reported_version",
    "require",
    "seed_or_skip",
]

PASSWORD = "pw-s3cr3t-contract"
API_KEY = "key-s3cr3t-contract"


def new_id(label: str) -> str:
    """A fresh id, lower case letters/digits/underscore: valid in every store (env upper-cases, Azure and
    Kubernetes map '_' to '-')."""
    return f"ct_{label}_{uuid.uuid4().hex[:8]}"


def seed_or_skip(harness: Any, kind: str, key: str, raw: str) -> None:
    try:
        harness.seed(kind, key, raw)
    except (NotImplementedError, ReadOnlyBackend) as exc:
        pytest.skip(f"harness cannot seed {kind}: {type(exc).__name__}")


def reported_version(read: Callable[[str], Any], key: str) -> str:
    """The version a plain read of ``key`` reports to the lookup in progress (its first word: Secrets
    Manager adds its stages in parentheses); fails if it reports none."""
    from credpath._lookup import trace

    context = trace.LookupContext("variable", key)
    with trace.calling(context, "contract"):
        assert read(key) is not None, f"{key!r} was seeded but reads as missing"
    assert context.version, "a store that keeps versions reports the version of each read"
    return context.version.split(" ")[0]


_CAPABILITY_OF = {method: c for c, methods in CAPABILITY_METHODS.items() for method in methods}


def require(backend: Any, *capabilities: str) -> None:
    """Skip unless ``backend`` declares every one of ``capabilities`` ("write", "list", ...; a method
    name such as ``set_connection`` stands for the capability that implies it)."""
    wanted: list[Capability] = []
    for name in capabilities:
        capability = name if name in CAPABILITIES else _CAPABILITY_OF.get(name)
        if capability is None:
            raise ValueError(f"unknown capability {name!r}; known: {', '.join(CAPABILITIES)}")
        wanted.append(capability)
    missing = [c for c in wanted if not supports(backend, c)]
    if missing:
        pytest.skip(f"{type(backend).__name__} does not declare {', '.join(missing)}")


def _has_config(backend: Any) -> bool:
    """Config lookups are an optional read: the base class answers None for every key."""
    if isinstance(backend, BaseBackend):
        return type(backend).get_config is not BaseBackend.get_config
    return callable(getattr(backend, "get_config", None))


class NoNetwork:
    """Fails any socket send while active: proves a lookup made no call over the wire."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def __enter__(self) -> NoNetwork:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a lookup excluded by its lookup pattern went over the network")

        for cls in (socket.socket, ssl.SSLSocket):
            for method in ("send", "sendall", "sendto", "sendmsg"):
                self.monkeypatch.setattr(cls, method, refuse, raising=False)
        self.monkeypatch.setattr(socket, "create_connection", refuse)
        return self

    def __exit__(self, *exc: object) -> None:
        self.monkeypatch.undo()


def harness_fixture_name(alias: str) -> str:
    """The fixture that provides a store's harness: ``<alias with '-' as '_'>_harness``."""
    return alias.replace("-", "_") + "_harness"


def harness_fixture(
    aliases: Iterable[str], *, fixture_name: Callable[[str], str] = harness_fixture_name
) -> Any:
    """A ``harness`` fixture parametrised over ``aliases`` (ids are the aliases), each resolved from the
    fixture ``fixture_name(alias)``. A missing fixture fails the test: a store without a harness is a gap
    in the contract, not something to skip."""
    aliases = list(aliases)

    @pytest.fixture(params=aliases, ids=aliases)
    def harness(request: pytest.FixtureRequest) -> Any:
        name = fixture_name(request.param)
        try:
            return request.getfixturevalue(name)
        except pytest.FixtureLookupError as exc:
            if exc.argname == name:
                pytest.fail(
                    f"backend {request.param!r} has no contract harness: define the fixture {name!r} "
                    "(a pytest plugin, e.g. in tests/servers/)",
                    pytrace=False,
                )
            raise

    return harness


class BackendContract:
    """The contract every backend meets; subclass it and provide a ``harness`` fixture."""

    # --- reads -------------------------------------------------------------------------------------------

    def test_connection_uri_hit(self, harness: Any) -> None:
        conn_id = new_id("uri")
        harness.seed("connection", conn_id, f"postgres://app_user:{PASSWORD}@db.example.com:5433/appdb")
        backend = harness.make_backend()
        assert backend.get_conn_value(conn_id) is not None
        conn = backend.get_connection(conn_id)
        assert conn is not None
        assert (conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema) == (
            "postgres",
            "db.example.com",
            "app_user",
            PASSWORD,
            5433,
            "appdb",
        )

    def test_connection_json_hit_keeps_extra_and_masks_repr(self, harness: Any) -> None:
        conn_id = new_id("json")
        raw = json.dumps(
            {
                "conn_type": "http",
                "host": "api.example.com",
                "login": "svc",
                "password": PASSWORD,
                "extra": {"api_key": API_KEY, "timeout": "30"},
            }
        )
        harness.seed("connection", conn_id, raw)
        conn = harness.make_backend().get_connection(conn_id)
        assert conn is not None
        assert conn.host == "api.example.com" and conn.password == PASSWORD
        assert conn.extra_dejson == {"api_key": API_KEY, "timeout": "30"}  # Airflow 3.3: plain json.loads
        text = repr(conn) + str(conn)
        assert PASSWORD not in text and API_KEY not in text
        assert "api.example.com" in text  # the repr still says which connection it is

    def test_connection_miss_is_none(self, harness: Any) -> None:
        harness.seed("connection", new_id("other"), "postgres://u@h/db")  # the namespace is not empty
        backend = harness.make_backend()
        missing = new_id("missing")
        assert backend.get_conn_value(missing) is None
        assert backend.get_connection(missing) is None

    def test_variable_hit_and_miss(self, harness: Any) -> None:
        key = new_id("var")
        harness.seed("variable", key, "value-s3cr3t-var")
        backend = harness.make_backend()
        assert backend.get_variable(key) == "value-s3cr3t-var"
        assert backend.get_variable(new_id("nope")) is None

    def test_variable_json_text_is_returned_raw(self, harness: Any) -> None:
        key = new_id("varjson")
        raw = json.dumps({"a": [1, 2], "b": "x"})
        harness.seed("variable", key, raw)
        assert json.loads(harness.make_backend().get_variable(key)) == {"a": [1, 2], "b": "x"}

    def test_config_where_supported(self, harness: Any) -> None:
        backend = harness.make_backend()
        if not _has_config(backend):
            pytest.skip(f"{type(backend).__name__} has no config lookups")
        key = new_id("cfg")
        seed_or_skip(harness, "config", key, "sql_alchemy_conn_value")
        assert harness.make_backend().get_config(key) == "sql_alchemy_conn_value"
        assert backend.get_config(new_id("nocfg")) is None

    # --- lookup patterns ---------------------------------------------------------------------------------

    def test_lookup_patterns_skip_without_a_call(self, harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        wanted, unwanted = new_id("wanted"), new_id("other")
        unwanted = "zz" + unwanted  # does not start with "ct_"
        harness.seed("connection", wanted, "postgres://u@wanted.example/db")
        harness.seed("connection", unwanted, "postgres://u@unwanted.example/db")
        harness.seed("variable", unwanted, "v")
        backend = harness.make_backend(connections_lookup_pattern="^ct_", variables_lookup_pattern="^CT_")
        assert backend.get_connection(wanted).host == "wanted.example"  # case-insensitive, anchored at start
        calls = getattr(harness, "api_calls", None)
        before = calls() if calls else None
        with NoNetwork(monkeypatch):
            assert backend.get_conn_value(unwanted) is None
            assert backend.get_variable(unwanted) is None
        if calls:
            assert calls() == before

    # --- errors ------------------------------------------------------------------------------------------

    def test_bad_value_error_names_id_not_value(self, harness: Any) -> None:
        conn_id = new_id("bad")
        try:
            harness.seed("connection", conn_id, f"postgres://u:{PASSWORD}@db.example.com:notaport/db")
        except ValueError:
            pytest.skip("the store keeps structured rows; a malformed URI cannot be stored in it")
        backend = harness.make_backend()
        with pytest.raises(CredpathError) as info:
            backend.get_connection(conn_id)
        message = str(info.value)
        assert conn_id in message and "port" in message
        assert PASSWORD not in message and "s3cr3t" not in repr(info.value)

    def test_bad_json_value_error_names_id_not_value(self, harness: Any) -> None:
        conn_id = new_id("badjson")
        try:
            harness.seed("connection", conn_id, '{"conn_type": "postgres", "password": "' + PASSWORD + '", ')
        except ValueError:
            pytest.skip("the store keeps structured maps; malformed JSON cannot be stored in it")
        with pytest.raises(ConfigError) as info:
            harness.make_backend().get_connection(conn_id)
        assert conn_id in str(info.value)
        assert PASSWORD not in str(info.value)

    def test_backend_repr_reveals_nothing(self, harness: Any) -> None:
        backend = harness.make_backend()
        text = repr(backend) + backend.describe()
        assert "s3cr3t" not in text and text

    # --- writes, listing, deletes (where supported) ---------------------------------------------------------

    def test_connection_write_read_list_delete(self, harness: Any) -> None:
        backend = harness.make_backend()
        require(backend, "write")
        conn_id = new_id("w")
        conn = Connection(
            conn_id=conn_id,
            conn_type="postgres",
            description="written by the contract suite",
            host="db.example.com",
            login="writer",
            password=PASSWORD,
            schema="app",
            port=5432,
            extra=json.dumps({"sslmode": "require"}),
        )
        backend.set_connection(conn)
        got = backend.get_connection(conn_id)
        assert got is not None
        assert got.to_dict() == conn.to_dict()
        with pytest.raises(ConfigError) as info:
            backend.set_connection(conn, overwrite=False)
        assert conn_id in str(info.value) and PASSWORD not in str(info.value)
        backend.set_connection(Connection(conn_id=conn_id, conn_type="postgres", host="db2.example.com"))
        assert backend.get_connection(conn_id).host == "db2.example.com"
        if supports(backend, "list"):
            assert conn_id in backend.list_connections()
        assert backend.delete_connection(conn_id) is True
        assert backend.get_conn_value(conn_id) is None
        assert backend.delete_connection(conn_id) is False
        if supports(backend, "list"):
            assert conn_id not in backend.list_connections()

    def test_variable_write_read_list_delete(self, harness: Any) -> None:
        backend = harness.make_backend()
        require(backend, "write")
        key, other = new_id("wv"), new_id("wv")
        first = backend.set_variable(key, "value-s3cr3t-1")
        backend.set_variable(other, "plain")
        assert backend.get_variable(key) == "value-s3cr3t-1"
        with pytest.raises(ConfigError):
            backend.set_variable(key, "value-s3cr3t-2", overwrite=False)
        assert backend.get_variable(key) == "value-s3cr3t-1"
        second = backend.set_variable(key, "value-s3cr3t-3")
        assert backend.get_variable(key) == "value-s3cr3t-3"
        # A write answers None or the store's confirmation of THIS write: a new version each time.
        for answer in (first, second):
            assert answer is None or isinstance(answer, WriteConfirmation), type(answer).__name__
        if first is not None and second is not None:
            assert first.version != second.version
            assert "s3cr3t" not in repr(second)
        if supports(backend, "list"):
            listed = backend.list_variables()
            assert {key, other} <= set(listed)
            assert listed == sorted(listed)
        assert backend.delete_variable(key) is True
        assert backend.get_variable(key) is None
        assert backend.get_variable(other) == "plain"
        assert backend.delete_variable(key) is False

    def test_listing_sees_seeded_ids_only_under_its_prefix(self, harness: Any) -> None:
        backend = harness.make_backend()
        require(backend, "list")
        # Letters and digits only: Azure cannot give back '_' for secrets seeded without credpath's id tag.
        conns = {f"ctlc{uuid.uuid4().hex[:8]}" for _ in range(3)}
        var = f"ctlv{uuid.uuid4().hex[:8]}"
        for conn_id in conns:
            harness.seed("connection", conn_id, "postgres://u@h/db")
        harness.seed("variable", var, "x")
        listed = set(backend.list_connections())
        assert conns <= listed
        assert var not in listed
        assert var in backend.list_variables()

    # --- declared capabilities ------------------------------------------------------------------------------

    def test_declared_capabilities_are_implemented(self, harness: Any) -> None:
        backend = harness.make_backend()
        check_capabilities(type(backend))  # a BaseBackend subclass was checked at definition already
        declared: frozenset[Capability] = getattr(type(backend), "capabilities", frozenset())
        assert set(declared) <= set(CAPABILITIES)

    # --- "versions": pinned reads ------------------------------------------------------------------------

    def test_a_store_without_versions_refuses_a_pinned_read(self, harness: Any) -> None:
        backend = harness.make_backend()
        if supports(backend, "versions") or not isinstance(backend, BaseBackend):
            pytest.skip(f"{type(backend).__name__} keeps versions (or is foreign: nothing to refuse)")
        for read in (backend.get_conn_value_version, backend.get_variable_version):
            with pytest.raises(ConfigError) as caught:  # never the latest value instead
                read(new_id("nv"), "1")
            assert backend.label in str(caught.value) and "\n" not in str(caught.value)

    def test_versions_read_each_kept_version(self, harness: Any) -> None:
        backend = harness.make_backend()
        require(backend, "versions")
        key, conn_id = new_id("vv"), new_id("vc")
        versions: dict[str, list[str]] = {"variable": [], "connection": []}
        for n in (1, 2):
            harness.seed("variable", key, f"value-{n}-s3cr3t")
            harness.seed("connection", conn_id, f"postgres://u:pw-{n}-s3cr3t@host{n}.example/db")
            backend = harness.make_backend()
            versions["variable"].append(reported_version(backend.get_variable, key))
            versions["connection"].append(reported_version(backend.get_conn_value, conn_id))
        for kind, (first, second) in versions.items():
            assert first != second, f"{kind}: a second write must be a new version"
            assert backend.accepts_version(first) and backend.accepts_version(second)
        (v1, v2), (c1, c2) = versions["variable"], versions["connection"]
        backend = harness.make_backend()
        assert backend.get_variable_version(key, v1) == "value-1-s3cr3t"
        assert backend.get_variable_version(key, v2) == "value-2-s3cr3t"
        assert backend.get_variable(key) == "value-2-s3cr3t"  # the plain read is still the latest
        first = backend.get_connection_version(conn_id, c1)
        assert first is not None and first.host == "host1.example" and first.password == "pw-1-s3cr3t"
        assert backend.get_connection_version(conn_id, c2).host == "host2.example"
        assert backend.get_variable_version(new_id("vmiss"), v1) is None  # no such id: a miss

    def test_versions_refuse_what_is_no_version_form(self, harness: Any) -> None:
        backend = harness.make_backend()
        require(backend, "versions")
        assert backend.version_form, "describe the version forms for the one-line error"
        for bad in ("", "a b", "../1", "x" * 300):
            assert not backend.accepts_version(bad), bad

    def test_batch_reads_answer_hits_only(self, harness: Any) -> None:
        backend = harness.make_backend()
        require(backend, "batch")
        a, b, key = new_id("ba"), new_id("bb"), new_id("bv")
        harness.seed("connection", a, "postgres://u@a.example/db")
        harness.seed("connection", b, "postgres://u@b.example/db")
        harness.seed("variable", key, "batch-value")
        missing = new_id("bmiss")
        backend = harness.make_backend()
        assert set(backend.get_conn_values([a, b, missing])) == {a, b}
        assert backend.get_variables([key, missing]) == {key: "batch-value"}
        if supports(backend, "structured"):
            got = backend.get_connections([a, missing])
            assert set(got) == {a} and got[a].host == "a.example"

    def test_prefetch_answers_everything_under_the_prefix(self, harness: Any) -> None:
        backend = harness.make_backend()
        require(backend, "prefetch")
        # Letters and digits only, as for listing: a store may not give back '_' for a seeded name.
        conn_id, key = f"ctpc{uuid.uuid4().hex[:8]}", f"ctpv{uuid.uuid4().hex[:8]}"
        harness.seed("connection", conn_id, "postgres://u@p.example/db")
        harness.seed("variable", key, "prefetched")
        backend = harness.make_backend()
        assert conn_id in backend.prefetch_connections()
        assert backend.prefetch_variables()[key] == "prefetched"

    # --- rotation capabilities: each off until its setting switches it on ---------------------------------

    def test_rotation_capabilities_are_off_until_their_setting(self, harness: Any) -> None:
        backend = harness.make_backend()
        declared = [c for c in CAPABILITY_SETTINGS if supports(backend, c)]
        if not declared:
            pytest.skip(f"{type(backend).__name__} declares no rotation capability")
        for capability in declared:
            assert not enabled(backend, capability), f"{capability} costs requests: off by default"
            switched = harness.make_backend(**{CAPABILITY_SETTINGS[capability]: True})
            assert enabled(switched, capability), f"{CAPABILITY_SETTINGS[capability]}=True switches it on"

    def test_version_check_tells_a_current_version_from_a_changed_one(self, harness: Any) -> None:
        require(harness.make_backend(), "version_check")
        key = new_id("vc")
        harness.seed("variable", key, "value-1-s3cr3t")
        backend = harness.make_backend(version_check=True)
        first = reported_version(backend.get_variable, key)
        same = backend.check_version("variable", key, None, first)
        assert same is not None and same.unchanged, "the version a read just reported is current"
        harness.seed("variable", key, "value-2-s3cr3t")
        changed = backend.check_version("variable", key, None, first)
        assert changed is None or not changed.unchanged, "a new version was written"
        missing = backend.check_version("variable", new_id("vcmiss"), None, first)
        assert missing is None or not missing.unchanged, "an id the store lacks is never current"
        assert "s3cr3t" not in repr((same, changed, missing))  # metadata, never the value

    def test_change_events_name_the_changed_id(self, harness: Any) -> None:
        require(harness.make_backend(), "change_events")
        assert harness.make_backend().subscribe_changes(lambda *_: None) is False, "off without its setting"
        backend = harness.make_backend(watch=True)
        key = new_id("ce")
        heard: list[tuple[Any, ...]] = []
        told = threading.Event()

        def changed(source: str, ids: Any, matches: Any, version: Any) -> None:
            heard.append((source, ids, version))
            if ids is not None and (("variable", key) in ids or (matches and matches("variable", key))):
                told.set()

        assert backend.subscribe_changes(changed) is True
        try:
            # Written again until heard: a change made while the stream (re)starts is a gap, not an event.
            started, n = time.monotonic(), 0
            while not told.wait(0.5):
                assert time.monotonic() - started < 15.0, f"no change event for {key!r} within 15 s"
                n += 1
                harness.seed("variable", key, f"value-{n}-s3cr3t")
        finally:
            backend.close()  # unsubscribes: a watch left running would call the store in later tests
        assert all(source == backend.name for source, _, _ in heard)
        assert "s3cr3t" not in repr(heard)  # names and versions, never a value

    def test_rotation_dates_are_reported_by_the_read(self, harness: Any) -> None:
        require(harness.make_backend(), "rotation_dates")
        from credpath._lookup import trace

        key = new_id("rd")
        harness.seed("variable", key, "value-s3cr3t-rd")
        backend = harness.make_backend(cap_at_rotation=True)
        context = trace.LookupContext("variable", key)
        with trace.calling(context, "contract"):
            assert backend.get_variable(key) == "value-s3cr3t-rd"
        # A secret without a schedule has no date; a date is wall-clock seconds.
        assert context.valid_until is None or context.valid_until > 1e9
