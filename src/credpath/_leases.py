"""Leased credentials: one lease per process per id, renewed while held, revoked at exit.

A lease source (a backend such as ``vault-database`` or ``aws-sts``) mints a credential with a time to
live; this module keeps it for the process and decides when to renew, re-mint and revoke:

- One lease per process per key (``<backend name>:<id>``): the first lookup mints it, later lookups get
  the same credential. A forked child starts with none (it never uses, renews or revokes its parent's).
- A background thread renews each held lease at about two thirds of its TTL (a non-renewable one, such as
  STS keys, is re-minted then instead). A failed renewal is retried with exponential back-off, never past
  the lease's expiry; a refused renewal, or a grant cut short by the lease's max TTL, re-mints before
  expiry. A lookup never hands out a credential with less than :data:`MIN_LEFT` of its TTL left: it mints
  a new one instead (synchronously).
- Revoked at normal process exit (``atexit``), on :func:`revoke_all`, and inside Airflow when a task ends
  (``credpath._airflow_leases``). A lease shared per node or per deployment (``share``) is kept in the
  shared tier instead (:mod:`credpath._lease_sharing`) and never revoked by a process. A process killed
  with SIGKILL revokes nothing: its leases simply expire at their TTL, which is why the sources' default
  TTLs should stay short (the role's ``default_ttl``).

Counts (minted, renewed, revoked, expired, failed) are kept per backend (:func:`counts`) and sent to
:mod:`credpath.metrics` as ``lease_mint``/``lease_renewal``/``lease_revocation``/``lease_expiration``/
``lease_failure`` events while metrics are on. Every minted secret is registered with the masker by the
source before it is handed back. Nothing here prints a secret: :meth:`Lease.summary` shows the lease id's
prefix, the TTL left and the renewals.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from credpath.errors import BackendError

__all__ = [
    "MIN_LEFT",
    "RENEW_FRACTION",
    "Lease",
    "LeaseManager",
    "LeaseRefused",
    "LeaseSource",
    "LeasedIds",
    "Minted",
    "counts",
    "manager",
    "parse_entries",
    "revoke_all",
]

log = logging.getLogger("credpath.leases")

#: Renew (or, for a non-renewable lease, re-mint) when this fraction of the TTL has passed.
RENEW_FRACTION = 2 / 3
#: A lookup never hands out a credential with less than this fraction of its TTL left (it mints a new one).
MIN_LEFT = 0.1
#: Back-off of failed renewals: first wait, cap (a fraction of the TTL caps it further).
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


class LeaseRefused(BackendError):
    """The store will not renew this lease (unknown, revoked, at its max TTL): re-mint, do not retry."""


@dataclass(frozen=True)
class Minted:
    """What a source mints: the credential (``value``, never logged), its lease and its TTL in seconds."""

    value: Any
    lease_id: str
    ttl: float
    renewable: bool = True
    #: False where the store cannot revoke (STS keys): they are left to expire, never counted as revoked.
    revocable: bool = True


class LeaseSource(Protocol):
    """What a backend implements to have its credentials leased (``name`` labels counts and messages)."""

    name: str

    def mint(self, key: str) -> Minted: ...

    def renew(self, lease_id: str, increment: float) -> float:
        """Extend the lease; the TTL granted (seconds). :class:`LeaseRefused` if it cannot be renewed."""
        ...

    def revoke(self, lease_id: str) -> None: ...


@dataclass
class Lease:
    """One held lease. ``value`` is the secret credential: it is never part of a repr or a summary."""

    key: str
    source: LeaseSource = field(repr=False)
    lease_id: str
    value: Any = field(repr=False)
    ttl: float
    renewable: bool
    revocable: bool
    granted_at: float  # monotonic time of the mint or the last renewal
    expires_at: float
    renewals: int = 0
    failures: int = 0
    next_at: float = 0.0  # when the renewer next looks at it
    last_error: str | None = None
    #: The manager's clock, the one its times above are on (a test's fake clock, or monotonic).
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def left(self, now: float | None = None) -> float:
        return self.expires_at - (self.clock() if now is None else now)

    def summary(self, now: float | None = None) -> str:
        """Lease id prefix, TTL left (at ``now``, by default the manager's clock's now), renewals (and the
        last renewal failure): safe to print."""
        shown = _prefix(self.lease_id)
        text = f"lease {shown} ttl_left={max(0.0, self.left(now)):.0f}s renewals={self.renewals}"
        if self.last_error:
            text += f" renew_failures={self.failures} last_error={self.last_error!r}"
        return text


def _prefix(lease_id: str) -> str:
    """A lease id's mount path and the first characters of its random part (enough to find it)."""
    if not lease_id:
        return "(no lease)"
    head, _, tail = lease_id.rpartition("/")
    return f"{head}/{tail[:6]}…" if head else f"{tail[:6]}…"


