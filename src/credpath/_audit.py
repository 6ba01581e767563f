"""The audit trail: one event per read (lookup, prefetch) and per write, delete, migrate item, rotation,
invalidation and lease operation, never a value.

Lookups arrive as their trace (:mod:`credpath._lookup.trace`): :func:`enable` subscribes :func:`_sink`,
which turns each lookup's ``Done`` into one event. Other operations call :func:`record`.

An event: ``time`` (UTC, ISO 8601), ``operation``, ``kind``, ``id``, ``team``, ``outcome`` (reads: hit,
miss, error, denied, stale; writes: ok, miss, error, denied), ``backend`` (what served it), ``tier``
(process, shared, store, stale), ``version`` (where the store gives one), ``latency_ms``, ``host``,
``pid``, ``user``, and inside an Airflow task ``dag_id``, ``task_id``, ``run_id``, ``try_number``,
``map_index``. ``error`` is an exception's class name (its message may carry a secret: never written).
``fingerprint``: only with a deployment key, ``HMAC-SHA256(key, value)``, so that equal values compare
equal without being recoverable (a plain hash of a short password is brute-forced in seconds).

Cost on the lookup: the event is a tuple put on a bounded deque; a writer thread formats and writes it.
A slow or full disk never blocks a lookup: when the queue is full the event is dropped, counted
(:func:`counters`) and a WARNING says so (once per minute). A failing sink is fail-open for the lookup and
fail-loud in the log (logger ``credpath.auditing``) and the counters.

Sinks: ``file`` (JSON lines, rotated by size, safe with many processes appending to one file),
``stdout``, ``logger`` (the ``credpath.audit`` logger at INFO: syslog, journald or any handler).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from credpath._lookup import trace as _trace
from credpath.errors import AccessDenied, ConfigError

__all__ = [
    "FIELDS",
    "AuditSettings",
    "configure",
    "counters",
    "disable",
    "enable",
    "flush",
    "inventory",
    "record",
    "setup",
]

log = logging.getLogger("credpath.auditing")  # about the audit trail itself (not in the trail)
audit_log = logging.getLogger("credpath.audit")  # the ``logger`` sink

SINKS = ("file", "stdout", "logger")
CACHED = ("all", "store")
#: The fields of an event, in the order written.
FIELDS = (
    "time",
    "operation",
    "kind",
    "id",
    "team",
    "outcome",
    "backend",
    "tier",
    "version",
    "latency_ms",
    "host",
    "pid",
    "user",
    "dag_id",
    "task_id",
    "run_id",
    "try_number",
    "map_index",
)
_ENV = "CREDPATH_AUDIT_"


@dataclass(frozen=True)
class AuditSettings:
    """The ``[audit]`` table (and ``CREDPATH_AUDIT_*``), validated by :meth:`from_mapping`."""

    enabled: bool = False
    sinks: tuple[str, ...] = ("file",)
    #: The JSON-lines file (default ``$CREDPATH_HOME/audit/audit.jsonl``).
    path: Path | None = None
    max_bytes: int = 50 * 1024 * 1024
    backups: int = 5
    #: "store" (default): reads that left the process (shared, store, stale tiers), and each task's first
    #: read of an id even from the process cache; its repeats from the process cache are not recorded.
    #: "all": every lookup, process-cache hits included.
    cached: str = "store"
    #: With cached="all", the fraction of repeated process-cache hits recorded (hot loops); the rest counted.
    sample: float = 1.0
    queue_size: int = 10_000
    #: OpenTelemetry spans (needs the ``otel`` extra).
    otel: bool = False
    #: The deployment key of value fingerprints (never in the toml: CREDPATH_AUDIT_FINGERPRINT_KEY or a file).
    fingerprint_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], source: str) -> AuditSettings:
        """Validate an ``[audit]`` table (or the env overlay, keys lower-cased without the prefix);
        ``source`` names where it came from in the one-line error."""
        allowed = {
            "enabled",
            "sinks",
            "path",
            "max_bytes",
            "backups",
            "cached",
            "sample",
            "queue_size",
            "otel",
            "fingerprint_key_file",
        }

        def name(key: str) -> str:  # "credpath.toml [audit] sample" or "CREDPATH_AUDIT_SAMPLE"
            return f"{source}{key.upper()}" if source.endswith("_") else f"{source} {key}"

        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(
                f"{name(unknown[0])}: unknown setting; expected one of {', '.join(sorted(allowed))}"
            )
        values: dict[str, Any] = {}
        for key in ("enabled", "otel"):
            if key in table:
                values[key] = _bool(table[key], name(key))
        if "sinks" in table:
            raw = table["sinks"]
            items = [s.strip() for s in raw.split(",")] if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(s, str) for s in items):
                raise ConfigError(f"{name('sinks')}: expected a list of {', '.join(SINKS)}")
            bad = [s for s in items if s not in SINKS]
            if bad:
                raise ConfigError(
                    f"{name('sinks')}: unknown sink {bad[0]!r} (choose from {', '.join(SINKS)})"
                )
            values["sinks"] = tuple(dict.fromkeys(s for s in items if s))
        if "path" in table:
            if not isinstance(table["path"], str) or not table["path"].strip():
                raise ConfigError(f"{name('path')}: expected the path of the audit file")
            values["path"] = Path(table["path"]).expanduser()
        for key, low in (("max_bytes", 1024), ("backups", 0), ("queue_size", 1)):
            if key in table:
                values[key] = _int(table[key], name(key), low)
        if "cached" in table:
            if table["cached"] not in CACHED:
                raise ConfigError(f"{name('cached')}: expected 'all' or 'store', got {table['cached']!r}")
            values["cached"] = table["cached"]
        if "sample" in table:
            values["sample"] = _rate(table["sample"], f"{name('sample')}")
        if "fingerprint_key_file" in table:
            key_file = Path(str(table["fingerprint_key_file"])).expanduser()
            try:
                values["fingerprint_key"] = key_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(
                    f"{name('fingerprint_key_file')}: cannot read it ({exc.strerror})"
                ) from None
            if not values["fingerprint_key"]:
                raise ConfigError(f"{name('fingerprint_key_file')}: the file is empty")
        return cls(**values)

    def with_env(self, env: Mapping[str, str]) -> AuditSettings:
        """These settings overlaid with ``CREDPATH_AUDIT_*`` (ENABLED, SINKS, PATH, MAX_BYTES, BACKUPS,
        CACHED, SAMPLE, QUEUE_SIZE, OTEL, FINGERPRINT_KEY, FINGERPRINT_KEY_FILE)."""
        table = {k[len(_ENV) :].lower(): v for k, v in env.items() if k.startswith(_ENV)}
        key = table.pop("fingerprint_key", None)
        overlay = AuditSettings.from_mapping(table, _ENV)
        values = {name: getattr(overlay, name) for name in table if name != "fingerprint_key_file"}
        if "fingerprint_key_file" in table:
            values["fingerprint_key"] = overlay.fingerprint_key
        if key:
            values["fingerprint_key"] = key.encode()
        return replace(self, **values) if values else self

    def file(self, env: Mapping[str, str] | None = None) -> Path:
        if self.path is not None:
            return self.path
        from credpath._settings import credpath_home

        return credpath_home(env) / "audit" / "audit.jsonl"


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _int(value: Any, name: str, low: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool | float) else None
    except ValueError:
        number = None
    if number is None or number < low:
        raise ConfigError(f"{name}: expected an integer >= {low}, got {value!r}")
    return number


def _rate(value: Any, name: str) -> float:
    try:
        rate = float(value) if not isinstance(value, bool) else -1.0
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"{name}: expected a rate between 0 and 1, got {value!r}")
    return rate


# --- state ---------------------------------------------------------------------------------------------

settings = AuditSettings()
_on = False  # events go to the sinks
_active = False  # events go to the sinks or to spans
_unsubscribe: Callable[[], None] | None = None
_queue: collections.deque[tuple[Any, ...]] = collections.deque()
_limit = settings.queue_size
_writer: _Writer | None = None
_local = threading.local()
_counts: collections.Counter[str] = collections.Counter()
_env_file: Path | None = None
_process_rate = 0.0  # the fraction of repeated process-cache hits recorded
_seen: set[tuple[Any, ...]] = set()  # (kind, id, team, task) recorded once: a task's first read
_otel: Any = None  # credpath._otel's sink, when spans are on


def _random() -> float:
    global _random
    import random

    _random = random.random  # imported when first sampled
    return random.random()


_pid = os.getpid()  # kept current across forks (register_at_fork below): getpid per event costs
_identity: tuple[str, str] | None = None


def identity() -> tuple[str, str]:
    """(host, user) of this process, looked up once (imported on first use: ``import credpath`` pays
    nothing for them)."""
    global _identity
    if _identity is None:
        import getpass
        import socket

        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry (a container's arbitrary uid)
            user = str(os.getuid()) if hasattr(os, "getuid") else ""
        _identity = (socket.gethostname(), user)
    return _identity


def counters() -> dict[str, int]:
    """Events ``written``, ``dropped`` (queue full), ``failed`` (a sink raised), ``sampled_out``."""
    return dict(_counts)


def setup(
    path: str | Path | None, env: Mapping[str, str] | None = None, *, default_file: bool = True
) -> AuditSettings:
    """Read ``[audit]`` of the credpath.toml at ``path`` (None: the default one if ``default_file``) and
    ``CREDPATH_AUDIT_*``, then :func:`configure`. Raises ConfigError (one line) on bad input.

    The settings builder's hook: :meth:`AuditSettings.from_mapping` (the table), ``.with_env`` (the
    variables), then :func:`configure`."""
    env = os.environ if env is None else env
    chosen = read_settings(path, env, default_file=default_file)
    configure(chosen, env)
    return chosen


def read_settings(
    path: str | Path | None, env: Mapping[str, str], *, default_file: bool = True
) -> AuditSettings:
    """The settings of ``[audit]`` in the credpath.toml at ``path`` overlaid with ``CREDPATH_AUDIT_*``."""
    from credpath._settings import config_path, read_toml

    env = os.environ if env is None else env
    file = Path(path).expanduser() if path is not None else config_path(env) if default_file else None
    table = read_toml(file).get("audit", {}) if file is not None else {}
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [audit] must be a table")
    base = AuditSettings.from_mapping(table, f"{file.name if file else 'config'} [audit]")
    if base.path is not None and file is not None and not base.path.is_absolute():
        base = replace(base, path=file.parent / base.path)
    chosen = base.with_env(env)
    return chosen


def configure(new: AuditSettings, env: Mapping[str, str] | None = None) -> None:
    """Apply ``new``: check the sinks now (an unwritable file: ConfigError), then (re)start or stop."""
    global settings, _env_file
    if new == settings and (_on or _otel is not None) == (new.enabled or new.otel):
        return
    target = new.file(env) if new.enabled and "file" in new.sinks else None
    if target is not None:
        _check_writable(target)
    if new.otel:
        from credpath import _otel as otel_module

        otel_module.check()
    disable()
    settings, _env_file = new, target
    if new.enabled or new.otel:
        enable()


def _check_writable(target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "ab"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"[audit] path: cannot write the audit file {str(target)!r} ({exc.strerror})"
        ) from None


def enable() -> None:
    """Start recording with the current :data:`settings` (tests and :func:`configure`)."""
    global _on, _active, _unsubscribe, _limit, _process_rate, _otel
    global _env_task
    _env_task = (0.0, _NO_TASK)
    _seen.clear()
    _limit = settings.queue_size
    _process_rate = 0.0 if settings.cached == "store" else settings.sample
    _on = settings.enabled
    if settings.otel:
        from credpath import _otel as otel_module

        _otel = otel_module.Spans()
    _active = _on or _otel is not None
    if _unsubscribe is None:
        _unsubscribe = _trace.subscribe(_sink)


def disable() -> None:
    """Stop recording; what is queued is written first."""
    global _on, _active, _unsubscribe, _otel, _writer
    if _unsubscribe is not None:
        _unsubscribe()
        _unsubscribe = None
    _on, _active, _otel = False, False, None
    flush()
    if _writer is not None:
        _writer.stopped = True  # the next start writes with the settings of then
        _writer = None


def flush(timeout: float = 5.0) -> None:
    """Write what is queued (tests, the CLI, exit)."""
    writer = _writer
    if writer is not None and writer.pid == os.getpid():
        writer.drain(timeout)


# --- the caller ----------------------------------------------------------------------------------------

_TASK_CONTEXT = "airflow.sdk.definitions._internal.contextmanager"
_last_task: tuple[Any, tuple[Any, ...]] = (None, ())
_NO_TASK: tuple[Any, ...] = (None, None, None, None, None)
#: The AIRFLOW_CTX_* variables, read at most this often (seconds): reading the environment costs more
#: than the rest of an event, and a process's variables change only when a task starts.
_ENV_RECHECK = 1.0
_env_task: tuple[float, tuple[Any, ...]] = (0.0, _NO_TASK)


def _task() -> tuple[Any, ...]:
    """(dag_id, task_id, run_id, try_number, map_index) of the Airflow task running here, else Nones.

    The Task SDK's context stack is set from before template rendering to the end of the task (the
    ``AIRFLOW_CTX_*`` variables only from ``execute``, and without map_index): read it first, without
    importing it; the variables serve a process that has them only (an operator's subprocess)."""
    global _last_task
    module = sys.modules.get(_TASK_CONTEXT)
    stack = getattr(module, "_CURRENT_CONTEXT", None) if module is not None else None
    if stack:
        context = stack[-1]
        if context is _last_task[0]:
            return _last_task[1]
        try:
            ti = context["ti"] if "ti" in context else context["task_instance"]
            found = (ti.dag_id, ti.task_id, ti.run_id, ti.try_number, ti.map_index)
        except Exception:
            found = _NO_TASK
        _last_task = (context, found)
        return found
    global _env_task
    now = time.monotonic()
    if now < _env_task[0]:
        return _env_task[1]
    env = os.environ
    dag = env.get("AIRFLOW_CTX_DAG_ID")
    if dag is None:
        _env_task = (now + _ENV_RECHECK, _NO_TASK)
        return _NO_TASK
    try_number = env.get("AIRFLOW_CTX_TRY_NUMBER")
    found = (
        dag,
        env.get("AIRFLOW_CTX_TASK_ID"),
        env.get("AIRFLOW_CTX_DAG_RUN_ID"),
        int(try_number) if try_number and try_number.isdigit() else try_number,
        None,
    )
    _env_task = (now + _ENV_RECHECK, found)
    return found


# --- recording -----------------------------------------------------------------------------------------

_OUTCOMES = {"found": "hit", "missing": "miss"}


def _sink(context: _trace.LookupContext, event: _trace.Event) -> None:
    """One event per lookup, at its ``Done``; ``Served`` and ``StoreCall`` say backend and version."""
    kind = type(event)
    if kind is _trace.Done:
        served = getattr(_local, "served", None)
        source = served[1] if served is not None and served[0] is context else None
        version = served[2] if served is not None and served[0] is context else None
        _local.served = None
        tier = event.tier  # type: ignore[union-attr]
        result = event.result  # type: ignore[union-attr]
        error = None
        if result == "error":
            exc = sys.exc_info()[1]  # done("error") runs in the lookup's except block
            outcome = "denied" if isinstance(exc, AccessDenied) else "error"
            error = type(exc).__name__ if exc is not None else None
        else:
            outcome = "stale" if tier == "stale" else _OUTCOMES.get(result, result)
        if _otel is not None:
            _otel.lookup(context, event, outcome, source, version, error)
        if not _on:
            return
        task = _task()
        if _process_rate < 1.0 and outcome != "error":
            # A task's first read of an id is always recorded, even from a cache it did not fill (a
            # forked parent's, a prefetch); its repeats are what cached="store" and sample leave out.
            seen = (context.kind, context.key, context.team, task)
            if seen in _seen:
                if tier == "process" and (_process_rate == 0.0 or _random() >= _process_rate):
                    _counts["sampled_out"] += 1
                    return
            else:
                if len(_seen) >= 100_000:
                    _seen.clear()
                _seen.add(seen)
        _put(
            (
                time.time(),
                "lookup",
                context.kind,
                context.key,
                context.team,
                outcome,
                source,
                tier,
                version,
                event.seconds,  # type: ignore[union-attr]
                _pid,
                task,
                error,
                getattr(event, "value", None),
                None,
            )
        )
    elif kind is _trace.Served:
        _local.served = (context, event.source, None)  # type: ignore[union-attr]
    elif kind is _trace.StoreCall:
        if event.version is not None and event.outcome == "hit":  # type: ignore[union-attr]
            _local.served = (context, event.backend, event.version)  # type: ignore[union-attr]
        if _otel is not None:
            _otel.store_call(context, event)
    elif _otel is not None:
        _otel.other(context, event)


_NOTHING: Any = object()


def record(
    operation: str,
    kind: str,
    key: str,
    outcome: str,
    *,
    backend: str | None = None,
    team: str | None = None,
    tier: str | None = None,
    version: str | None = None,
    seconds: float | None = None,
    value: Any = _NOTHING,
    error: BaseException | str | None = None,
    **facts: str | int | float | bool | list[str] | None,
) -> None:
    """One audit event for an operation that is not a lookup (write, delete, prefetch, migrate,
    rotate, invalidate, lease): never raises, costs one test while auditing is off.

    ``value`` is only fingerprinted (with a deployment key), never written; ``error`` only by its class
    name; ``facts`` are extra scalar fields (counts, a target backend): never a value."""
    if not _active:
        return
    try:
        if isinstance(error, BaseException):
            error = type(error).__name__
        item = (
            time.time(),
            operation,
            kind,
            key,
            team,
            outcome,
            backend,
            tier,
            version,
            seconds,
            _pid,
            _task(),
            error,
            None if value is _NOTHING else value,
            facts or None,
        )
        if _otel is not None:
            _otel.operation(item)
        if _on:
            _put(item)
    except Exception:  # auditing never fails the operation it records
        _counts["failed"] += 1
        log.warning("the audit trail could not record a %s event", operation, exc_info=True)


@contextlib.contextmanager
def timed(operation: str, kind: str, key: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Record one ``operation`` event around a block: outcome ok (or what the block sets in the yielded
    dict), error/denied when it raises; the latency measured. Cheap when auditing is off."""
    if not _active:
        yield {}
        return
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    try:
        yield extra
    except BaseException as exc:
        outcome = "denied" if isinstance(exc, AccessDenied) else "error"
        record(operation, kind, key, outcome, seconds=time.perf_counter() - started, error=exc, **fields)
        raise
    merged = {**fields, **extra}
    outcome = merged.pop("outcome", "ok")
    record(operation, kind, key, outcome, seconds=time.perf_counter() - started, **merged)


def _put(item: tuple[Any, ...]) -> None:
    writer = _writer
    if writer is None or writer.pid != _pid:
        writer = _start_writer()
    if len(_queue) >= _limit:
        _counts["dropped"] += 1
        writer.note_drop()
        return
    _queue.append(item)


def _start_writer() -> _Writer:
    global _writer
    with _start_lock:
        if _writer is None or _writer.pid != os.getpid():
            _queue.clear()  # a forked child does not write its parent's events twice
            _writer = _Writer(settings, _env_file)
            # Registered by each process that writes: Airflow's task runner forks, clears the atexit
            # handlers it inherited, and runs only those registered after the fork.
            atexit.register(_at_exit)
    return _writer


_start_lock = threading.Lock()


# --- formatting and writing ----------------------------------------------------------------------------


def _event(item: tuple[Any, ...], key: bytes | None) -> dict[str, Any]:
    """The event of a queued item, as a dict (the logger sink's ``credpath_audit`` record attribute)."""
    return json.loads(_Formatter(key).line(item))  # type: ignore[no-any-return]


class _Formatter:
    """Queued items to JSON lines. In a hot loop the same id is read again and again: the JSON of the
    fields that repeat (operation to version; the caller) is built once and reused, so that a line costs
    little more than its time and latency."""

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.middle: dict[tuple[Any, ...], str] = {}
        self.callers: dict[tuple[Any, ...], str] = {}
        self.second = -1
        self.second_text = ""

    def line(self, item: tuple[Any, ...]) -> str:
        stamp = item[0]
        second = int(stamp)
        if second != self.second:
            self.second = second
            self.second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        static = item[1:9]  # operation, kind, id, team, outcome, backend, tier, version
        middle = self.middle.get(static)
        if middle is None:
            if len(self.middle) > 10_000:
                self.middle.clear()
            fields = dict(zip(FIELDS[1:9], static, strict=True))
            middle = self.middle[static] = json.dumps(fields, separators=(",", ":"))[1:-1]
        caller_key = item[10:12]  # pid, task
        caller = self.callers.get(caller_key)
        if caller is None:
            pid, task = caller_key
            host, user = identity()
            fields = {"host": host, "pid": pid, "user": user, **dict(zip(FIELDS[13:], task, strict=True))}
            caller = self.callers[caller_key] = json.dumps(fields, separators=(",", ":"), default=str)[1:-1]
        seconds = item[9]
        latency = "null" if seconds is None else f"{seconds * 1000.0:.3f}"
        micros = int((stamp - second) * 1e6)
        text = f'{{"time":"{self.second_text}.{micros:06d}Z",{middle},"latency_ms":{latency},{caller}'
        error, value, facts = item[12], item[13], item[14]
        if error is None and facts is None and (value is None or self.key is None):
            return text + "}"
        rest: dict[str, Any] = {}
        if error is not None:
            rest["error"] = error
        if facts:
            rest.update((name, fact) for name, fact in facts.items() if name not in FIELDS)
        if self.key is not None and value is not None:
            rest["fingerprint"] = fingerprint(value, self.key)
        if rest:
            return text + "," + json.dumps(rest, separators=(",", ":"), default=str)[1:]
        return text + "}"


def fingerprint(value: Any, key: bytes) -> str:
    """HMAC-SHA256 of a value's canonical form under the deployment key (first 128 bits, hex)."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        text = json.dumps(to_dict(include_conn_id=False), sort_keys=True, default=str)
    else:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    import hashlib
    import hmac

    return "hmac-sha256:" + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


class _Writer:
    """The one thread that formats queued events and writes them to the sinks."""

    def __init__(self, chosen: AuditSettings, file: Path | None) -> None:
        self.pid = os.getpid()
        self.sinks = chosen.sinks
        self.formatter = _Formatter(chosen.fingerprint_key)
        self.file = _RotatingFile(file, chosen.max_bytes, chosen.backups) if file is not None else None
        self.idle = threading.Event()
        self.last_drop_warning = 0.0
        self.failing = False
        self.stopped = False
        self.thread = threading.Thread(target=self.run, name="credpath-audit", daemon=True)
        self.thread.start()

    def note_drop(self) -> None:
        now = time.monotonic()
        if now - self.last_drop_warning >= 60.0:
            self.last_drop_warning = now
            log.warning(
                "audit queue full (%d events): dropping events (%d dropped so far); the sink is too slow "
                "or [audit] sample is too high",
                _limit,
                _counts["dropped"],
            )

    def run(self) -> None:
        while not self.stopped:
            if not _queue:
                self.idle.set()
                time.sleep(0.02)
                _INVENTORY.publish()  # reads counted since the last publish, once it is due
                continue
            self.idle.clear()
            self.write_batch()

    def write_batch(self) -> None:
        lines: list[str] = []
        items: list[tuple[Any, ...]] = []
        line = self.formatter.line
        while _queue and len(lines) < 1000:
            item = _queue.popleft()
            try:
                lines.append(line(item))
                items.append(item)
            except Exception:
                _counts["failed"] += 1
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        try:
            if self.file is not None:
                self.file.write(text.encode())
            if "stdout" in self.sinks:
                sys.stdout.write(text)
                sys.stdout.flush()
            if "logger" in self.sinks:
                for text_line in lines:
                    audit_log.info("%s", text_line, extra={"credpath_audit": json.loads(text_line)})
        except Exception as exc:
            _counts["failed"] += len(lines)
            if not self.failing:
                self.failing = True
                log.error(
                    "the audit trail cannot write (%s): events are lost until it can", type(exc).__name__
                )
            return
        if self.failing:
            self.failing = False
            log.warning("the audit trail writes again")
        _counts["written"] += len(lines)
        _INVENTORY.add(items)
        _INVENTORY.publish()

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _queue and self.idle.is_set():
                return
            time.sleep(0.005)


class _RotatingFile:
    """Appends whole lines (O_APPEND: many processes may share the file) and rotates it by size under an
    advisory lock, so that two processes never rotate the same file twice."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.fd = -1
        self.inode = -1

    def _open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.inode = os.fstat(self.fd).st_ino

    def write(self, data: bytes) -> None:
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = -2
        if self.fd < 0 or current != self.inode:  # another process rotated it
            self._open()
        os.write(self.fd, data)
        if os.fstat(self.fd).st_size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        import fcntl

        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_ino == self.inode and os.fstat(self.fd).st_size >= self.max_bytes:
                    for n in range(self.backups - 1, 0, -1):
                        older = Path(f"{self.path}.{n}")
                        if older.exists():
                            os.replace(older, f"{self.path}.{n + 1}")
                    if self.backups:
                        os.replace(self.path, f"{self.path}.1")
                    else:
                        os.truncate(self.path, 0)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._open()


# --- the per-process inventory ---------------------------------------------------------------------------


class _Inventory:
    """Per id (kind, id): last read (when, by whom, from which tier), reads per minute over the last day,
    reads by tier, and the dags that read it: computed from the events written in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, items: Iterable[tuple[Any, ...]]) -> None:
        # A batch from a hot loop is mostly one id read again and again: count per group, then add.
        groups: collections.Counter[tuple[Any, ...]] = collections.Counter()
        last: dict[tuple[Any, ...], float] = {}
        for item in items:
            if item[1] == "lookup" and (item[5] == "hit" or item[5] == "stale"):
                group = (item[2], item[3], int(item[0] // 60), item[7], item[10], item[11])
                groups[group] += 1
                last[group] = item[0]
        if not groups:
            return
        with self.lock:
            for group, count in groups.items():
                kind, ident, _minute, tier, pid, task = group
                who = f"{task[0]}.{task[1]}" if task[0] else f"pid {pid}@{identity()[0]}"
                add_read(self.ids, kind, ident, last[group], tier, task[0], who, count)

    def publish(self, *, force: bool = False) -> int:
        """Publish the counts to the shared tier(s) (:mod:`credpath._usage`): at most every
        ``_usage.FLUSH_SECONDS`` (``force``: now, at exit), from the writer thread, never a lookup."""
        usage = sys.modules.get("credpath._usage")  # imported by a shared tier: none, nothing to do
        if usage is None or not (force or usage.due()):
            return 0
        with self.lock:
            rows = {
                key: {
                    **row,
                    "minutes": dict(row["minutes"]),
                    "tiers": dict(row["tiers"]),
                    "dags": set(row["dags"]),
                }
                for key, row in self.ids.items()
            }
        try:
            return int(usage.publish(rows, force=force))
        except Exception:  # counters never fail the trail
            _counts["failed"] += 1
            log.warning("the audit trail could not publish its read counters", exc_info=True)
            return 0

    def snapshot(self, now: float | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        with self.lock:
            return summarize(self.ids, time.time() if now is None else now)

    def clear(self) -> None:
        with self.lock:
            self.ids.clear()


def new_row() -> dict[str, Any]:
    """An id's counts before its first read (see :func:`add_read`)."""
    return {
        "last": 0.0,
        "by": "",
        "tier": "",
        "minutes": collections.Counter(),
        "tiers": collections.Counter(),
        "dags": set(),
    }


def add_read(
    ids: dict[tuple[str, str], dict[str, Any]],
    kind: str,
    ident: str,
    stamp: float,
    tier: str,
    dag: str | None,
    who: str,
    count: int = 1,
) -> None:
    """Count ``count`` reads into ``ids`` (in memory here; over a file in ``credpath audit report``)."""
    row = ids.get((kind, ident))
    if row is None:
        row = ids[(kind, ident)] = new_row()
    if stamp >= row["last"]:
        row["last"], row["by"], row["tier"] = stamp, who, tier
    minute = int(stamp // 60)
    minutes = row["minutes"]
    minutes[minute] += count
    if len(minutes) > 1500:  # keep a day
        for old in [m for m in minutes if m < minute - 1440]:
            del minutes[old]
    row["tiers"][tier] += count
    if dag:
        row["dags"].add(dag)


def add_event(ids: dict[tuple[str, str], dict[str, Any]], event: Mapping[str, Any]) -> None:
    """Count one event of an audit file (a read, else nothing) into ``ids``."""
    if event.get("operation") != "lookup" or event.get("outcome") not in ("hit", "stale"):
        return
    stamp = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
    dag = event.get("dag_id")
    who = f"{dag}.{event.get('task_id')}" if dag else f"pid {event.get('pid')}@{event.get('host')}"
    add_read(ids, event["kind"], event["id"], stamp, event.get("tier") or "", dag, who)


def summarize(
    ids: Mapping[tuple[str, str], Mapping[str, Any]], now: float
) -> dict[tuple[str, str], dict[str, Any]]:
    minute = int(now // 60)
    out = {}
    for ident, row in ids.items():
        out[ident] = {
            "last_read": row["last"],
            "last_by": row["by"],
            "last_tier": row["tier"],
            "reads_hour": sum(n for m, n in row["minutes"].items() if m > minute - 60),
            "reads_day": sum(n for m, n in row["minutes"].items() if m > minute - 1440),
            "tiers": dict(row["tiers"]),
            "dags": sorted(row["dags"]),
        }
    return out


_INVENTORY = _Inventory()


def inventory() -> dict[tuple[str, str], dict[str, Any]]:
    """Per (kind, id) read in this process: last_read (epoch seconds), last_by (dag.task or pid@host),
    last_tier, reads_hour, reads_day, tiers ({tier: reads}), dags."""
    flush(1.0)
    return _INVENTORY.snapshot()


def _at_exit() -> None:
    if _on:
        flush(2.0)
        _INVENTORY.publish(force=True)


def deployment_reads(
    search_path: Any, ids: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Per (kind, id) of ``ids``: the reads of every process of the deployment, from the shared tier's
    counters (see :mod:`credpath._usage`), summarized like :func:`inventory`; None without a shared tier
    that keeps counters. This process's counts are published first, so its own reads are included."""
    shared = getattr(search_path, "shared", None)
    if shared is None or not hasattr(getattr(shared, "store", None), "get_usage"):
        return None
    from credpath import _usage

    flush(1.0)
    _INVENTORY.publish(force=True)
    return summarize(_usage.deployment(shared, ids), time.time())


def _forked() -> None:
    global _pid
    _pid = os.getpid()
    _INVENTORY.__init__()  # type: ignore[misc]  # a child counts its own reads (and its lock is free)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def prefetch_facts(report: Any, ids: Iterable[str]) -> dict[str, Any]:
    """The fields of a prefetch batch's event: its outcome, counts and the ids asked for (never values)."""
    outcome = "error" if report.errors else "hit" if report.hits else "miss"
    facts: dict[str, Any] = {
        "outcome": outcome,
        "requested": report.requested,
        "hits": report.hits,
        "misses": report.misses,
        "errors": report.errors,
    }
    if ids:
        facts["ids"] = list(dict.fromkeys(ids))
    return facts


def report(
    events: Iterable[Mapping[str, Any]],
    search_path: Any,
    *,
    unused_days: int = 30,
    many_dags: int = 5,
    now: float | None = None,
    listed: Iterable[tuple[str, str, list[str]]] | None = None,
) -> dict[str, Any]:
    """``credpath audit report`` and the web's report panel (one implementation): ids the search path
    lists that were not read in ``unused_days`` (candidates for deletion), ids read by ``many_dags`` dags
    or more (candidates for splitting). Reads come from the trail's ``events``, plus the deployment's
    counters when a shared tier keeps them (a read in either counts). ``listed``: the ids to judge, else
    the search path's listing. Never a value."""
    reads: dict[tuple[str, str], dict[str, Any]] = {}
    oldest = None
    for event in events:
        if oldest is None and event.get("time"):
            oldest = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()
        add_event(reads, event)
    now = time.time() if now is None else now
    summary = summarize(reads, now)
    if listed is None:  # (kind, id, backends holding it); the web passes its cached listing
        listed = [
            (kind, ident, backends)
            for kind in ("connection", "variable")
            for ident, backends in sorted(search_path.list_ids(kind).found.items())
        ]
    listed = list(listed)
    ids = {(kind, ident) for kind, ident, _ in listed} | set(summary)
    deployed = deployment_reads(search_path, sorted(ids))
    for key, row in (deployed or {}).items():
        mine = summary.get(key)
        if mine is None or row["last_read"] > mine["last_read"]:
            merged = {**row, "dags": sorted(set(row["dags"]) | set(mine["dags"] if mine else []))}
            summary[key] = merged
        else:
            mine["dags"] = sorted(set(mine["dags"]) | set(row["dags"]))
    cutoff = now - unused_days * 86400
    unused: list[dict[str, Any]] = []
    for kind, ident, backends in listed:
        read = summary.get((kind, ident))
        if read is None or read["last_read"] < cutoff:
            last = None if read is None else datetime.fromtimestamp(read["last_read"], UTC).isoformat()
            unused.append({"kind": kind, "id": ident, "backends": backends, "last_read": last})
    shared = [
        {"kind": kind, "id": ident, "dags": row["dags"], "reads_day": row["reads_day"]}
        for (kind, ident), row in sorted(summary.items())
        if len(row["dags"]) >= many_dags
    ]
    return {
        "trail_since": None if oldest is None else datetime.fromtimestamp(oldest, UTC).isoformat(),
        "partial": oldest is None or oldest > cutoff,
        "deployment": deployed is not None,
        "unused": unused,
        "read_by_many_dags": shared,
    }
