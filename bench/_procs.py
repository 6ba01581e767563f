"""What the fleet benches share: moto Secrets Manager behind a counting proxy and a redis-server, the
environment of a task process, and starting task processes on a schedule (waves, a bound on how many run
at once) and collecting their JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "bHhfSkV3ZVZxQ2R0b0RjY1hDbk1sS0hNeEJ1bVZGTmE="  # a fixed Fernet key (bench only)


@dataclass
class Servers:
    proxy: Any  # tests.servers.moto.FaultProxy: counts every request
    redis: Any  # tests.servers.redis.RedisServer
    moto_port: int


@contextmanager
def servers(work: Path, secrets: Mapping[str, str]) -> Iterator[Servers]:
    """moto (``secrets`` created in it), a counting proxy in front, and a redis-server; all stopped after."""
    from tests.servers._util import free_port, stop_process
    from tests.servers.moto import FaultProxy, start_moto
    from tests.servers.redis import RedisServer

    moto_port = free_port()
    moto = start_moto(moto_port, work / "moto.log")
    redis = RedisServer(port=free_port(), binary="redis-server", workdir=work)
    redis.start()
    proxy = FaultProxy(moto_port)
    try:
        import boto3

        client = boto3.client(
            "secretsmanager",
            endpoint_url=f"http://127.0.0.1:{moto_port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        for name, value in secrets.items():
            client.create_secret(Name=name, SecretString=value)
        yield Servers(proxy, redis, moto_port)
    finally:
        proxy.close()
        redis.stop()
        stop_process(moto)


def aws_config(path: Path, proxy_url: str, shared: str | None) -> Path:
    """A credpath.toml reading Secrets Manager through the proxy, with ``shared`` as its tier."""
    lines = [
        "[[backends]]",
        'name = "aws"',
        'type = "aws-secrets-manager"',
        "[backends.kwargs]",
        f"endpoint_url = {json.dumps(proxy_url)}",
        'region_name = "us-east-1"',
        "timeout = 120",  # hundreds of processes on 2 cores: the default 10 s is a load artefact here
    ]
    if shared:
        lines += ["[cache]", f"shared = {json.dumps(shared)}", f"shared_key = {json.dumps(KEY)}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def task_env(src: Path, **extra: str) -> dict[str, str]:
    """A task process's environment: none of ours (CREDPATH_*, AIRFLOW*), moto's credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDPATH_", "AIRFLOW"))}
    env.update(
        PYTHONPATH=str(src),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    #: Seconds after the run's start before this process may start (a wave's time).
    at: float = 0.0


@dataclass
class Outcome:
    makespan_s: float
    outputs: list[dict[str, Any]] = field(default_factory=list)  # the last line of each that succeeded
    failed: int = 0


def run(launches: list[Launch], max_running: int | None = None, timeout: float = 900.0) -> Outcome:
    """Start ``launches`` at their times, at most ``max_running`` at once (an Airflow worker's
    parallelism; None: no bound), and wait for all. Makespan: from the start to the last one done."""
    pending = sorted(launches, key=lambda launch: launch.at)
    running: list[subprocess.Popen[str]] = []
    outcome = Outcome(0.0)
    start = time.monotonic()
    give_up = start + timeout

    def collect(proc: subprocess.Popen[str]) -> None:
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            outcome.failed += 1
            lines = stderr.strip().splitlines()
            print(f"a task process failed: {lines[-1][:300] if lines else proc.returncode}", file=sys.stderr)
        else:
            outcome.outputs.append(json.loads(stdout.strip().splitlines()[-1]))

    while pending or running:
        if time.monotonic() > give_up:
            for proc in running:
                proc.kill()
            raise TimeoutError(f"task processes still running after {timeout:.0f} s")
        now = time.monotonic() - start
        while pending and pending[0].at <= now and (max_running is None or len(running) < max_running):
            launch = pending.pop(0)
            running.append(
                subprocess.Popen(
                    launch.argv,
                    env=launch.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            collect(proc)
        time.sleep(0.005)
    outcome.makespan_s = time.monotonic() - start
    return outcome