_counts: Counter[tuple[str, str]] = Counter()
_counts_lock = threading.Lock()
_EVENTS = {
    "minted": "lease_mint",
    "renewed": "lease_renewal",
    "revoked": "lease_revocation",
    "expired": "lease_expiration",
    "failed": "lease_failure",
}


def _count(event: str, backend: str, key: str = "") -> None:
    with _counts_lock:
        _counts[(event, backend)] += 1
    from credpath import _audit, metrics

    if metrics.on:
        metrics.auth_event(_EVENTS[event], backend)
    # One audit event per lease operation, by connection id: a key is "<alias>:<name>:<instance>:<conn_id>"
    # (LeasedIds.lease_key_prefix), and a connection id holds no ":". Never a secret.
    conn_id = key.rsplit(":", 1)[-1]
    _audit.record(
        "lease", "connection", conn_id, "error" if event == "failed" else "ok", backend=backend, action=event
    )


def counts(backend: str | None = None) -> dict[str, int]:
    """Lease events (minted, renewed, revoked, expired, failed) of ``backend`` (None: every backend)."""
    with _counts_lock:
        found: Counter[str] = Counter()
        for (event, name), n in _counts.items():
            if backend is None or name == backend:
                found[event] += n
    return {event: found.get(event, 0) for event in _EVENTS}


