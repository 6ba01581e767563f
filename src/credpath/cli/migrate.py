"""``credpath migrate``: copy connections and variables between any two backends (plan, apply, verify)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from credpath.cli import State, cli, fail, handle_errors, pass_state
from credpath.errors import ConfigError

if TYPE_CHECKING:
    from credpath.protocol import Backend

__all__ = [
    "migrate_command",
    "resolve_backend",
]

_SHOWN_ROWS = 100  # plan rows printed; the --report file has all of them


def _kwargs(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Position only: the text may hold a token.
        raise ConfigError(f"{option} is not valid JSON (line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{option} must be a JSON object, got {type(data).__name__}")
    return data


def resolve_backend(
    state: State,
    name: str,
    kwargs: dict[str, Any] | None,
    option: str,
    settings: dict[str, Any] | None = None,
) -> Backend:
    """A backend named in the config, or a backend type (alias or class path) built with ``kwargs``.

    ``settings`` are store settings given as CLI flags (``--on-deleted``): the backend is built with them
    over its configured kwargs (or ``kwargs``); a backend without such a setting is refused (exit 2)."""
    from credpath.protocol import BaseBackend
    from credpath.registry import ALIASES, create_backend

    if kwargs is None:
        try:
            backend = state.search_path.backend(name)
        except ConfigError:
            if name not in ALIASES and "." not in name:
                raise
        else:
            if not settings:
                return backend
            state.configure_backend(name, _flags(settings), **settings)
            return state.search_path.backend(name)
    setting = f"{_flags(settings)}: {option}" if settings else option
    backend = create_backend(name, {**(kwargs or {}), **(settings or {})}, setting=setting)
    if isinstance(backend, BaseBackend):
        backend.name = name
    return backend  # type: ignore[no-any-return]


def _flags(settings: dict[str, Any]) -> str:
    return ", ".join("--" + key.replace("_", "-") for key in settings)


def _progress(enabled: bool) -> tuple[AbstractContextManager[Any], Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr (done/total, rate, time left), or nothing (not a terminal, --quiet)."""
    if not enabled:
        return nullcontext(), None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f}/s")

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def tick(phase: str, advance: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total or None)
        progress.update(tasks[phase], advance=advance, total=total or None)

    return progress, tick


def _invalidate_written(state: State, report: Any) -> None:
    """Every id written into the destination is dropped from the caches of the deployment (the shared
    tier's processes within a second): a cached copy, or a cached miss, would hide the migrated value."""
    search_path = state.search_path
    if search_path.shared is None:
        return  # only this process's cache, which ends with it
    for item in report.plan.items:
        if item.status in ("written", "verified"):
            search_path.invalidate(item.kind, item.key)


def _print_plan(report: Any) -> None:
    from credpath.cli.output import echo_table

    rows = [i for i in report.plan.items if i.action != "unchanged" or i.status == "failed"]
    summary = report.summary()
    unchanged = len(report.plan.items) - len(rows)
    if rows:
        shown = rows[:_SHOWN_ROWS]
        echo_table(
            ("kind", "id", "action", "status", "reason"),
            [(i.kind, i.key, i.action, i.status, i.reason) for i in shown],
            title=f"migration plan {report.plan.source} -> {report.plan.destination}",
        )
        hidden = len(rows) - len(shown)
        if hidden or unchanged:
            parts = [f"{hidden} more row(s)"] if hidden else []
            parts += [f"{unchanged} unchanged id(s)"] if unchanged else []
            click.echo(f"not shown: {' and '.join(parts)}; write them all with --report FILE")
    counts = ", ".join(f"{k.replace('_', ' ')} {summary[k]}" for k in list(summary)[1:-2])
    line = f"{summary['total']} id(s): {counts}; written {summary['written']}, verified {summary['verified']}"
    click.echo(("dry run (nothing written): " if report.dry_run else "") + line)
    if report.aborted:
        click.echo(f"credpath: error: migration aborted: {report.aborted}", err=True)
    for item in report.failed[:_SHOWN_ROWS]:
        click.echo(f"credpath: error: {item.kind} {item.key!r} failed: {item.reason}", err=True)
    if len(report.failed) > _SHOWN_ROWS:
        click.echo(
            f"credpath: error: {len(report.failed) - _SHOWN_ROWS} more failed id(s); see --report FILE",
            err=True,
        )


