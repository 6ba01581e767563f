"""A CLI flag that is a store setting (``--on-deleted``) builds the target backend with that setting; it
is never a per-call write option."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from credpath.api import set_default_search_path
from credpath.cli import cli
from tests.memory_backend import SettingMemoryBackend

URI = "postgres://u:pw-s3cr3t-st@db.example.com:5432/app"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "credpath.toml"
    config.write_text(
        '[[backends]]\nname = "plain"\ntype = "tests.memory_backend.MemoryBackend"\n'
        'kwargs = { variables = { k = "v" } }\n\n'
        '[[backends]]\nname = "soft"\ntype = "tests.memory_backend.SettingMemoryBackend"\n'
        'kwargs = { on_deleted = "fail" }\n'
    )
    monkeypatch.setenv("CREDPATH_CONFIG", str(config))
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    for name in ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"):
        monkeypatch.delenv(name, raising=False)
    set_default_search_path(None)
    SettingMemoryBackend.built.clear()
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args), catch_exceptions=False)


def test_on_deleted_builds_the_target_with_the_setting(run) -> None:
    result = run("variables", "set", "k", "v", "--to", "soft", "--on-deleted", "purge")
    assert result.exit_code == 0, result.output
    assert "set variable 'k' in backend 'soft'" in result.stdout
    # The instance that wrote was built with the setting; the configured one (kwargs "fail") wrote nothing.
    writers = [b for b in SettingMemoryBackend.built if b.written]
    assert [(b.on_deleted, b.written) for b in writers] == [("purge", [("k", "purge")])]

    result = run("connections", "add", "c", "--uri", URI, "--to", "soft", "--on-deleted", "recover")
    assert result.exit_code == 0, result.output
    assert [b.written for b in SettingMemoryBackend.built if b.written][-1] == [("c", "recover")]


def test_without_the_flag_the_configured_setting_stands(run) -> None:
    assert run("variables", "set", "k", "v", "--to", "soft").exit_code == 0
    assert [(b.on_deleted, b.written) for b in SettingMemoryBackend.built if b.written] == [
        ("fail", [("k", "fail")])
    ]


def test_a_store_without_the_setting_is_refused_naming_the_flag(run) -> None:
    result = run("variables", "set", "k", "v", "--to", "plain", "--on-deleted", "purge")
    assert result.exit_code == 2
    assert result.stderr.startswith("credpath: error: --on-deleted: ")
    assert "on_deleted" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_migrate_builds_the_destination_with_the_setting(run) -> None:
    result = run("migrate", "--from", "plain", "--to", "soft", "--variables", "--on-deleted", "recover")
    assert result.exit_code == 0, result.output
    assert [(b.on_deleted, b.written) for b in SettingMemoryBackend.built if b.written] == [
        ("recover", [("k", "recover")])
    ]
