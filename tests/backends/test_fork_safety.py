"""A forked child's store calls go on connections of its own (Airflow forks task processes from a parent
that may already have read a store): the inherited pooled keep-alive sockets are also the parent's, and a
request on one may read the other process's answer. The parent's connections survive the child."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath.backends._per_process import PerProcess
from credpath.backends.metastore import MetastoreBackend
from tests.backends._pools import idle_ports, session_idle_ports

pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _in_a_child(work: Callable[[], Any], *, holding: Any = None) -> Any:
    """``work()``'s result in a forked child (its exception's repr if it raised); ``holding``: a lock another
    thread of the parent holds while it forks (a reentrant lock held by the forking thread would be the
    child's own)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def run() -> None:
        try:
            results.put(("ok", work()))
        except BaseException as exc:
            results.put(("error", repr(exc)))

    child = context.Process(target=run)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holding:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    try:
        if holding is not None:
            holder.start()
            assert held.wait(10)
        child.start()
        status, value = results.get(timeout=30)
    finally:
        release.set()
        child.join(30)
        if child.is_alive():  # stuck (on an inherited lock, or on a socket the parent read from)
            child.kill()
    assert status == "ok", value
    return value


# --- the helper ------------------------------------------------------------------------------------------


def test_a_per_process_value_is_adopted_once_in_a_child_and_kept_in_the_parent() -> None:
    holder: PerProcess[list[str]] = PerProcess(lambda: ["built"], lambda old: [*old, "adopted"])
    first = holder.get()
    assert holder.get() is first and first == ["built"]
    assert _in_a_child(lambda: (holder.get(), holder.get() is holder.get())) == (["built", "adopted"], True)
    assert holder.get() is first
    assert _in_a_child(holder.clear) is None  # a child never closes the parent's value
    assert holder.clear() is first and holder.existing() is None


# --- SQL metastore -----------------------------------------------------------------------------------


@pytest.fixture
def pg_metastore(request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue("postgres_server").create_database("fork")
    backend = MetastoreBackend(url=url, fernet_key=Fernet.generate_key().decode())
    backend.set_variable("fork_var", "v-s3cr3t-0")
    backend.set_variable("other_var", "v-s3cr3t-1")
    yield backend
    backend.close()


def _pg_pid(backend: MetastoreBackend) -> int:
    """The server process behind the connection the backend's pool hands out next (its idle one)."""
    from sqlalchemy import text

    with backend.engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.postgres
def test_a_forked_childs_metastore_reads_go_on_a_connection_of_its_own(pg_metastore: Any) -> None:
    backend = pg_metastore
    assert backend.get_variable("fork_var") == "v-s3cr3t-0"
    parents = _pg_pid(backend)

    def child() -> tuple[str | None, int]:
        return backend.get_variable("other_var"), _pg_pid(backend)

    value, childs = _in_a_child(child)
    assert value == "v-s3cr3t-1"
    assert childs != parents, "the child used the parent's pooled connection"
    # the parent's pooled connection still serves the parent (the child did not close it)
    assert backend.get_variable("other_var") == "v-s3cr3t-1"
    assert _pg_pid(backend) == parents


@pytest.mark.postgres
def test_a_forked_child_closing_its_metastore_leaves_the_parents_connection_open(pg_metastore: Any) -> None:
    backend = pg_metastore
    assert backend.get_variable("fork_var") == "v-s3cr3t-0"
    parents = _pg_pid(backend)
    _in_a_child(backend.close)
    assert _pg_pid(backend) == parents, "the child's close ended the parent's connection"
    assert backend.get_variable("other_var") == "v-s3cr3t-1"


@pytest.mark.postgres
def test_a_forked_child_makes_its_engine_though_the_lock_was_held_at_the_fork(
    request: pytest.FixtureRequest,
) -> None:
    url = request.getfixturevalue("postgres_server").create_database("forklock")
    key = Fernet.generate_key().decode()
    MetastoreBackend(url=url, fernet_key=key).set_variable("other_var", "v-s3cr3t-1")
    backend = MetastoreBackend(url=url, fernet_key=key)  # no engine yet: the child makes it
    try:
        assert _in_a_child(lambda: backend.get_variable("other_var"), holding=backend._lock) == "v-s3cr3t-1"
    finally:
        backend.close()


@pytest.fixture
def sqlite_metastore(tmp_path: Any) -> Any:
    url, key = f"sqlite:///{tmp_path / 'm.db'}", Fernet.generate_key().decode()
    backend = MetastoreBackend(url=url, fernet_key=key)
    backend.set_variable("other_var", "v-s3cr3t-1")
    yield backend
    backend.close()


def test_a_forked_childs_sqlite_reads_go_on_a_connection_of_its_own(sqlite_metastore: Any) -> None:
    backend = sqlite_metastore
    assert backend.get_variable("other_var") == "v-s3cr3t-1"  # the stdlib read connection is open
    parents = id(backend._reader._conns.existing())

    def child() -> tuple[str | None, int]:
        return backend.get_variable("other_var"), id(backend._reader._conns.existing())

    value, childs = _in_a_child(child)
    assert value == "v-s3cr3t-1" and childs != parents
    assert backend.get_variable("other_var") == "v-s3cr3t-1"
    assert id(backend._reader._conns.existing()) == parents


def test_a_forked_child_reads_and_writes_sqlite_though_the_locks_were_held_at_the_fork(
    sqlite_metastore: Any,
) -> None:
    backend = sqlite_metastore
    assert backend.get_variable("other_var") == "v-s3cr3t-1"
    read = _in_a_child(lambda: backend.get_variable("other_var"), holding=backend._reader._lock)
    assert read == "v-s3cr3t-1"

    def write() -> str | None:
        backend.set_variable("child_var", "v-s3cr3t-2")
        return backend.get_variable("child_var")

    assert _in_a_child(write, holding=backend._write_locks.get()) == "v-s3cr3t-2"


# --- AWS -------------------------------------------------------------------------------------------------


def _idle_ports(client: Any) -> set[int]:
    """Local ports of the idle keep-alive connections in a botocore client's connection pools."""
    return idle_ports(client._endpoint.http_session._manager)


@pytest.mark.parametrize("store", ["aws_secrets_manager_harness", "aws_ssm_harness"])
def test_a_forked_childs_aws_calls_go_on_sockets_of_its_own(
    store: str, aws_fault_proxy: Any, request: pytest.FixtureRequest
) -> None:
    harness = request.getfixturevalue(store)
    harness.seed("variable", "fork_var", "v-s3cr3t-0")
    harness.seed("variable", "other_var", "v-s3cr3t-1")
    # moto's server closes each connection; the proxy (which sends Content-Length) keeps them, as AWS does.
    aws_fault_proxy.server.RequestHandlerClass.protocol_version = "HTTP/1.1"
    backend = harness.make_backend(endpoint_url=aws_fault_proxy.url)
    assert backend.get_variable("fork_var") == "v-s3cr3t-0"
    parents = _idle_ports(backend.client)
    assert parents, "the parent keeps its connection for the next call"

    def child() -> tuple[str | None, set[int]]:
        return backend.get_variable("other_var"), _idle_ports(backend.client)

    value, childs = _in_a_child(child)
    assert value == "v-s3cr3t-1"
    assert childs and not childs & parents, f"the child used the parent's sockets {childs & parents}"
    assert backend.get_variable("other_var") == "v-s3cr3t-1"
    assert _idle_ports(backend.client) == parents


def test_a_forked_child_refreshing_assumed_role_credentials_asks_sts_on_its_own_sockets(
    aws_fault_proxy: Any, moto_env: Any
) -> None:
    from credpath.backends.aws_secrets_manager import SecretsManagerBackend

    role_arn = "arn:aws:iam::123456789012:role/airflow-secrets"
    handler = aws_fault_proxy.server.RequestHandlerClass
    handler.protocol_version = "HTTP/1.1"  # keep-alive, as AWS (moto's server closes each connection)
    ports: list[int] = []  # the client port of each request, in order
    forward = handler.do_POST

    def recording(self: Any) -> None:
        ports.append(self.client_address[1])
        forward(self)

    handler.do_POST = recording
    backend = SecretsManagerBackend(
        endpoint_url=aws_fault_proxy.url,
        role_arn=role_arn,
        service_config={"sts": {"endpoint_url": aws_fault_proxy.url}},
    )
    assert backend.get_variable("fork_var") is None  # AssumeRole, then GetSecretValue
    assert backend.aws.calls["AssumeRole"] == 1
    parents = set(ports)

    def child() -> bool:
        import datetime

        credentials = backend.client._request_signer._credentials
        # expired: the next call refreshes them (an AssumeRole of the child's)
        credentials._expiry_time = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
        backend.get_variable("fork_var")
        return backend.aws.calls["AssumeRole"] == 2

    before = len(ports)
    assert _in_a_child(child), "the child did not refresh its credentials"
    childs, after = set(ports[before:]), len(ports)
    assert childs and not childs & parents, f"the child used the parent's sockets {childs & parents}"
    assert backend.get_variable("fork_var") is None
    assert set(ports[after:]) <= parents  # the parent's connections still serve the parent


def test_a_forked_child_makes_its_aws_client_though_the_lock_was_held_at_the_fork(
    aws_secrets_manager_harness: Any,
) -> None:
    aws_secrets_manager_harness.seed("variable", "other_var", "v-s3cr3t-1")
    backend = aws_secrets_manager_harness.make_backend()
    try:
        lock = backend.aws._clients.lock
        assert _in_a_child(lambda: backend.get_variable("other_var"), holding=lock) == "v-s3cr3t-1"
    finally:
        backend.close()


# --- GCP and Azure ---------------------------------------------------------------------------------------


def _gcp_ports(backend: Any) -> set[int]:
    return session_idle_ports(backend.client._transport._session)


def _azure_ports(backend: Any) -> set[int]:
    return session_idle_ports(backend.client._client._client._pipeline._transport.session)


@pytest.mark.parametrize(
    ("store", "ports"),
    [("gcp_secret_manager_harness", _gcp_ports), ("azure_key_vault_harness", _azure_ports)],
    ids=["gcp", "azure"],
)
def test_a_forked_childs_cloud_calls_go_on_sockets_of_their_own(
    store: str, ports: Callable[[Any], set[int]], request: pytest.FixtureRequest
) -> None:
    harness = request.getfixturevalue(store)
    harness.seed("variable", "fork_var", "v-s3cr3t-0")
    harness.seed("variable", "other_var", "v-s3cr3t-1")
    backend = harness.make_backend()
    assert backend.get_variable("fork_var") == "v-s3cr3t-0"
    parents = ports(backend)
    assert parents, "the parent keeps its connection for the next call"

    def child() -> tuple[str | None, set[int]]:
        return backend.get_variable("other_var"), ports(backend)

    value, childs = _in_a_child(child)
    assert value == "v-s3cr3t-1"
    assert childs and not childs & parents, f"the child used the parent's sockets {childs & parents}"
    assert backend.get_variable("other_var") == "v-s3cr3t-1"
    assert ports(backend) == parents
