"""Leases shared per node or per deployment: one record in the shared tier, one renewer, hand-over.

Server-free (a file tier in tmp_path, an in-memory lease source, two :class:`SharedLeases` standing for two
processes); the same behaviours with real processes on real OpenBao + PostgreSQL (and Redis) are in
tests/backends/test_vault_database_sharing.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from credpath import _lease_sharing, _leases
from credpath._shared_cache import FileStore, SharedTier
from credpath.errors import ConfigError

SECRET = "s3cr3t-shared-lease-password"


class Source:
    """A lease source like a backend: ``name``, ``lease_key_prefix``, mint/renew/revoke, counted."""

    def __init__(self, ttl: float = 0.8, renewable: bool = True) -> None:
        self.name = "shared"
        self.lease_key_prefix = "test:shared:1:"
        self.ttl, self.renewable = ttl, renewable
        self.minted = 0
        self.renewed: list[str] = []
        self.revoked: list[str] = []
        self.lock = threading.Lock()

    def conn_id_of(self, key: str) -> str:
        return key[len(self.lease_key_prefix) :]

    def mint(self, key: str) -> _leases.Minted:
        with self.lock:
            self.minted += 1
            n = self.minted
        return _leases.Minted(f"{SECRET}-{n}", f"database/creds/r/lease{n:04d}", self.ttl, self.renewable)

    def renew(self, lease_id: str, increment: float) -> float:
        self.renewed.append(lease_id)
        return increment

    def revoke(self, lease_id: str) -> None:
        self.revoked.append(lease_id)


@pytest.fixture
def tier(tmp_path: Path) -> Any:
    from cryptography.fernet import Fernet

    made = SharedTier(FileStore(tmp_path / "shared.db"), [Fernet.generate_key()], "scope")
    yield made
    made.close()


@pytest.fixture
def users() -> Any:
    made: list[_lease_sharing.SharedLeases] = []

    def make() -> _lease_sharing.SharedLeases:
        made.append(_lease_sharing.SharedLeases())
        return made[-1]

    yield make
    for user in made:
        user._stop.set()
        user.release()


def _get(user: _lease_sharing.SharedLeases, source: Source, tier: Any) -> Any:
    name = tier.name(("lease", "shared\0pg", None))
    return user.get(source.lease_key_prefix + "pg", source, tier, name, "node")


def test_two_users_share_one_lease_and_one_renews_it(tier: Any, users: Any) -> None:
    source = Source(ttl=0.9)
    one, two = users(), users()
    assert _get(one, source, tier) == _get(two, source, tier) == f"{SECRET}-1"
    assert source.minted == 1
    time.sleep(2.0)  # past two TTLs: renewed (the same lease), never re-minted
    assert _get(two, source, tier) == f"{SECRET}-1" and source.minted == 1
    assert len(source.renewed) >= 2 and set(source.renewed) == {"database/creds/r/lease0001"}
    renewers = [user for user in (one, two) if any(h.renewer for h in user._held.values())]
    assert renewers == [one]  # exactly one renewer: the one that minted
    key = source.lease_key_prefix + "pg"
    assert "renewer=own" in (one.detail(key) or "") and "renewer=other" in (two.detail(key) or "")
    assert "database/creds/r/lease0…" in (two.detail(key) or "") and SECRET not in (two.detail(key) or "")


def test_a_dead_renewer_is_taken_over_and_the_same_lease_renewed(tier: Any, users: Any) -> None:
    source = Source(ttl=0.9)
    one, two = users(), users()
    _get(one, source, tier)
    _get(two, source, tier)
    one._stop.set()  # the renewer hangs: no heartbeat, no renewal (its lock runs out)
    one._held.clear()
    started = time.monotonic()
    deadline = started + 3.0
    while time.monotonic() < deadline and not any(h.renewer for h in two._held.values()):
        time.sleep(0.02)
    took = time.monotonic() - started
    assert any(h.renewer for h in two._held.values())
    assert took < _lease_sharing.heartbeat(0.9) + 0.5
    time.sleep(1.5)  # past the original expiry
    assert _get(two, source, tier) == f"{SECRET}-1" and source.minted == 1
    assert source.renewed and set(source.renewed) == {"database/creds/r/lease0001"}


def test_release_hands_over_at_once_and_never_revokes(tier: Any, users: Any) -> None:
    source = Source(ttl=30)
    one, two = users(), users()
    _get(one, source, tier)
    _get(two, source, tier)
    assert one.release() == 1  # task end / exit: the renewer lets go
    assert source.revoked == []
    # The other user takes over at its next look (a third of a heartbeat), not after the lock's life.
    assert _wait(lambda: any(h.renewer for h in two._held.values()), 2.0)
    assert source.revoked == []


def test_the_record_at_rest_is_sealed(tier: Any, users: Any, tmp_path: Path) -> None:
    source = Source(ttl=30)
    _get(users(), source, tier)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("shared.db"))
    assert raw and SECRET.encode() not in raw and b"lease0001" not in raw


def test_the_record_is_dropped_when_the_lease_expires(tier: Any, users: Any) -> None:
    source = Source(ttl=0.5, renewable=False)
    one = users()
    _get(one, source, tier)
    one._stop.set()  # nobody renews or re-mints
    one._held.clear()
    time.sleep(0.6)
    name = tier.name(("lease", "shared\0pg", None))
    assert one._read(_lease_sharing._Held("k", source, tier, name, "node")) is None
    assert _get(users(), source, tier) == f"{SECRET}-2"  # a new lease, never the expired one


def test_a_non_renewable_shared_lease_is_reminted_by_the_renewer(tier: Any, users: Any) -> None:
    source = Source(ttl=0.6, renewable=False)
    one, two = users(), users()
    _get(one, source, tier)
    _get(two, source, tier)
    time.sleep(0.9)
    assert source.minted == 2 and source.renewed == []
    assert _get(two, source, tier) == f"{SECRET}-2"


@pytest.mark.parametrize("value", ["cluster", "", 3, "Node "])
def test_bad_share_is_one_line(value: Any) -> None:
    from credpath.backends.vault_database import VaultDatabaseBackend

    if value == "Node ":
        backend = VaultDatabaseBackend(url="http://127.0.0.1:1", token="t", share=value)
        assert backend.share == "node"
        return
    with pytest.raises(ConfigError) as info:
        VaultDatabaseBackend(
            url="http://127.0.0.1:1", token="t", leases={"pg": {"role": "r", "share": value}}
        )
    assert "leases.pg.share must be 'process' (default), 'node' or 'deployment'" in str(info.value)
    assert "\n" not in str(info.value)


def test_share_needs_the_matching_tier(tier: Any) -> None:
    from credpath.backends.vault_database import VaultDatabaseBackend

    backend = VaultDatabaseBackend(url="http://127.0.0.1:1", token="t", leases={"pg": "r"}, share="node")
    with pytest.raises(ConfigError, match=r"share = 'node' needs the shared cache tier on a file"):
        backend.get_connection("pg")
    backend.lease_tier = tier
    backend.leases["pg"]["share"] = "deployment"
    with pytest.raises(ConfigError, match=r"share = 'deployment' needs a Redis tier"):
        backend.get_connection("pg")


def test_the_default_is_one_lease_per_process() -> None:
    from credpath.backends.aws_sts import AwsStsBackend
    from credpath.backends.vault_database import VaultDatabaseBackend

    backend = VaultDatabaseBackend(url="http://127.0.0.1:1", token="t", leases={"pg": "r"})
    assert backend.share == "process" and backend.lease_share("pg") == "process"
    sts = AwsStsBackend(leases={"aws": "arn:aws:iam::123456789012:role/x"}, share="deployment")
    assert sts.lease_share("aws") == "deployment"


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


class _DownStore:
    """A Redis tier that refuses every connection."""

    description = "redis://127.0.0.1:1"

    def __getattr__(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionRefusedError(111, "Connection refused")

        return refuse


def test_a_failing_tier_falls_back_to_a_lease_of_this_process() -> None:
    from cryptography.fernet import Fernet

    source = Source(ttl=30)
    source.lease_tier = SharedTier(_DownStore(), [Fernet.generate_key()], "scope")  # type: ignore[attr-defined]
    source.label = "backend 'shared'"  # type: ignore[attr-defined]
    before = _lease_sharing.counts()["fallbacks"]
    try:
        assert _lease_sharing.shared_get(source, "pg", "deployment") == f"{SECRET}-1"
        assert _lease_sharing.counts()["fallbacks"] == before + 1
        assert [lease.key for lease in _leases.manager().leases(source.lease_key_prefix)] == [
            source.lease_key_prefix + "pg"
        ]
    finally:
        _leases.revoke_all(source.lease_key_prefix)
    assert source.revoked == ["database/creds/r/lease0001"]  # a process lease: revoked as usual
