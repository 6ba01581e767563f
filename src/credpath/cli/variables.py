"""``credpath variables ...``"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from credpath.cli import EXIT_NOT_FOUND, State, cli, fail, handle_errors, pass_state
from credpath.cli.connections import (
    FILE_FORMATS,
    delete_ids,
    echo_import_summary,
    export_done,
    import_action,
    list_ids,
    read_secret_inputs,
    team_kwargs,
    team_option,
)
from credpath.cli.output import echo_json, output_option, variable_value

__all__ = [
    "delete_command",
    "export_command",
    "get_command",
    "import_command",
    "list_command",
    "set_command",
    "variables",
]


@cli.group()
def variables() -> None:
    """Read, set, list, delete, export and import variables."""


@variables.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print {key, value, source} as JSON.")
@click.option("--reveal", is_flag=True, help="Show values of sensitive keys (e.g. *_password) in clear text.")
@click.option("--default", "default", help="Print this instead of failing when the key is not found.")
@click.option(
    "--version",
    "version",
    help="Read this version from the backends that keep versions (see `connections get --version`).",
)
@team_option
@pass_state
@handle_errors
def get_command(
    state: State,
    key: str,
    as_json: bool,
    reveal: bool,
    default: str | None,
    version: str | None,
    team: str | None,
) -> None:
    """Resolve a variable. Values of sensitive keys are masked unless --reveal."""
    from credpath._lookup.pinned import check_version
    from credpath.model import validate_lookup_key

    validate_lookup_key("variable", key)  # bad input (exit 2), not "not found"
    if version is not None:
        version = check_version(version)
    resolution = state.search_path.lookup("variable", key, version=version, **team_kwargs(team))
    if resolution is None:
        if version is not None:  # --default stands in for a missing key, not a missing version
            fail(
                f"variable {key!r} version {version!r} not found in the backends that keep versions",
                EXIT_NOT_FOUND,
            )
        if default is None:
            fail(f"variable {key!r} not found in any backend of the search path", EXIT_NOT_FOUND)
        value, source = default, None
    else:
        value, source = resolution.value, resolution.source
    shown = variable_value(key, "" if value is None else value, reveal)
    if as_json:
        echo_json({"key": key, "value": shown, "source": source})
    else:
        click.echo(shown)


@variables.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--to", "to", help="Backend name to write to (default: metastore, else the first writable).")
@click.option("--no-overwrite", is_flag=True, help="Fail if the key exists in the target.")
@click.option("--team", "team", help="Owner team (Airflow multi-team; metastore): only that team reads it.")
@click.option(
    "--on-deleted",
    type=click.Choice(["fail", "recover", "purge"]),
    help="Azure Key Vault: recover or purge a soft-deleted secret of the same name first.",
)
@pass_state
@handle_errors
def set_command(
    state: State,
    key: str,
    value: str,
    to: str | None,
    no_overwrite: bool,
    team: str | None,
    on_deleted: str | None,
) -> None:
    """Set a variable (string value; JSON text is stored as is). VALUE '-' reads standard input (a hidden
    prompt on a terminal), so a secret value need not appear on the command line."""
    value = read_secret_inputs({"VALUE": value})["VALUE"] or ""
    to = state.write_target(to, "set_variable", "--on-deleted", on_deleted=on_deleted)
    # A store without owners refuses a team ("has no team-scoped writes").
    target = state.search_path.set_variable(
        key, value, to=to, overwrite=not no_overwrite, team_name=team or None
    )
    click.echo(f"set variable {key!r} in backend {target!r}")


@variables.command("list")
@click.option("--collisions", is_flag=True, help="Only keys held by more than one backend.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--team", "team", help="List as this team (Airflow multi-team); see `connections list`.")
@output_option
@pass_state
@handle_errors
def list_command(state: State, collisions: bool, as_json: bool, team: str | None, output: str | None) -> None:
    """List variable keys from every backend that can list."""
    list_ids(state, "variable", collisions, as_json, team=team, output=output)


@variables.command("delete")
@click.argument("key")
@click.option("--from", "source", help="Backend name to delete from.")
@pass_state
@handle_errors
def delete_command(state: State, key: str, source: str | None) -> None:
    """Delete a variable from one backend."""
    delete_ids(state, "variable", key, source)


@variables.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("--from", "source", help="Only this backend (default: the whole search path).")
@click.option(
    "--file-format", "file_format", type=FILE_FORMATS, help="Default: from the extension (json for '-')."
)
@pass_state
@handle_errors
def export_command(state: State, file: Path, source: str | None, file_format: str | None) -> None:
    """Export variables in Airflow's file formats ('-': standard output). The file may hold secrets: mode
    0600, written to a temporary file and renamed; if a backend fails, exit 1 and nothing is written."""
    from credpath import _transfer as transfer

    count = transfer.export_variables(
        state.search_path, file, source=source, file_format=file_format.lower() if file_format else None
    )
    export_done("variable", count, file)


@variables.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "to", help="Backend name to write to.")
@click.option(
    "-a",
    "--action-on-existing-key",
    "action",
    type=click.Choice(["overwrite", "fail", "skip"]),
    help="What to do with keys that exist in the target (default: overwrite, as Airflow).",
)
@click.option(
    "--overwrite/--no-overwrite",
    default=None,
    help="Shorthand for --action-on-existing-key overwrite / skip.",
)
@pass_state
@handle_errors
def import_command(
    state: State, file: Path, to: str | None, action: str | None, overwrite: bool | None
) -> None:
    """Import variables from an Airflow export file (.json, .yaml, .env). All or nothing: parsed first."""
    from credpath import _transfer as transfer

    on_existing: Any = import_action(action, overwrite, default="overwrite")
    result = transfer.import_variables(state.search_path, file, to=to, on_existing=on_existing)
    echo_import_summary("variable", result)
