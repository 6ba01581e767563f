"""The lease manager with an in-memory lease source: when it renews, re-mints, backs off and revokes.

Server-free and fast (TTLs of a fraction of a second); the same behaviours against real OpenBao are in
tests/backends/test_vault_database.py.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import pytest

from credpath import _leases
from credpath.errors import BackendError, ConfigError


class Source:
    """Mints ``value-<n>`` with ``ttl``; renewals grant up to ``max_ttl`` from the mint, or fail/refuse."""

    def __init__(self, name: str, ttl: float = 0.6, max_ttl: float = 60.0, renewable: bool = True) -> None:
        self.name = name
        self.ttl, self.max_ttl, self.renewable = ttl, max_ttl, renewable
        self.minted = 0
        self.renewals: list[float] = []
        self.revoked: list[str] = []
        self.born: dict[str, float] = {}
        self.fail_renewals: BaseException | None = None
        self.fail_mints: BaseException | None = None
        self.lock = threading.Lock()

    def mint(self, key: str) -> _leases.Minted:
        if self.fail_mints is not None:
            raise self.fail_mints
        with self.lock:
            self.minted += 1
            lease_id = f"test/creds/{self.name}/lease{self.minted:04d}"
        self.born[lease_id] = time.monotonic()
        return _leases.Minted(f"value-{self.minted}", lease_id, self.ttl, renewable=self.renewable)

    def renew(self, lease_id: str, increment: float) -> float:
        self.renewals.append(time.monotonic())
        if self.fail_renewals is not None:
            raise self.fail_renewals
        left_of_max = self.born[lease_id] + self.max_ttl - time.monotonic()
        return max(0.0, min(increment, left_of_max))

    def revoke(self, lease_id: str) -> None:
        self.revoked.append(lease_id)


@pytest.fixture
def manager() -> Any:
    made = _leases.LeaseManager()
    yield made
    made.revoke()


def test_one_lease_per_key_and_concurrent_first_lookups_mint_once(manager: Any) -> None:
    source = Source("once", ttl=30)
    values: list[str] = []
    threads = [threading.Thread(target=lambda: values.append(manager.get("k", source))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert values == ["value-1"] * 8 and source.minted == 1
    assert manager.get("other", source) == "value-2"


def test_renewed_at_two_thirds_of_the_ttl_and_kept(manager: Any) -> None:
    source = Source("renew", ttl=0.6)
    started = time.monotonic()
    assert manager.get("k", source) == "value-1"
    time.sleep(1.5)
    assert manager.get("k", source) == "value-1"  # renewed, never re-minted
    assert source.minted == 1 and len(source.renewals) >= 2
    first = source.renewals[0] - started
    assert 0.35 <= first <= 0.6  # at about 2/3 of 0.6 s
    (lease,) = manager.leases()
    assert lease.renewals >= 2 and lease.left() > 0
    assert _leases.counts("renew")["renewed"] >= 2


def test_reminted_before_expiry_at_the_max_ttl(manager: Any) -> None:
    source = Source("maxttl", ttl=0.6, max_ttl=0.9)
    assert manager.get("k", source) == "value-1"
    deadline = time.monotonic() + 2.0
    seen = set()
    while time.monotonic() < deadline:
        value = manager.get("k", source)
        (lease,) = manager.leases()
        assert lease.left() > 0  # never handed out expired
        seen.add(value)
        time.sleep(0.02)
    assert source.minted >= 2 and len(seen) >= 2
    assert _leases.counts("maxttl")["expired"] == 0


def test_a_non_renewable_lease_is_reminted_at_two_thirds(manager: Any) -> None:
    source = Source("sts", ttl=0.6, renewable=False)
    manager.get("k", source)
    time.sleep(0.55)
    assert source.minted == 2 and source.renewals == []
    assert manager.get("k", source) == "value-2"


class FakeClock:
    """The manager's clock, moved by the test only: renewal times are exact whatever the machine's load."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FailingSource(Source):
    """Every renewal fails; each attempt is recorded on the manager's clock."""

    def __init__(self, name: str, clock: FakeClock, ttl: float) -> None:
        super().__init__(name, ttl=ttl)
        self.clock = clock

    def renew(self, lease_id: str, increment: float) -> float:
        self.renewals.append(self.clock())
        raise BackendError("Vault at http://127.0.0.1:1 answered HTTP 503")


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 60  # real time: only how long a loaded machine may take to schedule it
    while not condition():
        assert time.monotonic() < deadline, f"the renewer never {what}"
        time.sleep(0.002)


