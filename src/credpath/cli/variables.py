"""``credpath variables ...``"""

from __future__ import annotations

from pathlib import Path

import click

from credpath.cli import EXIT_NOT_FOUND, State, cli, fail, handle_errors, pass_state
from credpath.cli.connections import _delete, _list_ids
from credpath.cli.output import echo_json, variable_value


@cli.group()
def variables() -> None:
    """Read, set, list, delete, export and import variables."""


@variables.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print {key, value, source} as JSON.")
@click.option("--reveal", is_flag=True, help="Show values of sensitive keys (e.g. *_password) in clear text.")
@click.option("--default", "default", help="Print this instead of failing when the key is not found.")
@pass_state
@handle_errors
def get_command(state: State, key: str, as_json: bool, reveal: bool, default: str | None) -> None:
    """Resolve a variable. Values of sensitive keys are masked unless --reveal."""
    resolution = state.search_path.lookup("variable", key)
    if resolution is None:
        if default is None:
            fail(f"variable {key!r} not found in any backend of the search path", EXIT_NOT_FOUND)
        value, source = default, None
    else:
        value, source = resolution.value, resolution.source
    shown = variable_value(key, value, reveal)
    if as_json:
        echo_json({"key": key, "value": shown, "source": source})
    else:
        click.echo(shown)


@variables.command("set")
@click.argument("key")
@click.argument("value")
@click.option("--to", "to", help="Backend name to write to (default: metastore, else the first writable).")
@click.option("--no-overwrite", is_flag=True, help="Fail if the key exists in the target.")
@click.option(
    "--on-deleted",
    type=click.Choice(["fail", "recover", "purge"]),
    help="Azure Key Vault: recover or purge a soft-deleted secret of the same name first.",
)
@pass_state
@handle_errors
def set_command(
    state: State, key: str, value: str, to: str | None, no_overwrite: bool, on_deleted: str | None
) -> None:
    """Set a variable (string value; JSON text is stored as is)."""
    options = {"on_deleted": on_deleted} if on_deleted else {}
    target = state.search_path.set_variable(key, value, to=to, overwrite=not no_overwrite, **options)
    click.echo(f"set variable {key!r} in backend {target!r}")


@variables.command("list")
@click.option("--collisions", is_flag=True, help="Only keys held by more than one backend.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
@handle_errors
def list_command(state: State, collisions: bool, as_json: bool) -> None:
    """List variable keys from every backend that can list."""
    _list_ids(state, "variable", collisions, as_json)


@variables.command("delete")
@click.argument("key")
@click.option("--from", "source", help="Backend name to delete from.")
@pass_state
@handle_errors
def delete_command(state: State, key: str, source: str | None) -> None:
    """Delete a variable from one backend."""
    _delete(state, "variable", key, source)


@variables.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--from", "source", help="Only this backend (default: the whole search path).")
@click.option(
    "--file-format", type=click.Choice(["json", "yaml", "env"]), help="Default: from the extension."
)
@pass_state
@handle_errors
def export_command(state: State, file: Path, source: str | None, file_format: str | None) -> None:
    """Export variables in Airflow's file formats. The file may hold secrets: mode 0600."""
    from credpath import transfer

    count = transfer.export_variables(state.search_path, file, source=source, file_format=file_format)
    click.echo(f"exported {count} variable(s) to {file}")


@variables.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "to", help="Backend name to write to.")
@click.option(
    "--overwrite/--no-overwrite",
    default=True,
    show_default=True,
    help="Replace variables that exist in the target (Airflow's import overwrites).",
)
@pass_state
@handle_errors
def import_command(state: State, file: Path, to: str | None, overwrite: bool) -> None:
    """Import variables from an Airflow export file (.json, .yaml, .env)."""
    from credpath import transfer

    result = transfer.import_variables(state.search_path, file, to=to, overwrite=overwrite)
    click.echo(
        f"imported {result.written} variable(s), skipped {result.skipped} existing, into {result.target!r}"
    )
