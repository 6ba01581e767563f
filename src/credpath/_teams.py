"""Which listed ids a caller can read, by team (Airflow 3's multi-team rule for the metastore).

A store whose listing knows owners (its ``list_*`` method takes ``team_name``: the metastore, env) lists
every team's ids (env: only the global names), while a read sees only the global ones and the caller's
team's (``team_name = :team OR team_name IS NULL``). So ``list`` asks such a store for the team's own
listing, then, in one batched read, which of the ids the caller can read: another team's ids are left out
(and counted), the caller's own team's are marked with the team.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from credpath import _reading as reading
from credpath.protocol import accepts_team_name, call_backend_method, supports

__all__ = [
    "TeamView",
    "team_view",
]


@dataclass
class TeamView:
    found: dict[str, list[str]]  # id -> holders the caller can read it from (search order)
    owned: set[str] = field(default_factory=set)  # ids only the caller's team reads
    hidden: int = 0  # ids of other teams, left out


def team_view(search_path: Any, kind: str, found: dict[str, list[str]], team: str | None) -> TeamView:
    holders = {key: list(sources) for key, sources in found.items()}
    owned: set[str] = set()
    for entry in search_path.entries:
        backend = entry.backend
        if not supports(backend, "list"):
            continue
        method = backend.list_connections if kind == "connection" else backend.list_variables
        if not accepts_team_name(method):
            continue
        if team is not None:
            # A team's own names the team-less listing leaves out (env: AIRFLOW_CONN__<TEAM>___<ID>).
            try:
                own = call_backend_method(method, team_name=team)
            except Exception:
                own = []
            for key in own:
                if key not in holders and entry.wants(kind, key):
                    holders[key] = [entry.name]
        ids = [key for key, sources in holders.items() if entry.name in sources]
        if not ids:
            continue
        try:
            readable = set(reading.read_many(backend, kind, ids, team_name=team))  # type: ignore[arg-type]
            shared = readable if team is None else set(reading.read_many(backend, kind, ids))  # type: ignore[arg-type]
        except Exception:  # a read that fails says nothing about owners: the listing stays as listed
            continue
        for key in ids:
            if key not in readable:
                holders[key].remove(entry.name)
            elif key not in shared:
                owned.add(key)
    visible = {key: sources for key, sources in holders.items() if sources}
    return TeamView(visible, owned & set(visible), len(holders) - len(visible))
