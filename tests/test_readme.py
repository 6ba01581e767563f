"""The README's set-up commands stay true: the first one is run as written, in a fresh copy of the repo."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import assert_no_secret

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_second():
    commands = setup_commands()
    assert len(commands) == 2
    assert commands[1].strip() == "bash scripts/test"
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_readme_main_job_runs_on_a_fresh_copy(tmp_path):
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    copy = tmp_path / "credpath"
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    command = setup_commands()[0]
    # python3 is the base interpreter this suite runs on (not the venv), as on a fresh machine.
    env = {"PATH": f"{Path(sys.base_prefix) / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", "-c", command], cwd=copy, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "my_db" in out and "db.example.com" in out and "***" in out
    assert "served by: metastore" in out
    assert "change-me" not in out  # the password is masked
    assert_no_secret(out + result.stderr)
