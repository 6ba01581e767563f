"""A private PostgreSQL server on a free loopback port, for the metastore tests.

Install (Debian): ``apt-get update && apt-get install -y postgresql`` (the binaries land in
``/usr/lib/postgresql/<major>/bin``, not on PATH; no cluster needs to be running). The fixture runs ``initdb``
into a temp dir and ``postgres`` in the foreground (so it can be stopped by its PID, with a fast shutdown),
as the non-root ``postgres`` user when the tests run as root (PostgreSQL refuses to run as root). Password
authentication over TCP (scram) with a password carrying the leak-guard marker, so any leak of the URL's
password fails the test that leaked it. fsync is off: the data is throwaway.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers._util import IN_CI, free_port, stop_process, wait_for_port

PG_USER = "credpath"
PG_PASSWORD = "db-s3cr3t-pw"
INSTALL_HINT = "apt-get update && apt-get install -y postgresql"


def _pg_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


@dataclass
class PostgresServer:
    port: int
    bindir: str
    admin_url: str
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _wait_ready(admin_url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    # The port opens before recovery ends ("the database system is starting up"): wait for a real session.
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(admin_url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _run_as(user: str | None) -> dict:
    return {"user": user} if user else {}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None:
        message = f"PostgreSQL server binaries not found ({INSTALL_HINT})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    run_user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no 'postgres' user to run the server as")
        run_user = "postgres"

    tmp = tempfile.mkdtemp(prefix="credpath-pg-")
    data, sockets, pwfile = Path(tmp, "data"), Path(tmp, "sock"), Path(tmp, "pw")
    sockets.mkdir()
    pwfile.write_text(PG_PASSWORD + "\n")
    if run_user:
        uid = pwd.getpwnam(run_user).pw_uid
        for path in (tmp, sockets, pwfile):
            os.chown(path, uid, -1)
    subprocess.run(
        [
            f"{bindir}/initdb",
            "-D",
            str(data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp,
        **_run_as(run_user),
    )
    pwfile.unlink()
    port = free_port()
    log_path = Path(tmp, "server.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                f"{bindir}/postgres",
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(sockets),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=60",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp,
            **_run_as(run_user),
        )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        # The admin connection goes through the Unix socket (trust), so it needs no password.
        admin_url = f"host={sockets} port={port} user={PG_USER} dbname=postgres"
        _wait_ready(admin_url, proc)
        yield PostgresServer(port=port, bindir=bindir, admin_url=admin_url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: do not wait for pooled client sessions
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