class LeaseManager:
    """The process's leases, their renewer thread and their revocation."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._leases: dict[str, Lease] = {}
        self._retired: list[Lease] = []  # superseded by a re-mint: revoked at exit if still alive
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._minting: dict[str, threading.Lock] = {}
        self._pid = os.getpid()

    # --- lookups -----------------------------------------------------------------------------------

    def get(self, key: str, source: LeaseSource) -> Any:
        """The credential for ``key``: the held one while enough of its TTL is left, else a new one."""
        with self._lock:
            lock = self._minting.setdefault(key, threading.Lock())
        with lock:  # concurrent first lookups of one id mint one lease
            with self._lock:
                lease = self._leases.get(key)
                now = self.clock()
                if lease is not None and lease.left(now) > MIN_LEFT * lease.ttl:
                    return lease.value
                if lease is not None:  # too close to expiry to hand out: replace it now
                    self._leases.pop(key, None)
                    self._retire(lease, now)
            fresh = self._mint(key, source)
            return fresh.value

    def _mint(self, key: str, source: LeaseSource) -> Lease:
        try:
            minted = source.mint(key)
        except Exception:
            _count("failed", source.name, key)
            raise
        now = self.clock()
        lease = Lease(
            key=key,
            source=source,
            lease_id=minted.lease_id,
            value=minted.value,
            ttl=max(float(minted.ttl), 0.001),
            renewable=minted.renewable and bool(minted.lease_id),
            revocable=minted.revocable and bool(minted.lease_id),
            granted_at=now,
            expires_at=now + max(float(minted.ttl), 0.001),
            clock=self.clock,
        )
        lease.next_at = now + RENEW_FRACTION * lease.ttl
        _count("minted", source.name, key)
        log.debug("leases: minted %s for %s (ttl %.0fs)", _prefix(lease.lease_id), key, lease.ttl)
        with self._lock:
            old = self._leases.get(key)
            if old is not None:
                self._retire(old, now)
            self._leases[key] = lease
            self._ensure_renewer()
            self._wake.notify_all()
        return lease

    def _retire(self, lease: Lease, now: float) -> None:
        if lease.left(now) > 0 and lease.revocable:
            self._retired.append(lease)
        elif lease.left(now) <= 0:
            _count("expired", lease.source.name, lease.key)

    def leases(self, prefix: str = "") -> list[Lease]:
        """The held leases whose key starts with ``prefix`` (for describe/explain)."""
        with self._lock:
            return [lease for key, lease in sorted(self._leases.items()) if key.startswith(prefix)]

    # --- renewal -----------------------------------------------------------------------------------

    def _ensure_renewer(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._renew_loop, name="credpath-leases", daemon=True)
            self._thread.start()

    def _renew_loop(self) -> None:
        while True:
            with self._lock:
                if os.getpid() != self._pid:
                    return
                now = self.clock()
                due = [lease for lease in self._leases.values() if lease.next_at <= now]
                if not due:
                    nexts = [lease.next_at for lease in self._leases.values()]
                    if not nexts:
                        self._thread = None
                        return
                    self._wake.wait(timeout=max(0.01, min(nexts) - now))
                    continue
            for lease in due:
                self._renew_one(lease)

    def _renew_one(self, lease: Lease) -> None:
        name = lease.source.name
        now = self.clock()
        with self._lock:
            if self._leases.get(lease.key) is not lease:
                return
        if lease.left(now) <= 0:
            _count("expired", name, lease.key)
            log.warning(
                "leases: %s for %s expired before it could be renewed", _prefix(lease.lease_id), lease.key
            )
            with self._lock:
                if self._leases.get(lease.key) is lease:
                    del self._leases[lease.key]
            return
        if not lease.renewable:
            self._remint(lease, "not renewable")
            return
        try:
            granted = lease.source.renew(lease.lease_id, lease.ttl)
        except LeaseRefused as exc:
            log.info("leases: renewal of %s refused (%s); minting a new one", _prefix(lease.lease_id), exc)
            _count("failed", name, lease.key)
            lease.last_error = _short(exc)
            self._remint(lease, "renewal refused")
            return
        except Exception as exc:
            _count("failed", name, lease.key)
            lease.failures += 1
            lease.last_error = _short(exc)
            wait = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(lease.failures - 1, 16), lease.ttl / 6)
            wait = wait * (0.5 + random.random() / 2)
            # Never retry past expiry: the last try is just before it.
            lease.next_at = min(self.clock() + wait, lease.expires_at - 0.05)
            if lease.next_at <= self.clock():
                lease.next_at = lease.expires_at + 0.001  # the next look finds it expired
            log.warning(
                "leases: renewing %s for %s failed (try %d, next in %.1fs): %s",
                _prefix(lease.lease_id),
                lease.key,
                lease.failures,
                max(0.0, lease.next_at - self.clock()),
                lease.last_error,
            )
            return
        now = self.clock()
        lease.renewals += 1
        lease.failures = 0
        lease.last_error = None
        _count("renewed", name, lease.key)
        lease.granted_at = now
        lease.expires_at = now + granted
        if granted < lease.ttl * (1 - RENEW_FRACTION):
            # The max TTL cut the grant short: the next renewal could not extend it; re-mint before expiry.
            lease.next_at = now + granted * RENEW_FRACTION
            lease.renewable = False
        else:
            lease.next_at = now + granted * RENEW_FRACTION

    def _remint(self, lease: Lease, why: str) -> None:
        try:
            self._mint(lease.key, lease.source)
        except Exception as exc:
            lease.failures += 1
            lease.last_error = _short(exc)
            wait = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(lease.failures - 1, 16), max(lease.ttl / 6, 0.05))
            lease.next_at = min(self.clock() + wait, lease.expires_at + 0.001)
            log.warning("leases: re-minting %s (%s) failed: %s", lease.key, why, lease.last_error)

    # --- revocation --------------------------------------------------------------------------------

    def revoke(self, prefix: str = "") -> int:
        """Revoke the held (and superseded, still live) leases whose key starts with ``prefix``; the count."""
        if os.getpid() != self._pid:
            return 0
        with self._lock:
            chosen = [lease for key, lease in self._leases.items() if key.startswith(prefix)]
            for lease in chosen:
                del self._leases[lease.key]
            retired = [lease for lease in self._retired if lease.key.startswith(prefix)]
            self._retired = [lease for lease in self._retired if not lease.key.startswith(prefix)]
            self._wake.notify_all()
        done = 0
        now = self.clock()
        for lease in chosen + retired:
            if not lease.revocable:
                continue
            if lease.left(now) <= 0:
                _count("expired", lease.source.name, lease.key)
                continue
            try:
                lease.source.revoke(lease.lease_id)
            except Exception as exc:
                _count("failed", lease.source.name, lease.key)
                log.warning(
                    "leases: revoking %s failed (it expires at its TTL): %s",
                    _prefix(lease.lease_id),
                    _short(exc),
                )
                continue
            _count("revoked", lease.source.name, lease.key)
            done += 1
        return done

    def after_fork(self) -> None:
        """A forked child holds none of its parent's leases (the parent renews and revokes them)."""
        self._leases = {}
        self._retired = []
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._thread = None
        self._minting = {}
        self._pid = os.getpid()


