"""Client CPU per warm shared hit on Redis: what one ``SharedTier.get_or_acquire`` costs the process.

One redis-server; for each tree (``--src``, given more than once: this tree and an old one) and each
round, a fresh interpreter with that tree on its path seals 100 entries with its own code (a Connection
with an extra, and a 200-character variable), then times ``--n`` unpaced hits over them:
``time.process_time`` (client CPU, what limits the hit rate once cores are busy) and wall time. Trees
run interleaved, round after round, so changing load weighs on each alike. ``--profile`` prints a
cProfile of the hits of the first tree instead.

    python bench/hit_cpu.py --src src --src /tmp/old/src --rounds 3 [--n 5000] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "bHhfSkV3ZVZxQ2R0b0RjY1hDbk1sS0hNeEJ1bVZGTmE="  # a fixed Fernet key (bench only)

WORKER = r"""
import json, sys, time
from credpath._redis_store import RespStore
from credpath._shared_cache import SharedEntry, SharedTier
from credpath.model import Connection

url, key, n, profile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
tier = SharedTier(RespStore(url), [key.encode()], "bench")
now = time.time()
ckeys = []
for i in range(100):
    if i % 2:
        ckey = ("variable", f"v{i}", None)
        entry = SharedEntry("variable", "v" * 200, "aws", False, now, now + 600, now + 900)
    else:
        ckey = ("connection", f"c{i}", None)
        conn = Connection(conn_id=f"c{i}", conn_type="postgres", host="db.example", login="u",
                          password="pw%d" % i, schema="d", port=5432, extra='{"sslmode": "require"}')
        entry = SharedEntry("connection", conn, "aws", False, now, now + 600, now + 900, version="v1")
    tier.get(ckey)
    tier.put(ckey, entry)
    ckeys.append(ckey)
for ckey in ckeys:  # warm: every entry is there and opens
    assert tier.get_or_acquire(ckey)[0] is not None
def hits():
    for i in range(n):
        entry, _ = tier.get_or_acquire(ckeys[i % 100])
        assert entry is not None
if profile:
    import cProfile, pstats
    cProfile.run("hits()", "/tmp/hit_cpu.prof")
    pstats.Stats("/tmp/hit_cpu.prof").sort_stats("tottime").print_stats(25)
    sys.exit(0)
c0, w0 = time.process_time(), time.perf_counter()
hits()
cpu, wall = time.process_time() - c0, time.perf_counter() - w0
print(json.dumps({"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}))
"""


def _run(src: Path, url: str, n: int, profile: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    argv = [sys.executable, "-c", WORKER, url, KEY, str(n), "1" if profile else "0"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    if profile:
        print(out)
        return {}
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, action="append", help="a tree's src/ (default: this one's)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    srcs = [s.resolve() for s in (args.src or [ROOT / "src"])]
    sys.path.insert(0, str(ROOT))
    from tests.servers._util import free_port
    from tests.servers.redis import RedisServer

    work = Path(tempfile.mkdtemp(prefix="credpath-bench-hitcpu-"))
    redis = RedisServer(port=free_port(), binary="redis-server", workdir=work)
    redis.start()
    try:
        if args.profile:
            _run(srcs[0], redis.url, args.n, True)
            return 0
        rows: dict[str, list[dict[str, Any]]] = {str(s): [] for s in srcs}
        print("load before:", open("/proc/loadavg").read().strip())
        for round_ in range(args.rounds):
            for src in srcs:
                redis.flush()
                row = _run(src, redis.url, args.n, False)
                rows[str(src)].append(row)
                print(f"round {round_ + 1} {src}: {json.dumps(row)}", flush=True)
        print("load after:", open("/proc/loadavg").read().strip())
        print("\n| tree | CPU us/hit (median) | wall us/hit (median) |\n|---|---|---|")
        for src, runs in rows.items():
            cpu = statistics.median(r["cpu_us"] for r in runs)
            wall = statistics.median(r["wall_us"] for r in runs)
            print(f"| {src} | {cpu:.1f} | {wall:.1f} |")
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
