"""Unit tests of credpath._shared_cache: FileStore on a temp file, SharedTier on a fake clock, the settings
helpers, stats_report, and RedisStore against the session's real redis-server (tests/servers/redis.py).

These are the module's fast tests for scripts/mutation: no store servers but Redis, no subprocesses, no
sleeping (the tier's clock is replaced by :class:`Clock`, whose ``sleep`` only moves time on), except the
two tests of how an open waits for SQLite's file lock, which must wait on real time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import stat
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath import _keys
from credpath import _shared_cache as sc
from credpath._redis_store import RespStore
from credpath._settings import BackendSpec
from credpath._shared_cache import FileStore, SharedEntry, SharedTier
from credpath.errors import ConfigError, MissingDependency
from credpath.model import Connection

KEY = Fernet.generate_key()
OTHER_KEY = Fernet.generate_key()
CKEY = ("connection", "db", None)


class Clock:
    """Stands in for the ``time`` module inside credpath._shared_cache: wall and monotonic clocks that
    move only when told to (or by ``sleep``, which records how long it was asked to sleep)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sc, "time", fake)
    return fake


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    s = FileStore(tmp_path / "cache" / "shared.db")
    yield s
    s.close()


def entry(now: float, value: Any = "v", *, kind: str = "variable", miss: bool = False) -> SharedEntry:
    return SharedEntry(
        kind=kind,
        value=value,
        source="src",
        miss=miss,
        stored_at=now,
        fresh_until=now + 10,
        keep_until=now + 20,
    )


# --- FileStore ---


def test_file_store_put_get_overwrite_invalidate(store: FileStore) -> None:
    future = time.time() + 60
    assert store.get("a") is None
    store.put("a", b"one", future)
    store.put("b", b"two", future)
    assert store.get("a") == b"one"
    assert type(store.get("a")) is bytes
    store.put("a", b"uno", future)
    assert store.get("a") == b"uno"
    store.invalidate("a")
    assert store.get("a") is None
    assert store.get("b") == b"two"
    assert store.description == f"file {store.path}"


def test_file_store_drops_expired_entries_on_writes_and_counts_live_ones(
    store: FileStore, clock: Clock
) -> None:
    now = clock.now
    store.put("old", b"x", now + 5)
    store.put("edge", b"y", now + 10)
    store.put("live", b"z", now + 100)
    assert store.stats()["entries"] == 3
    clock.advance(10)  # "old" is past its keep_until, "edge" exactly at it: kept and counted
    assert store.stats()["entries"] == 2
    assert store.get("old") == b"x"  # a read never deletes
    store.put("other", b"w", clock.now + 100)
    assert store.get("old") is None
    assert store.get("edge") == b"y"
    store.put("gone", b"v", clock.now - 1)  # already expired: deleted by its own write
    assert store.get("gone") is None


def test_file_store_lock_lease_owner_and_takeover(store: FileStore, clock: Clock) -> None:
    assert store.locked("k") is False
    assert store.lock("k", "me", 5.0) is True
    assert store.locked("k") is True
    assert store.lock("k", "you", 5.0) is False
    assert store.lock("k", "me", 5.0) is False  # not re-entrant either
    store.unlock("k", "you")  # not the owner: no effect
    assert store.locked("k") is True
    clock.advance(5.0)  # the lease ends exactly now: still held
    assert store.locked("k") is True
    assert store.lock("k", "you", 5.0) is False
    clock.advance(0.5)
    assert store.locked("k") is False
    assert store.lock("k", "you", 2.0) is True  # taken over
    store.unlock("k", "me")  # the old owner's unlock must not free the new owner's lock
    assert store.locked("k") is True
    store.unlock("k", "you")
    assert store.locked("k") is False
    assert store.lock("k", "me", 1.0) is True


def test_file_store_stats_add_up_and_skip_zeros(store: FileStore) -> None:
    store.add_stats({})
    store.add_stats({"shared_hits": 0})
    assert store.stats() == {"entries": 0}
    store.add_stats({"shared_hits": 2, "store_reads": 1, "lock_waits": 0})
    store.add_stats({"shared_hits": 3})
    assert store.stats() == {"shared_hits": 5, "store_reads": 1, "entries": 0}


def test_file_store_clear_removes_entries_locks_and_stats(store: FileStore) -> None:
    assert store.clear() == 0
    future = time.time() + 60
    store.put("a", b"1", future)
    store.put("b", b"2", future)
    store.lock("k", "me", 60)
    store.add_stats({"shared_hits": 1})
    assert store.clear() == 2
    assert store.get("a") is None
    assert store.locked("k") is False
    assert store.stats() == {"entries": 0}


