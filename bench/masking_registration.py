"""Timing of interleaved secret registration and redaction (moved from tests/test_masking.py, issue 16).

The pattern that made Airflow's masker quadratic: register one secret, log one line, repeat. credpath's
batches merge like a binary counter, so the second 5,000 registrations cost about what the first 5,000 did
(quadratic would be ~3x). The unit test counts batch builds instead of timing them.

Usage: .venv/bin/python bench/masking_registration.py [COUNT]
"""

from __future__ import annotations

import sys
import time

from credpath.masking import Masker


def run(count: int, start: int, masker: Masker) -> float:
    began = time.perf_counter()
    for i in range(start, start + count):
        masker.add(f"value-{i:06d}-tail")
        masker.redact("a short log line")
    return time.perf_counter() - began


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    masker = Masker()
    first = run(count, 0, masker)
    second = run(count, count, masker)
    print(
        f"first {count}: {first * 1e3:.1f} ms; second {count}: {second * 1e3:.1f} ms; "
        f"ratio {second / first:.2f}"
    )


if __name__ == "__main__":
    main()
