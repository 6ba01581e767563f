"""The core figures of bench/run.py, bench/startup.py and bench/shared_cache.py for two trees, side by side.

    .venv/bin/python bench/before_after.py --before /path/to/old/checkout [--before /another/one]
        [--rounds 2] [--n 1000] [--startup-runs 10] [--skip run] [--shared --before-airflow-venv PATH]

"before" is another checkout of credpath (its ``src/`` and ``bench/``), "after" is this tree; a second
``--before`` adds a third tree ("before2"), measured in the same interleaved runs (not with ``--shared``).
Each measurement runs for every tree in turn, interleaved (before, after, after, before, ...), so load that
changes during the run weighs on both alike; each figure is the median over the rounds. Every job runs in a
fresh interpreter of this virtualenv with ``PYTHONPATH=<tree>/src`` (the same boto3, hvac and Python for
both); the load average is printed beside each section.

- run.py's credpath side: each tree's own ``bench/worker.py`` jobs against one moto and one OpenBao server
  on loopback seeded with ``--n`` connections (the Airflow side is left out: it does not depend on the tree).
- startup.py: ``python -m credpath connections get my_db`` (hit) and ``no_such_db`` (miss) on the embedded
  default, each tree in its own fresh ``CREDPATH_HOME``, the two trees alternating run by run.
- shared_cache.py (``--shared``): each tree's own ``bench/shared_cache.py --store vault`` (a real Airflow
  3.3.2 DAG run per variant). It needs an Airflow virtualenv per tree with that tree's credpath installed:
  this tree's is ``.cache/airflow-venv`` (built by ``scripts/test``), the other's ``--before-airflow-venv``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402
import startup as bench_startup  # noqa: E402

Figures = dict[str, float]


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def tree_env(tree: Path, base: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("CREDPATH_", "AIRFLOW"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = str(tree / "src")
    return env


def commit_of(tree: Path) -> str:
    """The tree's commit (abbreviated; "+" when it has uncommitted changes to src/), for the report."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True).stdout.strip()

    dirty = "+" if git("status", "--porcelain", "--", "src") else ""
    return (git("rev-parse", "--short", "HEAD") or "?") + dirty


