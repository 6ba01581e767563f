"""The fault table, before and after, in one run: every ``bench/faults_*.py`` against the same servers.

Usage: ``.venv/bin/python bench/faults.py [--before-ref 6da5087 | --before-src DIR] [--out FILE]``

"Before" is the code at ``--before-ref`` (default: the last release before the resilience work), checked out
into ``.cache/bench-before`` with ``git worktree``; "after" is this checkout's ``src``. Each script starts its
own servers on loopback and prints a Markdown table; this one runs them in turn and writes them together
(to stdout, and to ``--out`` if given). Bounded: every script caps a lookup (``--cap``) and stops its servers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REF = "6da5087"  # main before the fault-tolerance work


def before_src(ref: str) -> Path:
    where = ROOT / ".cache" / "bench-before"
    if not (where / "src" / "credpath").is_dir():
        where.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True)
    return where / "src"


def run(script: str, *args: str, pythonpath: Path | None = None) -> str:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        return f"{script} failed (exit {done.returncode}):\n\n```\n{done.stderr[-2000:]}\n```\n"
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-ref", default=BEFORE_REF)
    parser.add_argument("--before-src", type=Path, help="a src folder to use as 'before' instead")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    before = args.before_src or before_src(args.before_ref)
    after = ROOT / "src"
    parts = [
        "## Vault (OpenBao behind the fault proxy)\n\n"
        + run("faults_vault.py", "--before", str(before), "--after", str(after)),
        "## AWS, GCP, Azure (moto and the HTTP fakes behind the fault proxy)\n\n"
        + run("faults_cloud.py", "--before", str(before), "--after", str(after)),
        "## The search path (moto behind the fault proxy)\n\n"
        + run("faults_core.py", "--before-src", str(before), "--after-src", str(after)),
        "## Metastore and masker: before\n\n" + run("faults_metastore.py", pythonpath=before),
        "## Metastore and masker: after\n\n" + run("faults_metastore.py", pythonpath=after),
    ]
    text = "\n\n".join(part.strip() + "\n" for part in parts)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
