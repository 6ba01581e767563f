"""VaultBackend against a real OpenBao dev server: KV v1/v2, paths, misses, errors, writes, listing.

Auth methods, token life cycle and request counts are in test_vault_auth.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import pytest

from credpath.backends.vault import VaultBackend, VaultSettings, WriteConflict
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.model import Connection
from credpath.registry import create_backend
from tests.conftest import assert_no_secret
from tests.servers._util import free_port
from tests.servers.openbao import OpenBao, RequestLog, VaultBackends, _start

PASSWORD = "pw-s3cr3t-1"


@pytest.fixture
def make(openbao: OpenBao) -> Iterator[Callable[..., VaultBackend]]:
    """Build backends on the session server (root token by default); close them (and their sessions) after."""
    backends = VaultBackends(url=openbao.addr, token=openbao.root_token)
    yield backends
    backends.close()


def count(backend: VaultBackend) -> RequestLog:
    return RequestLog().attach(backend)


# --- reading -----------------------------------------------------------------------------------------


def test_kv2_connection_uri_json_map_and_description(openbao: OpenBao, openbao_kv2: str, make) -> None:
    openbao.put(
        openbao_kv2, 2, "connections/by_uri", {"conn_uri": f"postgres://u:{PASSWORD}@db.example:5432/app"}
    )
    openbao.put(
        openbao_kv2,
        2,
        "connections/by_map",
        {
            "conn_type": "http",
            "host": "api.example",
            "password": PASSWORD,
            "port": 8443,
            "extra": {"a": 1, "b": "x"},
        },
    )
    openbao.put(
        openbao_kv2,
        2,
        "connections/with_desc",
        {"conn_uri": "http://api.example", "description": "primary API"},
    )
    backend = make(mount_point=openbao_kv2)

    assert backend.get_conn_value("by_uri") == f"postgres://u:{PASSWORD}@db.example:5432/app"
    by_uri = backend.get_connection("by_uri")
    assert (by_uri.conn_type, by_uri.host, by_uri.login, by_uri.password, by_uri.port, by_uri.schema) == (
        "postgres",
        "db.example",
        "u",
        PASSWORD,
        5432,
        "app",
    )
    by_map = backend.get_connection("by_map")
    assert (by_map.conn_type, by_map.host, by_map.password, by_map.port) == (
        "http",
        "api.example",
        PASSWORD,
        8443,
    )
    assert by_map.extra_dejson == {"a": 1, "b": "x"}
    assert json.loads(backend.get_conn_value("by_map"))["host"] == "api.example"
    assert backend.get_connection("with_desc").description == "primary API"
    assert backend.get_conn_value("absent") is None
    assert backend.get_connection("absent") is None


def test_variables_and_config_use_the_value_key(openbao: OpenBao, openbao_kv2: str, make) -> None:
    openbao.put(openbao_kv2, 2, "variables/plain", {"value": "hello"})
    openbao.put(openbao_kv2, 2, "variables/structured", {"value": {"n": 1}})
    openbao.put(openbao_kv2, 2, "config/sql_alchemy_conn", {"value": "sqlite://"})
    backend = make(mount_point=openbao_kv2)
    assert backend.get_variable("plain") == "hello"
    assert json.loads(backend.get_variable("structured")) == {"n": 1}
    assert backend.get_config("sql_alchemy_conn") == "sqlite://"
    assert backend.get_variable("absent") is None
    assert backend.get_config("absent") is None


def test_secret_without_value_key_is_a_warned_miss_as_in_airflow(
    openbao: OpenBao, openbao_kv2: str, make, caplog: pytest.LogCaptureFixture
) -> None:
    """Airflow's VaultBackend logs a warning and returns None (the next backend is asked)."""
    openbao.put(openbao_kv2, 2, "variables/wrong", {"val": PASSWORD, "note": "x"})
    openbao.put(openbao_kv2, 2, "config/wrong", {"val": PASSWORD})
    backend = make(mount_point=openbao_kv2, config_path="config")
    with caplog.at_level(logging.WARNING, logger="credpath.backends.vault"):
        assert backend.get_variable("wrong") is None
        assert backend.get_config("wrong") is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert f"{openbao_kv2}/variables/wrong" in messages[0] and "note, val" in messages[0]
    for message in messages:
        assert "no 'value' key" in message and "\n" not in message
        assert_no_secret(message, PASSWORD, openbao.root_token)


