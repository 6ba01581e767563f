"""Packaging-level promises: lazy imports, ruff-clean tree, the leak guard itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _heavy_modules() -> tuple[str, ...]:
    """The top-level modules ``import credpath`` must not load, derived from what the project declares:
    every registered backend's client libraries (``requires``), and the distributions of every optional
    extra (redis, web, airflow, ...). A new backend or extra is covered without editing this list."""
    import importlib.metadata
    import tomllib

    from credpath import registry

    heavy = {"sqlalchemy"}  # the metastore's SQLAlchemy URLs: an optional import no extra declares
    for alias in registry.ALIASES:
        cls = registry.load_class(registry.resolve_type(alias)[1])
        heavy.update(module.split(".")[0] for module in cls.requires)
    modules_of: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra, requirements in extras.items():
        if extra == "dev":
            continue
        for requirement in requirements:
            dist = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            if dist != "credpath":  # not installed here (Airflow has its own venv): its usual module name
                heavy.update(modules_of.get(dist, {dist.removeprefix("apache-").replace("-", "_")}))
    return tuple(sorted(m for m in heavy if not m.startswith("_")))


HEAVY = _heavy_modules()


def test_the_heavy_module_list_covers_every_declared_client() -> None:
    for module in (
        "requests",
        "botocore",
        "boto3",
        "google",
        "azure",
        "kubernetes",
        "redis",
        "fastapi",
        "airflow",
    ):
        assert module in HEAVY, module
    assert "hvac" not in HEAVY  # a test-only client: credpath itself never imports it


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"{code}\nimport sys, json\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import credpath",
        "import credpath; credpath.Connection; credpath.SearchPath; credpath.get_connection",
        "from credpath.cli import cli",
        "import credpath.airflow"
        if (ROOT / "src/credpath/airflow.py").exists()
        else "import credpath.registry",
    ],
)
def test_import_does_not_load_store_clients(code):
    assert _loaded_after(code) == []


def test_env_only_lookup_loads_no_store_client(monkeypatch):
    code = (
        "import os; os.environ['AIRFLOW_CONN_X'] = 'x://h'\n"
        "from credpath import SearchPath\n"
        "from credpath.backends.env import EnvironmentBackend\n"
        "SearchPath([EnvironmentBackend()]).get_connection('x')"
    )
    assert _loaded_after(code) == []


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff not installed")
    result = subprocess.run(
        [str(ruff), "check", "src", "tests", "bench"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_types_check_strictly() -> None:
    # `mypy --strict` over src/credpath ([tool.mypy] in pyproject.toml): the annotations third-party backends
    # read through py.typed must hold. CI installs mypy with the dev extra.
    command = [sys.executable, "-m", "mypy", "--cache-dir", "/dev/null"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (ROOT / "src" / "credpath" / "py.typed").exists()


@pytest.mark.reveals_secrets  # the inner run prints the leaked marker in its failure report
def test_leak_guard_fails_a_leaking_test(pytester):
    pytester.makeconftest(
        "from tests.conftest import pytest_runtest_makereport, pytest_configure  # noqa: F401\n"
    )
    pytester.makepyfile(
        """
        import logging
        import pytest

        def test_prints():
            print("password is hunter-s3cr3t")

        def test_logs():
            logging.getLogger("x").warning("token %s", "tok-s3cr3t")

        def test_clean():
            print("nothing to see")

        @pytest.mark.reveals_secrets
        def test_allowed():
            print("pw-s3cr3t shown on purpose")
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)


# `credpath connections get` on the embedded default (the README's first set-up) has a start-up budget of
# 150 ms: what it loads is pinned here, so a new import on that path is a decision, not an accident.
_CLI_PROBE = """
import dataclasses, json, runpy, sys
sys.argv = ["credpath", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("credpath", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
own = [m for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith("credpath")]
found = sorted(
    f"{m.__name__}.{name}" for m in own for name, value in vars(m).items()
    if isinstance(value, type) and value.__module__ == m.__name__ and dataclasses.is_dataclass(value)
)
report = {"code": code, "modules": sorted(sys.modules), "dataclasses": found}
sys.stderr.write("\\nPROBE " + json.dumps(report))
"""
#: Not needed to read one connection from the metastore: other commands' modules, the config file's parser
#: (there is none), the shared tier, audit and tracing, the terminal size (output is a pipe), SQLAlchemy and
#: rich (stdlib sqlite3 and the plain table read and print it), thread pools and network clients.
_CLI_UNNEEDED = (
    "credpath.cli.audit",
    "credpath.cli.cache",
    "credpath.cli.migrate",
    "credpath.cli.misc",
    "credpath.cli.variables",
    "credpath.cli.web",
    "credpath._audit",
    "credpath._otel",
    "credpath._shared_cache",
    "tomllib",
    "shutil",
    "sqlalchemy",
    "rich",
    "concurrent.futures",
    "asyncio",
    "http.client",
    "ssl",
)
#: Dataclasses the path may define: each costs about 1 ms at import on Python 3.11 (the decorator compiles
#: its methods); credpath._record is the cheap form. The public values stay dataclasses (users call
#: dataclasses.replace on a Connection); WriteConfirmation is not converted yet.
_CLI_DATACLASSES = {
    "credpath.model.Connection",
    "credpath.model.Variable",
    "credpath.protocol.WriteConfirmation",
}


def test_cli_get_on_the_embedded_default_loads_only_what_it_needs(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDPATH_", "AIRFLOW"))}
    env["CREDPATH_HOME"] = str(tmp_path)
    uri = "postgres://app:change-me@db.example.com:5432/analytics"
    add = [sys.executable, "-m", "credpath", "connections", "add", "my_db", "--uri", uri]
    subprocess.run(add, env=env, capture_output=True, check=True, cwd=ROOT)
    probe = [sys.executable, "-c", _CLI_PROBE, "connections", "get", "my_db"]
    result = subprocess.run(probe, env=env, capture_output=True, text=True, cwd=ROOT)
    report = json.loads(result.stderr.rsplit("\nPROBE ", 1)[1])
    assert report["code"] == 0 and "db.example.com" in result.stdout
    assert "credpath.cli.connections" in report["modules"]  # the probe saw the command run
    loaded = set(report["modules"])
    assert [m for m in _CLI_UNNEEDED if m in loaded] == []
    assert set(report["dataclasses"]) <= _CLI_DATACLASSES, "use credpath._record on the CLI's path"