def test_file_store_file_is_private_in_wal_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "new" / "deeper" / "c.db"  # missing directories are made, all private
    s = FileStore(path)
    with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
        s.get("a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not caplog.records
    db = s._db()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert db.isolation_level is None  # autocommit: each statement is its own short transaction
    s.close()


def test_file_store_warns_about_a_file_others_can_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.db"
    path.touch()
    path.chmod(0o640)
    s = FileStore(path)
    with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
        s.get("a")
    assert [r.getMessage() for r in caplog.records] == [
        f"shared cache: {path} is readable by group/others; chmod 600 it"
    ]
    s.close()


def test_file_store_waits_two_seconds_for_a_locked_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    connect = sqlite3.connect

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return connect(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", recording)
    s = FileStore(tmp_path / "c.db")
    s.get("a")
    s.close()
    assert seen == [{"timeout": 2.0, "isolation_level": None, "check_same_thread": False}]


def test_file_store_opens_a_file_another_process_is_still_writing(tmp_path: Path) -> None:
    # Another opener mid-write (before WAL is set) on a new file: SQLite refuses the switch to WAL at
    # once, without its busy timeout. The open waits for the writer instead of failing the tier (a failed
    # open sent one of ten concurrent Airflow tasks to the store in CI).
    import threading

    path = tmp_path / "c.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    refused = sqlite3.connect(path, timeout=2.0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # the state the open must survive
        refused.execute("PRAGMA journal_mode=WAL")
    refused.close()
    release = threading.Timer(0.2, writer.execute, ("COMMIT",))
    release.start()
    s = FileStore(path)
    started = time.monotonic()
    try:
        assert s.get("a") is None
        waited = time.monotonic() - started
        assert s._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        s.close()
        writer.close()
    assert 0.15 <= waited < 2.0


def test_file_store_open_gives_up_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sc, "SQLITE_BUSY_TIMEOUT", 0.3)  # the 2 s default is pinned by the test above
    path = tmp_path / "c.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    s = FileStore(path)
    started = time.monotonic()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            s.get("a")
        assert s._conn is None  # nothing half-opened is kept: the next call opens afresh
    finally:
        writer.close()
    assert sc.SQLITE_BUSY_TIMEOUT <= time.monotonic() - started < sc.SQLITE_BUSY_TIMEOUT + 1.0
    assert s.get("a") is None
    s.close()


def test_file_store_open_retries_a_busy_file_with_capped_back_off(tmp_path: Path, clock: Clock) -> None:
    # On the fake clock (SQLite's refusal is immediate, so nothing waits): pauses double from 5 ms up to
    # 100 ms, and the open gives up once the busy timeout has passed.
    path = tmp_path / "c.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    started = clock.now
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            FileStore(path).get("a")
    finally:
        writer.close()
    assert clock.sleeps[:6] == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08, 0.1])
    assert set(clock.sleeps[5:]) == {0.1}
    assert sc.SQLITE_BUSY_TIMEOUT <= clock.now - started < sc.SQLITE_BUSY_TIMEOUT + 0.1


def test_file_store_keeps_one_connection_per_process(store: FileStore) -> None:
    store.get("a")
    first = store._conn
    store.get("a")
    assert store._conn is first
    store._pid = -1  # as in a forked child: the parent's handle must not be used
    store.get("a")
    assert store._conn is not first
    assert store._pid == os.getpid()


def test_file_store_close_closes_and_reopens(store: FileStore) -> None:
    store.put("a", b"1", time.time() + 60)
    conn = store._conn
    store.close()
    assert store._conn is None
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    assert store.get("a") == b"1"
    store._pid = -1
    other = store._conn
    store.close()  # a handle of another process is dropped, not closed
    other.execute("SELECT 1")
    assert store._conn is None
    other.close()


# --- SharedTier: naming and sealing ---


def tier_on(store: Any, keys: list[bytes] | None = None, scope: str = "scope", **kw: Any) -> SharedTier:
    return SharedTier(store, keys or [KEY], scope, **kw)


def test_names_are_an_hmac_of_scope_kind_id_and_team(store: FileStore) -> None:
    tier = tier_on(store)
    mac_key = hashlib.sha256(b"credpath shared cache key names\0" + KEY).digest()
    message = json.dumps(["scope", "connection", "db", None], separators=(",", ":")).encode()
    assert tier.name(CKEY) == hmac.new(mac_key, message, hashlib.sha256).hexdigest()
    names = {
        tier.name(CKEY),
        tier.name(("variable", "db", None)),
        tier.name(("connection", "db2", None)),
        tier.name(("connection", "db", "team")),
        tier_on(store, scope="other").name(CKEY),
        tier_on(store, [OTHER_KEY, KEY]).name(CKEY),
    }
    assert len(names) == 6
    assert tier_on(store, [KEY, OTHER_KEY]).name(CKEY) == tier.name(CKEY)  # the first key names
    assert tier.description == store.description
    assert tier.lease == sc.DEFAULT_LEASE == 5.0


def test_sealed_entries_round_trip(store: FileStore) -> None:
    tier = tier_on(store)
    conn = Connection(
        conn_id="db", conn_type="postgres", host="h", password="pw", extra='{"a": 1}', description="the db"
    )
    now = time.time()
    for e in (
        entry(now, conn, kind="connection"),
        entry(now, None, kind="connection", miss=True),
        entry(now, "plain", kind="variable"),
        entry(now, None, kind="variable", miss=True),
    ):
        name = tier.name((e.kind, "x", None))
        opened = tier._open(name, tier._seal(name, e))
        assert opened == e
        assert type(opened.value) is type(e.value)
    assert tier.counts["undecryptable"] == 0