def test_kv1_mount_is_detected_once(openbao: OpenBao, openbao_kv1: str, make) -> None:
    openbao.put(openbao_kv1, 1, "variables/v", {"value": "from-v1"})
    openbao.put(openbao_kv1, 1, "connections/c", {"conn_uri": "http://h.example"})
    backend = make(mount_point=openbao_kv1, kv_engine_version="auto")
    counter = count(backend)
    for _ in range(3):
        assert backend.get_variable("v") == "from-v1"
        assert backend.get_connection("c").host == "h.example"
    assert len(counter.matching("sys/internal/ui/mounts")) == 1


def test_kv_engine_version_omitted_is_airflows_v2_with_no_probe(
    openbao: OpenBao, openbao_kv2: str, make
) -> None:
    # Airflow's provider assumes KV v2 and makes no detection request; so does credpath unless "auto".
    openbao.put(openbao_kv2, 2, "variables/v", {"value": "x"})
    for version in ({}, {"kv_engine_version": None}):
        backend = make(mount_point=openbao_kv2, **version)
        counter = count(backend)
        assert backend.get_variable("v") == "x"
        assert counter.requests == [f"GET /v1/{openbao_kv2}/data/variables/v"]
        assert "kv=v2" in backend.describe()


def test_explicit_engine_version_skips_detection(openbao: OpenBao, openbao_kv1: str, make) -> None:
    openbao.put(openbao_kv1, 1, "variables/v", {"value": "x"})
    backend = make(mount_point=openbao_kv1, kv_engine_version=1)
    counter = count(backend)
    assert backend.get_variable("v") == "x"
    assert not counter.matching("sys/internal/ui/mounts")


def test_mount_point_none_takes_mount_from_first_segment(
    openbao: OpenBao, openbao_kv1: str, openbao_kv2: str, make
) -> None:
    openbao.put(openbao_kv1, 1, "connections/a", {"conn_uri": "http://one.example"})
    openbao.put(openbao_kv2, 2, "connections/b/c", {"conn_uri": "http://two.example"})
    backend = make(mount_point=None, kv_engine_version="auto")
    counter = count(backend)
    assert backend.get_connection(f"{openbao_kv1}/a").host == "one.example"
    assert backend.get_connection(f"{openbao_kv2}/b/c").host == "two.example"
    before = len(counter)
    assert backend.get_conn_value("no_mount_segment") is None
    assert backend.get_conn_value(f"{openbao_kv1}/../sys/x") is None
    assert len(counter) == before  # impossible ids cost no request
    assert backend.get_conn_value("no-such-mount/x") is None  # an unknown mount is a miss
    listed = backend.list_connections()
    assert f"{openbao_kv1}/a" in listed and f"{openbao_kv2}/b/c" in listed


def test_null_path_switches_a_kind_off_and_patterns_skip_calls(
    openbao: OpenBao, openbao_kv2: str, make
) -> None:
    openbao.put(openbao_kv2, 2, "variables/v", {"value": "x"})
    openbao.put(openbao_kv2, 2, "v", {"value": "bare"})
    off = make(mount_point=openbao_kv2, variables_path=None, kv_engine_version=2)
    counter = count(off)
    assert off.get_variable("v") is None
    patterned = make(mount_point=openbao_kv2, variables_lookup_pattern="^team_", kv_engine_version=2)
    counter2 = count(patterned)
    assert patterned.get_variable("v") is None
    assert len(counter) == 0 and len(counter2) == 0
    bare = make(mount_point=openbao_kv2, variables_path="")
    assert bare.get_variable("v") == "bare"


