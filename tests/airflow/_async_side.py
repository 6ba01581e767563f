"""Run inside the Airflow venv: Airflow's own async connection read (the triggerer's path) on credpath.

stdin: {"conn_id", "var_key", "password", "value", "n"}; the backend comes from AIRFLOW__SECRETS__BACKEND
(credpath's CredpathBackend). ``n`` concurrent ``_async_get_connection`` calls (what a trigger's
``await BaseHook.aget_connection`` runs) while a ticker coroutine measures the loop's lag; then the Execution
API resolver's calls ``aget_variable(key)`` / ``aget_variable(key, team_name=None)``. stdout: after a marker
line, one JSON object of facts (no secret: the password is compared here).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def main() -> None:
    from _side import answer, ticker  # this script's directory is on sys.path
    from airflow.sdk.execution_time.context import _async_get_connection
    from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded

    spec = json.load(sys.stdin)
    backends = ensure_secrets_backend_loaded()
    ours = next(b for b in backends if type(b).__name__ == "CredpathBackend")
    calls = {"aget_connection": 0, "get_connection": 0}
    sync_read, async_read = ours.get_connection, ours.aget_connection

    def counted_sync(*args: Any, **kwargs: Any) -> Any:
        calls["get_connection"] += 1
        return sync_read(*args, **kwargs)

    async def counted_async(*args: Any, **kwargs: Any) -> Any:
        calls["aget_connection"] += 1
        return await async_read(*args, **kwargs)

    ours.get_connection, ours.aget_connection = counted_sync, counted_async
    lags: list[float] = []

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticker(stop, lags))
        await asyncio.sleep(0.05)
        conns = await asyncio.gather(*(_async_get_connection(spec["conn_id"]) for _ in range(spec["n"])))
        variable = await ours.aget_variable(spec["var_key"])
        variable_team = await ours.aget_variable(spec["var_key"], team_name=None)
        missing = await ours.aget_variable("no_such_key")
        stop.set()
        await tick
        return {
            "password_ok": all(c.password == spec["password"] for c in conns),
            "hosts": sorted({c.host for c in conns}),
            "conn_class": f"{type(conns[0]).__module__}.{type(conns[0]).__name__}",
            "variable_ok": variable == spec["value"] and variable_team == spec["value"],
            "missing": missing,
            "calls": calls,
            "max_lag": max(lags),
            "ticks": len(lags),
        }

    facts = asyncio.run(run())
    answer(facts)


if __name__ == "__main__":
    main()
