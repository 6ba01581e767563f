"""Run a script inside the Airflow venv with a JSON spec on stdin; its answer is the JSON after a marker line
(Airflow's own logging shares stdout). Shared by the side scripts of the Kubernetes and async tests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MARKER = "@@credpath-side@@"


def answer(value: Any) -> None:
    """The side script's answer: the marker line, then one JSON document."""
    sys.stdout.write("\n" + MARKER + "\n" + json.dumps(value) + "\n")


def run_side(venv: Path, script: Path, spec: Any, env: dict[str, str], cwd: Path, hide: str = "") -> Any:
    """Run ``script`` with the venv's Python; fail with its stderr tail (``hide`` masked) unless it
    answered."""
    result = subprocess.run(
        [str(venv / "bin" / "python"), str(script)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
        cwd=cwd,
    )
    tail = result.stderr[-3000:]
    if hide:
        tail = tail.replace(hide, "***")
        assert hide not in result.stdout + result.stderr, "the side script printed the secret"
    assert result.returncode == 0 and MARKER in result.stdout, "the Airflow side failed:\n" + tail
    return json.loads(result.stdout.split(MARKER + "\n", 1)[1])


async def ticker(stop: asyncio.Event, lags: list[float], period: float = 0.01) -> None:
    """Until ``stop``: sleep ``period`` and record how late the loop woke up (its lag)."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(period)
        lags.append(time.monotonic() - before - period)
