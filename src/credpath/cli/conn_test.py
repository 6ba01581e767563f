"""``credpath connections test ID``: can this machine use the connection?

Airflow runs ``connections test`` where tasks run (on workers), since the machine that resolves a
connection is the one whose network and credentials matter. credpath resolves the id through its search
path, then:

- where Apache Airflow and the provider of the connection's ``conn_type`` are installed: the provider hook's
  own ``test_connection()`` (Airflow's ``Connection.test_connection``; the connection is handed to the hook
  through ``AIRFLOW_CONN_<ID>`` for the duration, as Airflow's API does);
- otherwise (or with ``--tcp``): a TCP connect to the host and port (the port from the connection, else the
  conn_type's usual one).

Either way within ``--timeout`` seconds (the whole test), one line of result, exit 0 (works) or 1 (does not,
or not found; 2 for bad input). The line never carries a secret: every secret value of the connection is
replaced by ``***`` in it, whatever the hook's message says.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from credpath.cli import EXIT_NOT_FOUND, State, fail, handle_errors, pass_state
from credpath.cli.connections import connections, team_kwargs, team_option

if TYPE_CHECKING:
    from credpath.model import Connection

# socket, urllib, credpath._deadlines and Airflow are imported when a test runs: registering the command
# costs the CLI's start-up nothing.

__all__ = ["DEFAULT_PORTS", "connection_test_command", "hook_test", "tcp_test"]

#: The usual port of a conn_type, for connections that name none.
DEFAULT_PORTS: dict[str, int] = {
    "amqp": 5672,
    "ftp": 21,
    "http": 80,
    "https": 443,
    "mongo": 27017,
    "mssql": 1433,
    "mysql": 3306,
    "oracle": 1521,
    "postgres": 5432,
    "postgresql": 5432,
    "redis": 6379,
    "sftp": 22,
    "smtp": 25,
    "ssh": 22,
    "trino": 8080,
    "vertica": 5433,
}


EXIT_FAILED = 1  # the connection does not work from here (as the CLI's other failures)


class _TimedOut(Exception):
    pass


def _positive(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not value > 0:
        raise click.BadParameter("must be a positive number of seconds")
    return value


def _redact(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())  # one line, whatever the hook said


def _address(conn: Connection) -> tuple[str | None, int | None]:
    from urllib.parse import urlsplit

    host, port = conn.host, conn.port
    if host and "://" in host:  # an http connection may keep a URL as its host
        parts = urlsplit(host)
        host = parts.hostname
        try:
            port = port or parts.port or DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            port = None
    return host or None, port or DEFAULT_PORTS.get((conn.conn_type or "").lower())


def tcp_test(conn: Connection, timeout: float) -> tuple[bool, str]:
    """Connect to the connection's host and port within ``timeout`` (name resolution included)."""
    import socket
    import time

    from credpath._deadlines import Deadline, call_with_deadline

    host, port = _address(conn)
    if host is None:
        return False, "no host to check"
    if port is None:
        return False, f"no port to check on {host} (the connection names none and its type has no usual one)"
    deadline = Deadline(timeout)
    started = time.monotonic()

    def connect() -> None:
        with socket.create_connection((host, port), timeout=max(deadline.remaining(), 0.001)):
            pass

    try:
        call_with_deadline(connect, deadline, on_timeout=_TimedOut)
    except (_TimedOut, TimeoutError):
        return False, f"TCP {host}:{port} gave no answer within {timeout:g} s"
    except OSError as exc:
        return False, f"TCP {host}:{port} not reachable ({exc.strerror or type(exc).__name__})"
    return True, f"TCP {host}:{port} reachable in {(time.monotonic() - started) * 1000:.0f} ms"


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Airflow logs to the process's stdout (its handlers hold the stream, or fd 1): send fd 1 to stderr
    meanwhile, so stdout carries only the result line."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured output (tests): nothing to move
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        os.dup2(sys.stderr.fileno(), fd)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)


def _hook_available(conn_type: str) -> bool:
    import importlib.util

    if not conn_type or importlib.util.find_spec("airflow") is None:
        return False
    try:  # the Task SDK's registry (Airflow 3.2+), else core's (deprecated there)
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Providers
    except ImportError:
        try:
            from airflow.providers_manager import ProvidersManager as Providers
        except ImportError:
            return False
    return Providers().hooks.get(conn_type) is not None


def hook_test(conn: Connection, timeout: float) -> tuple[bool, str] | None:
    """Airflow's ``Connection.test_connection()`` (the provider hook's test) within ``timeout``; None
    where Airflow or the conn_type's provider is not installed, or the hook has no test."""
    if not _hook_available(conn.conn_type or ""):
        return None
    from airflow.models.connection import Connection as AirflowConnection

    from credpath._deadlines import Deadline, call_with_deadline

    conn_id = conn.conn_id or "credpath_test"
    variable = f"AIRFLOW_CONN_{conn_id.upper()}"
    value = conn.to_json()

    def run() -> tuple[bool, str]:
        # The hook resolves the id again through Airflow's chain: give it this connection, as Airflow's
        # API does for a connection under test.
        previous = os.environ.get(variable)
        os.environ[variable] = value
        try:
            airflow_conn = AirflowConnection.from_json(value, conn_id=conn_id)
            status, message = airflow_conn.test_connection()
        finally:
            if previous is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = previous
        return bool(status), str(message or "")

    try:
        with _stdout_to_stderr():
            ok, message = call_with_deadline(run, Deadline(timeout), on_timeout=_TimedOut)
    except _TimedOut:
        return False, f"the {conn.conn_type} hook's test gave no answer within {timeout:g} s"
    if not ok and "doesn't implement or inherit test_connection" in message:
        return None
    verdict = f"{conn.conn_type} hook test {'passed' if ok else 'failed'}"
    return ok, verdict + (f": {message}" if message else "")


@connections.command("test")
@click.argument("conn_id")
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    callback=_positive,
    help="Seconds for the whole test.",
)
@click.option("--tcp", "tcp_only", is_flag=True, help="Only check that the host's port accepts connections.")
@team_option
@pass_state
@handle_errors
def connection_test_command(
    state: State, conn_id: str, timeout: float, tcp_only: bool, team: str | None
) -> None:
    """Test a connection from this machine: the provider hook's test where Airflow has one, else TCP."""
    resolution = state.search_path.lookup("connection", conn_id, **team_kwargs(team))
    if resolution is None:
        fail(f"connection {conn_id!r} not found in any backend of the search path", EXIT_NOT_FOUND)
        return
    conn: Connection = resolution.value
    outcome: Any = None if tcp_only else hook_test(conn, timeout)
    if outcome is None:
        outcome = tcp_test(conn, timeout)
    ok, text = outcome
    what = f"connection {conn_id!r} ({conn.conn_type or 'no type'}, from {resolution.source!r})"
    click.echo(_redact(f"{what}: {'ok' if ok else 'FAILED'}: {text}", conn.secret_values()))
    raise SystemExit(0 if ok else EXIT_FAILED)
