"""Shared leases: one lease per node (file tier) or per deployment (Redis tier), one renewer, hand-over.

Off by default (``share = "process"``: one lease per process, :mod:`credpath._leases`), because a database
user per task is the point of leasing. ``share = "node"`` or ``"deployment"`` trades that for one lease
that every process on the node (the file tier's cache file) or of the deployment (the Redis tier) uses:

- The record (lease id, credential, TTL, expiry, renewals, the renewer's id) lives in the shared tier under
  an HMAC'd name and is sealed with the tier's key like every entry; the store drops it at the lease's
  expiry, so no copy outlives the lease (this process's copy is never handed out with less than
  :data:`~credpath._leases.MIN_LEFT` of the TTL left).
- Exactly one process is the renewer: it holds the renewer lock (the tier's stampede lock, under the
  record's name) and keeps it with a heartbeat (the lock lives :func:`heartbeat` seconds, a fraction of
  the TTL, and is pushed on every third of it). It renews the SAME lease at two thirds of its TTL
  (``sys/leases/renew`` accepts any token allowed to renew), re-mints when renewal is refused or the max
  TTL cuts a grant short (or at two thirds for a non-renewable lease: STS), and publishes the result.
- Every other user looks at the lock every third of a heartbeat: a lock that ran out (the renewer died or
  hung), or whose holder is a dead process of this host, is taken over and the same lease renewed on.
- Nothing revokes a shared lease: not a task's end, not a process's exit (others may be using it). A
  leaving renewer releases the lock so a remaining user takes over at once; when the last user is gone
  the lease expires at its TTL, so shared roles should keep a short ``default_ttl``.
- The tier failing is not an outage: the lookup falls back to a lease of this process (logged once).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from credpath import _leases
from credpath.errors import BackendError, ConfigError

__all__ = [
    "SHARES",
    "SharedLeases",
    "check_share",
    "counts",
    "detail",
    "heartbeat",
    "manager",
    "release_all",
    "shared_get",
]

log = logging.getLogger("credpath.leases")

SHARES = ("process", "node", "deployment")
#: The renewer lock's life: this fraction of the lease's TTL, within these bounds (seconds).
HEARTBEAT_FRACTION = 1 / 8
HEARTBEAT_MIN = 0.5
HEARTBEAT_MAX = 30.0
#: The lock's life while the first mint is under way (the TTL is not known yet), at the least.
MINT_LOCK = 10.0


def check_share(value: Any, where: str, config_error: Any) -> str:
    """A ``share`` setting checked: one of :data:`SHARES` (one line naming the setting otherwise)."""
    if value is None:
        return "process"
    if not isinstance(value, str) or value.strip().lower() not in SHARES:
        raise config_error(f"{where} must be 'process' (default), 'node' or 'deployment'")
    return value.strip().lower()


def heartbeat(ttl: float) -> float:
    """Seconds the renewer lock lives without a heartbeat: how long a dead renewer goes unnoticed."""
    return min(HEARTBEAT_MAX, max(HEARTBEAT_MIN, ttl * HEARTBEAT_FRACTION))


_counts: Counter[str] = Counter()


def counts() -> dict[str, int]:
    """This process's shared-lease events: ``published`` (minted or renewed records), ``takeovers``,
    ``fallbacks`` (the tier failed: a process lease instead)."""
    return {name: _counts.get(name, 0) for name in ("published", "takeovers", "fallbacks")}


@dataclass
class Record:
    """The shared lease as the tier holds it (sealed). Times are wall-clock (processes share them)."""

    lease_id: str
    value: Any = field(repr=False)
    ttl: float
    expires_at: float
    renewable: bool
    revocable: bool
    next_at: float  # when the renewer next renews (or re-mints)
    renewals: int = 0
    failures: int = 0
    last_error: str | None = None
    renewer: str = ""

    def left(self, now: float | None = None) -> float:
        return self.expires_at - (time.time() if now is None else now)

    def usable(self, now: float | None = None) -> bool:
        return self.left(now) > _leases.MIN_LEFT * self.ttl

    def dump(self) -> dict[str, Any]:
        from credpath.model import Connection

        data = asdict(self)
        value = self.value
        data["value"] = {"c": asdict(value)} if isinstance(value, Connection) else {"v": value}
        return data

    @classmethod
    def load(cls, data: Any) -> Record | None:
        try:
            value = data["value"]
            if "c" in value:
                from credpath.model import Connection

                value = Connection(**value["c"])
            else:
                value = value["v"]
            return cls(**{**data, "value": value})
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class _Held:
    """One shared lease this process uses: where it lives, its last record, whether we renew it."""

    key: str
    source: Any = field(repr=False)
    tier: Any = field(repr=False)
    name: str
    share: str
    record: Record | None = None
    renewer: bool = False
    next_look: float = 0.0


class SharedLeases:
    """The process's shared leases and the thread that watches (and, as renewer, renews) them."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._owner = self._new_owner()
        self._stop = threading.Event()

    @staticmethod
    def _new_owner() -> str:
        from credpath._shared_cache import _HOST

        return f"{_HOST}:{os.getpid()}:{secrets.token_hex(4)}"

    # --- the tier: a record and its renewer lock ---------------------------------------------------

    def _read(self, held: _Held) -> Record | None:
        from credpath._shared_cache import open_record

        blob = held.tier.store.get(held.name)
        if blob is None:
            return None
        record = Record.load(open_record(held.tier, held.name, blob))
        if record is None or record.left() <= 0:
            return None
        return record

    def _publish(self, held: _Held, record: Record) -> None:
        from credpath._shared_cache import seal_record

        record.renewer = self._owner
        # The store drops the record when the lease expires: no copy outlives it.
        held.tier.store.put(held.name, seal_record(held.tier, held.name, record.dump()), record.expires_at)
        held.record = record
        _counts["published"] += 1

    def _take(self, held: _Held, lease: float) -> bool:
        """Take the renewer lock if it is free (or its holder is a dead process of this host).

        The holder is read first: a user looks every third of a heartbeat, and a read is cheaper than a
        write on both tiers."""
        from credpath._shared_cache import _died_here

        store = held.tier.store
        holder = store.holder(held.name)
        if holder == self._owner:
            return True
        if holder is not None:
            if not _died_here(holder):
                return False
            store.unlock(held.name, holder)  # only if it still holds it: no race with another taker
        return bool(store.lock(held.name, self._owner, lease))

    def _beat(self, held: _Held, lease: float) -> bool:
        extend = getattr(held.tier.store, "extend_lock", None)
        if extend is None:
            return False
        return bool(extend(held.name, self._owner, lease))

    # --- lookups -----------------------------------------------------------------------------------

    def get(self, key: str, source: Any, tier: Any, name: str, share: str) -> Any:
        """The shared credential: this process's copy, the tier's record, or (as renewer) a new lease."""
        if os.getpid() != self._pid:
            self.after_fork()
        held = self._held.get(key)
        if held is not None and held.record is not None and held.record.usable():
            return held.record.value  # the watcher keeps this copy in step with the tier's record
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held(key, source, tier, name, share)
            if held.record is not None and held.record.usable():
                return held.record.value
            record = self._read(held)
            if record is not None and record.usable():
                held.record = record
                if not held.renewer and self._take(held, heartbeat(record.ttl)):
                    self._became_renewer(held, "no renewer held it")
                self._ensure_thread()
                return record.value
            value = self._mint_or_wait(held)
            self._ensure_thread()
            return value

    def _mint_or_wait(self, held: _Held) -> Any:
        """No usable record: mint as the renewer, or wait (bounded) for the renewer's record."""
        timeout = float(getattr(held.source, "timeout", 0) or 0)
        lock_life = max(MINT_LOCK, timeout + 1.0)
        give_up = time.monotonic() + lock_life + 1.0
        pause = 0.01
        while True:
            if held.renewer or self._take(held, lock_life):
                held.renewer = True
                record = self._read(held)  # published between our look and the lock
                if record is not None and record.usable():
                    held.record = record
                    return record.value
                try:
                    record = self._mint(held)
                except BaseException:
                    held.renewer = False
                    held.tier.store.unlock(held.name, self._owner)
                    raise
                self._beat(held, heartbeat(record.ttl))
                return record.value
            record = self._read(held)
            if record is not None and record.usable():
                held.record = record
                return record.value
            if time.monotonic() >= give_up:
                raise BackendError(
                    f"the shared lease of {held.source.conn_id_of(held.key)!r} is being minted by another "
                    "process that has not published it yet"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)

    def _mint(self, held: _Held) -> Record:
        try:
            minted = held.source.mint(held.key)
        except Exception:
            _leases._count("failed", held.source.name, held.key)
            raise
        ttl = max(float(minted.ttl), 0.001)
        now = time.time()
        record = Record(
            lease_id=minted.lease_id,
            value=minted.value,
            ttl=ttl,
            expires_at=now + ttl,
            renewable=minted.renewable and bool(minted.lease_id),
            revocable=minted.revocable and bool(minted.lease_id),
            next_at=now + _leases.RENEW_FRACTION * ttl,
        )
        _leases._count("minted", held.source.name, held.key)
        log.debug(
            "leases: minted shared (%s) %s for %s (ttl %.0fs)",
            held.share,
            _leases._prefix(record.lease_id),
            held.key,
            ttl,
        )
        self._publish(held, record)
        return record

    def _became_renewer(self, held: _Held, why: str) -> None:
        held.renewer = True
        _counts["takeovers"] += 1
        log.info(
            "leases: this process now renews the shared lease %s of %s (%s)",
            _leases._prefix(held.record.lease_id if held.record else ""),
            held.key,
            why,
        )

    # --- the watcher: heartbeat, renewal, hand-over ---------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="credpath-shared-leases", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if os.getpid() != self._pid:
                return
            with self._lock:
                held_now = list(self._held.values())
            if not held_now:
                with self._lock:
                    if not self._held:
                        self._thread = None
                        return
            now = time.monotonic()
            soonest = now + HEARTBEAT_MAX / 3
            for held in held_now:
                if held.next_look <= now:
                    try:
                        self._tend(held)
                    except Exception as exc:  # the tier or the store failed: look again soon
                        log.warning(
                            "leases: tending the shared lease of %s failed: %s", held.key, _leases._short(exc)
                        )
                    ttl = held.record.ttl if held.record else MINT_LOCK
                    # Jittered so that many users do not all look at once.
                    held.next_look = time.monotonic() + heartbeat(ttl) / 3 * (0.8 + random.random() * 0.4)
                soonest = min(soonest, held.next_look)
            self._stop.wait(max(0.01, soonest - time.monotonic()))

    def _tend(self, held: _Held) -> None:
        with self._lock:
            if self._held.get(held.key) is not held:
                return
            record = self._read(held)
            if record is None:
                # Expired, or dropped (`cache clear`): nothing to renew; the next lookup mints.
                if held.record is not None and held.record.left() <= 0:
                    _leases._count("expired", held.source.name, held.key)
                held.record = None
                if held.renewer:
                    held.renewer = False
                    held.tier.store.unlock(held.name, self._owner)
                return
            held.record = record
            life = heartbeat(record.ttl)
            if held.renewer and not self._beat(held, life):
                held.renewer = False  # our lock ran out (we were paused) and someone else took it
                log.info("leases: another process renews the shared lease of %s now", held.key)
            if not held.renewer:
                if not self._take(held, life):
                    return
                self._became_renewer(held, "its renewer is gone")
            if time.time() >= record.next_at:
                self._renew(held, record)

    def _renew(self, held: _Held, record: Record) -> None:
        name = held.source.name
        if not record.renewable:
            self._remint(held, record, "not renewable")
            return
        try:
            granted = float(held.source.renew(record.lease_id, record.ttl))
        except _leases.LeaseRefused as exc:
            _leases._count("failed", name, held.key)
            log.info("leases: renewal of shared %s refused (%s); minting a new one", held.key, exc)
            self._remint(held, record, "renewal refused")
            return
        except Exception as exc:
            _leases._count("failed", name, held.key)
            record.failures += 1
            record.last_error = _leases._short(exc)
            wait = min(
                _leases.BACKOFF_CAP,
                _leases.BACKOFF_BASE * 2 ** min(record.failures - 1, 16),
                record.ttl / 6,
            )
            record.next_at = min(time.time() + wait * (0.5 + random.random() / 2), record.expires_at - 0.05)
            log.warning(
                "leases: renewing shared %s for %s failed (try %d): %s",
                _leases._prefix(record.lease_id),
                held.key,
                record.failures,
                record.last_error,
            )
            self._publish(held, record)  # the failure shows in every user's explain
            return
        now = time.time()
        record.renewals += 1
        record.failures = 0
        record.last_error = None
        record.expires_at = now + granted
        record.next_at = now + granted * _leases.RENEW_FRACTION
        if granted < record.ttl * (1 - _leases.RENEW_FRACTION):
            record.renewable = False  # the max TTL cut the grant short: re-mint before expiry
        _leases._count("renewed", name, held.key)
        self._publish(held, record)

    def _remint(self, held: _Held, record: Record, why: str) -> None:
        # The old lease is not revoked: other processes may have sessions open with it; it expires soon.
        try:
            self._mint(held)
        except Exception as exc:
            record.failures += 1
            record.last_error = _leases._short(exc)
            record.next_at = min(time.time() + max(record.ttl / 6, 0.05), record.expires_at)
            log.warning("leases: re-minting shared %s (%s) failed: %s", held.key, why, record.last_error)

    # --- detail and release --------------------------------------------------------------------------

    def detail(self, key: str) -> str | None:
        """Lease id prefix, TTL left, renewals, share and renewer (own/other): safe to print."""
        with self._lock:
            held = self._held.get(key)
        if held is None or held.record is None:
            return None
        record = held.record
        renewer = "own" if held.renewer else "other"
        text = (
            f"lease {_leases._prefix(record.lease_id)} ttl_left={max(0.0, record.left()):.0f}s "
            f"renewals={record.renewals} shared={held.share} renewer={renewer}"
        )
        if record.last_error:
            text += f" renew_failures={record.failures} last_error={record.last_error!r}"
        return text

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(key for key in self._held if key.startswith(prefix))

    def release(self, prefix: str = "") -> int:
        """Stop using the shared leases whose key starts with ``prefix``: never revoked (others use them);
        a renewer hands its lock back so a remaining user takes over at once. The count released."""
        if os.getpid() != self._pid:
            return 0
        with self._lock:
            chosen = [held for key, held in self._held.items() if key.startswith(prefix)]
            for held in chosen:
                del self._held[held.key]
        for held in chosen:
            if held.renewer:
                held.renewer = False
                try:
                    held.tier.store.unlock(held.name, self._owner)
                except Exception as exc:  # its lock runs out by itself within a heartbeat
                    log.debug("leases: releasing the renewer lock failed: %s", type(exc).__name__)
        return len(chosen)

    def after_fork(self) -> None:
        """A forked child uses none of its parent's shared leases until it looks them up itself."""
        self._held = {}
        self._lock = threading.RLock()
        self._thread = None
        self._pid = os.getpid()
        self._owner = self._new_owner()
        self._stop = threading.Event()


