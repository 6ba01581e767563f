"""``credpath cache stats``, ``clear`` and ``invalidate``: the shared cache tier ([cache] shared)."""

from __future__ import annotations

from typing import Any

import click

from credpath.cli import State, cli, fail, handle_errors, pass_state
from credpath.cli.output import echo_json, echo_table

__all__ = [
    "cache_group",
    "clear_command",
    "invalidate_command",
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


@cache_group.command("invalidate")
@click.argument("ids", nargs=-1)
@click.option(
    "--kind",
    type=click.Choice(["connection", "variable"]),
    default=None,
    help="Only this kind (default: connections and variables with these ids).",
)
@click.option("--all", "everything", is_flag=True, help="Every cached id (as `cache clear`).")
@pass_state
@handle_errors
def invalidate_command(state: State, ids: tuple[str, ...], kind: str | None, everything: bool) -> None:
    """Forget IDS in every process of the deployment (within a second) after a rotation done outside
    credpath (a rotation Lambda, a CI job): the next lookup of each reads its store.

    Needs the tier's key (as the entries do): a writer without it can neither invalidate nor replay.
    """
    if everything == bool(ids):
        fail("give ids to invalidate, or --all (not both)")
    shared = _tier(state)
    search_path = state.search_path
    from credpath import _audit

    if everything:
        removed = _guarded(shared, "invalidating", search_path.invalidate_all)
        _audit.record("invalidate", "*", "*", "ok", tier="shared", removed=removed)
        click.echo(f"invalidated every id ({removed} entries) in shared cache {shared.description}")
        return
    from credpath.model import validate_lookup_key

    kinds = ("connection", "variable") if kind is None else (kind,)
    for key in ids:
        for one in kinds:
            validate_lookup_key(one, key)
            _guarded(shared, "invalidating", lambda k=one, i=key: search_path.invalidate(k, i))
            _audit.record("invalidate", one, key, "ok" if shared.healthy else "error", tier="shared")
    if not shared.healthy:  # the tier logs and swallows its failures (a lookup must go on); this must not
        fail(f"shared cache {shared.description}: invalidating failed (see the warning above)", 1)
    click.echo(
        f"invalidated {len(ids)} id{'' if len(ids) == 1 else 's'} in shared cache {shared.description}"
    )
