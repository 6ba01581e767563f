"""The shared cache tier on Redis without redis-py in the task process: the few commands the tier needs,
spoken over one plain socket per process.

Why not redis-py here: Airflow starts every task in a new process, and in each one ``import redis`` cost
150-250 ms and a lookup's client-side work about 4x the file tier's CPU (measured: 637 ms against 149 ms per
process at 100 ids). The tier needs GET/MGET, SET with PX/NX, DEL, EXISTS, EVALSHA, HINCRBY, HGETALL and
SCAN; a RESP2 encoder and decoder for those is a hundred lines, imports nothing beyond the standard library
and answers a hit in one round trip (bench/redis_tier.py).

URL forms (``[cache] shared``):

- ``redis://[[user]:password@]host[:port][/db]`` and ``unix:///path/redis.sock[?db=N]``: this client;
- ``rediss://...`` TLS, this client with the standard library's ssl: ``?ssl_ca_certs=/ca.pem`` (the CA to
  trust; the system's by default), ``ssl_cert_reqs=required|none``, ``ssl_check_hostname=false``,
  ``ssl_certfile=`` / ``ssl_keyfile=`` for a client certificate;
- ``redis+sentinel://[[user]:password@]host1:port1,host2:port2/service[/db]`` (``rediss+sentinel://`` for
  TLS): the master Sentinel names for ``service``, through redis-py (imported only for this form); a
  failover is followed without a restart: the tier is skipped for a second, then asks the sentinels again;
  ``?sentinel_password=`` when the sentinels have their own;
- ``redis+cluster://[[user]:password@]host1:port1[,host2:port2]`` (``rediss+cluster://``): Redis Cluster
  through redis-py's RedisCluster.

``user:password`` is an ACL user (Redis 6+); ``:password`` alone is the default user's. Every form takes
``?socket_timeout=`` and ``?socket_connect_timeout=`` (seconds, default 1: a shared tier slower than that
is worse than none; the tier then goes to the stores directly).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from credpath.errors import ConfigError

__all__ = ["RespStore", "is_redis_url", "normalize_redis_url", "open_redis_store"]

PREFIX = "credpath:v1:"
DEFAULT_TIMEOUT = 1.0
#: Script calls kept encoded (a bound: cleared when full).
ENCODED_KEEP = 4096
PLAIN_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SCHEMES = PLAIN_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES

# Releasing a lock announces it on the key's channel: waiters block on that instead of polling.
_UNLOCK = (
    b"if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]); "
    b"redis.call('publish', KEYS[1], '1'); return 1 end return 0"
)
_UNLOCK_SHA = hashlib.sha1(_UNLOCK).hexdigest().encode("ascii")  # Redis names scripts so

# A cold lookup's look and lease in one round trip: the entry and its generation record if the entry is
# there (the lease is not asked for: the caller may not need it), else the generation record and whether
# this owner took the lease (1) or another holds it (0). Atomic, so no entry can land between the look
# and the lease. The script moves sealed bytes only; the caller opens and checks them.
# KEYS[4], when given, marks that some process took a lease lately (kept ARGV[4] ms after each take): a
# caller with no store client yet (ARGV[3] = 1) leaves a free lease to such a process while the mark is
# there (2: not taken), so the store reads, and the clients they need, stay with fewer processes.
_GET_OR_LOCK = (
    b"local v = redis.call('mget', KEYS[1], KEYS[2]) "
    b"if v[1] then return {v[1], v[2], -1} end "
    b"if KEYS[4] and ARGV[3] == '1' and redis.call('exists', KEYS[4]) == 1 "
    b"and redis.call('exists', KEYS[3]) == 0 then return {false, v[2], 2} end "
    b"if redis.call('set', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then "
    b"if KEYS[4] then redis.call('set', KEYS[4], '1', 'PX', ARGV[4]) end "
    b"return {false, v[2], 1} end "
    b"return {false, v[2], 0}"
)
_GET_OR_LOCK_SHA = hashlib.sha1(_GET_OR_LOCK).hexdigest().encode("ascii")


def _get_or_lock_call(
    key: str, owner: str, lease: float, takers: tuple[str, float] | None = None, defer: bool = False
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of :data:`_GET_OR_LOCK` (see ``RespStore.get_or_lock``)."""
    names = [PREFIX + "e:" + key, PREFIX + "e:g:" + key, PREFIX + "l:" + key]
    args: list[Any] = [owner, max(1, int(lease * 1000))]
    if takers is not None:
        names.append(PREFIX + "l:" + takers[0])
        args += [1 if defer else 0, max(1, int(takers[1] * 1000))]
    return names, args