def test_soft_deleted_and_destroyed_versions_are_misses(openbao: OpenBao, openbao_kv2: str, make) -> None:
    kv = openbao.admin.secrets.kv.v2
    openbao.put(openbao_kv2, 2, "variables/soft", {"value": "old"})
    openbao.put(openbao_kv2, 2, "variables/soft", {"value": "new"})
    kv.delete_latest_version_of_secret("variables/soft", mount_point=openbao_kv2)
    openbao.put(openbao_kv2, 2, "variables/gone", {"value": "v1"})
    kv.destroy_secret_versions("variables/gone", versions=[1], mount_point=openbao_kv2)
    backend = make(mount_point=openbao_kv2)
    assert backend.get_variable("soft") is None  # never falls back to the older version
    assert backend.get_variable("gone") is None
    kv.undelete_secret_versions("variables/soft", versions=[2], mount_point=openbao_kv2)
    assert backend.get_variable("soft") == "new"


def test_path_ids_are_url_quoted(openbao: OpenBao, openbao_kv2: str, make) -> None:
    openbao.put(openbao_kv2, 2, "variables/with space?q", {"value": "odd"})
    backend = make(mount_point=openbao_kv2)
    assert backend.get_variable("with space?q") == "odd"
    assert backend.get_variable("with space") is None


# --- errors ------------------------------------------------------------------------------------------


def test_unreachable_server_is_a_backend_error_naming_the_url() -> None:
    port = free_port()
    backend = VaultBackend(url=f"http://127.0.0.1:{port}", token="t-s3cr3t", timeout=2)
    with pytest.raises(BackendError) as info:
        backend.get_variable("x")
    assert not isinstance(info.value, AccessDenied)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_no_secret(str(info.value))
    backend.close()


def test_sealed_server_is_a_backend_error_and_reads_retry_until_unsealed(tmp_path) -> None:
    server = _start(tmp_path)
    try:
        unseal_key = server.unseal_key()
        server.put("secret", 2, "variables/v", {"value": "x"})
        backend = VaultBackend(url=server.addr, token=server.root_token)
        assert backend.get_variable("v") == "x"
        server.admin.sys.seal()
        with pytest.raises(BackendError) as info:
            backend.get_variable("v")
        assert "sealed" in str(info.value) and "variables/v" in str(info.value)
        # Writes are never replayed: one POST, no retry.
        log = count(backend)
        with pytest.raises(BackendError, match="sealed"):
            backend.set_variable("w", "x")
        assert log.matching("POST") == ["POST /v1/secret/data/variables/w"]
        # 503 while sealed is retried with backoff: unsealing during the retries makes the read succeed.
        timer = threading.Timer(0.05, lambda: server.admin.sys.submit_unseal_key(unseal_key))
        timer.start()
        assert backend.get_variable("v") == "x"
        timer.join()
        assert len(log.matching("GET /v1/secret/data/variables/v")) >= 2  # a 503, then the value
        backend.close()
    finally:
        from tests.servers._util import stop_process

        stop_process(server.proc)


def test_policy_denial_names_path_and_auth_method(openbao: OpenBao, openbao_kv2: str, make) -> None:
    openbao.put(openbao_kv2, 2, "variables/v", {"value": "x"})
    openbao.policy("only-elsewhere", 'path "elsewhere/*" { capabilities = ["read"] }')
    token = openbao.admin.auth.token.create(policies=["only-elsewhere"], ttl="5m")["auth"]["client_token"]
    backend = make(mount_point=openbao_kv2, kv_engine_version=2, token=token)
    with pytest.raises(AccessDenied) as info:
        backend.get_variable("v")
    message = str(info.value)
    assert f"{openbao_kv2}/variables/v" in message and "'token'" in message and "policy" in message
    assert token not in message
    # With detection, a mount the policy does not cover is the clear error too.
    detecting = make(mount_point=openbao_kv2, token=token, kv_engine_version="auto")
    with pytest.raises(AccessDenied, match=f"mount '{openbao_kv2}'"):
        detecting.get_variable("v")


