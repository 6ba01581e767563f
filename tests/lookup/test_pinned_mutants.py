"""Pinned reads (credpath._lookup.pinned), one rule at a time: the version's checks and their messages, the
backends asked and skipped (and what explain and the trace say of each), a failed backend's outage, the
version a read reports, and the reads of a store that has no connection-version read of its own.

A dict store keeps the versions (tests/lookup/test_pinning.py's ``VersionedMemory``); no servers.
"""

from __future__ import annotations

from typing import Any

import pytest

from credpath._lookup import trace
from credpath._lookup.pinned import MAX_VERSION_LEN, VersionNotFound
from credpath._search_path import SearchPath
from credpath.errors import BackendUnavailable, ConfigError
from credpath.protocol import pinned_version
from tests.lookup.test_pinning import NEW_PW, OLD_PW, URI_OLD, VersionedMemory, _path, _store
from tests.memory_backend import MemoryBackend, Unreachable


class Failing(VersionedMemory):
    """A versioned store that is down."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_with = Unreachable("store down")


class Labelled(VersionedMemory):
    """Takes the label "PREVIOUS" as well as numbers, and reports the number it read (as a store does)."""

    version_form = "a version number or PREVIOUS"

    def accepts_version(self, version: str) -> bool:
        return version == "PREVIOUS" or super().accepts_version(version)

    def _versioned(self, kind: str, key: str, latest: str | None) -> str | None:
        if pinned_version() == "PREVIOUS":
            versions = self.history.get((kind, key), [])
            trace.note_version(len(versions) - 1)
            return versions[-2]
        return super()._versioned(kind, key, latest)


class Silent(VersionedMemory):
    """Reads versions but reports none (a store whose answer carries no version id)."""

    def _versioned(self, kind: str, key: str, latest: str | None) -> str | None:
        pin = pinned_version()
        versions = self.history.get((kind, key), [])
        if pin is None:
            return latest
        return versions[int(pin) - 1] if int(pin) <= len(versions) else None


def _labelled() -> Labelled:
    store = Labelled()
    for kind, key, value in (
        ("connection", "my_db", URI_OLD),
        ("connection", "my_db", f"postgres://app:{NEW_PW}@db:5432/app"),
        ("variable", "api_token", "tok-s3cr3t-1"),
        ("variable", "api_token", "tok-s3cr3t-2"),
    ):
        store.keep(kind, key, value)
    return store


def _silent() -> Silent:
    store = Silent()
    store.keep("variable", "api_token", "tok-s3cr3t-1")
    return store


def _message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


# --- the version's checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [True, False, "", 1.5, None, b"1"])
def test_a_version_that_is_no_string_or_number_is_refused_as_such(bad: Any) -> None:
    sp = _path(("v", _store()))
    with pytest.raises(ConfigError) as caught:
        sp.get_variable("api_token", version=bad) if bad is not None else sp.get_connection("@")
    if bad is None:  # the suffix with neither id nor version
        assert "needs an id and a version" in _message(caught)
    else:
        assert _message(caught) == (
            "version must be a non-empty string (a store's version id, number or stage)"
        )


def test_a_number_is_read_as_its_string() -> None:
    sp = _path(("v", _store()))
    assert sp.get_variable("api_token", version=2) == "tok-s3cr3t-2"
    assert sp.lookup("variable", "api_token", version=1).version == "1"  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", ["a b", "1\t", "1\x00", "\u00a0", "1\x7f"])
def test_a_version_with_a_space_or_a_control_character_is_refused(bad: str) -> None:
    sp = _path(("v", _store()))
    with pytest.raises(ConfigError) as caught:
        sp.get_variable("api_token", version=bad)
    assert _message(caught) == (
        f"version {bad!r} is invalid: no spaces or control characters, at most 256 characters"
    )


def test_the_longest_version_is_asked_and_one_more_character_is_refused() -> None:
    store = _store()
    sp = _path(("v", store))
    longest = "1" * MAX_VERSION_LEN
    with pytest.raises(VersionNotFound):  # a valid form that no store has: asked, not refused
        sp.get_variable("api_token", version=longest)
    assert store.calls == [("get_variable", "api_token")]
    too_long = "0123456789" * 25 + "1234567"  # 257 characters
    with pytest.raises(ConfigError) as caught:
        sp.get_variable("api_token", version=too_long)
    message = _message(caught)
    assert message.startswith(f"version {too_long[:60]!r} is invalid")
    assert message.endswith("at most 256 characters")
    assert len(store.calls) == 1


def test_the_suffix_needs_an_id_and_names_the_first_60_characters() -> None:
    sp = _path(("v", _store()))
    for conn_id in ("@1", "my_db@"):
        with pytest.raises(ConfigError) as caught:
            sp.get_connection(conn_id)
        assert _message(caught) == (
            f"connection id {conn_id!r}: the version suffix needs an id and a version (my_db@3)"
        )
    long_id = "0123456789" * 7 + "@"
    with pytest.raises(ConfigError) as caught:
        sp.get_connection(long_id)
    assert _message(caught).startswith(f"connection id {long_id[:60]!r}: the version suffix")
    store = _store()
    store.keep("connection", "my@db", URI_OLD)  # an id with '@' in a store: the last '@' is the suffix
    assert _path(("v", store)).get_connection("my@db@1").password == OLD_PW


def test_only_connections_and_variables_are_read_by_version() -> None:
    store = _store()
    sp = _path(("v", store))
    with pytest.raises(ConfigError) as caught:
        sp.lookup("config", "core__fernet_key", version="1")
    assert _message(caught) == "only connections and variables can be read by version, not configs"
    assert store.calls == []


# --- the lookup's end, as subscribers hear it -----------------------------------------------------------


def test_subscribers_hear_a_failed_pinned_read_end_in_error(events: list[Any]) -> None:
    sp = _path(("v", _store()))
    with pytest.raises(VersionNotFound):
        sp.get_connection("my_db", version="9")
    done = [e for e in events if isinstance(e, trace.Done)]
    assert [(d.kind, d.tier, d.result) for d in done] == [("connection", "store", "error")]
    assert [e for e in events if isinstance(e, trace.Served)] == [trace.Served("store", None)]


def test_a_refused_version_is_no_lookup_for_subscribers(events: list[Any]) -> None:
    sp = _path(("v", _store()))
    with pytest.raises(ConfigError):
        sp.get_variable("api_token", version="a b")
    with pytest.raises(ConfigError):
        sp.explain("variable", "api_token", version="")
    assert events == []


def test_subscribers_hear_a_pinned_hit_once_per_tier(events: list[Any]) -> None:
    sp = _path(("v", _store()))
    assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    served = [e for e in events if isinstance(e, trace.Served)]
    assert served == [trace.Served("store", "v"), trace.Served("process", "v")]
    done = [(d.tier, d.result, d.value) for d in events if isinstance(d, trace.Done)]
    assert done == [("store", "found", "tok-s3cr3t-1"), ("process", "found", "tok-s3cr3t-1")]


# --- which backends are asked, and what explain says of each ---------------------------------------------


def test_explain_says_why_each_backend_was_skipped_and_times_the_ones_asked() -> None:
    numbers = _store()
    picky = Labelled(variables_lookup_pattern="^other")
    picky.keep("variable", "api_token", "tok-s3cr3t-picky")
    labelled = _labelled()
    sp = _path(("plain", MemoryBackend()), ("numbers", numbers), ("picky", picky), ("labels", labelled))
    explanation = sp.explain("variable", "api_token", version="PREVIOUS")
    assert [(a.backend, a.outcome) for a in explanation.attempts] == [
        ("plain", "skipped (no versions)"),
        ("numbers", "skipped (version form)"),
        ("picky", "skipped (pattern)"),
        ("labels", "hit"),
    ]
    hit = explanation.attempts[-1]
    assert hit.detail == "pinned version PREVIOUS" and 0.0 <= hit.seconds < 30.0
    assert explanation.source == "labels"
    assert numbers.calls == [] and picky.calls == []


def test_a_backend_skipped_by_its_pattern_leaves_the_next_one_asked() -> None:
    picky = VersionedMemory(variables_lookup_pattern="^other")
    picky.keep("variable", "api_token", "tok-s3cr3t-picky")
    sp = _path(("picky", picky), ("v", _store()))
    assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert picky.calls == []


def test_a_backend_without_the_version_goes_on_to_the_next() -> None:
    empty = VersionedMemory()
    sp = _path(("empty", empty), ("v", _store()))
    explanation = sp.explain("variable", "api_token", version="2")
    assert [(a.backend, a.outcome, a.detail) for a in explanation.attempts] == [
        ("empty", "miss", "version 2"),
        ("v", "hit", "pinned version 2"),
    ]
    assert all(0.0 <= a.seconds < 30.0 for a in explanation.attempts)
    assert sp.get_variable("api_token", version="2") == "tok-s3cr3t-2"


def test_no_backend_configured_and_a_form_without_words_are_one_line_each() -> None:
    with pytest.raises(ConfigError) as caught:
        SearchPath([]).get_variable("api_token", version="1")
    assert _message(caught) == (
        "variable 'api_token' version '1': no backend in the search path keeps versions (none configured)"
    )

    class Wordless(VersionedMemory):
        version_form = ""

    sp = _path(("a", Wordless()), ("b", _store()))
    with pytest.raises(ConfigError) as caught:
        sp.get_variable("api_token", version="PREVIOUS")
    assert _message(caught) == (
        "variable 'api_token' version 'PREVIOUS': no backend that keeps versions takes this form "
        "('a' takes its own version ids; 'b' takes a version number)"
    )


def test_a_version_nobody_has_names_the_backends_asked() -> None:
    sp = _path(("plain", MemoryBackend()), ("a", VersionedMemory()), ("b", _store()))
    with pytest.raises(VersionNotFound) as caught:
        sp.get_variable("api_token", version="9")
    assert _message(caught) == (
        "variable 'api_token' version '9' not found in the backends that keep versions ('a', 'b')"
    )
    assert (caught.value.kind, caught.value.key, caught.value.version) == ("variable", "api_token", "9")


# --- a failed backend ------------------------------------------------------------------------------------


def test_a_failed_backend_is_an_outage_not_a_miss() -> None:
    down = Failing()
    sp = _path(("down", down), ("empty", VersionedMemory()))
    with pytest.raises(BackendUnavailable) as caught:
        sp.get_variable("api_token", version="1")
    assert _message(caught) == (
        "variable 'api_token' version '1': not found in the backends that answered, but 'down' failed "
        "(an outage, not a miss)"
    )
    assert caught.value.backends == ("down",)
    explanation = sp.explain("variable", "api_token", version="1")
    assert [(a.backend, a.outcome) for a in explanation.attempts] == [("down", "error"), ("empty", "miss")]
    assert explanation.attempts[0].detail and 0.0 <= explanation.attempts[0].seconds < 30.0
    assert explanation.failed == ["down"] and not explanation.found


def test_a_value_found_after_a_failed_backend_is_served_and_not_cached() -> None:
    down = Failing()
    store = _store()
    sp = _path(("down", down), ("v", store))
    for _ in range(2):
        assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert len(store.calls) == 2  # the failed backend may have it once it is back: never cached
    explanation = sp.explain("variable", "api_token", version="1")
    assert explanation.source == "v" and explanation.failed == ["down"]


def test_a_variable_that_is_no_string_is_a_failed_read_naming_the_type() -> None:
    class Numeric(VersionedMemory):
        def _versioned(self, kind: str, key: str, latest: str | None) -> Any:
            return 42 if pinned_version() else latest

    sp = _path(("n", Numeric()))
    explanation = sp.explain("variable", "api_token", version="1")
    assert [a.outcome for a in explanation.attempts] == ["error"]
    assert explanation.attempts[0].detail == "backend returned a int for variable 'api_token', not a string"


# --- the version reported ------------------------------------------------------------------------------


def test_a_label_reports_the_version_the_store_read() -> None:
    sp = _path(("v", _labelled()))
    resolution = sp.lookup("variable", "api_token", version="PREVIOUS")
    assert resolution is not None and resolution.value == "tok-s3cr3t-1"
    assert resolution.version == "1"
    assert sp.explain("variable", "api_token", version="PREVIOUS").version == "1"


def test_a_store_that_reports_no_version_is_read_as_the_version_asked() -> None:
    sp = _path(("v", _silent()))
    resolution = sp.lookup("variable", "api_token", version="1")
    assert resolution is not None and resolution.version == "1"
    found = sp.explain("variable", "api_token", version="1")
    assert found.found and found.version == "1"
    assert sp.explain("variable", "api_token", version=1).version == "1"  # a number, as its string
    missing = sp.explain("variable", "api_token", version="5")
    assert not missing.found and missing.version is None


def test_explain_asks_the_stores_even_after_a_cached_read() -> None:
    store = _store()
    sp = _path(("v", store))
    assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert len(store.calls) == 1
    explanation = sp.explain("variable", "api_token", version="1")
    assert len(store.calls) == 2 and explanation.tier == "store"
    assert [a.outcome for a in explanation.attempts] == ["hit"]


def test_explain_reports_an_outage_instead_of_raising_it() -> None:
    sp = _path(("down", Failing()))
    explanation = sp.explain("variable", "api_token", version="1")
    assert not explanation.found and explanation.failed == ["down"]


# --- a store with no connection-version read of its own --------------------------------------------------


class RawOnly(VersionedMemory):
    """Reads a connection's version only as its raw value (no ``get_connection_version``)."""

    get_connection_version = None  # type: ignore[assignment]


