"""``credpath web``: serve the read-only inventory (needs ``pip install 'credpath[web]'``)."""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from credpath.cli import EXIT_BAD_INPUT, State, cli, fail, handle_errors, pass_state

__all__ = [
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "bind",
    "is_loopback",
    "read_token",
    "web_command",
]

F = TypeVar("F", bound=Callable[..., Any])

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
            mode = token_file.stat().st_mode
        except OSError as exc:
            fail(f"--token-file: cannot read {str(token_file)!r} ({type(exc).__name__})")
        if stat.S_ISREG(mode) and mode & 0o077:
            # As ssh with a private key: a token others can read is not a secret; refuse it.
            fail(
                f"--token-file: {str(token_file)!r} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
            )
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--token-file: cannot read {str(token_file)!r} ({type(exc).__name__})")
        if not token:
            fail(f"--token-file: {str(token_file)!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def _number_option(flag: str, high: float, default: float, text: str) -> Callable[[F], F]:
    return click.option(flag, type=click.FloatRange(0, high), default=default, show_default=True, help=text)


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
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name the pages may be asked for without a token, besides localhost and loopback "
    "addresses (repeatable). Other Host headers get 421: a DNS-rebinding page cannot read the inventory.",
)
@_number_option(
    "--cache-seconds",
    3600,
    10.0,
    "How long a page's data (listings, explains, checks) is reused before the stores are asked again.",
)
@_number_option(
    "--store-requests-per-minute",
    100000,
    30.0,
    "Page builds that reach the stores, per client address (0: no limit); past it, 429.",
)
@pass_state
@handle_errors
def web_command(
    state: State,
    host: str,
    port: int,
    web_config: Path | None,
    token_file: Path | None,
    allow_hosts: tuple[str, ...],
    cache_seconds: float,
    store_requests_per_minute: float,
) -> None:
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
    app = create_app(
        search_path,
        token=token,
        allowed_hosts=list(allow_hosts),
        cache_seconds=cache_seconds,
        store_requests_per_minute=store_requests_per_minute,
    )
    sock = bind(host, port)  # before "serving": a busy port is one line and exit 2
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"credpath web: serving http://{shown}:{sock.getsockname()[1]}/ (read-only; Ctrl-C stops)", err=True
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def bind(host: str, port: int) -> Any:
    """A listening socket on ``host``:``port``, or one line and exit 2 (a busy port, an unknown host)."""
    import socket  # here: the other commands never need it

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        fail(f"--host {host}: cannot resolve it ({exc.strerror or type(exc).__name__})")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or type(exc).__name__
        fail(f"--host {host} --port {port}: cannot listen there ({reason}); is another server using it?")
    sock.set_inheritable(True)
    return sock