_shared = SharedLeases()
_fallback_warned: set[str] = set()


def shared_get(backend: Any, conn_id: str, share: str) -> Any:
    """``conn_id``'s credential from the lease ``backend`` shares per node or per deployment."""
    tier = getattr(backend, "lease_tier", None)
    label = getattr(backend, "label", None) or f"backend {backend.name!r}"
    if tier is None:
        where = "on a file ([cache] shared = 'file')"
        if share == "deployment":
            where = "on Redis ([cache] shared = <url>)"
        raise ConfigError(f"{label}: leases.{conn_id}.share = {share!r} needs the shared cache tier {where}")
    on_file = str(getattr(tier, "description", "")).startswith("file ")
    if share == "node" and not on_file:
        raise ConfigError(
            f"{label}: leases.{conn_id}.share = 'node' needs the file tier ([cache] shared = 'file'); "
            "with Redis use share = 'deployment'"
        )
    if share == "deployment" and on_file:
        raise ConfigError(
            f"{label}: leases.{conn_id}.share = 'deployment' needs a Redis tier ([cache] shared = URL); "
            "the file tier is one node's"
        )
    key = backend.lease_key_prefix + conn_id
    name = tier.name(("lease", f"{backend.name}\0{conn_id}", None))
    try:
        return _shared.get(key, backend, tier, name, share)
    except (ConfigError, BackendError):
        raise
    except Exception as exc:  # the tier itself failed: serve from a lease of this process
        if isinstance(getattr(exc, "__cause__", None), ConfigError):
            raise
        _counts["fallbacks"] += 1
        if key not in _fallback_warned:
            _fallback_warned.add(key)
            log.warning(
                "leases: the shared tier failed (%s); %s gets a lease of this process",
                type(exc).__name__,
                conn_id,
            )
        with _shared._lock:
            _shared._held.pop(key, None)
        return _leases.manager().get(key, backend)


def detail(key: str) -> str | None:
    """The shared lease of ``key`` as :meth:`SharedLeases.detail` shows it, or None."""
    return _shared.detail(key)


def release_all(prefix: str = "") -> int:
    """Stop using (never revoke) this process's shared leases: at exit and when an Airflow task ends."""
    return _shared.release(prefix)


def manager() -> SharedLeases:
    """The process's shared leases."""
    return _shared


atexit.register(release_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_shared.after_fork)
