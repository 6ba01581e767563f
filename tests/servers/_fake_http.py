"""What the two HTTP fakes (GCP Secret Manager, Azure Key Vault) share, and their backends' end-to-end checks.

- :class:`LoopbackHttpFake`: a threaded HTTP(S) server on a free loopback port, served from a daemon thread,
  answering JSON; a fake implements ``respond`` only.
- :class:`FakeHarness`: the contract-suite harness parts that do not depend on the store.
- ``write_config`` / ``check_search_path`` / ``check_cli_get_and_add``: the config file -> search path and
  CLI tests both backends run (each test then checks what landed in its store).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Self

import pytest

URI = "postgres://app:pw-s3cr3t-1@db.example.com:5432/analytics"


class Reply(NamedTuple):
    status: int
    payload: dict[str, Any] | None  # None: no body (e.g. 204)
    headers: dict[str, str] = {}  # sent before Content-Type


class LoopbackHttpFake:
    """Base of the HTTP fakes: ``respond`` served on 127.0.0.1 from a daemon thread (``start``/``stop``)."""

    #: The HTTP verbs the fake answers; others get the standard library's 501.
    methods: ClassVar[tuple[str, ...]] = ("GET", "POST", "PATCH", "DELETE")
    content_type: ClassVar[str] = "application/json; charset=UTF-8"
    #: Headers every answer carries, after Content-Length.
    fixed_headers: ClassVar[dict[str, str]] = {}

    def respond(self, method: str, raw_path: str, headers: Any, body: bytes) -> Reply:  # pragma: no cover
        raise NotImplementedError

    # --- faults in the transport (the fault tier): the request is handled and counted, the answer is not
    # sent ("hang") or sent one byte every ``interval`` seconds ("trickle"). Bounded: stop() ends both.

    def slow_next(self, mode: str, count: int = 1, interval: float = 0.5) -> None:
        if mode not in ("hang", "trickle"):
            raise ValueError(mode)
        with self._slow_lock():
            self.__dict__.setdefault("_slow", []).extend([(mode, interval)] * count)

    def _slow_lock(self) -> threading.Lock:
        return self.__dict__.setdefault("_slow_mutex", threading.Lock())

    def _take_slow(self) -> tuple[str, float] | None:
        with self._slow_lock():
            slow = self.__dict__.get("_slow")
            return slow.pop(0) if slow else None

    def clear_slow(self) -> None:
        with self._slow_lock():
            self.__dict__["_slow"] = []

    @property
    def stopped(self) -> threading.Event:
        return self.__dict__.setdefault("_stopped", threading.Event())

    def serve(self, thread_name: str, tls: ssl.SSLContext | None = None) -> None:
        """Bind the server (a free port, in ``self.port``); ``start`` runs it. TLS if given a context."""
        handler = _handler_class(self, tls is not None)
        if tls is None:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        else:
            self.server = _TlsServer(("127.0.0.1", 0), handler, tls)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=thread_name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive responses stall ~40 ms on delayed ACKs
    fake: ClassVar[LoopbackHttpFake]

    def log_message(self, format: str, *args: Any) -> None:  # quiet: bodies may hold test secrets
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload, headers = self.fake.respond(self.command, self.path, self.headers, body)
        slow = self.fake._take_slow()
        if slow is not None and slow[0] == "hang":
            self.fake.stopped.wait(60)
            self.close_connection = True
            return
        if slow is not None:
            self._trickle(status, payload, headers, slow[1])
            return
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if payload is not None:
            self.send_header("Content-Type", self.fake.content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in self.fake.fixed_headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _trickle(self, status: int, payload: Any, headers: dict[str, str], interval: float) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        head = f"HTTP/1.1 {status} OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if payload is not None:
            head += f"Content-Type: {self.fake.content_type}\r\n"
        for key, value in self.fake.fixed_headers.items():
            head += f"{key}: {value}\r\n"
        raw = (head + f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
        self.close_connection = True
        for i in range(len(raw)):
            if self.fake.stopped.wait(interval):
                return
            self.wfile.write(raw[i : i + 1])
            self.wfile.flush()


class _TlsHandler(_Handler):
    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(10)
        self.connection.do_handshake()


def _handler_class(fake: LoopbackHttpFake, tls: bool) -> type[BaseHTTPRequestHandler]:
    base = _TlsHandler if tls else _Handler
    verbs = {f"do_{method}": base._dispatch for method in fake.methods}
    return type("Handler", (base,), {"fake": fake, **verbs})


class _TlsServer(ThreadingHTTPServer):
    """Handshake in the request thread, so one slow client does not block accept()."""

    def __init__(self, address: tuple[str, int], handler: type, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet TLS resets on shutdown
        pass


# --- contract-suite harness -------------------------------------------------------------------------------


class FakeHarness:
    """Harness parts shared by the fakes: Airflow's default prefixes, the fake's own client, call counts."""

    connections_prefix = "airflow-connections"
    variables_prefix = "airflow-variables"
    config_prefix = "airflow-config"
    sep = "-"

    def __init__(self, fake: Any) -> None:
        self.fake = fake
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.fake.client()
        return self._client

    def map_name(self, name: str) -> str:
        """The store's spelling of a glued name (as is unless the store maps it)."""
        return name

    def secret_name(self, kind: str, key: str) -> str:
        prefix = {"connection": self.connections_prefix, "variable": self.variables_prefix}.get(
            kind, self.config_prefix
        )
        return self.map_name(f"{prefix}{self.sep}{key}")

    def api_calls(self) -> int:
        return self.fake.count()


