"""The full-size rotation run (CI runs it shortened): 20 reader processes on the file tier and on Redis
while 100 rotations happen, half through credpath writes and half out of band + ``credpath cache
invalidate``. Prints, per tier, the longest time any process served a rotated-away value after its
invalidation and the store reads counted at the proxy in front of OpenBao.

Usage: python bench/rotation.py [ROTATIONS] [READERS]   (needs the test servers: OpenBao, redis-server)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    env["CREDPATH_BENCH_ROTATIONS"] = argv[0] if argv else "100"
    env["CREDPATH_BENCH_READERS"] = argv[1] if len(argv) > 1 else "20"
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]
    command += ["tests/test_rotation.py", "-k", "reaches_every_process"]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
