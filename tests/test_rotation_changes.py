"""Rotation the store announces or reports (README "Rotation"): a value is never served past the store's
announced change (Secrets Manager's NextRotationDate, a Vault lease) in any tier, stale-if-error included;
a version check at expiry re-reads only a changed secret (requests counted at the server side of the
client); a Kubernetes watch brings a new value to reader processes within seconds, and without events nor
checks a value changes within the TTL, never later. Nothing a check or an event carries holds a value.

moto publishes ``NextRotationDate`` (DescribeSecret, after RotateSecret with RotationRules) only in whole
days from now; the proxy in front of it moves that date to a few seconds from now (``rotation_at``), the
one thing moto cannot be told.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from credpath._search_path import SearchPath
from credpath._settings import load_settings
from credpath.backends.aws_secrets_manager import SecretsManagerBackend
from credpath.cli import cli
from credpath.errors import BackendUnavailable
from tests import _shared_tier_fixtures as _fixtures
from tests._shared_tier_fixtures import KEY, digest, start_readers, stop_readers
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao

REPO = Path(__file__).resolve().parents[1]
HOST = "rotation-db.internal"
SECRET = "airflow/connections/rot_sm"
READERS = int(os.environ.get("CREDPATH_BENCH_READERS", "3"))


def uri(password: str) -> str:
    return f"postgres://u:{password}@{HOST}:5432/d"


# The shared-tier fixtures (tests/_shared_tier_fixtures.py), taken into this module.
clean_env, shared = _fixtures.clean_env, _fixtures.shared


def config_for(tmp_path: Path, type_: str, kwargs: dict[str, Any], shared: str | None, **cache: Any) -> Path:
    lines = ["[[backends]]", 'name = "store"', f"type = {json.dumps(type_)}", "[backends.kwargs]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in kwargs.items()]
    lines.append("[cache]")
    if shared is not None:
        lines += [f"shared = {json.dumps(shared)}", f"shared_key = {json.dumps(KEY)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in cache.items()]
    path = tmp_path / f"credpath-{len(list(tmp_path.glob('credpath-*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def path_for(config: Path) -> SearchPath:
    return SearchPath.from_settings(load_settings(config, dict(os.environ)))


def old_after(reads: list[list[tuple[float, str]]], when: float, old: str) -> list[float]:
    """How long after ``when`` each read begun after it still returned ``old``."""
    return [t - when for worker in reads for t, d in worker if t >= when and d == old]


def report(line: str) -> None:
    """A figure for bench/rotation.py (printed with -s)."""
    print(f"\n[rotation] {line}")


# --- Secrets Manager: NextRotationDate ----------------------------------------------------------------


class RotationDates:
    """Rewrites DescribeSecret's NextRotationDate in the proxy's answers to ``at`` (epoch seconds)."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.seen: list[float] = []  # what moto itself answered

    def __call__(self, target: str, data: bytes) -> bytes:
        if not target.endswith(".DescribeSecret") or self.at is None:
            return data
        body = json.loads(data)
        if body.get("NextRotationDate") is not None:
            self.seen.append(float(body["NextRotationDate"]))
            body["NextRotationDate"] = self.at
        return json.dumps(body).encode()


@pytest.fixture(autouse=True)
def _no_watch_outlives_its_test() -> Iterator[None]:
    """A Kubernetes watch a test left running would reconnect, and be counted, in the next test."""
    yield
    from credpath.backends import _kubernetes_watch

    _kubernetes_watch.stop_all()


@pytest.fixture
def sm(aws_fault_proxy: Any, aws_secrets_manager_harness: Any) -> Iterator[tuple[Any, Any, RotationDates]]:
    """A secret with a rotation schedule in moto, and the proxy that moves its date."""
    client = aws_secrets_manager_harness.client
    client.create_secret(Name=SECRET, SecretString=uri("pw-s3cr3t-v0"))
    client.rotate_secret(SecretId=SECRET, RotationRules={"AutomaticallyAfterDays": 1})
    client.put_secret_value(SecretId=SECRET, SecretString=uri("pw-s3cr3t-v0"))
    described = client.describe_secret(SecretId=SECRET)
    # moto's own answer: a rotation scheduled a day out, at the earliest (its rules are in days)
    assert described["RotationEnabled"] is True
    assert described["NextRotationDate"].timestamp() > time.time() + 86000
    dates = RotationDates()
    aws_fault_proxy.rewrite = dates
    yield client, aws_fault_proxy, dates


