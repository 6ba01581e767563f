"""The README's set-up commands stay true: the first one is run as written, in a fresh copy of the repo."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    """The repo's files copied to an empty directory, with the README's first command run there as written
    (it makes ``.venv`` with the core install only: no store client library)."""
    tmp_path = tmp_path_factory.mktemp("fresh")
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
    return copy, env, result


def test_readme_main_job_runs_on_a_fresh_copy(fresh_copy):
    _, _, result = fresh_copy
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "my_db" in out and "db.example.com" in out and "***" in out
    assert "served by: metastore" in out
    assert "change-me" not in out  # the password is masked
    assert_no_secret(out + result.stderr)


STORE_EXTRAS = [
    ("vault", "requests", "vault"),
    ("aws-secrets-manager", "botocore", "aws"),
    ("aws-ssm", "botocore", "aws"),
    ("gcp-secret-manager", "google", "gcp"),
    ("azure-key-vault", "azure", "azure"),
]


@pytest.mark.parametrize(("store", "module", "extra"), STORE_EXTRAS, ids=[s[0] for s in STORE_EXTRAS])
def test_core_install_names_the_missing_client_and_its_extra(fresh_copy, store, module, extra):
    copy, env, setup = fresh_copy
    assert setup.returncode == 0, setup.stderr[-2000:]
    config = copy / f"{store}.toml"
    config.write_text(f'[[backends]]\nname = "prod"\ntype = "{store}"\n')
    result = subprocess.run(
        [str(copy / ".venv" / "bin" / "credpath"), "--config", str(config), "connections", "get", "x"],
        cwd=copy,
        env={**env, "CREDPATH_HOME": str(copy / ".home")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"credpath: error: backend 'prod' needs {module}: pip install 'credpath[{extra}]'"
    )


def test_the_readme_sample_config_loads_and_builds_its_search_path(tmp_path):
    import tomllib

    from credpath._search_path import SearchPath

    text = (ROOT / "README.md").read_text()
    section = text.split("## The search path", 1)[1].split("\n## ", 1)[0]
    sample = re.findall(r"```toml\n(.*?)\n```", section, flags=re.S)[0]
    tomllib.loads(sample)  # valid TOML
    config = tmp_path / "credpath.toml"
    config.write_text(sample)
    env = {"CREDPATH_HOME": str(tmp_path / "home"), "CREDPATH_FERNET_KEY": "x" * 43 + "="}
    path = SearchPath.from_config(config, env=env)
    assert path.names == ["vault", "aws-secrets-manager", "env", "metastore"]
    assert path.cache.settings.stale_if_error == 3600
    assert (tmp_path / "home").exists() is False  # building it reads nothing and creates nothing


def test_readme_python_block_runs_after_the_setup(fresh_copy):
    """The Python API block, pasted after the set-up command (same CREDPATH_HOME), runs without an error."""
    copy, env, setup = fresh_copy
    assert setup.returncode == 0, setup.stderr[-2000:]
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)[0]
    result = subprocess.run(
        [str(copy / ".venv" / "bin" / "python"), "-c", block],
        cwd=copy,
        env={**env, "CREDPATH_HOME": str(copy / ".credpath-demo")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert_no_secret(result.stdout + result.stderr)


def test_extras_install_from_a_checkout_and_all_includes_web():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    included = extras["all"][0].split("[", 1)[1].rstrip("]").split(",")
    assert set(included) == set(extras) - {"all", "dev", "airflow"}  # every store client and the web page
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/pip install -q '.[web]' && .venv/bin/credpath web" in setup


_NUMBER = re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?")


def test_every_performance_figure_in_the_readme_is_in_results():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    results = {n.replace(",", "") for n in _NUMBER.findall((ROOT / "bench" / "RESULTS.md").read_text())}
    missing = [n for n in _NUMBER.findall(section) if n.replace(",", "") not in results]
    assert not missing, f"README figures not in bench/RESULTS.md: {missing}"


def test_no_internal_issue_numbers_in_results_and_contributing_links_stay_in_the_repo():
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    assert not re.search(r"\bissue[ -]?\d", results, flags=re.I)
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert "../" not in contributing