def _held(code: int) -> bool | None:
    """:data:`_GET_OR_LOCK`'s answer about the lease: taken (1), held by another (0), not asked for
    (-1: an entry was there; 2: left to a process with a store client)."""
    return None if code < 0 or code == 2 else bool(code)


class RedisError(Exception):
    """An error reply (its first word only: a reply may quote a key, never a value we sent)."""


def is_redis_url(setting: str) -> bool:
    return setting.partition("://")[0] in SCHEMES and "://" in setting


def _hosts(netloc: str) -> list[tuple[str, int]]:
    """``host[:port][,host[:port]...]`` (a user:password@ first is skipped); port 0: the default."""
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        item = item.strip()
        if item.startswith("["):  # [ipv6]:port
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, colon, port = item.rpartition(":")
            if not colon:
                host, port = item, ""
        if not host:
            raise ConfigError("is not a valid Redis URL: no host")
        if port and not port.isdigit():
            raise ConfigError("is not a valid Redis URL (scheme://[user:password@]host[:port][/db])")
        hosts.append((host, int(port) if port else 0))
    return hosts


def normalize_redis_url(setting: str) -> str:
    """Check a Redis URL without connecting; a bad one is a ConfigError that never echoes it."""
    scheme = setting.partition("://")[0]
    if scheme in SENTINEL_SCHEMES or scheme in CLUSTER_SCHEMES:
        netloc = setting.partition("://")[2].partition("/")[0].partition("?")[0]
        _hosts(netloc)
        if scheme in SENTINEL_SCHEMES:
            path = setting.partition("://")[2].partition("?")[0].partition("/")[2].strip("/").split("/")
            if not path[0]:
                raise ConfigError("is not a valid Redis Sentinel URL: no service name (.../service[/db])")
            if len(path) > 1 and not path[1].isdigit():
                raise ConfigError("is not a valid Redis Sentinel URL: the db must be a number")
        _options(setting)
        return setting
    try:
        parts = urlsplit(setting)
        parts.port  # noqa: B018  (raises ValueError on a port that is not a number)
    except ValueError:
        raise ConfigError("is not a valid Redis URL (scheme://[user:password@]host[:port][/db])") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("is not a valid Redis URL: no host")
    db = parts.path.strip("/") if parts.scheme != "unix" else ""  # unix://: the path is the socket
    if db and not db.isdigit():
        raise ConfigError("is not a valid Redis URL: the path must be a database number")
    _options(setting)
    return setting


def _options(url: str) -> dict[str, str]:
    query = parse_qs(url.partition("?")[2])
    options = {name: values[-1] for name, values in query.items()}
    for name in ("socket_timeout", "socket_connect_timeout"):
        if name in options:
            try:
                if float(options[name]) <= 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"invalid Redis URL option {name} (a number of seconds > 0)") from None
    return options


def _credentials(url: str) -> tuple[str | None, str | None]:
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0]
    if "@" not in netloc:
        return None, None
    userinfo = netloc.rpartition("@")[0]
    user, has_password, password = userinfo.partition(":")
    if not has_password:  # redis://password@host, as redis-py reads it: a password alone
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password) or None


