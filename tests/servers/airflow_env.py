"""Real Apache Airflow 3.3.2 for the integration tier (tests marked ``airflow``).

- ``airflow_venv`` (session): a virtualenv at ``.cache/airflow-venv`` with ``apache-airflow==3.3.2``, the
  amazon and hashicorp providers, the google and microsoft-azure providers (for their secrets backends), and
  credpath installed editable from this working tree. Built once (about 25 s with a warm pip cache, a few
  minutes cold) and reused while its marker file matches the requirements; a file lock keeps parallel
  sessions from building it twice.
- ``airflow`` (session): an ``AIRFLOW_HOME`` on SQLite in a tmp dir, migrated (``airflow db migrate``),
  with helpers to run ``airflow`` commands in a clean environment (nothing inherited from AIRFLOW_*,
  AWS_*, VAULT_*, BAO_* or CREDPATH_* of the caller).
- ``airflow_api_server`` (session): ``airflow api-server --apps execution`` on a loopback port, which the
  LocalExecutor's task processes need (``airflow dags test --use-executor``: the real Task SDK path with
  a supervisor, a task log file and its secrets masker).

Without network access to PyPI the build fails: a failure in CI (``CI=true``), a skip elsewhere.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers._util import IN_CI, free_port, stop_process, wait_for_port

AIRFLOW_VERSION = "3.3.2"
REQUIREMENTS = (
    f"apache-airflow=={AIRFLOW_VERSION}",
    "apache-airflow-providers-amazon",
    "apache-airflow-providers-hashicorp",
    # What the google and microsoft-azure providers' secrets backends import (installed with the above).
    "google-cloud-secret-manager",
    "google-api-core>=2.30.3",
    "google-api-python-client>=2.194.0",
    "google-auth-httplib2",
    "gcloud-aio-auth>=5.2.0",
    "azure-identity>=1.25.3",
    "azure-keyvault-secrets>=4.10.0",
    "msrest",
    # credpath's web plugin (/credpath in the API server) exports Prometheus metrics.
    "prometheus-client",
    # The shared cache tier on Redis (credpath[redis]), for the DAG-run tests with [cache] shared.
    "redis>=5.0",
    # What the cncf.kubernetes provider's secrets backend imports (the client the provider pins).
    "kubernetes>=36.0.1,<37",
)
# The google and microsoft-azure providers, for the differential harness's naming checks (their secrets
# backends import without cloud access). Installed without their dependencies: the google provider pulls in
# Vertex AI and litellm, whose resolution backtracks for tens of minutes and gigabytes; the secrets
# backends need only the packages listed above. Versions: the ones that ship with Airflow 3.3.2.
NO_DEPS_REQUIREMENTS = (
    "apache-airflow-providers-google==22.8.0",
    "apache-airflow-providers-microsoft-azure==15.2.1",
    # The first release with team scoping in its label-based KubernetesSecretsBackend; its other
    # dependencies (kubernetes_asyncio, aiofiles) serve the operators, not the secrets backend.
    "apache-airflow-providers-cncf-kubernetes==10.25.0",
)
REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("CREDPATH_AIRFLOW_VENV") or REPO / ".cache" / "airflow-venv")
MARKER = VENV / ".credpath-airflow-complete"
BUILD_TIMEOUT = 1800.0
# Caller settings that must not leak into Airflow's processes (they would change what is resolved).
_SCRUBBED_PREFIXES = ("AIRFLOW", "AWS_", "VAULT_", "BAO_", "CREDPATH_", "PYTHON", "VIRTUAL_ENV", "_AIRFLOW")


def _fingerprint() -> dict[str, object]:
    return {
        "requirements": list(REQUIREMENTS),
        "no_deps": list(NO_DEPS_REQUIREMENTS),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "credpath": str(REPO),
    }


def venv_is_complete(venv: Path = VENV) -> bool:
    marker = venv / MARKER.name
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded == _fingerprint() and (venv / "bin" / "airflow").exists() and not _foreign_scripts(venv)


def _foreign_scripts(venv: Path) -> list[Path]:
    """Scripts in ``venv/bin`` whose ``#!`` line names another venv's interpreter.

    A venv copied from another checkout (``cp -a``) keeps the original's shebangs: ``bin/airflow`` would
    run the other venv's Python, and so the other checkout's credpath, and pip's re-install of credpath
    does not rewrite the scripts it did not install."""
    own = f"#!{venv / 'bin' / 'python'}"
    foreign = []
    for script in sorted((venv / "bin").iterdir()):
        if not script.is_file() or script.is_symlink():
            continue
        with script.open("rb") as handle:
            first = handle.readline(4096)
        line = first.decode("utf-8", "replace").rstrip("\n")
        if re.fullmatch(r"#!\S*/bin/python[0-9.]*", line) and line != own:
            foreign.append(script)
    return foreign


def _own_scripts(venv: Path) -> None:
    # Point a copied venv's scripts at its own interpreter (see _foreign_scripts).
    own = f"#!{venv / 'bin' / 'python'}\n"
    for script in _foreign_scripts(venv):
        text = script.read_bytes()
        script.write_bytes(own.encode() + text.split(b"\n", 1)[1])


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_venv(venv: Path = VENV) -> float:
    """Create or complete the venv (idempotent); returns the seconds spent, 0.0 when already complete."""
    with _file_lock(venv.parent / f"{venv.name}.lock"):
        if (venv / "bin").is_dir():
            _own_scripts(venv)
        if venv_is_complete(venv):
            return 0.0
        started = time.monotonic()
        log_path = venv.parent / f"{venv.name}-build.log"
        python = venv / "bin" / "python"
        steps: list[list[str]] = []
        if not python.exists():
            steps.append([sys.executable, "-m", "venv", str(venv)])
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        steps.append([*pip, *REQUIREMENTS])
        steps.append([*pip, "--no-deps", *NO_DEPS_REQUIREMENTS])
        steps.append([*pip, "-e", str(REPO)])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        with log_path.open("w") as log_file:
            for step in steps:
                deadline = BUILD_TIMEOUT - (time.monotonic() - started)
                result = subprocess.run(
                    step, stdout=log_file, stderr=subprocess.STDOUT, env=env, timeout=max(deadline, 1.0)
                )
                if result.returncode != 0:
                    raise RuntimeError(
                        f"building the Airflow venv failed at {' '.join(step[:5])}... "
                        f"(rc={result.returncode}); see {log_path}"
                    )
        (venv / MARKER.name).write_text(json.dumps(_fingerprint()))
        return time.monotonic() - started


@pytest.fixture(scope="session")
def airflow_venv() -> Path:
    try:
        build_venv(VENV)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        message = f"Apache Airflow {AIRFLOW_VERSION} venv unavailable: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return VENV


@dataclass
class AirflowEnv:
    """One AIRFLOW_HOME on SQLite and a clean environment to run ``airflow`` in."""

    venv: Path
    home: Path
    dags: Path
    base_env: dict[str, str] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(extra or {})
        return env

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 180.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>``; output is captured and never printed (it may hold secrets)."""
        result = subprocess.run(
            [str(self.bin / "airflow"), *args],
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"airflow {' '.join(args[:2])} exited with {result.returncode}")
        return result

    def run_many(
        self, commands: list[list[str]], env: Mapping[str, str] | None = None, timeout: float = 180.0
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run several ``airflow`` commands at once (each imports Airflow for ~1.5 s); results in order."""
        procs = [
            subprocess.Popen(
                [str(self.bin / "airflow"), *args],
                env=self.env(env),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=self.home,
            )
            for args in commands
        ]
        results: list[subprocess.CompletedProcess[str]] = []
        try:
            for args, proc in zip(commands, procs, strict=True):
                stdout, stderr = proc.communicate(timeout=timeout)
                results.append(subprocess.CompletedProcess(args, proc.returncode, stdout, stderr))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return results

    def python(
        self, code: str, env: Mapping[str, str] | None = None, timeout: float = 180.0
    ) -> subprocess.CompletedProcess[str]:
        """Run Python code with the Airflow venv's interpreter (output captured)."""
        return subprocess.run(
            [str(self.bin / "python"), "-c", code],
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )


def clean_environment(home: Path, venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_SCRUBBED_PREFIXES)}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(home),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # Isolation from any real AWS account or instance metadata.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(home / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
            "NO_COLOR": "1",
        }
    )
    return env


