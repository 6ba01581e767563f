"""Who takes the shared tier's leases on Redis: a process that has no store client yet leaves a free
lease, for a moment, to a process that took one lately (it has its client), so the store reads of a cold
stampede, and the client each one needs, stay with few processes. Counts, not times: store reads at the
server, the processes that built a store client, the pauses taken.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath import _shared_cache
from credpath._deadlines import Deadline
from credpath._redis_store import RespStore
from credpath._shared_cache import LEASE_DEFERRAL, SharedTier
from tests import _shared_tier_fixtures as _fixtures
from tests._shared_tier_fixtures import READS, write_config
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao

clean_env, proxy = _fixtures.clean_env, _fixtures.proxy
IDS = [f"lc_conn_{i}" for i in range(8)]
TIER_KEY = Fernet.generate_key()


class _Pauses:
    """Stands in for the ``time`` module of the shared tier: records each pause, and runs ``during`` (what
    other processes do meanwhile) instead of sleeping."""

    def __init__(self) -> None:
        self.taken: list[float] = []
        self.during: Any = None

    def sleep(self, seconds: float) -> None:
        self.taken.append(seconds)
        if self.during is not None:
            self.during()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> _Pauses:
    shim = _Pauses()
    monkeypatch.setattr(_shared_cache, "time", shim)
    return shim


def _tier(url: str) -> SharedTier:
    return SharedTier(RespStore(url), [TIER_KEY], "concentration")


def _warm(url: str) -> SharedTier:
    tier = _tier(url)
    tier.reading_store()  # as after its first store read: it has its client
    return tier


def test_a_process_without_a_store_client_leaves_a_free_lease_to_one_with_a_client(
    redis_url: str, pauses: _Pauses
) -> None:
    # Nobody took a lease lately: the first cold process takes it at once.
    first = _tier(redis_url)
    assert first.get_or_acquire(("connection", "a", None)) == (None, True)
    assert pauses.taken == []
    first.release(("connection", "a", None))

    # Now someone did: a cold process pauses once before a free lease, and a process with a client that
    # takes it meanwhile reads the store; the cold one waits for its entry.
    warm, cold = _warm(redis_url), _tier(redis_url)
    took: list[Any] = []
    pauses.during = lambda: took.append(warm.get_or_acquire(("connection", "b", None)))
    assert cold.get_or_acquire(("connection", "b", None)) == (None, False)
    assert took == [(None, True)]
    assert pauses.taken == [LEASE_DEFERRAL]

    # A process with a client never pauses.
    pauses.during = None
    assert warm.get_or_acquire(("connection", "c", None)) == (None, True)
    assert pauses.taken == [LEASE_DEFERRAL]

    # Nobody came during the pause: the cold process takes the lease itself, after one pause only.
    assert cold.get_or_acquire(("connection", "d", None)) == (None, True)
    assert pauses.taken == [LEASE_DEFERRAL] * 2

    # A lookup whose deadline has passed does not pause.
    late = _tier(redis_url)
    assert late.get_or_acquire(("connection", "e", None), Deadline(0.0)) == (None, True)
    assert pauses.taken == [LEASE_DEFERRAL] * 2

    # A lease another process holds is waited for, as before (no pause either).
    assert _tier(redis_url).get_or_acquire(("connection", "e", None)) == (None, False)
    assert pauses.taken == [LEASE_DEFERRAL] * 2
    for tier in (first, warm, cold, late):
        tier.flush()  # nothing left for the exit handler to send
        tier.close()


@pytest.fixture(scope="module")
def vault(openbao: OpenBao) -> Iterator[tuple[OpenBao, str]]:
    mount = openbao.enable_kv(2)
    logging.disable(logging.CRITICAL)  # hvac logs request bodies at DEBUG
    for i, conn_id in enumerate(IDS):
        uri = f"postgres://u:pw-s3cr3t-lc-{i}@lc.internal:5432/d"
        openbao.put(mount, 2, f"connections/{conn_id}", {"conn_uri": uri})
    logging.disable(logging.NOTSET)
    yield openbao, mount
    openbao.disable(mount)


def test_a_cold_stampede_reads_each_id_once_through_few_store_clients(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, redis_url: str
) -> None:
    """Six processes started together read the same eight ids on one Redis: one store read per id, and
    the reads stay with the processes that already have a store client (the old policy spread them over
    every process that won a race after each release: each one paid for a client)."""
    proxy.add("delay", path=READS, seconds=0.1)  # the waiters pile up on every lease
    config = write_config(tmp_path, vault, proxy.url, redis_url)
    start = tmp_path / "start"
    args = [str(config), str(start), ",".join(f"connection:{c}" for c in IDS)]
    procs = _fixtures.start_together(tmp_path, "tests._shared_cache_worker", args, 6, start, settle=1.5)
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert_no_secret(stdout + stderr)
        assert proc.returncode == 0, stderr[-2000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert len({json.dumps(o["values"], sort_keys=True) for o in outputs}) == 1
    assert proxy.count(READS) == len(IDS)  # one store read per id, for the six processes
    clients = sum(o["store_client"] for o in outputs)
    assert 1 <= clients <= 2, f"{clients} of 6 processes built a store client"


@pytest.mark.parametrize("shared", ["file", "redis"])
def test_a_live_holder_slower_than_its_lease_keeps_it(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str, request: pytest.FixtureRequest
) -> None:
    """A holder that is a live process of this host, slower than its lease (its read takes 2.5 s against
    a 1 s lease), is waited for up to the store deadline: one store read, not a takeover and a second."""
    tier = f"file:{tmp_path / 'tier.db'}" if shared == "file" else request.getfixturevalue("redis_url")
    proxy.add("delay", path=READS, seconds=2.5, times=1)  # the holder's read only
    config = write_config(tmp_path, vault, proxy.url, tier, backend={"timeout": 10}, shared_lease=1.0)
    start = tmp_path / "start"
    start.touch()
    args = [str(config), str(start), f"connection:{IDS[0]}"]
    holder = _fixtures.start_together(tmp_path, "tests._shared_cache_worker", args, 1, start, settle=0)[0]
    waiter = _fixtures.path_for(config)
    assert isinstance(waiter.shared, SharedTier)
    shared_tier = waiter.shared
    deadline = time.monotonic() + 30
    while shared_tier.acquire(("connection", IDS[0], None)) is not False:  # until the holder has it
        shared_tier.release(("connection", IDS[0], None))
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.02)
    assert waiter.get_connection(IDS[0]).password == "pw-s3cr3t-lc-0"
    stdout, stderr = holder.communicate(timeout=60)
    assert holder.returncode == 0, stderr[-2000:]
    assert_no_secret(stdout + stderr)
    assert proxy.count(READS) == 1
    waiter.close()
    assert shared_tier.stats().get("lock_takeovers", 0) == 0


def test_a_wait_for_another_process_ends_at_the_lookups_deadline(redis_url: str) -> None:
    holder, waiter = _warm(redis_url), _tier(redis_url)
    assert holder.acquire(("connection", "f", None)) is True
    assert waiter.wait(("connection", "f", None), Deadline(0.0)) == (None, False)
    assert waiter.counts["lock_takeovers"] == 0
    for tier in (holder, waiter):
        tier.release(("connection", "f", None))
        tier.counts = dict.fromkeys(_shared_cache.COUNTERS, 0)  # nothing for the exit handler to send
        tier.close()
