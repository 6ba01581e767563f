"""Copy connections and variables from one backend to another: plan -> apply -> verify.

- **Plan**: list the source (filtered by ``include``/``exclude`` globs), read its values and the destination's
  current values (in batches where the backends have them, concurrently otherwise; the destination is read
  only for ids its listing shows), and decide per id: ``add``, ``change``, ``unchanged``, ``skip`` or
  ``conflict`` (per ``on_conflict``), or ``error`` when a value cannot be read. Values stay in memory;
  plans, reports and errors name ids and reasons only.
- **Apply**: write exactly what the plan says (concurrently, at most ``concurrency`` writes at once: halved
  when the store throttles, grown back by one per ``concurrency`` good writes), then verify (``verify``):
  ``"confirm"`` (default) takes a write the store confirmed (a :class:`~credpath.protocol.WriteConfirmation`:
  Vault KV v2's version, Secrets Manager's VersionId) as verified, and reads back only what the store did
  not confirm (or a connection format that may lose fields); ``"read"`` reads every written value back and
  compares it with the source (one read per row); ``"none"`` trusts the write. ``verified`` counts both.
- Connections compare by their fields (``extra`` as parsed JSON), not by serialisation, so a second run
  finds everything ``unchanged`` and writes nothing. An interrupted run leaves whole entries (each write is
  one store call); a re-run plans again and completes the rest.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from credpath import _reading as reading
from credpath.errors import ConfigError, CredpathError, Throttled, safe_reason
from credpath.model import Connection, Variable
from credpath.protocol import Backend, BaseBackend, Serialization, WriteConfirmation, supports

__all__ = [
    "ACTIONS",
    "FORMATS",
    "ON_CONFLICT",
    "READ_CHUNK",
    "VERIFY",
    "Action",
    "AdaptiveLimit",
    "Item",
    "ItemKind",
    "MigrationError",
    "Migrator",
    "OnConflict",
    "Plan",
    "ProgressCallback",
    "Report",
    "backend_name",
    "connection_key",
    "matches",
    "migrate",
    "parse_globs",
    "same_value",
]

log = logging.getLogger("credpath.migrate")

ItemKind = Literal["connection", "variable"]
Action = Literal["add", "change", "unchanged", "skip", "conflict", "error"]
OnConflict = Literal["skip", "overwrite", "fail"]
ACTIONS: tuple[Action, ...] = ("add", "change", "unchanged", "skip", "conflict", "error")
ON_CONFLICT: tuple[str, ...] = ("skip", "overwrite", "fail")
FORMATS: tuple[Serialization, ...] = ("uri", "json")
#: How written rows are verified (see the module docstring).
VERIFY: tuple[str, ...] = ("confirm", "read", "none")
#: Tries of one write the store throttles (each after a jittered back-off, with the limit halved).
THROTTLED_TRIES = 6
#: Ids per batch read handed to one worker (backends chunk further to their API limits).
READ_CHUNK = reading.READ_CHUNK

ProgressCallback = Callable[[str, int, int], None]  # (phase, advance, total of the phase)


class MigrationError(CredpathError):
    """The migration could not start (bad options or an unreadable source listing)."""


@dataclass
class Item:
    """One id in the plan. ``value`` (the source value) is never shown: not in repr, not in reports."""

    kind: ItemKind
    key: str
    action: Action
    reason: str = ""
    value: Any = field(default=None, repr=False)
    description: str | None = field(default=None, repr=False)
    status: str = "planned"  # planned | written | verified | failed | not written
    confirmation: WriteConfirmation | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.key,
            "action": self.action,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass
class Plan:
    source: str
    destination: str
    items: list[Item]
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for item in self.items:
            counts[item.action] += 1
        return counts

    def by_action(self, *actions: Action) -> list[Item]:
        return [i for i in self.items if i.action in actions]


#: The summary's buckets (each id in exactly one) and the plan action each bucket holds.
_ACTION_BUCKET: dict[str, str] = {
    "add": "added",
    "change": "changed",
    "unchanged": "unchanged",
    "skip": "skipped",
    "conflict": "conflicts",
    "error": "errors",
}
_BUCKETS = (*_ACTION_BUCKET.values(), "failed", "not_written")


def _audit_items(plan: Plan) -> None:
    """One audit event per migrated id: what was planned and what became of it (never a value)."""
    from credpath import _audit

    for item in plan.items:
        failed = item.action == "error" or item.status == "failed"
        outcome = "error" if failed else "ok"
        _audit.record(
            "migrate",
            item.kind,
            item.key,
            outcome,
            backend=plan.destination,
            source=plan.source,
            action=item.action,
            status=item.status or "",
        )


def _bucket(item: Item) -> str:
    if item.status == "failed":
        return "failed"
    if item.action in ("add", "change") and item.status == "not written":
        return "not_written"
    return _ACTION_BUCKET[item.action]


@dataclass
class Report:
    plan: Plan
    dry_run: bool
    options: dict[str, Any]
    written: int = 0
    verified: int = 0
    #: Of ``verified``: rows verified by the store's confirmation (the rest were read back).
    confirmed: int = 0
    #: Writes the store throttled (each retried), and the lowest write concurrency it came down to.
    throttled: int = 0
    lowest_concurrency: int = 0
    aborted: str | None = None
    apply_seconds: float = 0.0

    @property
    def failed(self) -> list[Item]:
        return [i for i in self.plan.items if i.status == "failed" or i.action in ("error", "conflict")]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.aborted else 0

    def summary(self) -> dict[str, int]:
        """Each id counted once, by what became of it: ``added + changed + unchanged + skipped +
        conflicts + errors + failed + not_written == total``. ``added``/``changed`` count the ids
        written and verified (the planned ones in a dry run); ``errors`` the ids that could not be read,
        ``failed`` the ids whose write or read-back failed, ``not_written`` the ids an aborted run left.
        ``written`` and ``verified`` count store calls that succeeded (a written id whose read-back
        differs is ``failed``)."""
        buckets = dict.fromkeys(_BUCKETS, 0)
        for item in self.plan.items:
            buckets[_bucket(item)] += 1
        return {"total": len(self.plan.items), **buckets, "written": self.written, "verified": self.verified}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.plan.source,
            "destination": self.plan.destination,
            "dry_run": self.dry_run,
            "options": self.options,
            "summary": self.summary(),
            "aborted": self.aborted,
            "verification": {
                "confirmed": self.confirmed,
                "read_back": self.verified - self.confirmed,
                "throttled": self.throttled,
                "lowest_concurrency": self.lowest_concurrency,
            },
            "seconds": {"plan": round(self.plan.seconds, 3), "apply": round(self.apply_seconds, 3)},
            "items": [i.to_dict() for i in self.plan.items],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def connection_key(conn: Connection) -> dict[str, Any]:
    """What makes two connections equal for a migration: every field, extra as parsed JSON."""
    data = conn.to_dict(include_conn_id=False)
    if data["login"] == "":
        data["login"] = None  # a URI cannot tell "" from no login; Airflow treats them alike
    return data


def same_value(kind: ItemKind, a: Any, b: Any) -> bool:
    if kind == "connection":
        return connection_key(a) == connection_key(b)
    return bool(a == b)


def matches(key: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """``fnmatch`` globs on ids, case-sensitive: included by any include (all when none), then excluded."""
    if include and not any(fnmatch.fnmatchcase(key, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(key, pattern) for pattern in exclude)


def backend_name(backend: Backend) -> str:
    return reading.name_of(backend)


class Migrator:
    """Plan and apply one migration from ``source`` to ``destination`` (backend objects)."""

    def __init__(
        self,
        source: Backend,
        destination: Backend,
        *,
        connections: bool = True,
        variables: bool = True,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        on_conflict: str = "skip",
        concurrency: int = 8,
        connection_format: Serialization = "json",
        progress: ProgressCallback | None = None,
        verify: str = "confirm",
    ) -> None:
        if source is destination:
            raise ConfigError("--from and --to are the same backend")
        if on_conflict not in ON_CONFLICT:
            raise ConfigError(f"--on-conflict must be one of {', '.join(ON_CONFLICT)}, got {on_conflict!r}")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or not 1 <= concurrency <= 256:
            raise ConfigError(f"--concurrency must be an integer 1-256, got {concurrency!r}")
        if connection_format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {connection_format!r}")
        if not connections and not variables:
            raise ConfigError("nothing to migrate: both connections and variables are switched off")
        if verify not in VERIFY:
            raise ConfigError(f"--verify must be one of {', '.join(VERIFY)}, got {verify!r}")
        self.verify = verify
        self.source = source
        self.destination = destination
        wanted: tuple[tuple[ItemKind, bool], ...] = (("connection", connections), ("variable", variables))
        self.kinds: list[ItemKind] = [k for k, on in wanted if on]
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.on_conflict = on_conflict
        self.concurrency = concurrency
        self.connection_format: Serialization = connection_format
        self.progress = progress
        self._check_capabilities()
        self._check_source_files()

    # --- options -------------------------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        return {
            "kinds": list(self.kinds),
            "include": list(self.include),
            "exclude": list(self.exclude),
            "on_conflict": self.on_conflict,
            "concurrency": self.concurrency,
            "format": self.connection_format,
            "verify": self.verify,
        }

    def _check_capabilities(self) -> None:
        src, dst = backend_name(self.source), backend_name(self.destination)
        for kind in self.kinds:
            if not supports(self.source, "list"):
                raise ConfigError(f"--from: backend {src!r} cannot list {kind}s, so it cannot be migrated")
            if not supports(self.destination, "write"):
                raise ConfigError(f"--to: backend {dst!r} cannot write {kind}s")
        # credpath backends take the documented ``serialization``; a foreign object writes its own way.
        self._serialization: dict[str, Any] = {"serialization": self.connection_format}
        if not isinstance(self.destination, BaseBackend):
            if "connection" in self.kinds and self.connection_format != "json":
                raise ConfigError(
                    f"--format {self.connection_format}: backend {dst!r} ({type(self.destination).__name__}) "
                    "is not a credpath backend, so it has no serialization choice; use --format json"
                )
            self._serialization = {}

    def _check_source_files(self) -> None:
        """A files source reads only the kinds it has a file for: a run that could only copy nothing is a
        configuration error, not "done, 0 items" (a kind without a file is left out when another has one)."""
        from credpath.backends.files import LocalFilesystemBackend

        if not isinstance(self.source, LocalFilesystemBackend):
            return
        files = {"connection": self.source.connections_file, "variable": self.source.variables_file}
        kept = [kind for kind in self.kinds if files[kind]]
        if not kept:
            settings = " or ".join(f"{kind}s_file_path" for kind in self.kinds)
            raise ConfigError(
                f"--from: backend {backend_name(self.source)!r} has no {settings} configured: "
                "nothing to migrate"
            )
        self.kinds = kept

    # --- reading (the one reader, credpath._reading) --------------------------------------------------

    def _list(self, backend: Backend, kind: ItemKind) -> list[str]:
        return reading.list_ids(backend, kind)

    def _read_many(
        self, pool: ThreadPoolExecutor, backend: Backend, kind: ItemKind, ids: list[str]
    ) -> dict[str, tuple[Any, str | None] | BaseException | None]:
        """{id: (value, description) | None (miss) | exception}, batched where the backend can."""
        results: dict[str, tuple[Any, str | None] | BaseException | None] = dict.fromkeys(ids)
        found = reading.read_many(backend, kind, ids, records=True, pool=pool, chunk=READ_CHUNK)
        for key, value in found.items():
            if isinstance(value, BaseException):
                results[key] = value
            elif isinstance(value, Variable):
                results[key] = (value.value, value.description)
            else:
                results[key] = (value, None)
        return results

    # --- plan ----------------------------------------------------------------------------------------

    def plan(self) -> Plan:
        started = time.perf_counter()
        items: list[Item] = []
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="credpath-plan") as pool:
            for kind in self.kinds:
                items.extend(self._plan_kind(pool, kind))
        plan = Plan(backend_name(self.source), backend_name(self.destination), items)
        plan.seconds = time.perf_counter() - started
        log.debug("plan %s -> %s: %s", plan.source, plan.destination, plan.counts())
        return plan

    def _plan_kind(self, pool: ThreadPoolExecutor, kind: ItemKind) -> list[Item]:
        ids = sorted(k for k in set(self._list(self.source, kind)) if matches(k, self.include, self.exclude))
        self._tick("plan", 0, len(ids))
        source_values = self._read_many(pool, self.source, kind, ids)
        # Listing the destination costs a few calls and spares one read per id it does not hold.
        existing = ids
        if supports(self.destination, "list"):
            present = set(self._list(self.destination, kind))
            existing = [k for k in ids if k in present]
        dest_values = self._read_many(pool, self.destination, kind, existing)
        items: list[Item] = []
        for key in ids:
            items.append(self._decide(kind, key, source_values.get(key), dest_values.get(key)))
        self._tick("plan", len(ids), len(ids))
        return items

    def _decide(self, kind: ItemKind, key: str, src: Any, dst: Any) -> Item:
        if isinstance(src, BaseException):
            return Item(kind, key, "error", f"reading the source failed: {safe_reason(src)}")
        if src is None:
            return Item(
                kind, key, "error", "listed by the source but not readable from it (deleted meanwhile?)"
            )
        value, description = src
        if kind == "connection":
            value = value.with_id(key)
        if isinstance(self.destination, BaseBackend) and not self.destination.wants(kind, key):
            return Item(kind, key, "error", f"the destination's {kind}s_lookup_pattern excludes this id")
        if isinstance(dst, BaseException):
            return Item(kind, key, "error", f"reading the destination failed: {safe_reason(dst)}", value)
        if dst is None:
            return Item(kind, key, "add", "", value, description)
        if same_value(kind, value, dst[0]):
            return Item(kind, key, "unchanged", "", value, description)
        if self.on_conflict == "overwrite":
            return Item(
                kind, key, "change", "differs in the destination; --on-conflict overwrite", value, description
            )
        if self.on_conflict == "fail":
            return Item(
                kind, key, "conflict", "differs in the destination; --on-conflict fail", value, description
            )
        return Item(kind, key, "skip", "differs in the destination; --on-conflict skip", value, description)

    # --- apply ---------------------------------------------------------------------------------------

    def apply(self, plan: Plan) -> Report:
        try:
            return self._apply(plan)
        finally:
            _audit_items(plan)

    def _apply(self, plan: Plan) -> Report:
        report = Report(plan=plan, dry_run=False, options=self.options)
        started = time.perf_counter()
        for item in plan.items:
            if item.action in ("unchanged", "skip"):
                item.status = "not written"
        conflicts = plan.by_action("conflict")
        if conflicts:
            report.aborted = f"{len(conflicts)} conflict(s) with --on-conflict fail; nothing was written"
            for item in plan.by_action("add", "change"):
                item.status = "not written"
            return report
        todo = plan.by_action("add", "change")
        limit = AdaptiveLimit(self.concurrency)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="credpath-write") as pool:
            self._tick("write", 0, len(todo))
            futures = [(item, pool.submit(self._write_within, limit, item)) for item in todo]
            for item, future in futures:
                try:
                    item.confirmation = future.result()
                except Exception as exc:
                    item.status = "failed"
                    item.reason = f"write failed: {safe_reason(exc)}"
                    # DEBUG only: the report (and the CLI's one line per failed id) says it already.
                    log.debug("%s %r: write failed: %s", item.kind, item.key, safe_reason(exc))
                else:
                    item.status = "written"
                    report.written += 1
                self._tick("write", 1, len(todo))
            report.throttled, report.lowest_concurrency = limit.throttles, limit.lowest
            written = [i for i in todo if i.status == "written"]
            if self.verify != "none":
                self._verify(pool, report, written)
        report.apply_seconds = time.perf_counter() - started
        return report

    def _verify(self, pool: ThreadPoolExecutor, report: Report, written: list[Item]) -> None:
        self._tick("verify", 0, len(written))
        unconfirmed: list[Item] = []
        for item in written:
            if self.verify == "confirm" and item.confirmation is not None and self._keeps_as_written(item):
                item.status = "verified"
                report.verified += 1
                report.confirmed += 1
            else:
                unconfirmed.append(item)
        self._tick("verify", len(written) - len(unconfirmed), len(written))
        for kind in self.kinds:
            batch = [i for i in unconfirmed if i.kind == kind]
            if not batch:
                continue
            back = self._read_many(pool, self.destination, kind, [i.key for i in batch])
            for item in batch:
                got = back.get(item.key)
                if isinstance(got, BaseException):
                    item.status = "failed"
                    item.reason = f"written, but reading it back failed: {safe_reason(got)}"
                elif got is None:
                    item.status = "failed"
                    item.reason = "written, but reading it back found nothing"
                elif not same_value(kind, item.value, got[0]):
                    item.status = "failed"
                    item.reason = "written, but the value read back differs (lossy format? try --format json)"
                else:
                    item.status = "verified"
                    report.verified += 1
            self._tick("verify", len(batch), len(written))

    def _keeps_as_written(self, item: Item) -> bool:
        """Whether the value a confirmed write stored reads back equal to the source's, decided locally:
        JSON keeps every field; a URI or a backend's own ``connection_format`` may not, so that value is
        parsed back as the destination would (False: read it back, the store's answer decides)."""
        destination = self.destination
        if item.kind != "connection" or not isinstance(destination, BaseBackend):
            return True
        if destination._connection_adapter is None and self.connection_format == "json":
            return True
        try:
            stored = destination.serialize_connection(item.value, self.connection_format)
            back = destination.deserialize_connection(item.key, stored)
        except Exception:
            return False
        if "structured" in type(destination).capabilities and destination._connection_adapter is None:
            back = replace(back, description=item.value.description)  # kept beside the URI
        return same_value("connection", item.value, back)

    def _write_within(self, limit: AdaptiveLimit, item: Item) -> WriteConfirmation | None:
        """One row's write within the adaptive limit; a throttled write is tried again after a back-off
        (the store refused it, so nothing was written)."""
        for attempt in range(THROTTLED_TRIES):
            epoch = limit.acquire()
            try:
                confirmation = self._write(item)
            except Throttled:
                limit.release(epoch, throttled=True)
                if attempt == THROTTLED_TRIES - 1:
                    raise
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))  # full jitter
                continue
            except BaseException:
                limit.release(epoch)
                raise
            limit.release(epoch)
            return confirmation
        return None  # pragma: no cover - the loop returns or raises

    def _write(self, item: Item) -> WriteConfirmation | None:
        """One write; the store's confirmation if it gave one (a foreign object's answer is not one)."""
        destination: Any = self.destination  # declares "write" (checked in __init__)
        keeps = isinstance(destination, BaseBackend) and destination.keeps_variable_descriptions
        if item.kind == "connection":
            answer = destination.set_connection(item.value, overwrite=True, **self._serialization)
        elif item.description and keeps:
            answer = destination.set_variable(
                item.key, item.value, overwrite=True, description=item.description
            )
        else:
            answer = destination.set_variable(item.key, item.value, overwrite=True)
        return answer if isinstance(answer, WriteConfirmation) else None

    def run(self, *, dry_run: bool = False) -> Report:
        plan = self.plan()
        if dry_run:
            return Report(plan=plan, dry_run=True, options=self.options)
        return self.apply(plan)

    def _tick(self, phase: str, advance: int, total: int) -> None:
        if self.progress is not None:
            self.progress(phase, advance, total)