def migrated_airflow(venv: Path, home: Path) -> AirflowEnv:
    """An AIRFLOW_HOME in ``home`` (a dags folder, SQLite, ``airflow db migrate`` run)."""
    (home / "dags").mkdir(parents=True, exist_ok=True)
    env = AirflowEnv(venv=venv, home=home, dags=home / "dags", base_env=clean_environment(home, venv))
    result = env.run("db", "migrate", timeout=300)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-5:])
        raise RuntimeError(f"airflow db migrate failed (rc={result.returncode}):\n{tail}")
    return env


@pytest.fixture(scope="session")
def airflow(airflow_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> AirflowEnv:
    try:
        return migrated_airflow(airflow_venv, tmp_path_factory.mktemp("airflow-home"))
    except RuntimeError as exc:
        pytest.fail(str(exc))


@dataclass
class ApiServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def execution_api_url(self) -> str:
        return f"{self.url}/execution/"


def start_api_server(airflow: AirflowEnv) -> ApiServer:
    """Start ``airflow api-server --apps execution`` on a loopback port and wait until it is healthy;
    sets the execution API URL in ``airflow.base_env``. Stop with :func:`stop_api_server`."""
    port = free_port()
    log_path = airflow.home / "api-server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                str(airflow.bin / "airflow"),
                "api-server",
                "--apps",
                "execution",
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=airflow.env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=airflow.home,
        )
    server = ApiServer(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)
    try:
        wait_for_port(port, timeout=90, proc=proc)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/execution/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
            time.sleep(0.2)
    except BaseException:
        stop_process(proc)
        raise
    airflow.base_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = server.execution_api_url
    return server


