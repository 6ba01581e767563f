"""``credpath connections test ID``: a real listening socket, a closed port, the deadline, bad input, and
(marker ``airflow``) the provider hook's own test inside Airflow 3.3.2."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from credpath.api import set_default_search_path
from credpath.cli import cli
from tests.conftest import assert_no_secret
from tests.servers.airflow_env import clean_environment

PW = "pw-s3cr3t-conntest"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "home"))
    for name in ("CREDPATH_CONFIG", "CREDPATH_METASTORE_URL", "AIRFLOW__SECRETS__BACKEND"):
        monkeypatch.delenv(name, raising=False)
    set_default_search_path(None)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(cli, ["connections", "test", *args], catch_exceptions=False)
        assert_no_secret(result.stdout)
        assert_no_secret(result.stderr)
        return result

    return invoke


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_listening_port_passes_in_one_line(
    run: Any, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SVC", f"postgres://app:{PW}@127.0.0.1:{listener}/db")
    result = run("svc", "--tcp")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    assert f"TCP 127.0.0.1:{listener} reachable" in result.stdout and "'svc'" in result.stdout


def test_a_closed_port_fails_with_exit_1(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    port = _closed_port()
    monkeypatch.setenv("AIRFLOW_CONN_SVC", f"postgres://app:{PW}@127.0.0.1:{port}/db")
    result = run("svc")  # no Airflow here: the TCP check is the test
    assert result.exit_code == 1
    assert result.stdout.count("\n") == 1 and "not reachable" in result.stdout and "FAILED" in result.stdout


def test_the_usual_port_of_the_type_and_a_url_host(
    run: Any, listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_API", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{listener}/v1"})
    )
    assert run("api").exit_code == 0
    monkeypatch.setenv("AIRFLOW_CONN_NOPORT", json.dumps({"conn_type": "custom", "host": "127.0.0.1"}))
    result = run("noport")
    assert result.exit_code == 1 and "no port to check" in result.stdout
    monkeypatch.setenv("AIRFLOW_CONN_NOHOST", json.dumps({"conn_type": "postgres", "password": PW}))
    result = run("nohost")
    assert result.exit_code == 1 and "no host" in result.stdout


def test_the_whole_test_has_a_deadline(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SLOW", f"postgres://app:{PW}@slow.example:5432/db")
    real = socket.create_connection

    def hanging(address: Any, *args: Any, **kwargs: Any) -> Any:
        if address[0] == "slow.example":
            time.sleep(3)  # name resolution that hangs, which a socket timeout does not bound
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", hanging)
    started = time.monotonic()
    result = run("slow", "--timeout", "0.3")
    assert time.monotonic() - started < 2.0
    assert result.exit_code == 1 and "no answer within 0.3 s" in result.stdout


def test_not_found_and_bad_input(run: Any) -> None:
    result = run("nope")
    assert result.exit_code == 1 and "'nope' not found" in result.stderr
    bad = run("x", "--timeout", "0")
    assert bad.exit_code == 2 and "--timeout" in bad.stderr


# --- the provider hook's test, inside Airflow -------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path.startswith("/ok") else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.airflow
def test_the_provider_hook_test_runs_where_airflow_is_installed(
    airflow_venv: Path, tmp_path: Path, http_server: int
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = clean_environment(home, airflow_venv)
    env["CREDPATH_HOME"] = str(home / "credpath")
    # The http provider's HttpHook.test_connection GETs the base URL: a 500 fails the hook's test where a
    # TCP check would pass, so the verdicts show which test ran.
    base = {"conn_type": "http", "login": "u", "password": PW}
    url = f"http://127.0.0.1:{http_server}"
    env["AIRFLOW_CONN_LITE"] = json.dumps({**base, "host": f"{url}/ok"})
    env["AIRFLOW_CONN_BROKEN"] = json.dumps({**base, "host": f"{url}/fail"})
    credpath_cli = str(airflow_venv / "bin" / "credpath")

    def test(conn_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [credpath_cli, "connections", "test", conn_id, "--timeout", "60"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=home,
        )

    ok, broken = test("lite"), test("broken")
    for result in (ok, broken):
        assert_no_secret(result.stdout)
        assert_no_secret(result.stderr)
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    # Airflow's own log lines go to stderr; the result is the one line on stdout.
    assert ok.stdout.count("\n") == 1 and "http hook test passed" in ok.stdout
    assert broken.returncode == 1 and broken.stdout.count("\n") == 1
    assert "http hook test failed" in broken.stdout and "500" in broken.stdout
