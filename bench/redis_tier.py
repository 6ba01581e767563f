"""The shared tier under contention: N task processes started together, each reading k connections.

moto's Secrets Manager behind a loopback proxy that counts every request, a redis-server (password set),
and for each variant N fresh interpreters started at once (as Airflow starts task processes), each
building a search path from a credpath.toml and reading the same k connections:

- ``none``: no shared tier (every process reads every id);
- ``file``: ``[cache] shared = "file:..."`` (SQLite on this node);
- ``redis``: ``redis://...`` with this tree's client (RESP over a plain socket, no redis-py import);
- ``redis-old``: the same URL with the code in ``--old-src``, when given (``file-old``, ``none-old``:
  the other tiers on the old code, when named in ``--variants``).

Makespan runs from the first process started to the last one done (process start-up and imports
included: that is what a task pays). Variants run interleaved for ``--rounds`` rounds so changing load
weighs on each alike. ``--hits`` also measures shared-hit latency at a fixed request rate from one
node (p50/p99 of ``SharedTier.get_or_acquire`` on a warm entry, paced to ``--rate`` lookups/s in all,
from ``--hit-processes`` processes). ``--max-running`` bounds how many task processes run at once (as
an Airflow worker's parallelism does): 200 interpreters started at once on 2 cores starve the lock holder
past its lease, and the waiters then read the store themselves.

    python bench/redis_tier.py --cases 200x5,50x100 --rounds 2 [--max-running 50] [--old-src /work/main/src]
        [--hits --hit-processes 1,4,8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _procs
from _procs import KEY, ROOT, aws_config, task_env

WORKER = r"""
import json, os, resource, sys, time
t0 = time.monotonic()
try:
    from credpath._search_path import SearchPath
except ImportError:  # the old tree's module names
    from credpath._search_path import SearchPath
path = SearchPath.from_config(sys.argv[1])
for conn_id in sys.argv[2].split(","):
    path.get_connection(conn_id)
store = getattr(path.shared, "store", None)
trips = getattr(store, "round_trips", None)
path.close()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu_ms": (usage.ru_utime + usage.ru_stime) * 1000,
                  "wall_ms": (time.monotonic() - t0) * 1000, "round_trips": trips,
                  "redis_imported": "redis" in sys.modules, "botocore": "botocore.session" in sys.modules}))
"""


def run_case(
    config: Path, ids: list[str], n: int, src: Path, home: Path, max_running: int | None
) -> dict[str, Any]:
    env = task_env(src, CREDPATH_HOME=str(home))
    argv = [sys.executable, "-c", WORKER, str(config), ",".join(ids)]
    launches = [_procs.Launch(argv, env) for _ in range(n)]
    outcome = _procs.run(launches, max_running)
    outs = outcome.outputs
    trips = [o["round_trips"] for o in outs if o["round_trips"] is not None]
    readers = [o["cpu_ms"] for o in outs if o.get("botocore")]
    others = [o["cpu_ms"] for o in outs if not o.get("botocore")]
    return {
        "makespan_s": outcome.makespan_s,
        "cpu_ms_median": statistics.median(o["cpu_ms"] for o in outs),
        # Where the CPU goes: all task processes together, and the median of those that built a store
        # client against those that did not.
        "cpu_ms_total": sum(o["cpu_ms"] for o in outs),
        "cpu_ms_median_with_client": statistics.median(readers) if readers else None,
        "cpu_ms_median_without_client": statistics.median(others) if others else None,
        "redis_imported": any(o["redis_imported"] for o in outs),
        "round_trips_per_lookup": (sum(trips) / (len(trips) * len(ids))) if trips else None,
        "failed_processes": outcome.failed,
        # Processes that read the store themselves (and so built a store client, the costliest step).
        "processes_with_store_client": sum(bool(o.get("botocore")) for o in outs),
    }


def _server_cpu_s(redis: Any) -> float:
    """redis-server's CPU so far (user + system), from INFO."""
    info = redis.client().info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _hit_worker(url: str, rate: float, seconds: float, out: Any) -> None:
    from credpath._redis_store import RespStore
    from credpath._shared_cache import SharedTier

    tier = SharedTier(RespStore(url), [KEY.encode()], "bench")
    ckeys = [("connection", f"c{i}", None) for i in range(100)]
    samples = []
    interval = 1.0 / rate
    due = time.perf_counter()
    end = due + seconds
    i = 0
    while due < end:
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t = time.perf_counter()
        entry, _ = tier.get_or_acquire(ckeys[i % len(ckeys)])  # what a lookup asks (one round trip)
        samples.append(time.perf_counter() - t)
        assert entry is not None
        i += 1
        due += interval
    out.send((samples, time.perf_counter() - (end - seconds)))


