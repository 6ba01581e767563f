"""One reader process of the rotation tests: build a search path from a credpath.toml, wait for the start
signal (a file), read one connection in a loop until the stop file appears, print JSON: every read as
``[wall-clock time, digest of the password]`` (never a value).

Usage: python -m tests._rotation_worker CONFIG START_FILE STOP_FILE CONN_ID
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
    config, start_file, stop_file, conn_id = argv[:4]
    from credpath._search_path import SearchPath

    path = SearchPath.from_config(config)
    deadline = time.monotonic() + 60
    while not os.path.exists(start_file):
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.005)
    reads: list[tuple[float, str]] = []
    while not os.path.exists(stop_file) and time.monotonic() < deadline + 120:
        asked = time.time()  # when the read began: its answer is at least this fresh
        password = path.get_connection(conn_id).password
        reads.append((round(asked, 4), digest(password)))
        time.sleep(0.01)
    path.close()
    print(json.dumps({"reads": reads}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
