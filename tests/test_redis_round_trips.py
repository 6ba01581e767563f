"""Redis operations per lookup on the shared tier, counted by a real redis-server (INFO commandstats):
a cold lookup looks for the entry and takes the stampede lease in one scripted round trip, a hit is one
MGET, and a server that lost its scripts (restarted, SCRIPT FLUSH) is answered by EVAL."""

from __future__ import annotations

import threading
import time
from typing import Any

from cryptography.fernet import Fernet

from credpath._redis_store import RespStore
from credpath._search_path import SearchPath
from credpath._shared_cache import SharedTier
from tests.memory_backend import MemoryBackend

KEY = Fernet.generate_key()
URI = "postgres://u:pw-s3cr3t-rt@db.internal:5432/d"


def commands(server: Any) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (commands a script runs are counted too)."""
    stats = server.client().info("commandstats")
    counted = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    # The test's own client (redis-py: HELLO, CONFIG RESETSTAT, INFO, CLIENT ...) is not the tier's.
    return {n: c for n, c in counted.items() if n not in ("hello", "info") and "|" not in n}


def reader(url: str, backend: MemoryBackend) -> tuple[SearchPath, RespStore]:
    store = RespStore(url)
    tier = SharedTier(store, [KEY], "round-trips")
    path = SearchPath([("mem", backend)], shared=tier)
    path._epoch_next = float("inf")  # the epoch look (once a second) is not what is counted here
    return path, store


def test_a_cold_lookup_looks_and_takes_the_lease_in_one_round_trip(redis_url: str, redis_server: Any) -> None:
    backend = MemoryBackend(connections={f"c{i}": URI for i in range(3)})
    path, store = reader(redis_url, backend)
    client = redis_server.client()
    client.script_flush()  # a server without the scripts: EVALSHA fails, EVAL loads them
    client.config_resetstat()
    assert path.get_connection("c0").password == "pw-s3cr3t-rt"
    first = commands(redis_server)
    assert first.get("eval", 0) >= 1 and first["evalsha"] >= 1  # NOSCRIPT, then EVAL

    client.config_resetstat()
    trips = store.round_trips
    assert path.get_connection("c1").password == "pw-s3cr3t-rt"
    cold = commands(redis_server)
    # One script for the look and the lease (it runs MGET, SET NX PX, and SET of the mark that a lease
    # was taken lately inside), one to let go of the lease; the generation record (SET NX + GET, one
    # pipelined trip), the entry (SET), the counters (HINCRBY each, pipelined: one trip).
    assert cold.pop("hincrby") >= 1
    assert cold == {"evalsha": 2, "mget": 1, "set": 4, "get": 2, "del": 1, "publish": 1}
    assert store.round_trips - trips == 5  # the old code: 7 (a second MGET, and SET NX apart)
    assert "exists" not in cold  # nobody waited

    # Another process (its connection opens with AUTH): a hit is the same one script, which found the
    # entry (its MGET) and took no lease.
    other, other_store = reader(redis_url, backend)
    client.config_resetstat()
    assert other.get_connection("c1").password == "pw-s3cr3t-rt"
    hit = commands(redis_server)
    flushed = hit.pop("hincrby", 0)  # the first hit of a process publishes its counters (one trip)
    assert hit == {"auth": 1, "evalsha": 1, "mget": 1}
    assert other_store.round_trips == 1 + (1 if flushed else 0)
    assert [name for name, _ in backend.calls] == ["get_conn_value", "get_conn_value"]  # c0, c1 only
    path.close()
    other.close()


def test_a_waiter_is_woken_and_the_holder_reads_once(redis_url: str, redis_server: Any) -> None:
    """Two processes miss together: one takes the lease in its first round trip, the other blocks on the
    release (no polling) and is served the holder's entry; the store is read once."""
    gate = threading.Event()

    class Slow(MemoryBackend):
        def get_conn_value(self, conn_id: str) -> str | None:
            gate.wait(5)
            return super().get_conn_value(conn_id)

    backend = Slow(connections={"slow": URI})
    holder, _ = reader(redis_url, backend)
    waiter, waiter_store = reader(redis_url, backend)
    got: dict[str, Any] = {}
    first = threading.Thread(target=lambda: got.setdefault("holder", holder.get_connection("slow")))
    first.start()
    deadline = time.monotonic() + 5
    while not redis_server.client().keys("credpath:v1:l:*") and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=lambda: got.setdefault("waiter", waiter.get_connection("slow")))
    second.start()
    time.sleep(0.5)  # the waiter blocks meanwhile; a poller would ask several times
    trips_while_waiting = waiter_store.round_trips
    gate.set()
    first.join(5)
    second.join(5)
    assert got["holder"].password == got["waiter"].password == "pw-s3cr3t-rt"
    assert len(backend.calls) == 1
    # get-or-lock (lease held by the other), subscribe, look at the lease: then it blocks.
    assert trips_while_waiting <= 3
    holder.close()
    waiter.close()