def test_invalid_settings_are_one_line_config_errors(openbao: OpenBao) -> None:
    with pytest.raises(ConfigError, match="auth_type 'kerberos' is not one of"):
        VaultBackend(url=openbao.addr, auth_type="kerberos")
    with pytest.raises(ConfigError, match="kv_engine_version must be 1, 2 or 'auto'"):
        VaultBackend(url=openbao.addr, kv_engine_version=3)
    with pytest.raises(ConfigError, match="auth_type 'approle' needs role_id"):
        VaultBackend(url=openbao.addr, auth_type="approle")
    with pytest.raises(ConfigError, match="jwt_token or jwt_token_path"):
        VaultBackend(url=openbao.addr, auth_type="jwt", jwt_role="r")
    with pytest.raises(ConfigError, match=r"unknown kwarg.*kv_version"):
        create_backend("vault", {"url": openbao.addr, "kv_version": 2})
    backend = create_backend("airflow.providers.hashicorp.secrets.vault.VaultBackend", {"url": openbao.addr})
    assert isinstance(backend, VaultBackend)


def test_settings_are_one_frozen_checked_value() -> None:
    backend = VaultBackend(
        url="http://user:pw-s3cr3t-u@127.0.0.1:1/",
        auth_type="approle",
        role_id="role",
        secret_id="sid-s3cr3t",
        connections_path=["team/", "common"],
        cert=["c.pem", "k.pem"],
        proxies={"http": "http://u:px-s3cr3t@proxy:3128"},
        soft_delete=True,
    )
    s = backend.settings
    assert isinstance(s, VaultSettings)
    assert s.connections_path == ("team", "common") and s.variables_path == ("variables",)
    assert s.soft_delete is True and s.kv_engine_version == 2 and s.timeout == 30.0
    assert s.client.cert == ("c.pem", "k.pem") and s.client.url == "http://user:pw-s3cr3t-u@127.0.0.1:1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.timeout = 1.0  # type: ignore[misc]
    assert_no_secret(repr(s))
    # Equal client settings share one session; the paths are not part of it.
    twin = VaultBackend(
        url="http://user:pw-s3cr3t-u@127.0.0.1:1/",
        auth_type="approle",
        role_id="role",
        secret_id="sid-s3cr3t",
        cert=("c.pem", "k.pem"),
        proxies={"http": "http://u:px-s3cr3t@proxy:3128"},
    )
    assert twin.settings.client == s.client and twin.session is backend.session
    backend.close()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"timeout": -7}, "timeout"),
        ({"soft_delete": "yes"}, "soft_delete"),
        ({"use_team_secrets_path": "no"}, "use_team_secrets_path"),
        ({"verify": 3}, "verify"),
        ({"cert": ["only-one.pem"]}, "cert"),
        ({"proxies": "http://proxy"}, "proxies"),
        ({"radius_port": "1812"}, "radius_port"),
        ({"token": 12345}, "token"),
        ({"mount_point": 5}, "mount_point"),
        ({"connections_path": 5}, "connections_path"),
        ({"assume_role_kwargs": "arn"}, "assume_role_kwargs"),
    ],
)
def test_a_bad_kwarg_is_a_one_line_config_error_naming_it(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        VaultBackend(url="http://127.0.0.1:1", **kwargs)
    message = str(info.value)
    assert (
        message.startswith("backend 'vault' (HashiCorp Vault): ") and name in message and "\n" not in message
    )
    assert str(next(iter(kwargs.values()))) not in message.split(": ", 1)[1].replace(name, "")


def test_missing_token_is_a_config_error(openbao: OpenBao, monkeypatch) -> None:
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    backend = VaultBackend(url=openbao.addr)
    with pytest.raises(ConfigError, match="token, token_path or the VAULT_TOKEN"):
        backend.get_variable("x")
    backend.close()


def test_repr_and_describe_hold_no_credentials(openbao: OpenBao) -> None:
    backend = VaultBackend(
        url="http://user:pw-s3cr3t-u@127.0.0.1:1",
        auth_type="approle",
        role_id="role",
        secret_id="sid-s3cr3t",
    )
    assert_no_secret(repr(backend) + backend.describe() + repr(backend.__dict__.get("_session")))
    assert "approle" in backend.describe()


def test_constructor_and_import_do_no_io_and_load_no_hvac() -> None:
    code = (
        "import sys, credpath\n"
        "from credpath.backends.vault import VaultBackend\n"
        "VaultBackend(url='http://127.0.0.1:1', token='t')\n"
        "print('hvac' in sys.modules, 'requests' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_client_it_needs_is_requests_and_its_extra_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from credpath.errors import MissingDependency

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "requests" else real(name, *a)
    )
    with pytest.raises(MissingDependency) as info:
        create_backend("vault", {"url": "http://127.0.0.1:1"})
    assert str(info.value) == "backend 'vault' needs requests: pip install 'credpath[vault]'"


def test_prepare_imports_the_client_and_builds_the_session_without_network(hanging_listener) -> None:
    code = (
        "import sys\n"
        "from credpath.backends.vault import VaultBackend\n"
        f"b = VaultBackend(url={hanging_listener.url!r}, token='t')\n"
        "b.prepare(); b.prepare()\n"
        "print('requests' in sys.modules, b.session._http is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
    assert hanging_listener.accepted == 0


# --- writing, listing, deleting ------------------------------------------------------------------------


def test_write_read_round_trip_kv2(openbao: OpenBao, openbao_kv2: str, make) -> None:
    backend = make(mount_point=openbao_kv2)
    conn = Connection(
        conn_id="db",
        conn_type="postgres",
        host="db.example",
        login="u",
        password=PASSWORD,
        port=5432,
        schema="app",
        description="main db",
        extra='{"sslmode": "require"}',
    )
    backend.set_connection(conn, serialization="uri")
    stored = openbao.admin.secrets.kv.v2.read_secret_version(
        "connections/db", mount_point=openbao_kv2, raise_on_deleted_version=True
    )["data"]["data"]
    assert set(stored) == {"conn_uri", "description"}
    assert backend.get_connection("db") == conn
    backend.set_connection(conn.with_id("db_json"))  # the protocol's default: "json", the fields
    stored = openbao.admin.secrets.kv.v2.read_secret_version(
        "connections/db_json", mount_point=openbao_kv2, raise_on_deleted_version=True
    )["data"]["data"]
    assert stored["password"] == PASSWORD and "conn_uri" not in stored
    assert backend.get_connection("db_json") == conn.with_id("db_json")
    backend.set_variable("team/threshold", "42")
    assert backend.get_variable("team/threshold") == "42"


def test_kv2_create_only_and_check_and_set(openbao: OpenBao, openbao_kv2: str, make) -> None:
    writer_a = make(mount_point=openbao_kv2)
    writer_b = make(mount_point=openbao_kv2, kv_engine_version=2)
    writer_a.set_variable("shared", "first", overwrite=False)
    with pytest.raises(ConfigError, match="already exists"):
        writer_b.set_variable("shared", "second", overwrite=False)
    assert writer_a.get_variable("shared") == "first"


def test_cas_required_mount_overwrites_at_the_current_version(
    openbao: OpenBao, make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mount with cas_required refuses writes without check-and-set: overwrite=True writes at the version
    # there is now, overwrite=False stays create-only, and a writer in between wins (WriteConflict).
    mount = openbao.enable_kv(2)
    openbao.admin.secrets.kv.v2.configure(cas_required=True, mount_point=mount)
    backend = make(mount_point=mount)
    backend.set_variable("v", "one")
    backend.set_variable("v", "two")
    assert backend.get_variable("v") == "two"
    with pytest.raises(ConfigError, match="already exists"):
        backend.set_variable("v", "three", overwrite=False)
    kv = openbao.admin.secrets.kv.v2
    real = backend._current_version

    def raced(mount_: str, path: str, deadline: Any) -> int:  # another writer lands right after the read
        version = real(mount_, path, deadline)
        kv.create_or_update_secret(path=path, secret={"value": "other"}, cas=version, mount_point=mount_)
        return version

    monkeypatch.setattr(backend, "_current_version", raced)
    with pytest.raises(WriteConflict, match="changed since version 2; not overwritten"):
        backend.set_variable("v", "mine")
    assert backend.get_variable("v") == "other"  # never silently overwritten
    openbao.disable(mount)


def test_write_and_delete_signatures_are_exactly_the_protocols() -> None:
    sig = inspect.signature
    assert str(sig(VaultBackend.set_connection)) == (
        "(self, conn: 'Connection', *, overwrite: 'bool' = True, "
        "serialization: 'Serialization' = 'json') -> 'WriteConfirmation | None'"
    )
    assert str(sig(VaultBackend.set_variable)) == (
        "(self, key: 'str', value: 'str', *, overwrite: 'bool' = True) -> 'WriteConfirmation | None'"
    )
    assert str(sig(VaultBackend.delete_connection)) == "(self, conn_id: 'str') -> 'bool'"
    assert str(sig(VaultBackend.delete_variable)) == "(self, key: 'str') -> 'bool'"


def test_kv1_writes_and_create_only(openbao: OpenBao, openbao_kv1: str, make) -> None:
    backend = make(mount_point=openbao_kv1, kv_engine_version=1)
    backend.set_variable("v", "one")
    with pytest.raises(ConfigError, match="already exists"):
        backend.set_variable("v", "two", overwrite=False)
    with pytest.raises(TypeError):  # no per-call options beyond the protocol's
        backend.set_variable("v", "two", cas=1)  # type: ignore[call-arg]
    assert openbao.admin.secrets.kv.v1.read_secret("variables/v", mount_point=openbao_kv1)["data"] == {
        "value": "one"
    }
    assert backend.delete_variable("v") is True
    assert backend.delete_variable("v") is False
    assert backend.get_variable("v") is None


def test_list_is_recursive_and_sorted(openbao: OpenBao, openbao_kv2: str, make) -> None:
    for key in ("b", "a", "team/x", "team/deep/y"):
        openbao.put(openbao_kv2, 2, f"connections/{key}", {"conn_uri": "http://h"})
    openbao.put(openbao_kv2, 2, "variables/v1", {"value": "1"})
    openbao.put(openbao_kv2, 2, "other/not_listed", {"value": "1"})
    backend = make(mount_point=openbao_kv2)
    assert backend.list_connections() == ["a", "b", "team/deep/y", "team/x"]
    assert backend.list_variables() == ["v1"]
    assert make(mount_point=openbao_kv2, connections_path=None).list_connections() == []


def test_delete_hard_removes_all_versions_soft_keeps_them(openbao: OpenBao, openbao_kv2: str, make) -> None:
    kv = openbao.admin.secrets.kv.v2
    backend = make(mount_point=openbao_kv2)
    backend.set_variable("hard", "1")
    backend.set_variable("hard", "2")
    backend.set_variable("soft", "1")
    soft = make(mount_point=openbao_kv2, soft_delete=True)  # a setting of the backend, not of the call
    assert soft.delete_variable("soft") is True
    assert backend.get_variable("soft") is None
    assert kv.read_secret_metadata("variables/soft", mount_point=openbao_kv2)["data"]["current_version"] == 1
    assert backend.delete_variable("hard") is True
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata("variables/hard", mount_point=openbao_kv2)
    assert backend.delete_variable("hard") is False
    assert backend.delete_connection("never") is False


def test_namespace_is_sent_with_every_request(openbao: OpenBao, make) -> None:
    namespace = f"team{uuid.uuid4().hex[:6]}"
    openbao.bao("namespace", "create", namespace)
    openbao.bao("secrets", "enable", f"-namespace={namespace}", "-path=kv", "-version=1", "kv")
    openbao.bao("kv", "put", f"-namespace={namespace}", "kv/variables/v", "value=in-namespace")
    scoped = make(namespace=namespace, mount_point="kv", kv_engine_version="auto")
    log = count(scoped)
    assert scoped.get_variable("v") == "in-namespace"  # KV v1 detected inside the namespace
    assert log.namespaces and all(h == namespace for h in log.namespaces)
    with pytest.raises(AccessDenied, match="mount 'kv'"):  # the root namespace has no kv/ mount
        make(mount_point="kv", kv_engine_version="auto").get_variable("v")


@pytest.mark.parametrize("state", ["unreachable", "sealed"])
def test_search_path_applies_on_error_to_a_failing_vault(state: str, tmp_path, monkeypatch) -> None:
    from credpath._search_path import SearchPath
    from credpath._settings import BackendSpec
    from tests.servers._util import stop_process

    monkeypatch.setenv("AIRFLOW_VAR_FALLBACK_VAR", "from-env")
    server = _start(tmp_path) if state == "sealed" else None
    try:
        if server is not None:
            server.admin.sys.seal()
            url, token = server.addr, server.root_token
        else:
            url, token = f"http://127.0.0.1:{free_port()}", "t-s3cr3t"
        for on_error in ("skip", "fail"):
            specs = [
                BackendSpec(
                    type="vault", name="vault", kwargs={"url": url, "token": token}, on_error=on_error
                ),
                BackendSpec(type="env", name="env"),
            ]
            search_path = SearchPath(specs, cache=False)
            try:
                if on_error == "skip":
                    assert search_path.get_variable("fallback_var") == "from-env"
                else:
                    with pytest.raises(BackendError) as info:
                        search_path.get_variable("fallback_var")
                    assert "vault" in str(info.value)
                    assert_no_secret(str(info.value), token)
            finally:
                search_path.close()
    finally:
        if server is not None:
            stop_process(server.proc)


# --- hashicorp provider 4.8.4 kwargs: lists of paths, team scoping ------------------------------------------


def test_paths_as_lists_are_tried_in_order(openbao: OpenBao, openbao_kv2: str, make) -> None:
    openbao.put(openbao_kv2, 2, "connections/team1/only_team", {"conn_uri": "http://team.example"})
    openbao.put(openbao_kv2, 2, "connections/team1/both", {"conn_uri": "http://first.example"})
    openbao.put(openbao_kv2, 2, "connections/common/both", {"conn_uri": "http://second.example"})
    openbao.put(openbao_kv2, 2, "connections/common/only_common", {"conn_uri": "http://common.example"})
    backend = make(mount_point=openbao_kv2, connections_path=["connections/team1/", "connections/common"])
    log = count(backend)
    assert backend.get_conn_value("both") == "http://first.example"
    assert backend.get_conn_value("only_common") == "http://common.example"
    assert backend.get_conn_value("absent") is None
    assert log.requests[-2:] == [
        f"GET /v1/{openbao_kv2}/data/connections/team1/absent",
        f"GET /v1/{openbao_kv2}/data/connections/common/absent",
    ]
    assert backend.list_connections() == ["both", "only_common", "only_team"]
    assert make(mount_point=openbao_kv2, connections_path=[]).get_conn_value("both") is None
    with pytest.raises(ConfigError, match="connections_path must be a string, a list of strings or null"):
        make(connections_path=["a", 1])


def test_global_secrets_path_is_the_last_fallback_and_deprecated(
    openbao: OpenBao, openbao_kv2: str, make
) -> None:
    openbao.put(openbao_kv2, 2, "shared/v", {"value": "from-global"})
    with pytest.warns(DeprecationWarning, match="global_secrets_path"):
        backend = make(mount_point=openbao_kv2, global_secrets_path="shared/")
    assert backend.paths["variable"] == ["variables", "shared"]
    assert backend.get_variable("v") == "from-global"


def test_team_scoping_as_the_4_8_4_provider(openbao: OpenBao, openbao_kv2: str, make, monkeypatch) -> None:
    openbao.put(openbao_kv2, 2, "variables/team_a/v", {"value": "team-a"})
    openbao.put(openbao_kv2, 2, "variables/v", {"value": "global"})
    openbao.put(openbao_kv2, 2, "config/team_a/k", {"value": "never-team-scoped"})
    openbao.put(openbao_kv2, 2, "config/k", {"value": "config"})
    backend = make(mount_point=openbao_kv2)
    # multi_team off: team_name is ignored, as in Airflow.
    monkeypatch.delenv("AIRFLOW__CORE__MULTI_TEAM", raising=False)
    assert backend.get_variable("v", team_name="team_a") == "global"
    assert backend.get_variable("team_a/v") == "team-a"
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    assert backend.get_variable("v", team_name="team_a") == "team-a"
    assert backend.get_variable("v", team_name="team_b") is None  # no fall-back to the global path
    assert backend.get_variable("v") == "global"
    log = count(backend)
    assert backend.get_variable("team_a/v") is None  # an id that spells a team namespace: not looked up
    assert len(log) == 0
    assert backend.get_config("k") == "config"  # config is never team-scoped
    flat = make(mount_point=openbao_kv2, use_team_secrets_path=False)
    assert flat.get_variable("v", team_name="team_a") == "global"
    assert flat.get_variable("team_a/v") == "team-a"
    conn = make(mount_point=openbao_kv2)
    openbao.put(openbao_kv2, 2, "connections/team_a/c", {"conn_uri": "http://team-a.example"})
    assert conn.get_connection("c", team_name="team_a").host == "team-a.example"
    assert conn.get_conn_value("c") is None


# --- the environment, read once per HTTP session (as requests would on every request) ------------------
def test_environment_proxy_is_used_unless_no_proxy_covers_the_url(
    openbao: OpenBao, openbao_kv2: str, fault_proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counting proxy forwards bytes: a proxied request reaches OpenBao in absolute form, which it serves.
    from urllib.parse import urlsplit

    openbao.put(openbao_kv2, 2, "env/variables/v", {"value": PASSWORD})
    parts = urlsplit(openbao.addr)
    proxy = fault_proxy(parts.hostname, parts.port)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    kwargs = {"url": openbao.addr, "token": openbao.root_token, "mount_point": openbao_kv2}
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    through = VaultBackend(**kwargs, variables_path="env/variables")
    try:
        assert through.get_variable("v") == PASSWORD
        assert through.get_variable("v") == PASSWORD
    finally:
        through.close()  # its session too: the next backend builds a new one, reading the environment
    reads = proxy.count(r"http://[^/]+/v1/[^/]+/data/env/variables/v")  # absolute form: through the proxy
    assert reads == 2, proxy.requests
    monkeypatch.setenv("NO_PROXY", parts.hostname)
    direct = VaultBackend(**kwargs, variables_path="env/variables")
    try:
        assert direct.get_variable("v") == PASSWORD
    finally:
        direct.close()
    assert proxy.count() == len(proxy.requests) and proxy.count(r"/data/env/") == reads  # none more


def test_requests_ca_bundle_is_honoured_when_verify_is_on(
    openbao_tls: OpenBao, monkeypatch: pytest.MonkeyPatch
) -> None:
    openbao_tls.put("secret", 2, "env/variables/v", {"value": PASSWORD})
    kwargs = {"url": openbao_tls.addr, "token": openbao_tls.root_token, "variables_path": "env/variables"}

    def read(**extra: Any) -> Any:
        backend = VaultBackend(**kwargs, **extra, timeout=3)
        try:
            return backend.get_variable("v")
        finally:
            backend.close()  # and its session: each read builds one, reading the environment

    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with pytest.raises(BackendError, match="SSLError"):  # the CA is not in the default bundle
        read()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", openbao_tls.ca_cert)
    assert read() == PASSWORD
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")  # a verify path given wins over it
    assert read(verify=openbao_tls.ca_cert) == PASSWORD
