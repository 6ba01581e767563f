"""Client CPU per warm shared hit on Redis: what one ``SharedTier.get_or_acquire`` costs the process.

One redis-server; for each tree (``--src``, given more than once: this tree and an old one), each mode
and each round, a fresh interpreter with that tree on its path seals entries with its own code (half
Connections with an extra, half 200-character variables), then times ``--n`` unpaced hits
(``SharedTier.get_or_acquire``) from a second tier that kept nothing from the writes:
``time.process_time`` (client CPU, user and system: what limits the hit rate once cores are busy) and
wall time. Modes: ``repeat`` cycles 100 entries (what ``bench/redis_tier.py --hits`` does), ``first``
reads ``--n`` entries once each (what a new task process does). Trees run interleaved, round after
round, so changing load weighs on each alike. ``--profile`` prints a cProfile of the first tree's hits.

    python bench/hit_cpu.py --src src --src /tmp/old/src --rounds 3 [--n 5000] [--modes repeat,first]
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

url, key, n, profile, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
count = 100 if mode == "repeat" else n
writer = SharedTier(RespStore(url), [key.encode()], "bench")
now = time.time()
ckeys = []
for i in range(count):
    if i % 2:
        ckey = ("variable", f"v{i}", None)
        entry = SharedEntry("variable", "v" * 200, "aws", False, now, now + 600, now + 900)
    else:
        ckey = ("connection", f"c{i}", None)
        conn = Connection(conn_id=f"c{i}", conn_type="postgres", host="db.example", login="u",
                          password="pw%d" % i, schema="d", port=5432, extra='{"sslmode": "require"}')
        entry = SharedEntry("connection", conn, "aws", False, now, now + 600, now + 900, version="v1")
    writer.get(ckey)
    writer.put(ckey, entry)
    ckeys.append(ckey)
# The hits come from another tier (nothing kept from the writes): "repeat" cycles 100 entries, each
# seen before after the first round (as bench/redis_tier.py's hit_latency does); "first" reads n
# entries once each (as a new task process does).
tier = SharedTier(RespStore(url), [key.encode()], "bench")
assert tier.get_or_acquire(("variable", "warm-up", None))[1] is True  # connected, script loaded
if mode == "repeat":
    for ckey in ckeys:
        assert tier.get_or_acquire(ckey)[0] is not None
def hits():
    for i in range(n):
        entry, _ = tier.get_or_acquire(ckeys[i % count])
        assert entry is not None
if profile:
    import cProfile, pstats
    cProfile.run("hits()", "/tmp/hit_cpu.prof")
    pstats.Stats("/tmp/hit_cpu.prof").sort_stats("tottime").print_stats(25)
    sys.exit(0)
import resource
r0, c0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
hits()
cpu, wall = time.process_time() - c0, time.perf_counter() - w0
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu_us": cpu / n * 1e6, "user_us": (r1.ru_utime - r0.ru_utime) / n * 1e6,
                  "sys_us": (r1.ru_stime - r0.ru_stime) / n * 1e6, "wall_us": wall / n * 1e6}))
"""


def _run(src: Path, url: str, n: int, profile: bool, mode: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src))
    argv = [sys.executable, "-c", WORKER, url, KEY, str(n), "1" if profile else "0", mode]
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
    parser.add_argument(
        "--modes", default="repeat,first", help="repeat: 100 entries cycled; first: each entry once"
    )
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
            _run(srcs[0], redis.url, args.n, True, args.modes.split(",")[0])
            return 0
        modes = args.modes.split(",")
        rows: dict[tuple[str, str], list[dict[str, Any]]] = {(m, str(s)): [] for m in modes for s in srcs}
        print("load before:", Path("/proc/loadavg").read_text().strip())
        for round_ in range(args.rounds):
            for mode in modes:
                for src in srcs:
                    redis.flush()
                    row = _run(src, redis.url, args.n, False, mode)
                    row["load"] = os.getloadavg()[0]
                    rows[(mode, str(src))].append(row)
                    print(f"round {round_ + 1} {mode} {src}: {json.dumps(row)}", flush=True)
        print("load after:", Path("/proc/loadavg").read_text().strip())
        print("\n| hits | tree | CPU us/hit (median; runs) | wall us/hit (median) |\n|---|---|---|---|")
        for (mode, src), runs in rows.items():
            cpu = statistics.median(r["cpu_us"] for r in runs)
            each = ", ".join(f"{r['cpu_us']:.0f}" for r in runs)
            wall = statistics.median(r["wall_us"] for r in runs)
            print(f"| {mode} | {src} | {cpu:.1f} ({each}) | {wall:.1f} |")
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