def hit_latency(url: str, rate: float, seconds: float, processes: int) -> dict[str, Any]:
    """p50/p99 of a warm shared hit as a lookup asks for it (SharedTier.get_or_acquire: HMAC name, one
    script that finds the entry, Fernet decrypt), from
    ``processes`` processes of this node paced to ``rate`` lookups/s in all."""
    import multiprocessing

    from credpath._redis_store import RespStore
    from credpath._shared_cache import SharedEntry, SharedTier

    tier = SharedTier(RespStore(url), [KEY.encode()], "bench")
    now = time.time()
    for i in range(100):
        ckey = ("connection", f"c{i}", None)
        tier.get(ckey)
        tier.put(ckey, SharedEntry("variable", "v" * 200, "aws", False, now, now + 600, now + 900))
    context = multiprocessing.get_context("fork")
    pipes = [context.Pipe(duplex=False) for _ in range(processes)]
    workers = [
        context.Process(target=_hit_worker, args=(url, rate / processes, seconds, w)) for _, w in pipes
    ]
    for worker in workers:
        worker.start()
    samples: list[float] = []
    reached = 0.0
    for (r, _), worker in zip(pipes, workers, strict=True):
        got, elapsed = r.recv()
        samples += got
        reached += len(got) / elapsed
        worker.join()
    ordered = sorted(samples)
    return {
        "rate_target": rate,
        "rate_reached": reached,
        "processes": processes,
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99)] * 1000,
        "lookups": len(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="200x5,50x100", help="NxK[,NxK...] (processes x ids)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", default="none,file,redis")
    parser.add_argument("--old-src", type=Path, help="the old tree's src/ (adds the 'redis-old' variant)")
    parser.add_argument(
        "--src",
        type=Path,
        default=ROOT / "src",
        help="the new tree's src/ (a copy: edits during a run stay out)",
    )
    parser.add_argument("--hits", action="store_true", help="also the shared-hit latency bench")
    parser.add_argument("--rate", type=float, default=10000.0)
    parser.add_argument("--hit-processes", default="4", help="N[,N...]: one hit run per count")
    parser.add_argument(
        "--max-running",
        type=int,
        default=None,
        help="at most this many task processes at once (an Airflow worker's parallelism; default: all)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="credpath-bench-redis-"))
    cases = [tuple(int(x) for x in c.split("x")) for c in args.cases.split(",")]
    max_k = max(k for _, k in cases)
    secrets = {
        f"airflow/connections/bench_{i}": f"postgres://u:pw{i}@db.example:5432/d" for i in range(max_k)
    }
    report: dict[str, Any] = {"load_before": os.getloadavg(), "max_running": args.max_running, "cases": {}}
    with _procs.servers(work, secrets) as up:
        redis, proxy = up.redis, up.proxy
        variants = args.variants.split(",")
        variants += ["redis-old"] if args.old_src and "redis-old" not in variants else []
        for n, k in cases:
            ids = [f"bench_{i}" for i in range(k)]
            rows: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for round_ in range(args.rounds):
                for variant in variants:
                    redis.flush()
                    tier = variant.removesuffix("-old")
                    shared = {
                        "none": None,
                        "file": f"file:{work / f'tier-{variant}-{n}x{k}-{round_}.db'}",
                        "redis": redis.url,
                    }[tier]
                    src = args.old_src if variant.endswith("-old") else args.src
                    config = aws_config(work / f"{variant}-{n}x{k}.toml", proxy.url, shared)
                    before = proxy.requests
                    server_cpu = _server_cpu_s(redis)
                    row = run_case(config, ids, n, src, work / f"home-{variant}", args.max_running)
                    row["store_requests"] = proxy.requests - before
                    row["redis_server_cpu_ms"] = (_server_cpu_s(redis) - server_cpu) * 1000
                    row["load"] = os.getloadavg()[0]
                    rows[variant].append(row)
                    print(f"{n}x{k} {variant} round {round_ + 1}: {json.dumps(row)}", flush=True)
            report["cases"][f"{n}x{k}"] = rows
        if args.hits:
            for processes in [int(p) for p in str(args.hit_processes).split(",")]:
                redis.flush()
                hits = hit_latency(redis.url, args.rate, 5.0, processes)
                report.setdefault("hits", []).append(hits)
                print("shared hits:", json.dumps(hits), flush=True)
    report["load_after"] = os.getloadavg()
    print(
        "\n| N x k | variant | store requests | makespan s | CPU ms/process (median) | CPU s, all processes"
        " | processes with a store client | redis-server CPU s | RTT/lookup |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for case, rows in report["cases"].items():
        for variant, runs in rows.items():
            spans = ", ".join(f"{r['makespan_s']:.1f}" for r in runs)
            cpu = statistics.median(r["cpu_ms_median"] for r in runs)
            requests = max(r["store_requests"] for r in runs)
            trips = runs[0]["round_trips_per_lookup"]
            trips_text = f"{trips:.2f}" if trips is not None else "-"
            total = ", ".join(f"{r['cpu_ms_total'] / 1000:.1f}" for r in runs)
            clients = ", ".join(str(r["processes_with_store_client"]) for r in runs)
            server = ", ".join(f"{r['redis_server_cpu_ms'] / 1000:.2f}" for r in runs)
            print(
                f"| {case} | {variant} | {requests} | {spans} | {cpu:.0f} | {total} | {clients} | {server}"
                f" | {trips_text} |"
            )
    print(f"load average before/after: {report['load_before']} / {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
