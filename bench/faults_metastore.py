"""Metastore and masker under faults, measured with real processes and threads.

1. Lost writes during ``rotate_fernet_key``: another process keeps rewriting values while this one rotates;
   afterwards, how many values differ from the last one written (SQLite, and PostgreSQL when its server
   binaries are installed: a private server as the test suite starts it).
2. Key-file race: 4 processes write at the same instant on a fresh ``CREDPATH_HOME``; failed processes.
3. Masker: 4 threads register the same new secret and log it at once, ``sys.setswitchinterval(1e-6)``;
   log lines that carried it in clear.
4. Masker cost: the first and the median 200-byte log line after a 1 MiB secret was registered, and a
   200-byte line with 10 / 1,000 / 10,000 registered secrets.

    PYTHONPATH=$PWD/src python bench/faults_metastore.py            # this checkout
    PYTHONPATH=/path/to/old/src python bench/faults_metastore.py    # before/after

Only public API is used, so the same script measures older code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from cryptography.fernet import Fernet

import credpath
from credpath._masking import Masker
from credpath.backends.metastore import MetastoreBackend

REPO = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import json, os, sys, time
    from credpath.backends.metastore import MetastoreBackend

    url, keys, ready, stop, out, rows = sys.argv[1:7]
    ids = [f"k{i:04d}" for i in range(int(rows))]
    backend = MetastoreBackend(url=url, fernet_key=keys)
    last, n, deadline = {}, 0, time.monotonic() + 300
    while not os.path.exists(stop) and time.monotonic() < deadline:
        for key in ids[n % 7 :: 7]:
            value = f"{key}-round-{n}"
            backend.set_variable(key, value)
            last[key] = value
        n += 1
        if n == 3:
            open(ready, "w").close()
    json.dump({"last": last, "rounds": n}, open(out, "w"))
    """
)

FIRST_WRITER = textwrap.dedent(
    """
    import sys, time
    from credpath.backends.metastore import MetastoreBackend

    go, name = sys.argv[1], sys.argv[2]
    while not __import__("os").path.exists(go):
        time.sleep(0.0005)
    MetastoreBackend().set_variable(name, name + "-value")
    """
)


def _child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    src = Path(credpath.__file__).resolve().parents[1]  # the credpath being measured
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH", "")) if p)
    for name in ("CREDPATH_FERNET_KEY", "CREDPATH_METASTORE_URL", "CREDPATH_CONFIG"):
        if name not in extra:
            env.pop(name, None)
    return env


