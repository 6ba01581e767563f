"""The shared cache tier: one cache per node (a file) or per deployment (Redis) behind the in-process one.

Airflow runs every task in its own process, so the in-process cache saves nothing there; this tier lets
one process's store read serve every other process for the TTL.

- :class:`SharedStore` is the small protocol a tier implements: opaque keys and blobs, a lock with a
  lease, counters. :class:`FileStore` (SQLite in WAL mode, no daemon, file created 0600) and
  :class:`RedisStore` (redis-py; ``redis://`` / ``rediss://``) implement it.
- :class:`SharedTier` is what the search path talks to. Nothing sits in clear in the store: a key is an
  HMAC-SHA256 of (search-path scope, kind, id, team), so the cache does not reveal which connections
  exist; a value is a Fernet token (encrypted and authenticated) whose payload names the key it belongs
  to, so a value moved to another key, or written with another key, is a miss, never a wrong value.
- Every failure of the tier (Redis down, the file unreadable or corrupt, a value that does not decrypt)
  is logged once and treated as a miss: the search path goes to the stores directly and keeps serving.
  After a failure the tier is skipped for a second (no connect timeout paid on every lookup), then tried
  again.

Times in the tier are wall-clock (``time.time()``): processes on different nodes share Redis.
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from credpath._keys import create_key_file, generate_key, parse_keys, read_key_file
from credpath.errors import ConfigError

if TYPE_CHECKING:
    from credpath._deadlines import Deadline

__all__ = [
    "FileStore",
    "RedisStore",
    "SharedEntry",
    "SharedStore",
    "SharedTier",
    "normalize_shared",
    "open_store",
    "parse_keys",
    "resolve_keys",
    "scope_of",
    "stats_report",
    "store_deadline",
]


log = logging.getLogger("credpath.shared_cache")

#: A str as JSON writes it (ASCII, escaped), json.dumps's own C function.
_json_string = json.encoder.encode_basestring_ascii

#: Seconds a lock holder may take before a waiter takes over (a holder that died frees its lock then).
DEFAULT_LEASE = 5.0
#: Seconds a generation record is kept: longer than any entry's TTL plus its stale window.
GENERATION_KEEP = 7 * 24 * 3600.0
#: Seconds between looks at whether a lock's holder is a process of this host that has died.
HOLDER_CHECK_INTERVAL = 0.5
#: Longest pause of a process with no store client before it takes a free lease that a process with one
#: may take instead (it took a lease in the last LEASE_TAKERS_KEEP seconds). Building a store client is
#: the costliest step of a task process's first store read (a boto3 client: about 200 ms of CPU); a
#: pause costs no CPU, and is shorter than a store read, so a waiter that paused in vain is late by less
#: than it would have waited anyway.
LEASE_DEFERRAL = 0.05
#: Seconds after its last lease taken that a process counts as one that will take the next.
LEASE_TAKERS_KEEP = 2.0
#: Seconds the tier is skipped after it failed (then tried again).
RETRY_AFTER_FAILURE = 1.0
#: Redis socket timeouts when the URL gives none: a shared tier slower than this is worse than no tier.
DEFAULT_REDIS_TIMEOUT = 1.0
PREFIX = "credpath:v1:"
#: Entry names a tier keeps derived (a bound: cleared when full).
NAMES_KEEP = 4096
#: Entries (and generation records) a tier keeps opened, one per name (a bound: cleared when full).
OPENED_KEEP = 1024
COUNTERS = (
    "process_hits",
    "shared_hits",
    "shared_misses",
    "stale_served",
    "store_reads",
    "lock_waits",
    "lock_takeovers",
    "shared_errors",
    "undecryptable",
)


class SharedStore(Protocol):
    """Opaque keys (hex text) and blobs; ``keep_until`` and lock leases in wall-clock seconds."""

    #: Safe description (no password): "file /path/cache.db", "redis://host:6379/0".
    description: str

    def get(self, key: str) -> bytes | None: ...
    def get_many(self, keys: list[str]) -> list[bytes | None]: ...
    def put(self, key: str, blob: bytes, keep_until: float) -> None: ...
    def put_new(self, key: str, blob: bytes, keep_until: float) -> bytes | None: ...
    def invalidate(self, key: str) -> None: ...
    def lock(self, key: str, owner: str, lease: float) -> bool: ...
    def unlock(self, key: str, owner: str) -> None: ...
    def locked(self, key: str) -> bool: ...
    def holder(self, key: str) -> str | None: ...
    def add_stats(self, counts: Mapping[str, int]) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def clear(self) -> int: ...
    def close(self) -> None: ...


# --- the node-local file tier ------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (k TEXT PRIMARY KEY, v BLOB NOT NULL, keep_until REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS locks (k TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)"
    " WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS stats (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
)


#: Seconds a SQLite statement waits for another process's write lock before it fails.
SQLITE_BUSY_TIMEOUT = 2.0


def _prepare(conn: Any) -> None:
    """WAL mode and the schema, on a file other processes may be creating at the same moment.

    Switching to WAL needs the file to itself, and SQLite answers "database is locked" at once, without
    its busy timeout, when another connection holds it (seen with 10 processes opening a new file: about
    one open in 300 failed, which sent that task to the store). WAL is a property of the file, so only
    the first opener switches it; the others see it set, and a switch that met a busy file is retried.
    """
    import sqlite3

    give_up = time.monotonic() + SQLITE_BUSY_TIMEOUT
    pause = 0.005
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= give_up:  # SQLITE_BUSY reads so
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    conn.execute("PRAGMA synchronous=NORMAL")  # a cache: losing the last writes on power loss is fine
    for statement in _SCHEMA:
        conn.execute(statement)


def _check_directory(directory: Path) -> None:
    """Refuse a cache directory another user owns (root's excepted) or others may write into without the
    sticky bit (/dev/shm, /tmp: 1777, are fine: nobody can replace another user's file there)."""
    info = directory.stat()
    if info.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"shared cache: the directory {directory} belongs to another user (uid {info.st_uid}); "
            "use a directory of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        raise ConfigError(
            f"shared cache: the directory {directory} is writable by group/others; chmod go-w it "
            "or use a directory of your own"
        )


def _check_file(path: Path, info: os.stat_result) -> None:
    """Refuse a cache file another user made (it could read every entry written into it, and change them)
    or that group/others can write."""
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"shared cache: {path} is not a regular file; remove it or choose another path")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"shared cache: {path} belongs to another user (uid {info.st_uid}); "
            "remove it or choose another path"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"shared cache: {path} is writable by group/others; remove it or chmod 600 it")


