"""The Redis shared tier as people run it: the plain-socket client (no redis-py in the task process), an ACL
user, TLS with a CA file, a 3-master Cluster and a Sentinel failover, all on real redis-server processes
on loopback (each topology started once per module)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath import _redis_store as rs
from credpath import _shared_cache as sc
from credpath._redis_store import RespStore
from credpath._shared_cache import SharedEntry, SharedTier
from credpath.errors import ConfigError
from tests.servers._util import free_port, require_binary, stop_process, wait_for_port
from tests.servers.redis import REDIS_PASSWORD

KEY = Fernet.generate_key()
REPO = Path(__file__).resolve().parent.parent
ACL_PASSWORD = "acl-s3cr3t-pw"


def entry(value: str, ttl: float = 600.0) -> SharedEntry:
    now = time.time()
    return SharedEntry("variable", value, "store", False, now, now + ttl, now + ttl)


def start_server(binary: str, workdir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "redis.log").open("ab")
    proc = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(workdir), "--daemonize", "no", *extra),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    wait_for_port(port, timeout=20, proc=proc)
    return proc


# --- the plain-socket client -------------------------------------------------------------------------


def test_resp_store_against_a_real_server(redis_url: str, redis_server: Any) -> None:
    s = RespStore(redis_url)
    client = redis_server.client()
    now = time.time()
    assert s.get("a") is None
    s.put("a", b"one\r\n$-1\r\n", now + 1000)  # RESP framing inside a value is just bytes
    assert s.get("a") == b"one\r\n$-1\r\n"
    assert 999_000 < client.pttl(sc.PREFIX + "e:a") <= 1_000_000
    s.put("gone", b"x", now - 1)
    assert s.get("gone") is None
    assert s.get_many(["a", "nope"]) == [b"one\r\n$-1\r\n", None]
    assert s.put_new("n", b"first", now + 100) == b"first"
    assert s.put_new("n", b"second", now + 100) == b"first"
    s.invalidate("a")
    assert s.get("a") is None

    assert s.lock("k", "me", 1000.0) is True
    assert s.lock("k", "you", 1000.0) is False
    assert s.holder("k") == "me" and s.locked("k") is True
    s.unlock("k", "you")
    assert s.locked("k") is True
    client.script_flush()  # the unlock script unknown to the server: EVAL loads it once
    s.unlock("k", "me")
    assert s.locked("k") is False and s.holder("k") is None
    assert s.lock("k", "you", 1000.0) is True
    s.unlock("k", "you")  # EVALSHA now
    assert s.locked("k") is False

    s.add_stats({"shared_hits": 3, "store_reads": 0})
    s.add_stats({"shared_hits": 2})
    s.put("g:n", b"gen", now + 100)
    stats = s.stats()
    assert stats["shared_hits"] == 5 and stats["entries"] == 1 and "store_reads" not in stats
    assert s.clear() == 1
    assert s.get("n") is None and s.stats() == {"entries": 0}
    # One round trip per operation, two commands for put_new (SET NX + GET in one write).
    before = (s.round_trips, s.commands)
    s.get_many(["a", "b"])
    s.put_new("p", b"v", now + 100)
    assert (s.round_trips - before[0], s.commands - before[1]) == (2, 3)
    s.close()


def test_a_task_process_on_the_redis_tier_does_not_import_redis_py(tmp_path: Path, redis_url: str) -> None:
    code = (
        "import sys, time\n"
        "from credpath._shared_cache import open_store, SharedTier, SharedEntry\n"
        f"tier = SharedTier(open_store({redis_url!r}), [{KEY!r}], 'x')\n"
        "now = time.time()\n"
        "tier.get(('variable', 'v', None))\n"
        "e = SharedEntry('variable', 'x', 's', False, now, now + 60, now + 60)\n"
        "tier.put(('variable', 'v', None), e)\n"
        "assert tier.get(('variable', 'v', None)).value == 'x'\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_forked_child_opens_its_own_connection_and_a_restart_is_one_failure(
    redis_url: str, redis_server: Any
) -> None:
    s = RespStore(redis_url)
    s.put("a", b"parent", time.time() + 100)
    parent_conn = s._conn
    pid = os.fork()
    if pid == 0:  # the child: its own socket, the parent's untouched
        code = 0 if s.get("a") == b"parent" and s._conn is not parent_conn else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert s.get("a") == b"parent" and s._conn is parent_conn
    redis_server.restart()
    with pytest.raises(OSError):
        s.get("a")  # the old socket is dead: the tier counts a failure and goes to the stores
    assert s.get("a") is None  # the next call connects again (the server started empty)


def test_a_server_that_never_answers_costs_the_timeout_only() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        s = RespStore(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2&socket_connect_timeout=0.2")
        started = time.monotonic()
        with pytest.raises(OSError):
            s.get("a")
        assert time.monotonic() - started < 1.0
        tier = SharedTier(s, [KEY], "x")
        assert tier.get(("variable", "v", None)) is None  # a miss, not an error
        tier.counts = dict.fromkeys(sc.COUNTERS, 0)  # nothing for the exit handler to send
        started = time.monotonic()
        s.wait_for("k", 5.0)  # a waiter's failure is no error either: it returns within the timeout
        assert time.monotonic() - started < 1.0
    finally:
        listener.close()
    closed = RespStore(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2")
    closed.wait_for("k", 5.0)  # refused: returns at once
    try:
        pass
    finally:
        listener.close()


def test_acl_user_and_a_wrong_password(redis_url: str, redis_server: Any) -> None:
    client = redis_server.client()
    client.acl_setuser("credpath", enabled=True, passwords=[f"+{ACL_PASSWORD}"], keys=["credpath:*"])
    client.execute_command("ACL", "SETUSER", "credpath", "+@all", "-flushall")
    port = redis_server.port
    s = RespStore(f"redis://credpath:{ACL_PASSWORD}@127.0.0.1:{port}/0")
    s.put("a", b"v", time.time() + 100)
    assert s.get("a") == b"v" and s.lock("l", "me", 10) is True
    bad = RespStore(f"redis://credpath:wrong-s3cr3t@127.0.0.1:{port}/0")
    with pytest.raises(rs.RedisError) as info:
        bad.get("a")
    assert str(info.value) == "WRONGPASS" and "s3cr3t" not in repr(info.value)
    assert "s3cr3t" not in s.description and s.description == f"redis://127.0.0.1:{port}/0"
    client.acl_deluser("credpath")


def test_urls_are_checked_without_echoing_them(tmp_path: Path) -> None:
    for good in (
        "redis+sentinel://:pw@h1:26379,h2:26380/mymaster",
        "redis+sentinel://h1/mymaster/2?socket_timeout=0.5",
        "rediss+cluster://user:pw@h1:7000,h2:7001",
        "rediss://h:6380/0?ssl_ca_certs=/ca.pem",
        "redis://u:p@h/0",
    ):
        assert sc.normalize_shared(good, tmp_path) == good
    for bad, message in [
        ("redis+sentinel://:pw-s3cr3t@h1:26379", "no service name"),
        ("redis+sentinel://h1/m/x", "db must be a number"),
        ("redis+cluster://:pw-s3cr3t@h1:port", "not a valid Redis URL"),
        ("redis://:pw-s3cr3t@h/0?socket_timeout=soon", "socket_timeout"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            sc.normalize_shared(bad, tmp_path)
        assert "s3cr3t" not in str(info.value)
    store = sc.open_store("redis://:pw-s3cr3t@h:1/2?socket_timeout=0.3")
    assert isinstance(store, RespStore) and store.timeout == 0.3 and store.description == "redis://h:1/2"


def test_waiters_are_woken_by_the_release_instead_of_polling(redis_url: str) -> None:
    holder = SharedTier(RespStore(redis_url), [KEY], "w")
    waiter_store = RespStore(redis_url)
    waiter = SharedTier(waiter_store, [KEY], "w")
    ckey = ("variable", "slow", None)
    assert holder.get(ckey) is None and holder.acquire(ckey) is True
    waiter.get(ckey)
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append((waiter.wait(ckey), time.monotonic())))
    before = waiter_store.round_trips
    thread.start()
    time.sleep(0.4)  # the holder's store read; a polling waiter would ask about 10 times meanwhile
    holder.put(ckey, entry("fresh"))
    holder.release(ckey)
    released = time.monotonic()
    thread.join(5)
    (found, held), woken = got[0]
    assert found is not None and found.value == "fresh" and held is False
    assert woken - released < 1.0  # bounded (the round trips below tell woken from polling)
    assert waiter_store.round_trips - before <= 4  # subscribe, look at the lock, unsubscribe, read
    # A lease that runs out is not announced: the waiter looks again (every 0.5 s) and takes over.
    holder.lease = 0.6
    assert holder.acquire(("variable", "dead", None)) is True
    started = time.monotonic()
    assert waiter.wait(("variable", "dead", None)) == (None, True)
    assert 0.5 < time.monotonic() - started < 3.0  # the lease, then the next look (0.5 s)
    assert waiter_store._listener is not None  # waits that ended unannounced kept their socket
    holder.flush()
    waiter.flush()
    holder.close()
    waiter.close()


# --- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    trustme = pytest.importorskip("trustme")
    binary = require_binary("redis-server", "apt-get install -y redis-server")
    work = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    cert.private_key_pem.write_to_path(str(work / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(work / "cert.pem"))
    port = free_port()
    # --port 0: no plain TCP port at all (the TLS port is the only way in).
    log = (work / "redis.log").open("ab")
    proc = subprocess.Popen(
        [
            *(binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--tls-cert-file", str(work / "cert.pem"), "--tls-key-file", str(work / "key.pem")),
            *("--tls-ca-cert-file", str(work / "ca.pem"), "--tls-auth-clients", "no"),
            *("--requirepass", REDIS_PASSWORD, "--dir", str(work)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        wait_for_port(port, timeout=20, proc=proc)
        yield port, work / "ca.pem"
    finally:
        stop_process(proc)


def test_tls_with_a_ca_file(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    s = RespStore(f"rediss://:{REDIS_PASSWORD}@localhost:{port}/0?ssl_ca_certs={ca}")
    s.put("a", b"v", time.time() + 100)
    assert s.get("a") == b"v"
    assert s.description == f"rediss://localhost:{port}/0"
    untrusted = RespStore(f"rediss://:{REDIS_PASSWORD}@localhost:{port}/0")  # the system's CAs only
    with pytest.raises(OSError):  # ssl.SSLCertVerificationError
        untrusted.get("a")
    plain = RespStore(f"redis://:{REDIS_PASSWORD}@localhost:{port}/0?socket_timeout=0.5")
    with pytest.raises(OSError):
        plain.get("a")


# --- Cluster -----------------------------------------------------------------------------------------


def cluster_port() -> int:
    """A free port whose cluster bus port (+10,000) exists too."""
    while (port := free_port()) > 55_000:
        pass
    return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    pytest.importorskip("redis")
    binary = require_binary("redis-server", "apt-get install -y redis-server")
    cli = require_binary("redis-cli", "apt-get install -y redis-tools")
    work = tmp_path_factory.mktemp("redis-cluster")
    ports = [cluster_port() for _ in range(3)]
    procs = []
    try:
        for port in ports:
            procs.append(
                start_server(
                    binary,
                    work / str(port),
                    port,
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
                    *("--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD),
                )
            )
        subprocess.run(
            [cli, "-a", REDIS_PASSWORD, "--no-auth-warning", "--cluster", "create"]
            + [f"127.0.0.1:{p}" for p in ports]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = subprocess.run(
                [cli, "-a", REDIS_PASSWORD, "--no-auth-warning", "-p", str(ports[0]), "cluster", "info"],
                capture_output=True,
                text=True,
            ).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.2)
        yield ports
    finally:
        for proc in procs:
            stop_process(proc)


def test_a_three_master_cluster(cluster: list[int]) -> None:
    url = f"redis+cluster://:{REDIS_PASSWORD}@127.0.0.1:{cluster[0]},127.0.0.1:{cluster[1]}"
    assert sc.normalize_shared(url, Path("/")) == url
    store = sc.open_store(url)
    assert REDIS_PASSWORD not in store.description
    tier = SharedTier(store, [KEY], "cluster")
    ckeys = [("variable", f"v{i}", None) for i in range(30)]  # names spread over the three masters
    for i, ckey in enumerate(ckeys):
        assert tier.get(ckey) is None
        assert tier.acquire(ckey) is True and tier.acquire(ckey) is False  # NX, on whichever master
        tier.put(ckey, entry(f"value-{i}"))
        tier.release(ckey)
    assert tier.counts["shared_errors"] == 0
    assert [tier.get(ckey).value for ckey in ckeys] == [f"value-{i}" for i in range(30)]  # type: ignore[union-attr]
    tier.count("shared_hits", 30)
    tier.flush()
    stats = store.stats()
    assert stats["entries"] == 30 and stats["shared_hits"] == 30
    # A Cluster keeps the look and the lease apart (an entry, its generation record and its lease hash
    # to different slots): the lease is not asked for with the look.
    assert tier.get_or_acquire(("variable", "cold", None)) == (None, None)
    assert store.clear() == 30
    tier.close()


# --- Sentinel ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pytest.importorskip("redis")
    binary = require_binary("redis-server", "apt-get install -y redis-server")
    work = tmp_path_factory.mktemp("redis-sentinel")
    master_port, replica_port = free_port(), free_port()
    auth = ("--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        procs["master"] = start_server(binary, work / "master", master_port, *auth)
        procs["replica"] = start_server(
            binary, work / "replica", replica_port, *auth, "--replicaof", "127.0.0.1", str(master_port)
        )
        sentinel_ports = [free_port() for _ in range(3)]
        for port in sentinel_ports:
            conf = work / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {work}\n"
                f"sentinel monitor credpath 127.0.0.1 {master_port} 2\n"
                f"sentinel auth-pass credpath {REDIS_PASSWORD}\n"
                "sentinel down-after-milliseconds credpath 500\n"
                "sentinel failover-timeout credpath 3000\n"
                "sentinel parallel-syncs credpath 1\n"
            )
            log = (work / f"sentinel-{port}.log").open("ab")
            procs[f"sentinel-{port}"] = subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            wait_for_port(port, timeout=20, proc=procs[f"sentinel-{port}"])
        yield {"procs": procs, "sentinels": sentinel_ports, "master": master_port, "replica": replica_port}
    finally:
        for proc in procs.values():
            stop_process(proc)


def test_sentinel_failover_during_reads(sentinel_group: dict[str, Any]) -> None:
    hosts = ",".join(f"127.0.0.1:{p}" for p in sentinel_group["sentinels"])
    timeouts = "socket_timeout=0.3&socket_connect_timeout=0.3"
    url = f"redis+sentinel://:{REDIS_PASSWORD}@{hosts}/credpath/0?{timeouts}"
    store = sc.open_store(url)
    tier = SharedTier(store, [KEY], "sentinel")
    ckeys = [("variable", f"v{i}", None) for i in range(10)]
    for i, ckey in enumerate(ckeys):
        tier.get(ckey)
        tier.put(ckey, entry(f"value-{i}"))
    import redis

    replica = redis.Redis(port=sentinel_group["replica"], password=REDIS_PASSWORD)
    deadline = time.monotonic() + 10
    while replica.dbsize() < 20 and time.monotonic() < deadline:  # entries and generation records
        time.sleep(0.05)

    results: list[tuple[float, Any, str]] = []
    stop = threading.Event()

    def reader() -> None:
        i = 0
        while not stop.is_set():
            ckey = ckeys[i % len(ckeys)]
            started = time.monotonic()
            got = tier.get(ckey)
            results.append((time.monotonic() - started, got, f"value-{i % len(ckeys)}"))
            i += 1
            time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.3)
    stop_process(sentinel_group["procs"]["master"])  # the master dies during reads
    back_at = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.2)
        recent = results[-5:]
        if len(results) > 40 and all(got is not None for _, got, _ in recent) and tier._available():
            back_at = time.monotonic()
            break
    stop.set()
    thread.join()
    assert back_at is not None, "the tier did not come back after the failover"
    assert all(got is None or got.value == want for _, got, want in results), "a wrong value"
    assert max(took for took, _, _ in results) < 2.0  # bounded: the socket timeouts, not a hang
    assert any(got is None for _, got, _ in results)  # the failover was seen (misses meanwhile)
    tier.put(("variable", "after", None), entry("written to the new master"))
    assert tier.get(("variable", "after", None)).value == "written to the new master"  # type: ignore[union-attr]
    # The look and the lease in one script on the (new) master: a miss takes the lease, once.
    assert tier.get_or_acquire(("variable", "cold", None)) == (None, True)
    assert tier.get_or_acquire(("variable", "cold", None)) == (None, False)
    assert tier.get_or_acquire(("variable", "after", None))[0].value == "written to the new master"  # type: ignore[union-attr]
    tier.flush()  # now, while the group runs (not at exit)
    tier.close()
