"""Store calls per Airflow DAG run with and without a shared cache tier (issue 14's table), side by side.

Runs the real-Airflow tier's DAG-run test (tests/test_airflow.py::
test_dag_run_store_calls_airflow_vs_credpath_vs_shared_tiers) and formats its figures: Apache Airflow 3.3.2
(the tier's virtualenv), LocalExecutor through ``airflow dags test --use-executor`` (a supervisor and a task
process per task) and the execution API server; OpenBao (KV v2, token auth) behind a loopback proxy that
counts every request; a redis-server. A DAG of 10 tasks, each reading 3 connections, once per variant:

- ``airflow``: the hashicorp provider's VaultBackend as [secrets] backend and [workers] secrets_backend;
- ``credpath``: CredpathBackend, no shared tier;
- ``credpath+file`` / ``credpath+redis``: CredpathBackend with ``[cache] shared`` (the file tier keyed with
  Airflow's [core] fernet_key).

"secrets ms/task" is timed inside each task around its 3 ``BaseHook.get_connection`` calls (it includes
building the secrets backend in the task process); "CPU ms/task" is the task process's CPU time over the
same calls (less sensitive than wall time to a busy machine); "supervisor msgs/task" counts the messages the
task sent its supervisor meanwhile (each masker registration is one round trip). "calls/hour"
extrapolates to 300 DAG runs x 10 tasks an hour, each run starting cold (entries expired between runs: the
worst case for a cache).

With ``--rounds N`` each variant runs N times, interleaved (airflow, credpath, file, redis, airflow, ...),
so load that changes during the run weighs on every variant alike; requests are the most any run of a
variant made, times are pooled over its runs.

    python bench/shared_cache.py [--rounds N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_airflow.py::test_dag_run_store_calls_airflow_vs_credpath_vs_shared_tiers"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every variant this many times, interleaved (default 1)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="credpath-bench-shared-"))
    out = work / "figures.json"
    env = {
        **os.environ,
        "CREDPATH_BENCH_SHARED_OUT": str(out),
        "CREDPATH_BENCH_SHARED_ROUNDS": str(args.rounds),
        "PYTHONPATH": str(ROOT / "src"),
    }
    # Its own --basetemp: pytest prunes all but the newest three default ones, so other pytest sessions on
    # the machine would otherwise delete the Airflow home of a run still going.
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={work / 'pytest'}",
        "-m", "airflow", TEST,
    ]  # fmt: skip
    load_before = os.getloadavg()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if not out.exists():
        print(result.stdout[-3000:], file=sys.stderr)
        return 1
    failed = result.returncode != 0  # figures are written before the test's assertions: show them anyway
    load_after = os.getloadavg()
    figures = json.loads(out.read_text())
    rows = {}
    for name, calls in figures["calls"].items():
        times = figures["task_ms"][name]
        ops = figures["ops"][name]
        cpu = [task["cpu_ms"] for task in ops]
        rows[name] = {
            "cpu_ms_per_task_median": statistics.median(cpu),
            "supervisor_messages_per_task": sum(len(t["supervisor_messages"]) for t in ops) / len(ops),
            "threads_started_per_task": sum(t["threads_started"] for t in ops) / len(ops),
            "store_calls_per_dag_run": calls,
            "kv_reads_per_dag_run": figures["reads"][name],
            "secrets_ms_per_task_median": statistics.median(times),
            "secrets_ms_per_task_max": max(times),
            "calls_per_hour_300_dags_x_10_tasks": calls * 300,
        }
    print(
        "| per DAG run (10 tasks x 3 connections) | store requests | KV reads | secrets ms/task (median, max)"
        " | CPU ms/task (median) | supervisor msgs/task | requests/hour, 300 DAGs x 10 tasks |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['store_calls_per_dag_run']} | {row['kv_reads_per_dag_run']} | "
            f"{row['secrets_ms_per_task_median']:.0f}, {row['secrets_ms_per_task_max']:.0f} | "
            f"{row['cpu_ms_per_task_median']:.0f} | {row['supervisor_messages_per_task']:g} | "
            f"{row['calls_per_hour_300_dags_x_10_tasks']:,} |"
        )
    loads = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load_before, load_after, strict=True))
    print(f"\nload average (1, 5, 15 min) before/after: {loads}")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "load_before": load_before, "load_after": load_after}, indent=2)
        )
    if failed:
        failures = [line for line in result.stdout.splitlines() if line.startswith("E ")][:5]
        print("the test's assertions failed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
