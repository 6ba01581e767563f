"""After a rotation (README "Rotation"): store versions in the lookup record and both tiers, deployment-wide
invalidation within a second (file and Redis tiers, separate reader processes), forced refreshes that
cannot hammer the store, and a failed Airflow task's ids dropped for its retry. Real OpenBao behind the
counting fault proxy; real redis-server; the GCP/Azure/Kubernetes HTTP fakes for their versions.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from credpath._search_path import SearchPath
from credpath._shared_cache import SharedTier, parse_keys
from credpath.cli import cli
from credpath.model import Connection
from tests import _shared_tier_fixtures as _fixtures
from tests._shared_tier_fixtures import (
    READS,
    digest,
    path_for,
    start_readers,
    stop_readers,
    write_config,
)
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao

HOST = "rotation-db.internal"
# The shared-tier fixtures (tests/_shared_tier_fixtures.py), taken into this module.
clean_env, proxy, shared = _fixtures.clean_env, _fixtures.proxy, _fixtures.shared
#: Rotations and reader processes per tier in CI; bench/rotation.py sets them for the full-size run.
ROTATIONS = int(os.environ.get("CREDPATH_BENCH_ROTATIONS", "6"))
READERS = int(os.environ.get("CREDPATH_BENCH_READERS", "3"))


def uri(password: str) -> str:
    return f"postgres://u:{password}@{HOST}:5432/d"


@pytest.fixture
def vault(openbao: OpenBao) -> Iterator[tuple[OpenBao, str]]:
    mount = openbao.enable_kv(2)
    yield openbao, mount
    openbao.disable(mount)


def rotate(vault: tuple[OpenBao, str], conn_id: str, password: str) -> None:
    """An out-of-band rotation: the store's own client writes a new version."""
    server, mount = vault
    server.put(mount, 2, f"connections/{conn_id}", {"conn_uri": uri(password)})


# --- 1. versions ----------------------------------------------------------------------------------


