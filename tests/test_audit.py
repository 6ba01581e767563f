"""The audit trail: exactly one event per operation, per tier and per outcome; its sinks, settings and
failure modes (fail-open on the lookup, counted drops on a slow disk)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from credpath import _audit
from credpath._cache import CacheSettings
from credpath._resilience import BreakerSettings
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedTier, scope_of
from credpath.cli import cli
from credpath.errors import AccessDenied, BackendUnavailable, ConfigError
from credpath.model import Connection
from tests.conftest import assert_no_secret
from tests.memory_backend import MemoryBackend, Unreachable

URI = "postgres://user:s3cr3t-pw@db.example:5432/app"


class Trail:
    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self) -> list[dict[str, Any]]:
        _audit.flush()
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


def _reset() -> None:
    _audit.configure(_audit.AuditSettings())
    _audit._counts.clear()
    _audit._INVENTORY.clear()


@pytest.fixture
def trail(tmp_path: Path):
    _reset()
    path = tmp_path / "audit" / "audit.jsonl"
    _audit.configure(_audit.AuditSettings(enabled=True, path=path, cached="all"))
    yield Trail(path)
    _reset()


def path_of(*backends: tuple[str, Any], **cache: Any) -> SearchPath:
    settings = CacheSettings(**{"jitter": 0.0, **cache})
    return SearchPath(list(backends), cache=settings, breaker=BreakerSettings(enabled=False))


# --- lookups: one event each, per tier and outcome --------------------------------------------------------


def test_store_then_process_tier_hits_and_misses_one_event_each(trail: Trail) -> None:
    mem = MemoryBackend(connections={"db": URI}, variables={"v": "s3cr3t-v"}, config={"core.x": "1"})
    sp = path_of(("mem", mem))
    sp.get_connection("db")
    sp.get_connection("db")
    sp.get_variable("v")
    sp.get_variable("absent", None)
    sp.get_variable("absent", None)
    sp.get_config("core.x")
    events = trail.events()
    assert [(e["operation"], e["kind"], e["id"], e["outcome"], e["tier"], e["backend"]) for e in events] == [
        ("lookup", "connection", "db", "hit", "store", "mem"),
        ("lookup", "connection", "db", "hit", "process", "mem"),
        ("lookup", "variable", "v", "hit", "store", "mem"),
        ("lookup", "variable", "absent", "miss", "store", None),
        ("lookup", "variable", "absent", "miss", "process", None),
        ("lookup", "config", "core.x", "hit", "store", "mem"),
    ]
    first = events[0]
    assert set(_audit.FIELDS) <= set(first)
    assert first["pid"] == os.getpid() and first["host"] and first["user"]
    assert first["latency_ms"] > 0 and first["time"].endswith("Z")
    assert "fingerprint" not in first  # no deployment key: no fingerprint
    assert_no_secret(trail.path.read_text())


def test_error_and_denied_outcomes_one_event_each(trail: Trail) -> None:
    mem = MemoryBackend(variables={"v": "x"})
    sp = path_of(("mem", mem))
    mem.fail_with = RuntimeError("s3cr3t-in-message")  # a foreign error: its message is withheld
    with pytest.raises(BackendUnavailable):
        sp.get_variable("v")
    mem.fail_with = AccessDenied("backend mem: permission denied")
    with pytest.raises(AccessDenied):
        sp.get_variable("w")
    events = trail.events()
    assert [(e["id"], e["outcome"], e.get("error")) for e in events] == [
        ("v", "error", "BackendUnavailable"),
        ("w", "denied", "AccessDenied"),
    ]
    assert "s3cr3t" not in trail.path.read_text()


def test_stale_tier_one_event(trail: Trail) -> None:
    mem = MemoryBackend(variables={"v": "s3cr3t-old"})
    sp = path_of(("mem", mem), ttl=0.0, miss_ttl=0.0, stale_if_error=300.0)
    sp.get_variable("v")
    mem.fail_with = Unreachable("backend 'mem': HTTP 503")
    assert sp.get_variable("v") == "s3cr3t-old"
    events = trail.events()
    assert [(e["outcome"], e["tier"], e["backend"]) for e in events] == [
        ("hit", "store", "mem"),
        ("stale", "stale", "mem"),
    ]


def test_shared_tier_one_event(trail: Trail, tmp_path: Path) -> None:
    key = Fernet.generate_key()
    db = tmp_path / "shared.db"
    one = [("mem", MemoryBackend(variables={"v": "s3cr3t-shared"}))]
    two = [("mem", MemoryBackend(variables={"v": "s3cr3t-shared"}))]
    writer = SearchPath(
        one, cache=CacheSettings(jitter=0.0), shared=SharedTier(FileStore(db), [key], scope_of(one))
    )
    reader = SearchPath(
        two, cache=CacheSettings(jitter=0.0), shared=SharedTier(FileStore(db), [key], scope_of(two))
    )
    writer.get_variable("v")
    reader.get_variable("v")  # another process's answer: the shared tier
    assert [(e["outcome"], e["tier"]) for e in trail.events()] == [("hit", "store"), ("hit", "shared")]


# --- other operations ------------------------------------------------------------------------------------


def test_writes_deletes_one_event_each_with_outcome(trail: Trail) -> None:
    mem = MemoryBackend()
    sp = path_of(("mem", mem))
    sp.set_connection(Connection.from_uri(URI, conn_id="db"))
    sp.set_variable("v", "s3cr3t-value")
    sp.delete_variable("v")
    sp.delete_variable("v")
    sp.delete_connection("db")
    sp.set_connection(Connection(conn_id="dup", conn_type="http"))
    with pytest.raises(ConfigError):  # the store refuses: an error event
        sp.set_connection(Connection(conn_id="dup", conn_type="http"), overwrite=False)
    events = trail.events()
    assert [(e["operation"], e["kind"], e["id"], e["outcome"], e["backend"]) for e in events] == [
        ("write", "connection", "db", "ok", "mem"),
        ("write", "variable", "v", "ok", "mem"),
        ("delete", "variable", "v", "ok", "mem"),
        ("delete", "variable", "v", "miss", "mem"),
        ("delete", "connection", "db", "ok", "mem"),
        ("write", "connection", "dup", "ok", "mem"),
        ("write", "connection", "dup", "error", "mem"),
    ]
    assert "s3cr3t" not in trail.path.read_text()


def test_prefetch_one_event_per_batch(trail: Trail) -> None:
    mem = MemoryBackend(variables={"a": "1", "b": "2"})
    sp = path_of(("mem", mem))
    sp.prefetch(variables=["a", "b", "c"])
    events = trail.events()
    assert len(events) == 1
    event = events[0]
    assert (event["operation"], event["kind"], event["outcome"]) == ("prefetch", "variable", "hit")
    assert (event["requested"], event["hits"], event["misses"], event["ids"]) == (3, 2, 1, ["a", "b", "c"])


@pytest.mark.parametrize(
    ("operation", "call"),
    [
        (
            "migrate",
            lambda: _audit.record("migrate", "connection", "db", "ok", backend="vault", source="env"),
        ),
        ("rotate", lambda: _audit.record("rotate", "connection", "db", "ok", backend="vault", version="7")),
        ("invalidate", lambda: _audit.record("invalidate", "variable", "v", "ok", tier="shared")),
        ("lease", lambda: _audit.record("lease", "connection", "db", "ok", backend="vault", action="renew")),
    ],
)
def test_record_for_other_operations_one_event(trail: Trail, operation: str, call: Any) -> None:
    call()
    events = trail.events()
    assert len(events) == 1 and events[0]["operation"] == operation and events[0]["outcome"] == "ok"


def test_timed_records_errors_by_type_only(trail: Trail) -> None:
    with pytest.raises(ValueError), _audit.timed("rotate", "connection", "db", backend="vault"):
        raise ValueError("s3cr3t-in-message")
    [event] = trail.events()
    assert (event["outcome"], event["error"]) == ("error", "ValueError")
    assert "s3cr3t" not in trail.path.read_text()


def test_off_records_nothing(tmp_path: Path) -> None:
    _reset()
    sp = path_of(("mem", MemoryBackend(variables={"v": "1"})))
    sp.get_variable("v")
    _audit.record("migrate", "variable", "v", "ok")
    assert _audit._writer is None or not _audit._queue
    assert _audit.counters() == {}


# --- fingerprints, caller, sampling ------------------------------------------------------------------------


def test_fingerprint_only_with_key_equal_values_compare(tmp_path: Path) -> None:
    _reset()
    path = tmp_path / "a.jsonl"
    _audit.configure(_audit.AuditSettings(enabled=True, path=path, fingerprint_key=b"deployment-key"))
    try:
        sp = path_of(("mem", MemoryBackend(variables={"a": "s3cr3t-same", "b": "s3cr3t-same", "c": "other"})))
        for key in "abc":
            sp.get_variable(key)
        events = Trail(path).events()
    finally:
        _reset()
    prints = [e["fingerprint"] for e in events]
    assert prints[0] == prints[1] != prints[2]
    assert prints[0] == _audit.fingerprint("s3cr3t-same", b"deployment-key")
    assert prints[0] != _audit.fingerprint("s3cr3t-same", b"another-key")


def test_caller_from_airflow_env_and_task_sdk_context(trail: Trail, monkeypatch: pytest.MonkeyPatch) -> None:
    sp = path_of(("mem", MemoryBackend(variables={"v": "1"})))
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "etl")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "load")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__1")
    monkeypatch.setenv("AIRFLOW_CTX_TRY_NUMBER", "2")
    sp.get_variable("v")
    # The Task SDK's context stack (set from template rendering on) wins, and has map_index.
    module = types.ModuleType(_audit._TASK_CONTEXT)
    ti = types.SimpleNamespace(dag_id="etl", task_id="mapped", run_id="manual__1", try_number=1, map_index=3)
    module._CURRENT_CONTEXT = [{"ti": ti}]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, _audit._TASK_CONTEXT, module)
    sp.get_variable("v")
    callers = [
        (e["dag_id"], e["task_id"], e["run_id"], e["try_number"], e["map_index"]) for e in trail.events()
    ]
    assert callers == [("etl", "load", "manual__1", 2, None), ("etl", "mapped", "manual__1", 1, 3)]


def test_cached_store_skips_process_hits_and_sample_thins_them(tmp_path: Path) -> None:
    _reset()
    path = tmp_path / "a.jsonl"
    try:
        _audit.configure(_audit.AuditSettings(enabled=True, path=path, cached="store"))
        sp = path_of(("mem", MemoryBackend(variables={"v": "1"})))
        for _ in range(10):
            sp.get_variable("v")
        assert [e["tier"] for e in Trail(path).events()] == ["store"]
        # Another task in this process: its first read is recorded though the cache answers it.
        module = types.ModuleType(_audit._TASK_CONTEXT)
        ti = types.SimpleNamespace(dag_id="etl", task_id="t2", run_id="r", try_number=1, map_index=-1)
        module._CURRENT_CONTEXT = [{"ti": ti}]  # type: ignore[attr-defined]
        sys.modules[_audit._TASK_CONTEXT] = module
        try:
            for _ in range(10):
                sp.get_variable("v")
        finally:
            del sys.modules[_audit._TASK_CONTEXT]
        events = Trail(path).events()
        assert [(e["tier"], e["task_id"]) for e in events] == [("store", None), ("process", "t2")]
        _audit.configure(_audit.AuditSettings(enabled=True, path=path, cached="all", sample=0.25))
        for _ in range(2000):
            sp.get_variable("v")
        recorded = len(Trail(path).events()) - 2 - 1  # less the above, and this task's first read
        assert 300 < recorded < 700
        assert _audit.counters()["sampled_out"] >= 1300
    finally:
        _reset()


# --- sinks and failure modes -------------------------------------------------------------------------------


def test_file_rotates_by_size(tmp_path: Path) -> None:
    _reset()
    path = tmp_path / "a.jsonl"
    try:
        _audit.configure(_audit.AuditSettings(enabled=True, path=path, max_bytes=4096, backups=2))
        for n in range(300):
            _audit.record("write", "variable", f"k{n}", "ok")
            if n % 20 == 0:
                _audit.flush()
        _audit.flush()
    finally:
        _reset()
    files = sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith("a.jsonl") and not p.name.endswith("lock")
    )
    assert files == ["a.jsonl", "a.jsonl.1", "a.jsonl.2"]
    for name in files:
        for line in (tmp_path / name).read_text().splitlines():
            json.loads(line)  # whole lines only


def test_stdout_and_logger_sinks(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: Any) -> None:
    _reset()
    try:
        _audit.configure(_audit.AuditSettings(enabled=True, sinks=("stdout", "logger")))
        with caplog.at_level(logging.INFO, logger="credpath.audit"):
            _audit.record("write", "variable", "v", "ok")
            _audit.flush()
    finally:
        _reset()
    assert json.loads(capsys.readouterr().out)["id"] == "v"
    [entry] = [r for r in caplog.records if r.name == "credpath.audit"]
    assert json.loads(entry.getMessage())["operation"] == "write"
    assert entry.credpath_audit["id"] == "v"  # type: ignore[attr-defined]


def test_a_failing_sink_never_fails_a_lookup(
    trail: Trail, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    def broken(self: Any, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_audit._RotatingFile, "write", broken)
    sp = path_of(("mem", MemoryBackend(variables={"v": "1"})))
    with caplog.at_level(logging.WARNING, logger="credpath.auditing"):
        assert sp.get_variable("v") == "1"
        _audit.flush()
    assert _audit.counters()["failed"] == 1
    assert any("cannot write" in r.getMessage() for r in caplog.records)


def test_a_slow_disk_never_blocks_a_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    _reset()
    original = _audit._RotatingFile.write

    def slow(self: Any, data: bytes) -> None:
        time.sleep(0.5)
        original(self, data)

    monkeypatch.setattr(_audit._RotatingFile, "write", slow)
    try:
        _audit.configure(
            _audit.AuditSettings(enabled=True, path=tmp_path / "a.jsonl", cached="all", queue_size=50)
        )
        sp = path_of(("mem", MemoryBackend(variables={"v": "1"})))
        with caplog.at_level(logging.WARNING, logger="credpath.auditing"):
            started = time.perf_counter()
            for _ in range(2000):
                sp.get_variable("v")
            elapsed = time.perf_counter() - started
        assert elapsed < 0.4  # one write alone takes 0.5 s
        assert _audit.counters()["dropped"] >= 2000 - 50 - 1000
        assert any("audit queue full" in r.getMessage() for r in caplog.records)
    finally:
        _reset()


# --- settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"sinks": ["file", "kafka"]}, "credpath.toml [audit] sinks: unknown sink 'kafka'"),
        ({"sample": 1.5}, "credpath.toml [audit] sample: expected a rate between 0 and 1, got 1.5"),
        ({"sample": "often"}, "credpath.toml [audit] sample: expected a rate"),
        ({"cached": "some"}, "credpath.toml [audit] cached: expected 'all' or 'store'"),
        ({"queue_size": 0}, "credpath.toml [audit] queue_size: expected an integer >= 1"),
        ({"colour": "red"}, "credpath.toml [audit] colour: unknown setting"),
    ],
)
def test_from_mapping_refuses_bad_input_in_one_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _audit.AuditSettings.from_mapping(table, "credpath.toml [audit]")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_env_overlays_the_table() -> None:
    base = _audit.AuditSettings.from_mapping({"enabled": True, "sample": 0.5}, "t")
    env = {
        "CREDPATH_AUDIT_SAMPLE": "0.1",
        "CREDPATH_AUDIT_SINKS": "stdout,logger",
        "CREDPATH_AUDIT_FINGERPRINT_KEY": "k",
    }
    chosen = base.with_env(env)
    assert (chosen.enabled, chosen.sample, chosen.sinks, chosen.fingerprint_key) == (
        True,
        0.1,
        ("stdout", "logger"),
        b"k",
    )
    assert "fingerprint_key" not in repr(chosen) or "b'k'" not in repr(chosen)
    with pytest.raises(ConfigError, match=r"^CREDPATH_AUDIT_SAMPLE: expected a rate"):
        base.with_env({"CREDPATH_AUDIT_SAMPLE": "2"})


def _cli(tmp_path: Path, audit: str, env: dict[str, str] | None = None) -> Any:
    config = tmp_path / "credpath.toml"
    config.write_text('[[backends]]\ntype = "env"\n\n[audit]\n' + audit)
    runner = CliRunner()
    try:
        return runner.invoke(
            cli, ["--config", str(config), "variables", "get", "x", "--default", "d"], env=env or {}
        )
    finally:
        _reset()


@pytest.mark.parametrize(
    ("audit", "message"),
    [
        ('enabled = true\nsinks = ["file", "kafka"]\n', "sinks: unknown sink 'kafka'"),
        ("enabled = true\nsample = -1\n", "sample: expected a rate between 0 and 1"),
        (
            'enabled = true\npath = "/proc/credpath-audit/a.jsonl"\n',
            "[audit] path: cannot write the audit file",
        ),
    ],
)
def test_cli_bad_audit_settings_exit_2_in_one_line(tmp_path: Path, audit: str, message: str) -> None:
    result = _cli(tmp_path, audit)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_cli_with_audit_writes_the_lookup(tmp_path: Path) -> None:
    path = tmp_path / "trail.jsonl"
    result = _cli(tmp_path, f'enabled = true\npath = "{path}"\n')
    assert result.exit_code == 0, result.output
    [event] = [json.loads(line) for line in path.read_text().splitlines()]
    assert (event["operation"], event["kind"], event["id"], event["outcome"]) == (
        "lookup",
        "variable",
        "x",
        "miss",
    )


def test_failures_and_drops_are_in_the_metrics(trail: Trail, monkeypatch: pytest.MonkeyPatch) -> None:
    from credpath import metrics

    monkeypatch.setattr(_audit._RotatingFile, "write", lambda self, data: 1 / 0)
    _audit.record("write", "variable", "v", "ok")
    _audit.flush()
    body = metrics.prometheus_text()[0].decode()
    assert 'credpath_audit_events_total{fate="failed"} 1.0' in body


def test_a_migration_is_one_audit_event_per_id(tmp_path) -> None:
    from credpath._migrate import migrate

    trail = tmp_path / "migrate.jsonl"
    _audit.configure(_audit.AuditSettings(enabled=True, path=trail))
    try:
        source = MemoryBackend(
            connections={"a": "postgres://u:pw-s3cr3t@h/d", "b": "mysql://h/d"},
            variables={"v": "pw-s3cr3t-v"},
        )
        destination = MemoryBackend()
        destination.name = "dest"
        migrate(source, destination)
        _audit.flush()
    finally:
        _audit.configure(_audit.AuditSettings())
    text = trail.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    migrated = sorted(
        (e["kind"], e["id"], e["outcome"], e["action"]) for e in events if e["operation"] == "migrate"
    )
    assert migrated == [
        ("connection", "a", "ok", "add"),
        ("connection", "b", "ok", "add"),
        ("variable", "v", "ok", "add"),
    ]
    assert all(e["backend"] == "dest" for e in events if e["operation"] == "migrate")
    assert "s3cr3t" not in text
