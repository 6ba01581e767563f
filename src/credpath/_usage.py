"""Read counters per deployment: each process's per-id read counts, published to the shared tier.

The audit trail's writer thread counts each process's reads per id (:class:`credpath._audit._Inventory`:
last read, reads per minute over a day, tiers, dags). With a shared tier configured, it publishes them
here at most every :data:`FLUSH_SECONDS` and at exit, never on the lookup path; the web inventory, its
Access page and ``credpath audit report`` merge every process's record into the deployment's figures.

Records are counters only, never a value, and are kept like the tier's entries:

- named by an HMAC of (``usage``, kind, id) under the tier's name key: the store does not reveal which
  ids exist, and the reader (which knows the ids it lists) finds them without a scan;
- one record per (id, process), the process's cumulative counts: a publish replaces it, so a retry or a
  crash between two publishes never counts a read twice;
- sealed with the tier's Fernet keys, the payload naming its record and process: a writer without the
  key cannot forge a record, nor move one to another id or process (both are refused as unreadable).
  What it can do is replay a process's older record of the same id (its counts then go back to what they
  were, never beyond: the record is that process's own, and tokens older than :data:`KEEP` are refused) or
  delete records. Counters need no more than that: they are never served to a lookup, and an attacker
  with write access to the tier can already drop every cached entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["FLUSH_SECONDS", "KEEP", "UsageStore", "deployment", "publish", "register", "tiers"]

log = logging.getLogger("credpath.auditing")

#: Seconds between two publishes of a process's counters (and one more at exit).
FLUSH_SECONDS = 10.0
#: Seconds a record is kept after its last publish (the counters cover a day).
KEEP = 86400


class UsageStore(Protocol):
    """What a shared store adds for counters: records under a name, one per process (``field``)."""

    def put_usage(self, records: list[tuple[str, str, bytes]], keep_until: float) -> None: ...
    def get_usage(self, names: list[str]) -> dict[str, list[tuple[str, bytes]]]: ...


_tiers: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_lock = threading.Lock()
_field = ""
_field_pid = 0
_published: dict[
    tuple[str, str], tuple[float, int]
] = {}  # (kind, id) -> its row's last read when last published
_last = 0.0


def register(tier: Any) -> None:
    """Publish this process's counters to ``tier`` too (a :class:`credpath._shared_cache.SharedTier`)."""
    if hasattr(tier.store, "put_usage"):
        _tiers[id(tier)] = tier


def tiers() -> list[Any]:
    """The registered tiers, one per (store, key): two search paths over one tier publish once."""
    chosen: dict[tuple[str, bytes], Any] = {}
    for tier in list(_tiers.values()):
        chosen.setdefault((tier.description, tier._mac_key), tier)
    return list(chosen.values())


def name(tier: Any, kind: str, ident: str) -> str:
    message = json.dumps(["usage", kind, ident], separators=(",", ":")).encode("utf-8")
    return "u:" + hmac.new(tier._mac_key, message, hashlib.sha256).hexdigest()


def _process() -> str:
    """This process's record field: host, pid and a random part (pids are reused, hosts shared)."""
    global _field, _field_pid
    if _field_pid != os.getpid():
        import socket

        _field, _field_pid = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}", os.getpid()
        _published.clear()  # a forked child publishes its own reads only
    return _field


def due(now: float | None = None) -> bool:
    return bool(_tiers) and (time.monotonic() if now is None else now) - _last >= FLUSH_SECONDS


def publish(rows: Mapping[tuple[str, str], Mapping[str, Any]], *, force: bool = False) -> int:
    """Publish the rows (``_audit._Inventory.ids``) whose counts changed since the last publish; returns
    the records written. Never raises: a tier that fails is logged by the tier and skipped."""
    global _last
    if not _tiers:
        return 0
    with _lock:
        if not force and time.monotonic() - _last < FLUSH_SECONDS:
            return 0
        _last = time.monotonic()
        field = _process()
        changed = {key: row for key, row in rows.items() if _published.get(key) != _mark(row)}
        if not changed:
            return 0
        now = time.time()
        written = 0
        for tier in tiers():
            if not tier._available():
                continue
            records = []
            for (kind, ident), row in changed.items():
                record_name = name(tier, kind, ident)
                payload = {
                    "n": record_name,
                    "w": field,
                    "l": [row["last"], row["by"], row["tier"]],
                    "m": {str(m): n for m, n in row["minutes"].items() if m > int(now // 60) - 1440},
                    "t": dict(row["tiers"]),
                    "d": sorted(row["dags"]),
                }
                blob = tier._fernet.encrypt(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
                records.append((record_name, field, blob))
            try:
                tier.store.put_usage(records, now + KEEP)
            except Exception as exc:
                tier._failed(exc, "publishing read counters")
                continue
            written += len(records)
        if written:  # else (every tier down) the same rows go again at the next publish
            for key, row in changed.items():
                _published[key] = _mark(row)
        return written


def _mark(row: Mapping[str, Any]) -> tuple[float, int]:
    return float(row["last"]), int(sum(row["minutes"].values()))  # changes with every counted read


def deployment(tier: Any, ids: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every process's records of ``ids`` merged, in the shape of ``_audit._Inventory.ids`` (for
    ``_audit.summarize``). A record that does not open (another key, altered, moved, older than a day)
    is left out and counted as ``undecryptable``. Raises what the store raises (the caller shows it)."""
    from cryptography.fernet import InvalidToken

    from credpath._audit import new_row

    wanted = {name(tier, kind, ident): (kind, ident) for kind, ident in ids}
    if not wanted:
        return {}
    found = tier.store.get_usage(list(wanted))
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for record_name, records in found.items():
        key = wanted.get(record_name)
        if key is None:
            continue
        for field, blob in records:
            try:
                payload = json.loads(tier._fernet.decrypt(blob, ttl=KEEP))
                if payload["n"] != record_name or payload["w"] != field:
                    raise InvalidToken
                last, by, last_tier = payload["l"]
                minutes = {int(m): int(n) for m, n in payload["m"].items()}
                tier_counts = {str(t): int(n) for t, n in payload["t"].items()}
                dags = [str(d) for d in payload["d"]]
            except (InvalidToken, ValueError, KeyError, TypeError):
                tier.count("undecryptable")
                continue
            row = merged.get(key)
            if row is None:
                row = merged[key] = new_row()
            if float(last) >= row["last"]:
                row["last"], row["by"], row["tier"] = float(last), str(by), str(last_tier)
            row["minutes"].update(minutes)
            row["tiers"].update(tier_counts)
            row["dags"].update(dags)
    return merged


def reset() -> None:
    """Forget what was published (tests)."""
    global _last
    with _lock:
        _published.clear()
        _last = 0.0
