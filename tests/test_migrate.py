"""credpath._migrate over real stores: every source/destination pair, idempotence, interruption, options.

Sources are seeded with each store's native client (or its file / environment), destinations are read back
with a fresh backend. Each pair moves a few entries; the heavier tests use the metastore, OpenBao and moto.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath._migrate import Migrator, connection_key, matches, migrate
from credpath.backends.metastore import MetastoreBackend
from credpath.errors import ConfigError
from credpath.model import Connection
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao, RequestLog

CONNS: dict[str, Connection] = {
    "mig1pg": Connection(
        conn_id="mig1pg",
        conn_type="postgres",
        description="main warehouse",
        host="db.example.com",
        login="etl",
        password="pw-s3cr3t-1",
        schema="analytics",
        port=5432,
        extra=json.dumps({"sslmode": "require", "timeout": "30"}),
    ),
    "mig2http": Connection(
        conn_id="mig2http",
        conn_type="http",
        host="api.example.com",
        password="tok-s3cr3t-2",
        extra=json.dumps({"api_key": "key-s3cr3t-2", "retries": 3}),
    ),
    "mig3aws": Connection(conn_id="mig3aws", conn_type="aws", login="AKIAEXAMPLE", password="aws-s3cr3t-3"),
}
VARS: dict[str, str] = {"mig1var": "plain value", "mig2json": json.dumps({"a": 1, "token": "t-s3cr3t-4"})}

SOURCES = ["metastore", "files", "env", "vault", "aws-secrets-manager", "aws-ssm", "gcp-secret-manager",
           "azure-key-vault"]  # fmt: skip
DESTINATIONS = [
    "metastore",
    "vault",
    "aws-secrets-manager",
    "aws-ssm",
    "gcp-secret-manager",
    "azure-key-vault",
]
PAIRS = [(s, d) for s in SOURCES for d in DESTINATIONS if s != d]
HARNESS_FIXTURES = {
    "vault": "vault_harness",
    "aws-secrets-manager": "aws_secrets_manager_harness",
    "aws-ssm": "aws_ssm_harness",
    "gcp-secret-manager": "gcp_secret_manager_harness",
    "azure-key-vault": "azure_key_vault_harness",
}


@dataclass
class Store:
    """A store under test: ``make()`` builds a fresh backend on it, ``seed()`` fills it natively."""

    name: str
    make: Callable[[], Any]
    seed: Callable[[dict[str, Connection], dict[str, str]], None]


def _metastore(tmp_path: Path, label: str) -> Store:
    url = f"sqlite:///{tmp_path / f'{label}.db'}"
    key = Fernet.generate_key().decode()

    def make() -> MetastoreBackend:
        return MetastoreBackend(url=url, fernet_key=key)

    def seed(conns: dict[str, Connection], variables: dict[str, str]) -> None:
        backend = make()
        for conn in conns.values():
            backend.set_connection(conn)
        for key_name, value in variables.items():
            backend.set_variable(key_name, value)
        backend.close()

    return Store("metastore", make, seed)


def _files(tmp_path: Path) -> Store:
    from credpath.backends.files import LocalFilesystemBackend

    conn_file, var_file = tmp_path / "connections.json", tmp_path / "variables.json"

    def seed(conns: dict[str, Connection], variables: dict[str, str]) -> None:
        conn_file.write_text(
            json.dumps({k: c.to_dict(include_conn_id=False, prune_empty=True) for k, c in conns.items()})
        )
        var_file.write_text(json.dumps(variables))

    def make() -> LocalFilesystemBackend:
        return LocalFilesystemBackend(connections_file_path=str(conn_file), variables_file_path=str(var_file))

    return Store("files", make, seed)


def _env(monkeypatch: pytest.MonkeyPatch) -> Store:
    from credpath.backends.env import EnvironmentBackend

    for name in list(os.environ):
        if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")):
            monkeypatch.delenv(name)

    def seed(conns: dict[str, Connection], variables: dict[str, str]) -> None:
        for conn_id, conn in conns.items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn.to_json())
        for key_name, value in variables.items():
            monkeypatch.setenv(f"AIRFLOW_VAR_{key_name.upper()}", value)

    return Store("env", EnvironmentBackend, seed)


def _harnessed(name: str, harness: Any) -> Store:
    def seed(conns: dict[str, Connection], variables: dict[str, str]) -> None:
        for conn_id, conn in conns.items():
            harness.seed("connection", conn_id, conn.to_json())
        for key_name, value in variables.items():
            harness.seed("variable", key_name, value)

    return Store(name, harness.make_backend, seed)


@pytest.fixture
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, str], Store]:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "credpath-home"))

    def factory(name: str, label: str) -> Store:
        if name == "metastore":
            return _metastore(tmp_path, label)
        if name == "files":
            return _files(tmp_path)
        if name == "env":
            return _env(monkeypatch)
        return _harnessed(name, request.getfixturevalue(HARNESS_FIXTURES[name]))

    return factory


def _assert_holds(backend: Any, conns: dict[str, Connection], variables: dict[str, str]) -> None:
    for conn_id, conn in conns.items():
        got = backend.get_connection(conn_id)
        assert got is not None, f"connection {conn_id} missing"
        assert connection_key(got) == connection_key(conn), f"connection {conn_id} differs"
    for key_name, value in variables.items():
        assert backend.get_variable(key_name) == value, f"variable {key_name} differs"


class WriteCounter:
    """Counts set_connection/set_variable calls on one backend object (credpath-level writes)."""

    def __init__(self, backend: Any) -> None:
        self.count = 0
        for method in ("set_connection", "set_variable"):
            original = getattr(backend, method)
            setattr(backend, method, self._wrap(original))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        return counted


@pytest.mark.parametrize(("src_name", "dst_name"), PAIRS, ids=[f"{s}->{d}" for s, d in PAIRS])
def test_migrate_between_every_pair(
    store_factory: Callable[[str, str], Store], src_name: str, dst_name: str
) -> None:
    src, dst = store_factory(src_name, "src"), store_factory(dst_name, "dst")
    src.seed(CONNS, VARS)
    report = migrate(src.make(), dst.make(), concurrency=4)
    assert report.exit_code == 0, [i.to_dict() for i in report.failed]
    summary = report.summary()
    assert (summary["added"], summary["written"], summary["verified"]) == (5, 5, 5)
    _assert_holds(dst.make(), CONNS, VARS)

    # Second run: nothing to do, and no write reaches the destination.
    destination = dst.make()
    writes = WriteCounter(destination)
    again = migrate(src.make(), destination)
    assert again.summary()["unchanged"] == 5 and again.written == 0 and writes.count == 0
    assert_no_secret(report.to_json() + again.to_json())


# --- idempotence, counted at the API ---------------------------------------------------------------


def _seed_metastore(tmp_path: Path, n_conns: int, n_vars: int) -> MetastoreBackend:
    backend = MetastoreBackend(
        url=f"sqlite:///{tmp_path / 'src.db'}", fernet_key=Fernet.generate_key().decode()
    )
    for i in range(n_conns):
        backend.set_connection(
            Connection(
                conn_id=f"conn_{i:04d}",
                conn_type="postgres",
                host=f"db{i}.example.com",
                login="etl",
                password=f"pw-s3cr3t-{i}",
                port=5432,
                schema="app",
                extra=json.dumps({"sslmode": "require"}),
            )
        )
    for i in range(n_vars):
        backend.set_variable(f"var_{i:03d}", f"value-{i}")
    return backend


def test_idempotent_into_secrets_manager_zero_writes(
    aws_secrets_manager_harness: Any, tmp_path: Path
) -> None:
    source = _seed_metastore(tmp_path, 30, 10)
    first = aws_secrets_manager_harness.make_backend()
    report = migrate(source, first, concurrency=8)
    assert report.summary()["verified"] == 40 and report.exit_code == 0
    creates = first.aws.calls["CreateSecret"]
    assert creates == 40 and first.aws.calls["PutSecretValue"] == 0  # one call per new entry

    second = aws_secrets_manager_harness.make_backend()
    again = migrate(source, second, concurrency=8)
    assert again.summary()["unchanged"] == 40 and again.written == 0
    calls = dict(second.aws.calls)
    assert not {"CreateSecret", "PutSecretValue", "UpdateSecret", "RestoreSecret"} & set(calls), calls
    # The plan reads in batches: a listing page per kind and BatchGetSecretValue per 20 ids.
    assert calls.get("BatchGetSecretValue", 0) == 2 + 1 and calls.get("GetSecretValue", 0) == 0, calls


def test_idempotent_into_vault_zero_writes(vault_harness: Any, tmp_path: Path) -> None:
    source = _seed_metastore(tmp_path, 20, 5)
    assert migrate(source, vault_harness.make_backend(), concurrency=4).summary()["verified"] == 25
    destination = vault_harness.make_backend()
    log = RequestLog().attach(destination)
    again = migrate(source, destination, concurrency=4)
    assert again.summary()["unchanged"] == 25 and again.written == 0
    assert not [r for r in log.requests if r.startswith(("POST", "PUT", "DELETE"))]


# --- options -------------------------------------------------------------------------------------------


def test_conflicts_skip_overwrite_fail_and_dry_run(vault_harness: Any, tmp_path: Path) -> None:
    source = _seed_metastore(tmp_path, 3, 1)
    destination = vault_harness.make_backend()
    changed = Connection(
        conn_id="conn_0001", conn_type="postgres", host="other.example.com", password="x-s3cr3t"
    )
    destination.set_connection(changed)
    destination.set_variable("var_000", "different")

    dry = migrate(source, destination, dry_run=True)
    assert dry.dry_run and dry.written == 0
    assert {i.key: i.action for i in dry.plan.items} == {
        "conn_0000": "add", "conn_0001": "skip", "conn_0002": "add", "var_000": "skip"
    }  # fmt: skip
    assert destination.get_connection("conn_0000") is None  # the dry run wrote nothing

    failing = migrate(source, destination, on_conflict="fail")
    assert failing.exit_code == 1 and failing.aborted and failing.written == 0
    assert {i.key for i in failing.failed} == {"conn_0001", "var_000"}
    assert destination.get_connection("conn_0000") is None

    skipped = migrate(source, destination)
    assert skipped.exit_code == 0 and skipped.written == 2
    assert destination.get_connection("conn_0001").host == "other.example.com"  # type: ignore[union-attr]

    overwritten = migrate(source, destination, on_conflict="overwrite")
    assert overwritten.summary()["changed"] == 2 and overwritten.verified == 2
    assert destination.get_connection("conn_0001").host == "db1.example.com"  # type: ignore[union-attr]
    assert destination.get_variable("var_000") == "value-0"


def test_include_exclude_and_kinds(vault_harness: Any, tmp_path: Path) -> None:
    source = _seed_metastore(tmp_path, 12, 3)
    destination = vault_harness.make_backend()
    report = migrate(
        source, destination, include=["conn_000*", "var_*"], exclude=["conn_0003"], variables=False
    )
    assert sorted(i.key for i in report.plan.items) == [f"conn_{i:04d}" for i in range(10) if i != 3]
    assert destination.list_variables() == []
    assert matches("a_b", ["a_*"], []) and not matches("A_b", ["a_*"], []) and not matches("a_b", [], ["*_b"])


def test_uri_format_into_string_stores_and_ignored_by_structured_ones(
    vault_harness: Any, aws_ssm_harness: Any, tmp_path: Path
) -> None:
    source = _seed_metastore(tmp_path, 2, 0)
    destination = vault_harness.make_backend()
    report = migrate(source, destination, connection_format="uri", variables=False)
    assert report.verified == 2
    raw = vault_harness.server.admin.secrets.kv.v2.read_secret_version(
        path="connections/conn_0000", mount_point=vault_harness.mount, raise_on_deleted_version=True
    )["data"]["data"]
    assert set(raw) == {"conn_uri"}
    # JSON is the default: the whole map, lossless.
    json_dst = vault_harness.make_backend(connections_path="json_connections")
    migrate(source, json_dst, variables=False)
    raw = vault_harness.server.admin.secrets.kv.v2.read_secret_version(
        path="json_connections/conn_0000", mount_point=vault_harness.mount, raise_on_deleted_version=True
    )["data"]["data"]
    assert raw["host"] == "db0.example.com" and "conn_uri" not in raw
    # String stores (AWS, GCP, Azure) take the URI form as well.
    ssm = aws_ssm_harness.make_backend()
    assert migrate(source, ssm, connection_format="uri", variables=False).verified == 2
    name = aws_ssm_harness.parameter_name("connection", "conn_0000")
    stored = aws_ssm_harness.client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    assert stored.startswith("postgres://")
    # The metastore keeps fields, not strings: the format does not apply and is not an error.
    metastore = MetastoreBackend(
        url=f"sqlite:///{tmp_path / 'fields.db'}", fernet_key=Fernet.generate_key().decode()
    )
    assert migrate(source, metastore, connection_format="uri", variables=False).verified == 2


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    source = _seed_metastore(tmp_path, 1, 0)
    from credpath.backends.env import EnvironmentBackend

    with pytest.raises(ConfigError, match="cannot write connections"):
        Migrator(source, EnvironmentBackend())
    with pytest.raises(ConfigError, match="same backend"):
        Migrator(source, source)
    with pytest.raises(ConfigError, match="--on-conflict"):
        Migrator(source, MetastoreBackend(url="sqlite://"), on_conflict="merge")
    with pytest.raises(ConfigError, match="--concurrency"):
        Migrator(source, MetastoreBackend(url="sqlite://"), concurrency=0)


def test_unreadable_source_entries_fail_by_id_without_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath.backends.env import EnvironmentBackend

    for name in list(os.environ):
        if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_CONN_GOOD", "postgres://u:pw-s3cr3t-g@h/db")
    monkeypatch.setenv("AIRFLOW_CONN_BROKEN", "postgres://u:pw-s3cr3t-b@h:99999/db")  # port out of range
    destination = MetastoreBackend(
        url=f"sqlite:///{tmp_path / 'd.db'}", fernet_key=Fernet.generate_key().decode()
    )
    report = migrate(EnvironmentBackend(), destination, variables=False)
    assert report.exit_code == 1
    assert [(i.key, i.action) for i in report.failed] == [("broken", "error")]
    assert "port" in report.failed[0].reason
    assert report.verified == 1 and destination.get_connection("good") is not None
    assert_no_secret(report.to_json())


def test_write_failures_are_listed_and_nothing_wrong_is_verified(vault_harness: Any, tmp_path: Path) -> None:
    source = _seed_metastore(tmp_path, 3, 0)
    destination = vault_harness.make_backend()
    original = destination.set_connection

    def flaky(conn: Connection, **kwargs: Any) -> None:
        if conn.conn_id == "conn_0001":
            from credpath.errors import BackendError

            raise BackendError("vault: writing connections/conn_0001 failed (HTTP 500)")
        original(conn, **kwargs)

    destination.set_connection = flaky  # a server error on one id: a state a healthy server cannot be put in
    report = migrate(source, destination, variables=False)
    assert report.exit_code == 1 and report.written == 2 and report.verified == 2
    assert [(i.key, i.status) for i in report.failed] == [("conn_0001", "failed")]
    assert "HTTP 500" in report.failed[0].reason


# --- interrupted run -------------------------------------------------------------------------------------


class SlowProxy:
    """A loopback TCP relay that delays every client->server chunk: a slow destination to kill mid-run."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port, self.delay = upstream_port, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, self.delay), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def slow_vault(openbao: OpenBao) -> Iterator[tuple[str, str]]:
    mount = openbao.enable_kv(2)
    proxy = SlowProxy(int(openbao.addr.rsplit(":", 1)[1]), delay=0.02)
    yield f"http://127.0.0.1:{proxy.port}", mount
    proxy.close()
    openbao.disable(mount)


