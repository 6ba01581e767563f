"""Read counters per deployment through the shared tier (file and a real Redis): every process's reads
summed, published in batches off the lookup path, and records a writer without the key cannot forge,
move or pass off as another process's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from credpath import _audit, _usage
from credpath._search_path import SearchPath
from credpath._shared_cache import FileStore, SharedTier, open_store
from tests.conftest import assert_no_secret
from tests.memory_backend import MemoryBackend

KEY = b"kQ3pW0m3a2Vw5Zb6cE8-3nJ0c1d2e3f4g5h6i7j8k9A="
OTHER_KEY = b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
PASSWORD = "s3cr3t-counted-pw"
REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from credpath import _audit
    from credpath._search_path import SearchPath
    from credpath._shared_cache import SharedTier, open_store
    from tests.memory_backend import MemoryBackend

    setting, trail, dag, reads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    os.environ["AIRFLOW_CTX_DAG_ID"] = dag
    os.environ["AIRFLOW_CTX_TASK_ID"] = "t"
    _audit.configure(_audit.AuditSettings(enabled=True, path=Path(trail), cached="all"))
    backend = MemoryBackend(connections={"db": "postgres://u:s3cr3t-counted-pw@h/d"})
    tier = SharedTier(open_store(setting), [b"kQ3pW0m3a2Vw5Zb6cE8-3nJ0c1d2e3f4g5h6i7j8k9A="], "scope")
    path = SearchPath([("mem", backend)], shared=tier)
    for _ in range(reads):
        path.get_connection("db")
    # exit: the audit trail's exit handler writes the queue and publishes the counters
    """
)


@pytest.fixture(params=["file", "redis"])
def setting(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file:{tmp_path / 'shared.db'}"
    return request.getfixturevalue("redis_url")  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    _usage.reset()
    _usage._tiers.clear()  # tiers of earlier tests not yet collected
    yield
    _audit.configure(_audit.AuditSettings())
    _audit._INVENTORY.clear()
    _usage.reset()


def tier_of(setting: str, key: bytes = KEY) -> SharedTier:
    return SharedTier(open_store(setting), [key], "scope")


def web_path(tier: SharedTier) -> SearchPath:
    return SearchPath(
        [("mem", MemoryBackend(connections={"db": f"postgres://u:{PASSWORD}@h/d"}))], shared=tier
    )


def test_reads_of_every_process_are_summed_per_deployment(setting: str, tmp_path: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, setting, str(tmp_path / f"trail-{dag}.jsonl"), dag, str(n)],
            cwd=REPO,
        )
        for dag, n in (("etl", 3), ("report", 5))
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    reads = _audit.deployment_reads(web_path(tier_of(setting)), [("connection", "db")])
    assert reads is not None
    row = reads[("connection", "db")]
    assert row["reads_hour"] == row["reads_day"] == 8
    # Each process's first read left it (the store, or the tier the other one filled), then its cache.
    assert row["tiers"]["process"] == 6
    assert row["tiers"].get("store", 0) + row["tiers"].get("shared", 0) == 2
    assert row["dags"] == ["etl", "report"]
    assert row["last_by"] in ("etl.t", "report.t") and row["last_tier"] == "process"
    assert abs(row["last_read"] - time.time()) < 120
    assert_no_secret(repr(reads), PASSWORD)


def test_counters_are_published_in_batches_not_per_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "shared.db")
    calls: list[int] = []
    original = store.put_usage

    def counted(records: list[tuple[str, str, bytes]], keep_until: float) -> None:
        calls.append(len(records))
        original(records, keep_until)

    monkeypatch.setattr(store, "put_usage", counted)
    tier = SharedTier(store, [KEY], "scope")
    path = web_path(tier)
    _audit.configure(_audit.AuditSettings(enabled=True, path=tmp_path / "trail.jsonl", cached="all"))
    monkeypatch.setattr(_usage, "FLUSH_SECONDS", 3600.0)
    _usage._last = time.monotonic()  # as if this process had just published
    for _ in range(2000):
        path.get_connection("db")
    _audit.flush()
    time.sleep(0.1)
    assert calls == []  # not due yet: 2,000 reads, no write to the tier
    _audit._at_exit()  # at exit (or once due): one write of the one id's record
    assert calls == [1]
    reads = _usage.deployment(tier, [("connection", "db")])
    assert sum(reads[("connection", "db")]["minutes"].values()) == 2000


def test_without_a_shared_tier_counts_stay_per_process(tmp_path: Path) -> None:
    from credpath.web.access import reads_of

    path = SearchPath([("mem", MemoryBackend(connections={"db": f"postgres://u:{PASSWORD}@h/d"}))])
    _audit.configure(_audit.AuditSettings(enabled=True, path=tmp_path / "trail.jsonl", cached="all"))
    path.get_connection("db")
    path.get_connection("db")
    assert _audit.deployment_reads(path, [("connection", "db")]) is None
    rows, source = reads_of(path, [("connection", "db")])
    assert source == "this process" and rows[("connection", "db")]["reads_day"] == 2


