"""The metastore under faults and concurrency, real processes.

- A read of an absent metastore is a miss and creates nothing; the database (and its journal) is 0600.
- Bad settings (key, URL, CREDPATH_HOME) are one-line configuration errors naming the setting or path.
- Key rotation never reverts a write made by another process meanwhile (SQLite and PostgreSQL).
- Concurrent first writers on a fresh CREDPATH_HOME agree on one key file; none fails.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

import credpath
from credpath.backends.metastore import FernetKeyError, MetastoreBackend
from credpath.errors import BackendError, ConfigError
from tests.conftest import assert_no_secret

REPO = Path(__file__).resolve().parents[2]
VALUE = "pw-s3cr3t-7"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CREDPATH_HOME", str(home))
    for name in (
        "CREDPATH_FERNET_KEY",
        "CREDPATH_METASTORE_URL",
        "CREDPATH_CONFIG",
        "AIRFLOW__SECRETS__BACKEND",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    # The child imports the credpath this test imports (and the tests package, for nothing else).
    src = Path(credpath.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(REPO), env.get("PYTHONPATH", "")])
    return env


# --- a read of an absent metastore creates nothing ---------------------------------


def test_a_read_of_an_absent_metastore_is_a_miss_and_creates_nothing(_isolated_home: Path) -> None:
    backend = MetastoreBackend()
    assert backend.get_connection("my_db") is None
    assert backend.get_conn_value("my_db") is None
    assert backend.get_variable("v") is None
    assert backend.get_conn_values(["a", "b"]) == {}
    assert backend.prefetch_connections() == {} and backend.prefetch_variables() == {}
    assert backend.list_connections() == [] and backend.list_variables() == []
    assert backend.delete_variable("v") is False
    assert backend.rotate_fernet_key() == 0
    assert "no database yet" in backend.check()
    backend.close()
    assert not _isolated_home.exists()


def test_the_cli_reading_an_absent_metastore_creates_nothing(_isolated_home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "credpath", "connections", "get", "my_db"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "not found" in out.stderr
    assert not _isolated_home.exists()


def test_a_write_then_a_read_after_an_absent_read(_isolated_home: Path) -> None:
    reader = MetastoreBackend()
    assert reader.get_variable("v") is None  # absent: remembered as nothing, looked up again next time
    MetastoreBackend().set_variable("v", VALUE)
    assert reader.get_variable("v") == VALUE
    reader.close()


def test_an_empty_database_file_without_schema_reads_as_a_miss(_isolated_home: Path) -> None:
    # What a reader sees between a writer creating the 0600 file and creating the schema.
    _isolated_home.mkdir()
    (_isolated_home / "credpath.db").touch()
    backend = MetastoreBackend()
    assert backend.get_variable("v") is None
    backend.set_variable("v", VALUE)
    assert backend.get_variable("v") == VALUE
    backend.close()


# --- 0600 database and journal -----------------------------------------------------


def test_database_and_its_journal_are_created_0600(_isolated_home: Path) -> None:
    previous = os.umask(0o022)
    try:
        backend = MetastoreBackend()
        backend.set_variable("v", VALUE)
        db = _isolated_home / "credpath.db"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        # SQLite gives its journal the database file's mode: hold a write transaction and look.
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE credpath_variable SET description = 'x'")
        journal = _isolated_home / "credpath.db-journal"
        assert journal.exists() and stat.S_IMODE(journal.stat().st_mode) == 0o600
        conn.execute("ROLLBACK")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("UPDATE credpath_variable SET description = 'y'")
        for suffix in ("-wal", "-shm"):
            assert stat.S_IMODE((_isolated_home / f"credpath.db{suffix}").stat().st_mode) == 0o600
        conn.close()
        backend.close()
    finally:
        os.umask(previous)


# --- bad settings are configuration errors ---------------------------


def test_unwritable_home_is_a_one_line_error_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where CREDPATH_HOME's parent should be")
    home = blocker / "home"
    monkeypatch.setenv("CREDPATH_HOME", str(home))
    backend = MetastoreBackend()
    assert backend.get_variable("v") is None  # a read is a miss (nothing to create)
    with pytest.raises(ConfigError) as info:
        backend.set_variable("v", VALUE)
    message = str(info.value)
    assert str(home) in message and "CREDPATH_HOME" in message and "\n" not in message
    assert message.startswith("backend 'metastore' (credpath metastore): ")
    assert_no_secret(message)


def test_unwritable_key_file_directory_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    backend = MetastoreBackend(url=f"sqlite:///{tmp_path / 'db' / 'x.db'}")
    backend.home = blocker / "home"
    with pytest.raises(ConfigError) as info:
        backend.set_variable("v", VALUE)
    assert "fernet.key" in str(info.value) and "\n" not in str(info.value)


def test_invalid_env_key_is_a_config_error_on_every_read(
    _isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    MetastoreBackend(fernet_key=Fernet.generate_key().decode()).set_variable("v", VALUE)
    monkeypatch.setenv("CREDPATH_FERNET_KEY", "not-a-fernet-key")
    for read in (
        lambda b: b.get_variable("v"),
        lambda b: b.get_variable("missing"),  # a miss too: the setting is wrong whatever the id
        lambda b: b.get_connection("missing"),
        lambda b: b.list_variables(),
    ):
        with pytest.raises(ConfigError) as info:
            read(MetastoreBackend())
        message = str(info.value)
        assert "key #1 of CREDPATH_FERNET_KEY is not a valid Fernet key" in message and "\n" not in message
        assert "not-a-fernet-key" not in message


def test_invalid_metastore_url_is_a_config_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("::not a url::", "nosuchdb://h/x"):
        monkeypatch.setenv("CREDPATH_METASTORE_URL", url)
        with pytest.raises(ConfigError) as info:
            MetastoreBackend().get_connection("my_db")
        assert "CREDPATH_METASTORE_URL" in str(info.value) and "\n" not in str(info.value)


def test_wrong_key_is_a_config_error_naming_the_key_setting(
    _isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    right = Fernet.generate_key().decode()
    MetastoreBackend(fernet_key=right).set_variable("api", VALUE)
    wrong = Fernet.generate_key().decode()
    monkeypatch.setenv("CREDPATH_FERNET_KEY", wrong)
    with pytest.raises(FernetKeyError) as info:
        MetastoreBackend().get_variable("api")
    assert isinstance(info.value, ConfigError) and not isinstance(info.value, BackendError)
    message = str(info.value)
    assert "CREDPATH_FERNET_KEY" in message and wrong not in message and right not in message
    assert_no_secret(message)


def test_cli_exits_2_on_an_invalid_key(_isolated_home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "credpath", "variables", "set", "v", "plain-value"],
        capture_output=True,
        text=True,
        env=_env(CREDPATH_FERNET_KEY="not-a-fernet-key"),
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "CREDPATH_FERNET_KEY" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("CREDPATH_FERNET_KEY", "not-a-fernet-key"),
        ("CREDPATH_FERNET_KEY", "wrong"),  # a valid key, not the one the value was encrypted with
        ("CREDPATH_METASTORE_URL", "nosuchdb://x/y"),
    ],
    ids=["invalid-key", "wrong-key", "bad-url"],
)
def test_cli_reads_exit_2_naming_the_setting_not_1_not_found(
    _isolated_home: Path, setting: str, value: str
) -> None:
    # These once ended in "not found in any backend" (exit 1) on reads.
    right = Fernet.generate_key().decode()
    MetastoreBackend(fernet_key=right).set_variable("api", VALUE)
    if value == "wrong":
        value = Fernet.generate_key().decode()
    out = subprocess.run(
        [sys.executable, "-m", "credpath", "variables", "get", "api"],
        capture_output=True,
        text=True,
        env=_env(**{"CREDPATH_FERNET_KEY": right, setting: value}),
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert setting in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "not found" not in out.stderr and value not in out.stderr and right not in out.stderr


# --- rotation never reverts a concurrent write ------------------------------------------

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from credpath.backends.metastore import MetastoreBackend

    url, keys, ready, stop, out = sys.argv[1:6]
    ids = [f"k{i:03d}" for i in range(int(sys.argv[6]))]
    backend = MetastoreBackend(url=url, fernet_key=keys)
    last = {}
    n = 0
    deadline = time.monotonic() + 120
    while not os.path.exists(stop) and time.monotonic() < deadline:
        for key in ids[n % 7 :: 7]:
            value = f"{key}-round-{n}"
            backend.set_variable(key, value)
            last[key] = value
        n += 1
        if n == 3:
            open(ready, "w").close()
    backend.close()
    json.dump({"last": last, "rounds": n}, open(out, "w"))
    """
)


