"""The shared cache tier: a node-local file (SQLite) and Redis, against real servers.

Store reads are counted at a fault proxy in front of a real OpenBao; Redis is a real ``redis-server``
(tests/servers/redis.py); the concurrent readers are separate processes, not threads.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from credpath._settings import parse_cache, parse_shared
from credpath._shared_cache import FileStore, SharedTier, parse_keys
from credpath.cli import cli
from credpath.errors import ConfigError, MissingDependency
from tests import _shared_tier_fixtures as _fixtures
from tests._shared_tier_fixtures import (
    KEY,
    OTHER_KEY,
    READS,
    REPO,
    digest,
    path_for,
    worker_env,
    write_config,
)
from tests.conftest import assert_no_secret
from tests.servers.openbao import OpenBao
from tests.servers.redis import REDIS_PASSWORD, RedisServer

PASSWORDS = {f"sc_conn_{i}": f"pw-s3cr3t-shared-{i}" for i in range(3)}
HOST = "shared-cache-db.internal"
VAR_VALUE = "var-s3cr3t-shared"
# The shared-tier fixtures (tests/_shared_tier_fixtures.py), taken into this module.
clean_env, proxy, shared = _fixtures.clean_env, _fixtures.proxy, _fixtures.shared


@pytest.fixture(scope="module")
def vault(openbao: OpenBao) -> Iterator[tuple[OpenBao, str]]:
    mount = openbao.enable_kv(2)
    logging.disable(logging.CRITICAL)  # hvac logs request bodies at DEBUG
    for conn_id, password in PASSWORDS.items():
        openbao.put(
            mount, 2, f"connections/{conn_id}", {"conn_uri": f"postgres://u:{password}@{HOST}:5432/d"}
        )
    openbao.put(mount, 2, "variables/sc_var", {"value": VAR_VALUE})
    logging.disable(logging.NOTSET)
    yield openbao, mount
    openbao.disable(mount)


def run_workers(tmp_path: Path, config: Path, ids: list[str], count: int) -> list[dict[str, Any]]:
    """``count`` processes start together (a start file) and read ``ids``; their JSON outputs."""
    start = tmp_path / f"start-{time.monotonic_ns()}"
    args = [str(config), str(start), ",".join(ids)]
    procs = _fixtures.start_together(tmp_path, "tests._shared_cache_worker", args, count, start, settle=1.5)
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert_no_secret(stdout + stderr)
        assert proc.returncode == 0, f"worker failed (rc={proc.returncode}): {stderr[-2000:]}"
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outputs


# --- configuration -----------------------------------------------------------------------------------


def test_settings_choose_the_tier_from_file_env_and_default_path(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"CREDPATH_HOME": str(home), "CREDPATH_CACHE_KEY": KEY}
    assert parse_cache({"shared": "file"}, "t", env).shared == f"file:{home / 'cache' / 'shared-cache.db'}"
    assert parse_cache({"shared": "file:~/x.db"}, "t", env).shared == f"file:{Path('~/x.db').expanduser()}"
    url = "rediss://:pw@cache.internal:6380/2?ssl_cert_reqs=required"
    assert parse_cache({"shared": url}, "t", env).shared == url
    # The environment wins over the file, and can switch the tier off.
    assert parse_cache({"shared": "file"}, "t", {**env, "CREDPATH_CACHE_SHARED": "off"}).shared is None
    assert parse_cache({}, "t", {**env, "CREDPATH_CACHE_SHARED": "file:/tmp/a.db"}).shared == "file:/tmp/a.db"
    assert parse_cache({}, "t", env).shared is None  # no tier unless configured
    # The key: CREDPATH_CACHE_KEY (comma-separated keys rotate: the first encrypts).
    settings = parse_shared({"shared": "file"}, "t", {**env, "CREDPATH_CACHE_KEY": f"{KEY},{OTHER_KEY}"})
    assert settings is not None and settings.keys == (KEY.encode(), OTHER_KEY.encode())
    assert KEY not in repr(settings)


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({"shared": "memcached://x:1"}, {}, "[cache]: shared must be 'file', 'file:PATH', or a redis://"),
        ({"shared": "redis://:pw-s3cr3t@h:notaport/0"}, {}, "shared is not a valid Redis URL"),
        ({"shared": "redis://:pw-s3cr3t@h:6379/zero"}, {}, "the path must be a database number"),
        ({"shared": "file:"}, {}, "'file:' needs a path"),
        ({"shared": 3}, {}, "shared must be 'file'"),
        ({"shared": "file", "shared_key": "not-a-key-s3cr3t"}, {}, "shared_key: key 1 is not a Fernet key"),
        ({"shared": "file"}, {"CREDPATH_CACHE_KEY": "x-s3cr3t"}, "CREDPATH_CACHE_KEY: key 1 is not a Fernet"),
        ({"shared": "redis://h:6379/0"}, {}, "a Redis tier needs a key every node shares"),
        ({"shared": "file", "shared_key": "airflow"}, {}, "Airflow's [core] fernet_key is not set"),
        ({"shared": "file", "shared_lease": 0}, {}, "shared_lease must be a number > 0"),
        ({}, {"CREDPATH_CACHE_SHARED": "bogus://s3cr3t"}, "CREDPATH_CACHE_SHARED must be 'file'"),
    ],
)
def test_bad_shared_settings_are_one_line_config_errors(
    raw: dict[str, Any], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cache(raw, "credpath.toml [cache]", {"CREDPATH_HOME": str(tmp_path), **env})
    text = str(info.value)
    assert message in text and "\n" not in text
    assert "s3cr3t" not in text  # never the value


def test_bad_shared_setting_exits_2_from_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "credpath.toml"
    config.write_text('[[backends]]\ntype = "env"\n[cache]\nshared = "redis://127.0.0.1:notaport/0"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "connections", "get", "x"])
    assert result.exit_code == 2
    assert "shared is not a valid Redis URL" in result.output


def test_key_falls_back_to_the_metastore_key_then_airflow_and_a_node_key_file(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def _keys(raw: dict[str, Any], origin: str, env: dict[str, str]) -> tuple[bytes, ...]:
        shared = parse_shared(raw, origin, env)
        assert shared is not None
        return shared.keys

    assert _keys({"shared": "file"}, "t", {"CREDPATH_HOME": str(home), "CREDPATH_FERNET_KEY": KEY}) == (
        KEY.encode(),
    )
    env = {"CREDPATH_HOME": str(home), "AIRFLOW__CORE__FERNET_KEY": OTHER_KEY}
    assert _keys({"shared": "file", "shared_key": "airflow"}, "t", env) == (OTHER_KEY.encode(),)
    home.mkdir()
    (home / "fernet.key").write_text(OTHER_KEY + "\n")
    assert _keys({"shared": "file"}, "t", {"CREDPATH_HOME": str(home)}) == (OTHER_KEY.encode(),)
    (home / "fernet.key").unlink()
    # Nothing configured: the file tier makes a node-local key, private, and reuses it.
    first = _keys({"shared": "file"}, "t", {"CREDPATH_HOME": str(home)})
    assert stat.S_IMODE((home / "cache.key").stat().st_mode) == 0o600
    assert _keys({"shared": "file"}, "t", {"CREDPATH_HOME": str(home)}) == first


def test_redis_tier_without_redis_py_is_a_missing_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "redis" else real(name, *a)
    )
    with pytest.raises(MissingDependency, match=r"pip install 'credpath\[redis\]'"):
        parse_cache({"shared": "redis://h:6379/0", "shared_key": KEY}, "t", {})


def test_import_credpath_loads_neither_redis_nor_sqlite3() -> None:
    code = (
        "import sys, credpath, credpath._search_path, credpath._settings, credpath._cache\n"
        "print(sorted(m for m in ('redis', 'sqlite3', 'credpath._shared_cache') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]", out.stderr


# --- one search path per "process" over a real store ---------------------------------------------------


def test_second_process_is_served_by_the_shared_tier_with_no_store_request(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    config = write_config(tmp_path, vault, proxy.url, shared)
    first = path_for(config)
    assert first.get_connection("sc_conn_0").password == PASSWORDS["sc_conn_0"]
    assert first.get_variable("sc_var") == VAR_VALUE
    assert first.get_variable("sc_missing", None) is None  # a miss is shared too (miss TTL)
    first.close()
    assert proxy.count() == 3
    second = path_for(config)  # a new process tier, the same shared tier
    conn = second.get_connection("sc_conn_0")
    assert (conn.password, conn.host, conn.conn_id) == (PASSWORDS["sc_conn_0"], HOST, "sc_conn_0")
    assert second.get_variable("sc_var") == VAR_VALUE
    assert second.get_variable("sc_missing", None) is None
    assert proxy.count() == 3  # no read, no login, no lookup-self
    explained = second.explain("connection", "sc_conn_1", use_cache=True)
    assert explained.tier == "store" and proxy.count() == 4
    third = path_for(config)
    assert third.explain("connection", "sc_conn_1", use_cache=True).tier == "shared"
    assert second.explain("connection", "sc_conn_1", use_cache=True).tier == "process"
    second.close()
    third.close()


def test_n_processes_make_exactly_one_store_read_per_id(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    proxy.add("delay", path=READS, seconds=0.4)  # a slow store: every process misses at once
    config = write_config(tmp_path, vault, proxy.url, shared)
    ids = [f"connection:{c}" for c in PASSWORDS] + ["variable:sc_var"]
    outputs = run_workers(tmp_path, config, ids, count=6)
    expected = {f"connection:{c}": digest(p) for c, p in PASSWORDS.items()} | {
        "variable:sc_var": digest(VAR_VALUE)
    }
    assert all(out["values"] == expected for out in outputs)
    assert proxy.count(READS) == len(ids)
    assert proxy.count() == len(ids)  # nothing else: no login, no lookup-self, no KV-version probe
    stats = path_for(config).shared.stats()
    assert stats["store_reads"] == len(ids)
    assert stats["shared_hits"] == 5 * len(ids)


def kill_a_lock_holder(tmp_path: Path, config: Path, conn_id: str) -> None:
    """A process takes ``conn_id``'s lock in the shared tier and is killed holding it."""
    holder = subprocess.Popen(
        [sys.executable, "-m", "tests._shared_cache_worker", str(config), "-", "-", "--hold-lock", conn_id],
        env=worker_env(tmp_path),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert json.loads(holder.stdout.readline()) == {"holding": True}
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=10)