def _publish(tier: SharedTier, ident: str, count: int, dag: str) -> None:
    _usage.register(tier)
    row: dict[str, Any] = {
        "last": time.time(),
        "by": f"{dag}.t",
        "tier": "store",
        "minutes": {int(time.time() // 60): count},
        "tiers": {"store": count},
        "dags": {dag},
    }
    _usage.reset()
    _usage.publish({("connection", ident): row}, force=True)


def test_records_cannot_be_forged_moved_or_passed_off(tmp_path: Path) -> None:
    setting = f"file:{tmp_path / 'shared.db'}"
    tier = tier_of(setting)
    _publish(tier, "db", 3, "etl")
    # A writer without the key: a record sealed with another key is refused.
    stranger = tier_of(setting, OTHER_KEY)
    forged = stranger._fernet.encrypt(
        json.dumps(
            {
                "n": _usage.name(tier, "connection", "db"),
                "w": "x",
                "l": [time.time(), "evil.t", "store"],
                "m": {str(int(time.time() // 60)): 1000},
                "t": {"store": 1000},
                "d": ["evil"],
            }
        ).encode()
    )
    tier.store.put_usage([(_usage.name(tier, "connection", "db"), "x", forged)], time.time() + 60)  # type: ignore[attr-defined]
    # A genuine record of another id copied under this id's name; this id's own record copied under
    # another process's field (it would count twice).
    _publish(tier, "other", 500, "copied")
    db_name, other_name = _usage.name(tier, "connection", "db"), _usage.name(tier, "connection", "other")
    ((_, other_blob),) = tier.store.get_usage([other_name])[other_name]  # type: ignore[attr-defined]
    genuine = [blob for field, blob in tier.store.get_usage([db_name])[db_name] if field != "x"]  # type: ignore[attr-defined]
    tier.store.put_usage([(db_name, "z", other_blob), (db_name, "y", genuine[0])], time.time() + 60)  # type: ignore[attr-defined]
    before = tier.counts["undecryptable"]
    row = _usage.deployment(tier, [("connection", "db")])[("connection", "db")]
    assert sum(row["minutes"].values()) == 3 and row["dags"] == {"etl"}
    assert tier.counts["undecryptable"] - before == 3  # forged (x), moved (z), passed off (y)


def test_counts_a_failed_publish_left_out_go_at_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "shared.db")
    tier = SharedTier(store, [KEY], "scope")
    original = store.put_usage

    def down(records: list[tuple[str, str, bytes]], keep_until: float) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(store, "put_usage", down)
    row = {"last": time.time(), "by": "etl.t", "tier": "store", "minutes": {int(time.time() // 60): 4},
           "tiers": {"store": 4}, "dags": {"etl"}}  # fmt: skip
    assert _usage.publish({("connection", "db"): row}, force=True) == 0  # logged by the tier, no raise
    monkeypatch.setattr(store, "put_usage", original)
    tier._down_until = 0.0  # the tier's one-second pause after a failure, over
    assert _usage.publish({("connection", "db"): row}, force=True) == 1
    assert sum(_usage.deployment(tier, [("connection", "db")])[("connection", "db")]["minutes"].values()) == 4


def test_redis_py_store_keeps_records_like_the_resp_store(redis_url: str) -> None:
    """Sentinel and Cluster tiers go through redis-py's RedisStore: the same records, read back."""
    pytest.importorskip("redis")
    from credpath._shared_cache import RedisStore

    store = RedisStore(redis_url)
    tier = SharedTier(store, [KEY], "scope")
    _publish(tier, "db", 6, "etl")
    row = _usage.deployment(tier, [("connection", "db")])[("connection", "db")]
    assert sum(row["minutes"].values()) == 6 and row["dags"] == {"etl"}
    assert store._client.pttl("credpath:v1:" + _usage.name(tier, "connection", "db")) > 0


def test_report_counts_the_deployment_reads_too(tmp_path: Path) -> None:
    """``credpath audit report`` and the web panel: an id other processes read (their counters in the tier)
    is not "unused" here, and the dags of every process count towards "read by many dags"."""
    tier = tier_of(f"file:{tmp_path / 'shared.db'}")
    for dag in ("etl", "report", "billing"):
        _usage._field_pid = 0  # each as another process
        _publish(tier, "db", 2, dag)
    path = SearchPath(
        [("mem", MemoryBackend(connections={"db": f"postgres://u:{PASSWORD}@h/d", "idle": "postgres://h"}))],
        shared=tier,
    )
    found = _audit.report([], path, unused_days=1, many_dags=3)
    assert [u["id"] for u in found["unused"]] == ["idle"]
    assert found["read_by_many_dags"] == [
        {"kind": "connection", "id": "db", "dags": ["billing", "etl", "report"], "reads_day": 6}
    ]
    assert found["deployment"] is True
    assert_no_secret(repr(found), PASSWORD)
