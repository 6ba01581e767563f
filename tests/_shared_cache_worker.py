"""One task-like process for the shared cache tests: build a search path from a credpath.toml, wait for
the start signal (a file), look ids up, print JSON (digests of values, never a value).

Usage: python -m tests._shared_cache_worker CONFIG START_FILE KIND:ID[,KIND:ID...] [--hold-lock ID]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time


def digest(value: object) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:16]


def main(argv: list[str]) -> int:
    config, start_file, wanted = argv[:3]
    from credpath._search_path import SearchPath

    path = SearchPath.from_config(config)
    if "--hold-lock" in argv:  # take a key's lock, say so, and hang (the test kills this process)
        conn_id = argv[argv.index("--hold-lock") + 1]
        assert path.shared.acquire(("connection", conn_id, None)) is True
        print(json.dumps({"holding": True}), flush=True)
        time.sleep(600)
        return 0
    deadline = time.monotonic() + 60
    while not os.path.exists(start_file):
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.005)
    out: dict[str, object] = {}
    for item in wanted.split(","):
        kind, key = item.split(":", 1)
        if kind == "connection":
            conn = path.get_connection(key)
            out[item] = digest(conn.password)
        else:
            out[item] = digest(path.get_variable(key))
    path.close()
    # Whether this process built an HTTP client for the store (Vault's, on its first store read): the
    # costly step that the shared tier's leases should leave to few processes.
    built = "requests" in sys.modules
    print(json.dumps({"values": out, "store_client": built}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
