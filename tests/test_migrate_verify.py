"""How ``credpath migrate`` verifies its writes (the store's confirmation, or a read back) and how its write
concurrency follows the store's throttling. Requests are counted on the client (OpenBao: the session's
HTTP requests; moto: botocore operations)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from credpath._migrate import migrate
from credpath.backends.vault import VaultBackend
from credpath.errors import ConfigError, Throttled
from tests.conftest import assert_no_secret
from tests.memory_backend import MemoryBackend
from tests.servers.openbao import OpenBao, RequestLog
from tests.test_migrate import _seed_metastore


def test_vault_kv2_writes_are_verified_by_the_version_they_return(vault_harness: Any, tmp_path: Path) -> None:
    source = _seed_metastore(tmp_path, 6, 4)
    destination = vault_harness.make_backend()
    log = RequestLog().attach(destination)
    report = migrate(source, destination, concurrency=4)
    assert report.exit_code == 0 and report.summary()["verified"] == 10 and report.confirmed == 10
    posts = [r for r in log.requests if r.startswith("POST")]
    reads = [r for r in log.requests if r.startswith("GET") and "/data/" in r]
    assert len(posts) == 10 and reads == []  # one request per row (the old code: 10 more reads back)
    assert report.to_dict()["verification"]["read_back"] == 0
    assert_no_secret(report.to_json())

    # --verify read keeps the old behaviour: every written row read back.
    for conn_id in destination.list_connections():
        destination.delete_connection(conn_id)
    log.entries.clear()
    report = migrate(source, destination, concurrency=4, verify="read", variables=False)
    reads = [r for r in log.requests if r.startswith("GET") and "/data/" in r]
    assert report.verified == 6 and report.confirmed == 0 and len(reads) == 6

    # --verify none: written, not verified, nothing read.
    for conn_id in destination.list_connections():
        destination.delete_connection(conn_id)
    log.entries.clear()
    report = migrate(source, destination, verify="none", variables=False)
    reads = [r for r in log.requests if r.startswith("GET") and "/data/" in r]
    assert (report.written, report.verified, report.exit_code, reads) == (6, 0, 0, [])
    assert report.summary()["added"] == 6


def test_a_store_that_does_not_confirm_is_read_back(
    openbao: OpenBao, openbao_kv1: str, tmp_path: Path
) -> None:
    source = _seed_metastore(tmp_path, 3, 2)
    destination = VaultBackend(
        url=openbao.addr, token=openbao.root_token, mount_point=openbao_kv1, kv_engine_version=1
    )
    try:
        assert destination.set_variable("probe", "x") is None  # KV v1 answers 204: no version
        destination.delete_variable("probe")
        report = migrate(source, destination)
        assert report.exit_code == 0 and report.verified == 5 and report.confirmed == 0
    finally:
        destination.close()


def test_secrets_manager_writes_are_verified_by_their_version_id(
    aws_secrets_manager_harness: Any, tmp_path: Path
) -> None:
    from credpath.protocol import WriteConfirmation

    source = _seed_metastore(tmp_path, 5, 3)
    destination = aws_secrets_manager_harness.make_backend()
    confirmation = destination.set_variable("probe", "x")
    assert isinstance(confirmation, WriteConfirmation) and confirmation.version
    again = destination.set_variable("probe", "y")  # PutSecretValue: a new version, a new id
    assert isinstance(again, WriteConfirmation) and again.version != confirmation.version
    destination.delete_variable("probe")
    destination.aws.calls.clear()
    report = migrate(source, destination, concurrency=4)
    assert report.exit_code == 0 and report.verified == 8 and report.confirmed == 8
    calls = dict(destination.aws.calls)
    assert calls.get("CreateSecret") == 8
    assert calls.get("GetSecretValue", 0) == 0 and calls.get("BatchGetSecretValue", 0) == 0, calls


class Throttling(MemoryBackend):
    """Refuses a write while more than ``room`` are in flight, as a rate-limited store does."""

    def __init__(self, room: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.room = room
        self.active = 0
        self.refused = 0
        self.lock = threading.Lock()

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        with self.lock:
            self.active += 1
            crowded = self.active > self.room
            self.refused += crowded
        try:
            if crowded:
                raise Throttled("memory: throttled (429)")
            time.sleep(0.01)
            super().set_variable(key, value, overwrite=overwrite)
        finally:
            with self.lock:
                self.active -= 1


def test_write_concurrency_halves_on_throttling_and_every_row_lands() -> None:
    source = MemoryBackend(variables={f"v{i:02d}": f"value-s3cr3t-{i}" for i in range(40)})
    destination = Throttling(2)
    report = migrate(source, destination, connections=False, concurrency=8)
    assert report.exit_code == 0, [i.to_dict() for i in report.failed]  # the old code: throttled rows failed
    assert report.verified == 40 and destination.variables == source.variables
    assert report.throttled == destination.refused > 0 and report.lowest_concurrency <= 2


def test_adaptive_limit_halves_once_per_burst_and_grows_back_by_one() -> None:
    from credpath._migrate import AdaptiveLimit

    limit = AdaptiveLimit(8)
    epochs = [limit.acquire() for _ in range(8)]
    for epoch in epochs:  # eight writes in flight all throttled: one decrease, not eight
        limit.release(epoch, throttled=True)
    assert (limit.limit, limit.lowest, limit.throttles) == (4, 4, 8)
    for _ in range(4):
        limit.release(limit.acquire())
    assert limit.limit == 5
    epoch = limit.acquire()
    limit.release(epoch, throttled=True)
    assert limit.limit == 2 and limit.lowest == 2


def test_verify_is_checked() -> None:
    with pytest.raises(ConfigError, match="--verify"):
        migrate(MemoryBackend(), MemoryBackend(), verify="sometimes")
