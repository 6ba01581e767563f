"""``credpath connections ...``"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from credpath.cli import EXIT_NOT_FOUND, State, cli, fail, handle_errors, pass_state
from credpath.cli.output import connection_record, echo_json, echo_record, echo_table


@cli.group()
def connections() -> None:
    """Read, list, add, delete, export and import connections."""


@connections.command("get")
@click.argument("conn_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (an object, or a list for several ids).")
@click.option("--reveal", is_flag=True, help="Show passwords and sensitive extras in clear text.")
@pass_state
@handle_errors
def get_command(state: State, conn_ids: tuple[str, ...], as_json: bool, reveal: bool) -> None:
    """Resolve one or more connections through the search path (several ids are fetched in batches)."""
    search_path = state.search_path
    if len(conn_ids) > 1:
        search_path.prefetch(connections=list(conn_ids))
    records, missing = [], []
    for conn_id in conn_ids:
        resolution = search_path.lookup("connection", conn_id)
        if resolution is None:
            missing.append(conn_id)
            continue
        records.append(connection_record(resolution.value, resolution.source, reveal))
    if as_json:
        if records:
            echo_json(records[0] if len(conn_ids) == 1 else records)
    else:
        for record in records:
            echo_record(record, title=f"connection {record['conn_id']}")
    for conn_id in missing:
        click.echo(f"credpath: connection {conn_id!r} not found in any backend of the search path", err=True)
    if missing:
        raise SystemExit(EXIT_NOT_FOUND)


@connections.command("list")
@click.option("--collisions", is_flag=True, help="Only ids held by more than one backend.")
@click.option("--json", "as_json", is_flag=True)
@pass_state
@handle_errors
def list_command(state: State, collisions: bool, as_json: bool) -> None:
    """List connection ids from every backend that can list, with the backend that serves each."""
    _list_ids(state, "connection", collisions, as_json)


def _list_ids(state: State, kind: str, collisions: bool, as_json: bool) -> None:
    found, unlistable = state.search_path.list_ids(kind)
    if collisions:
        found = {key: sources for key, sources in found.items() if len(sources) > 1}
    if as_json:
        echo_json(
            {
                "items": [{"id": key, "source": s[0], "also_in": s[1:]} for key, s in found.items()],
                "unlistable_backends": unlistable,
            }
        )
        return
    headers = ("id", "source", "shadowed in") if collisions else ("id", "source", "also in")
    echo_table(headers, [(key, s[0], ", ".join(s[1:])) for key, s in found.items()])
    if unlistable:
        click.echo(f"not listed (these backends cannot list): {', '.join(unlistable)}", err=True)


@connections.command("add")
@click.argument("conn_id")
@click.option("--uri", help="Airflow connection URI.")
@click.option("--json", "json_value", help="Airflow connection JSON.")
@click.option("--conn-type")
@click.option("--host")
@click.option("--login")
@click.option("--password", help="Prefer --uri/--json from a file or prompt; shell history keeps arguments.")
@click.option("--schema")
@click.option("--port", type=int)
@click.option("--extra", help="JSON object.")
@click.option("--description")
@click.option("--to", "to", help="Backend name to write to (default: metastore, else the first writable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing connection.")
@click.option(
    "--on-deleted",
    type=click.Choice(["fail", "recover", "purge"]),
    help="Azure Key Vault: recover or purge a soft-deleted secret of the same name first.",
)
@pass_state
@handle_errors
def add_command(
    state: State,
    conn_id: str,
    uri: str | None,
    json_value: str | None,
    conn_type: str | None,
    host: str | None,
    login: str | None,
    password: str | None,
    schema: str | None,
    port: int | None,
    extra: str | None,
    description: str | None,
    to: str | None,
    overwrite: bool,
    on_deleted: str | None,
) -> None:
    """Add a connection (as --uri, --json, or fields)."""
    from credpath.model import Connection

    fields = {
        "conn_type": conn_type,
        "host": host,
        "login": login,
        "password": password,
        "schema": schema,
        "port": port,
        "extra": extra,
    }
    given = [name for name, value in fields.items() if value is not None]
    if sum(x is not None for x in (uri, json_value)) + bool(given) != 1:
        fail("give exactly one of --uri, --json, or field options (--conn-type, --host, ...)")
    if uri is not None:
        conn = Connection.from_uri(uri, conn_id=conn_id, description=description)
    elif json_value is not None:
        conn = Connection.from_json(json_value, conn_id=conn_id)
        if description is not None:
            conn = replace(conn, description=description)
    else:
        if not conn_type:
            fail("--conn-type is required when adding a connection by fields")
        conn = Connection(conn_id=conn_id, description=description, **fields)
    options = {"on_deleted": on_deleted} if on_deleted else {}
    target = state.search_path.set_connection(conn, to=to, overwrite=overwrite, **options)
    click.echo(f"added connection {conn_id!r} to backend {target!r}")


@connections.command("delete")
@click.argument("conn_id")
@click.option(
    "--from", "source", help="Backend name to delete from (default: metastore, else first writable)."
)
@pass_state
@handle_errors
def delete_command(state: State, conn_id: str, source: str | None) -> None:
    """Delete a connection from one backend."""
    _delete(state, "connection", conn_id, source)


def _delete(state: State, kind: str, key: str, source: str | None) -> None:
    search_path = state.search_path
    delete = search_path.delete_connection if kind == "connection" else search_path.delete_variable
    deleted_from = delete(key, to=source)
    if deleted_from is None:
        fail(f"{kind} {key!r} not found in the target backend", EXIT_NOT_FOUND)
    click.echo(f"deleted {kind} {key!r} from backend {deleted_from!r}")


@connections.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--from", "source", help="Only this backend (default: the whole search path, first match wins)."
)
@click.option(
    "--file-format", type=click.Choice(["json", "yaml", "env"]), help="Default: from the extension."
)
@click.option(
    "--serialization-format",
    type=click.Choice(["uri", "json"]),
    default="uri",
    show_default=True,
    help="How .env files store connections.",
)
@pass_state
@handle_errors
def export_command(
    state: State, file: Path, source: str | None, file_format: str | None, serialization_format: str
) -> None:
    """Export connections in Airflow's file formats (.json, .yaml, .env); the file is mode 0600."""
    from credpath import transfer

    count = transfer.export_connections(
        state.search_path,
        file,
        source=source,
        file_format=file_format,
        serialization_format=serialization_format,
    )
    click.echo(f"exported {count} connection(s) to {file}")


@connections.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "to", help="Backend name to write to (default: metastore, else the first writable).")
@click.option("--overwrite", is_flag=True, help="Replace connections that exist in the target.")
@pass_state
@handle_errors
def import_command(state: State, file: Path, to: str | None, overwrite: bool) -> None:
    """Import connections from an Airflow export file (.json, .yaml, .env). All or nothing: parsed first."""
    from credpath import transfer

    result = transfer.import_connections(state.search_path, file, to=to, overwrite=overwrite)
    click.echo(
        f"imported {result.written} connection(s), skipped {result.skipped} existing, into {result.target!r}"
    )