def sm_kwargs(proxy: Any, **kwargs: Any) -> dict[str, Any]:
    return {"endpoint_url": proxy.url, "region_name": "us-east-1", **kwargs}


def test_secrets_manager_no_reader_process_serves_the_old_value_after_the_rotation_date(
    tmp_path: Path, sm: tuple[Any, Any, RotationDates], shared: str
) -> None:
    client, proxy, dates = sm
    rotation_at = time.time() + 6.0 + 0.5 * READERS  # the readers start and read (served from the caches)
    dates.at = rotation_at
    config = config_for(tmp_path, "aws-secrets-manager", sm_kwargs(proxy, cap_at_rotation=True), shared)
    procs, stop = start_readers(tmp_path, config, "rot_sm", READERS)
    time.sleep(max(0.0, rotation_at - 0.3 - time.time()))
    client.put_secret_value(SecretId=SECRET, SecretString=uri("pw-s3cr3t-v1"))  # the rotation, out of band
    dates.at = time.time() + 3600.0  # the next one, as AWS moves the date on after rotating
    time.sleep(max(0.0, rotation_at + 2.0 - time.time()))
    reads = stop_readers(procs, stop)
    late = old_after(reads, rotation_at, digest("pw-s3cr3t-v0"))
    assert not late, late[:5]
    assert any(d == digest("pw-s3cr3t-v0") for worker in reads for _, d in worker)  # cached before the date
    assert all(worker and worker[-1][1] == digest("pw-s3cr3t-v1") for worker in reads)
    calls = Counter(proxy.targets)
    gets = calls["secretsmanager.GetSecretValue"]
    # Served from the caches until the date (TTL 300 s): a few reads for the whole deployment.
    assert gets <= 2 * READERS + 2, calls
    assert calls["secretsmanager.DescribeSecret"] <= gets + READERS, calls
    report(
        f"secrets manager rotation date [{shared.split(':')[0]}]: 0 old reads after the date; "
        f"{gets} GetSecretValue + {calls['secretsmanager.DescribeSecret']} DescribeSecret, "
        f"{READERS} readers"
    )


def test_stale_if_error_and_the_shared_tier_never_serve_past_the_rotation_date(
    tmp_path: Path, sm: tuple[Any, Any, RotationDates]
) -> None:
    client, proxy, dates = sm
    rotation_at = time.time() + 5.0
    dates.at = rotation_at
    config = config_for(
        tmp_path, "aws-secrets-manager", sm_kwargs(proxy, cap_at_rotation=True), f"file:{tmp_path / 'c.db'}"
    )
    path = path_for(config)
    assert path.get_connection("rot_sm").password == "pw-s3cr3t-v0"
    explained = path.explain("connection", "rot_sm")
    assert explained.valid_until == pytest.approx(rotation_at, abs=0.01)
    assert_no_secret(repr(explained))
    shown = CliRunner().invoke(cli, ["--config", str(config), "explain", "connection", "rot_sm"])
    assert "valid until: " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rotation_at)) in shown.output
    assert_no_secret(shown.output)
    client.put_secret_value(SecretId=SECRET, SecretString=uri("pw-s3cr3t-v1"))
    proxy.fail_next(10_000, 500, "InternalFailure")  # the store goes down with the rotation
    assert path.get_connection("rot_sm").password == "pw-s3cr3t-v0"  # before the date: cached
    assert path_for(config).get_connection("rot_sm").password == "pw-s3cr3t-v0"  # the shared tier too
    assert time.time() < rotation_at, "too slow to look before the date: the test proves nothing"
    time.sleep(max(0.0, rotation_at + 0.05 - time.time()))
    for reader in (path, path_for(config)):  # neither the process tier's stale copy nor the shared one
        with pytest.raises(BackendUnavailable):
            reader.get_connection("rot_sm")
    with proxy._lock:
        proxy._failures.clear()
    assert path.get_connection("rot_sm").password == "pw-s3cr3t-v1"


