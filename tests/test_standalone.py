"""The repo stands alone: a clone with nothing beside it collects the whole suite and passes its model tests.

Before, ``tests/test_model.py`` read the team's vectors file from a folder beside the repo, and a plain clone
stopped at collection with ``FileNotFoundError``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "CREDPATH_", "AIRFLOW"))}
    env["PYTHONPATH"] = str(clone / "src")
    return env


def test_a_clone_alone_collects_the_whole_suite_and_passes_the_model_tests(tmp_path):
    clone = tmp_path / "alone" / "credpath"  # nothing beside it
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    assert list(clone.parent.iterdir()) == [clone]
    python = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    collected = subprocess.run(
        [*python, "--collect-only", "-q"],
        cwd=clone,
        env=_clean_env(clone),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-2000:]
    count = int(re.search(r"(\d+) tests? collected", collected.stdout).group(1))
    assert count > 600
    model = subprocess.run(
        [*python, "-q", "tests/test_model.py"],
        cwd=clone,
        env=_clean_env(clone),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert model.returncode == 0, model.stdout[-3000:]
    assert re.search(r"\d+ passed", model.stdout)


def test_no_test_or_script_reads_outside_the_repo():
    pattern = re.compile(r"\.\./shared|parents\[\d\]\s*/\s*['\"]shared['\"]")
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("tests", "scripts", "bench")
        for path in (ROOT / folder).rglob("*")
        if path.is_file()
        and path.suffix in (".py", "")
        and path != Path(__file__)
        and pattern.search(path.read_text(errors="ignore"))
    ]
    assert offenders == []
