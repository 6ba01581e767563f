"""The full-size rotation run (CI runs it shortened), and the staleness window of each mechanism.

1. Invalidation: 20 reader processes on the file tier and on Redis while 100 rotations happen, half through
   credpath writes and half out of band + ``credpath cache invalidate`` (tests/test_rotation.py). Prints, per
   tier, the longest time any process served a rotated-away value after its invalidation and the store reads
   counted at the proxy in front of OpenBao.
2. The store's own word (tests/test_rotation_changes.py, with the same reader count): Secrets Manager's
   rotation date (0 old reads after it), the version checks at expiry (store calls per expiry, unchanged and
   changed), the Kubernetes watch (worst staleness in reader processes), and a TTL alone (never past it).

Usage: python bench/rotation.py [ROTATIONS] [READERS] [--changes-only]
(needs the test servers: OpenBao, moto_server, redis-server)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run pytest, echoing its output; returns its exit code and the figures the tests printed."""
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    sys.stdout.write(proc.stdout[-4000:])
    figures = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    return proc.returncode, figures


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    env = dict(os.environ)
    env["CREDPATH_BENCH_ROTATIONS"] = args[0] if args else "100"
    env["CREDPATH_BENCH_READERS"] = args[1] if len(args) > 1 else "20"
    base = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]
    figures: list[str] = []
    code = 0
    if "--changes-only" not in argv:
        rc, found = run([*base, "tests/test_rotation.py", "-k", "reaches_every_process"], env)
        code, figures = code or rc, figures + [f"[invalidation] {f}" for f in found]
    rc, found = run([*base, "tests/test_rotation_changes.py"], env)
    code, figures = code or rc, figures + found
    print("\nstaleness window and store calls per mechanism:")
    for line in figures:
        print(f"  {line}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