class FileStore:
    """SQLite in WAL mode: readers never block the writer, a write is one short transaction.

    One connection per process (a forked child opens its own: a SQLite handle must not cross a fork).
    The database file is created 0600 in a 0700 directory; SQLite gives its -wal and -shm files the
    database file's mode.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.description = f"file {self.path}"
        self._conn: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    def _db(self) -> Any:
        conn = self._conn
        if conn is not None and self._pid == os.getpid():
            return conn
        import sqlite3

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_directory(self.path.parent)
        # Created private before SQLite opens it; never through a symbolic link another user planted.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise ConfigError(
                f"shared cache: {self.path} is a symbolic link; remove it or choose another path"
            ) from None
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        _check_file(self.path, info)
        for suffix in ("-wal", "-shm"):  # SQLite's companions: another user's would be written into too
            try:
                _check_file(Path(f"{self.path}{suffix}"), os.lstat(f"{self.path}{suffix}"))
            except FileNotFoundError:
                pass
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("shared cache: %s is readable by group/others; chmod 600 it", self.path)
        conn = sqlite3.connect(
            self.path, timeout=SQLITE_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            _prepare(conn)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db().execute("SELECT v FROM entries WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        with self._lock:
            rows = self._db().execute(
                f"SELECT k, v FROM entries WHERE k IN ({', '.join('?' * len(keys))})", keys
            )
            found = {k: bytes(v) for k, v in rows}
        return [found.get(k) for k in keys]

    def put_new(self, key: str, blob: bytes, keep_until: float) -> bytes | None:
        """Write ``blob`` unless a live value is there; returns the value there afterwards."""
        now = time.time()
        with self._lock:
            db = self._db()
            db.execute(
                "INSERT INTO entries (k, v, keep_until) VALUES (?, ?, ?) "
                "ON CONFLICT (k) DO UPDATE SET v = excluded.v, keep_until = excluded.keep_until "
                "WHERE entries.keep_until < ?",
                (key, blob, keep_until, now),
            )
            row = db.execute("SELECT v FROM entries WHERE k = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: str, blob: bytes, keep_until: float) -> None:
        now = time.time()
        with self._lock:
            db = self._db()
            db.execute(
                "INSERT INTO entries (k, v, keep_until) VALUES (?, ?, ?) "
                "ON CONFLICT (k) DO UPDATE SET v = excluded.v, keep_until = excluded.keep_until",
                (key, blob, keep_until),
            )
            # Expired entries go on writes only (a write is rare; a read stays one SELECT).
            db.execute("DELETE FROM entries WHERE keep_until < ?", (now,))

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._db().execute("DELETE FROM entries WHERE k = ?", (key,))

    def lock(self, key: str, owner: str, lease: float) -> bool:
        now = time.time()
        with self._lock:
            cursor = self._db().execute(
                "INSERT INTO locks (k, owner, until) VALUES (?, ?, ?) "
                "ON CONFLICT (k) DO UPDATE SET owner = excluded.owner, until = excluded.until "
                "WHERE locks.until < ?",
                (key, owner, now + lease, now),
            )
            return bool(cursor.rowcount == 1)

    def unlock(self, key: str, owner: str) -> None:
        with self._lock:
            self._db().execute("DELETE FROM locks WHERE k = ? AND owner = ?", (key, owner))

    def locked(self, key: str) -> bool:
        with self._lock:
            row = self._db().execute("SELECT until FROM locks WHERE k = ?", (key,)).fetchone()
        return row is not None and row[0] >= time.time()

    def holder(self, key: str) -> str | None:
        with self._lock:
            row = (
                self._db()
                .execute("SELECT owner FROM locks WHERE k = ? AND until >= ?", (key, time.time()))
                .fetchone()
            )
        return None if row is None else str(row[0])

    def extend_lock(self, key: str, owner: str, lease: float) -> bool:
        """Push a lock ``owner`` still holds ``lease`` seconds further (a heartbeat); False: not held."""
        now = time.time()
        with self._lock:
            cursor = self._db().execute(
                "UPDATE locks SET until = ? WHERE k = ? AND owner = ? AND until >= ?",
                (now + lease, key, owner, now),
            )
            return bool(cursor.rowcount == 1)

    def add_stats(self, counts: Mapping[str, int]) -> None:
        items = [(name, n) for name, n in counts.items() if n]
        if not items:
            return
        with self._lock:
            self._db().executemany(
                "INSERT INTO stats (name, n) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
                items,
            )

    def stats(self) -> dict[str, int]:
        with self._lock:
            db = self._db()
            counts = {name: n for name, n in db.execute("SELECT name, n FROM stats")}
            counts["entries"] = db.execute(
                "SELECT count(*) FROM entries WHERE keep_until >= ? AND k NOT LIKE 'g:%'", (time.time(),)
            ).fetchone()[0]
        return counts

    # --- read counters per process (credpath._usage): their own table, created on first use ---

    def _usage_db(self) -> Any:
        db = self._db()
        if getattr(self, "_usage_conn", None) is not db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS usage (k TEXT NOT NULL, w TEXT NOT NULL, v BLOB NOT NULL,"
                " keep_until REAL NOT NULL, PRIMARY KEY (k, w)) WITHOUT ROWID"
            )
            self._usage_conn = db
        return db

    def put_usage(self, records: list[tuple[str, str, bytes]], keep_until: float) -> None:
        """Replace each (name, process) record; drop the records nobody published for a day."""
        with self._lock:
            db = self._usage_db()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO usage (k, w, v, keep_until) VALUES (?, ?, ?, ?) ON CONFLICT (k, w) DO "
                    "UPDATE SET v = excluded.v, keep_until = excluded.keep_until",
                    [(k, w, v, keep_until) for k, w, v in records],
                )
                db.execute("DELETE FROM usage WHERE keep_until < ?", (time.time(),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def get_usage(self, names: list[str]) -> dict[str, list[tuple[str, bytes]]]:
        found: dict[str, list[tuple[str, bytes]]] = {}
        now = time.time()
        with self._lock:
            db = self._usage_db()
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT k, w, v FROM usage WHERE k IN ({marks}) AND keep_until >= ?", (*chunk, now)
                )
                for k, w, v in rows:
                    found.setdefault(str(k), []).append((str(w), bytes(v)))
        return found

    def clear(self) -> int:
        with self._lock:
            db = self._db()
            removed = int(db.execute("DELETE FROM entries WHERE k NOT LIKE 'g:%'").rowcount)
            db.execute("DELETE FROM entries")
            db.execute("DELETE FROM locks")
            db.execute("DELETE FROM stats")
        return max(0, removed)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


# --- the deployment-wide Redis tier ------------------------------------------------------------------

_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
#: A lock's heartbeat: extend it only while its owner still holds it.
EXTEND_LOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


class RedisStore:
    """Redis or Valkey through redis-py (imported only when this tier is configured).

    The URL takes redis-py's options: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for
    TLS (``?ssl_cert_reqs=required&ssl_ca_certs=/path``), ``?socket_timeout=`` (default 1 s).
    Entries expire in Redis itself (PX) at the end of their stale window; locks are ``SET NX PX``.
    """

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:
            from credpath.errors import MissingDependency

            raise MissingDependency(
                "shared cache: a Redis tier needs redis-py: pip install 'credpath[redis]'", module="redis"
            ) from None
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        options: dict[str, Any] = {}
        if "socket_timeout" not in query:
            options["socket_timeout"] = DEFAULT_REDIS_TIMEOUT
        if "socket_connect_timeout" not in query:
            options["socket_connect_timeout"] = DEFAULT_REDIS_TIMEOUT
        try:
            self._client = redis.Redis.from_url(url, **options)
            port = f":{parts.port}" if parts.port else ""
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"shared cache: invalid Redis URL or option ({type(exc).__name__})") from None
        host = parts.hostname or "localhost"
        self.description = f"{parts.scheme}://{host}{port}{parts.path or ''}"
        self._unlock = self._client.register_script(_UNLOCK)

    def get(self, key: str) -> bytes | None:
        return cast("bytes | None", self._client.get(PREFIX + "e:" + key))

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return cast("list[bytes | None]", self._client.mget([PREFIX + "e:" + k for k in keys]))

    def put_new(self, key: str, blob: bytes, keep_until: float) -> bytes | None:
        ms = max(1, int((keep_until - time.time()) * 1000))
        pipe = self._client.pipeline(transaction=False)
        pipe.set(PREFIX + "e:" + key, blob, px=ms, nx=True)
        pipe.get(PREFIX + "e:" + key)
        return pipe.execute()[1]  # type: ignore[no-any-return]

    def put(self, key: str, blob: bytes, keep_until: float) -> None:
        ms = int((keep_until - time.time()) * 1000)
        if ms > 0:
            self._client.set(PREFIX + "e:" + key, blob, px=ms)

    def invalidate(self, key: str) -> None:
        self._client.delete(PREFIX + "e:" + key)

    def lock(self, key: str, owner: str, lease: float) -> bool:
        return bool(self._client.set(PREFIX + "l:" + key, owner, nx=True, px=max(1, int(lease * 1000))))

    def unlock(self, key: str, owner: str) -> None:
        self._unlock(keys=[PREFIX + "l:" + key], args=[owner])

    def locked(self, key: str) -> bool:
        return bool(self._client.exists(PREFIX + "l:" + key))

    def holder(self, key: str) -> str | None:
        owner = self._client.get(PREFIX + "l:" + key)
        return owner.decode("utf-8", "replace") if isinstance(owner, bytes) else owner

    def extend_lock(self, key: str, owner: str, lease: float) -> bool:
        """Push a lock ``owner`` still holds ``lease`` seconds further (a heartbeat); False: not held."""
        ms = max(1, int(lease * 1000))
        return bool(self._client.eval(EXTEND_LOCK, 1, PREFIX + "l:" + key, owner, ms))

    def add_stats(self, counts: Mapping[str, int]) -> None:
        items = [(name, n) for name, n in counts.items() if n]
        if not items:
            return
        pipe = self._client.pipeline(transaction=False)
        for name, n in items:
            pipe.hincrby(PREFIX + "stats", name, n)
        pipe.execute()

    def stats(self) -> dict[str, int]:
        raw = self._client.hgetall(PREFIX + "stats")
        counts = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        generations = (PREFIX + "e:g:").encode()
        counts["entries"] = sum(
            1
            for k in self._client.scan_iter(match=PREFIX + "e:*", count=1000)
            if not k.startswith(generations)
        )
        return counts

    # --- read counters per process (credpath._usage): a hash per name, a field per process ---

    def put_usage(self, records: list[tuple[str, str, bytes]], keep_until: float) -> None:
        ms = max(1, int((keep_until - time.time()) * 1000))
        pipe = self._client.pipeline(transaction=False)
        for name, field_name, blob in records:
            pipe.hset(PREFIX + name, field_name, blob)
            pipe.pexpire(PREFIX + name, ms)
        pipe.execute()

    def get_usage(self, names: list[str]) -> dict[str, list[tuple[str, bytes]]]:
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(PREFIX + name)
        found: dict[str, list[tuple[str, bytes]]] = {}
        for name, raw in zip(names, pipe.execute(), strict=True):
            if raw:
                found[name] = [(k.decode() if isinstance(k, bytes) else k, v) for k, v in raw.items()]
        return found

    def clear(self) -> int:
        removed = -len(list(self._client.scan_iter(match=PREFIX + "e:g:*", count=1000)))  # not entries
        for pattern, counted in (("e:*", True), ("l:*", False)):
            keys = list(self._client.scan_iter(match=PREFIX + pattern, count=1000))
            for start in range(0, len(keys), 500):
                deleted = self._client.delete(*keys[start : start + 500])
                removed += deleted if counted else 0
        self._client.delete(PREFIX + "stats")
        return max(0, removed)

    def close(self) -> None:
        self._client.close()


# --- configuration -----------------------------------------------------------------------------------


_SHAPE = (
    "must be 'file', 'file:PATH', or a redis:// or rediss:// URL (or redis+sentinel://, redis+cluster://)"
)


def normalize_shared(setting: str, home: Path) -> str:
    """``[cache] shared`` checked (no connection made) and normalized: "file:/abs/path" or the URL.

    A bad value is a one-line ConfigError that never echoes it (a URL may carry a password)."""
    setting = setting.strip()
    if setting == "file":
        return f"file:{home / 'cache' / 'shared-cache.db'}"
    if setting.startswith("file:"):
        path = setting[len("file:") :].strip()
        if not path:
            raise ConfigError("'file:' needs a path (e.g. file:/dev/shm/credpath-cache.db)")
        resolved = Path(path).expanduser()
        if resolved.is_dir():
            raise ConfigError("'file:PATH' names a directory; give the cache file's path")
        return f"file:{resolved.absolute()}"
    from credpath._redis_store import is_redis_url, normalize_redis_url

    if is_redis_url(setting):
        normalize_redis_url(setting)
        import importlib.util

        if importlib.util.find_spec("redis") is None:
            from credpath.errors import MissingDependency

            raise MissingDependency(
                "needs redis-py for a Redis tier: pip install 'credpath[redis]'", module="redis"
            )
        return setting
    raise ConfigError(_SHAPE)


def open_store(setting: str) -> SharedStore:
    """The store for a normalized setting (see :func:`normalize_shared`)."""
    if setting.startswith("file:"):
        return FileStore(setting[len("file:") :])
    from credpath._redis_store import open_redis_store

    return cast("SharedStore", open_redis_store(setting))


def resolve_keys(setting: str | None, env: Mapping[str, str], home: Path, *, file_tier: bool) -> list[bytes]:
    """The tier's Fernet keys: ``CREDPATH_CACHE_KEY``, else ``[cache] shared_key``, else the metastore's
    key (``CREDPATH_FERNET_KEY``, then ``$CREDPATH_HOME/fernet.key``). ``shared_key = "airflow"`` reuses
    Airflow's ``[core] fernet_key``. The file tier, with none of these, creates
    ``$CREDPATH_HOME/cache.key`` (0600): a node-local cache needs no key shared with other nodes."""
    if env.get("CREDPATH_CACHE_KEY", "").strip():  # the environment wins over the file, as for `shared`
        setting, name = env["CREDPATH_CACHE_KEY"], "CREDPATH_CACHE_KEY"
    else:
        name = "shared_key"
    if setting is not None:
        if setting.strip().lower() == "airflow":
            return parse_keys(_airflow_fernet_key(env), f"{name} = 'airflow' ([core] fernet_key)")
        return parse_keys(setting, name)
    if env.get("CREDPATH_FERNET_KEY", "").strip():
        return parse_keys(env["CREDPATH_FERNET_KEY"], "CREDPATH_FERNET_KEY")
    key_file = home / "fernet.key"
    if key_file.is_file():
        return parse_keys(_read_private(key_file), str(key_file))
    if not file_tier:
        raise ConfigError(
            "shared: a Redis tier needs a key every node shares: set shared_key or CREDPATH_CACHE_KEY "
            "(a Fernet key), or shared_key = 'airflow' for Airflow's [core] fernet_key"
        )
    return parse_keys(_node_key(home / "cache.key"), str(home / "cache.key"))


def _read_private(path: Path) -> str:
    try:
        return read_key_file(path)
    except FileNotFoundError:
        raise ConfigError(f"cannot read the key file {path} (FileNotFoundError)") from None


def _node_key(path: Path) -> str:
    if path.is_file():
        return _read_private(path)
    try:
        return create_key_file(path, generate_key())
    except OSError as exc:
        raise ConfigError(f"cannot create the key file {path} ({type(exc).__name__})") from None


def _airflow_fernet_key(env: Mapping[str, str]) -> str:
    """Airflow's ``[core] fernet_key``: AIRFLOW__CORE__FERNET_KEY, else Airflow's own configuration."""
    value = env.get("AIRFLOW__CORE__FERNET_KEY", "").strip()
    if value:
        return value
    try:
        from airflow.configuration import conf

        value = (conf.get("core", "fernet_key", fallback="") or "").strip()
    except Exception:  # Airflow missing or its configuration unreadable: the same one-line error below
        value = ""
    if not value:
        raise ConfigError(
            "shared_key = 'airflow': Airflow's [core] fernet_key is not set "
            "(AIRFLOW__CORE__FERNET_KEY or airflow.cfg)"
        )
    return value


# --- sealed entries ----------------------------------------------------------------------------------


class _Refused(Exception):
    """A sealed entry that does not open (another key, another format, altered, moved); never carries
    its bytes."""


#: The sealed entry format: these bytes, the sealing key's id (4 bytes), a 12-byte random nonce, then the
#: body under AES-256-GCM with the format, key id and entry name as associated data. Entries of the
#: earlier format (Fernet tokens) do not open: a miss, after which the entry is read and written again.
SEAL_FORMAT = b"\x00\x02"


class _Sealer:
    """Authenticated encryption of entries: AES-256-GCM, the key derived from each configured Fernet key.

    Chosen over Fernet for what a hit costs: opening is one call (about 1 us) where Fernet's HMAC check,
    AES-CBC and base64 took about 15 us. Same guarantees: encrypted and authenticated, with the key
    sources and rotation of the Fernet keys (the first key seals; an entry sealed under any configured
    key opens; one sealed under a key no longer configured is a miss). The entry's name is bound as
    associated data, so an entry moved to another name does not open.
    """

    def __init__(self, keys: list[bytes]) -> None:
        import base64

        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._invalid = InvalidTag
        #: key id -> the keys with that id (two configured keys sharing an id, 1 in 2**32, are both tried)
        self._by_id: dict[bytes, list[Any]] = {}  # AESGCM
        for number, key in enumerate(dict.fromkeys(keys)):
            raw = base64.urlsafe_b64decode(key)
            # HKDF-Expand (RFC 5869) with the Fernet key as its pseudo-random key, one label per use.
            kid = hmac.digest(raw, b"credpath shared cache entry key id\x01", "sha256")[:4]
            aead = AESGCM(hmac.digest(raw, b"credpath shared cache entry key aes-256-gcm\x01", "sha256"))
            if number == 0:
                self._head, self._aead = SEAL_FORMAT + kid, aead
            self._by_id.setdefault(kid, []).append(aead)

    def seal(self, name: str, body: bytes) -> bytes:
        nonce = os.urandom(12)  # random: far fewer entries are written under one key than 2**32
        return self._head + nonce + self._aead.encrypt(nonce, body, self._head + name.encode("utf-8"))

    def open(self, name: str, blob: bytes) -> bytes:
        """The body sealed under ``name``; :class:`_Refused` when it does not open."""
        if blob[:2] != SEAL_FORMAT or len(blob) < 6 + 12 + 16:
            raise _Refused  # the earlier format (a Fernet token), or not an entry at all
        bound = blob[:6] + name.encode("utf-8")
        for aead in self._by_id.get(blob[2:6], ()):  # none: sealed under a key not configured here
            try:
                return bytes(aead.decrypt(blob[6:18], blob[18:], bound))
            except self._invalid:
                continue
        raise _Refused


_CONNECTION: Any = None


def _connection_type() -> Any:
    global _CONNECTION
    if _CONNECTION is None:
        from credpath.model import Connection

        _CONNECTION = Connection
    return _CONNECTION


def _connection(fields: Any) -> Any:
    """The Connection a sealed entry holds. Its fields are those of a Connection that passed its checks
    when it was sealed (only a holder of the key can seal), so they are set as they are: running the
    checks again costs more than the rest of a hit. Anything but exactly its fields is built the usual
    way (and refused if that fails)."""
    cls = _connection_type()
    if type(fields) is dict and fields.keys() == _connection_fields():
        conn = object.__new__(cls)
        conn.__dict__.update(fields)
        return conn
    return cls(**fields)


_FIELDS: frozenset[str] = frozenset()


def _connection_fields() -> frozenset[str]:
    global _FIELDS
    if not _FIELDS:
        _FIELDS = frozenset(f.name for f in dataclasses.fields(_connection_type()))
    return _FIELDS


# --- the tier the search path uses -------------------------------------------------------------------


@dataclass(frozen=True)
class SharedEntry:
    """A decrypted entry: ``value`` is what the in-process tier holds (a Resolution, or the miss marker
    as ``None`` with ``miss=True``); times are wall-clock."""

    kind: str
    value: Any = field(repr=False)  # a variable's value is the secret itself: never in a repr
    source: str | None
    miss: bool
    stored_at: float
    fresh_until: float
    keep_until: float
    #: The id's generation the entry was written under (see SharedTier); not part of its value.
    generation: str | None = field(default=None, compare=False)
    #: The store's version of the value (where the store reports one); sealed with the entry.
    version: str | None = field(default=None, compare=False)
    #: When the store said the value changes (wall clock): the entry is neither fresh nor kept after it.
    valid_until: float | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.valid_until is not None:  # the cap binds every reader, whatever times were written
            object.__setattr__(self, "fresh_until", min(self.fresh_until, self.valid_until))
            object.__setattr__(self, "keep_until", min(self.keep_until, self.valid_until))

    def fresh(self, now: float) -> bool:
        return self.fresh_until >= now


class SharedTier:
    """Encrypts, names and guards one :class:`SharedStore` for one search path (see the module doc)."""

    def __init__(
        self,
        store: SharedStore,
        keys: list[bytes],
        scope: str = "",
        *,
        lease: float = DEFAULT_LEASE,
        wait_limit: float | None = None,
    ) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        self.store = store
        self.description = store.description
        self.lease = lease
        #: Longest wait for another process's lock: this process's own store deadline (waiting longer
        #: for someone else's read than our own read may take would only add to a dead holder's cost).
        self.wait_limit = lease + 1.0 if wait_limit is None else min(lease + 1.0, wait_limit)
        #: Longest wait while the holder is a live process of this host (slow, not gone): the store
        #: deadline where known (None: ``wait_limit`` only).
        self.wait_ceiling = wait_limit
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        # The HMAC key is derived from the first Fernet key, apart from its encryption use.
        self._mac_key = hashlib.sha256(b"credpath shared cache key names\0" + keys[0]).digest()
        self._scope = scope
        self._sealer = _Sealer(keys)  # entries (see _Sealer)
        self._scope_json = json.dumps(scope, separators=(",", ":"))
        self._owner = f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"
        self._reader_pid = 0  # the process that read a store through this tier (and so has its client)
        self._takers = (
            "t:" + hmac.new(self._mac_key, b"lease takers\0" + scope.encode(), hashlib.sha256).hexdigest()
        )
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._flushed_pid = 0
        self._flushed_at = 0.0
        self._down_until = 0.0
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        #: name -> the generation token the last read of it found (a store read that follows is
        #: written under it, so a write that lands meanwhile makes the entry refused, not served).
        self._seen: dict[str, str] = {}
        #: (kind, id, team) -> its entry name (HMAC under the key and scope): see :meth:`name`.
        self._names: dict[tuple[str, str, str | None], str] = {}
        #: name -> (sealed bytes, the entry they opened to): see :meth:`_open`.
        self._opened: dict[str, tuple[bytes, SharedEntry]] = {}
        #: generation record name -> (its bytes, the token they verified to): see :meth:`_gen_token`.
        self._tokens: dict[str, tuple[bytes, str]] = {}
        #: The deployment-wide epoch record (see :meth:`epoch`): named with the key, MACed like a generation.
        self._epoch_name = "g:epoch:" + hmac.new(self._mac_key, b"epoch", hashlib.sha256).hexdigest()
        from credpath import _usage

        _usage.register(self)  # the audit trail publishes its per-process read counters here

    # --- naming and sealing ---

    def bound_wait(self, backends: Any) -> None:
        """Wait for another process's lock no longer than the longest store deadline among ``backends``
        (the search path calls this once its backends are built)."""
        limit = store_deadline(backends)
        if limit is not None:
            self.wait_limit = min(self.lease + 1.0, limit)
            self.wait_ceiling = limit

    def name(self, ckey: tuple[str, str, str | None]) -> str:
        name = self._names.get(ckey)
        if name is None:  # derived once per id: a hit on an id this process looked up before skips it
            kind, key, team = ckey
            if type(kind) is str and type(key) is str and (team is None or type(team) is str):
                # What json.dumps([scope, kind, key, team], separators=(",", ":")) writes, at a fifth of
                # its cost: the names must stay what they were (other processes, other versions).
                enc = _json_string
                text = f"[{self._scope_json},{enc(kind)},{enc(key)},{'null' if team is None else enc(team)}]"
            else:
                text = json.dumps([self._scope, kind, key, team], separators=(",", ":"))
            name = hmac.digest(self._mac_key, text.encode("utf-8"), "sha256").hex()
            if len(self._names) >= NAMES_KEEP:
                self._names.clear()
            self._names[ckey] = name
        return name

    def _seal(self, name: str, entry: SharedEntry, generation: str | None = None) -> bytes:
        from credpath.model import Connection

        value = entry.value
        if isinstance(value, Connection):
            value = dataclasses.asdict(value)  # its fields as stored (extra a string), for Connection(**)
        payload = {
            # The key this value belongs to is bound by the seal (see _Sealer): a value moved to another
            # key does not open.
            "k": entry.kind,
            "m": entry.miss,
            "s": entry.source,
            "v": value,
            "t": entry.stored_at,
            "f": entry.fresh_until,
            "x": entry.keep_until,
            "g": generation,  # the id's generation when its value was read (see _generation)
            "r": entry.version,  # the store's version of the value (a version id, never a value)
            "u": entry.valid_until,  # when the store said the value changes: no reader serves it after
        }
        return self._sealer.seal(name, json.dumps(payload, separators=(",", ":")).encode("utf-8"))

    def _open(self, name: str, blob: bytes) -> SharedEntry | None:
        kept = self._opened.get(name)
        if kept is not None and kept[0] == blob:
            # The very bytes this tier opened under this name before: the same entry. Equal bytes are
            # as good as a new check (the seal is deterministic to open), and only this name's are kept.
            return kept[1]
        try:
            payload = json.loads(self._sealer.open(name, blob).decode("utf-8"))  # str: no encoding sniffing
            value = payload["v"]
            if payload["k"] == "connection" and not payload["m"]:
                value = _connection(value)
            entry = SharedEntry(
                kind=payload["k"],
                value=value,
                source=payload["s"],
                miss=bool(payload["m"]),
                stored_at=float(payload["t"]),
                fresh_until=float(payload["f"]),
                keep_until=float(payload["x"]),
                generation=payload.get("g"),
                version=payload.get("r"),
                valid_until=None if payload.get("u") is None else float(payload["u"]),
            )
        except (_Refused, ValueError, KeyError, TypeError, AttributeError):
            self.count("undecryptable")
            self._warn(
                "undecryptable",
                "shared cache %s: an entry did not decrypt with the configured key (written with another "
                "key or by an older credpath, or altered); treating it as a miss",
                self.description,
            )
            return None
        if value is None or isinstance(value, (str, int, float, _connection_type())):
            # Only values nobody can change in place are kept (a state's dict or list is not).
            if len(self._opened) >= OPENED_KEEP:
                self._opened.clear()
            self._opened[name] = (blob, entry)
        return entry

    # --- guarded operations: a failure is logged once and is a miss / a no-op ---

    @property
    def healthy(self) -> bool:
        """False after a failure of the tier, until it answers again."""
        return self._down_until == 0.0

    def _available(self) -> bool:
        return self._down_until == 0.0 or time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException, doing: str) -> None:
        if isinstance(exc, ConfigError):
            raise exc  # a cache file another user owns, ...: the configuration's to fix, never a miss
        self.count("shared_errors")
        self._down_until = time.monotonic() + RETRY_AFTER_FAILURE
        self._warn(
            "down",
            "shared cache %s failed while %s (%s); going to the stores directly",
            self.description,
            doing,
            type(exc).__name__,
        )

    def _ok(self) -> None:
        if self._down_until:
            self._down_until = 0.0
            if "down" in self._warned:
                self._warned.discard("down")
                log.info("shared cache %s is answering again", self.description)

    def _warn(self, what: str, message: str, *args: Any) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(message, *args)

    # Freshness no writer can forge without the key. Each id has a generation record beside its entry,
    # a random token MACed with the key; every entry carries (encrypted) the token current when its value
    # was read, and is served only while that token is still the record's. A credpath write sets a new
    # token before it drops the entry, so an entry recorded before the write (put back by anyone who can
    # write to Redis or the file) is refused, as is one whose record was deleted. A value read from the
    # store before a concurrent write is refused the same way. Someone who also puts back the old
    # record can roll both back; that needs trusted storage, which the tier is not.

    def _gen_blob(self, gname: str, token: str) -> bytes:
        mac = hmac.digest(self._mac_key, f"generation\0{gname}\0{token}".encode(), "sha256").hex()
        return f"{token}.{mac}".encode("ascii")

    def _gen_token(self, gname: str, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        kept = self._tokens.get(gname)
        if kept is not None and kept[0] == blob:  # the bytes that verified under this name before
            return kept[1]
        token = blob.decode("ascii", "replace").partition(".")[0]
        if not hmac.compare_digest(self._gen_blob(gname, token), blob):
            return None
        if len(self._tokens) >= OPENED_KEEP:
            self._tokens.clear()
        self._tokens[gname] = (blob, token)
        return token

    def _generation(self, name: str, seen: str | None) -> str | None:
        """The generation to write ``name``'s entry under: ``seen`` (the token its miss found; "" none),
        or for a write with no miss before it the current one; None: do not write (a write of the id
        may have landed since the miss, which found no record)."""
        if seen:
            return seen
        gname = "g:" + name
        if seen is None:
            token = self._gen_token(gname, self.store.get(gname))
            if token is not None:
                return token
        token = secrets.token_hex(16)
        keep = time.time() + GENERATION_KEEP
        there = self.store.put_new(gname, self._gen_blob(gname, token), keep)
        if there == self._gen_blob(gname, token):
            return token
        if seen is None and self._gen_token(gname, there) is None:
            # A record this key cannot verify: replace it (whoever wrote it can delete entries anyway).
            self.store.put(gname, self._gen_blob(gname, token), keep)
            return token
        return None if seen == "" else self._gen_token(gname, there)

    def get(self, ckey: tuple[str, str, str | None]) -> SharedEntry | None:
        if not self._available():
            return None
        name = self.name(ckey)
        try:
            blob, gen_blob = self.store.get_many([name, "g:" + name])
        except Exception as exc:
            self._failed(exc, "reading an entry")
            return None
        self._ok()
        return self._found(name, blob, gen_blob)

    def get_or_acquire(
        self, ckey: tuple[str, str, str | None], deadline: Deadline | None = None
    ) -> tuple[SharedEntry | None, bool | None]:
        """:meth:`get` and, when the tier holds no entry for ``ckey``, :meth:`acquire`, in one round trip
        where the store can (``get_or_lock``: a script on one Redis server): ``(entry, held)``.

        ``held`` is True/False as from :meth:`acquire`, or None when the lock was not asked for (an entry
        was there, fresh or not; the store cannot do both at once; the tier failed): the caller then
        calls :meth:`acquire` if it needs the lock.

        A process that has not read a store through this tier yet leaves a free lock, once, for up to
        :data:`LEASE_DEFERRAL` (never past ``deadline``), when another process took one lately: that
        one has its store client already, and most likely takes it meanwhile (this one then waits for
        its entry). Otherwise, or if nobody took it, this one takes it. The store reads stay one per id
        either way; what changes is how many processes pay for a store client."""
        both = getattr(self.store, "get_or_lock", None)
        if both is None:
            return self.get(ckey), None
        if not self._available():
            return None, None
        name = self.name(ckey)
        takers = (self._takers, LEASE_TAKERS_KEEP)
        try:
            defer = self._reader_pid != os.getpid()
            blob, gen_blob, held = both(name, self._owner, self.lease, takers, defer)
            if defer and blob is None and held is None:  # left for a process with a store client
                pause = LEASE_DEFERRAL if deadline is None else min(LEASE_DEFERRAL, deadline.remaining())
                if pause > 0:
                    time.sleep(pause)
                blob, gen_blob, held = both(name, self._owner, self.lease, takers, False)
        except Exception as exc:
            self._failed(exc, "reading an entry")
            return None, None
        self._ok()
        return self._found(name, blob, gen_blob), held

    def _found(self, name: str, blob: bytes | None, gen_blob: bytes | None) -> SharedEntry | None:
        """The entry a read of ``name`` and its generation record found, once it opens and is current."""
        token = self._gen_token("g:" + name, gen_blob)
        if len(self._seen) > 4096:
            self._seen.clear()
        self._seen[name] = token or ""  # what a store read after this miss is written under
        if blob is None:
            return None
        entry = self._open(name, blob)
        if entry is None or entry.keep_until < time.time():
            return None
        if token is None or entry.generation != token:
            log.debug("shared cache: an entry of an older generation was refused")
            return None
        return entry

    def put(self, ckey: tuple[str, str, str | None], entry: SharedEntry) -> None:
        if not self._available() or entry.keep_until <= time.time():
            return
        name = self.name(ckey)
        seen = self._seen.pop(name, None)
        try:
            token = self._generation(name, seen)
            if token is None:
                return
            self.store.put(name, self._seal(name, entry, token), entry.keep_until)
        except Exception as exc:
            self._failed(exc, "writing an entry")
            return
        self._ok()

    def invalidate(self, ckey: tuple[str, str, str | None]) -> None:
        if not self._available():
            return
        name = self.name(ckey)
        self._seen.pop(name, None)
        self._opened.pop(name, None)  # refused by its generation from now on anyway: not kept either
        gname = "g:" + name
        try:
            # A new generation first: an entry written or put back from now on under the old one is refused.
            self.store.put(gname, self._gen_blob(gname, secrets.token_hex(16)), time.time() + GENERATION_KEEP)
            self.store.invalidate(name)
            self._bump_epoch()
        except Exception as exc:
            self._failed(exc, "invalidating an entry")
            return
        self._ok()

    # Deployment-wide invalidation: every process keeps ids in its own tier, which no generation record
    # reaches. One epoch record per key moves with every invalidation; each process reads it at most once
    # a second (:meth:`epoch`) and, when it moved, drops its process tier (the shared tier still holds
    # every id not invalidated, under its generation). The record is MACed like a generation: one written
    # without the key is ignored, so such a writer cannot make processes drop anything; putting back an
    # old record only makes processes re-read the shared tier, whose generations still refuse old values.

    def _bump_epoch(self) -> None:
        ename = self._epoch_name
        self.store.put(ename, self._gen_blob(ename, secrets.token_hex(16)), time.time() + GENERATION_KEEP)

    def epoch(self) -> str | None:
        """The epoch token ("" no record yet), or None: the tier is down or the record does not verify
        (then the caller keeps what it has)."""
        if not self._available():
            return None
        try:
            blob = self.store.get(self._epoch_name)
        except Exception as exc:
            self._failed(exc, "reading the invalidation epoch")
            return None
        self._ok()
        if blob is None:
            return ""
        return self._gen_token(self._epoch_name, blob)

    def invalidate_all(self) -> int:
        """Drop every entry and move the epoch (``cache clear``, ``cache invalidate --all``); errors raise.
        A read in flight writes under the generation its miss found, which is gone: refused."""
        removed = self.store.clear()
        self._opened.clear()
        self._bump_epoch()
        return removed

    def reading_store(self) -> None:
        """Count a store read after a miss of the tier, and note that this process now has a store
        client: it takes free locks at once from now on (see :meth:`get_or_acquire`)."""
        self._reader_pid = os.getpid()
        self.count("store_reads")

    def acquire(self, ckey: tuple[str, str, str | None]) -> bool | None:
        """True: this process holds the key's lock; False: another does; None: the tier failed."""
        if not self._available():
            return None
        try:
            held = self.store.lock(self.name(ckey), self._owner, self.lease)
        except Exception as exc:
            self._failed(exc, "taking a lock")
            return None
        self._ok()
        return held

    def release(self, ckey: tuple[str, str, str | None]) -> None:
        try:
            self.store.unlock(self.name(ckey), self._owner)
        except Exception as exc:
            self._failed(exc, "releasing a lock")

    def wait(
        self, ckey: tuple[str, str, str | None], deadline: Deadline | None = None
    ) -> tuple[SharedEntry | None, bool]:
        """Wait (up to the lease, and never longer than ``wait_limit`` nor past ``deadline``) for the lock
        holder's entry: ``(fresh entry or None, acquired)``.

        Returns as soon as the entry is there; takes the lock over when the holder's lease ran out (it
        died, or is slower than the lease) or when it released without writing (its read failed).
        A holder that is a live process of this host is slow, not gone (starved of CPU among many task
        processes starting at once, say): its lease is kept while it lives, and the wait goes on up to
        ``wait_ceiling`` (the store deadline), instead of a second store read beside it.
        """
        self.count("lock_waits")
        name = self.name(ckey)
        started = time.monotonic()
        give_up = started + self.wait_limit
        last = float("inf") if deadline is None else started + max(0.0, deadline.remaining())
        give_up = min(give_up, last)
        extend = getattr(self.store, "extend_lock", None)
        pause = 0.005
        look_at_holder = 0.0
        announced = getattr(self.store, "wait_for", None)  # a store that announces releases
        while time.monotonic() < give_up:
            if announced is not None:
                announced(name, min(HOLDER_CHECK_INTERVAL, max(0.0, give_up - time.monotonic())))
            else:
                time.sleep(pause)
                pause = min(pause * 1.5, 0.05)
            entry = self.get(ckey)
            if entry is not None and entry.fresh(time.time()):
                return entry, False
            if not self._available():
                return None, False
            try:
                if time.monotonic() >= look_at_holder:
                    look_at_holder = time.monotonic() + HOLDER_CHECK_INTERVAL
                    holder = self.store.holder(name)
                    here = None if holder is None else _lives_here(holder)
                    if holder is not None and here is False:
                        self.store.unlock(name, holder)  # only if it still holds it: no race with a taker
                    elif here and extend is not None and self.wait_ceiling is not None:
                        if extend(name, holder, self.lease):  # only while it still holds it
                            give_up = max(give_up, min(started + self.wait_ceiling, last))
                if self.store.lock(name, self._owner, self.lease):
                    self.count("lock_takeovers")
                    entry = self.get(ckey)  # written between our last look and the takeover
                    if entry is not None and entry.fresh(time.time()):
                        self.release(ckey)
                        return entry, False
                    return None, True
            except Exception as exc:
                self._failed(exc, "taking a lock")
                return None, False
        return None, False

    # --- shared state: small non-secret facts of backends ---

    def state(self, namespace: str) -> SharedState:
        """A get/put view for one backend (``namespace``: its configured name) over this tier."""
        return SharedState(self, namespace)

    # --- counters ---

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n
        if self._flushed_pid != os.getpid():
            # Per process (a forked child starts with the parent's counts; Airflow's task processes run
            # the exit handlers registered after the fork).
            self._flushed_pid = os.getpid()
            self.counts = dict.fromkeys(COUNTERS, 0)
            self.counts[name] = n
            atexit.register(self.flush)

    def flush_soon(self) -> None:
        """Flush if the last flush is more than a second old (the first one in a process: now)."""
        if time.monotonic() - self._flushed_at > 1.0:
            self.flush()

    def flush(self) -> None:
        """Add this process's counters to the tier's (for ``credpath cache stats``)."""
        self._flushed_at = time.monotonic()
        with self._lock:
            counts, self.counts = self.counts, dict.fromkeys(COUNTERS, 0)
        if not any(counts.values()) or not self._available():
            return
        try:
            self.store.add_stats(counts)
        except Exception as exc:
            self._failed(exc, "adding to its counters")

    def stats(self) -> dict[str, int]:
        """The tier's counters (every process's flushed ones) and its live entry count; errors raise."""
        return self.store.stats()

    def clear(self) -> int:
        return self.invalidate_all()

    def close(self) -> None:
        self._opened.clear()  # opened entries hold values: not kept past the tier
        self.store.close()