def test_a_batch_read_that_carries_no_rotation_date_is_not_cached(
    tmp_path: Path, sm: tuple[Any, Any, RotationDates]
) -> None:
    client, proxy, dates = sm
    dates.at = time.time() + 3600
    client.create_secret(Name="airflow/connections/rot_sm2", SecretString=uri("pw-s3cr3t-b0"))
    path = SearchPath(
        [("store", SecretsManagerBackend(**sm_kwargs(proxy, cap_at_rotation=True)))]  # type: ignore[arg-type]
    )
    path.prefetch(["rot_sm", "rot_sm2"])  # one BatchGetSecretValue: no NextRotationDate in its answer
    assert Counter(proxy.targets)["secretsmanager.BatchGetSecretValue"] == 1
    client.put_secret_value(SecretId=SECRET, SecretString=uri("pw-s3cr3t-v1"))
    assert (
        path.get_connection("rot_sm").password == "pw-s3cr3t-v1"
    )  # read with its date, not the batch's copy
    assert Counter(proxy.targets)["secretsmanager.GetSecretValue"] == 1


def test_a_rotation_date_already_passed_is_rechecked_every_few_seconds(
    tmp_path: Path, sm: tuple[Any, Any, RotationDates]
) -> None:
    from credpath.backends.aws_secrets_manager import ROTATION_DUE_RECHECK, rotation_cap

    now = time.time()
    assert rotation_cap({"NextRotationDate": datetime.fromtimestamp(now + 60, UTC)}) == pytest.approx(
        now + 60
    )
    assert rotation_cap({"NextRotationDate": datetime.fromtimestamp(now - 60, UTC)}) == pytest.approx(
        now + ROTATION_DUE_RECHECK, abs=1
    )
    assert rotation_cap({"RotationEnabled": False, "NextRotationDate": now + 5}) is None
    assert rotation_cap({}) is None


# --- version checks at expiry -------------------------------------------------------------------------


def test_secrets_manager_version_check_reads_only_a_changed_secret(
    tmp_path: Path, sm: tuple[Any, Any, RotationDates]
) -> None:
    client, proxy, dates = sm
    dates.at = time.time() + 3600
    config = config_for(
        tmp_path,
        "aws-secrets-manager",
        sm_kwargs(proxy, version_check=True, cap_at_rotation=True),
        f"file:{tmp_path / 'c.db'}",
        ttl=1,
    )
    path = path_for(config)

    def calls_for(step: Any) -> Counter[str]:
        before = Counter(proxy.targets)
        step()
        after = Counter(proxy.targets)
        return Counter({k: after[k] - before[k] for k in after if after[k] - before[k]})

    first = calls_for(lambda: path.get_connection("rot_sm"))
    assert first == {"secretsmanager.DescribeSecret": 1, "secretsmanager.GetSecretValue": 1}
    time.sleep(1.2)  # the TTL (1 s + jitter) ran out: unchanged -> the check alone
    unchanged = calls_for(lambda: path.get_connection("rot_sm"))
    assert unchanged == {"secretsmanager.DescribeSecret": 1}, unchanged
    assert path.get_connection("rot_sm").password == "pw-s3cr3t-v0"
    assert calls_for(lambda: path_for(config).get_connection("rot_sm")) == {}  # renewed in the shared tier
    client.put_secret_value(SecretId=SECRET, SecretString=uri("pw-s3cr3t-v1"))
    time.sleep(1.2)
    holder: list[str] = []
    changed = calls_for(lambda: holder.append(path.get_connection("rot_sm").password))
    # the check's DescribeSecret gives the read its rotation date: check + read, no second describe
    assert changed == {"secretsmanager.DescribeSecret": 1, "secretsmanager.GetSecretValue": 1}, changed
    assert holder == ["pw-s3cr3t-v1"]
    explained = path.explain("connection", "rot_sm", use_cache=True)
    assert_no_secret(json.dumps({"version": explained.version, "held": explained.held}))
    # without the check, each expiry is a read (and with the cap, its DescribeSecret)
    plain = path_for(config_for(tmp_path, "aws-secrets-manager", sm_kwargs(proxy), None, ttl=1))
    plain.get_connection("rot_sm")
    time.sleep(1.2)
    assert calls_for(lambda: plain.get_connection("rot_sm")) == {"secretsmanager.GetSecretValue": 1}
    report(
        "secrets manager version check per expiry: unchanged "
        f"{sum(unchanged.values())} call (DescribeSecret), changed {sum(changed.values())} calls"
    )


@pytest.fixture
def vault(openbao: OpenBao) -> Iterator[tuple[OpenBao, str]]:
    mount = openbao.enable_kv(2)
    yield openbao, mount
    openbao.disable(mount)