def lost_writes(url: str, work: Path, rows: int, rotations: int) -> tuple[int, int, int]:
    """(values reverted, values written during the rotations, writer rounds)."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    seed = MetastoreBackend(url=url, fernet_key=old)
    for i in range(rows):
        seed.set_variable(f"k{i:04d}", f"k{i:04d}-seed")
    seed.close()
    ready, stop, out = work / "ready", work / "stop", work / "out.json"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, f"{new},{old}", str(ready), str(stop), str(out), str(rows)],
        env=_child_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if writer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the writer process did not start")
            time.sleep(0.01)
        rotator = MetastoreBackend(url=url, fernet_key=f"{new},{old}")
        for _ in range(rotations):
            rotator.rotate_fernet_key()
        rotator.close()
        stop.touch()
        writer.wait(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    written = json.loads(out.read_text())
    reader = MetastoreBackend(url=url, fernet_key=f"{new},{old}")
    stored = reader.get_variables(list(written["last"]))
    reader.close()
    reverted = sum(1 for key, value in written["last"].items() if stored.get(key) != value)
    return reverted, len(written["last"]), written["rounds"]


def key_file_race(work: Path, rounds: int, processes: int = 4) -> tuple[int, int, str]:
    """(failed processes, processes run, first error line)."""
    failed, first_error = 0, ""
    for r in range(rounds):
        home, go = work / f"home{r}", work / f"go{r}"
        env = _child_env(CREDPATH_HOME=str(home))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", FIRST_WRITER, str(go), f"p{i}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(processes)
        ]
        time.sleep(0.8)
        go.touch()
        for proc in procs:
            _, stderr = proc.communicate(timeout=120)
            if proc.returncode != 0:
                failed += 1
                lines = [line for line in stderr.strip().splitlines() if line.strip()]
                first_error = first_error or (lines[-1][-160:] if lines else f"exit {proc.returncode}")
    return failed, rounds * processes, first_error


def masker_leaks(rounds: int, threads: int = 4, lines_per_thread: int = 10) -> tuple[int, int]:
    """(lines with the secret in clear, lines logged) for threads registering one new secret at once."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    leaks = 0
    lock = threading.Lock()
    try:
        for r in range(rounds):
            masker = Masker()
            barrier = threading.Barrier(threads)
            secret = f"shared-secret-{r:06d}-value"

            def work(m: Masker = masker, b: threading.Barrier = barrier, s: str = secret) -> None:
                nonlocal leaks
                b.wait()
                m.add(s)
                for _ in range(lines_per_thread):
                    if s in m.redact(f"connecting with {s} now"):
                        with lock:
                            leaks += 1

            pool = [threading.Thread(target=work) for _ in range(threads)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
    finally:
        sys.setswitchinterval(previous)
    return leaks, rounds * threads * lines_per_thread


LINE = ("INFO task started: host=db.example.com user=etl conn=warehouse " * 4)[:200]


def masker_cost_after_big_secret() -> tuple[float, float]:
    """(first line s, median of 100 next lines s) after a 1 MiB secret."""
    masker = Masker()
    masker.add("".join(random.Random(1).choices(string.ascii_letters, k=1 << 20)))
    began = time.perf_counter()
    masker.redact(LINE)
    first = time.perf_counter() - began
    samples = []
    for _ in range(100):
        began = time.perf_counter()
        masker.redact(LINE)
        samples.append(time.perf_counter() - began)
    return first, statistics.median(samples)


def masker_cost_many(count: int) -> float:
    rnd = random.Random(count)
    masker = Masker()
    for _ in range(count):
        masker.add("".join(rnd.choices(string.ascii_letters + string.digits, k=24)))
    masker.redact("warm up")
    samples = []
    for _ in range(50):
        began = time.perf_counter()
        masker.redact(LINE)
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


@contextlib.contextmanager
def postgres_url():
    """A database on a private PostgreSQL server (the test suite's server), or None without the binaries."""
    sys.path.insert(0, str(REPO))
    try:
        from tests.servers import postgres as pg
    except Exception:
        yield None
        return
    if pg._pg_bindir() is None:
        yield None
        return
    server_cm = contextlib.contextmanager(pg.postgres_server.__wrapped__)()
    try:
        server = server_cm.__enter__()
    except BaseException:  # pytest.skip / fail outside pytest
        yield None
        return
    try:
        yield server.create_database("bench")
    finally:
        server_cm.__exit__(None, None, None)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms" if seconds < 0.1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rotations", type=int, default=4)
    parser.add_argument("--race-rounds", type=int, default=10)
    parser.add_argument("--masker-rounds", type=int, default=1000)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    results: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="credpath-faults-") as tmp:
        work = Path(tmp)
        (work / "sqlite").mkdir()
        reverted, total, rounds = lost_writes(
            f"sqlite:///{work / 'sqlite' / 'store.db'}", work / "sqlite", args.rows, args.rotations
        )
        results.append(
            (
                f"rotation ({args.rotations}x, {args.rows} rows) while another process writes, SQLite",
                f"{reverted} of {total} values reverted ({rounds} writer rounds)",
            )
        )
        if not args.no_postgres:
            with postgres_url() as url:
                if url is None:
                    results.append(
                        ("rotation while another process writes, PostgreSQL", "not run (no server)")
                    )
                else:
                    (work / "pg").mkdir()
                    reverted, total, rounds = lost_writes(url, work / "pg", args.rows, args.rotations)
                    results.append(
                        (
                            f"rotation ({args.rotations}x, {args.rows} rows) while another process writes, "
                            "PostgreSQL",
                            f"{reverted} of {total} values reverted ({rounds} writer rounds)",
                        )
                    )
        (work / "race").mkdir()
        failed, ran, error = key_file_race(work / "race", args.race_rounds)
        detail = f" (e.g. `{error.replace('|', '/')}`)" if error else ""
        results.append(
            (
                f"4 processes' first write on a fresh CREDPATH_HOME, {args.race_rounds} rounds",
                f"{failed} of {ran} processes failed{detail}",
            )
        )
    leaks, lines = masker_leaks(args.masker_rounds)
    results.append(
        (
            "4 threads register one new secret and log it, switch interval 1 us",
            f"{leaks} of {lines} lines in clear",
        )
    )
    first, median = masker_cost_after_big_secret()
    results.append(
        ("200-byte log line after a 1 MiB secret: first / median of next 100", f"{ms(first)} / {ms(median)}")
    )
    for count in (10, 1000, 10000):
        results.append(
            (f"200-byte log line with {count:,} secrets registered (median)", ms(masker_cost_many(count)))
        )

    print(f"credpath from {Path(credpath.__file__).resolve().parent}\n")
    print("| fault | result |")
    print("|---|---|")
    for name, value in results:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
