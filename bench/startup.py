"""Start-up of the embedded default, side by side with Airflow: ``connections get`` for a hit and a miss.

credpath runs on the README's set-up (environment variables + the SQLite metastore in a fresh
``CREDPATH_HOME``); Airflow 3.3.2 on its own SQLite metadata database (``airflow db migrate``) holding the
same connection. Each command runs ``--runs`` times after ``--warmup`` runs; the table shows the median and
the minimum wall time, the median CPU time (user + system) and the peak RSS of the child (``wait4``).

    PYTHONPATH=$PWD/src python bench/startup.py [--runs 15] [--airflow /path/to/venv/bin/airflow]

Airflow defaults to the test tier's virtualenv (``.cache/airflow-venv``, built by ``scripts/test``); without
it only credpath is measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

URI = "postgres://app:change-me@db.example.com:5432/analytics?sslmode=require"
REPO = Path(__file__).resolve().parents[1]


def _default_airflow() -> str | None:
    for candidate in (
        os.environ.get("AIRFLOW_BIN"),
        str(REPO / ".cache/airflow-venv/bin/airflow"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _credpath_command() -> list[str]:
    script = Path(sys.executable).with_name("credpath")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "credpath"]


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, int]:
    """(wall s, cpu s, peak RSS KiB, exit code) of one run, measured on that child alone."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, proc.returncode


def measure(argv: list[str], env: dict[str, str], runs: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        run_once(argv, env)
    samples = [run_once(argv, env) for _ in range(runs)]
    codes = sorted({s[3] for s in samples})
    return {
        "median": statistics.median(s[0] for s in samples),
        "min": min(s[0] for s in samples),
        "cpu": statistics.median(s[1] for s in samples),
        "rss_mb": max(s[2] for s in samples) / 1024,
        "exit": codes[0] if len(codes) == 1 else -1,
    }


def setup_credpath(root: Path) -> dict[str, str]:
    env = {**os.environ, "CREDPATH_HOME": str(root / "credpath-home")}
    # As after `pip install .` (which compiles bytecode): without .pyc files every run recompiles
    # credpath's modules (~35 ms here); the warm-up runs write them.
    for name in (
        "PYTHONDONTWRITEBYTECODE",
        "CREDPATH_CONFIG",
        "CREDPATH_METASTORE_URL",
        "CREDPATH_FERNET_KEY",
        "AIRFLOW__SECRETS__BACKEND",
    ):
        env.pop(name, None)
    subprocess.run(
        [*_credpath_command(), "connections", "add", "my_db", "--overwrite", "--uri", URI],
        env=env,
        check=True,
        capture_output=True,
    )
    return env


def setup_airflow(airflow: str, root: Path) -> dict[str, str]:
    home = root / "airflow-home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "CREDPATH", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        PATH=f"{Path(airflow).parent}:{os.environ.get('PATH', '')}",
    )
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [airflow, "connections", "add", "my_db", "--conn-uri", URI], env=env, check=True, capture_output=True
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--airflow", default=_default_airflow(), help="the airflow executable (3.3.2)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="credpath-startup-"))
    try:
        rows: list[tuple[str, str, dict[str, float]]] = []
        credpath_env = setup_credpath(root)
        airflow_env = setup_airflow(args.airflow, root) if args.airflow else None
        for case, conn_id in (("hit", "my_db"), ("miss", "no_such_db")):
            rows.append(
                (
                    f"`credpath connections get {conn_id}`",
                    case,
                    measure(
                        [*_credpath_command(), "connections", "get", conn_id],
                        credpath_env,
                        args.runs,
                        args.warmup,
                    ),
                )
            )
            if airflow_env is not None:
                rows.append(
                    (
                        f"`airflow connections get {conn_id} -o json`",
                        case,
                        measure(
                            [args.airflow, "connections", "get", conn_id, "-o", "json"],
                            airflow_env,
                            args.runs,
                            args.warmup,
                        ),
                    )
                )
        print(
            f"{args.runs} runs each after {args.warmup} warm-up runs; {os.cpu_count()} CPUs; "
            f"load average {os.getloadavg()[0]:.2f}\n"
        )
        print(
            "| command | case | median wall | min wall | median CPU | peak RSS | exit "
            "| airflow / credpath (median) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for command, case, result in rows:
            airflow = next((r for c, k, r in rows if k == case and c.startswith("`airflow")), None)
            ratio = ""
            if command.startswith("`credpath") and airflow is not None:
                ratio = f"{airflow['median'] / result['median']:.1f}x"
            print(
                f"| {command} | {case} | {result['median'] * 1000:.0f} ms | {result['min'] * 1000:.0f} ms "
                f"| {result['cpu'] * 1000:.0f} ms | {result['rss_mb']:.1f} MB | {int(result['exit'])} "
                f"| {ratio} |"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
