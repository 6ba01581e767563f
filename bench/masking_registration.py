"""The masker's costs, side by side (a script, not a test).

1. Registration interleaved with redaction: register one secret, log one line, repeat (the pattern that
   made Airflow's masker quadratic). credpath's batches merge like a binary counter, so the second COUNT
   registrations cost about what the first COUNT did (quadratic would be ~3x).
2. Cost per log line with content patterns ([core] mask_secrets_content_patterns) off and on, for 10 to
   COUNT registered secrets, next to Airflow's way (one ``re`` alternation of every registered secret,
   then the union of the content patterns over every line; built here from the same expressions so the
   Airflow venv is not needed). credpath's cost per line should not grow with the number of secrets.

Usage: .venv/bin/python bench/masking_registration.py [COUNT]
"""

from __future__ import annotations

import re
import sys
import time

from credpath._masking import KNOWN_SECRET_PATTERNS, Masker

LINES = {
    "plain": "INFO - Task exited with return code 0 after 12.3 s on worker-7 (no secret in it at all)",
    "secret": "DEBUG - connecting with value-000042-tail to db.internal:5432 as app",
    "aws key": "DEBUG - using AKIAIOSFODNN7EXAMPLE for s3://bucket/key (from the environment)",
}


def registration(count: int, start: int, masker: Masker) -> float:
    began = time.perf_counter()
    for i in range(start, start + count):
        masker.add(f"value-{i:06d}-tail")
        masker.redact("a short log line")
    return time.perf_counter() - began


def per_line_us(func, line: str, repeat: int = 3000) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for _ in range(repeat):
            func(line)
        best = min(best, (time.perf_counter() - began) / repeat)
    return best * 1e6


def airflow_style(secrets: list[str]):  # type: ignore[no-untyped-def]
    replacer = re.compile("|".join(re.escape(s) for s in secrets))
    content = re.compile("|".join(f"(?:{p})" for p in KNOWN_SECRET_PATTERNS.values()))

    def redact(line: str) -> str:
        return content.sub("***", replacer.sub("***", line))

    return redact


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    masker = Masker()
    first = registration(count, 0, masker)
    second = registration(count, count, masker)
    print(
        f"registration: first {count}: {first * 1e3:.1f} ms; second {count}: {second * 1e3:.1f} ms; "
        f"ratio {second / first:.2f}"
    )
    print()
    print("| registered secrets | line | credpath, patterns off (µs) | credpath, patterns on (µs) | "
          "Airflow's way, patterns on (µs) |")  # fmt: skip
    print("| ---: | --- | ---: | ---: | ---: |")
    for n in (10, 1000, count):
        secrets = [f"value-{i:06d}-tail" for i in range(n)]
        off, on = Masker(content_patterns=False), Masker(content_patterns=True)
        off.add_all(secrets)
        on.add_all(secrets)
        airflow = airflow_style(secrets)
        for name, line in LINES.items():
            costs = [per_line_us(func, line) for func in (off.redact, on.redact, airflow)]
            print(f"| {n} | {name} | " + " | ".join(f"{c:.1f}" for c in costs) + " |")


if __name__ == "__main__":
    main()