def stop_api_server(airflow: AirflowEnv, server: ApiServer) -> None:
    airflow.base_env.pop("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", None)
    stop_process(server.proc)


@pytest.fixture(scope="session")
def airflow_api_server(airflow: AirflowEnv) -> Iterator[ApiServer]:
    """The execution API (what task processes talk to); about 6 s to start, ~220 MB."""
    server = start_api_server(airflow)
    try:
        yield server
    finally:
        stop_api_server(airflow, server)


# --- a DAG of N tasks x M connections, for counting store calls per DAG run ---------------

STORE_CALLS_DAG = '''
"""{tasks} tasks, each reading {count} connections; prints its secrets time and what the reads cost the
task process (never a value)."""
from __future__ import annotations

import json
import sys
import threading
import time

import pendulum

from airflow.sdk import BaseHook, dag, task

CONN_IDS = {conn_ids!r}
# Modules a task process would import if it had to start a store client itself (its parent did).
CLIENT_MODULES = {client_modules!r}


@dag(dag_id={dag_id!r}, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None, catchup=False)
def store_calls():
    @task
    def read_secrets():
        from airflow.sdk.execution_time import task_runner

        comms_class = type(task_runner.SUPERVISOR_COMMS)
        real_send, real_start = comms_class.send, threading.Thread.start
        search_path = sys.modules.get("credpath._search_path")
        real_init = search_path.SearchPath.__init__ if search_path else None
        sent, threads, built = [], [], []

        def send(self, msg, *args, **kwargs):
            sent.append(type(msg).__name__)
            return real_send(self, msg, *args, **kwargs)

        def start(self):
            threads.append(self.name)
            real_start(self)

        def init(self, *args, **kwargs):
            built.append(1)
            real_init(self, *args, **kwargs)

        comms_class.send, threading.Thread.start = send, start
        if search_path:
            search_path.SearchPath.__init__ = init
        before = set(sys.modules)
        cpu = time.process_time()
        started = time.perf_counter()
        try:
            for conn_id in CONN_IDS:
                assert BaseHook.get_connection(conn_id).host
        finally:
            wall_ms = (time.perf_counter() - started) * 1000
            cpu_ms = (time.process_time() - cpu) * 1000
            comms_class.send, threading.Thread.start = real_send, real_start
            if search_path:
                search_path.SearchPath.__init__ = real_init
        imported = sorted(m for m in set(sys.modules) - before if m.startswith(CLIENT_MODULES))
        ops = {{
            "cpu_ms": round(cpu_ms, 3),
            "supervisor_messages": sorted(sent),
            "threads_started": len(threads),
            "search_paths_built": len(built),
            "client_modules_imported": imported,
        }}
        print("secrets_ops=" + json.dumps(ops, sort_keys=True))
        print(f"secrets_ms={{wall_ms:.3f}}")

    for index in range({tasks}):
        read_secrets.override(task_id=f"t{{index}}")()


store_calls()
'''