def _rotation_race(url: str, tmp_path: Path, rows: int = 150, rotations: int = 6) -> tuple[int, int]:
    """Rotate ``rotations`` times while another process keeps rewriting values; returns (reverted, rows)."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    seed = MetastoreBackend(url=url, fernet_key=old)
    for i in range(rows):
        seed.set_variable(f"k{i:03d}", f"k{i:03d}-seed")
    seed.close()
    ready, stop, out = tmp_path / "ready", tmp_path / "stop", tmp_path / "out.json"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, f"{new},{old}", str(ready), str(stop), str(out), str(rows)],
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "writer did not start"
            time.sleep(0.01)
        rotator = MetastoreBackend(url=url, fernet_key=f"{new},{old}")
        for _ in range(rotations):
            rotator.rotate_fernet_key()
        rotator.close()
        stop.touch()
        assert writer.wait(timeout=120) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    written = json.loads(out.read_text())
    assert written["rounds"] > 3
    reader = MetastoreBackend(url=url, fernet_key=new)  # everything is under the new key now
    stored = reader.get_variables(list(written["last"]))
    reader.close()
    reverted = sum(1 for key, value in written["last"].items() if stored.get(key) != value)
    return reverted, len(written["last"])


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_rotation_never_reverts_a_write_from_another_process(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database("rot")
    reverted, total = _rotation_race(url, tmp_path)
    assert total > 0
    assert reverted == 0, f"{reverted} of {total} values reverted by the rotation"


# --- concurrent first writers on a fresh CREDPATH_HOME ---------------------------------

FIRST_WRITER = textwrap.dedent(
    """
    import sys, time
    from credpath.backends.metastore import MetastoreBackend

    go, name = sys.argv[1], sys.argv[2]
    while True:  # all processes start writing at the same instant
        try:
            open(go).close()
            break
        except FileNotFoundError:
            time.sleep(0.0005)
    MetastoreBackend().set_variable(name, name + "-value")
    print(MetastoreBackend().get_variable(name))
    """
)


def test_concurrent_first_writers_share_one_key_file(tmp_path: Path) -> None:
    failures: list[str] = []
    for round_ in range(6):
        home = tmp_path / f"home{round_}"
        go = tmp_path / f"go{round_}"
        env = _env(CREDPATH_HOME=str(home))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", FIRST_WRITER, str(go), f"p{i}"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        time.sleep(1.0)  # let every interpreter start and wait on the file
        go.touch()
        for i, proc in enumerate(procs):
            stdout, stderr = proc.communicate(timeout=120)
            if proc.returncode != 0 or stdout.strip() != f"p{i}-value":
                failures.append(
                    f"round {round_} process {i}: exit {proc.returncode}: {stderr.strip()[-300:]}"
                )
        assert failures == []
        key_file = home / "fernet.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        Fernet(key.encode())  # whole and valid
        # Every process encrypted with the one key in the file.
        reader = MetastoreBackend(url=f"sqlite:///{home / 'credpath.db'}", fernet_key=key)
        assert reader.get_variables([f"p{i}" for i in range(4)]) == {f"p{i}": f"p{i}-value" for i in range(4)}
        reader.close()
        assert [p.name for p in home.iterdir() if p.name.startswith(".fernet-")] == []
    assert failures == []