def test_failed_renewals_back_off_and_the_credential_stays_until_expiry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A base below the cap (ttl/6) makes the doubling visible in a one-second lease.
    monkeypatch.setattr(_leases, "BACKOFF_BASE", 0.02)
    clock = FakeClock()
    manager = _leases.LeaseManager(clock=clock)
    ttl = 1.2
    source = FailingSource("backoff", clock, ttl)
    before = _leases.counts("backoff")
    try:
        assert manager.get("k", source) == "value-1"
        (lease,) = manager.leases()
        expires, hand_out_until = lease.expires_at, lease.expires_at - _leases.MIN_LEFT * ttl
        # Step the clock to each time the renewer chose, and wait (real time) until it has tried and chosen
        # the next one: the times recorded are the renewer's schedule, not the machine's.
        while lease.next_at < expires:
            due, tries = lease.next_at, len(source.renewals)
            clock.now = due
            _until(lambda: lease.failures == tries + 1 and lease.next_at > due, "retried")  # noqa: B023
            assert source.renewals[-1] == due
            if clock.now < hand_out_until:  # failed renewals never drop or replace the credential
                assert manager.get("k", source) == "value-1" and source.minted == 1
        tries = source.renewals
        assert tries[0] == pytest.approx(100.0 + _leases.RENEW_FRACTION * ttl)  # due at two thirds
        # Never past expiry: the last try is just before it, then the lease is left to expire.
        assert tries[-1] == pytest.approx(expires - 0.05) and lease.next_at > expires
        gaps = [b - a for a, b in itertools.pairwise(tries)]
        for n, gap in enumerate(gaps[:-1], 1):  # the last gap is cut at expiry
            cap = min(_leases.BACKOFF_CAP, 0.02 * 2 ** (n - 1), ttl / 6)
            assert cap / 2 <= gap < cap + 1e-9, (n, gaps)  # jitter: half to all of the back-off
        assert len(gaps) >= 4 and gaps[0] < gaps[1] < gaps[2] < gaps[3], gaps  # it doubles
        assert lease.failures == len(tries) and manager.leases() == [lease]  # still held, never dropped
        assert "renew_failures=" in lease.summary() and "HTTP 503" in lease.summary()
        clock.now = expires + 0.01
        assert manager.get("k", source) == "value-2"  # expired: a new one, never the old
        counted = _leases.counts("backoff")
        assert counted["failed"] - before["failed"] == len(tries)
        assert counted["expired"] - before["expired"] == 1
    finally:
        manager.revoke()


def test_a_refused_renewal_remints(manager: Any) -> None:
    source = Source("refused", ttl=0.6)
    source.fail_renewals = _leases.LeaseRefused("lease not found")
    manager.get("k", source)
    time.sleep(0.55)
    assert source.minted == 2 and len(source.renewals) == 1
    assert manager.get("k", source) == "value-2"


def test_revoke_revokes_held_and_superseded_leases_once(manager: Any) -> None:
    source = Source("revoke", ttl=0.6, renewable=False)
    manager.get("a", source)
    manager.get("b", source)
    time.sleep(0.5)  # "a" and "b" re-minted: the superseded ones are still alive
    assert source.minted == 4
    assert manager.revoke() == 4
    assert sorted(source.revoked) == sorted(f"test/creds/revoke/lease{i:04d}" for i in range(1, 5))
    assert manager.leases() == [] and manager.revoke() == 0
    assert _leases.counts("revoke")["revoked"] == 4


def test_revoke_by_prefix_leaves_other_backends_leases(manager: Any) -> None:
    one, two = Source("one", ttl=30), Source("two", ttl=30)
    manager.get("one:k", one)
    manager.get("two:k", two)
    assert manager.revoke("one:") == 1
    assert [lease.key for lease in manager.leases()] == ["two:k"]