class FieldStore(VersionedMemory):
    """A store of fields: its connection-version read builds the Connection itself (the raw value differs)."""

    def get_connection_version(self, conn_id: str, version: str, team_name: str | None = None) -> Any:
        from credpath.model import Connection

        return Connection(conn_id=conn_id, conn_type="fields", password=f"pw-s3cr3t-field-{version}")

    def get_conn_value_version(self, conn_id: str, version: str, team_name: str | None = None) -> Any:
        raise AssertionError("a store of fields is read through its connection-version read")


def test_a_store_of_fields_is_read_through_its_connection_version_read() -> None:
    sp = _path(("f", FieldStore()))
    conn = sp.get_connection("my_db", version="3")
    assert (conn.conn_type, conn.password) == ("fields", "pw-s3cr3t-field-3")


def test_a_store_without_a_connection_version_read_is_parsed_from_its_raw_value() -> None:
    store = RawOnly()
    store.keep("connection", "my_db", URI_OLD)
    sp = _path(("r", store))
    conn = sp.get_connection("my_db", version="1")
    assert (conn.conn_id, conn.password, conn.host) == ("my_db", OLD_PW, "db")
    with pytest.raises(VersionNotFound):
        sp.get_connection("my_db", version="2")
    assert sp.lookup("connection", "my_db@2") is None