def test_vault_version_check_reads_only_a_changed_secret(
    tmp_path: Path, vault: tuple[OpenBao, str], fault_proxy: Any
) -> None:
    server, mount = vault
    parts = urlsplit(server.addr)
    proxy = fault_proxy(parts.hostname, parts.port)
    server.put(mount, 2, "connections/vc_conn", {"conn_uri": uri("pw-s3cr3t-k1")})
    kwargs = {"url": proxy.url, "token": server.root_token, "mount_point": mount, "version_check": True}
    path = path_for(config_for(tmp_path, "vault", kwargs, None, ttl=1))
    metadata, data = rf"/v1/{mount}/metadata/", rf"/v1/{mount}/data/"
    assert path.get_connection("vc_conn").password == "pw-s3cr3t-k1"
    assert (proxy.count(metadata), proxy.count(data)) == (0, 1)
    time.sleep(1.2)
    assert path.get_connection("vc_conn").password == "pw-s3cr3t-k1"
    assert (proxy.count(metadata), proxy.count(data)) == (1, 1)  # unchanged: the check alone
    server.put(mount, 2, "connections/vc_conn", {"conn_uri": uri("pw-s3cr3t-k2")})
    time.sleep(1.2)
    assert path.get_connection("vc_conn").password == "pw-s3cr3t-k2"
    assert (proxy.count(metadata), proxy.count(data)) == (2, 2)  # changed: check + read
    assert path.lookup("connection", "vc_conn").version == "2"  # type: ignore[union-attr]
    report("vault version check per expiry: unchanged 1 request (metadata), changed 2 (metadata + data)")


def test_a_vault_lease_caps_the_value_in_every_tier(
    tmp_path: Path, openbao: OpenBao, fault_proxy: Any
) -> None:
    mount = openbao.enable_kv(1)
    try:
        parts = urlsplit(openbao.addr)
        proxy = fault_proxy(parts.hostname, parts.port)
        # KV v1 answers a secret with a "ttl" key with that lease_duration
        openbao.put(mount, 1, "connections/lease_conn", {"conn_uri": uri("pw-s3cr3t-l1"), "ttl": "2s"})
        kwargs = {"url": proxy.url, "token": openbao.root_token, "mount_point": mount, "kv_engine_version": 1}
        config = config_for(tmp_path, "vault", kwargs, f"file:{tmp_path / 'c.db'}")  # TTL 300 s
        path = path_for(config)
        read_at = time.time()
        first = path.lookup("connection", "lease_conn")
        assert first is not None and first.value.password == "pw-s3cr3t-l1"
        cap = first.valid_until  # the lease's end, from the read's lease_duration
        assert cap is not None and read_at + 2.0 <= cap <= time.time() + 2.0
        openbao.put(mount, 1, "connections/lease_conn", {"conn_uri": uri("pw-s3cr3t-l2"), "ttl": "2s"})
        assert path_for(config).get_connection("lease_conn").password == "pw-s3cr3t-l1"  # shared, in lease
        time.sleep(max(0.0, cap + 0.05 - time.time()))
        assert path.get_connection("lease_conn").password == "pw-s3cr3t-l2"
        assert path_for(config).get_connection("lease_conn").password == "pw-s3cr3t-l2"
    finally:
        openbao.disable(mount)


# --- Kubernetes watch -------------------------------------------------------------------------------


def k8s_rotate(harness: Any, conn_id: str, password: str) -> None:
    """An out-of-band rotation: the official client replaces the Secret."""
    from kubernetes import client

    name = harness.secret_name("connection", conn_id)
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data={"conn_uri": uri(password)})
    harness.client.replace_namespaced_secret(name, harness.namespace, body)


def k8s_kwargs(harness: Any, **kwargs: Any) -> dict[str, Any]:
    return {
        "namespace": harness.namespace,
        "host": harness.fake.endpoint,
        "token": harness.fake.token,
        **kwargs,
    }