def test_a_killed_lock_holder_is_taken_over_after_its_lease(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    config = write_config(tmp_path, vault, proxy.url, shared, shared_lease=1.0)
    kill_a_lock_holder(tmp_path, config, "sc_conn_2")
    path = path_for(config)
    started = time.monotonic()
    assert path.get_connection("sc_conn_2").password == PASSWORDS["sc_conn_2"]
    assert time.monotonic() - started < 5  # waited for the lease (1 s), then read itself
    assert proxy.count(READS) == 1
    path.close()
    assert path.shared.stats()["lock_takeovers"] == 1  # it waited for the dead holder, then took over


def test_stale_if_error_across_processes(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str, caplog: Any
) -> None:
    config = write_config(tmp_path, vault, proxy.url, shared, ttl=0.5, jitter=0)
    first = path_for(config)
    assert first.get_variable("sc_var") == VAR_VALUE
    first.close()
    time.sleep(0.7)  # expired everywhere, still in the stale window
    proxy.add("status", path=READS, status=503)
    later = path_for(config)  # a process that starts during the outage
    with caplog.at_level(logging.WARNING):
        assert later.get_variable("sc_var") == VAR_VALUE
        explained = later.explain("variable", "sc_var")
    assert explained.tier == "stale" and explained.stale
    assert "serving its last good value" in caplog.text
    later.close()


def test_credpath_writes_invalidate_the_shared_entry(tmp_path: Path, shared: str) -> None:
    db = tmp_path / "meta.db"
    config = tmp_path / "credpath.toml"
    config.write_text(
        f'[[backends]]\ntype = "metastore"\nkwargs = {{url = "sqlite:///{db}", fernet_key = "{KEY}"}}\n'
        f"[cache]\nshared = {json.dumps(shared)}\nshared_key = {json.dumps(KEY)}\n"
    )
    writer = path_for(config)
    writer.set_variable("inv_var", "one-s3cr3t")
    reader = path_for(config)
    assert reader.get_variable("inv_var") == "one-s3cr3t"
    writer.set_variable("inv_var", "two-s3cr3t")
    assert path_for(config).get_variable("inv_var") == "two-s3cr3t"  # not the shared "one"
    writer.close()
    reader.close()


# --- nothing in clear; a wrong key; a broken tier ---------------------------------------------------


def _raw_contents(shared: str, redis_server: RedisServer | None) -> bytes:
    if shared.startswith("file:"):
        path = Path(shared[5:])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    client = redis_server.client()  # type: ignore[union-attr]
    dump = b""
    for key in client.keys("*"):
        dump += key + b"\0" + (client.dump(key) or b"")
    return dump


def test_nothing_readable_in_clear_in_the_tier(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str, request: pytest.FixtureRequest
) -> None:
    config = write_config(tmp_path, vault, proxy.url, shared)
    path = path_for(config)
    for conn_id in PASSWORDS:
        path.get_connection(conn_id)
    path.get_variable("sc_var")
    path.close()
    server = request.getfixturevalue("redis_server") if shared.startswith("redis") else None
    raw = _raw_contents(shared, server)
    assert raw  # something was written
    for clear in [*PASSWORDS, *PASSWORDS.values(), HOST, "sc_var", VAR_VALUE, "postgres", "s3cr3t", "vault"]:
        assert clear.encode() not in raw, "a connection id, value or backend name sits in clear"
    if shared.startswith("file:"):
        assert stat.S_IMODE(Path(shared[5:]).stat().st_mode) == 0o600


def test_wrong_key_is_a_miss_and_one_warning_never_a_wrong_value(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str, caplog: Any
) -> None:
    write_config(tmp_path, vault, proxy.url, shared)
    right = path_for(write_config(tmp_path, vault, proxy.url, shared))
    right.get_connection("sc_conn_0")
    right.close()
    # Same key names (HMAC key from the first key), another encryption key: simulate a writer whose
    # entries this process cannot open by writing with OTHER_KEY under the right names.
    store = right.shared.store
    other = SharedTier(store, parse_keys(OTHER_KEY, "k"), right.shared._scope)
    other._mac_key = right.shared._mac_key
    entry = right.shared.get(("connection", "sc_conn_0", None))
    other.put(("connection", "sc_conn_0", None), entry)
    other.put(("connection", "sc_conn_1", None), entry)  # a value under another id's name: refused too
    proxy.clear()
    reader = path_for(write_config(tmp_path, vault, proxy.url, shared))
    with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
        assert reader.get_connection("sc_conn_0").password == PASSWORDS["sc_conn_0"]
        assert reader.get_connection("sc_conn_1").password == PASSWORDS["sc_conn_1"]
    warnings = [r for r in caplog.records if "did not decrypt" in r.getMessage()]
    assert len(warnings) == 1
    assert proxy.count(READS) == 2  # both were misses, read from the store
    reader.close()


def test_a_value_moved_to_another_key_is_refused(tmp_path: Path) -> None:
    tier = SharedTier(FileStore(tmp_path / "c.db"), parse_keys(KEY, "k"))
    from credpath._shared_cache import SharedEntry

    now = time.time()
    tier.put(("variable", "a", None), SharedEntry("variable", "value-a", "x", False, now, now + 60, now + 60))
    store = tier.store
    store.put(tier.name(("variable", "b", None)), store.get(tier.name(("variable", "a", None))), now + 60)
    assert tier.get(("variable", "a", None)).value == "value-a"
    assert tier.get(("variable", "b", None)) is None


def test_corrupt_or_unreadable_file_is_logged_once_and_the_store_serves(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, caplog: Any
) -> None:
    cache = tmp_path / "broken.db"
    cache.write_bytes(b"this is not a database, just noise " * 200)
    config = write_config(tmp_path, vault, proxy.url, f"file:{cache}")
    path = path_for(config)
    with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
        for conn_id in PASSWORDS:
            assert path.get_connection(conn_id).password == PASSWORDS[conn_id]
        time.sleep(1.1)  # past the tier's back-off: it is tried again, fails again, still once logged
        assert path.get_variable("sc_var") == VAR_VALUE
    assert len([r for r in caplog.records if "going to the stores directly" in r.getMessage()]) == 1
    assert proxy.count(READS) == 4
    path.close()


def test_redis_down_then_restarted_does_not_break_lookups(
    tmp_path: Path,
    vault: tuple[OpenBao, str],
    proxy: Any,
    redis_server: RedisServer,
    redis_url: str,
    caplog: Any,
) -> None:
    config = write_config(tmp_path, vault, proxy.url, redis_url)
    path = path_for(config)
    assert path.get_connection("sc_conn_0").password == PASSWORDS["sc_conn_0"]
    redis_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
            started = time.monotonic()
            down = path_for(config)
            assert down.get_connection("sc_conn_0").password == PASSWORDS["sc_conn_0"]
            assert down.get_connection("sc_conn_1").password == PASSWORDS["sc_conn_1"]
            assert time.monotonic() - started < 5
        assert len([r for r in caplog.records if "going to the stores directly" in r.getMessage()]) == 1
    finally:
        redis_server.start()  # restarted, empty
    time.sleep(1.1)  # the tier's back-off after a failure
    before = proxy.count(READS)
    assert down.get_connection("sc_conn_2").password == PASSWORDS["sc_conn_2"]  # writes the new server
    fresh = path_for(config)
    assert fresh.get_connection("sc_conn_2").password == PASSWORDS["sc_conn_2"]
    assert proxy.count(READS) == before + 1  # the second was served by the restarted Redis
    for p in (path, down, fresh):
        p.close()
    assert REDIS_PASSWORD not in caplog.text


# --- the CLI -------------------------------------------------------------------------------------------


def test_cache_stats_clear_and_explain_tier(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    config = write_config(tmp_path, vault, proxy.url, shared)
    runner = CliRunner()
    first = runner.invoke(cli, ["--config", str(config), "explain", "connection", "sc_conn_0", "--cache"])
    assert first.exit_code == 0, first.output
    assert "tier: store" in first.output
    second = runner.invoke(
        cli, ["--config", str(config), "explain", "connection", "sc_conn_0", "--cache", "--json"]
    )
    assert json.loads(second.output)["tier"] == "shared"
    runner.invoke(cli, ["--config", str(config), "connections", "get", "sc_conn_0"])
    stats = runner.invoke(cli, ["--config", str(config), "cache", "stats", "--json"])
    assert stats.exit_code == 0, stats.output
    data = json.loads(stats.output)
    assert data["shared"]["entries"] >= 1
    assert data["shared"]["hits"] >= 1 and data["store"]["reads"] >= 1
    assert data["store"]["calls_avoided"] >= 1
    table = runner.invoke(cli, ["--config", str(config), "cache", "stats"])
    assert "store calls avoided" in table.output
    cleared = runner.invoke(cli, ["--config", str(config), "cache", "clear"])
    assert cleared.exit_code == 0 and "removed" in cleared.output
    again = runner.invoke(
        cli, ["--config", str(config), "explain", "connection", "sc_conn_0", "--cache", "--json"]
    )
    assert json.loads(again.output)["tier"] == "store"
    for result in (first, second, stats, table, cleared, again):
        assert_no_secret(result.output)


def test_cache_stats_without_a_shared_tier_says_so(tmp_path: Path) -> None:
    config = tmp_path / "credpath.toml"
    config.write_text('[[backends]]\ntype = "env"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "cache", "stats"])
    assert result.exit_code == 2
    assert "no shared cache tier is configured" in result.output


def test_the_wait_for_a_dead_holders_lease_is_bounded_by_the_callers_deadline(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    """Default lease (5 s), a store deadline of 1 s, a holder on another node that died: a cold lookup
    waits at most its own deadline, not the holder's lease and a second more (6 s before)."""
    config = write_config(tmp_path, vault, proxy.url, shared)
    config.write_text(config.read_text().replace("[cache]\n", "timeout = 1.0\n[cache]\n"))
    path = path_for(config)
    tier = path.shared
    assert tier.lease == 5.0 and tier.wait_limit == 1.0
    assert tier.store.lock(tier.name(("connection", "sc_conn_1", None)), "another-node:4242:dead", 5.0)
    started = time.monotonic()
    assert path.get_connection("sc_conn_1").password == PASSWORDS["sc_conn_1"]
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.5, elapsed  # ~1 s waited, then its own read
    assert proxy.count(READS) == 1
    path.close()


def test_a_lock_held_by_a_dead_process_of_this_host_is_freed_at_once(
    tmp_path: Path, vault: tuple[OpenBao, str], proxy: Any, shared: str
) -> None:
    """Default lease (5 s) and store deadline: the holder is gone, so nobody waits for its lease."""
    config = write_config(tmp_path, vault, proxy.url, shared)
    kill_a_lock_holder(tmp_path, config, "sc_conn_0")
    path = path_for(config)
    started = time.monotonic()
    assert path.get_connection("sc_conn_0").password == PASSWORDS["sc_conn_0"]
    assert time.monotonic() - started < 1.0
    assert proxy.count(READS) == 1
    path.close()
    assert path.shared.stats()["lock_takeovers"] == 1
