"""``credpath connections ...``"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from credpath.cli import EXIT_NOT_FOUND, State, cli, fail, handle_errors, pass_state
from credpath.cli.output import (
    airflow_connection,
    connection_record,
    echo_as,
    echo_json,
    echo_record,
    echo_table,
    output_option,
)

__all__ = [
    "FILE_FORMATS",
    "STDIN",
    "add_command",
    "connections",
    "delete_command",
    "delete_ids",
    "echo_import_summary",
    "export_command",
    "export_done",
    "get_command",
    "import_action",
    "import_command",
    "list_command",
    "list_ids",
    "read_secret_inputs",
    "team_kwargs",
    "team_option",
]


@cli.group()
def connections() -> None:
    """Read, list, add, delete, export and import connections."""


# --- helpers shared with `credpath variables` --------------------------------------------------------

STDIN = "-"


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def read_secret_inputs(values: dict[str, str | None]) -> dict[str, str | None]:
    """Replace a ``-`` value by standard input (or a hidden prompt on a terminal): secrets need never sit
    on a command line, where ``ps`` and shell history show them. ``values`` maps option name -> value."""
    dashed = [name for name, value in values.items() if value == STDIN]
    if not dashed:
        return values
    if len(dashed) > 1:
        fail(f"only one option can read standard input ('-'), got {', '.join(dashed)}")
    name = dashed[0]
    if _stdin_is_terminal():
        text = click.prompt(name, hide_input=True, prompt_suffix=": ", show_default=False)
    else:
        text = sys.stdin.read()
        # One line ending is the terminator `echo` and here-strings add, not part of the value.
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
    if not text:  # an empty pipe or prompt is a mistake, never the secret
        fail(f"{name} '-': standard input was empty; nothing was stored")
    return {**values, name: text}


def team_option(func: Any) -> Any:
    return click.option(
        "--team",
        "team",
        help="Team (Airflow multi-team): look up the team's secrets first, as Airflow does for its tasks.",
    )(func)


def team_kwargs(team: str | None) -> dict[str, str]:
    # Passed only when given, so a search path without team support still serves team-less reads.
    return {"team_name": team} if team else {}


def import_action(action: str | None, overwrite: bool | None, default: str) -> str:
    """The --action-on-existing-key / --overwrite pair as one action (they must agree when both given)."""
    if action is not None and overwrite is not None and (action == "overwrite") != overwrite:
        flag = "--overwrite" if overwrite else "--no-overwrite"
        fail(f"{flag} contradicts --action-on-existing-key {action}; give one of them")
    if action is not None:
        return action
    if overwrite is not None:
        return "overwrite" if overwrite else "skip"
    return default


def echo_import_summary(kind: str, result: Any) -> None:
    total = len(result.added) + len(result.overwritten) + len(result.skipped)
    click.echo(
        f"imported {result.written} of {total} {kind}(s) into {result.target!r}: {len(result.added)} added, "
        f"{len(result.overwritten)} overwritten, {len(result.skipped)} skipped (already there)"
    )
    if result.overwritten:
        click.echo(f"overwritten: {', '.join(result.overwritten)}")
    if result.skipped:
        click.echo(f"skipped: {', '.join(result.skipped)}")


def export_done(kind: str, count: int, file: Path) -> None:
    from credpath._transfer import is_stdout

    # With `-` the export is on stdout: the summary goes to stderr so the output stays a valid file.
    where = "standard output" if is_stdout(file) else str(file)
    click.echo(f"exported {count} {kind}(s) to {where}", err=is_stdout(file))


FILE_FORMATS = click.Choice(["json", "yaml", "env"], case_sensitive=False)


@connections.command("get")
@click.argument("conn_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (an object, or a list for several ids).")
@click.option("--reveal", is_flag=True, help="Show passwords and sensitive extras in clear text.")
@click.option(
    "--version",
    "version",
    help="Read this version (Vault KV v2 number, Secrets Manager VersionId or stage, GCP number, Azure id) "
    "from the backends that keep versions; ID@VERSION says the same for one id.",
)
@team_option
@output_option
@pass_state
@handle_errors
def get_command(
    state: State,
    conn_ids: tuple[str, ...],
    as_json: bool,
    reveal: bool,
    version: str | None,
    team: str | None,
    output: str | None,
) -> None:
    """Resolve one or more connections through the search path (several ids are fetched in batches)."""
    from credpath.model import validate_lookup_key

    def split_suffix(conn_id: str) -> tuple[str, str | None]:
        if "@" not in conn_id and version is None:  # the pinning module only when a pin is asked for
            return conn_id, None
        from credpath._lookup.pinned import split_suffix

        return split_suffix(conn_id)

    def check_version(version: str) -> str:
        from credpath._lookup.pinned import check_version

        return check_version(version)

    pins: dict[str, str | None] = {}
    for conn_id in conn_ids:  # bad input (exit 2) before any store is asked, not "not found"
        plain, pin = split_suffix(conn_id)
        if pin is not None and version is not None:
            fail(f"connection {conn_id!r}: give the version as --version or as a suffix, not both")
        validate_lookup_key("connection", plain)
        pins[conn_id] = check_version(version) if version is not None else pin
    search_path = state.search_path
    if len(conn_ids) > 1 and not team and not any(pins.values()):  # prefetch fills the team-less cache only
        search_path.prefetch(connections=list(conn_ids))
    if as_json and output:
        fail("give --json or -o/--output, not both")
    records, missing, airflow_records = [], [], []
    for conn_id in conn_ids:
        resolution = search_path.lookup(
            "connection", split_suffix(conn_id)[0], version=pins[conn_id], **team_kwargs(team)
        )
        if resolution is None:
            missing.append(conn_id)
            continue
        records.append(connection_record(resolution.value, resolution.source, reveal))
        airflow_records.append(airflow_connection(resolution.value, reveal))
    if output:
        if airflow_records:
            echo_as(airflow_records, output)
    elif as_json:
        if records:
            echo_json(records[0] if len(conn_ids) == 1 else records)
    else:
        for record in records:
            echo_record(record, title=f"connection {record['conn_id']}")
    for conn_id in missing:
        pin = pins[conn_id]
        what = f"connection {split_suffix(conn_id)[0]!r}" + ("" if pin is None else f" version {pin!r}")
        where = "any backend of the search path" if pin is None else "the backends that keep versions"
        click.echo(f"credpath: error: {what} not found in {where}", err=True)
    if missing:
        raise SystemExit(EXIT_NOT_FOUND)


@connections.command("list")
@click.option("--collisions", is_flag=True, help="Only ids held by more than one backend.")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--team",
    "team",
    help="List as this team (Airflow multi-team): the global ids and the team's own, marked with it. "
    "Without it, other teams' ids are left out (counted on stderr).",
)
@output_option
@pass_state
@handle_errors
def list_command(state: State, collisions: bool, as_json: bool, team: str | None, output: str | None) -> None:
    """List connection ids from every backend that can list, with the backend that serves each."""
    list_ids(state, "connection", collisions, as_json, team=team, output=output)


def list_ids(
    state: State,
    kind: str,
    collisions: bool,
    as_json: bool,
    *,
    team: str | None = None,
    output: str | None = None,
) -> None:
    from credpath._teams import team_view

    if as_json and output:
        fail("give --json or -o/--output, not both")
    listing = state.search_path.list_ids(kind)  # type: ignore[arg-type]
    unlistable, failed = listing.cannot_list, listing.failed
    view = team_view(state.search_path, kind, listing.found, team)
    found = view.found
    if collisions:
        found = {key: sources for key, sources in found.items() if len(sources) > 1}

    def owner(key: str) -> str | None:
        return team if key in view.owned else None

    if output:
        echo_as(
            [
                {f"{'conn_id' if kind == 'connection' else 'key'}": key, "source": s[0], "team": owner(key)}
                for key, s in found.items()
            ],
            output,
        )
    elif as_json:
        echo_json(
            {
                "items": [
                    {"id": key, "source": s[0], "also_in": s[1:], "team": owner(key)}
                    for key, s in found.items()
                ],
                "unlistable_backends": unlistable,
                "failed_backends": failed,
                "other_teams_ids": view.hidden,
            }
        )
    else:
        headers = ["id", "source", "shadowed in" if collisions else "also in"]
        rows = [[key, s[0], ", ".join(s[1:])] for key, s in found.items()]
        if team:
            headers.append("team")
            rows = [[*row, owner(row[0]) or ""] for row in rows]
        echo_table(headers, rows, empty=f"no {kind}s" + (" with collisions" if collisions else ""))
    if view.hidden:
        whose = "other teams" if team else "teams"
        click.echo(
            f"{view.hidden} {kind} id(s) owned by {whose} not listed (only a team reads its own: --team)",
            err=True,
        )
    if not output and not as_json:
        if unlistable:
            click.echo(f"not listed (these backends cannot list): {', '.join(unlistable)}", err=True)
    for reason in failed.values():
        # A failure is not "cannot list": the listing is incomplete, and the exit code says so.
        click.echo(f"credpath: error: {reason}", err=True)
    if failed:
        raise SystemExit(EXIT_NOT_FOUND)


@connections.command("add")
@click.argument("conn_id")
@click.option("--conn-uri", "--uri", "uri", help="Airflow connection URI ('-': read it from standard input).")
@click.option("--conn-json", "--json", "json_value", help="Airflow connection JSON ('-': standard input).")
@click.option("--conn-type", "conn_type", help="Connection type; required unless --conn-uri/--conn-json.")
@click.option("--conn-host", "--host", "host")
@click.option("--conn-login", "--login", "login")
@click.option(
    "--conn-password",
    "--password",
    "password",
    help="'-' reads it from standard input (a hidden prompt on a terminal): never type it as an argument.",
)
@click.option("--conn-schema", "--schema", "schema")
@click.option("--conn-port", "--port", "port", help="Port, 0-65535.")
@click.option("--conn-extra", "--extra", "extra", help="Extra as a JSON object ('-': standard input).")
@click.option("--conn-description", "--description", "description")
@click.option("--to", "to", help="Backend name to write to (default: metastore, else the first writable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing connection.")
@click.option("--team", "team", help="Owner team (Airflow multi-team; metastore): only that team reads it.")
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
    port: str | None,
    extra: str | None,
    description: str | None,
    to: str | None,
    overwrite: bool,
    team: str | None,
    on_deleted: str | None,
) -> None:
    """Add a connection: --conn-uri, --conn-json, or --conn-type with field options (Airflow's flags).

    As in `airflow connections add`, --conn-extra may accompany --conn-uri (it replaces the URI's extra),
    and the field options may not. Give a secret as '-' to read it from standard input.
    """
    from credpath.model import Connection, validate_key

    validate_key(conn_id, max_length=200, what="connection id")  # Airflow's check in `connections add`
    secrets = read_secret_inputs(
        {"--conn-uri": uri, "--conn-json": json_value, "--conn-password": password, "--conn-extra": extra}
    )
    uri, json_value = secrets["--conn-uri"], secrets["--conn-json"]
    password, extra = secrets["--conn-password"], secrets["--conn-extra"]
    if uri is not None and json_value is not None:
        fail("give --conn-uri or --conn-json, not both")
    if uri is None and json_value is None and not conn_type:
        fail("give --conn-uri, --conn-json, or --conn-type with field options (--conn-host, ...)")
    if uri is not None or json_value is not None:
        flag = "--conn-uri" if uri is not None else "--conn-json"
        fields = {
            "--conn-type": conn_type,
            "--conn-host": host,
            "--conn-login": login,
            "--conn-password": password,
            "--conn-schema": schema,
            "--conn-port": port,
        }
        if json_value is not None:
            fields["--conn-extra"] = extra
        clashing = [name for name, value in fields.items() if value is not None]
        if clashing:
            fail(f"{', '.join(clashing)} cannot be combined with {flag}")
    if uri is not None:
        conn = Connection.from_uri(uri, conn_id=conn_id, description=description)
        if not conn.conn_type:
            fail("--conn-uri needs a '<conn_type>://' scheme")  # Airflow's _valid_uri check
        if extra is not None:
            conn = replace(conn, extra=extra)
    elif json_value is not None:
        conn = Connection.from_json(json_value, conn_id=conn_id)
        if not conn.conn_type:
            fail("--conn-json needs a conn_type")  # as `airflow connections add --conn-json`
        if description is not None:
            conn = replace(conn, description=description)
    else:
        conn = Connection(
            conn_id=conn_id,
            conn_type=conn_type,
            description=description,
            host=host,
            login=login,
            password=password,
            schema=schema,
            port=port,  # type: ignore[arg-type]  # Connection parses it (a bad port names the field)
            extra=extra,
        )
    to = state.write_target(to, "set_connection", "--on-deleted", on_deleted=on_deleted)
    # A store without owners refuses a team ("has no team-scoped writes").
    target = state.search_path.set_connection(conn, to=to, overwrite=overwrite, team_name=team or None)
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
    delete_ids(state, "connection", conn_id, source)


def delete_ids(state: State, kind: str, key: str, source: str | None) -> None:
    search_path = state.search_path
    delete = search_path.delete_connection if kind == "connection" else search_path.delete_variable
    deleted_from = delete(key, to=source)
    if deleted_from is None:
        fail(f"{kind} {key!r} not found in the target backend", EXIT_NOT_FOUND)
    click.echo(f"deleted {kind} {key!r} from backend {deleted_from!r}")


@connections.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option(
    "--from", "source", help="Only this backend (default: the whole search path, first match wins)."
)
@click.option(
    "--file-format", "file_format", type=FILE_FORMATS, help="Default: from the extension (json for '-')."
)
@click.option("--format", "legacy_format", type=FILE_FORMATS, hidden=True)  # Airflow's deprecated spelling
@click.option(
    "--serialization-format",
    type=click.Choice(["uri", "json"], case_sensitive=False),
    help="How a .env file stores connections (default uri); only with the env file format, as in Airflow.",
)
@pass_state
@handle_errors
def export_command(
    state: State,
    file: Path,
    source: str | None,
    file_format: str | None,
    legacy_format: str | None,
    serialization_format: str | None,
) -> None:
    """Export connections in Airflow's file formats (.json, .yaml, .env); '-' writes to standard output.

    Everything is read first: if a backend fails, the command exits 1 and writes nothing. The file is
    written to a temporary file in the same directory (mode 0600) and renamed into place.
    """
    from credpath import _transfer as transfer

    if file_format and legacy_format:
        fail("--format is the deprecated spelling of --file-format; give --file-format only")
    chosen = file_format or legacy_format
    count = transfer.export_connections(
        state.search_path,
        file,
        source=source,
        file_format=chosen.lower() if chosen else None,
        serialization_format=serialization_format.lower() if serialization_format else None,
    )
    export_done("connection", count, file)


@connections.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "to", help="Backend name to write to (default: metastore, else the first writable).")
@click.option(
    "--overwrite",
    is_flag=True,
    default=None,
    help="Replace connections that exist in the target (Airflow's).",
)
@click.option(
    "-a",
    "--action-on-existing-key",
    "action",
    type=click.Choice(["overwrite", "fail", "skip"]),
    help="What to do with ids that exist in the target (default: skip, as `airflow connections import`).",
)
@pass_state
@handle_errors
def import_command(
    state: State, file: Path, to: str | None, overwrite: bool | None, action: str | None
) -> None:
    """Import connections from an Airflow export file (.json, .yaml, .env). All or nothing: parsed first."""
    from credpath import _transfer as transfer

    on_existing: Any = import_action(action, overwrite or None, default="skip")
    result = transfer.import_connections(state.search_path, file, to=to, on_existing=on_existing)
    echo_import_summary("connection", result)


from credpath.cli import conn_test as _conn_test  # noqa: E402, F401 - registers `connections test`
