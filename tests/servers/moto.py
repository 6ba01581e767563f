"""moto server (AWS Secrets Manager, SSM, STS, IAM over HTTP) for the AWS backends' tests.

- ``moto_server`` (session): one ``moto_server`` process on a free loopback port, stopped by PID.
- ``moto_env`` (function): wipes all state (``POST /moto-api/reset``), switches IAM enforcement off and sets
  fake credentials/region in the environment, isolated from any real ``~/.aws`` files.
- ``aws_secrets_manager_harness`` / ``aws_ssm_harness``: the contract-suite harnesses.
- ``aws_fault_proxy``: a loopback HTTP proxy in front of moto that answers the next N requests with a
  throttling or 5xx error, for retry tests (moto itself cannot be made to throttle).
- ``CallLog``: counts API calls (and the parameters of each) on a boto3 client through botocore's event
  hooks, so tests can prove request counts and batch sizes.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.servers._util import free_port, require_binary, stop_process, wait_for_port

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account


@dataclass
class MotoServer:
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _post(self, path: str, body: bytes = b"") -> None:
        # text/plain: with curl's default form type moto's Flask app swallows the body.
        request = urllib.request.Request(
            f"{self.url}{path}", data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def reset(self) -> None:
        self._post("/moto-api/reset")
        self.set_auth(None)

    def set_auth(self, free_actions: int | None) -> None:
        """Enforce IAM after ``free_actions`` more requests (None: never enforce, moto's default)."""
        self._post("/moto-api/reset-auth", b"inf" if free_actions is None else str(free_actions).encode())

    def client(self, service: str, **kwargs: Any) -> Any:
        import boto3

        from credpath.backends._aws import quiet_botocore_bodies

        quiet_botocore_bodies()  # seeding writes secret values: keep botocore's body logs out too

        params: dict[str, Any] = {
            "endpoint_url": self.url,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        params.update(kwargs)
        return boto3.client(service, **params)


def start_moto(port: int, log_path: Path) -> subprocess.Popen:
    """A ``moto_server`` process on ``port``, ready to answer; the caller stops it by PID (stop_process)."""
    binary = require_binary("moto_server", "pip install 'moto[server]'")
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, timeout=30, proc=proc)
    except BaseException:
        stop_process(proc)
        raise
    return proc


@pytest.fixture
def own_moto(moto_env: MotoServer, tmp_path: Path) -> Iterator[MotoServer]:
    """A moto process of this test's own (not the session's), so the test may kill and restart it."""
    server = MotoServer(port=free_port())
    server.proc = start_moto(server.port, tmp_path / "own-moto.log")
    try:
        yield server
    finally:
        if server.proc is not None:
            stop_process(server.proc)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    binary = require_binary("moto_server", "pip install 'moto[server]'")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield MotoServer(port=port, proc=proc)
    finally:
        stop_process(proc)


@pytest.fixture
def moto_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """A clean moto and an environment with fake credentials only (no real ~/.aws, no metadata service)."""
    moto_server.reset()
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER",
        "AWS_ENDPOINT_URL_SSM",
        "AWS_ENDPOINT_URL_STS",
        "AWS_REGION",
        "AIRFLOW__SECRETS__BACKEND",
        "AIRFLOW__SECRETS__BACKEND_KWARGS",
        "CREDPATH_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path / "credpath-home"))
    return moto_server


# --- call accounting -------------------------------------------------------------------------------


@dataclass
class CallLog:
    """API calls made through one boto3 client, recorded by botocore event hooks.

    ``calls`` holds (operation name, API parameters) per call; ``http_requests`` counts requests sent,
    retries included.
    """

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    http_requests: int = 0

    @classmethod
    def attach(cls, client: Any) -> CallLog:
        log = cls()

        def on_params(params: dict[str, Any], model: Any, **_: Any) -> None:
            log.calls.append((model.name, dict(params)))

        def on_send(**_: Any) -> None:
            log.http_requests += 1

        client.meta.events.register("provide-client-params.*.*", on_params)
        client.meta.events.register("before-send.*.*", on_send)
        return log

    @property
    def counts(self) -> Counter[str]:
        return Counter(name for name, _ in self.calls)

    def params(self, operation: str) -> list[dict[str, Any]]:
        return [p for name, p in self.calls if name == operation]

    def __len__(self) -> int:
        return len(self.calls)

    def clear(self) -> None:
        self.calls.clear()
        self.http_requests = 0


# --- harnesses for the contract suite ---------------------------------------------------------------


class _AwsHarness:
    def __init__(self, server: MotoServer) -> None:
        self.server = server
        self.backends: list[Any] = []
        self._client: Any = None

    def backend_kwargs(self, **kwargs: Any) -> dict[str, Any]:
        return {"endpoint_url": self.server.url, "region_name": REGION, **kwargs}

    def api_calls(self) -> int:
        """API calls made by every backend this harness built."""
        return sum(sum(b.aws.calls.values()) for b in self.backends)


class SecretsManagerHarness(_AwsHarness):
    """Secrets under Airflow's default prefixes; seeds through boto3's own client."""

    prefixes = {
        "connection": "airflow/connections",
        "variable": "airflow/variables",
        "config": "airflow/config",
    }

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.server.client("secretsmanager")
        return self._client

    def make_backend(self, **kwargs: Any) -> Any:
        from credpath.backends.aws_secrets_manager import SecretsManagerBackend

        backend = SecretsManagerBackend(**self.backend_kwargs(**kwargs))
        self.backends.append(backend)
        return backend

    def secret_id(self, kind: str, key: str) -> str:
        return f"{self.prefixes[kind]}/{key}"

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        self.seed_secret(self.secret_id(kind, key), raw_value)

    def seed_secret(self, name: str, raw_value: str) -> None:
        try:
            self.client.create_secret(Name=name, SecretString=raw_value)
        except self.client.exceptions.ResourceExistsException:
            self.client.put_secret_value(SecretId=name, SecretString=raw_value)


class ParameterStoreHarness(_AwsHarness):
    """SecureString parameters under Airflow's default prefixes; seeds through boto3's own client."""

    prefixes = {
        "connection": "/airflow/connections",
        "variable": "/airflow/variables",
        "config": "/airflow/config",
    }

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.server.client("ssm")
        return self._client

    def make_backend(self, **kwargs: Any) -> Any:
        from credpath.backends.aws_ssm import ParameterStoreBackend

        backend = ParameterStoreBackend(**self.backend_kwargs(**kwargs))
        self.backends.append(backend)
        return backend

    def parameter_name(self, kind: str, key: str) -> str:
        return f"{self.prefixes[kind]}/{key}"

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        self.seed_parameter(self.parameter_name(kind, key), raw_value)

    def seed_parameter(self, name: str, raw_value: str, type_: str = "SecureString") -> None:
        self.client.put_parameter(Name=name, Value=raw_value, Type=type_, Overwrite=True)


@pytest.fixture
def aws_secrets_manager_harness(moto_env: MotoServer) -> SecretsManagerHarness:
    return SecretsManagerHarness(moto_env)


@pytest.fixture
def aws_ssm_harness(moto_env: MotoServer) -> ParameterStoreHarness:
    return ParameterStoreHarness(moto_env)


# --- fault injection ---------------------------------------------------------------------------------


class FaultProxy:
    """Forwards to moto; ``fail_next(n, ...)`` answers the next ``n`` requests with an error instead."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests = 0
        self.failed = 0
        self.targets: list[str] = []  # X-Amz-Target of every request ("secretsmanager.GetSecretValue")
        #: (X-Amz-Target, moto's answer) -> the answer relayed: stands in for what moto cannot be told.
        self.rewrite: Any = None
        self._failures: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy.requests += 1
                    proxy.targets.append(self.headers.get("X-Amz-Target", ""))
                    failure = proxy._failures.pop(0) if proxy._failures else None
                    if failure is not None:
                        proxy.failed += 1
                if failure is not None:
                    status, code = failure
                    payload = json.dumps({"__type": code, "message": "injected by the test proxy"}).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("x-amzn-RequestId", "fault-proxy")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    upstream.request("POST", self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                if proxy.rewrite is not None:
                    data = proxy.rewrite(self.headers.get("X-Amz-Target", ""), data)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "server",
                        "date",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail_next(self, count: int, status: int = 400, code: str = "ThrottlingException") -> None:
        with self._lock:
            self._failures.extend([(status, code)] * count)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def aws_fault_proxy(moto_env: MotoServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(moto_env.port)
    try:
        yield proxy
    finally:
        proxy.close()
