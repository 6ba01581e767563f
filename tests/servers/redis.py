"""A private Redis server on a free loopback port, for the shared cache tier's tests.

Install (Debian): ``apt-get install -y redis-server`` (scripts/test does it). The fixture runs
``redis-server`` in the foreground with a password (carrying the leak-guard marker, so a leaked URL fails
the test that leaked it), no persistence, and stops it by its PID. :meth:`RedisServer.restart` stops and
starts it again on the same port (empty: nothing is persisted), for "a restarted Redis" tests.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers._util import free_port, require_binary, stop_process, wait_for_port

REDIS_PASSWORD = "redis-s3cr3t-pw"
INSTALL_HINT = "apt-get install -y redis-server"


@dataclass
class RedisServer:
    port: int
    binary: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=REDIS_PASSWORD, socket_timeout=5)

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--requirepass",
                REDIS_PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for_port(self.port, timeout=20, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def flush(self) -> None:
        self.client().flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = require_binary("redis-server", INSTALL_HINT)
    pytest.importorskip("redis", reason="redis-py missing: pip install 'credpath[redis]'")
    server = RedisServer(port=free_port(), binary=binary, workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's server, running and empty, for one test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis_server.flush()
    yield redis_server.url