class LeasedIds:
    """What a lease-source backend shares: its keys in the manager, lookups, per-id detail, revocation.

    The backend sets ``self.lease_key_prefix`` (unique per backend instance) and implements the
    :class:`LeaseSource` methods; ids are connection ids. ``share`` (the backend's default) and an entry's
    ``share`` choose one lease per process (default), per node or per deployment
    (:mod:`credpath._lease_sharing`, through ``lease_tier``: the shared cache tier, set by the search path).
    """

    lease_key_prefix: str = ""
    share: str = "process"
    lease_tier: Any = None

    def lease_share(self, conn_id: str) -> str:
        entry = (getattr(self, "leases", None) or {}).get(conn_id) or {}
        return str(entry.get("share") or self.share)

    def leased(self, conn_id: str) -> Any:
        """The process's credential for ``conn_id`` (minted by ``self.mint`` on first use)."""
        share = self.lease_share(conn_id)
        if share != "process":
            from credpath import _lease_sharing

            return _lease_sharing.shared_get(self, conn_id, share)
        return _manager.get(self.lease_key_prefix + conn_id, self)  # type: ignore[arg-type]

    def conn_id_of(self, key: str) -> str:
        return key[len(self.lease_key_prefix) :]

    def lease_detail(self, conn_id: str) -> str | None:
        """The held lease of ``conn_id`` (id prefix, TTL left, renewals) for explain, or None."""
        for lease in _manager.leases(self.lease_key_prefix + conn_id):
            if lease.key == self.lease_key_prefix + conn_id:
                return lease.summary()
        if self.lease_share(conn_id) != "process":
            from credpath import _lease_sharing

            return _lease_sharing.detail(self.lease_key_prefix + conn_id)
        return None

    def lease_lines(self) -> str:
        """``; <id>: <lease summary>`` per held lease, for ``describe()``."""
        held = _manager.leases(self.lease_key_prefix)
        text = "".join(f"; {self.conn_id_of(lease.key)}: {lease.summary()}" for lease in held)
        if any(self.lease_share(conn_id) != "process" for conn_id in getattr(self, "leases", None) or {}):
            from credpath import _lease_sharing

            for key in _lease_sharing.manager().keys(self.lease_key_prefix):
                text += f"; {self.conn_id_of(key)}: {_lease_sharing.detail(key)}"
        return text

    def revoke_leases(self) -> int:
        """Revoke the leases this backend holds in this process; the count. Shared leases are only
        released (others may use them): they are never revoked here."""
        if any(self.lease_share(conn_id) != "process" for conn_id in getattr(self, "leases", None) or {}):
            from credpath import _lease_sharing

            _lease_sharing.release_all(self.lease_key_prefix)
        return _manager.revoke(self.lease_key_prefix)


def parse_entries(
    leases: Any,
    check: Callable[[str, dict[str, Any]], dict[str, Any]],
    config_error: Callable[[str], Exception],
    *,
    shorthand: str,
    known: frozenset[str],
) -> dict[str, dict[str, Any]]:
    """A source's ``leases`` setting (connection id -> entry): an entry is an object of ``known`` keys or
    a string, short for ``{shorthand: string}``; each is then checked by ``check(id, entry)``.

    JSON text is accepted too: Airflow's ``backend_kwargs`` arrive parsed, an environment variable may not."""
    if leases is None:
        return {}
    if isinstance(leases, str):
        try:
            leases = json.loads(leases)
        except ValueError:
            raise config_error("leases must be an object: connection id -> role or entry") from None
    if not isinstance(leases, dict):
        raise config_error("leases must be an object: connection id -> role or entry")
    checked: dict[str, dict[str, Any]] = {}
    for conn_id, raw in leases.items():
        where = f"leases.{conn_id}"
        entry = {shorthand: raw} if isinstance(raw, str) else raw
        if not isinstance(entry, dict):
            raise config_error(f"{where} must be a {shorthand} or an object with {shorthand!r}")
        unknown = sorted(set(entry) - known)
        if unknown:
            minted = " (the lease mints them)" if {"login", "password"} & set(unknown) else ""
            raise config_error(
                f"{where}: unknown key(s) {', '.join(unknown)}{minted}; known: {', '.join(sorted(known))}"
            )
        checked[str(conn_id)] = check(str(conn_id), entry)
    return checked


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


_manager = LeaseManager()


def manager() -> LeaseManager:
    """The process's lease manager."""
    return _manager


def revoke_all(prefix: str = "") -> int:
    """Revoke every lease this process holds (or those whose key starts with ``prefix``); the count."""
    return _manager.revoke(prefix)


atexit.register(revoke_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_manager.after_fork)
