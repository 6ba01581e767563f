"""What the audit trail and OpenTelemetry spans add to a cached hit, side by side in one run.

Variants, each timing ``get_connection`` and ``get_variable`` on a process-cache hit (the hot path):

- ``off``: auditing off (the hot path's one test of "does anything listen");
- ``trace only``: a subscriber that does nothing (what any subscriber, metrics included, makes a cached
  hit pay: the lookup's trace);
- ``file (default)``: ``[audit] enabled``, file sink, ``cached = "store"``: a repeated process-cache hit
  is traced and checked, not recorded;
- ``file cached=all``: every hit recorded;
- ``file all 0.01``: ``cached = "all"``, ``sample = 0.01``: one repeated hit in a hundred recorded;
- ``file+otel`` / ``file all+otel``: the same with a span per lookup (the SDK's tracer provider, spans
  dropped by a no-op processor: the cost of building them, not of exporting them). Spans follow the
  OpenTelemetry sampler, not ``cached``: every lookup is one.
- ``file+counters`` / ``file all+counters``: the same path with a shared tier (a file tier), whose
  per-deployment read counters the writer thread publishes: every 0.1 s here (100 times the default
  rate, so that publishes land inside every timed round); never on the lookup itself.

Each variant is timed in rounds interleaved with the others (load that changes during the run weighs on
every variant alike); the figure is the best round's µs per call (the least disturbed by other processes),
and the median round's for reference. The writer thread runs meanwhile: its formatting and writing compete
with the lookups for the GIL, and that is part of the cost measured.

    python bench/audit_overhead.py [--calls N] [--rounds N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from credpath import _audit, _usage
from credpath._lookup import trace as _trace
from credpath._search_path import SearchPath
from credpath.protocol import BaseBackend

URI = "postgres://app:pw@db.example:5432/app"


class _Store(BaseBackend):
    """A store whose answers are cached (the hits timed come from the process tier, never from here)."""

    def get_conn_value(self, conn_id: str) -> str | None:
        return URI if conn_id == "db" else None

    def get_variable(self, key: str) -> str | None:
        return "eu-west-1" if key == "region" else None


def _path(shared: Any = None) -> SearchPath:
    path = (
        SearchPath([("store", _Store())])
        if shared is None
        else SearchPath([("store", _Store())], shared=shared)
    )
    path.get_connection("db")
    path.get_variable("region")
    return path


def _variants(folder: Path) -> dict[str, _audit.AuditSettings]:
    file = folder / "audit.jsonl"
    return {
        "off": _audit.AuditSettings(),
        "file (default)": _audit.AuditSettings(enabled=True, path=file),
        "file cached=all": _audit.AuditSettings(enabled=True, path=file, cached="all", queue_size=1_000_000),
        "file all 0.01": _audit.AuditSettings(enabled=True, path=file, cached="all", sample=0.01),
        "file+otel": _audit.AuditSettings(enabled=True, path=file, otel=True),
        "file all+otel": _audit.AuditSettings(
            enabled=True, path=file, cached="all", otel=True, queue_size=1_000_000
        ),
        "file+counters": _audit.AuditSettings(enabled=True, path=file),
        "file all+counters": _audit.AuditSettings(
            enabled=True, path=file, cached="all", queue_size=1_000_000
        ),
    }


#: The variants read through a path with a shared tier (its counters published by the writer thread).
COUNTED = ("file+counters", "file all+counters")


def _shared_tier(folder: Path) -> Any:
    from credpath._shared_cache import FileStore, SharedTier

    _usage.FLUSH_SECONDS = 0.1
    return SharedTier(FileStore(folder / "shared.db"), [b"kQ3pW0m3a2Vw5Zb6cE8-3nJ0c1d2e3f4g5h6i7j8k9A="])


def _install_sdk() -> bool:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return False
    trace.set_tracer_provider(TracerProvider())  # no processor: spans are built, then dropped
    return True


def _time(call: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    otel = _install_sdk()
    with tempfile.TemporaryDirectory() as tmp:
        variants = _variants(Path(tmp))
        if not otel:
            del variants["file+otel"]
        paths = {False: _path(), True: _path(_shared_tier(Path(tmp)))}
        chosen = [paths[False]]
        calls = {
            "get_connection": lambda: chosen[0].get_connection("db"),
            "get_variable": lambda: chosen[0].get_variable("region"),
        }
        samples: dict[tuple[str, str], list[float]] = {(v, c): [] for v in variants for c in calls}
        names = ["off", "trace only", *list(variants)[1:]]
        samples.update({("trace only", c): [] for c in calls})
        for _ in range(args.rounds):
            for name in names:
                _audit.configure(_audit.AuditSettings())
                unsubscribe = _trace.subscribe(lambda context, event: None) if name == "trace only" else None
                if name in variants:
                    _audit.configure(variants[name])
                chosen[0] = paths[name in COUNTED]
                _usage._tiers.clear()  # the other variants publish nothing
                if name in COUNTED:
                    _usage.register(paths[True].shared)
                for call_name, call in calls.items():
                    _time(call, 1000)  # warm
                    samples[(name, call_name)].append(_time(call, args.calls))
                if unsubscribe is not None:
                    unsubscribe()
                _audit.flush(60.0)
        dropped = _audit.counters().get("dropped", 0)
        published = paths[True].shared.store.get_usage(  # type: ignore[union-attr]
            [_usage.name(paths[True].shared, "connection", "db")]
        )
        _audit.configure(_audit.AuditSettings())
    rows = []
    for call_name in calls:
        base = min(samples[("off", call_name)])
        for name in names:
            best = min(samples[(name, call_name)])
            rows.append(
                {
                    "call": call_name,
                    "variant": name,
                    "best_us": round(best, 2),
                    "median_us": round(statistics.median(samples[(name, call_name)]), 2),
                    "added_us": round(best - base, 2),
                }
            )
    print(f"{'call':<16}{'variant':<20}{'best µs':>10}{'median µs':>12}{'added µs':>10}")
    for row in rows:
        print(
            f"{row['call']:<16}{row['variant']:<20}{row['best_us']:>10.2f}{row['median_us']:>12.2f}"
            f"{row['added_us']:>10.2f}"
        )
    print(
        f"events dropped (queue full): {dropped}; "
        f"counter records published for 'db': {sum(map(len, published.values()))}"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
