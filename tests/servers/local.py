"""Contract-suite harnesses of the local stores (env, files, metastore), which live beside their tests.

Re-exported here so the shared contract suite (tests/backends/test_contract.py) finds them as plugins.
The metastore's own tests run on SQLite and PostgreSQL through a parametrised fixture, which cannot be
requested dynamically; the contract suite gets the metastore on PostgreSQL, the harder of the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.test_env import env_harness
from tests.backends.test_files import files_harness
from tests.backends.test_metastore import MetastoreHarness

__all__ = ["env_harness", "files_harness", "metastore_harness"]


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