def test_the_vault_version_is_kept_in_both_tiers_and_explained(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    rotate(vault, "ver_conn", "pw-s3cr3t-v1")
    config = write_config(tmp_path, vault, proxy.url, shared)
    first = path_for(config)
    explained = first.explain("connection", "ver_conn")
    assert explained.version == "1" and explained.held == {}
    assert first.get_connection("ver_conn").password == "pw-s3cr3t-v1"
    assert first.explain("connection", "ver_conn", use_cache=True).held == {"process": "1", "shared": "1"}
    second = path_for(config)  # another process: the shared entry carries the version
    assert second.lookup("connection", "ver_conn").version == "1"  # type: ignore[union-attr]
    rotate(vault, "ver_conn", "pw-s3cr3t-v2")
    first.invalidate("connection", "ver_conn")
    assert first.lookup("connection", "ver_conn").version == "2"  # type: ignore[union-attr]
    result = CliRunner().invoke(
        cli, ["--config", str(config), "explain", "connection", "ver_conn", "--cache"]
    )
    assert_no_secret(result.output)
    assert "shared tier holds version: 2" in result.output, result.output
    result = CliRunner().invoke(cli, ["--config", str(config), "explain", "--json", "connection", "ver_conn"])
    assert json.loads(result.output)["version"] == "2"
    first.close()
    second.close()


@pytest.mark.parametrize(
    ("alias", "pattern"),
    [
        ("vault", r"^1$"),  # KV v2 metadata.version
        ("aws_secrets_manager", r"^[0-9a-f-]{36} \(AWSCURRENT\)$"),  # VersionId (stages)
        ("gcp_secret_manager", r"^1$"),  # .../versions/N of the resource name
        ("azure_key_vault", r"^\w+$"),  # the id's last segment
        ("kubernetes_secrets", r"^\d+$"),  # metadata.resourceVersion
    ],
)
def test_each_store_reports_the_version_it_served_with_no_extra_request(
    request: pytest.FixtureRequest, alias: str, pattern: str
) -> None:
    harness = request.getfixturevalue(f"{alias}_harness")
    harness.seed("connection", "ver_each", uri("pw-s3cr3t-each"))
    path = SearchPath([("store", harness.make_backend())])
    calls = harness.api_calls() if hasattr(harness, "api_calls") else None
    explained = path.explain("connection", "ver_each")
    assert explained.found and re.search(pattern, explained.version or ""), explained.version
    if calls is not None:
        assert harness.api_calls() - calls <= 1  # the version came with the read
    assert path.lookup("connection", "ver_each").version == explained.version  # type: ignore[union-attr]


# --- 3. deployment-wide invalidation ------------------------------------------------------------------


def staleness(
    reads: list[list[tuple[float, str]]], rotations: list[tuple[float, str]], first: str
) -> tuple[float, list[str]]:
    """The longest time any reader served a rotated-away value after its invalidation returned, and every
    read begun later than 1 s after it that returned a rotated-away value (a value of an earlier
    rotation; a read of the next rotation's value, begun while that one is being written, is not stale)."""
    worst = 0.0
    late: list[str] = []
    for worker in reads:
        for index, (done, _new) in enumerate(rotations):
            gone = {first, *(d for _, d in rotations[:index])}
            old = [t for t, d in worker if t >= done and d in gone]
            if old:
                worst = max(worst, max(old) - done)
            late += [f"rotation {index}: read at +{t - done:.3f} s" for t in old if t - done > 1.0]
    return worst, late


def test_a_change_through_credpath_or_cache_invalidate_reaches_every_process_within_a_second(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    conn_id = "rot_conn"
    rotate(vault, conn_id, "pw-s3cr3t-r0")
    config = write_config(tmp_path, vault, proxy.url, shared)  # TTL 300 s: only invalidation helps
    writer = path_for(config)
    procs, stop = start_readers(tmp_path, config, conn_id, READERS)
    time.sleep(1.0)
    reads_before = proxy.count(READS, "GET")
    rotations: list[tuple[float, str]] = []
    for i in range(1, ROTATIONS + 1):
        password = f"pw-s3cr3t-r{i}"
        if i % 2:  # through credpath: the write invalidates
            writer.set_connection(Connection.from_uri(uri(password), conn_id=conn_id), to="vault")
        else:  # out of band, then `credpath cache invalidate`
            rotate(vault, conn_id, password)
            result = CliRunner().invoke(cli, ["--config", str(config), "cache", "invalidate", conn_id])
            assert result.exit_code == 0, result.output
        rotations.append((time.time(), digest(password)))
        time.sleep(1.6)
    reads = stop_readers(procs, stop)
    worst, late = staleness(reads, rotations, digest("pw-s3cr3t-r0"))
    assert not late, late[:5]
    assert all(r[-1][1] == rotations[-1][1] for r in reads)
    store_reads = proxy.count(READS, "GET") - reads_before
    # One store read per rotation for the whole deployment (the shared tier's lock), a little slack for
    # a reader that loses its lock wait to the writer's own lookups.
    assert store_reads <= 2 * ROTATIONS, store_reads
    print(
        f"\n[{shared.split(':')[0]}] worst staleness {worst:.3f} s, "
        f"store reads {store_reads} for {ROTATIONS} rotations"
    )
    writer.close()


def test_invalidation_needs_the_key_and_an_old_record_put_back_serves_nothing_old(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    rotate(vault, "forge_conn", "pw-s3cr3t-f1")
    config = write_config(tmp_path, vault, proxy.url, shared)
    reader = path_for(config)
    assert reader.get_connection("forge_conn").password == "pw-s3cr3t-f1"
    tier = reader.shared
    assert isinstance(tier, SharedTier)
    # A writer with the store but another key: its invalidation and epoch are not this deployment's, and
    # an epoch record it forges under the deployment's own record name is ignored.
    stranger = SharedTier(tier.store, parse_keys(_fixtures.OTHER_KEY, "test"), tier._scope)
    stranger.invalidate(("connection", "forge_conn", None))
    stranger.store.put(tier._epoch_name, stranger._gen_blob(tier._epoch_name, "f" * 32), time.time() + 60)
    tier.store.put(tier._epoch_name, b"forged.0000", time.time() + 60)
    before = proxy.count(READS, "GET")
    time.sleep(1.1)
    assert reader.get_connection("forge_conn").password == "pw-s3cr3t-f1"
    assert path_for(config).get_connection("forge_conn").password == "pw-s3cr3t-f1"
    assert proxy.count(READS, "GET") == before  # nothing was invalidated: no store read
    # Replay: the entry and the epoch record as they were, put back after a real invalidation. (Putting
    # back the id's generation record too rolls the id back: the limit README "Rotation" states.)
    name = tier.name(("connection", "forge_conn", None))
    old = {k: tier.store.get(k) for k in (name, tier._epoch_name)}
    rotate(vault, "forge_conn", "pw-s3cr3t-f2")
    reader.invalidate("connection", "forge_conn")
    assert path_for(config).get_connection("forge_conn").password == "pw-s3cr3t-f2"
    for k, blob in old.items():
        assert blob is not None
        tier.store.put(k, blob, time.time() + 600)
    time.sleep(1.1)
    assert reader.get_connection("forge_conn").password == "pw-s3cr3t-f2"
    assert path_for(config).get_connection("forge_conn").password == "pw-s3cr3t-f2"
    reader.close()


def test_cache_invalidate_needs_ids_or_all_and_a_shared_tier(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any
) -> None:
    config = write_config(tmp_path, vault, proxy.url, f"file:{tmp_path / 'c.db'}")
    runner = CliRunner()
    result = runner.invoke(cli, ["--config", str(config), "cache", "invalidate"])
    assert result.exit_code == 2 and "give ids" in result.output
    rotate(vault, "all_conn", "pw-s3cr3t-a1")
    reader = path_for(config)
    assert reader.get_connection("all_conn").password == "pw-s3cr3t-a1"
    rotate(vault, "all_conn", "pw-s3cr3t-a2")
    result = runner.invoke(cli, ["--config", str(config), "cache", "invalidate", "--all"])
    assert result.exit_code == 0, result.output
    time.sleep(1.05)
    assert reader.get_connection("all_conn").password == "pw-s3cr3t-a2"
    bare = tmp_path / "bare.toml"
    bare.write_text('[[backends]]\ntype = "env"\n')
    result = runner.invoke(cli, ["--config", str(bare), "cache", "invalidate", "x"])
    assert result.exit_code == 2 and "no shared cache tier" in result.output
    reader.close()


# --- 5. a retry reads the new secret ------------------------------------------------------------------


def test_refresh_reads_the_new_secret_and_a_storm_costs_a_handful_of_reads(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    rotate(vault, "ref_conn", "pw-s3cr3t-x1")
    config = write_config(tmp_path, vault, proxy.url, shared)
    path = path_for(config)
    other = path_for(config)  # another process of the deployment
    assert path.get_connection("ref_conn").password == "pw-s3cr3t-x1"
    assert other.get_connection("ref_conn").password == "pw-s3cr3t-x1"
    rotate(vault, "ref_conn", "pw-s3cr3t-x2")
    assert path.get_connection("ref_conn").password == "pw-s3cr3t-x1"  # cached: TTL 300 s
    time.sleep(1.05)  # a store read less than a second old answers a refresh (the rate limit)
    before = proxy.count(READS, "GET")
    assert path.get_connection("ref_conn", refresh=True).password == "pw-s3cr3t-x2"
    assert proxy.count(READS, "GET") == before + 1
    time.sleep(1.05)
    assert other.get_connection("ref_conn").password == "pw-s3cr3t-x2"  # dropped everywhere
    assert proxy.count(READS, "GET") == before + 1  # from the shared tier
    # A storm: 1,000 forced refreshes of one id in about a second, from 8 threads of two processes' paths.
    before = proxy.count(READS, "GET")
    started = time.monotonic()
    errors: list[BaseException] = []

    def storm(p: SearchPath) -> None:
        try:
            for _ in range(125):
                assert p.get_connection("ref_conn", refresh=True).password == "pw-s3cr3t-x2"
                time.sleep(0.006)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=storm, args=(p,)) for p in (path, other) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    storm_reads = proxy.count(READS, "GET") - before
    assert not errors, errors[:1]
    assert storm_reads <= max(3, 2 * int(elapsed + 1)), (storm_reads, elapsed)
    assert path.get_variable("ref_missing", None, refresh=True) is None
    print(f"\n[{shared.split(':')[0]}] 1000 refreshes in {elapsed:.2f} s: {storm_reads} store reads")
    path.close()
    other.close()


def test_a_failed_airflow_task_drops_what_it_read_unless_the_deployment_opts_out(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath import _airflow_refresh, airflow

    monkeypatch.setattr(airflow, "_task_reads", {})
    rotate(vault, "task_conn", "pw-s3cr3t-t1")
    config = write_config(tmp_path, vault, proxy.url, f"file:{tmp_path / 'task.db'}")
    task = path_for(config)
    assert task.get_connection("task_conn").password == "pw-s3cr3t-t1"
    airflow.note_read(task, "connection", "task_conn")  # what CredpathBackend notes on each read
    rotate(vault, "task_conn", "pw-s3cr3t-t2")
    _airflow_refresh.on_task_instance_failed(None, None, None)
    retry = path_for(config)  # the retry: a new task process, the same shared tier
    assert retry.get_connection("task_conn").password == "pw-s3cr3t-t2"
    # Opted out: the retry is served the cache.
    monkeypatch.setattr(airflow, "_task_reads", {})
    config = write_config(
        tmp_path, vault, proxy.url, f"file:{tmp_path / 'out.db'}", invalidate_failed_tasks=False
    )
    task = path_for(config)
    assert task.get_connection("task_conn").password == "pw-s3cr3t-t2"
    airflow.note_read(task, "connection", "task_conn")
    rotate(vault, "task_conn", "pw-s3cr3t-t3")
    _airflow_refresh.on_task_instance_failed(None, None, None)
    assert path_for(config).get_connection("task_conn").password == "pw-s3cr3t-t2"


def test_the_plugin_registers_the_refresh_listener() -> None:
    source = (_fixtures.REPO / "src" / "credpath" / "airflow_plugin.py").read_text()
    assert re.search(r"listeners = \[[^\]]*airflow_refresh", source)
    assert os.path.exists(_fixtures.REPO / "src" / "credpath" / "_airflow_refresh.py")


def test_migrate_into_a_store_drops_the_migrated_ids_in_every_process(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    from credpath.backends.metastore import MetastoreBackend

    fernet = Fernet.generate_key().decode()
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("old", "new")}
    MetastoreBackend(url=urls["old"], fernet_key=fernet).set_variable("mig_var", "mig-s3cr3t")
    config = tmp_path / "credpath.toml"
    config.write_text(
        "".join(
            f'[[backends]]\nname = "{name}"\ntype = "metastore"\n'
            f'kwargs = {{ url = "{urls[name]}", fernet_key = "{fernet}" }}\n'
            for name in ("new", "old")
        )
        + f'[cache]\nshared = "file:{tmp_path / "c.db"}"\nshared_key = "{_fixtures.KEY}"\n'
    )
    reader = path_for(config)
    assert reader.lookup("variable", "mig_var").source == "old"  # type: ignore[union-attr]
    result = CliRunner().invoke(cli, ["--config", str(config), "migrate", "--from", "old", "--to", "new"])
    assert result.exit_code == 0, result.output
    time.sleep(1.0)
    assert reader.lookup("variable", "mig_var").source == "new"  # type: ignore[union-attr]
    reader.close()


def test_the_web_detail_view_shows_the_version_read_and_the_version_each_tier_holds() -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from credpath._lookup.trace import note_version
    from credpath.web.app import create_app
    from tests.memory_backend import MemoryBackend

    class Versioned(MemoryBackend):
        def get_conn_value(self, conn_id: str, **kwargs: Any) -> str | None:
            note_version("v7")  # as a store's answer carries it
            return super().get_conn_value(conn_id, **kwargs)

    from credpath import metrics

    path = SearchPath([("store", Versioned(connections={"db": uri("pw-s3cr3t-web")}))])
    try:
        client = TestClient(create_app(path, cache_seconds=0))  # the app turns metrics on
        first = client.get("/id/connection?key=db").text
        page = client.get("/id/connection?key=db").text  # now held by the process tier
    finally:
        metrics.disable()
        metrics.reset()
    assert '<span class="mono" id="version">v7</span>' in first
    assert 'id="held">Cached versions: process tier <span class="mono">v7</span>' in page
    assert "pw-s3cr3t-web" not in page


def test_cache_invalidate_is_one_audit_event_per_id_and_kind(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from credpath import _audit

    config = write_config(tmp_path, vault, proxy.url, f"file:{tmp_path / 'c.db'}")
    trail = tmp_path / "audit.jsonl"
    monkeypatch.setenv("CREDPATH_AUDIT_ENABLED", "true")
    monkeypatch.setenv("CREDPATH_AUDIT_PATH", str(trail))
    try:
        result = CliRunner().invoke(
            cli, ["--config", str(config), "cache", "invalidate", "a_conn", "--kind", "connection"]
        )
        assert result.exit_code == 0, result.output
        _audit.flush()
    finally:
        _audit.configure(_audit.AuditSettings())
    events = [json.loads(line) for line in trail.read_text().splitlines()]
    assert [(e["operation"], e["kind"], e["id"], e["outcome"]) for e in events] == [
        ("invalidate", "connection", "a_conn", "ok")
    ]