def check_tree(tree: Path, env: dict[str, str]) -> None:
    """Fail early when the interpreter would not import credpath from ``tree``."""
    out = subprocess.run(
        [sys.executable, "-c", "import credpath, sys; sys.stdout.write(credpath.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if not Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"credpath imports from {out}, not from {tree}")


def interleave(rounds: int, sides: list[str], one: Callable[[str], Figures]) -> dict[str, list[Figures]]:
    """Run ``one(side)`` ``rounds`` times per side, the order reversed every other round."""
    runs: dict[str, list[Figures]] = {side: [] for side in sides}
    for number in range(rounds):
        for side in sides if number % 2 == 0 else list(reversed(sides)):
            runs[side].append(one(side))
    return runs


def medians(runs: list[Figures]) -> Figures:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


# --- bench/run.py, credpath side -------------------------------------------------------------------


def run_py(trees: dict[str, Path], rounds: int, n: int, misses: int) -> tuple[dict[str, Figures], str]:
    with tempfile.TemporaryDirectory(prefix="credpath-before-after-") as tmp_name:
        tmp = Path(tmp_name)
        servers = bench_run.Servers(tmp)
        servers.start()
        try:
            bench_run.log(f"seeding {n} connections in moto and OpenBao")
            ids = bench_run.seed(servers, n)
            miss_ids = [f"missing_{i:05d}" for i in range(misses)]
            configs = {}
            for name, type_name, kwargs in (
                ("aws", "aws-secrets-manager", {"endpoint_url": servers.moto_url}),
                (
                    "vault",
                    "vault",
                    {"url": servers.vault_url, "token": bench_run.VAULT_TOKEN, "mount_point": "secret",
                     "kv_engine_version": 2},
                ),
            ):  # fmt: skip
                path = tmp / f"credpath-{name}.toml"
                path.write_text(
                    f'[[backends]]\ntype = "{type_name}"\nkwargs = {bench_run._toml_inline(kwargs)}\n\n'
                    '[[backends]]\ntype = "env"\n\n[[backends]]\ntype = "metastore"\n'
                )
                configs[name] = str(path)
            envs = {}
            for side, tree in trees.items():
                env = tree_env(tree, dict(os.environ))
                env.update(
                    AWS_ACCESS_KEY_ID="testing",
                    AWS_SECRET_ACCESS_KEY="testing",
                    AWS_DEFAULT_REGION="us-east-1",
                    AWS_ENDPOINT_URL=servers.moto_url,
                    AWS_EC2_METADATA_DISABLED="true",
                    CREDPATH_HOME=str(tmp / f"credpath-home-{side}"),
                )
                check_tree(tree, env)
                envs[side] = env

            def job(side: str, name: str, **spec: Any) -> dict[str, Any]:
                spec["job"] = name
                result = subprocess.run(
                    [sys.executable, str(trees[side] / "bench" / "worker.py"), json.dumps(spec)],
                    env=envs[side],
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                if result.returncode != 0:
                    tail = result.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
                    raise RuntimeError(f"{side}: job {name} failed: {tail[0][:300]}")
                answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
                return answer

            def one(side: str) -> Figures:
                bench_run.log(f"run.py jobs, {side}")
                figures: Figures = {}
                for store in ("aws", "vault"):
                    plain = job(side, "credpath_resolve", ids=ids, config=configs[store])
                    batched = job(side, "credpath_resolve", ids=ids, config=configs[store], prefetch=True)
                    figures[f"{store} total s"] = plain["cold"]["total_s"]
                    figures[f"{store} prefetch total s"] = batched["cold"]["total_s"]
                    figures[f"{store} median ms"] = plain["cold"]["median_ms"]
                    figures[f"{store} p99 ms"] = plain["cold"]["p99_ms"]
                    figures[f"{store} requests"] = plain["cold_calls"]
                    figures[f"{store} prefetch requests"] = batched["cold_calls"]
                    figures[f"{store} again s"] = plain["warm"]["total_s"]
                cache = job(side, "credpath_cache", ids=ids, config=configs["aws"])
                figures["cached hit us"] = cache["hit"]["median_ms"] * 1000
                miss = job(side, "credpath_miss", ids=miss_ids, config=configs["aws"])
                figures["miss median ms"] = miss["miss"]["median_ms"]
                figures["miss requests"] = miss["calls_per_miss"]
                figures["repeat miss us"] = miss["repeat_miss"]["median_ms"] * 1000
                masker = job(side, "credpath_masker", counts=[1000, 10000])
                for point in masker["curve"]:
                    figures[f"masker {point['secrets']} s"] = point["elapsed_s"]
                return figures

            load = loadavg()
            runs = interleave(rounds, list(trees), one)
            load = f"{load} -> {loadavg()}"
        finally:
            servers.stop()
    return {side: medians(r) for side, r in runs.items()}, load


RUN_ROWS = [
    ("aws total s", "AWS (moto): resolve N distinct connections, total", "s", 2),
    ("aws prefetch total s", "AWS (moto): same with prefetch (batched)", "s", 2),
    ("aws median ms", "AWS (moto): median per connection", "ms", 2),
    ("aws p99 ms", "AWS (moto): p99 per connection", "ms", 2),
    ("aws requests", "AWS (moto): HTTP requests for N connections", "", 0),
    ("aws prefetch requests", "AWS (moto): same with prefetch", "", 0),
    ("aws again s", "AWS (moto): the same N again", "s", 4),
    ("vault total s", "Vault (OpenBao): resolve N distinct connections, total", "s", 2),
    ("vault prefetch total s", "Vault (OpenBao): same with prefetch", "s", 2),
    ("vault median ms", "Vault (OpenBao): median per connection", "ms", 2),
    ("vault p99 ms", "Vault (OpenBao): p99 per connection", "ms", 2),
    ("vault requests", "Vault (OpenBao): HTTP requests for N connections", "", 0),
    ("vault prefetch requests", "Vault (OpenBao): same with prefetch", "", 0),
    ("vault again s", "Vault (OpenBao): the same N again", "s", 4),
    ("cached hit us", "cached hit", "µs", 2),
    ("miss median ms", "miss through the chain (AWS, env, metastore), median", "ms", 2),
    ("miss requests", "requests per miss", "", 1),
    ("repeat miss us", "the same miss again (negative cache), median", "µs", 2),
    ("masker 1000 s", "masker: 1,000 secrets, one redacted line after each", "s", 3),
    ("masker 10000 s", "masker: 10,000 secrets", "s", 3),
]


# --- bench/startup.py ------------------------------------------------------------------------------


def startup(trees: dict[str, Path], runs: int, warmup: int) -> tuple[dict[str, Figures], str]:
    command = [sys.executable, "-m", "credpath", "connections"]
    with tempfile.TemporaryDirectory(prefix="credpath-before-after-startup-") as tmp_name:
        envs = {}
        for side, tree in trees.items():
            env = tree_env(tree, dict(os.environ))
            env["CREDPATH_HOME"] = str(Path(tmp_name) / side)
            check_tree(tree, env)
            subprocess.run(
                [*command, "add", "my_db", "--overwrite", "--uri", bench_startup.URI],
                env=env,
                check=True,
                capture_output=True,
            )
            envs[side] = env
        load = loadavg()
        samples: dict[tuple[str, str], list[tuple[float, float, int, int]]] = {}
        for case, conn_id in (("hit", "my_db"), ("miss", "no_such_db")):
            for side in trees:  # the warm-up runs also write the .pyc files, as `pip install` would
                for _ in range(warmup):
                    bench_startup.run_once([*command, "get", conn_id], envs[side])
            for number in range(runs):
                for side in trees if number % 2 == 0 else list(reversed(trees)):
                    sample = bench_startup.run_once([*command, "get", conn_id], envs[side])
                    samples.setdefault((side, case), []).append(sample)
        load = f"{load} -> {loadavg()}"
    out: dict[str, Figures] = {side: {} for side in trees}
    for (side, case), found in samples.items():
        out[side][f"{case} median ms"] = statistics.median(s[0] for s in found) * 1000
        out[side][f"{case} min ms"] = min(s[0] for s in found) * 1000
        out[side][f"{case} cpu ms"] = statistics.median(s[1] for s in found) * 1000
        out[side][f"{case} rss MB"] = max(s[2] for s in found) / 1024
        out[side][f"{case} exit"] = max(s[3] for s in found)
    return out, load


STARTUP_ROWS = [
    (f"{case} {key}", f"`connections get {conn}`: {label}", unit, digits)
    for case, conn in (("hit", "my_db"), ("miss", "no_such_db"))
    for key, label, unit, digits in (
        ("median ms", "median wall", "ms", 0),
        ("min ms", "min wall", "ms", 0),
        ("cpu ms", "median CPU", "ms", 0),
        ("rss MB", "peak RSS", "MB", 1),
        ("exit", "exit code", "", 0),
    )
]


# --- bench/shared_cache.py -------------------------------------------------------------------------


def shared(trees: dict[str, Path], venvs: dict[str, Path], rounds: int) -> tuple[dict[str, Figures], str]:
    def one(side: str) -> Figures:
        bench_run.log(f"shared_cache.py --store vault, {side}")
        with tempfile.TemporaryDirectory(prefix="credpath-before-after-shared-") as tmp_name:
            out = Path(tmp_name) / "figures.json"
            env = {k: v for k, v in os.environ.items() if not k.startswith("CREDPATH_")}
            env["CREDPATH_AIRFLOW_VENV"] = str(venvs[side])
            result = subprocess.run(
                [sys.executable, str(trees[side] / "bench" / "shared_cache.py"), "--store", "vault",
                 "--json", str(out)],
                cwd=trees[side],
                env=env,
                capture_output=True,
                text=True,
            )  # fmt: skip
            if not out.exists():
                raise RuntimeError(f"{side}: shared_cache.py failed: {result.stderr[-500:]}")
            rows = json.loads(out.read_text())["vault"]["rows"]
        figures: Figures = {}
        for variant, row in rows.items():
            figures[f"{variant} requests"] = row["store_calls_per_dag_run"]
            figures[f"{variant} reads"] = row["kv_reads_per_dag_run"]
            figures[f"{variant} secrets ms"] = row["secrets_ms_per_task_median"]
            figures[f"{variant} cpu ms"] = row["cpu_ms_per_task_median"]
        return figures

    load = loadavg()
    runs = interleave(rounds, list(trees), one)
    return {side: medians(r) for side, r in runs.items()}, f"{load} -> {loadavg()}"


def shared_rows(figures: Figures) -> list[tuple[str, str, str, int]]:
    rows = []
    for key in figures:
        variant, _, what = key.partition(" ")
        label, unit, digits = {
            "requests": ("store requests per DAG run", "", 0),
            "reads": ("KV reads per DAG run", "", 0),
            "secrets ms": ("secrets ms per task, median", "ms", 0),
            "cpu ms": ("task CPU ms over its reads, median", "ms", 0),
        }[what]
        rows.append((key, f"{variant}: {label}", unit, digits))
    return rows


# --- output ----------------------------------------------------------------------------------------


def table(title: str, rows: list[tuple[str, str, str, int]], figures: dict[str, Figures], load: str) -> str:
    befores = [side for side in figures if side != "after"]
    after = figures["after"]
    head = " | ".join([*befores, "after", *(f"after/{side}" for side in befores)])
    lines = [f"\n{title} (load average 1/5/15 min: {load})\n", f"| measure | {head} |",
             "|---|" + "---|" * (2 * len(befores) + 1)]  # fmt: skip
    for key, label, unit, digits in rows:
        a = after[key]
        cells = [f"{figures[side][key]:,.{digits}f} {unit}" for side in [*befores, "after"]]
        for side in befores:
            b = figures[side][key]
            cells.append(f"{a / b:.2f}" if b else ("1.00" if a == b else "n/a"))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        required=True,
        help="the other checkout (its src/ and bench/); give it twice to compare three trees",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs per tree of run.py's jobs and shared_cache.py"
    )
    parser.add_argument("--n", type=int, default=1000, help="distinct connections (run.py's default 1000)")
    parser.add_argument("--misses", type=int, default=200)
    parser.add_argument("--startup-runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["run", "startup"], help="sections to leave out"
    )
    parser.add_argument("--shared", action="store_true", help="also run shared_cache.py (Airflow DAG runs)")
    parser.add_argument(
        "--before-airflow-venv", type=Path, help="Airflow venv with the other tree's credpath"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    trees = {("before" if i == 0 else f"before{i + 1}"): tree.resolve() for i, tree in enumerate(args.before)}
    trees["after"] = ROOT
    for tree in trees.values():
        if not (tree / "src" / "credpath" / "__init__.py").is_file():
            parser.error(f"{tree} is not a credpath checkout")
    if args.shared and not args.before_airflow_venv:
        parser.error("--shared needs --before-airflow-venv")
    if args.shared and len(args.before) > 1:
        parser.error("--shared compares two trees: give one --before")
    named = "; ".join(f"{side}: {tree} ({commit_of(tree)})" for side, tree in trees.items())
    print(f"{named}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    report: dict[str, Any] = {}
    if "startup" not in args.skip:
        figures, load = startup(trees, args.startup_runs, args.warmup)
        report["startup"] = {"figures": figures, "load": load}
        title = f"bench/startup.py, embedded default, {args.startup_runs} runs per tree alternating"
        print(table(title, STARTUP_ROWS, figures, load), flush=True)
    if "run" not in args.skip:
        figures, load = run_py(trees, args.rounds, args.n, args.misses)
        report["run"] = {"figures": figures, "load": load}
        title = f"bench/run.py, credpath side, {args.n:,} connections, median of {args.rounds} runs per tree"
        print(table(title, RUN_ROWS, figures, load).replace(" N ", f" {args.n:,} "), flush=True)
    if args.shared:
        venvs = {"before": args.before_airflow_venv.resolve(), "after": ROOT / ".cache" / "airflow-venv"}
        for side, venv in venvs.items():
            if not (venv / "bin" / "airflow").is_file():  # else the tree's test would build one in place
                parser.error(f"no Airflow virtualenv for {side} at {venv}")
        figures, load = shared(trees, venvs, args.rounds)
        report["shared"] = {"figures": figures, "load": load}
        title = f"bench/shared_cache.py --store vault, median of {args.rounds} runs per tree"
        print(table(title, shared_rows(figures["after"]), figures, load), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
