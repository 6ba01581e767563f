"""Rotating the metastore's Fernet key: the generated key file (crash-safe at every step), the configured
key (CREDPATH_FERNET_KEY="NEW,OLD"), a rotation with nothing to do, and ``generate-fernet-key``."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy.engine import Connection as SAConnection

from credpath import _keys
from credpath.api import set_default_search_path
from credpath.backends import metastore as ms
from credpath.backends.metastore import MetastoreBackend
from credpath.cli import cli as credpath_cli
from tests.cli.test_cli import run  # noqa: F401  (the fixture: a fresh home, no key variables)
from tests.conftest import assert_no_secret

URI = "postgres://app:pw-s3cr3t-1@db.example.com:5432/analytics?api_key=key-s3cr3t-2"
VALUES = {f"v{i}": f"val-s3cr3t-{i}" for i in range(4)}


@pytest.fixture
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A fresh CREDPATH_HOME, no key in the environment (test_cli's ``run`` fixture sets it up)."""
    request.getfixturevalue("run")
    return tmp_path / "home"


def cli(*args: str) -> Result:
    set_default_search_path(None)
    result = CliRunner().invoke(credpath_cli, list(args), catch_exceptions=False)
    assert_no_secret(result.stdout)
    assert_no_secret(result.stderr)
    return result


def _seed() -> None:
    backend = MetastoreBackend()
    backend.set_connection(_conn())
    for key, value in VALUES.items():
        backend.set_variable(key, value)
    backend.close()


def _conn() -> Any:
    from credpath.model import Connection

    return Connection.from_uri(URI, "c")


def _all_readable_with_the_file() -> None:
    """Every value decrypts with what the key file holds, in a fresh backend (no environment key)."""
    backend = MetastoreBackend()
    try:
        assert backend.get_connection("c") == _conn()
        assert {k: backend.get_variable(k) for k in VALUES} == VALUES
    finally:
        backend.close()


def _file_keys(home: Path) -> list[str]:
    return (home / "fernet.key").read_text().strip().split(",")


def test_rotating_the_generated_key_file(home: Path) -> None:
    _seed()
    old = _file_keys(home)
    result = cli("rotate-fernet-key")
    assert result.exit_code == 0, result.output
    assert "re-encrypted 6 value(s)" in result.stdout  # the password, the extra and four variables
    assert "fernet.key now holds a new key alone" in result.stdout
    new = _file_keys(home)
    assert len(new) == 1 and new != old
    assert new[0] not in result.stdout  # the key itself is never printed
    assert oct((home / "fernet.key").stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in home.iterdir()) == ["credpath.db", "fernet.key"]  # no temp file left
    # Later reads without any variable work, and the old key decrypts nothing any more.
    listed = cli("variables", "list")
    assert listed.exit_code == 0 and "v1" in listed.stdout, listed.output
    _all_readable_with_the_file()
    stranger = MetastoreBackend(fernet_key=old[0])
    with pytest.raises(ms.FernetKeyError):
        stranger.get_variable("v1")


