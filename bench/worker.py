"""One benchmark job, run in a fresh interpreter of the Airflow 3.3.2 virtualenv (credpath installed too).

Usage: python worker.py JOB_JSON  ->  prints one JSON object of measurements (never a secret value).
Both sides count HTTP requests the same way: every urllib3 ``urlopen`` (boto3 and hvac both use urllib3).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from typing import Any

REQUESTS = {"count": 0}


def count_http_requests() -> None:
    import urllib3.connectionpool

    original = urllib3.connectionpool.HTTPConnectionPool.urlopen

    def urlopen(self: Any, *args: Any, **kwargs: Any) -> Any:
        REQUESTS["count"] += 1
        return original(self, *args, **kwargs)

    urllib3.connectionpool.HTTPConnectionPool.urlopen = urlopen  # type: ignore[method-assign]


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "total_s": sum(samples),
        "median_ms": statistics.median(samples) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


def timed(fn: Any, ids: list[str]) -> tuple[list[float], int]:
    samples = []
    before = REQUESTS["count"]
    for item in ids:
        started = time.perf_counter()
        fn(item)
        samples.append(time.perf_counter() - started)
    return samples, REQUESTS["count"] - before


# --- Airflow side ----------------------------------------------------------------------------------


def airflow_resolve(job: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    from airflow.models.connection import Connection

    import_s = time.perf_counter() - started
    count_http_requests()
    ids = job["ids"]
    samples, calls = timed(Connection.get_connection_from_secrets, ids)
    again, calls_again = timed(Connection.get_connection_from_secrets, ids)
    return {
        "import_s": import_s,
        "cold": summarize(samples),
        "cold_calls": calls,
        "warm": summarize(again),
        "warm_calls": calls_again,
    }


def airflow_cache(job: dict[str, Any]) -> dict[str, Any]:
    from airflow.models.connection import Connection
    from airflow.secrets.cache import SecretCache

    count_http_requests()
    SecretCache.init()
    conn_id = job["ids"][0]
    Connection.get_connection_from_secrets(conn_id)
    before = REQUESTS["count"]
    samples, _ = timed(Connection.get_connection_from_secrets, [conn_id] * job.get("repeat", 2000))
    return {"hit": summarize(samples), "calls": REQUESTS["count"] - before}


def airflow_miss(job: dict[str, Any]) -> dict[str, Any]:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    count_http_requests()

    def miss(conn_id: str) -> None:
        try:
            Connection.get_connection_from_secrets(conn_id)
        except AirflowNotFoundException:
            return
        raise AssertionError("expected a miss")

    miss("warm_up_missing")
    samples, calls = timed(miss, job["ids"])
    return {"miss": summarize(samples), "calls_per_miss": calls / len(job["ids"])}


def airflow_masker(job: dict[str, Any]) -> dict[str, Any]:
    from airflow.sdk.log import mask_secret

    try:
        from airflow.sdk._shared.secrets_masker import _secrets_masker as get_masker
    except ImportError:  # pragma: no cover - layout differs between 3.x releases
        from airflow.sdk.execution_time.secrets_masker import _secrets_masker as get_masker
    masker = get_masker()
    return _masker_curve(mask_secret, lambda text: masker.redact(text), job["counts"])


# --- credpath side ---------------------------------------------------------------------------------


def credpath_search_path(job: dict[str, Any]) -> Any:
    from credpath._search_path import SearchPath

    return SearchPath.from_config(job.get("config"))


def credpath_resolve(job: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    import credpath  # noqa: F401

    import_s = time.perf_counter() - started
    count_http_requests()
    search_path = credpath_search_path(job)
    ids = job["ids"]
    result: dict[str, Any] = {"import_s": import_s}
    if job.get("prefetch"):
        began, before = time.perf_counter(), REQUESTS["count"]
        search_path.prefetch(connections=ids)
        result["prefetch_s"] = time.perf_counter() - began
        result["prefetch_calls"] = REQUESTS["count"] - before
    samples, calls = timed(search_path.get_connection, ids)
    result.update(cold=summarize(samples), cold_calls=calls + result.get("prefetch_calls", 0))
    if job.get("prefetch"):
        result["cold"]["total_s"] += result["prefetch_s"]
    again, calls_again = timed(search_path.get_connection, ids)
    result.update(warm=summarize(again), warm_calls=calls_again)
    return result


def credpath_cache(job: dict[str, Any]) -> dict[str, Any]:
    count_http_requests()
    search_path = credpath_search_path(job)
    conn_id = job["ids"][0]
    search_path.get_connection(conn_id)
    repeat = job.get("repeat", 2000) * 50
    before = REQUESTS["count"]
    get = search_path.get_connection
    started = time.perf_counter()
    for _ in range(repeat):
        get(conn_id)
    per_hit = (time.perf_counter() - started) / repeat
    return {
        "hit": {"median_ms": per_hit * 1000, "total_s": per_hit * repeat, "p99_ms": per_hit * 1000},
        "calls": REQUESTS["count"] - before,
    }


def credpath_miss(job: dict[str, Any]) -> dict[str, Any]:
    from credpath.errors import NotFound

    count_http_requests()
    search_path = credpath_search_path(job)

    def miss(conn_id: str) -> None:
        try:
            search_path.get_connection(conn_id)
        except NotFound:
            return
        raise AssertionError("expected a miss")

    miss("warm_up_missing")
    samples, calls = timed(miss, job["ids"])
    repeat, calls_repeat = timed(miss, job["ids"])
    return {
        "miss": summarize(samples),
        "calls_per_miss": calls / len(job["ids"]),
        "repeat_miss": summarize(repeat),
        "calls_per_repeat_miss": calls_repeat / len(job["ids"]),
    }


def credpath_masker(job: dict[str, Any]) -> dict[str, Any]:
    from credpath._masking import default_masker, mask_secret

    return _masker_curve(mask_secret, default_masker().redact, job["counts"])


def _masker_curve(register: Any, redact: Any, counts: list[int]) -> dict[str, Any]:
    # Register distinct secrets, redacting one log line after each (what resolving connections does).
    logging.disable(logging.CRITICAL)
    curve = []
    registered = 0
    started = time.perf_counter()
    for target in counts:
        while registered < target:
            register(f"bench-masked-value-{registered:07d}")
            redact("INFO - resolved connection, connecting to host")
            registered += 1
        curve.append({"secrets": target, "elapsed_s": time.perf_counter() - started})
    return {"curve": curve}


JOBS = {
    "airflow_resolve": airflow_resolve,
    "airflow_cache": airflow_cache,
    "airflow_miss": airflow_miss,
    "airflow_masker": airflow_masker,
    "credpath_resolve": credpath_resolve,
    "credpath_cache": credpath_cache,
    "credpath_miss": credpath_miss,
    "credpath_masker": credpath_masker,
}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    os.environ.update(job.get("env", {}))
    print(json.dumps(JOBS[job["job"]](job)))
