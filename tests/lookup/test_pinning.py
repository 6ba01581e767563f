"""Pinned reads through the search path: which backends are asked, the errors, the cache, the record.

The stores' own version reads are tested against their servers in tests/backends/test_pinning_stores.py;
here a dict store keeps versions, so that the search path's own rules are shown one at a time.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath._cache import CacheSettings
from credpath._lookup import trace
from credpath._lookup.pinned import VersionNotFound
from credpath._masking import Masker
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedTier
from credpath.errors import ConfigError, NotFound
from credpath.protocol import PinnedReads, check_capabilities, pinned_version, supports
from tests.memory_backend import MemoryBackend

OLD_PW, NEW_PW = "pw-s3cr3t-old", "pw-s3cr3t-new"
URI_OLD = f"postgres://app:{OLD_PW}@db:5432/app"
URI_NEW = f"postgres://app:{NEW_PW}@db:5432/app"


class VersionedMemory(PinnedReads, MemoryBackend):
    """A dict store that keeps every version (1, 2, ...), as Vault KV v2 numbers them."""

    alias = "versioned-memory"
    capabilities = frozenset({"write", "list", "versions"})
    version_form = "a version number"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history: dict[tuple[str, str], list[str]] = {}

    def keep(self, kind: str, key: str, value: str) -> str:
        """Write a new version; returns its number."""
        versions = self.history.setdefault((kind, key), [])
        versions.append(value)
        (self.connections if kind == "connection" else self.variables)[key] = value
        return str(len(versions))

    def accepts_version(self, version: str) -> bool:
        return version.isdigit() and int(version) > 0

    def _versioned(self, kind: str, key: str, latest: str | None) -> str | None:
        pin = pinned_version()
        versions = self.history.get((kind, key), [])
        if pin is None:
            if latest is not None:
                trace.note_version(len(versions))
            return latest
        if int(pin) > len(versions):
            return None
        trace.note_version(pin)
        return versions[int(pin) - 1]

    def get_conn_value(self, conn_id: str) -> str | None:
        return self._versioned("connection", conn_id, super().get_conn_value(conn_id))

    def get_variable(self, key: str) -> str | None:
        return self._versioned("variable", key, super().get_variable(key))


def _store() -> VersionedMemory:
    store = VersionedMemory()
    store.keep("connection", "my_db", URI_OLD)
    store.keep("connection", "my_db", URI_NEW)
    store.keep("variable", "api_token", "tok-s3cr3t-1")
    store.keep("variable", "api_token", "tok-s3cr3t-2")
    return store


def _path(*items: Any, **kwargs: Any) -> SearchPath:
    kwargs.setdefault("cache", CacheSettings(ttl=300.0, jitter=0.0))
    kwargs.setdefault("masker", Masker())
    return SearchPath(list(items), **kwargs)


def test_the_capability_is_declared_and_checked() -> None:
    assert supports(VersionedMemory(), "versions")
    assert not supports(MemoryBackend(), "versions")

    with pytest.raises(TypeError, match="get_conn_value_version"):

        class Half(MemoryBackend):  # declares versions, implements no version read
            capabilities = frozenset({"versions"})

    check_capabilities(VersionedMemory)


def test_a_pinned_read_returns_that_version_and_the_latest_read_is_unchanged() -> None:
    sp = _path(("v", _store()))
    assert sp.get_connection("my_db", version="1").password == OLD_PW
    assert sp.get_connection("my_db", version=2).password == NEW_PW
    assert sp.get_connection("my_db").password == NEW_PW
    assert sp.get_variable("api_token", version="1") == "tok-s3cr3t-1"
    assert sp.get_variable("api_token") == "tok-s3cr3t-2"


def test_the_id_suffix_pins_a_connection_and_only_a_connection() -> None:
    store = _store()
    store.variables["a@1"] = "plain"  # Airflow allows '@' in a variable key: it stays a key
    sp = _path(("v", store))
    assert sp.get_connection("my_db@1").password == OLD_PW
    assert sp.get_conn_value("my_db@1") == URI_OLD
    assert sp.lookup("connection", "my_db@1").version == "1"  # type: ignore[union-attr]
    assert sp.get_variable("a@1") == "plain"


def test_only_backends_that_keep_versions_are_asked() -> None:
    plain = MemoryBackend(connections={"my_db": URI_NEW})
    sp = _path(("plain", plain), ("v", _store()))
    assert sp.get_connection("my_db", version="1").password == OLD_PW
    assert plain.calls == []  # never its latest in place of the version


def test_no_backend_with_versions_is_one_line_naming_the_backends() -> None:
    sp = _path(("env-like", MemoryBackend(connections={"my_db": URI_NEW})))
    with pytest.raises(ConfigError) as caught:
        sp.get_connection("my_db", version="1")
    message = str(caught.value)
    assert "\n" not in message and "env-like" in message and "keeps versions" in message
    assert OLD_PW not in message and NEW_PW not in message


def test_a_backend_without_versions_refuses_a_direct_version_read() -> None:
    with pytest.raises(ConfigError, match="keeps no versions"):
        MemoryBackend(connections={"my_db": URI_NEW}).get_conn_value_version("my_db", "1")


def test_a_version_nobody_has_names_id_and_version_not_the_value() -> None:
    sp = _path(("v", _store()))
    with pytest.raises(VersionNotFound) as caught:
        sp.get_connection("my_db", version="9")
    assert isinstance(caught.value, NotFound)
    message = str(caught.value)
    assert "'my_db'" in message and "'9'" in message and "s3cr3t" not in message
    with pytest.raises(NotFound):  # a default stands in for the key, not for a version
        sp.get_variable("api_token", "fallback", version="9")


@pytest.mark.parametrize("bad", ["", "a b", "x" * 300, "1\n2", None])
def test_a_bad_version_form_is_one_line(bad: Any) -> None:
    sp = _path(("v", _store()))
    with pytest.raises(ConfigError) as caught:
        sp.get_connection("my_db", version=bad if bad is not None else "")
    assert "\n" not in str(caught.value)


def test_a_form_no_backend_takes_is_one_line_naming_the_forms() -> None:
    sp = _path(("v", _store()))
    with pytest.raises(ConfigError, match="a version number"):
        sp.get_connection("my_db", version="AWSPREVIOUS")
    with pytest.raises(ConfigError, match="needs an id and a version"):
        sp.get_connection("my_db@")


def test_a_pinned_read_is_cached_under_its_version() -> None:
    store = _store()
    sp = _path(("v", store))
    for _ in range(3):
        assert sp.get_connection("my_db", version="1").password == OLD_PW
    assert sp.get_connection("my_db", version="2").password == NEW_PW
    assert len(store.calls) == 2  # one read per version


def test_a_rotation_never_drops_a_pinned_version_and_the_latest_follows_it() -> None:
    store = _store()
    sp = _path(("v", store))
    assert sp.get_connection("my_db", version="1").password == OLD_PW
    assert sp.get_connection("my_db").password == NEW_PW
    reads = len(store.calls)
    store.keep("connection", "my_db", "postgres://app:pw-s3cr3t-3@db/app")  # rotated outside credpath
    sp.invalidate("connection", "my_db")
    sp.refresh("connection", "my_db")
    assert sp.get_connection("my_db").password == "pw-s3cr3t-3"  # the latest read follows the rotation
    after = len(store.calls)
    assert after > reads
    assert sp.get_connection("my_db", version="1").password == OLD_PW
    assert len(store.calls) == after  # the pinned value came from the cache


def test_pinned_reads_survive_an_invalidation_in_another_process(tmp_path: Any) -> None:
    key = Fernet.generate_key()
    stores = [FileStore(tmp_path / "shared.db") for _ in range(2)]
    backends = [_store(), _store()]
    settings = CacheSettings(ttl=300.0, jitter=0.0)
    a, b = (
        _path(("v", backends[i]), cache=settings, shared=SharedTier(stores[i], [key], "scope"))
        for i in range(2)
    )
    try:
        assert a.get_connection("my_db", version="1").password == OLD_PW
        assert b.get_connection("my_db", version="1").password == OLD_PW
        assert backends[1].calls == []  # the second process read the shared tier
        assert b.get_connection("my_db").password == NEW_PW
        b_reads = len(backends[1].calls)
        a.invalidate("connection", "my_db")  # moves the epoch: b drops its process tier
        b._epoch_next = 0.0
        assert b.get_connection("my_db", version="1").password == OLD_PW
        assert len(backends[1].calls) == b_reads  # not read again: the version survived
        assert b.get_connection("my_db").password == NEW_PW
        assert len(backends[1].calls) == b_reads + 1  # the latest was invalidated and read again
        a.invalidate_all()
        b._epoch_next = 0.0
        assert b.get_connection("my_db", version="1").password == OLD_PW
        assert len(backends[1].calls) == b_reads + 1
    finally:
        for store in stores:
            store.close()


def test_a_moving_label_is_never_cached() -> None:
    class Staged(VersionedMemory):
        def accepts_version(self, version: str) -> bool:
            return version == "PREVIOUS" or super().accepts_version(version)

        def version_moves(self, version: str) -> bool:
            return version == "PREVIOUS"

        def _versioned(self, kind: str, key: str, latest: str | None) -> str | None:
            if pinned_version() == "PREVIOUS":
                versions = self.history.get((kind, key), [])
                return versions[-2] if len(versions) > 1 else None
            return super()._versioned(kind, key, latest)

    store = Staged()
    store.keep("variable", "k", "v1")
    store.keep("variable", "k", "v2")
    sp = _path(("v", store))
    assert sp.get_variable("k", version="PREVIOUS") == "v1"
    store.keep("variable", "k", "v3")
    assert sp.get_variable("k", version="PREVIOUS") == "v2"


def test_explain_and_the_trace_show_the_pinned_version() -> None:
    sp = _path(("plain", MemoryBackend()), ("v", _store()))
    explanation = sp.explain("connection", "my_db", version="1")
    assert explanation.source == "v" and explanation.version == "1"
    assert [a.outcome for a in explanation.attempts] == ["skipped (no versions)", "hit"]
    assert "pinned version 1" in explanation.attempts[1].detail
    assert sp.explain("connection", "my_db@2").version == "2"
    missing = sp.explain("connection", "my_db", version="7")
    assert not missing.found and [a.outcome for a in missing.attempts][-1] == "miss"

    seen: list[Any] = []
    unsubscribe = trace.subscribe(lambda context, event: seen.append((context.version, event)))
    try:
        sp.get_variable("api_token", version="1")
    finally:
        unsubscribe()
    assert any(isinstance(e, trace.StoreCall) and e.version == "1" for _, e in seen)
    assert any(isinstance(e, trace.Done) and e.result == "found" for _, e in seen)


def test_a_pinned_secret_is_masked_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    masker = Masker()
    sp = _path(("v", _store()), masker=masker)
    caplog.set_level(logging.DEBUG)
    conn = sp.get_connection("my_db", version="1")
    token = sp.get_variable("api_token", version="1")
    assert OLD_PW not in masker.redact(f"pw {OLD_PW} tok {token}")
    assert token not in masker.redact(f"pw {OLD_PW} tok {token}")
    with pytest.raises(VersionNotFound) as caught:
        sp.get_connection("my_db", version="5")
    assert OLD_PW not in repr(conn) and OLD_PW not in str(caught.value)
    assert "s3cr3t" not in caplog.text


def test_lookup_answers_none_for_a_version_nobody_has() -> None:
    sp = _path(("v", _store()))
    assert sp.lookup("connection", "my_db", version="9") is None
    assert sp.lookup("connection", "my_db@9") is None
    assert sp.get_conn_value("my_db@9") is None  # Airflow's read: a miss, not an exception


def test_inside_airflow_a_conn_id_suffix_reads_the_version(tmp_path: Any) -> None:
    import json

    from credpath.airflow import _CredpathBackendMixin

    backend = _CredpathBackendMixin(backends=[{"name": "env", "type": "env"}])
    backend.search_path = _path(("v", _store()))
    value = backend.get_conn_value("my_db@1")
    assert value is not None and json.loads(value)["password"] == OLD_PW
    assert json.loads(backend.get_conn_value("my_db") or "{}")["password"] == NEW_PW
    assert backend.get_conn_value("my_db@9") is None


def test_the_async_reads_pass_the_version_on() -> None:
    import asyncio

    from credpath import _aio

    sp = _path(("v", _store()))

    async def main() -> tuple[Any, Any, Any]:
        return (
            await _aio.aget_connection(sp, "my_db", version="1"),
            await _aio.aget_connection(sp, "my_db"),
            await _aio.aget_variable(sp, "api_token", version=1),
        )

    first, latest, token = asyncio.run(main())
    assert (first.password, latest.password, token) == (OLD_PW, NEW_PW, "tok-s3cr3t-1")


def test_the_search_path_and_the_pinned_module_agree_on_the_suffix() -> None:
    from credpath import _search_path
    from credpath._lookup import pinned

    assert _search_path._SUFFIX == pinned.SUFFIX == "@"