def test_killed_run_is_completed_by_a_rerun_exactly_once(
    slow_vault: tuple[str, str], openbao: OpenBao, tmp_path: Path
) -> None:
    url, mount = slow_vault
    total = 150
    source = _seed_metastore(tmp_path, total, 0)
    config = tmp_path / "credpath.toml"
    config.write_text(
        f"""
[[backends]]
name = "src"
type = "metastore"
kwargs = {{ url = "{source.url}", fernet_key = "{source._fernet_key_arg}" }}

[[backends]]
name = "dst"
type = "vault"
kwargs = {{ url = "{url}", token = "{openbao.root_token}", mount_point = "{mount}" }}
"""
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CREDPATH_", "AIRFLOW_", "VAULT_", "BAO_"))
    }
    env.update(CREDPATH_CONFIG=str(config), CREDPATH_HOME=str(tmp_path / "home"))
    command = [sys.executable, "-m", "credpath", "migrate", "--from", "src", "--to", "dst", "--connections",
               "--concurrency", "2", "--report", str(tmp_path / "report.json")]  # fmt: skip

    def written() -> list[str]:
        try:
            return openbao.admin.secrets.kv.v2.list_secrets(path="connections", mount_point=mount)["data"][
                "keys"
            ]
        except Exception:  # nothing written yet: 404
            return []

    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(written()) < total // 3:
        assert proc.poll() is None, "the migration ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    done_before = len(written())
    assert total // 3 <= done_before < total, done_before

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert_no_secret(rerun.stdout + rerun.stderr)
    assert rerun.returncode == 0, rerun.stderr[-500:]
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert summary["added"] + summary["unchanged"] == total
    assert summary["unchanged"] >= done_before - 2  # in-flight writes at the kill may or may not have landed
    assert summary["verified"] == summary["added"] > 0 and summary["failed"] == 0

    keys = written()
    assert sorted(keys) == [f"conn_{i:04d}" for i in range(total)]
    # Exactly once: no entry was written twice (KV v2 keeps a version per write).
    for key in keys[:: max(1, total // 30)] + keys[-3:]:
        meta = openbao.admin.secrets.kv.v2.read_secret_metadata(path=f"connections/{key}", mount_point=mount)
        assert meta["data"]["current_version"] == 1, key
    direct = _vault_backend(openbao, mount)
    _assert_holds(direct, {k: source.get_connection(k) for k in keys}, {})  # type: ignore[misc]


def _vault_backend(openbao: OpenBao, mount: str) -> Any:
    from credpath.backends.vault import VaultBackend

    return VaultBackend(url=openbao.addr, token=openbao.root_token, mount_point=mount)


def test_the_destinations_own_setting_decides_on_soft_deleted_azure_names(
    azure_key_vault_harness: Any, tmp_path: Path
) -> None:
    source = _seed_metastore(tmp_path, 2, 0)
    destination = azure_key_vault_harness.make_backend()
    destination.set_connection(Connection.from_uri("x://old", conn_id="conn_0000"))
    destination.delete_connection("conn_0000")  # soft-deleted: a plain write is refused
    failed = migrate(source, destination, variables=False)
    assert [item.key for item in failed.failed] == ["conn_0000"]
    with pytest.raises(TypeError):  # store behaviour is a constructor setting, not a migration option
        migrate(source, destination, variables=False, write_options={"on_deleted": "recover"})
    destination = azure_key_vault_harness.make_backend(on_deleted="recover")
    report = migrate(source, destination, variables=False)
    assert report.verified == 1 and not report.failed
    assert destination.get_connection("conn_0000").host == "db0.example.com"


# --- SQLite under the default concurrency ---------------------------------------------------------------


def test_default_concurrency_into_sqlite_waits_for_the_lock_and_loses_no_write(tmp_path: Path) -> None:
    """2,000 ids, eight writer threads into one SQLite file, and another process holding the file's write
    lock for 6 s in the middle (longer than SQLite's default 5 s busy timeout): every write waits, none
    fails for contention."""
    import sqlite3
    import tempfile

    from tests.memory_backend import BatchMemoryBackend

    n = 2000
    source = BatchMemoryBackend(variables={f"var_{i:04d}": f"value-{i}" for i in range(n)})
    # On tmpfs where there is one: the contention is the same, without 2,000 fsyncs' worth of waiting.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else tmp_path) as where:
        db = Path(where) / "dst.db"
        destination = MetastoreBackend(url=f"sqlite:///{db}", fernet_key=Fernet.generate_key().decode())
        held = threading.Event()

        def hold_the_write_lock() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    other = sqlite3.connect(db, timeout=30, isolation_level=None)
                    if other.execute("SELECT count(*) FROM credpath_variable").fetchone()[0] >= 200:
                        break
                    other.close()
                except sqlite3.OperationalError:
                    pass  # no schema yet
                time.sleep(0.01)
            other.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(6.0)
            other.execute("COMMIT")
            other.close()

        holder = threading.Thread(target=hold_the_write_lock, daemon=True)
        holder.start()
        report = migrate(source, destination, concurrency=8, connections=False)
        holder.join(timeout=30)
        destination.close()
    assert held.is_set()
    summary = report.summary()
    assert [i.reason for i in report.failed][:3] == [] and summary["failed"] == 0
    assert summary["added"] == summary["written"] == summary["verified"] == n
    buckets = [k for k in summary if k not in ("total", "written", "verified")]
    assert sum(summary[k] for k in buckets) == summary["total"] == n


def test_summary_counts_add_up_when_writes_fail(caplog: pytest.LogCaptureFixture) -> None:
    from credpath.errors import BackendError
    from tests.memory_backend import MemoryBackend

    class Flaky(MemoryBackend):
        def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
            if key.endswith("3"):
                raise BackendError("database is locked")
            super().set_variable(key, value, overwrite=overwrite)

    source = MemoryBackend(variables={f"v{i}": f"value-{i}" for i in range(10)})
    report = migrate(source, Flaky(), concurrency=4, connections=False)
    summary = report.summary()
    assert (summary["added"], summary["failed"], summary["errors"], summary["total"]) == (9, 1, 0, 10)
    assert (summary["written"], summary["verified"]) == (9, 9)
    assert report.exit_code == 1
    # Said once, in the report (the CLI prints one line per failed id), not also as a warning.
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
