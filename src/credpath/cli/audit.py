"""``credpath audit tail`` / ``query`` / ``report``: the audit trail's JSON-lines file ([audit] path).

The file holds no values (see :mod:`credpath._audit`): these commands print its events as they are.
``report`` sets them against the ids the search path can list: ids never read in N days (candidates for
deletion) and ids read by many dags (candidates for splitting).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from credpath.cli import State, cli, fail, handle_errors, pass_state
from credpath.cli.output import echo_json, echo_table

__all__ = ["audit_group", "query_command", "report_command", "tail_command"]


@cli.group("audit")
def audit_group() -> None:
    """Read the audit trail: who read which id, when, from which tier (never a value)."""


def _file(state: State, given: Path | None) -> Path:
    if given is not None:
        return given
    from credpath import _audit

    settings = _audit.read_settings(state.config, os.environ)
    return settings.file(os.environ)


def files_of(path: Path) -> list[Path]:
    """The trail's files, oldest first (``audit.jsonl.N`` ... ``audit.jsonl.1``, ``audit.jsonl``)."""
    rotated = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), candidate))
    return [p for _, p in sorted(rotated, reverse=True)] + ([path] if path.exists() else [])


def events_of(path: Path) -> Iterator[dict[str, Any]]:
    for file in files_of(path):
        with open(file, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    yield json.loads(line)
                except ValueError:  # a line cut by a crash mid-write
                    continue


def _since(text: str | None) -> float | None:
    """``30m``, ``2h``, ``7d`` (or seconds) ago, as epoch seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        return time.time() - float(number) * units[unit]
    except ValueError:
        fail(f"--since: expected a duration such as 30m, 2h or 7d, got {text!r}")
        raise  # unreachable: fail exits


def _stamp(event: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


def _caller(event: dict[str, Any]) -> str:
    if event.get("dag_id"):
        where = f"{event['dag_id']}.{event.get('task_id')}"
        if event.get("map_index") not in (None, -1):
            where += f"[{event['map_index']}]"
        return f"{where} {event.get('run_id')} try {event.get('try_number')}"
    return f"pid {event.get('pid')}@{event.get('host')} ({event.get('user')})"


_HEADERS = ("time", "operation", "kind", "id", "outcome", "tier", "backend", "latency ms", "caller")


def _row(event: dict[str, Any]) -> list[Any]:
    return [
        event.get("time"),
        event.get("operation"),
        event.get("kind"),
        event.get("id"),
        event.get("outcome"),
        event.get("tier"),
        event.get("backend"),
        event.get("latency_ms"),
        _caller(event),
    ]


@audit_group.command("tail")
@click.option("-n", "lines", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they are written.")
@click.option("--file", "given", type=click.Path(dir_okay=False, path_type=Path), help="Audit file to read.")
@pass_state
@handle_errors
def tail_command(state: State, lines: int, follow: bool, given: Path | None) -> None:
    """The last events, as JSON lines."""
    path = _file(state, given)
    if not path.exists():
        fail(f"no audit file at {str(path)!r} (is [audit] enabled?)", 1)
    last: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            last.append(line.rstrip("\n"))
            if len(last) > lines:
                del last[0]
        for line in last:
            click.echo(line)
        while follow:
            line = handle.readline()
            if line:
                click.echo(line.rstrip("\n"))
            else:
                time.sleep(0.25)


@audit_group.command("query")
@click.option("--id", "ident", help="Only this id.")
@click.option("--kind", type=click.Choice(["connection", "variable", "config"]))
@click.option("--dag", help="Only events of this dag_id.")
@click.option("--backend", help="Only events served by this backend.")
@click.option("--outcome", type=click.Choice(["hit", "miss", "error", "denied", "stale", "ok"]))
@click.option("--operation", help="lookup, prefetch, write, delete, migrate, rotate, invalidate, lease.")
@click.option("--since", help="Only events newer than this: 30m, 2h, 7d.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="The newest N.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--file", "given", type=click.Path(dir_okay=False, path_type=Path), help="Audit file to read.")
@pass_state
@handle_errors
def query_command(
    state: State,
    ident: str | None,
    kind: str | None,
    dag: str | None,
    backend: str | None,
    outcome: str | None,
    operation: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    given: Path | None,
) -> None:
    """Events matching every filter given, newest last."""
    after = _since(since)
    wanted = {"id": ident, "kind": kind, "dag_id": dag, "backend": backend, "outcome": outcome}
    wanted["operation"] = operation
    checks = {k: v for k, v in wanted.items() if v is not None}
    found: list[dict[str, Any]] = []
    for event in events_of(_file(state, given)):
        if all(event.get(k) == v for k, v in checks.items()) and (after is None or _stamp(event) >= after):
            found.append(event)
            if len(found) > limit:
                del found[0]
    if as_json:
        echo_json(found)
    else:
        echo_table(_HEADERS, [_row(e) for e in found], title=f"{len(found)} event(s)")


@audit_group.command("report")
@click.option("--unused-days", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--many-dags", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--file", "given", type=click.Path(dir_okay=False, path_type=Path), help="Audit file to read.")
@pass_state
@handle_errors
def report_command(state: State, unused_days: int, many_dags: int, as_json: bool, given: Path | None) -> None:
    """Ids the search path lists that were not read in --unused-days (candidates for deletion), and ids
    read by --many-dags dags or more (candidates for splitting)."""
    from credpath import _audit

    found = _audit.report(
        events_of(_file(state, given)), state.search_path, unused_days=unused_days, many_dags=many_dags
    )
    unused, shared, covered = found["unused"], found["read_by_many_dags"], found["trail_since"]
    if as_json:
        echo_json({"trail_since": covered, "unused": unused, "read_by_many_dags": shared})
        return
    if found["partial"]:
        click.echo(
            f"note: the trail covers less than {unused_days} days (since {covered}): 'unused' is partial"
        )
    echo_table(
        ("kind", "id", "backends", "last read"),
        [(u["kind"], u["id"], ", ".join(u["backends"]), u["last_read"] or "never") for u in unused],
        title=f"not read in {unused_days} days",
    )
    echo_table(
        ("kind", "id", "dags", "reads (day)"),
        [(s["kind"], s["id"], ", ".join(s["dags"]), s["reads_day"]) for s in shared],
        title=f"read by {many_dags} dags or more",
    )
