"""Contract-suite harnesses of the local stores (env, files, metastore), as pytest plugins.

The env and files harnesses live here (their tests import the classes from here, never the other way
round). The metastore's harness class still lives beside its tests in tests/backends/test_metastore.py,
whose own fixture is parametrised over SQLite and PostgreSQL; the contract suite gets the metastore on
PostgreSQL, the harder of the two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from credpath.backends.env import EnvironmentBackend
from credpath.backends.files import LocalFilesystemBackend
from tests.backends.test_metastore import MetastoreHarness

__all__ = ["EnvHarness", "FilesHarness", "env_harness", "files_harness", "metastore_harness"]


class EnvHarness:
    """Contract-suite harness: a process environment with no AIRFLOW_CONN_/AIRFLOW_VAR_ variables."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        for name in list(os.environ):
            if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")):
                monkeypatch.delenv(name)

    def make_backend(self, **kwargs: Any) -> EnvironmentBackend:
        return EnvironmentBackend(**kwargs)

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        if kind == "connection":
            self.monkeypatch.setenv(f"AIRFLOW_CONN_{key.upper()}", raw_value)
        elif kind == "variable":
            self.monkeypatch.setenv(f"AIRFLOW_VAR_{key.upper()}", raw_value)
        elif kind == "config":
            pytest.skip("the environment backend serves no config (as Airflow's)")
        else:
            raise ValueError(f"unknown kind {kind!r}")


@pytest.fixture
def env_harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[EnvHarness]:
    yield EnvHarness(monkeypatch)


class FilesHarness:
    """Contract-suite harness: one JSON file per kind in a fresh directory; seeding rewrites the file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.paths = {
            "connection": root / "connections.json",
            "variable": root / "variables.json",
            "config": root / "config.json",
        }
        self.data: dict[str, dict[str, str]] = {kind: {} for kind in self.paths}
        for kind in self.paths:
            self._write(kind)

    def _write(self, kind: str) -> None:
        path = self.paths[kind]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data[kind], indent=2))
        os.replace(tmp, path)  # atomic, like a deploy tool would

    def make_backend(self, **kwargs: Any) -> LocalFilesystemBackend:
        kwargs.setdefault("connections_file_path", str(self.paths["connection"]))
        kwargs.setdefault("variables_file_path", str(self.paths["variable"]))
        kwargs.setdefault("configs_file_path", str(self.paths["config"]))
        return LocalFilesystemBackend(**kwargs)

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        if kind not in self.paths:
            raise ValueError(f"unknown kind {kind!r}")
        self.data[kind][key] = raw_value
        self._write(kind)


@pytest.fixture
def files_harness(tmp_path: Path) -> Iterator[FilesHarness]:
    yield FilesHarness(tmp_path / "files")


@pytest.fixture
def metastore_harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MetastoreHarness]:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CREDPATH_FERNET_KEY", raising=False)
    monkeypatch.delenv("CREDPATH_METASTORE_URL", raising=False)
    server = request.getfixturevalue("postgres_server")
    harness = MetastoreHarness(server.create_database("contract"))
    yield harness
    harness.close()
