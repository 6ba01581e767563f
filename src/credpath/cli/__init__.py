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
from typing import Any, TypeVar

import click

from credpath.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    CredpathError,
    NotFound,
    ReadOnlyBackend,
)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2


class State:
    def __init__(self, config: Path | None) -> None:
        self.config = config
        self._search_path: Any = None

    @property
    def search_path(self) -> Any:
        if self._search_path is None:
            from credpath.search_path import SearchPath

            self._search_path = SearchPath.from_config(self.config)
        return self._search_path


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


# Importing the command modules registers their commands on `cli`.
from credpath.cli import cache, connections, migrate, misc, variables, web  # noqa: E402, F401
