"""Many nodes: store reads for the whole deployment, Redis operations per lookup, makespan.

Simulates ``--nodes`` nodes (each its own CREDPATH_HOME) reading ``--ids`` connections from moto's Secrets
Manager behind a loopback proxy that counts every request. Task processes start in ``--waves`` waves, each
wave ``--per-wave`` processes per node started together (Airflow workers picking up a DAG run), a wave every
``--wave-gap`` seconds. Variants:

- ``file``: a file tier per node (each node reads each id once: store reads per id = nodes);
- ``redis``: one Redis for the deployment (goal: one store read per distinct id per TTL);
- ``redis+prefetch``: each node first runs a start-up prefetch of the ids, every node at the same moment;
- ``redis+prefetch+jitter``: the same, each node's prefetch delayed by a random 0..``--jitter`` s (as the
  AWS Workload Credentials Provider jitters its start-up refresh), so a fleet that starts together does not
  hit the store in step: the first prefetch fills Redis, the later ones find the ids there.

Redis operations come from the server's own counter (INFO total_commands_processed, less the bench's own).

    python bench/fleet.py [--nodes 10 --waves 3 --per-wave 10 --ids 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _procs
from _procs import ROOT, aws_config, task_env

TASK = r"""
import json, sys, time
delay = float(sys.argv[3])
if delay:
    time.sleep(delay)
from credpath._search_path import SearchPath
path = SearchPath.from_config(sys.argv[1])
ids = sys.argv[2].split(",")
if sys.argv[4] == "prefetch":
    path.prefetch(connections=ids)
else:
    for conn_id in ids:
        path.get_connection(conn_id)
path.close()
print(json.dumps({"ok": True}))
"""


def redis_commands(redis: Any) -> int:
    return int(redis.client().info("stats")["total_commands_processed"])


def run_variant(
    variant: str, args: Any, work: Path, proxy: Any, redis: Any, ids: list[str]
) -> dict[str, Any]:
    redis.flush()
    run = work / f"{variant}-{time.monotonic_ns()}"
    configs = []
    for node in range(args.nodes):
        home = run / f"node-{node}"
        shared = f"file:{home / 'cache' / 'shared.db'}" if variant == "file" else redis.url
        configs.append((home, aws_config(home / "credpath.toml", proxy.url, shared)))
    id_list = ",".join(ids)
    launches: list[_procs.Launch] = []

    def launch(home: Path, config: Path, at: float, delay: float, mode: str) -> None:
        argv = [sys.executable, "-c", TASK, str(config), id_list, f"{delay:.3f}", mode]
        launches.append(_procs.Launch(argv, task_env(ROOT / "src", CREDPATH_HOME=str(home)), at))

    requests_before, targets_before = proxy.requests, len(proxy.targets)
    commands_before = redis_commands(redis)
    prefetch = "prefetch" in variant
    if prefetch:
        rng = random.Random(7)
        for home, config in configs:
            launch(home, config, 0.0, rng.uniform(0, args.jitter) if "jitter" in variant else 0.0, "prefetch")
    first_wave = args.jitter if prefetch else 0.0  # tasks come after the start-up window
    for wave in range(args.waves):
        for home, config in configs:
            for _ in range(args.per_wave):
                launch(home, config, first_wave + wave * args.wave_gap, 0.0, "tasks")
    outcome = _procs.run(launches)
    failed, makespan = outcome.failed, outcome.makespan_s
    commands = redis_commands(redis) - commands_before - 1  # our own INFO
    targets = proxy.targets[targets_before:]
    tasks = args.nodes * args.waves * args.per_wave
    lookups = tasks * len(ids) + (args.nodes * len(ids) if prefetch else 0)
    return {
        "store_requests": proxy.requests - requests_before,
        "single_reads": sum(t.endswith("GetSecretValue") and "Batch" not in t for t in targets),
        "batch_reads": sum("BatchGetSecretValue" in t for t in targets),
        "store_requests_per_id": (proxy.requests - requests_before) / len(ids),
        "redis_ops_per_lookup": None if variant == "file" else commands / lookups,
        "makespan_s": makespan,
        "task_processes": tasks,
        "failed_processes": failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--per-wave", type=int, default=10, help="task processes per node per wave")
    parser.add_argument("--wave-gap", type=float, default=2.0)
    parser.add_argument("--ids", type=int, default=20)
    parser.add_argument("--jitter", type=float, default=3.0, help="start-up prefetch jitter, seconds")
    parser.add_argument("--variants", default="file,redis,redis+prefetch,redis+prefetch+jitter")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="credpath-bench-fleet-"))
    report: dict[str, Any] = {"args": vars(args) | {"json": None}, "load_before": os.getloadavg()}
    ids = [f"fleet_{i}" for i in range(args.ids)]
    secrets = {f"airflow/connections/{i}": "postgres://u:pw@db.example:5432/d" for i in ids}
    with _procs.servers(work, secrets) as up:
        report["variants"] = {}
        for variant in args.variants.split(","):
            row = run_variant(variant, args, work, up.proxy, up.redis, ids)
            report["variants"][variant] = row
            print(variant, json.dumps(row), flush=True)
    report["load_after"] = os.getloadavg()
    print(
        f"\n{args.nodes} nodes x {args.waves} waves x {args.per_wave} processes per node "
        f"({args.nodes * args.waves * args.per_wave} task processes), {args.ids} ids each\n"
    )
    print("| variant | store requests | per distinct id | Redis ops/lookup | makespan s |")
    print("|---|---|---|---|---|")
    for variant, row in report["variants"].items():
        ops = row["redis_ops_per_lookup"]
        print(
            f"| {variant} | {row['store_requests']}"
            f" ({row['single_reads']} single, {row['batch_reads']} batch)"
            f" | {row['store_requests_per_id']:.2f} | {'-' if ops is None else f'{ops:.2f}'}"
            f" | {row['makespan_s']:.1f} |"
        )
    print(f"load average before/after: {report['load_before']} / {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