def test_a_failed_mint_holds_nothing_and_is_counted(manager: Any) -> None:
    source = Source("badmint")
    source.fail_mints = ConfigError("backend 'x': database role 'nope' does not exist")
    with pytest.raises(ConfigError):
        manager.get("k", source)
    assert manager.leases() == [] and _leases.counts("badmint")["failed"] == 1


def test_summary_shows_the_lease_prefix_ttl_and_renewals_never_the_value(manager: Any) -> None:
    source = Source("summary", ttl=30)
    manager.get("k", source)
    (lease,) = manager.leases()
    text = lease.summary() + repr(lease)
    assert "test/creds/summary/lease0…" in text and "ttl_left=" in text and "renewals=0" in text
    assert "value-1" not in text


def test_summary_tells_the_ttl_left_on_the_managers_clock() -> None:
    clock = FakeClock()
    clock.now = 1e9  # far from time.monotonic(): a summary on another clock shows it
    manager = _leases.LeaseManager(clock=clock)
    try:
        manager.get("k", Source("clocked", ttl=30))
        (lease,) = manager.leases()
        assert "ttl_left=30s" in lease.summary()
        clock.now += 12
        assert "ttl_left=18s" in lease.summary() and lease.left() == pytest.approx(18)
        assert "ttl_left=5s" in lease.summary(now=clock.now + 13)  # an explicit now wins
        clock.now += 40
        assert "ttl_left=0s" in lease.summary()  # expired: never negative
    finally:
        manager.revoke()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_holds_none_of_its_parents_leases() -> None:
    source = Source("fork", ttl=30)
    _leases.manager().get("fork:k", source)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no lease of the parent, and exiting revokes nothing of the parent's
        os.close(read)
        held = len(_leases.manager().leases("fork:"))
        os.write(write, str(held).encode())
        os._exit(0)
    os.close(write)
    assert os.read(read, 10) == b"0"
    os.waitpid(pid, 0)
    assert source.revoked == []
    assert _leases.revoke_all("fork:") == 1


@pytest.mark.parametrize(
    ("leases", "expected"),
    [
        ("{not json", "leases must be an object"),
        ([1], "leases must be an object"),
        ({"c": 5}, "leases.c must be a role or an object with 'role'"),
        ({"c": {"role": "r", "login": "u"}}, "unknown key(s) login (the lease mints them)"),
    ],
)
def test_parse_entries_is_one_line(leases: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _leases.parse_entries(
            leases, lambda _id, e: e, ConfigError, shorthand="role", known=frozenset({"role"})
        )
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert _leases.parse_entries(
        '{"c": "r"}', lambda _id, e: e, ConfigError, shorthand="role", known=frozenset({"role"})
    ) == {"c": {"role": "r"}}


def test_lease_events_reach_the_metrics(manager: Any) -> None:
    from credpath import metrics

    metrics.enable()
    try:
        source = Source("metrics", ttl=30)
        manager.get("k", source)
        manager.revoke()
        counted = metrics.store_counts("metrics")
    finally:
        metrics.disable()
        metrics.reset()
    assert counted["lease_mints"] == 1 and counted["lease_revocations"] == 1


def test_each_lease_operation_is_one_audit_event_by_connection_id(manager: Any, tmp_path) -> None:
    import json

    from credpath import _audit

    trail = tmp_path / "audit.jsonl"
    _audit.configure(_audit.AuditSettings(enabled=True, path=trail))
    try:
        source = Source("audited", ttl=30)
        assert manager.get("vault-database:pg:1:pg_reporting", source) == "value-1"
        manager.revoke()
        _audit.flush()
    finally:
        _audit.configure(_audit.AuditSettings())
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    leases = [(e["operation"], e["id"], e["action"], e["outcome"]) for e in events]
    assert leases == [
        ("lease", "pg_reporting", "minted", "ok"),
        ("lease", "pg_reporting", "revoked", "ok"),
    ]
    assert "value-1" not in trail.read_text()