def test_a_rotation_is_one_audit_event_with_its_count(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from credpath import _audit

    _seed()
    trail = home.parent / "audit.jsonl"
    monkeypatch.setenv("CREDPATH_AUDIT_PATH", str(trail))
    monkeypatch.setenv("CREDPATH_AUDIT_ENABLED", "true")
    try:
        assert cli("rotate-fernet-key").exit_code == 0
        _audit.flush()
    finally:
        _audit.configure(_audit.AuditSettings())
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    rotations = [e for e in events if e["operation"] == "rotate"]
    assert len(rotations) == 1
    assert rotations[0]["outcome"] == "ok" and rotations[0]["reencrypted"] == 6
    assert rotations[0]["backend"] == "metastore"


def test_a_rotation_with_nothing_stored_says_so(home: Path) -> None:
    result = cli("rotate-fernet-key")
    assert result.exit_code == 0, result.output
    assert "nothing to rotate" in result.stdout
    assert not home.exists() or not any(home.iterdir())  # nothing created


def test_a_configured_key_rotation_says_what_to_configure_and_counts_only_real_work(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("CREDPATH_FERNET_KEY", old)
    _seed()
    monkeypatch.setenv("CREDPATH_FERNET_KEY", f"{new},{old}")
    result = cli("rotate-fernet-key")
    assert result.exit_code == 0, result.output
    assert (
        "re-encrypted 6 value(s); every value is encrypted with key 1 of CREDPATH_FERNET_KEY" in result.stdout
    )
    assert "now configure CREDPATH_FERNET_KEY with that first key alone (key 2 no longer" in result.stdout
    assert new not in result.stdout and old not in result.stdout
    # The same rotation again: nothing left to do, and it says so.
    again = cli("rotate-fernet-key")
    assert again.exit_code == 0, again.output
    assert "nothing to re-encrypt" in again.stdout and "re-encrypted" not in again.stdout
    monkeypatch.setenv("CREDPATH_FERNET_KEY", new)
    alone = cli("rotate-fernet-key")
    assert "nothing to re-encrypt" in alone.stdout and "generate-fernet-key" in alone.stdout
    assert MetastoreBackend().get_variable("v2") == VALUES["v2"]
    assert not (home / "fernet.key").exists()  # an environment key never writes the file


def test_generate_fernet_key_prints_a_key(home: Path) -> None:
    result = CliRunner().invoke(credpath_cli, ["generate-fernet-key"], catch_exceptions=False)
    assert result.exit_code == 0
    key = result.stdout.strip()
    Fernet(key.encode())  # a valid Fernet key
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert key != CliRunner().invoke(credpath_cli, ["generate-fernet-key"]).stdout.strip()


# --- a crash at any step leaves every value readable with what is on disk --------------------------


class Crash(Exception):
    pass


def _crash_on_call(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, at: int) -> None:
    """Raise Crash on the ``at``-th call of ``target.name`` (earlier calls run)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == at:
            raise Crash(f"{name} #{at}")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


# Each step of a rotation: (module, function, which call raises).
STEPS = [
    (_keys.os, "fsync", 1),  # writing NEW,OLD: the temporary file is not complete yet
    (_keys.os, "replace", 1),  # NEW,OLD written but not yet in place
    (MetastoreBackend, "rotate_fernet_key", 1),  # NEW,OLD in place, nothing re-encrypted
    (MultiFernet, "rotate", 3),  # re-encrypting, before anything is written
    (SAConnection, "execute", 6),  # writing the re-encrypted values: the third UPDATE
    (_keys.os, "fsync", 4),  # every value re-encrypted, writing NEW alone
    (_keys.os, "replace", 2),  # NEW alone written but not yet in place
]


@pytest.mark.parametrize(("target", "name", "at"), STEPS, ids=[f"{n}-{a}" for _t, n, a in STEPS])
def test_a_rotation_interrupted_at_any_step_loses_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, target: Any, name: str, at: int
) -> None:
    _seed()
    with monkeypatch.context() as patch:
        _crash_on_call(patch, target, name, at)
        backend = MetastoreBackend()
        with pytest.raises(Crash):
            backend.rotate_key_file()
        backend.close()
    _all_readable_with_the_file()
    # Running it again finishes the rotation: one key on disk, every value readable with it.
    assert cli("rotate-fernet-key").exit_code == 0
    assert len(_file_keys(home)) == 1
    _all_readable_with_the_file()
    assert [p.name for p in home.iterdir() if p.name.startswith(".")] == []


_KILLER = """
import os, signal, sys
from credpath import _keys
from credpath.backends.metastore import MetastoreBackend
step, at = sys.argv[1], int(sys.argv[2])
target = {"fsync": (_keys.os, "fsync"), "replace": (_keys.os, "replace"),
          "rotate": (MetastoreBackend, "rotate_fernet_key")}[step]
real = getattr(*target)
calls = [0]
def die(*args, **kwargs):
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
setattr(target[0], target[1], die)
MetastoreBackend().rotate_key_file()
"""


@pytest.mark.parametrize(("step", "at"), [("replace", 1), ("rotate", 2), ("replace", 2)])
def test_a_rotation_killed_mid_way_loses_nothing(home: Path, step: str, at: int) -> None:
    _seed()
    env = {**os.environ, "CREDPATH_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, step, str(at)], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-500:]
    _all_readable_with_the_file()
    assert cli("rotate-fernet-key").exit_code == 0
    assert len(_file_keys(home)) == 1
    _all_readable_with_the_file()


def test_a_long_running_process_follows_a_rotated_key_file(home: Path) -> None:
    _seed()
    reader = MetastoreBackend()
    assert reader.get_variable("v0") == VALUES["v0"]  # keys loaded from the file now
    MetastoreBackend().rotate_key_file()
    assert reader.get_variable("v1") == VALUES["v1"]  # re-read the replaced file, not a FernetKeyError
    reader.set_variable("v9", "val-s3cr3t-9")  # written with the new key
    reader.close()
    assert MetastoreBackend().get_variable("v9") == "val-s3cr3t-9"