#: What the store-calls DAG reports as store-client modules a task process imported (prefixes).
STORE_CLIENT_MODULES = (
    "hvac",
    "requests",
    "urllib3",
    "redis",
    "cryptography",
    "credpath.backends",
    "ahocorasick",
)
#: The same for an AWS store: botocore's stack too (boto3 is what Airflow's provider builds its client on).
AWS_CLIENT_MODULES = (*STORE_CLIENT_MODULES, "boto3", "botocore", "s3transfer", "jmespath")


def write_store_calls_dag(
    airflow: AirflowEnv,
    dag_id: str,
    conn_ids: list[str],
    tasks: int = 10,
    client_modules: tuple[str, ...] = STORE_CLIENT_MODULES,
) -> None:
    text = STORE_CALLS_DAG.format(
        tasks=tasks,
        count=len(conn_ids),
        conn_ids=list(conn_ids),
        dag_id=dag_id,
        client_modules=tuple(client_modules),
    )
    (airflow.dags / f"{dag_id}.py").write_text(text)


def _task_events(airflow: AirflowEnv, dag_id: str, prefix: str) -> list[str]:
    """What each task of the DAG printed after ``prefix`` (one entry per task that printed it)."""
    found: list[str] = []
    for log_file in sorted((airflow.home / "logs").glob(f"dag_id={dag_id}/**/attempt=*.log")):
        for line in log_file.read_text().splitlines():
            if line.startswith("{") and prefix in line:
                try:
                    event = str(json.loads(line).get("event", ""))
                except ValueError:
                    continue  # a line still being written
                if event.startswith(prefix):
                    found.append(event[len(prefix) :])
    return found


def _task_times(airflow: AirflowEnv, dag_id: str) -> list[float]:
    return [float(value) for value in _task_events(airflow, dag_id, "secrets_ms=")]


def task_ops(airflow: AirflowEnv, dag_id: str) -> list[dict[str, object]]:
    """Per task of the store-calls DAG: CPU ms of its reads, the messages it sent the supervisor (by
    type), threads it started, search paths it built and store-client modules it imported."""
    return [json.loads(value) for value in _task_events(airflow, dag_id, "secrets_ops=")]


def run_dags_test(
    airflow: AirflowEnv,
    dag_id: str,
    env: Mapping[str, str],
    finished: Callable[[], bool],
    timeout: float = 400.0,
) -> int | None:
    """``airflow dags test --use-executor DAG_ID`` (LocalExecutor, a supervisor per task): its exit code.

    On a loaded machine ``dags test`` sometimes never exits after every task has finished (seen with
    Airflow's own backend too); then, 60 s after ``finished()`` (the task logs show the work done) turned
    true, its process group is stopped and the exit code is None."""
    import signal

    out = (airflow.home / f"{dag_id}.out").open("w")
    proc = subprocess.Popen(
        [str(airflow.bin / "airflow"), "dags", "test", "--use-executor", dag_id],
        env=airflow.env(env),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=airflow.home,
        start_new_session=True,  # its own process group: the LocalExecutor's workers stop with it
    )
    out.close()
    deadline = time.monotonic() + timeout
    all_reported: float | None = None
    code: int | None = None
    try:
        while True:
            code = proc.poll()
            if code is not None:
                break
            now = time.monotonic()
            if all_reported is None and finished():
                all_reported = now
            if now > deadline or (all_reported is not None and now - all_reported > 60):
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
    return code


def run_store_calls_dag(
    airflow: AirflowEnv, dag_id: str, env: Mapping[str, str], tasks: int = 10, timeout: float = 400.0
) -> tuple[int | None, list[float]]:
    """:func:`run_dags_test` for the store-calls DAG: its exit code and each task's secrets time in ms."""
    code = run_dags_test(
        airflow, dag_id, env, lambda: len(_task_times(airflow, dag_id)) >= tasks, timeout=timeout
    )
    return code, _task_times(airflow, dag_id)