@cli.command("migrate")
@click.option(
    "--from",
    "source",
    required=True,
    help="Backend name from the config, or a type (vault, airflow-db, ...).",
)
@click.option("--from-kwargs", help="JSON object of kwargs: --from is then a backend type.")
@click.option("--to", "destination", required=True, help="Backend name from the config, or a type.")
@click.option("--to-kwargs", help="JSON object of kwargs: --to is then a backend type.")
@click.option("--connections", is_flag=True, help="Migrate connections (default: connections and variables).")
@click.option("--variables", is_flag=True, help="Migrate variables (default: connections and variables).")
@click.option("--include", multiple=True, help="Glob on ids (repeatable or comma-separated).")
@click.option("--exclude", multiple=True, help="Glob on ids to leave out (repeatable or comma-separated).")
@click.option("--dry-run", is_flag=True, help="Show the plan and stop.")
@click.option(
    "--on-conflict",
    type=click.Choice(["skip", "overwrite", "fail"]),
    default="skip",
    show_default=True,
    help="An id that exists in the destination with a different value.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=8,
    show_default=True,
    help="Writes at once at most (halved while the store throttles, grown back slowly).",
)
@click.option(
    "--verify",
    type=click.Choice(["confirm", "read", "none"]),
    default="confirm",
    show_default=True,
    help="confirm: a write the store confirms (Vault KV v2 version, Secrets Manager VersionId) is verified "
    "by it, the rest are read back; read: read every written value back; none: do not verify.",
)
@click.option(
    "--format",
    "connection_format",
    type=click.Choice(["uri", "json"]),
    default="json",
    show_default=True,
    help="How connections are written to stores that hold strings.",
)
@click.option(
    "--on-deleted",
    type=click.Choice(["fail", "recover", "purge"]),
    help="Azure Key Vault: a name that is soft-deleted in the destination is recovered or purged first.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON report (ids, actions, reasons; never values) to this file.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar (it shows only on a terminal anyway).")
@pass_state
@handle_errors
def migrate_command(
    state: State,
    source: str,
    from_kwargs: str | None,
    destination: str,
    to_kwargs: str | None,
    connections: bool,
    variables: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    dry_run: bool,
    on_conflict: str,
    concurrency: int,
    verify: str,
    connection_format: str,
    on_deleted: str | None,
    report_file: Path | None,
    quiet: bool,
) -> None:
    """Copy connections and variables from --from to --to: plan, write and verify.

    Idempotent: a second run finds everything unchanged and writes nothing. Exit codes: 0 done,
    1 some entries failed (listed by id), 2 bad input.
    """
    from credpath._migrate import Migrator, parse_globs
    from credpath._transfer import write_private
    from credpath.protocol import BaseBackend

    # The destination first: a store setting rebuilds the configured search path the source may come from.
    settings = {"on_deleted": on_deleted} if on_deleted else None
    dst = resolve_backend(state, destination, _kwargs(to_kwargs, "--to-kwargs"), "--to", settings)
    src = resolve_backend(state, source, _kwargs(from_kwargs, "--from-kwargs"), "--from")
    if src is dst or (source == destination and from_kwargs == to_kwargs):
        fail("--from and --to are the same backend")
    context, tick = _progress(sys.stderr.isatty() and not quiet)
    if not connections and not variables:
        connections = variables = True
    migrator = Migrator(
        src,
        dst,
        connections=connections,
        variables=variables,
        include=parse_globs(include),
        exclude=parse_globs(exclude),
        on_conflict=on_conflict,
        concurrency=concurrency,
        verify=verify,
        connection_format="uri" if connection_format == "uri" else "json",
        progress=tick,
    )
    try:
        with context:
            report = migrator.run(dry_run=dry_run)
    finally:
        for backend in (src, dst):
            if isinstance(backend, BaseBackend):
                backend.close()
            elif callable(close := getattr(backend, "close", None)):  # a foreign object may have one
                close()
    if not dry_run:
        _invalidate_written(state, report)
    if report_file is not None:
        write_private(report_file, report.to_json() + "\n")
    _print_plan(report)
    sys.exit(report.exit_code)
