"""Fixtures and harness of the shared-tier tests (test_shared_cache.py, test_shared_cache_replay.py,
test_rotation.py): the tier under test (file and Redis), a clean environment, the fault proxy in front of
the module's OpenBao, a ``credpath.toml`` over them, and the env of a reader process.

Not a test module: a test module takes the fixtures by importing them (pytest finds fixtures in the
module's namespace; an autouse one applies to that module only).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from credpath._search_path import SearchPath
from credpath._settings import load_settings
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao

__all__ = [
    "KEY",
    "OTHER_KEY",
    "READS",
    "REPO",
    "clean_env",
    "digest",
    "path_for",
    "proxy",
    "shared",
    "worker_env",
    "write_config",
]

REPO = Path(__file__).resolve().parents[1]
KEY = "kQ3pW0m3a2Vw5Zb6cE8-3nJ0c1d2e3f4g5h6i7j8k9A="  # a valid Fernet key (32 bytes, url-safe base64)
OTHER_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
READS = r"/v1/[^/]+/data/"  # a KV v2 read (what a lookup costs at the store), counted at the proxy


def digest(value: object) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:16]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shared-tier or key setting from the outer environment; a home of the test's own."""
    for name in ("CREDPATH_CACHE_SHARED", "CREDPATH_CACHE_KEY", "CREDPATH_FERNET_KEY", "CREDPATH_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))


@pytest.fixture(params=["file", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ``[cache] shared`` setting of each tier (Redis: the session's server, emptied)."""
    if request.param == "file":
        return f"file:{tmp_path / 'shared-cache.db'}"
    return request.getfixturevalue("redis_url")  # type: ignore[no-any-return]


@pytest.fixture
def proxy(vault: tuple[OpenBao, str], fault_proxy: Any) -> Any:
    """The counting fault proxy in front of the test module's ``vault`` (OpenBao, its KV v2 mount)."""
    parts = urlsplit(vault[0].addr)
    return fault_proxy(parts.hostname, parts.port)


def write_config(
    tmp_path: Path,
    vault: tuple[OpenBao, str],
    url: str,
    shared: str | None,
    *,
    backend: Mapping[str, Any] | None = None,
    **cache: Any,
) -> Path:
    """A ``credpath.toml``: the Vault backend at ``url`` (``backend``: more of its kwargs) and the shared
    tier ``shared`` (None: none; ``cache``: more ``[cache]`` settings)."""
    server, mount = vault
    lines = [
        "[[backends]]",
        'name = "vault"',
        'type = "vault"',
        "[backends.kwargs]",
        f"url = {json.dumps(url)}",
        f"token = {json.dumps(server.root_token)}",
        f"mount_point = {json.dumps(mount)}",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in (backend or {}).items()]
    if shared is not None:
        lines += ["[cache]", f"shared = {json.dumps(shared)}", f"shared_key = {json.dumps(KEY)}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in cache.items()]
    path = tmp_path / f"credpath-{len(list(tmp_path.glob('credpath-*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def worker_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a reader process: none of the outer credpath/Vault/Airflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDPATH_", "VAULT_", "AIRFLOW"))}
    env.update(PYTHONPATH=f"{REPO / 'src'}{os.pathsep}{REPO}", CREDPATH_HOME=str(tmp_path / "home"))
    return env


def path_for(config: Path) -> SearchPath:
    """A search path built from ``config``, as one more process of the deployment would."""
    return SearchPath.from_settings(load_settings(config, dict(os.environ)))


def start_readers(tmp_path: Path, config: Path, conn_id: str, count: int) -> tuple[list[Any], Path]:
    """``count`` reader processes (tests/_rotation_worker.py) of ``conn_id``, started together, and the
    file that stops them (named afresh: a test may start several groups)."""
    start, stop = tmp_path / f"start-{time.monotonic_ns()}", tmp_path / f"stop-{time.monotonic_ns()}"
    args = [str(config), str(start), str(stop), conn_id]
    return start_together(tmp_path, "tests._rotation_worker", args, count, start, settle=2.0), stop


def start_together(
    tmp_path: Path, module: str, args: list[str], count: int, start: Path, settle: float
) -> list[subprocess.Popen[str]]:
    """``count`` worker processes (``python -m module args``), released together by touching ``start``
    once ``settle`` seconds have let them import and build their search paths (they poll the file)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=worker_env(tmp_path),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    time.sleep(settle)
    start.touch()
    return procs


def stop_readers(procs: list[Any], stop: Path) -> list[list[tuple[float, str]]]:
    """Each reader's (time, value digest) reads, after checking it ended cleanly and leaked nothing."""
    stop.touch()
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert_no_secret(stdout + stderr)
        assert proc.returncode == 0, stderr[-2000:]
        if os.environ.get("CREDPATH_BENCH_READERS"):  # the bench shows what the tier said
            sys.stderr.write("".join(line + "\n" for line in stderr.splitlines() if "shared cache" in line))
        out.append([tuple(r) for r in json.loads(stdout.strip().splitlines()[-1])["reads"]])
    return out
