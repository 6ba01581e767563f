"""``credpath cache stats`` and ``credpath cache clear``: the shared cache tier ([cache] shared)."""

from __future__ import annotations

from typing import Any

import click

from credpath.cli import State, cli, fail, handle_errors, pass_state
from credpath.cli.output import echo_json, echo_table

__all__ = [
    "cache_group",
    "clear_command",
    "stats_command",
]


@cli.group("cache")
def cache_group() -> None:
    """Inspect or empty the shared cache tier ([cache] shared)."""


def _tier(state: State) -> Any:
    shared = state.search_path.shared
    if shared is None:
        fail("no shared cache tier is configured (set [cache] shared or CREDPATH_CACHE_SHARED)")
    return shared


def _guarded(shared: Any, doing: str, func: Any) -> Any:
    try:
        return func()
    except Exception as exc:  # the tier is down or unreadable: say which, never the URL's password
        fail(f"shared cache {shared.description}: {doing} failed ({type(exc).__name__})", 1)


@cache_group.command("stats")
@click.option("--json", "as_json", is_flag=True)
@pass_state
@handle_errors
def stats_command(state: State, as_json: bool) -> None:
    """Hits and misses per tier and store calls avoided, summed over every process using the tier.

    Processes publish their counters after a store read, at most once a second on hits, and at exit.
    """
    shared = _tier(state)
    from credpath._shared_cache import stats_report

    data = _guarded(shared, "reading its counters", lambda: stats_report(shared))
    process_hits, shared_hits = data["process"]["hits"], data["shared"]["hits"]
    if as_json:
        echo_json(data)
        return
    rows = [
        ("process", "hits", process_hits),
        ("shared", "entries", data["shared"]["entries"]),
        ("shared", "hits", shared_hits),
        ("shared", "misses", data["shared"]["misses"]),
        (
            "shared",
            "lock waits / takeovers",
            f"{data['shared']['lock_waits']} / {data['shared']['lock_takeovers']}",
        ),
        (
            "shared",
            "undecryptable / errors",
            f"{data['shared']['undecryptable']} / {data['shared']['errors']}",
        ),
        ("store", "reads", data["store"]["reads"]),
        ("store", "stale values served", data["store"]["stale_served"]),
        ("store", "store calls avoided", data["store"]["calls_avoided"]),
    ]
    echo_table(("tier", "counter", "value"), rows, title=f"shared cache {shared.description}")


@cache_group.command("clear")
@pass_state
@handle_errors
def clear_command(state: State) -> None:
    """Remove every entry, lock and counter of the shared tier (the next lookups read the stores)."""
    shared = _tier(state)
    removed = _guarded(shared, "clearing", shared.clear)
    click.echo(
        f"removed {removed} entr{'y' if removed == 1 else 'ies'} from shared cache {shared.description}"
    )