def _safe_description(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("?")[0].partition("/")
    hosts = netloc.rpartition("@")[2] or "localhost"
    return f"{scheme}://{hosts}{slash}{path}".rstrip("/") if path else f"{scheme}://{hosts}"


def _ssl_context(options: Mapping[str, str]) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs") or None)
    if options.get("ssl_cert_reqs", "required").lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif options.get("ssl_check_hostname", "true").lower() in ("false", "0", "no"):
        context.check_hostname = False
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile") or None)
    return context


def open_redis_store(url: str) -> Any:
    """The store for a normalized Redis URL: this module's client, or redis-py for Sentinel / Cluster."""
    scheme = url.partition("://")[0]
    if scheme in SENTINEL_SCHEMES or scheme in CLUSTER_SCHEMES:
        return _redis_py_store(url)
    return RespStore(url)


# --- RESP2 over a socket -----------------------------------------------------------------------------


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Short(Exception):
    """The buffer ends before the reply does: read more and parse again."""


def _parse(data: bytes, pos: int) -> tuple[Any, int]:
    """The reply starting at ``data[pos]`` and where it ends; :class:`_Short` if it is not all there.

    Slices of one immutable buffer, no per-line copies: a hit's reply (an array of two blobs and a
    number) is parsed in a few microseconds."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        raise _Short
    kind = data[pos]
    if kind == 36:  # $ a bulk string (binary-safe: skipped by its length, never searched)
        size = int(data[pos + 1 : end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(data) < stop + 2:
            raise _Short
        return data[end + 2 : stop], stop + 2
    if kind == 42:  # * an array
        size = int(data[pos + 1 : end])
        if size < 0:
            return None, end + 2
        pos = end + 2
        items = []
        for _ in range(size):
            item, pos = _parse(data, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # : an integer
        return int(data[pos + 1 : end]), end + 2
    if kind == 43:  # + a simple string
        return data[pos + 1 : end], end + 2
    if kind == 45:  # - an error
        return RedisError(data[pos + 1 : end].decode("utf-8", "replace").partition(" ")[0]), end + 2
    raise ConnectionError("Redis sent an unexpected reply")


class _Connection:
    """One socket and its own read buffer (not a socket file: a file that timed out cannot be read
    again, and a waiter's socket must outlive a wait that ends without a message)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def ready(self, timeout: float) -> bool:
        """Whether a reply can be read without waiting longer than ``timeout``."""
        if self.buffer or getattr(self.sock, "pending", lambda: 0)():
            return True
        import select

        return bool(select.select([self.sock], [], [], timeout)[0])

    def _fill(self) -> None:
        # Reads grow with what is buffered: a large reply (SCAN, HGETALL) is parsed again only a few
        # times, not once per 64 KiB.
        data = self.sock.recv(max(65536, len(self.buffer)))
        if not data:
            raise ConnectionError("Redis closed the connection")
        self.buffer += data

    def reply(self) -> Any:
        while True:
            if self.buffer:
                try:
                    value, end = _parse(self.buffer, 0)
                except _Short:
                    pass
                else:
                    self.buffer = self.buffer[end:]
                    return value
            self._fill()


class RespStore:
    """The tier's store protocol (see ``credpath._shared_cache.SharedStore``) on one lazily opened
    connection per process (a forked child opens its own), under a lock for threads."""

    def __init__(self, url: str) -> None:
        options = _options(url)
        self.description = _safe_description(url)
        parts = urlsplit(url)
        self._scheme = parts.scheme
        if parts.scheme == "unix":
            self._address: Any = parts.path
            db = options.get("db", "0")
        else:
            try:
                self._address = (parts.hostname or "localhost", parts.port or 6379)
            except ValueError:
                raise ConfigError("invalid Redis URL or option (ValueError)") from None
            db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ConfigError("invalid Redis URL or option (ValueError)")
        self._db = int(db)
        self._user, self._password = _credentials(url)
        self.timeout = float(options.get("socket_timeout", DEFAULT_TIMEOUT))
        self.connect_timeout = float(options.get("socket_connect_timeout", DEFAULT_TIMEOUT))
        self._ssl = _ssl_context(options) if parts.scheme == "rediss" else None
        self._conn: _Connection | None = None
        self._pid = 0
        self._listener: _Connection | None = None  # the subscriber connection (lazily opened)
        self._listener_pid = 0
        self._lock = threading.Lock()
        #: Round trips and commands sent by this process (the fleet bench reads them).
        self.round_trips = 0
        self.commands = 0
        #: Script calls as sent (their arguments are key names, an owner, a lease: no values).
        self._encoded: dict[tuple[Any, ...], bytes] = {}

    # --- the connection ---

    def _open(self) -> _Connection:
        if self._scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(self._address)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self._address, timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                try:
                    sock = self._ssl.wrap_socket(sock, server_hostname=self._address[0])
                except BaseException:
                    sock.close()
                    raise
        sock.settimeout(self.timeout)
        conn = _Connection(sock)
        hello: list[tuple[Any, ...]] = []
        if self._password is not None:
            auth = ("AUTH", self._user, self._password) if self._user else ("AUTH", self._password)
            hello.append(auth)
        if self._db:
            hello.append(("SELECT", self._db))
        try:
            if hello:
                sock.sendall(b"".join(_encode(c) for c in hello))
                for _ in hello:
                    reply = conn.reply()
                    if isinstance(reply, RedisError):
                        raise reply  # WRONGPASS / NOAUTH / ERR: the word only, never the password
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and read their replies: one round trip."""
        return self._send(b"".join(_encode(c) for c in commands), len(commands))

    def _send(self, payload: bytes, count: int) -> list[Any]:
        """Send ``count`` encoded commands in one write and read their replies."""
        with self._lock:
            conn = self._conn
            if conn is None or self._pid != os.getpid():
                self._conn = None  # a parent's socket is the parent's: never read its replies
                conn = self._conn = self._open()
                self._pid = os.getpid()
            try:
                conn.sock.sendall(payload)
                replies = [conn.reply() for _ in range(count)]
            except BaseException:
                self._conn = None
                conn.close()
                raise
            self.round_trips += 1
            self.commands += count
        return replies

    def _call(self, *args: Any) -> Any:
        reply = self._run([args])[0]
        if isinstance(reply, RedisError):
            raise reply
        return reply

    # --- the store protocol ---

    def get(self, key: str) -> bytes | None:
        return self._call("GET", PREFIX + "e:" + key)  # type: ignore[no-any-return]

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        return self._call("MGET", *(PREFIX + "e:" + k for k in keys))  # type: ignore[no-any-return]

    def put_new(self, key: str, blob: bytes, keep_until: float) -> bytes | None:
        ms = max(1, int((keep_until - time.time()) * 1000))
        name = PREFIX + "e:" + key
        replies = self._run([("SET", name, blob, "PX", ms, "NX"), ("GET", name)])
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies[1]  # type: ignore[no-any-return]

    def put(self, key: str, blob: bytes, keep_until: float) -> None:
        ms = int((keep_until - time.time()) * 1000)
        if ms > 0:
            self._call("SET", PREFIX + "e:" + key, blob, "PX", ms)

    def invalidate(self, key: str) -> None:
        self._call("DEL", PREFIX + "e:" + key)

    def lock(self, key: str, owner: str, lease: float) -> bool:
        reply = self._call("SET", PREFIX + "l:" + key, owner, "NX", "PX", max(1, int(lease * 1000)))
        return reply is not None

    def _script(self, script: bytes, sha: bytes, keys: tuple[str, ...], *args: Any) -> Any:
        """EVALSHA, and on NOSCRIPT (a restarted or flushed server) EVAL, which loads it again."""
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        payload = self._encoded.get(command)
        if payload is None:  # a hit repeats the same call (name, owner, lease): encoded once
            if len(self._encoded) >= ENCODED_KEEP:
                self._encoded.clear()
            payload = self._encoded[command] = _encode(command)
        reply = self._send(payload, 1)[0]
        if isinstance(reply, RedisError):
            if str(reply) != "NOSCRIPT":
                raise reply
            return self._call("EVAL", script, len(keys), *keys, *args)
        return reply

    def unlock(self, key: str, owner: str) -> None:
        self._script(_UNLOCK, _UNLOCK_SHA, (PREFIX + "l:" + key,), owner)

    def get_or_lock(
        self,
        key: str,
        owner: str,
        lease: float,
        takers: tuple[str, float] | None = None,
        defer: bool = False,
    ) -> tuple[bytes | None, bytes | None, bool | None]:
        """``get_many([key, "g:" + key])`` and, when ``key`` has no entry, ``lock(key, owner, lease)``, in
        one round trip: ``(entry, generation record, held)``; ``held`` is None when an entry was found
        (the lease was not asked for) or, with ``defer``, when the lease was free and left to others.

        ``takers``: ``(name, seconds)`` of the mark a lease taken sets for that long; with ``defer`` a
        free lease is left (not taken) while the mark is there."""
        names, args = _get_or_lock_call(key, owner, lease, takers, defer)
        blob, gen_blob, held = self._script(_GET_OR_LOCK, _GET_OR_LOCK_SHA, tuple(names), *args)
        return blob, gen_blob, _held(held)

    def locked(self, key: str) -> bool:
        return bool(self._call("EXISTS", PREFIX + "l:" + key))

    def holder(self, key: str) -> str | None:
        owner = self._call("GET", PREFIX + "l:" + key)
        return None if owner is None else bytes(owner).decode("utf-8", "replace")

    def extend_lock(self, key: str, owner: str, lease: float) -> bool:
        """Push a lock ``owner`` still holds ``lease`` seconds further (a heartbeat); False: not held."""
        from credpath._shared_cache import EXTEND_LOCK

        ms = max(1, int(lease * 1000))
        return bool(self._call("EVAL", EXTEND_LOCK, 1, PREFIX + "l:" + key, owner, ms))

    def wait_for(self, key: str, timeout: float) -> None:
        """Block until ``key``'s lock is released (announced by :meth:`unlock`) or ``timeout`` passes.

        Subscribed first, then the lock looked at: a release between the caller's last look and the
        subscription is seen either way. A lease that simply runs out is not announced; the caller's
        loop looks again after ``timeout``. Any failure returns (the caller looks, as it would polling).
        """
        channel = PREFIX + "l:" + key
        give_up = time.monotonic() + timeout
        try:
            with self._lock:
                listener = self._listener
                if listener is None or self._listener_pid != os.getpid():
                    self._listener = None
                    listener = self._listener = self._open()
                    self._listener_pid = os.getpid()
        except Exception:  # the caller looks at the tier next, and counts its failure there
            return
        try:
            listener.sock.sendall(_encode(("SUBSCRIBE", channel)))
            listener.reply()
            self.round_trips += 1
            if self._call("EXISTS", channel) and listener.ready(max(0.0, give_up - time.monotonic())):
                listener.reply()  # ["message", channel, "1"]
            listener.sock.sendall(_encode(("UNSUBSCRIBE", channel)))
            while True:  # a release announced meanwhile may come before the confirmation
                reply = listener.reply()
                if isinstance(reply, list) and reply and reply[0] == b"unsubscribe":
                    break
            self.round_trips += 1
        except Exception:  # a failure: a new socket next time
            with self._lock:
                if self._listener is listener:
                    self._listener = None
            listener.close()

    def add_stats(self, counts: Mapping[str, int]) -> None:
        items = [(name, n) for name, n in counts.items() if n]
        if items:
            for reply in self._run([("HINCRBY", PREFIX + "stats", name, n) for name, n in items]):
                if isinstance(reply, RedisError):
                    raise reply

    # --- read counters per process (credpath._usage): a hash per name, a field per process ---

    def put_usage(self, records: list[tuple[str, str, bytes]], keep_until: float) -> None:
        ms = max(1, int((keep_until - time.time()) * 1000))
        commands: list[tuple[Any, ...]] = []
        for name, field_name, blob in records:
            commands.append(("HSET", PREFIX + name, field_name, blob))
            commands.append(("PEXPIRE", PREFIX + name, ms))
        for start in range(0, len(commands), 1000):
            for reply in self._run(commands[start : start + 1000]):
                if isinstance(reply, RedisError):
                    raise reply

    def get_usage(self, names: list[str]) -> dict[str, list[tuple[str, bytes]]]:
        found: dict[str, list[tuple[str, bytes]]] = {}
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            for name, raw in zip(chunk, self._run([("HGETALL", PREFIX + n) for n in chunk]), strict=True):
                if isinstance(raw, RedisError):
                    raise raw
                if raw:
                    found[name] = [(raw[i].decode(), raw[i + 1]) for i in range(0, len(raw), 2)]
        return found

    def _scan(self, pattern: str) -> list[bytes]:
        keys: list[bytes] = []
        cursor = b"0"
        while True:
            cursor, batch = self._call("SCAN", cursor, "MATCH", PREFIX + pattern, "COUNT", 1000)
            keys.extend(batch)
            if cursor == b"0":
                return keys

    def stats(self) -> dict[str, int]:
        raw = self._call("HGETALL", PREFIX + "stats") or []
        counts = {raw[i].decode(): int(raw[i + 1]) for i in range(0, len(raw), 2)}
        generations = (PREFIX + "e:g:").encode()
        counts["entries"] = sum(1 for k in self._scan("e:*") if not k.startswith(generations))
        return counts

    def clear(self) -> int:
        removed = -len(self._scan("e:g:*"))  # generation records are not entries
        for pattern, counted in (("e:*", True), ("l:*", False)):
            keys = self._scan(pattern)
            for start in range(0, len(keys), 500):
                deleted = self._call("DEL", *keys[start : start + 500])
                removed += deleted if counted else 0
        self._call("DEL", PREFIX + "stats")
        return max(0, removed)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()
            listener, self._listener = self._listener, None
            if listener is not None and self._listener_pid == os.getpid():
                listener.close()


# --- Sentinel and Cluster, through redis-py ----------------------------------------------------------


def _redis_py_store(url: str) -> Any:
    try:
        import redis  # noqa: F401
    except ImportError:
        from credpath.errors import MissingDependency

        raise MissingDependency(
            "shared cache: a Redis Sentinel or Cluster tier needs redis-py: pip install 'credpath[redis]'",
            module="redis",
        ) from None
    from credpath._shared_cache import RedisStore

    scheme = url.partition("://")[0]
    options = _options(url)
    user, password = _credentials(url)
    netloc = url.partition("://")[2].partition("/")[0].partition("?")[0]
    hosts = [(host, port or (26379 if scheme in SENTINEL_SCHEMES else 6379)) for host, port in _hosts(netloc)]
    kwargs: dict[str, Any] = {
        "username": user,
        "password": password,
        "socket_timeout": float(options.get("socket_timeout", DEFAULT_TIMEOUT)),
        "socket_connect_timeout": float(options.get("socket_connect_timeout", DEFAULT_TIMEOUT)),
    }
    if scheme.startswith("rediss"):
        kwargs["ssl"] = True
        kwargs["ssl_ca_certs"] = options.get("ssl_ca_certs")
        kwargs["ssl_cert_reqs"] = options.get("ssl_cert_reqs", "required")
        if options.get("ssl_certfile"):
            kwargs["ssl_certfile"] = options["ssl_certfile"]
            kwargs["ssl_keyfile"] = options.get("ssl_keyfile")
    store = RedisStore.__new__(RedisStore)
    store.description = _safe_description(url)
    if scheme in SENTINEL_SCHEMES:
        from redis.sentinel import Sentinel

        path = url.partition("://")[2].partition("?")[0].partition("/")[2].strip("/").split("/")
        service = path[0]
        db = int(path[1]) if len(path) > 1 else 0
        sentinel_kwargs = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout")}
        if options.get("sentinel_password"):
            sentinel_kwargs["password"] = options["sentinel_password"]
        # The master is asked of the sentinels on every new connection: after a failover the next
        # attempt reaches the new master.
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)
        client = sentinel.master_for(service, db=db, **kwargs)
        # One master holds every key: the look and the lease go in one script, as on a plain server.
        # (Not on a Cluster: an entry, its generation record and its lease hash to different slots.)
        get_or_lock = client.register_script(_GET_OR_LOCK.decode())

        def both(*call: Any) -> tuple[bytes | None, bytes | None, bool | None]:  # as RespStore's
            names, args = _get_or_lock_call(*call)
            blob, gen_blob, held = get_or_lock(keys=names, args=args)
            return blob, gen_blob, _held(held)

        store.get_or_lock = both  # type: ignore[attr-defined]
    else:
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in hosts]  # type: ignore[no-untyped-call]
        client = RedisCluster(startup_nodes=nodes, **kwargs)
        # An entry and its generation record hash to different slots: one read per slot.
        store.get_many = lambda keys: client.mget_nonatomic([PREFIX + "e:" + k for k in keys])  # type: ignore[method-assign]
    store._client = client
    store._unlock = client.register_script(_UNLOCK.decode())
    return store
