"""Run inside the Airflow venv: Airflow 3.3.2's LocalFilesystemBackend on one connections and one variables
file. stdin: {"connections", "variables", "cases": [[kind, id, team]]}; answer: the host (connections) or
value (variables) of each case, None on a miss, "error:<Class>" on an exception."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from _side import answer  # this script's directory is on sys.path
    from airflow.secrets.local_filesystem import LocalFilesystemBackend

    spec = json.load(sys.stdin)
    backend = LocalFilesystemBackend(
        connections_file_path=spec["connections"], variables_file_path=spec["variables"]
    )
    out = []
    for kind, key, team in spec["cases"]:
        try:
            if kind == "connection":
                conn = backend.get_connection(key, team_name=team)
                out.append(None if conn is None else conn.host)
            else:
                out.append(backend.get_variable(key, team_name=team))
        except Exception as exc:
            out.append(f"error:{type(exc).__name__}")
    answer(out)


if __name__ == "__main__":
    main()
