"""Vault with a shared cache tier: a mount's KV version is probed once per tier, not
once per process. Two real processes (tests/_shared_cache_worker.py) in front of a real OpenBao, the probes
counted at a fault proxy; the tiers are a SQLite file and a real Redis server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from credpath._shared_cache import FileStore, SharedTier
from tests._shared_tier_fixtures import KEY, OTHER_KEY, REPO, worker_env, write_config
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao

PROBE = r"/v1/sys/internal/ui/mounts/"
VALUES = {"shared_a": "value-s3cr3t-a", "shared_b": "value-s3cr3t-b"}


@pytest.fixture(scope="module")
def kv1(openbao: OpenBao) -> Iterator[str]:
    # KV v1: a process that guessed v2 instead of learning the version would miss every value.
    mount = openbao.enable_kv(1)
    for key, value in VALUES.items():
        openbao.put(mount, 1, f"variables/{key}", {"value": value})
    yield mount
    openbao.disable(mount)


@pytest.fixture
def proxy(openbao: OpenBao, fault_proxy: Any) -> Any:
    parts = urlsplit(openbao.addr)
    return fault_proxy(parts.hostname, parts.port)


def run_task(tmp_path: Path, path: Path, variable: str) -> dict[str, Any]:
    """One task-like process reading one variable (the start file exists: it starts at once)."""
    start = tmp_path / "start"
    start.touch()
    result = subprocess.run(
        [sys.executable, "-m", "tests._shared_cache_worker", str(path), str(start), f"variable:{variable}"],
        env=worker_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_no_secret(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def digest(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.mark.parametrize("tier", ["file", "redis"])
def test_the_kv_version_is_probed_once_per_shared_tier(
    request: pytest.FixtureRequest, openbao: OpenBao, kv1: str, proxy: Any, tmp_path: Path, tier: str
) -> None:
    shared = f"file:{tmp_path / 'shared.db'}" if tier == "file" else request.getfixturevalue("redis_url")
    path = write_config(tmp_path, (openbao, kv1), proxy.url, shared, backend={"kv_engine_version": "auto"})
    first = run_task(tmp_path, path, "shared_a")
    assert first["values"] == {"variable:shared_a": digest(VALUES["shared_a"])}
    assert proxy.count(PROBE) == 1
    # Another task process reads another id (a store read), with the version from the shared tier.
    second = run_task(tmp_path, path, "shared_b")
    assert second["values"] == {"variable:shared_b": digest(VALUES["shared_b"])}
    assert proxy.count(PROBE) == 1  # none in the second process
    assert proxy.count(rf"/v1/{kv1}/variables/") == 2


def test_without_a_shared_tier_each_process_probes(
    openbao: OpenBao, kv1: str, proxy: Any, tmp_path: Path
) -> None:
    path = write_config(tmp_path, (openbao, kv1), proxy.url, None, backend={"kv_engine_version": "auto"})
    run_task(tmp_path, path, "shared_a")
    run_task(tmp_path, path, "shared_b")
    assert proxy.count(PROBE) == 2


def test_shared_state_is_keyed_encrypted_and_expires(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    db = tmp_path / "state.db"
    tier = SharedTier(FileStore(db), [KEY.encode()], "scope")
    state = tier.state("vault")
    key = json.dumps(["kv_version", "http://vault.internal:8200", None, "kv-mount-name"])
    state.put(key, 1, 60)
    assert state.get(key) == 1
    assert tier.state("other-backend").get(key) is None  # per backend
    assert SharedTier(FileStore(db), [KEY.encode()], "another scope").state("vault").get(key) is None
    assert (
        SharedTier(FileStore(db), [OTHER_KEY.encode()], "scope").state("vault").get(key) is None
    )  # wrong key
    state.put("gone", 2, -1)  # already expired: never served
    assert state.get("gone") is None
    tier.close()
    raw = db.read_bytes()
    for text in (b"kv-mount-name", b"vault.internal", b"kv_version"):
        assert text not in raw  # names are HMACs, values Fernet tokens
    assert Fernet(KEY.encode())  # the key used is a valid Fernet key