class Foreign:
    """An Airflow-style backend (no credpath base class) that declares "versions" and says nothing of the
    forms it takes, of moving labels, or of a connection-version read."""

    capabilities = frozenset({"versions"})

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def get_conn_value(self, conn_id: str) -> str | None:
        return None

    def get_variable(self, key: str) -> str | None:
        return None

    def get_conn_value_version(self, conn_id: str, version: str) -> str | None:
        self.calls.append(("connection", conn_id, version))
        return URI_OLD if version == "stage-a" else None

    def get_variable_version(self, key: str, version: str) -> str | None:
        self.calls.append(("variable", key, version))
        return f"tok-s3cr3t-{version}" if version == "stage-a" else None


def test_a_foreign_backend_is_asked_for_any_form_and_its_answers_are_cached() -> None:
    foreign = Foreign()
    sp = _path(("f", foreign))
    for _ in range(2):
        assert sp.get_variable("api_token", version="stage-a") == "tok-s3cr3t-stage-a"
        conn = sp.get_connection("my_db", version="stage-a")
        assert (conn.conn_id, conn.password) == ("my_db", OLD_PW)
    assert foreign.calls == [("variable", "api_token", "stage-a"), ("connection", "my_db", "stage-a")]
    with pytest.raises(VersionNotFound):
        sp.get_connection("my_db", version="stage-b")
