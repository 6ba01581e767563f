"""Vault read latency and HTTP requests per lookup: credpath vs Airflow's VaultBackend, same OpenBao, one run.

    .venv/bin/python bench/vault_latency.py [--n 300]

Starts an OpenBao dev server, seeds N connections (URI form) and N variables under ``secret/``, then in a
fresh interpreter per side reads every id once (uncached: each id is new to the process) with token auth,
in alternating rounds:

- credpath: ``credpath.backends.vault.VaultBackend`` (this tree, ``.venv``);
- Airflow: ``airflow.providers.hashicorp.secrets.vault.VaultBackend`` (Airflow 3.3.2 venv at
  ``.cache/airflow-venv``, skipped with a note if it is missing).

HTTP requests are counted on the client side (``urllib3``'s ``HTTPConnectionPool.urlopen``: requests
sends through it, and credpath's Vault session calls it directly). Prints a table of
median/p95 per read, the first lookup (login + set-up), and requests per lookup. No secret value is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = ROOT / ".cache" / "airflow-venv" / "bin" / "python"

WORKER = r"""
import json, statistics, sys, time
import urllib3.connectionpool

calls = {"n": 0}
_urlopen = urllib3.connectionpool.HTTPConnectionPool.urlopen
def counting_urlopen(self, *args, **kwargs):
    calls["n"] += 1
    return _urlopen(self, *args, **kwargs)
urllib3.connectionpool.HTTPConnectionPool.urlopen = counting_urlopen

side, addr, token, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import hvac  # noqa: F401 - imported up front on both sides so "first lookup" is network + set-up only
if side == "credpath":
    from credpath.backends.vault import VaultBackend
else:
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

def run(label, fn, ids):
    times = []
    before = calls["n"]
    for key in ids:
        start = time.perf_counter()
        value = fn(key)
        times.append((time.perf_counter() - start) * 1000)
        assert value is not None, f"{label}: miss for {key}"
    return {"times_ms": times, "requests": calls["n"] - before}

backend = VaultBackend(url=addr, token=token)  # both sides: token auth, mount secret, KV v2 default/detected
out = {}
start = time.perf_counter()
before = calls["n"]
assert backend.get_conn_value("conn_first") is not None
out["first"] = {"ms": (time.perf_counter() - start) * 1000, "requests": calls["n"] - before}
out["conn_value"] = run("conn_value", backend.get_conn_value, [f"conn_{i}" for i in range(n)])
out["variable"] = run("variable", backend.get_variable, [f"var_{i}" for i in range(n)])
out["connection"] = run("connection", backend.get_connection, [f"conn_{i}" for i in range(n)])
before = calls["n"]
start = time.perf_counter()
for i in range(n):
    assert backend.get_conn_value(f"missing_{i}") is None
out["miss"] = {"ms": (time.perf_counter() - start) * 1000 / n, "requests": calls["n"] - before}
print(json.dumps(out))
"""


def seed(server: Any, n: int) -> None:
    import requests

    session = requests.Session()
    session.headers["X-Vault-Token"] = server.root_token

    def put(path: str, data: dict[str, str]) -> None:
        session.post(f"{server.addr}/v1/secret/data/{path}", json={"data": data}).raise_for_status()

    put("connections/conn_first", {"conn_uri": "postgres://u:pw-s3cr3t-0@db.example:5432/app"})
    for i in range(n):
        put(f"connections/conn_{i}", {"conn_uri": f"postgres://user{i}:pw-s3cr3t-{i}@db{i}.example:5432/app"})
        put(f"variables/var_{i}", {"value": f"value-{i}"})


def run_side(python: Path, side: str, server: Any, n: int) -> dict[str, Any]:
    result = subprocess.run(
        [str(python), "-c", WORKER, side, server.addr, server.root_token, str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(ROOT),
    )
    if result.returncode != 0:
        raise SystemExit(f"{side} worker failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summary(runs: list[dict[str, Any]], n: int) -> dict[str, str]:
    """Median over rounds of each round's figure (the machine is shared: one round can be noisy)."""
    first_ms = _median([r["first"]["ms"] for r in runs])
    row: dict[str, str] = {"first lookup": f"{first_ms:.1f} ms / {runs[0]['first']['requests']} req"}
    for kind in ("conn_value", "variable", "connection"):
        medians = [_median(r[kind]["times_ms"]) for r in runs]
        p95s = [sorted(r[kind]["times_ms"])[int(n * 0.95) - 1] for r in runs]
        requests = max(r[kind]["requests"] for r in runs) / n
        row[kind] = f"median {_median(medians):.2f} ms, p95 {_median(p95s):.2f} ms, {requests:.2f} req/lookup"
    miss = _median([r["miss"]["ms"] for r in runs])
    row["miss"] = f"{miss:.2f} ms, {max(r['miss']['requests'] for r in runs) / n:.2f} req/lookup"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="distinct ids per kind (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per side, alternating")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.servers._util import stop_process
    from tests.servers.openbao import _start

    with tempfile.TemporaryDirectory() as tmp:
        server = _start(Path(tmp))
        try:
            seed(server, args.n)
            sides = {"credpath": Path(sys.executable)}
            if AIRFLOW_PYTHON.exists():
                sides["airflow"] = AIRFLOW_PYTHON
            else:
                print(f"(no Airflow venv at {AIRFLOW_PYTHON}: Airflow side skipped)")
            results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for _ in range(args.rounds):  # alternate sides, so load from other work hits both alike
                for side, python in sides.items():
                    results[side].append(run_side(python, side, server, args.n))
        finally:
            stop_process(server.proc)

    print(
        f"OpenBao dev server on loopback, token auth, KV v2, {args.n} distinct ids per kind, "
        f"{args.rounds} alternating rounds per side, one run\n"
    )
    rows = {side: summary(data, args.n) for side, data in results.items()}
    for metric in ("first lookup", "conn_value", "variable", "connection", "miss"):
        print(f"{metric}:")
        for side, row in rows.items():
            print(f"  {side:9} {row[metric]}")
    if "airflow" in results:
        print("\nratios (Airflow / credpath, median per uncached read):")
        for kind in ("conn_value", "variable", "connection"):
            a = _median([_median(r[kind]["times_ms"]) for r in results["airflow"]])
            c = _median([_median(r[kind]["times_ms"]) for r in results["credpath"]])
            print(f"  {kind:11} {a / c:.2f}x")


if __name__ == "__main__":
    main()