def test_kubernetes_watch_brings_the_new_value_to_every_reader_process_within_seconds(
    tmp_path: Path, kubernetes_secrets_harness: Any, shared: str
) -> None:
    harness = kubernetes_secrets_harness
    harness.seed("connection", "watch_conn", uri("pw-s3cr3t-w0"))
    config = config_for(tmp_path, "kubernetes-secrets", k8s_kwargs(harness, watch=True), shared)  # TTL 300 s
    procs, stop = start_readers(tmp_path, config, "watch_conn", READERS)
    ready = time.monotonic() + 60
    while harness.fake.watch_requests < READERS:  # every reader's stream is open (one per process)
        assert time.monotonic() < ready, f"{harness.fake.watch_requests} of {READERS} watches open"
        time.sleep(0.05)
    time.sleep(0.5)
    gets_before = harness.fake.count("GET")  # reads and the watches' one-item LISTs
    rotations: list[tuple[float, str]] = []
    for i in range(1, 4):
        k8s_rotate(harness, "watch_conn", f"pw-s3cr3t-w{i}")
        rotations.append((time.time(), digest(f"pw-s3cr3t-w{i}")))
        time.sleep(1.5)
    reads = stop_readers(procs, stop)
    worst = 0.0
    for index, (done, _new) in enumerate(rotations):
        gone = {digest("pw-s3cr3t-w0"), *(d for _, d in rotations[:index])}
        late = [t - done for worker in reads for t, d in worker if t >= done and d in gone]
        worst = max([worst, *late])
        assert all(x <= 5.0 for x in late), late[:5]
    assert all(worker and worker[-1][1] == rotations[-1][1] for worker in reads)
    gets = harness.fake.count("GET") - gets_before
    # each change: one read for the whole deployment (the shared tier's lock), a little slack for a
    # reader whose wait for the lock loses to the reader that holds it
    assert gets <= 2 * len(rotations), gets
    report(
        f"kubernetes watch [{shared.split(':')[0]}]: worst staleness {worst:.3f} s, "
        f"{len(rotations)} rotations, {gets} store reads"
    )