def test_values_that_do_not_open_are_counted_misses_warned_once(
    store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    tier = tier_on(store)
    other = tier_on(store, [OTHER_KEY])
    name = tier.name(CKEY)
    good = tier._seal(name, entry(time.time()))
    seal = tier._sealer.seal
    with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
        assert other._open(name, good) is None  # another key
        assert other._open(name, good) is None
        assert tier._open(tier.name(("variable", "other", None)), good) is None  # moved to another key
        assert tier._open(name, b"not a token") is None
        assert tier._open(name, Fernet(KEY).encrypt(b"{}")) is None  # the earlier format
        assert tier._open(name, seal(name, b"not json")) is None  # ValueError
        assert tier._open(name, seal(name, b"{}")) is None  # KeyError
        assert tier._open(name, seal(name, b"[1]")) is None  # TypeError
    assert other.counts["undecryptable"] == 2
    assert tier.counts["undecryptable"] == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per tier
    assert "did not decrypt" in warnings[0].getMessage()
    # A key list whose second key wrote the value (a rotation) decrypts it.
    assert tier_on(store, [OTHER_KEY, KEY])._open(name, good) is not None


def test_entry_freshness_boundary() -> None:
    import dataclasses

    e = entry(100.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.value = "other"  # type: ignore[misc]
    assert e.fresh(110.0) is True
    assert e.fresh(110.5) is False


# --- SharedTier: get / put / failures ---


def test_get_and_put_respect_keep_until(store: FileStore, clock: Clock) -> None:
    tier = tier_on(store)
    assert tier.get(CKEY) is None
    e = entry(clock.now)
    tier.put(CKEY, e)
    assert tier.get(CKEY) == e
    clock.advance(20)  # exactly keep_until: still served
    assert tier.get(CKEY) == e
    clock.advance(0.5)
    assert tier.get(CKEY) is None
    late = entry(clock.now - 20)  # keep_until == now: not worth writing
    tier.put(("variable", "late", None), late)
    assert store.get(tier.name(("variable", "late", None))) is None
    tier.invalidate(CKEY)
    assert store.get(tier.name(CKEY)) is None


class Broken(FileStore):
    """A FileStore whose operations fail while ``down`` is set (a Redis that went away)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = True
        self.calls = 0

    def _db(self) -> Any:
        self.calls += 1
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        return super()._db()


def test_a_failing_tier_is_a_miss_skipped_for_a_second_then_retried(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken(tmp_path / "c.db")
    tier = tier_on(broken)
    with caplog.at_level(logging.INFO, logger="credpath.shared_cache"):
        assert tier.get(CKEY) is None
        assert tier.counts["shared_errors"] == 1
        calls = broken.calls
        tier.put(CKEY, entry(clock.now))
        tier.invalidate(CKEY)
        assert tier.get(CKEY) is None
        assert tier.acquire(CKEY) is None
        tier.flush()
        assert broken.calls == calls  # skipped while down: no store call
        clock.advance(sc.RETRY_AFTER_FAILURE)  # tried again after exactly one second
        assert tier.acquire(CKEY) is None
        assert broken.calls == calls + 1
        clock.advance(0.5)
        assert broken.calls == calls + 1
        clock.advance(0.5)
        tier.put(CKEY, entry(clock.now))
        clock.advance(1)
        tier.invalidate(CKEY)
        clock.advance(1)
        tier.release(CKEY)  # never skipped: a held lock must be freed
        assert tier.counts["shared_errors"] == 4  # the flush while down dropped the first one
        broken.down = False
        clock.advance(1)
        assert tier.get(CKEY) is None
        assert tier._down_until == 0.0
        tier.put(CKEY, entry(clock.now))
        assert tier.get(CKEY) is not None
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        (
            "WARNING",
            f"shared cache file {broken.path} failed while reading an entry (OperationalError); "
            "going to the stores directly",
        ),
        ("INFO", f"shared cache file {broken.path} is answering again"),
    ]
    assert sc.RETRY_AFTER_FAILURE == 1.0


def test_each_failing_operation_names_what_it_was_doing(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken(tmp_path / "c.db")
    tier = tier_on(broken)
    doing = []
    for call in (
        lambda: tier.put(CKEY, entry(clock.now)),
        lambda: tier.invalidate(CKEY),
        lambda: tier.acquire(CKEY),
        lambda: tier.release(CKEY),
    ):
        caplog.clear()
        tier._warned.clear()
        clock.advance(2)
        with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
            call()
        doing.append(caplog.records[0].getMessage().split(" failed while ")[1].split(" (")[0])
    tier.count("shared_hits")
    caplog.clear()
    tier._warned.clear()
    clock.advance(2)
    with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
        tier.flush()
    doing.append(caplog.records[0].getMessage().split(" failed while ")[1].split(" (")[0])
    assert doing == [
        "writing an entry",
        "invalidating an entry",
        "taking a lock",
        "releasing a lock",
        "adding to its counters",
    ]


def test_recovery_with_no_warning_logs_nothing(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Broken(tmp_path / "c.db")
    tier = tier_on(broken)
    tier.get(CKEY)
    tier._warned.clear()  # as if the warning had been for another tier state
    broken.down = False
    clock.advance(1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="credpath.shared_cache"):
        tier.get(CKEY)
    assert not caplog.records
    assert tier._down_until == 0.0


# --- SharedTier: locks and waiting ---


def test_acquire_and_release(store: FileStore, clock: Clock) -> None:
    mine, theirs = tier_on(store), tier_on(store)
    assert mine.acquire(CKEY) is True
    assert theirs.acquire(CKEY) is False
    theirs.release(CKEY)  # not theirs to free
    assert theirs.acquire(CKEY) is False
    mine.release(CKEY)
    assert theirs.acquire(CKEY) is True


def test_wait_returns_the_holders_fresh_entry(store: FileStore, clock: Clock) -> None:
    holder, waiter = tier_on(store), tier_on(store)
    assert holder.acquire(CKEY) is True
    e = entry(clock.now)
    holder.put(CKEY, e)
    assert waiter.wait(CKEY) == (e, False)
    assert waiter.counts["lock_waits"] == 1
    assert waiter.counts["lock_takeovers"] == 0
    assert clock.sleeps == [0.005]


def test_wait_takes_over_a_lock_released_without_an_entry(store: FileStore, clock: Clock) -> None:
    holder, waiter = tier_on(store), tier_on(store)
    holder.acquire(CKEY)
    stale = SharedEntry("variable", "old", "src", False, clock.now - 30, clock.now - 1, clock.now + 60)
    holder.put(CKEY, stale)  # there, but not fresh: not an answer
    holder.release(CKEY)
    assert waiter.wait(CKEY) == (None, True)
    assert waiter.counts["lock_takeovers"] == 1
    assert store.locked(waiter.name(CKEY)) is True  # the waiter now holds it


def test_wait_backs_off_and_takes_over_after_the_lease(store: FileStore, clock: Clock) -> None:
    holder, waiter = tier_on(store, lease=2.0), tier_on(store, lease=2.0)
    holder.acquire(CKEY)
    assert waiter.wait(CKEY) == (None, True)
    sleeps = waiter_sleeps = clock.sleeps
    assert sleeps[:3] == [0.005, 0.0075, 0.01125]
    assert max(waiter_sleeps) == 0.05
    assert 2.0 < sum(sleeps) < 2.1  # the holder's lease ran out


def test_wait_gives_up_after_lease_plus_a_second(tmp_path: Path, clock: Clock) -> None:
    class NeverFree(FileStore):
        def lock(self, key: str, owner: str, lease: float) -> bool:
            return False

    waiter = tier_on(NeverFree(tmp_path / "c.db"), lease=2.0)
    assert waiter.wait(CKEY) == (None, False)
    assert 3.0 <= sum(clock.sleeps) < 3.06
    assert waiter.counts["lock_takeovers"] == 0


def test_wait_is_bounded_by_the_callers_own_deadline(tmp_path: Path, clock: Clock) -> None:
    class NeverFree(FileStore):
        def lock(self, key: str, owner: str, lease: float) -> bool:
            return False

    waiter = tier_on(NeverFree(tmp_path / "c.db"), lease=5.0, wait_limit=0.5)
    assert waiter.wait_limit == 0.5
    assert waiter.wait(CKEY) == (None, False)
    assert 0.5 <= sum(clock.sleeps) < 0.56
    assert tier_on(NeverFree(tmp_path / "d.db"), lease=2.0, wait_limit=30.0).wait_limit == 3.0


def test_store_deadline_is_the_longest_declared_timeout() -> None:
    backends = [types.SimpleNamespace(timeout=3.0), types.SimpleNamespace(timeout=10), object()]
    assert sc.store_deadline(backends) == 10.0
    assert sc.store_deadline([object(), types.SimpleNamespace(timeout=True)]) is None
    assert sc.store_deadline([]) is None


def test_wait_ends_at_exactly_lease_plus_a_second(tmp_path: Path, clock: Clock) -> None:
    class NeverFree(FileStore):
        def lock(self, key: str, owner: str, lease: float) -> bool:
            return False

    clock.sleep = lambda seconds: (clock.sleeps.append(seconds), clock.advance(3.0))  # type: ignore[method-assign]
    waiter = tier_on(NeverFree(tmp_path / "c.db"), lease=2.0)
    assert waiter.wait(CKEY) == (None, False)
    assert len(clock.sleeps) == 1  # the first look lands on the end: no second one


def test_wait_returns_an_entry_written_just_before_the_takeover(tmp_path: Path, clock: Clock) -> None:
    class WritesThenFrees(FileStore):
        def lock(self, key: str, owner: str, lease: float) -> bool:
            taken = super().lock(key, owner, lease)
            if taken and owner == waiter._owner:
                holder.put(CKEY, e)
            return taken

    s = WritesThenFrees(tmp_path / "c.db")
    holder, waiter = tier_on(s), tier_on(s)
    e = entry(clock.now)
    assert waiter.wait(CKEY) == (e, False)
    assert waiter.counts["lock_takeovers"] == 1
    assert s.locked(waiter.name(CKEY)) is False  # released again: nobody needs to read the store


def test_wait_stops_when_the_tier_fails(tmp_path: Path, clock: Clock) -> None:
    class LockFails(FileStore):
        def lock(self, key: str, owner: str, lease: float) -> bool:
            raise sqlite3.OperationalError("locked")

    waiter = tier_on(LockFails(tmp_path / "c.db"))
    assert waiter.wait(CKEY) == (None, False)
    assert waiter.counts["shared_errors"] == 1
    assert len(clock.sleeps) == 1
    broken = Broken(tmp_path / "d.db")
    down = tier_on(broken)
    assert down.wait(CKEY) == (None, False)  # the first get fails: no lock attempt on a down tier
    assert len(clock.sleeps) == 2
    assert down.counts["shared_errors"] == 1


# --- SharedTier: counters ---


def test_counts_are_per_process_and_registered_for_exit(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: list[Any] = []
    monkeypatch.setattr(sc.atexit, "register", registered.append)
    tier = tier_on(store)
    assert tier.counts == dict.fromkeys(sc.COUNTERS, 0)
    tier.count("shared_hits", 2)
    tier.count("shared_hits")
    tier.count("store_reads")
    assert tier.counts["shared_hits"] == 3
    assert tier.counts["store_reads"] == 1
    assert registered == [tier.flush]
    tier._flushed_pid = -1  # as in a forked child: the parent's counts are not this process's
    tier.count("lock_waits", 4)
    assert tier.counts == dict.fromkeys(sc.COUNTERS, 0) | {"lock_waits": 4}
    assert registered == [tier.flush, tier.flush]


def test_flush_adds_counts_once_and_flush_soon_waits_a_second(store: FileStore, clock: Clock) -> None:
    tier = tier_on(store)
    tier.count("shared_hits", 2)
    tier.flush_soon()  # the first flush of a process: at once
    assert store.stats() == {"shared_hits": 2, "entries": 0}
    assert tier.counts["shared_hits"] == 0
    tier.count("shared_hits")
    clock.advance(1.0)
    tier.flush_soon()  # not more than a second since the last: later
    assert store.stats()["shared_hits"] == 2
    clock.advance(0.5)
    tier.flush_soon()
    assert store.stats()["shared_hits"] == 3
    tier.count("undecryptable")
    tier.flush()
    assert tier.stats() == {"shared_hits": 3, "undecryptable": 1, "entries": 0}
    tier.flush()  # nothing counted since: nothing added
    assert tier.stats() == {"shared_hits": 3, "undecryptable": 1, "entries": 0}


def test_flush_on_a_down_tier_drops_the_counts(tmp_path: Path, clock: Clock) -> None:
    broken = Broken(tmp_path / "c.db")
    tier = tier_on(broken)
    tier.get(CKEY)
    calls = broken.calls
    tier.flush()
    assert broken.calls == calls
    assert tier.counts == dict.fromkeys(sc.COUNTERS, 0)


def test_tier_stats_clear_close_delegate(store: FileStore) -> None:
    tier = tier_on(store)
    tier.put(CKEY, entry(time.time()))
    assert tier.stats()["entries"] == 1
    assert tier.clear() == 1
    tier.close()
    assert store._conn is None


# --- scope_of and stats_report ---


class Backend:
    def __init__(self, name: str | None = None) -> None:
        self.name = name


def test_scope_names_every_part_of_the_configuration() -> None:
    spec = BackendSpec(
        type="vault", name="v", kwargs={"url": "http://x"}, lookup_patterns={"connection": "^a"}
    )
    base = sc.scope_of([spec])
    assert base == sc.scope_of(
        [
            BackendSpec(
                type="vault", name="v", kwargs={"url": "http://x"}, lookup_patterns={"connection": "^a"}
            )
        ]
    )
    assert len(base) == 64
    others = [
        [
            BackendSpec(
                type="vault", name="w", kwargs={"url": "http://x"}, lookup_patterns={"connection": "^a"}
            )
        ],
        [BackendSpec(type="env", name="v", kwargs={"url": "http://x"}, lookup_patterns={"connection": "^a"})],
        [
            BackendSpec(
                type="vault", name="v", kwargs={"url": "http://y"}, lookup_patterns={"connection": "^a"}
            )
        ],
        [
            BackendSpec(
                type="vault", name="v", kwargs={"url": "http://x"}, lookup_patterns={"connection": "^b"}
            )
        ],
        [spec, spec],
        [],
    ]
    assert len({base, *(sc.scope_of(o) for o in others)}) == len(others) + 1
    a, b = Backend("a"), Backend("b")
    assert sc.scope_of([("x", a)]) == sc.scope_of([("x", b)])  # a tuple: its name and class
    assert sc.scope_of([("x", a)]) != sc.scope_of([("y", a)])
    assert sc.scope_of([("x", a)]) != sc.scope_of([("x", 1)])
    assert sc.scope_of([a]) != sc.scope_of([b])
    assert sc.scope_of([Backend()]) == sc.scope_of([Backend("Backend")])  # nameless: the class name
    two = {"url": "http://x", "token": "t"}
    assert sc.scope_of([BackendSpec(type="vault", name="v", kwargs=two)]) == sc.scope_of(
        [BackendSpec(type="vault", name="v", kwargs=dict(reversed(two.items())))]
    )  # the order options were written in does not matter

    class WithKwargs(Backend):
        kwargs: dict[str, Any] = {}  # a backend object with a kwargs attribute is still an object

    assert sc.scope_of([WithKwargs("a")]) != sc.scope_of([a])
    expected = [
        ["x", "Backend", {}, {}],
        ["a", "Backend", {}, {}],
        ["v", "vault", {"url": "http://x"}, {"connection": "^a"}],
    ]
    digest = hashlib.sha256(json.dumps(expected, sort_keys=True, default=str).encode()).hexdigest()
    assert sc.scope_of([("x", a), a, spec]) == digest


def test_stats_report_reads_every_counter() -> None:
    counts = {
        "process_hits": 1,
        "shared_hits": 2,
        "shared_misses": 3,
        "stale_served": 4,
        "store_reads": 5,
        "lock_waits": 6,
        "lock_takeovers": 7,
        "shared_errors": 8,
        "undecryptable": 9,
        "entries": 10,
    }
    shared = types.SimpleNamespace(description="file /x", stats=lambda: counts)
    assert sc.stats_report(shared) == {
        "tier": "file /x",
        "process": {"hits": 1},
        "shared": {
            "entries": 10,
            "hits": 2,
            "misses": 3,
            "lock_waits": 6,
            "lock_takeovers": 7,
            "undecryptable": 9,
            "errors": 8,
        },
        "store": {"reads": 5, "calls_avoided": 3, "stale_served": 4},
    }
    empty = sc.stats_report(types.SimpleNamespace(description="d", stats=dict))
    assert empty["process"] == {"hits": 0}
    assert set(empty["shared"].values()) == {0}
    assert empty["store"] == {"reads": 0, "calls_avoided": 0, "stale_served": 0}


# --- settings ---


def test_normalize_shared_file_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    assert sc.normalize_shared("  file ", home) == f"file:{home / 'cache' / 'shared-cache.db'}"
    assert sc.normalize_shared(f"file: {tmp_path}/c.db ", home) == f"file:{tmp_path}/c.db"
    monkeypatch.chdir(tmp_path)
    assert sc.normalize_shared("file:rel.db", home) == f"file:{tmp_path / 'rel.db'}"
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert sc.normalize_shared("file:~/c.db", home) == f"file:{tmp_path / 'h' / 'c.db'}"
    for bad, message in [
        ("file:", "'file:' needs a path"),
        ("file:  ", "'file:' needs a path"),
        (f"file:{tmp_path}", "names a directory"),
        ("files", "must be 'file', 'file:PATH', or a redis:// or rediss:// URL"),
        ("", "must be 'file'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            sc.normalize_shared(bad, home)
    assert isinstance(sc.open_store(f"file:{tmp_path}/o.db"), FileStore)
    assert sc.open_store(f"file:{tmp_path}/o.db").path == tmp_path / "o.db"


def test_normalize_shared_redis_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("redis")
    for good in (
        "redis://h",
        "rediss://u:p@h:6380/2",
        "redis://h/",
        "unix:///run/redis.sock",
        "redis://h:1/0",
    ):
        assert sc.normalize_shared(f" {good} ", tmp_path) == good
    for bad, message in [
        ("redis://h:port/0", "not a valid Redis URL \\(scheme"),
        ("redis:///0", "no host"),
        ("redis://h/db", "must be a database number"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            sc.normalize_shared(bad, tmp_path)
        assert bad not in str(info.value)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependency, match="needs redis-py"):
        sc.normalize_shared("redis://h", tmp_path)


def test_parse_keys() -> None:
    k1, k2 = Fernet.generate_key(), Fernet.generate_key()
    assert sc.parse_keys(f" {k1.decode()} ,, {k2.decode()},", "shared_key") == [k1, k2]
    for text, message in [
        ("", "shared_key holds no Fernet key"),
        (" , ", "shared_key holds no Fernet key"),
        (f"{k1.decode()},short", "shared_key: key 2 is not a Fernet key"),
        ("short", "shared_key: key 1 is not a Fernet key"),
        ("ключ", "key 1 is not a Fernet key"),
        ("!!!!", "key 1 is not a Fernet key"),
        (k1.decode()[:-4] + "AAAAAAAA", "key 1 is not a Fernet key"),  # 33+ bytes
    ]:
        with pytest.raises(ConfigError, match=message):
            sc.parse_keys(text, "shared_key")


def test_resolve_keys_order(tmp_path: Path) -> None:
    k1, k2, k3 = (Fernet.generate_key() for _ in range(3))
    home = tmp_path / "home"
    env = {"CREDPATH_CACHE_KEY": k1.decode(), "CREDPATH_FERNET_KEY": k3.decode()}
    assert sc.resolve_keys(k2.decode(), env, home, file_tier=False) == [k1]
    assert sc.resolve_keys(k2.decode(), {"CREDPATH_CACHE_KEY": " "}, home, file_tier=False) == [k2]
    assert sc.resolve_keys(None, {"CREDPATH_FERNET_KEY": k3.decode()}, home, file_tier=False) == [k3]
    assert sc.resolve_keys(
        None, {"CREDPATH_FERNET_KEY": "  ", "AIRFLOW__CORE__FERNET_KEY": k1.decode()}, home, file_tier=True
    ) != [k1]
    with pytest.raises(ConfigError, match="CREDPATH_CACHE_KEY: key 1"):
        sc.resolve_keys(None, {"CREDPATH_CACHE_KEY": "bad"}, home, file_tier=True)
    with pytest.raises(ConfigError, match="shared_key: key 1"):
        sc.resolve_keys("bad", {}, home, file_tier=True)
    with pytest.raises(ConfigError, match="a Redis tier needs a key every node shares"):
        sc.resolve_keys(None, {}, home, file_tier=False)
    home.mkdir(exist_ok=True)
    (home / "fernet.key").write_text(f"{k2.decode()}\n")
    assert sc.resolve_keys(None, {}, home, file_tier=False) == [k2]


def test_resolve_keys_airflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k1, k2 = Fernet.generate_key(), Fernet.generate_key()
    env = {"AIRFLOW__CORE__FERNET_KEY": f" {k1.decode()} "}
    assert sc.resolve_keys(" Airflow ", env, tmp_path, file_tier=False) == [k1]
    assert sc.resolve_keys(None, {"CREDPATH_CACHE_KEY": "AIRFLOW", **env}, tmp_path, file_tier=False) == [k1]
    with pytest.raises(ConfigError, match=r"CREDPATH_CACHE_KEY = 'airflow' \(\[core\] fernet_key\): key 1"):
        sc.resolve_keys(
            None,
            {"CREDPATH_CACHE_KEY": "airflow", "AIRFLOW__CORE__FERNET_KEY": "x"},
            tmp_path,
            file_tier=False,
        )
    conf = types.SimpleNamespace(
        get=lambda section, key, fallback: (
            f" {k2.decode()} " if (section, key) == ("core", "fernet_key") else fallback
        )
    )
    module = types.ModuleType("airflow.configuration")
    module.conf = conf  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "airflow.configuration", module)
    assert sc.resolve_keys("airflow", {"AIRFLOW__CORE__FERNET_KEY": "  "}, tmp_path, file_tier=False) == [k2]
    module.conf = types.SimpleNamespace(get=lambda *a, **k: None)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="Airflow's \\[core\\] fernet_key is not set"):
        sc.resolve_keys("airflow", {}, tmp_path, file_tier=False)
    monkeypatch.setitem(sys.modules, "airflow.configuration", None)  # Airflow missing
    with pytest.raises(ConfigError, match="Airflow's \\[core\\] fernet_key is not set"):
        sc.resolve_keys("airflow", {}, tmp_path, file_tier=False)


def test_file_tier_creates_a_private_node_key_once(tmp_path: Path) -> None:
    home = tmp_path / "nested" / "home"  # made with its missing parents
    keys = sc.resolve_keys(None, {}, home, file_tier=True)
    path = home / "cache.key"
    assert path.read_text() == keys[0].decode() + "\n"
    assert len(keys) == 1 and len(base64.urlsafe_b64decode(keys[0])) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert sorted(p.name for p in home.iterdir()) == ["cache.key"]  # the temporary file is gone
    assert sc.resolve_keys(None, {}, home, file_tier=True) == keys
    assert sc.resolve_keys(None, {}, tmp_path / "other", file_tier=True) != keys


def test_node_key_race_reads_the_winners_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cache.key"
    winner = Fernet.generate_key().decode()

    def lose(src: str | Path, dst: str | Path) -> None:
        Path(dst).write_text(winner + "\n")  # another process linked its key first
        raise FileExistsError(dst)

    monkeypatch.setattr(_keys.os, "link", lose)
    assert sc._node_key(path) == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.key"]  # the loser's temporary file is gone


def test_unreadable_key_file_names_the_file_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "fernet.key"
    path.write_bytes(b"\xff\xfe not ascii")
    with pytest.raises(ConfigError, match=r"cannot read the key file .*fernet.key \(UnicodeDecodeError\)"):
        sc.resolve_keys(None, {}, tmp_path, file_tier=True)
    path.unlink()
    path.mkdir()  # not a file: skipped, the node key is made
    assert len(sc.resolve_keys(None, {}, tmp_path, file_tier=True)) == 1
    with pytest.raises(ConfigError, match=r"cannot read the key file .*missing \(FileNotFoundError\)"):
        sc._read_private(tmp_path / "missing")


# --- RedisStore ---


def test_redis_store_options_and_safe_description(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("redis")
    s = sc.RedisStore("redis://:pw-s3cr3t@127.0.0.1:6390/3")
    assert s.description == "redis://127.0.0.1:6390/3"
    kwargs = s._client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.0 == sc.DEFAULT_REDIS_TIMEOUT
    assert kwargs["socket_connect_timeout"] == 1.0
    s = sc.RedisStore("rediss://h?socket_timeout=3&socket_connect_timeout=4")
    kwargs = s._client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3.0, 4.0)
    assert s.description == "rediss://h"
    assert sc.RedisStore("redis://").description == "redis://localhost"
    with pytest.raises(ConfigError, match=r"invalid Redis URL or option \(ValueError\)"):
        sc.RedisStore("redis://h?socket_timeout=soon")
    assert isinstance(sc.open_store("redis://h"), RespStore)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingDependency, match="needs redis-py"):
        sc.RedisStore("redis://h")


def test_redis_store_against_a_real_server(redis_url: str, redis_server: Any) -> None:
    s = sc.RedisStore(redis_url)
    client = redis_server.client()
    now = time.time()
    assert s.get("a") is None
    s.put("a", b"one", now + 1000)
    assert s.get("a") == b"one"
    assert 999_000 < client.pttl(sc.PREFIX + "e:a") <= 1_000_000  # expires in Redis itself, in ms
    s.put("gone", b"x", now - 1)
    s.put("zero", b"x", time.time())
    assert s.get("gone") is None and s.get("zero") is None
    s.invalidate("a")
    assert s.get("a") is None

    assert s.lock("k", "me", 1000.0) is True
    assert 999_000 < client.pttl(sc.PREFIX + "l:k") <= 1_000_000
    assert s.locked("k") is True
    assert s.lock("k", "you", 1000.0) is False
    s.unlock("k", "you")
    assert s.locked("k") is True
    s.unlock("k", "me")
    assert s.locked("k") is False
    assert s.lock("t", "me", 0.0001) is True  # a lease under a millisecond is still one
    assert client.pttl(sc.PREFIX + "l:t") <= 1  # 1, 0, or -2 once gone (no race: never more than 1)

    s.add_stats({})
    s.add_stats({"shared_hits": 2, "store_reads": 0})
    s.add_stats({"shared_hits": 1, "lock_waits": 1})
    assert not client.hexists(sc.PREFIX + "stats", "store_reads")
    for i in range(501):
        s.put(f"e{i}", b"v", now + 60)
    s.lock("held", "me", 60)
    assert s.stats() == {"shared_hits": 3, "lock_waits": 1, "entries": 501}
    assert s.clear() == 501  # entries only; locks and counters go too, uncounted
    assert client.keys(sc.PREFIX + "*") == []
    assert s.stats() == {"entries": 0}
    s.close()


# --- SharedState: small facts of backends, in the tier ---


def test_shared_state_round_trips_per_namespace_expires_and_is_never_a_lookup_entry(
    store: FileStore, clock: Clock
) -> None:
    tier = tier_on(store)
    state = tier.state("vault")
    assert state.get("kv:secret") is None
    state.put("kv:secret", 2, ttl=60)
    assert state.get("kv:secret") == 2
    assert tier.state("other").get("kv:secret") is None  # another backend's namespace
    clock.advance(59)
    assert state.get("kv:secret") == 2
    clock.advance(2)
    assert state.get("kv:secret") is None  # kept for its TTL only
    tier.put(state._ckey("k"), entry(clock.now, "v", kind="variable"))  # not written by SharedState
    assert state.get("k") is None


# --- a cache file or directory another user could read or change is refused ---


OTHER_UID = 4242


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda p: os.chown(p, OTHER_UID, -1), f"belongs to another user (uid {OTHER_UID})"),
        (lambda p: p.chmod(0o666), "is writable by group/others"),
        (lambda p: p.chmod(0o620), "is writable by group/others"),
        (lambda p: os.chown(Path(f"{p}-wal"), OTHER_UID, -1), "belongs to another user"),
    ],
    ids=["other-owner", "mode-0666", "group-writable", "other-owners-wal"],
)
def test_file_store_refuses_a_file_another_user_made_or_can_write(
    tmp_path: Path, prepare: Any, message: str
) -> None:
    path = tmp_path / "c.db"
    path.touch(mode=0o600)
    Path(f"{path}-wal").touch(mode=0o600)
    os.chmod(path, 0o600)
    prepare(path)
    tier = SharedTier(FileStore(path), [KEY])
    with pytest.raises(ConfigError) as info:
        tier.get(CKEY)  # a configuration error, never a miss served over it
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError):
        tier.put(CKEY, SharedEntry("connection", None, None, True, 0.0, 9e9, 9e9))


def test_file_store_refuses_a_directory_another_user_owns_or_others_can_write(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, -1)
    with pytest.raises(ConfigError, match="belongs to another user"):
        FileStore(theirs / "c.db").get("k")
    assert not (theirs / "c.db").exists()
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by group/others"):
        FileStore(open_dir / "c.db").get("k")
    sticky = tmp_path / "shm-like"  # as /dev/shm and /tmp: others cannot replace our file there
    sticky.mkdir()
    sticky.chmod(0o1777)
    store = FileStore(sticky / "c.db")
    assert store.get("k") is None
    store.close()


def test_file_store_refuses_a_symbolic_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    target.touch(mode=0o600)
    (tmp_path / "c.db").symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        FileStore(tmp_path / "c.db").get("k")


def test_a_foreign_cache_file_is_one_line_exit_2_from_the_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from credpath.cli import cli

    path = tmp_path / "cache.db"
    path.touch()
    path.chmod(0o666)
    config = tmp_path / "credpath.toml"
    config.write_text(f'[[backends]]\ntype = "env"\n[cache]\nshared = "file:{path}"\n')
    env = {"CREDPATH_HOME": str(tmp_path / "home"), "CREDPATH_CACHE_KEY": KEY.decode()}
    result = CliRunner().invoke(cli, ["--config", str(config), "connections", "get", "x"], env=env)
    assert result.exit_code == 2, result.output
    assert "is writable by group/others" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_holder_is_dead_only_if_it_is_a_gone_process_of_this_host() -> None:
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert sc._died_here(f"{sc._HOST}:{gone.pid}:ab12")
    assert not sc._died_here(f"{sc._HOST}:{os.getpid()}:ab12")  # this very process
    assert not sc._died_here(f"other-host:{gone.pid}:ab12")  # another node: its lease decides
    assert not sc._died_here(f"{sc._HOST}:1:ab12")  # alive (init)
    assert not sc._died_here("garbage")