class AdaptiveLimit:
    """At most ``limit`` writes at once, starting at ``ceiling``: halved when the store throttles, grown
    back by one after ``limit`` writes in a row went through (additive increase, multiplicative decrease,
    as TCP does). Writes started before a decrease do not decrease it again: one burst of throttling
    halves once, not once per write in flight."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = self.limit = self.lowest = ceiling
        self.active = self.throttles = 0
        self._good = 0
        self._epoch = 0  # decreases so far
        self._cond = threading.Condition()

    def acquire(self) -> int:
        with self._cond:
            while self.active >= self.limit:
                self._cond.wait()
            self.active += 1
            return self._epoch

    def release(self, epoch: int, *, throttled: bool = False) -> None:
        with self._cond:
            self.active -= 1
            if throttled:
                self.throttles += 1
                self._good = 0
                if epoch == self._epoch:
                    self._epoch += 1
                    self.limit = max(1, self.limit // 2)
                    self.lowest = min(self.lowest, self.limit)
            else:
                self._good += 1
                if self._good >= self.limit and self.limit < self.ceiling:
                    self.limit += 1
                    self._good = 0
            self._cond.notify_all()


def migrate(
    source: Backend,
    destination: Backend,
    *,
    dry_run: bool = False,
    **options: Any,
) -> Report:
    """Plan, and unless ``dry_run`` apply and verify, a migration between two backend objects."""
    return Migrator(source, destination, **options).run(dry_run=dry_run)


def parse_globs(values: Iterable[str]) -> tuple[str, ...]:
    """Accept repeated options and comma-separated lists: ``--include 'pg_*,mysql_*'``."""
    globs: list[str] = []
    for value in values:
        globs.extend(part.strip() for part in value.split(",") if part.strip())
    return tuple(globs)
