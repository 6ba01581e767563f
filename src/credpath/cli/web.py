"""``credpath web``: serve the read-only inventory (needs ``pip install 'credpath[web]'``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import click

from credpath.cli import EXIT_BAD_INPUT, State, cli, fail, handle_errors, pass_state

__all__ = [
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "is_loopback",
    "read_token",
    "web_command",
]

TOKEN_ENV = "CREDPATH_WEB_TOKEN"
DEFAULT_PORT = 8750


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def read_token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--token-file: cannot read {str(token_file)!r} ({type(exc).__name__})")
        if not token:
            fail(f"--token-file: {str(token_file)!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


@cli.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--config",
    "web_config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="credpath.toml to serve (default: the global --config / $CREDPATH_CONFIG).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"File holding the bearer token pages require (else ${TOKEN_ENV}); needed off loopback.",
)
@pass_state
@handle_errors
def web_command(state: State, host: str, port: int, web_config: Path | None, token_file: Path | None) -> None:
    """Serve a read-only inventory of every connection and variable id, the explain of each, the
    backends' health and /metrics. Never shows a secret value.

    Listing every id is sensitive metadata: on any address but loopback a bearer token is required
    (--token-file or $CREDPATH_WEB_TOKEN); the browser signs in once at /login.
    """
    token = read_token(token_file)
    if not is_loopback(host) and token is None:
        fail(
            f"--host {host} is not a loopback address: give a bearer token with --token-file or "
            f"${TOKEN_ENV} (listing every id is sensitive)",
            EXIT_BAD_INPUT,
        )
    if web_config is not None:
        if not web_config.is_file():
            fail(f"--config: {str(web_config)!r} is not a file")
        state = State(web_config)
    try:
        import uvicorn

        from credpath.web.app import create_app
    except ImportError as exc:
        fail(f"credpath web needs {exc.name or 'its web libraries'}: pip install 'credpath[web]'")
    search_path = state.search_path  # a malformed config stops here: one line, exit 2
    app = create_app(search_path, token=token)
    click.echo(f"credpath web: serving http://{host}:{port}/ (read-only; Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