# --- end to end: config file -> search path, CLI ------------------------------------------------------------


def write_config(tmp_path: Path, name: str, class_path: str, kwargs: str) -> str:
    """A credpath.toml with one backend ``name`` (``on_error = "fail"``, ``kwargs`` an inline table body)."""
    path = tmp_path / "credpath.toml"
    path.write_text(
        f"""
[[backends]]
name = "{name}"
type = "{class_path}"
on_error = "fail"
kwargs = {{ {kwargs} }}

[cache]
enabled = false
"""
    )
    return str(path)


def use_config(monkeypatch: pytest.MonkeyPatch, config: str, tmp_path: Path) -> None:
    """Point the CLI at ``config`` only (no Airflow secrets backend from the environment)."""
    monkeypatch.setenv("CREDPATH_CONFIG", config)
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AIRFLOW__SECRETS__BACKEND", raising=False)


def check_search_path(h: Any, config: str) -> None:
    """Connections, variables and config seeded natively resolve through a search path from ``config``."""
    from credpath._search_path import SearchPath

    h.seed("connection", "warehouse", URI)
    h.seed("variable", "settings", json.dumps({"retries": 3}))
    h.seed("config", "core__fernet_key", "fk")
    sp = SearchPath.from_config(config, env={})
    assert sp.get_connection("warehouse").host == "db.example.com"
    assert sp.get_variable("settings", deserialize_json=True) == {"retries": 3}
    assert sp.get_config("core__fernet_key") == "fk"
    assert sp.get_variable("absent", default=None) is None


def check_cli_get_and_add(
    h: Any, config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, conn_id: str
) -> None:
    """``connections get`` masks and names ``source``, a miss exits 1, ``connections add conn_id --to`` works.

    The caller checks what the add stored (host ``mysql.example``).
    """
    from click.testing import CliRunner

    from credpath.api import set_default_search_path
    from credpath.cli import cli
    from tests.conftest import assert_no_secret

    use_config(monkeypatch, config, tmp_path)
    set_default_search_path(None)
    h.seed("connection", "warehouse", URI)
    runner = CliRunner()
    result = runner.invoke(cli, ["connections", "get", "warehouse", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert_no_secret(result.output)
    data = json.loads(result.stdout)
    assert (data["host"], data["password"], data["source"]) == ("db.example.com", "***", source)
    assert runner.invoke(cli, ["connections", "get", "nope"], catch_exceptions=False).exit_code == 1
    result = runner.invoke(
        cli,
        ["connections", "add", conn_id, "--uri", "mysql://u:pw-s3cr3t-9@mysql.example/db", "--to", source],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert_no_secret(result.output)