def test_without_events_or_checks_a_change_is_served_within_the_ttl_never_later(
    tmp_path: Path, kubernetes_secrets_harness: Any
) -> None:
    harness = kubernetes_secrets_harness
    harness.seed("connection", "ttl_conn", uri("pw-s3cr3t-t0"))
    ttl = 3.0
    config = config_for(
        tmp_path, "kubernetes-secrets", k8s_kwargs(harness), f"file:{tmp_path / 'c.db'}", ttl=ttl
    )
    # Readers as separate search paths (each its own process tier) over one shared tier, started before
    # the deployment's copy is read: their timing is the test's, not the machine's start-up time.
    readers = [path_for(config) for _ in range(READERS)]
    warmed = time.time()  # the deployment's copy (shared tier) is read now; every reader adopts it
    assert readers[0].get_connection("ttl_conn").password == "pw-s3cr3t-t0"
    k8s_rotate(harness, "ttl_conn", "pw-s3cr3t-t1")
    rotated = time.time()
    reads: list[list[tuple[float, str]]] = [[] for _ in readers]
    until = warmed + ttl * 1.1 + 1.0

    def loop(index: int) -> None:
        while time.time() < until:
            asked = time.time()
            reads[index].append((asked, digest(readers[index].get_connection("ttl_conn").password)))
            time.sleep(0.01)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(readers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    late = old_after(reads, rotated, digest("pw-s3cr3t-t0"))
    bound = ttl * 1.1 - (rotated - warmed)  # the TTL and its jitter, from the read that cached it
    assert late, "no reader was served the old value: the TTL bound was not exercised"
    assert max(late) <= bound + 0.05, (max(late), bound)  # stale, but never past the TTL
    assert all(worker[-1][1] == digest("pw-s3cr3t-t1") for worker in reads)
    report(f"no watch nor check, TTL {ttl:g} s: worst staleness {max(late):.3f} s (bound {bound:.2f} s)")
    for reader in readers:
        reader.close()


def test_the_watch_resumes_after_a_lost_stream_and_relists_on_410(kubernetes_secrets_harness: Any) -> None:
    from credpath.backends import _kubernetes_watch

    harness = kubernetes_secrets_harness
    fake = harness.fake
    harness.seed("connection", "relist_conn", uri("pw-s3cr3t-g0"))
    backend = harness.make_backend(watch=True)
    path = SearchPath([("k8s", backend)])
    heard: list[tuple[str | None, str | None]] = []
    watch = _kubernetes_watch.watch_for(backend, lambda name, version: heard.append((name, version)))

    def served(password: str) -> float:
        started = time.monotonic()
        while path.get_connection("relist_conn").password != password:
            assert time.monotonic() - started < 5.0, f"not {password} within 5 s"
            time.sleep(0.01)
        return time.monotonic() - started

    assert path.get_connection("relist_conn").password == "pw-s3cr3t-g0"
    time.sleep(0.3)
    k8s_rotate(harness, "relist_conn", "pw-s3cr3t-g1")
    served("pw-s3cr3t-g1")
    fake.drop_watches()  # a lost connection: resume from the last version seen
    time.sleep(0.3)
    k8s_rotate(harness, "relist_conn", "pw-s3cr3t-g2")
    served("pw-s3cr3t-g2")
    restarts = watch.restarts
    fake.compact()  # the history is gone: resuming gets 410 Expired, the watch lists again
    fake.drop_watches()
    time.sleep(1.0)
    assert watch.restarts == restarts + 1
    k8s_rotate(harness, "relist_conn", "pw-s3cr3t-g3")
    served("pw-s3cr3t-g3")
    # what a subscriber is told: Secret names and versions, never a value
    assert heard and all(isinstance(v, str | type(None)) for _, v in heard)
    assert_no_secret(repr(heard))
    watch.listeners.clear()


def _watch_state() -> str:
    """This process's Kubernetes watches and threads, for a failure's message."""
    from credpath.backends import _kubernetes_watch

    lines = [f"pid {os.getpid()}"]
    for key, watch in list(_kubernetes_watch._watches.items()):
        thread = watch._thread
        lines.append(
            f"watch {key}: pid={watch.pid} listeners={len(watch.listeners)}+{len(watch.labelled)} "
            f"thread={thread and thread.ident} alive={thread is not None and thread.is_alive()} "
            f"stopped={watch._stop.is_set()} version={watch.version} restarts={watch.restarts}"
        )
    lines += [f"thread {t.name} {t.ident} daemon={t.daemon}" for t in threading.enumerate()]
    return "\n".join(lines)


def _forked_reader(path: SearchPath, ready: Any, results: Any, diag: str) -> None:
    """In a forked child (as Airflow forks task processes): read until the new value arrives. On failure,
    the child's watches, threads and their stacks go to ``diag`` (the parent shows them)."""
    import faulthandler

    with open(diag, "a") as out:
        out.write("at start:\n" + _watch_state() + "\n")
    assert path.get_connection("fork_conn").password == "pw-s3cr3t-p0"
    ready.set()
    started = time.monotonic()
    while time.monotonic() - started < 10.0:
        if path.get_connection("fork_conn").password == "pw-s3cr3t-p1":
            results.put(time.monotonic() - started)
            return
        time.sleep(0.01)
    with open(diag, "a") as out:
        out.write("after 10 s:\n" + _watch_state() + "\n")
        out.flush()
        faulthandler.dump_traceback(out, all_threads=True)
    results.put(None)


def _watches_of(harness: Any) -> int:
    """WATCH requests the fake received for the harness's namespace."""
    here = f"/namespaces/{harness.namespace}/"
    return sum(1 for method, path in list(harness.fake.requests) if method == "WATCH" and here in path)


def test_a_forked_process_runs_its_own_watch(kubernetes_secrets_harness: Any, tmp_path: Path) -> None:
    """A forked child (an Airflow task process) opens its own watch and hears a rotation, in the whole
    suite's process too (there the child's first calls once went on its parent's pooled sockets)."""
    import logging
    import multiprocessing

    harness = kubernetes_secrets_harness
    harness.seed("connection", "fork_conn", uri("pw-s3cr3t-p0"))
    path = SearchPath([("k8s", harness.make_backend(watch=True))])
    assert path.get_connection("fork_conn").password == "pw-s3cr3t-p0"
    diag = tmp_path / "child.txt"
    # The child's DEBUG records (its watch logs failures at DEBUG only), from the fork on.
    parent = os.getpid()
    child_log = logging.FileHandler(tmp_path / "child.log")
    child_log.setLevel(logging.DEBUG)
    child_log.addFilter(lambda record: record.process != parent)
    child_log.setFormatter(logging.Formatter("%(relativeCreated)d %(threadName)s %(name)s %(message)s"))
    logging.getLogger().addHandler(child_log)
    context = multiprocessing.get_context("fork")
    ready, results = context.Event(), context.Queue()
    child = context.Process(target=_forked_reader, args=(path, ready, results, str(diag)))
    child.start()

    def child_said() -> str:
        parts = [p.read_text() for p in (diag, tmp_path / "child.log") if p.exists()]
        return "\n" + "\n".join(parts) + "\nparent:\n" + _watch_state()

    try:
        assert ready.wait(30), child_said()
        deadline = time.monotonic() + 30
        # The parent's stream and the child's own, on this test's namespace: a watch another test left
        # reconnecting is not the child's.
        while _watches_of(harness) < 2:
            if time.monotonic() > deadline:
                child.join(15)
                raise AssertionError("the child opened no watch" + child_said())
            time.sleep(0.05)
        k8s_rotate(harness, "fork_conn", "pw-s3cr3t-p1")
        waited = results.get(timeout=30)
        assert waited is not None, "the child kept the old value" + child_said()
        assert path.get_connection("fork_conn").password == "pw-s3cr3t-p1"  # and the parent too
    finally:
        child.join(30)
        logging.getLogger().removeHandler(child_log)
        child_log.close()


# --- Kubernetes watch, label-based backend (the cncf.kubernetes provider's layout) -------------------


def k8s_relabel(harness: Any, name: str, labels: dict[str, str], value: str) -> None:
    """An out-of-band change of a labelled Secret (as an operator replaces it): its labels and value."""
    from kubernetes import client

    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=labels), string_data={"value": value}
    )
    harness.client.replace_namespaced_secret(name, harness.namespace, body)


