"""Store calls per Airflow DAG run with and without a shared cache tier, side by side.

Runs the real-Airflow tier's DAG-run tests and formats their figures: Apache Airflow 3.3.2 (the tier's
virtualenv), LocalExecutor through ``airflow dags test --use-executor`` (a supervisor and a task process per
task) and the execution API server. A DAG of 10 tasks, each reading 3 connections, once per variant.

``--store vault`` (tests/test_airflow.py::test_dag_run_store_calls_airflow_vs_credpath_vs_shared_tiers):
OpenBao (KV v2, token auth) behind a loopback proxy that counts every request; a redis-server.

- ``airflow``: the hashicorp provider's VaultBackend as [secrets] backend and [workers] secrets_backend;
- ``credpath``: CredpathBackend, no shared tier;
- ``credpath+file`` / ``credpath+redis``: CredpathBackend with ``[cache] shared`` (the file tier keyed with
  Airflow's [core] fernet_key).

``--store aws`` (tests/test_airflow.py::test_dag_run_store_calls_aws_airflow_vs_credpath): moto's Secrets
Manager behind the same counting proxy, credentials from the environment.

- ``airflow``: the amazon provider's SecretsManagerBackend as [secrets] backend and [workers] secrets_backend;
- ``credpath``: CredpathBackend with one aws-secrets-manager backend given the same kwargs, no shared tier.

"secrets ms/task" is timed inside each task around its 3 ``BaseHook.get_connection`` calls (it includes
building the secrets backend in the task process); "CPU ms/task" is the task process's CPU time over the
same calls (less sensitive than wall time to a busy machine); "supervisor msgs/task" counts the messages the
task sent its supervisor meanwhile (each masker registration is one round trip). "calls/hour"
extrapolates to 300 DAG runs x 10 tasks an hour, each run starting cold (entries expired between runs: the
worst case for a cache).

With ``--rounds N`` each variant runs N times, interleaved (airflow, credpath, file, redis, airflow, ...),
so load that changes during the run weighs on every variant alike; requests are the most any run of a
variant made, times are pooled over its runs.

With ``--rounds N`` a second table gives each round's medians per variant: the first round of a
fresh checkout is the one whose task processes may compile credpath's modules (an editable install writes no
``.pyc`` at install time; a wheel install does).

With ``--sequential`` Airflow runs one task at a time, so a task's secrets time is its own work rather than
its share of ten task processes starting at once on the machine.

    python bench/shared_cache.py [--store vault|aws|all] [--rounds N] [--sequential] [--json out.json]
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = {
    "vault": "tests/test_airflow.py::test_dag_run_store_calls_airflow_vs_credpath_vs_shared_tiers",
    "aws": "tests/test_airflow.py::test_dag_run_store_calls_aws_airflow_vs_credpath",
}
# Where each test writes its figures (the environment variable it reads the path from).
OUT_VARS = {"vault": "CREDPATH_BENCH_SHARED_OUT", "aws": "CREDPATH_BENCH_SHARED_AWS_OUT"}
TITLES = {
    "vault": "Vault (OpenBao), 10 tasks x 3 connections",
    "aws": "AWS Secrets Manager (moto), 10 tasks x 3 connections",
}


def rows_of(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {}
    for name, calls in figures["calls"].items():
        times = figures["task_ms"][name]
        ops = figures["ops"][name]
        cpu = [task["cpu_ms"] for task in ops]
        row: dict[str, Any] = {
            "cpu_ms_per_task_median": statistics.median(cpu),
            "supervisor_messages_per_task": sum(len(t["supervisor_messages"]) for t in ops) / len(ops),
            "threads_started_per_task": sum(t["threads_started"] for t in ops) / len(ops),
            "store_calls_per_dag_run": calls,
            "secrets_ms_per_task_median": statistics.median(times),
            "secrets_ms_per_task_max": max(times),
            "calls_per_hour_300_dags_x_10_tasks": calls * 300,
            "tasks": len(times),
        }
        if "reads" in figures:
            row["kv_reads_per_dag_run"] = figures["reads"][name]
        rows[name] = row
    return rows


def round_rows(figures: dict[str, Any], rounds: int) -> dict[str, list[dict[str, float]]]:
    """Per variant, per round: the median secrets ms and CPU ms per task (tasks are listed round by round)."""
    rows: dict[str, list[dict[str, float]]] = {}
    for name, times in figures["task_ms"].items():
        per = len(times) // rounds
        cpu = [task["cpu_ms"] for task in figures["ops"][name]]
        rows[name] = [
            {
                "secrets_ms_median": statistics.median(times[r * per : (r + 1) * per]),
                "cpu_ms_median": statistics.median(cpu[r * per : (r + 1) * per]),
            }
            for r in range(rounds)
        ]
    return rows


def print_rounds(rows: dict[str, list[dict[str, float]]]) -> None:
    rounds = len(next(iter(rows.values())))
    print("\nPer round: secrets ms/task median / CPU ms/task median\n")
    print("| variant | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " |")
    print("|---|" + "---|" * rounds)
    for name, per in rows.items():
        cells = " | ".join(f"{r['secrets_ms_median']:.0f} / {r['cpu_ms_median']:.0f}" for r in per)
        print(f"| {name} | {cells} |")


def print_table(store: str, rows: dict[str, dict[str, Any]]) -> None:
    reads = store == "vault"
    print(f"\n{TITLES[store]}\n")
    print(
        "| per DAG run | store requests |"
        + (" KV reads |" if reads else "")
        + " secrets ms/task (median, max) | CPU ms/task (median) | supervisor msgs/task"
        " | requests/hour, 300 DAGs x 10 tasks |"
    )
    print("|---|---|" + ("---|" if reads else "") + "---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['store_calls_per_dag_run']} | "
            + (f"{row['kv_reads_per_dag_run']} | " if reads else "")
            + f"{row['secrets_ms_per_task_median']:.0f}, {row['secrets_ms_per_task_max']:.0f} | "
            f"{row['cpu_ms_per_task_median']:.0f} | {row['supervisor_messages_per_task']:g} | "
            f"{row['calls_per_hour_300_dags_x_10_tasks']:,} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every variant this many times, interleaved (default 1)"
    )
    parser.add_argument(
        "--store", choices=("vault", "aws", "all"), default="all", help="which store's table (default all)"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="run one task at a time (Airflow's parallelism 1): each task's secrets time is then its own "
        "work, not its share of ten task processes starting at once",
    )
    args = parser.parse_args()
    stores = list(TESTS) if args.store == "all" else [args.store]
    work = Path(tempfile.mkdtemp(prefix="credpath-bench-shared-"))
    outs = {store: work / f"figures-{store}.json" for store in stores}
    env = {
        **os.environ,
        **{OUT_VARS[store]: str(path) for store, path in outs.items()},
        "CREDPATH_BENCH_SHARED_ROUNDS": str(args.rounds),
        **({"CREDPATH_BENCH_SHARED_PARALLELISM": "1"} if args.sequential else {}),
        "PYTHONPATH": str(ROOT / "src"),
    }
    # Its own --basetemp: pytest prunes all but the newest three default ones, so other pytest sessions on
    # the machine would otherwise delete the Airflow home of a run still going.
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={work / 'pytest'}",
        "-m", "airflow", *(TESTS[store] for store in stores),
    ]  # fmt: skip
    load_before = os.getloadavg()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if not any(path.exists() for path in outs.values()):
        print(result.stdout[-3000:], file=sys.stderr)
        return 1
    failed = result.returncode != 0  # figures are written before the tests' assertions: show them anyway
    load_after = os.getloadavg()
    report: dict[str, Any] = {
        "rounds": args.rounds,
        "sequential": args.sequential,
        "load_before": load_before,
        "load_after": load_after,
    }
    for store, path in outs.items():
        if not path.exists():
            print(f"\n{TITLES[store]}: no figures (the test failed before writing them)", file=sys.stderr)
            failed = True
            continue
        figures = json.loads(path.read_text())
        rows = rows_of(figures)
        report[store] = {"rows": rows}
        print_table(store, rows)
        if args.rounds > 1:
            report[store]["rounds"] = round_rows(figures, args.rounds)
            print_rounds(report[store]["rounds"])
    loads = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load_before, load_after, strict=True))
    mode = "; one task at a time" if args.sequential else ""
    print(f"\nrounds: {args.rounds}{mode}; load average (1, 5, 15 min) before/after: {loads}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if failed:
        failures = [line for line in result.stdout.splitlines() if line.startswith("E ")][:5]
        print("the tests' assertions failed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
