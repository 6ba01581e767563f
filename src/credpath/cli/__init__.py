"""``credpath`` command line: a thin layer over the Python API.

Exit codes: 0 found/done, 1 not found or a backend failed (an outage: BackendUnavailable, a timeout, an
open circuit breaker, AccessDenied), 2 bad input or configuration (ConfigError, MissingDependency).
Secret values are printed only with ``--reveal``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from credpath.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    CredpathError,
    NotFound,
    ReadOnlyBackend,
)

if TYPE_CHECKING:
    from credpath._search_path import SearchPath

__all__ = [
    "COMMAND_MODULES",
    "EXIT_BAD_INPUT",
    "EXIT_NOT_FOUND",
    "CredpathGroup",
    "State",
    "cli",
    "fail",
    "handle_errors",
    "main",
    "pass_state",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2


class State:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._search_path: SearchPath | None = None
        #: {backend name: {kwarg: value}} over the configured kwargs (see :meth:`configure_backend`).
        self.backend_kwargs: dict[str, dict[str, Any]] = {}

    @property
    def search_path(self) -> SearchPath:
        if self._search_path is None:
            from credpath._settings import search_path_from_config

            self._search_path = search_path_from_config(self.config, backend_kwargs=self.backend_kwargs)
        return self._search_path

    def configure_backend(self, name: str, flag: str, **settings: Any) -> None:
        """Build backend ``name`` with ``settings`` over its configured kwargs: a CLI flag that is a store
        setting (``--on-deleted``) only changes how the backend is constructed, never a write call."""
        if self._search_path is not None:
            self._search_path.close()
            self._search_path = None
        self.backend_kwargs.setdefault(name, {}).update(settings)
        try:
            self.search_path  # noqa: B018 - built now, so a backend without the setting fails here
        except ConfigError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
        except TypeError:  # a constructor taking **kwargs refused it itself (its message is not shown)
            raise ConfigError(
                f"{flag}: backend {name!r} has no setting {', '.join(sorted(settings))}"
            ) from None

    def write_target(self, to: str | None, operation: str, flag: str, **settings: Any) -> str | None:
        """The backend a write goes to (``to``, else the default), rebuilt with ``settings`` if any are
        given (flags left unset are None and change nothing)."""
        settings = {key: value for key, value in settings.items() if value is not None}
        if not settings:
            return to
        name = self.search_path.writable_backend(to, operation).name
        self.configure_backend(name, flag, **settings)
        return name


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"credpath: error: {message}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn credpath's exceptions into one-line messages and the documented exit codes."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NotFound as exc:
            fail(str(exc), EXIT_NOT_FOUND)
        except (ConfigError, ReadOnlyBackend) as exc:
            fail(str(exc), EXIT_BAD_INPUT)
        except BackendUnavailable as exc:  # an outage, not "not found": the message names the failed backends
            fail(str(exc), EXIT_NOT_FOUND)
        except BackendError as exc:
            fail(str(exc), EXIT_NOT_FOUND)
        except CredpathError as exc:
            fail(str(exc), EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]


pass_state = click.make_pass_decorator(State)


#: The module that defines each top-level command. A command's module is imported when that command is
#: asked for, so ``credpath connections get`` does not pay at start-up for the web server's, the
#: migration's or the audit reader's commands (``credpath --help`` imports them all).
COMMAND_MODULES = {
    "audit": "audit",
    "backends": "misc",
    "cache": "cache",
    "config": "misc",
    "connections": "connections",
    "explain": "misc",
    "generate-fernet-key": "misc",
    "migrate": "migrate",
    "rotate-fernet-key": "misc",
    "variables": "variables",
    "web": "web",
}


class CredpathGroup(click.Group):
    """The top-level group: click's usage errors (three lines, "Error: ...") become the one line every
    other failure prints, ``credpath: error: ...`` naming the command's help, exit 2. Its commands are
    loaded on first use (:data:`COMMAND_MODULES`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            # Registers its commands on `cli`. __import__, not importlib: -X importtime reports it then.
            __import__(f"{__name__}.{module}")
        return super().get_command(ctx, cmd_name)

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help, as click prints it
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            message = " ".join(exc.format_message().split())
            click.echo(f"credpath: error: {message}{where}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.ClickException as exc:
            click.echo(f"credpath: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("credpath: aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=CredpathGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="CREDPATH_CONFIG",
    help="credpath.toml to use (default: $CREDPATH_CONFIG, then $CREDPATH_HOME/credpath.toml).",
)
@click.version_option(package_name="credpath")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Airflow-compatible connections and variables from a search path of secret stores."""
    if config is not None and not config.is_file():
        fail(f"--config / CREDPATH_CONFIG: {str(config)!r} is not a file")
    ctx.obj = State(config)


def main() -> None:
    cli(prog_name="credpath")