class SharedState:
    """Facts a backend would otherwise rediscover in every process (a Vault mount's KV version), kept in
    the shared tier like its entries: under HMAC'd names (scope, namespace, key), encrypted, with a TTL.
    A failure of the tier is a miss (``get`` -> None) or a no-op (``put``), never an error."""

    def __init__(self, tier: SharedTier, namespace: str) -> None:
        self._tier = tier
        self._namespace = namespace

    def _ckey(self, key: str) -> tuple[str, str, str | None]:
        return ("state", f"{self._namespace}\0{key}", None)  # "state" is no lookup kind: no clash

    def get(self, key: str) -> Any:
        """The value put under ``key`` (JSON: str, number, bool, list, dict), or None."""
        entry = self._tier.get(self._ckey(key))
        return None if entry is None or entry.kind != "state" else entry.value

    def put(self, key: str, value: Any, ttl: float) -> None:
        now = time.time()
        entry = SharedEntry("state", value, None, False, now, now + ttl, now + ttl)
        self._tier.put(self._ckey(key), entry)

    @property
    def tier(self) -> SharedTier:
        """The tier this view writes to (shared leases keep their records there)."""
        return self._tier


def store_deadline(backends: Any) -> float | None:
    """The longest whole-call deadline (``timeout``) among ``backends``, or None if none declares one."""
    deadlines = []
    for backend in backends:
        timeout = getattr(backend, "timeout", None)  # the stores with network calls take one
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
            deadlines.append(float(timeout))
    return max(deadlines) if deadlines else None