def test_kubernetes_labels_watch_brings_changes_by_label_within_seconds(
    kubernetes_labels_harness: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from credpath.backends import _kubernetes_watch

    harness = kubernetes_labels_harness
    conn_label, team_label = harness.labels["connection"], "airflow.apache.org/team"
    shared = harness.seed_labelled("connection", "lab_conn", {"value": uri("pw-s3cr3t-l0")})
    team = harness.seed_labelled(
        "connection", "lab_conn", {"value": uri("pw-s3cr3t-t0")}, extra_labels={team_label: "blue"}
    )
    moved = harness.seed_labelled("variable", "lab_var", {"value": "pw-s3cr3t-v0"})
    backend = harness.make_backend(watch=True)
    path = SearchPath([("k8s", backend)])  # TTL 300 s: only an event brings a change within the test
    watches = [w for k, w in _kubernetes_watch._watches.items() if k[0] == backend.describe()]
    assert sorted(w.selector for w in watches) == sorted(harness.labels.values())  # one per kind's label

    def served(read: Any, want: Any) -> float:
        started = time.monotonic()
        while read() != want:
            assert time.monotonic() - started < 5.0, "the change was not served within 5 s"
            time.sleep(0.01)
        return time.monotonic() - started

    try:
        deadline = time.monotonic() + 30
        while harness.fake.watch_requests < len(watches):  # every stream is open
            assert time.monotonic() < deadline, "the watches did not open"
            time.sleep(0.05)
        assert path.get_connection("lab_conn").password == "pw-s3cr3t-l0"
        assert path.get_connection("lab_conn", team_name="blue").password == "pw-s3cr3t-t0"
        assert path.get_variable("lab_var") == "pw-s3cr3t-v0"
        time.sleep(0.3)
        waits = []
        # a new value in the Secret carrying the id's label (its name says nothing of the id)
        k8s_relabel(harness, shared, {conn_label: "lab_conn"}, uri("pw-s3cr3t-l1"))
        waits.append(served(lambda: path.get_connection("lab_conn").password, "pw-s3cr3t-l1"))
        # a team's Secret: the (kind, id) of every team is dropped
        k8s_relabel(harness, team, {conn_label: "lab_conn", team_label: "blue"}, uri("pw-s3cr3t-t1"))
        waits.append(
            served(lambda: path.get_connection("lab_conn", team_name="blue").password, "pw-s3cr3t-t1")
        )
        # the id label moves to another id: the old id, which the event no longer names, is a miss
        k8s_relabel(harness, moved, {harness.labels["variable"]: "lab_var_2"}, "pw-s3cr3t-v1")
        waits.append(served(lambda: path.get_variable("lab_var", None), None))
        assert path.get_variable("lab_var_2") == "pw-s3cr3t-v1"
        # a deleted Secret: the team's read falls back to the global one
        harness.client.delete_namespaced_secret(team, harness.namespace)
        waits.append(
            served(lambda: path.get_connection("lab_conn", team_name="blue").password, "pw-s3cr3t-l1")
        )
        report(f"kubernetes-labels watch: worst staleness {max(waits):.3f} s over {len(waits)} changes")
        assert_no_secret(caplog.text)
    finally:
        for watch in watches:
            watch.labelled.clear()
            watch.stop()
        path.close()
