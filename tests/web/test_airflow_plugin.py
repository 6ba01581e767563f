"""The credpath plugin inside a real Airflow 3.3.2 API server: listed, mounted at /credpath, and behind
Airflow's own authentication (SimpleAuthManager: a token from /auth/token) and authorization (only a user
allowed to read connections and variables)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import assert_no_secret
from tests.servers._util import free_port, stop_process, wait_for_port

pytestmark = pytest.mark.airflow

ENV_PW = "env-airflow-s3cr3t-1"
META_PW = "meta-airflow-s3cr3t-2"
FILES_PW = "files-airflow-s3cr3t-3"
PASSWORDS = {"admin": "admin-pass-123", "viewer": "viewer-pass-456"}


def _http(url: str, token: str | None = None, data: bytes | None = None) -> tuple[int, str, dict[str, str]]:
    headers = {"Accept": "text/html"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def _auth_env(tmp: Path) -> dict[str, str]:
    passwords = tmp / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    return {
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }


def _serve(airflow: Any, tmp: Path, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    port = free_port()
    log_path = tmp / "api-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(airflow.bin / "airflow"), "api-server", "-H", "127.0.0.1", "-p", str(port)],
            env=airflow.env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=airflow.home,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout=120, proc=proc)
        deadline = time.monotonic() + 90
        while _http(f"{url}/api/v2/monitor/health")[0] != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.3)
        yield {"url": url, "env": env, "log": log_path}
    finally:
        stop_process(proc)
        assert_no_secret(log_path.read_text(errors="replace"), ENV_PW, META_PW, FILES_PW)


@pytest.fixture(scope="module")
def api_server(airflow: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("airflow-web")
    env = {
        **_auth_env(tmp),
        "AIRFLOW_CONN_WEB_DB": f"postgres://envuser:{ENV_PW}@env-host:5432/app",
        "AIRFLOW_VAR_WEB_REGION": "eu-north-1",
    }
    for conn_id in ("web_db", "web_meta_only"):
        result = airflow.run(
            "connections", "add", conn_id, "--conn-uri", f"postgres://meta:{META_PW}@meta-host:5432/{conn_id}",
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, "airflow connections add failed"
    yield from _serve(airflow, tmp, env)


@pytest.fixture(scope="module")
def credpath_api_server(airflow: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The API server with credpath as Airflow's secrets backend (a files backend and env, inline)."""
    tmp = tmp_path_factory.mktemp("airflow-web-credpath")
    connections = tmp / "connections.json"
    connections.write_text(json.dumps({"cp_files_db": f"mysql://fuser:{FILES_PW}@files-host:3306/shop"}))
    backends = [
        {"name": "cp-files", "type": "files", "kwargs": {"connections_file_path": str(connections)}},
        {"name": "cp-env", "type": "env"},
    ]
    env = {
        **_auth_env(tmp),
        "AIRFLOW__SECRETS__BACKEND": "credpath.airflow.CredpathBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"backends": backends}),
        "AIRFLOW_CONN_CP_ENV_DB": f"postgres://envuser:{ENV_PW}@env-host:5432/app",
    }
    yield from _serve(airflow, tmp, env)


def _token(url: str, user: str) -> str:
    body = json.dumps({"username": user, "password": PASSWORDS[user]}).encode()
    status, text, _ = _http(f"{url}/auth/token", data=body)
    assert status == 201, status
    return str(json.loads(text)["access_token"])


def test_plugin_is_listed(airflow: Any) -> None:
    result = airflow.run("plugins", "-o", "json")
    assert result.returncode == 0
    plugins = {p["name"]: p for p in json.loads(result.stdout[result.stdout.index("[") :])}
    plugin = plugins["credpath"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/credpath"
    assert plugin["external_views"] == [
        {"name": "Secrets", "href": "/credpath/", "url_route": "credpath", "destination": "nav",
         "category": "admin"}
    ]  # fmt: skip
    assert "credpath.airflow_plugin:CredpathPlugin" in plugin["source"]


def test_page_needs_airflow_auth_and_shows_airflow_chain(api_server: dict[str, Any], tmp_path: Path) -> None:
    url = api_server["url"]
    status, body, _ = _http(f"{url}/credpath/")
    assert status == 401
    assert "web_db" not in body
    status, body, _ = _http(f"{url}/credpath/metrics")
    assert status == 401
    viewer = _token(url, "viewer")
    status, body, _ = _http(f"{url}/credpath/", viewer)
    assert status == 403  # a viewer may not read connections
    assert "web_db" not in body

    admin = _token(url, "admin")
    status, body, headers = _http(f"{url}/credpath/", admin)
    assert status == 200
    assert (
        'data-id="web_db" data-kind="connection" data-source="airflow-env" data-shadowed="airflow-metastore"'
        in body
    )
    assert 'data-id="web_meta_only" data-kind="connection" data-source="airflow-metastore"' in body, body[
        body.find("web_meta_only") - 200 : body.find("web_meta_only") + 600
    ]
    assert 'data-id="web_region" data-kind="variable" data-source="airflow-env"' in body
    assert "eu-north-1" in body and "env-host" in body
    assert 'href="/credpath/backends"' in body  # links carry the mount prefix
    pages = [body, json.dumps(headers)]
    for path in ("/credpath/backends", "/credpath/id/connection?key=web_db", "/credpath/metrics"):
        status, text, headers = _http(f"{url}{path}", admin)
        assert status == 200, path
        pages += [text, json.dumps(headers)]
    assert 'data-backend="airflow-env" data-ok="yes"' in pages[2]
    assert "credpath_store_requests_total" in pages[-2]
    assert "credpath_lookups_total" in pages[-2]
    status, text, _ = _http(f"{url}/credpath/id/connection?key=nope_marker_zz", admin)
    assert status == 404 and "nope_marker_zz" not in text
    assert_no_secret("\n".join(pages), ENV_PW, META_PW)


def test_page_serves_credpath_backends_search_path_when_it_is_the_backend(
    credpath_api_server: dict[str, Any],
) -> None:
    url = credpath_api_server["url"]
    assert _http(f"{url}/credpath/")[0] == 401
    admin = _token(url, "admin")
    status, body, _ = _http(f"{url}/credpath/", admin)
    assert status == 200
    # CredpathBackend's own search path (its configured backend names), not Airflow's env/metastore chain.
    assert 'data-id="cp_files_db" data-kind="connection" data-source="cp-files"' in body
    assert 'data-id="cp_env_db" data-kind="connection" data-source="cp-env"' in body
    assert "airflow-metastore" not in body
    status, backends, _ = _http(f"{url}/credpath/backends", admin)
    assert status == 200 and 'data-backend="cp-files"' in backends and 'data-backend="cp-env"' in backends
    assert_no_secret(body + backends, ENV_PW, FILES_PW)