def _host_identity() -> str:
    """This host as lock owners name it: the host name, and the PID namespace where there is one (two
    containers may share a host name and a cache file, but never a PID namespace's numbers)."""
    try:
        namespace = f"/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        namespace = ""
    return socket.gethostname().replace(":", "_") + namespace


_HOST = _host_identity()


def _died_here(owner: str) -> bool:
    """Whether a lock's owner is a process of this host (and PID namespace) that no longer runs: its lock
    can be freed at once instead of after its lease."""
    return _lives_here(owner) is False


def _lives_here(owner: str) -> bool | None:
    """Whether a lock's owner, another process of this host (and PID namespace), still runs; None: not
    one of this host's other processes, or it cannot be told."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it runs
    except OSError:
        return None
    return True


def scope_of(specs: Any) -> str:
    """The search path's identity in key names: backend names, types, options and patterns (credentials
    included, under the HMAC), so differently configured paths never serve each other's answers."""
    items = []
    for spec in specs:
        if isinstance(spec, tuple):  # (name, backend object)
            items.append([spec[0], type(spec[1]).__qualname__, {}, {}])
        elif hasattr(spec, "kwargs") and hasattr(spec, "type"):  # a BackendSpec
            items.append([spec.name, spec.type, spec.kwargs, spec.lookup_patterns])
        else:  # a backend object
            items.append(
                [getattr(spec, "name", None) or type(spec).__name__, type(spec).__qualname__, {}, {}]
            )
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def stats_report(shared: Any) -> dict[str, Any]:
    """The tier's counters, summed over every process that published them: what ``credpath cache stats``
    prints and the web's backends view shows (one reading of the same counters)."""
    counts = shared.stats()
    process_hits = counts.get("process_hits", 0)
    shared_hits = counts.get("shared_hits", 0)
    return {
        "tier": shared.description,
        "process": {"hits": process_hits},
        "shared": {
            "entries": counts.get("entries", 0),
            "hits": shared_hits,
            "misses": counts.get("shared_misses", 0),
            "lock_waits": counts.get("lock_waits", 0),
            "lock_takeovers": counts.get("lock_takeovers", 0),
            "undecryptable": counts.get("undecryptable", 0),
            "errors": counts.get("shared_errors", 0),
        },
        "store": {
            "reads": counts.get("store_reads", 0),
            "calls_avoided": process_hits + shared_hits,
            "stale_served": counts.get("stale_served", 0),
        },
    }


# --- sealed records (shared leases): a value under an HMAC'd name, encrypted like every entry ---------


def seal_record(tier: SharedTier, name: str, value: Any) -> bytes:
    """``value`` (JSON) encrypted with the tier's key, bound to ``name`` (a record moved is refused)."""
    body = {"n": name, "k": "record", "v": value}
    return tier._fernet.encrypt(json.dumps(body, separators=(",", ":")).encode("utf-8"))


def open_record(tier: SharedTier, name: str, blob: bytes) -> Any:
    """The value sealed by :func:`seal_record` under ``name``, or None (another key, altered, moved)."""
    from cryptography.fernet import InvalidToken

    try:
        body = json.loads(tier._fernet.decrypt(blob))
        if body["n"] != name or body["k"] != "record":
            raise InvalidToken
    except (InvalidToken, ValueError, KeyError, TypeError):
        tier.count("undecryptable")
        return None
    return body["v"]
