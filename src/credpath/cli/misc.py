"""``credpath explain``, ``config get-value``, ``backends check``, ``rotate-fernet-key``,
``generate-fernet-key``."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import click

from credpath.cli import EXIT_NOT_FOUND, State, cli, fail, handle_errors, pass_state
from credpath.cli.output import echo_json, echo_table
from credpath.protocol import Kind

if TYPE_CHECKING:
    from credpath.backends.metastore import MetastoreBackend
    from credpath.protocol import Kind

__all__ = [
    "backends_check",
    "backends_group",
    "backends_list",
    "config_group",
    "explain_command",
    "generate_fernet_key",
    "get_value_command",
    "rotate_fernet_key",
]

_KINDS: dict[str, Kind] = {"connection": "connection", "variable": "variable", "config": "config"}


@cli.command("explain")
@click.argument("kind", type=click.Choice(sorted(_KINDS)))
@click.argument("key")
@click.option("--team", "team_name", default=None, help="Look up as this team (Airflow 3.2+ multi-team).")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--cache",
    "use_cache",
    is_flag=True,
    help="Consult the caches first, as a lookup would (the shared tier, if configured).",
)
@pass_state
@handle_errors
def explain_command(
    state: State, kind: str, key: str, team_name: str | None, as_json: bool, use_cache: bool
) -> None:
    """Show which backend serves KEY and what every backend in the path answered (no values).

    "ms" is the lookup alone; "start-up ms" the backend's one-time start-up (importing its client,
    building its session), timed apart. "breaker" is the backend's circuit breaker before the call.
    "tier" says what served the answer: process (in-process cache), shared (the shared tier), store
    (the backends were asked) or stale (a failed refresh; the last good value). "version" is the store's
    version of the value served, and each cache tier's line the version it holds (where the store reports
    versions: Vault KV v2, Secrets Manager, GCP, Azure, Kubernetes).
    """
    from credpath.model import validate_lookup_key

    validate_lookup_key(_KINDS[kind], key)
    explanation = state.search_path.explain(_KINDS[kind], key, team_name=team_name, use_cache=use_cache)
    attempts = [
        {
            "backend": a.backend,
            "outcome": a.outcome,
            "ms": round(a.seconds * 1000, 3),
            "startup_ms": round(a.startup_seconds * 1000, 3),
            "breaker": a.breaker,
            "detail": a.detail,
        }
        for a in explanation.attempts
    ]
    summary = _explain_summary(explanation)
    if as_json:
        echo_json(
            {
                "kind": kind,
                "key": key,
                "team": team_name,
                "source": explanation.source,
                "tier": explanation.tier,
                "stale": explanation.stale,
                "stale_age_s": None if explanation.stale_age is None else round(explanation.stale_age, 1),
                "failed": explanation.failed,
                "version": explanation.version,
                "held": explanation.held,
                "valid_until": explanation.valid_until,
                "summary": summary,
                "attempts": attempts,
            }
        )
    else:
        echo_table(
            ("backend", "outcome", "ms", "start-up ms", "breaker", "detail"),
            [
                (
                    a["backend"],
                    a["outcome"],
                    f"{a['ms']:.3f}",
                    f"{a['startup_ms']:.3f}" if a["startup_ms"] else "",
                    a["breaker"],
                    a["detail"],
                )
                for a in attempts
            ],
            title=f"{kind} {key}" if team_name is None else f"{kind} {key} (team {team_name})",
            empty=f"no backend asked: answered by the {explanation.tier} cache"
            if explanation.cached
            else None,
        )
        click.echo(summary)
        click.echo(f"tier: {explanation.tier}")
        if explanation.version is not None:
            click.echo(f"version: {explanation.version}")
        if explanation.valid_until is not None:  # the store announced when the value changes
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(explanation.valid_until))
            click.echo(f"valid until: {when} (no cache tier serves it later)")
        if any(v is not None for v in explanation.held.values()):  # a store that reports versions
            for held_in, version in explanation.held.items():
                click.echo(f"{held_in} tier holds version: {version or '(none reported)'}")
    if not explanation.found:
        raise SystemExit(EXIT_NOT_FOUND)


def _explain_summary(explanation) -> str:  # type: ignore[no-untyped-def]
    failed = ", ".join(explanation.failed)
    if explanation.stale:
        age = "" if explanation.stale_age is None else f", {explanation.stale_age:.0f} s old"
        return f"served by: {explanation.source} (stale: its refresh failed; last good value{age})"
    if explanation.fell_through:
        return f"served by: {explanation.source} (while {failed} failed)"
    if explanation.found:
        return f"served by: {explanation.source}" + (" (cached)" if explanation.cached else "")
    if explanation.unavailable:
        return f"not found, but {failed} failed: an outage, not a miss"
    return "not found in any backend"


@cli.group("config")
def config_group() -> None:
    """Read settings (Airflow parity)."""


_SECRETS_DEFAULTS = {"backend": "", "backend_kwargs": ""}


@config_group.command("get-value")
@click.argument("section")
@click.argument("option")
@handle_errors
def get_value_command(section: str, option: str) -> None:
    """Print a setting as Airflow would read it: AIRFLOW__SECTION__OPTION, else the default."""
    name = f"AIRFLOW__{section.upper()}__{option.upper()}"
    if name in os.environ:
        value = os.environ[name]
    elif section.lower() == "secrets" and option.lower() in _SECRETS_DEFAULTS:
        value = _SECRETS_DEFAULTS[option.lower()]
    else:
        fail(f"the option [{section}/{option}] is not set ({name})", EXIT_NOT_FOUND)
    if option.lower() == "backend_kwargs" or _is_sensitive(option):
        from credpath.model import mask_sensitive

        value = _mask_kwargs(value, mask_sensitive)
    click.echo(value)


def _is_sensitive(option: str) -> bool:
    from credpath.model import is_sensitive_name

    return is_sensitive_name(option)


def _mask_kwargs(value: str, mask_sensitive) -> str:  # type: ignore[no-untyped-def]
    import json

    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return "***" if value else value
    return json.dumps(mask_sensitive(data)) if isinstance(data, dict) else "***"


@cli.group("backends")
def backends_group() -> None:
    """Inspect the configured backends."""


@backends_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_state
@handle_errors
def backends_list(state: State, as_json: bool) -> None:
    """The search path, in order."""
    rows = [(e.name, _describe(e.backend), e.on_error) for e in state.search_path.entries]
    if as_json:
        echo_json([{"name": n, "backend": d, "on_error": o} for n, d, o in rows])
    else:
        from credpath._settings import backends_order

        echo_table(("name", "backend", "on_error"), rows)
        order = backends_order(state.search_path)
        click.echo(f"order: {', '.join(order.names)} (from {order.source})")


@backends_group.command("check")
@click.option("--json", "as_json", is_flag=True)
@pass_state
@handle_errors
def backends_check(state: State, as_json: bool) -> None:
    """Check reachability and authentication of each backend (exit 1 if any fails)."""
    import time

    from credpath.errors import safe_reason

    results = []
    # A check always reaches the store (it is the diagnostic), whatever the breaker says; the breaker
    # column shows the state lookups in this process would meet.
    for entry in state.search_path.entries:
        started = time.perf_counter()
        check = getattr(entry.backend, "check", None)
        try:
            detail = check() if callable(check) else "no check available"
            ok = True
        except Exception as exc:
            detail, ok = safe_reason(exc), False
        results.append(
            {
                "name": entry.name,
                "ok": ok,
                "ms": round((time.perf_counter() - started) * 1000, 1),
                "breaker": entry.breaker.describe(),
                "detail": detail,
            }
        )
    if as_json:
        echo_json(results)
    else:
        echo_table(
            ("backend", "status", "ms", "breaker", "detail"),
            [(r["name"], "ok" if r["ok"] else "FAILED", r["ms"], r["breaker"], r["detail"]) for r in results],
        )
    if not all(r["ok"] for r in results):
        raise SystemExit(EXIT_NOT_FOUND)


def _describe(backend: object) -> str:
    describe = getattr(backend, "describe", None)
    return describe() if callable(describe) else type(backend).__name__


@cli.command("rotate-fernet-key")
@pass_state
@handle_errors
def rotate_fernet_key(state: State) -> None:
    """Rotate the metastore's Fernet key and re-encrypt every value with it.

    With the generated key file ($CREDPATH_HOME/fernet.key): a new key is made, every value is
    re-encrypted, and the file then holds the new key alone (crash-safe: every value stays readable with
    what the file holds). With CREDPATH_FERNET_KEY="NEW,OLD" (or fernet_key): every value is
    re-encrypted with its first key; then configure that key alone.
    """
    from credpath.backends.metastore import MetastoreBackend

    done = 0
    for entry in state.search_path.entries:
        if isinstance(entry.backend, MetastoreBackend):  # the one store that encrypts with Fernet keys
            click.echo(_rotate(entry.name, entry.backend))
            done += 1
    if not done:
        fail("no backend in the search path stores encrypted values (add a metastore backend)")


def _rotate(name: str, backend: MetastoreBackend) -> str:
    from credpath import _audit

    with _audit.timed("rotate", "key", "fernet", backend=name) as event:  # one audit event per rotation
        message, count = _rotation(name, backend)
        event["reencrypted"] = count
    return message


def _rotation(name: str, backend: MetastoreBackend) -> tuple[str, int]:
    """Rotate ``backend``'s key: what to say, and how many values were re-encrypted."""
    origin = backend.key_origin
    if origin == "file":
        count = backend.rotate_key_file()
        if count is None:
            return f"backend {name!r}: nothing to rotate (no key file and no stored secret yet)", 0
        return (
            f"backend {name!r}: {_counted(count)}; {backend.key_file} now holds a new key alone "
            "(back it up: the old key no longer decrypts anything)"
        ), count
    count = backend.rotate_fernet_key()
    keys = backend.key_count()
    if keys == 1:
        if count == 0:
            return (
                f"backend {name!r}: nothing to re-encrypt: every value is encrypted with {origin}'s key. "
                f'To rotate, set {origin}="NEW,OLD" (credpath generate-fernet-key prints a new key)'
            ), 0
        return f"backend {name!r}: {_counted(count)} with {origin}'s key", count
    others = "key 2" if keys == 2 else f"keys 2-{keys}"
    return (
        f"backend {name!r}: {_counted(count)}; every value is encrypted with key 1 of {origin}: now "
        f"configure {origin} with that first key alone ({others} no longer decrypt anything here)"
    ), count


def _counted(count: int) -> str:
    return f"re-encrypted {count} value(s)" if count else "nothing to re-encrypt"


@cli.command("generate-fernet-key")
def generate_fernet_key() -> None:
    """Print a new Fernet key (for CREDPATH_FERNET_KEY or [cache] shared_key)."""
    from credpath._keys import generate_key

    click.echo(generate_key())
