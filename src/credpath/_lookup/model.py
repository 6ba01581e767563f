"""The values of a lookup: backends in the path (Entry), answers (Resolution), their record (Explanation)."""

from __future__ import annotations

from typing import Any

from credpath._lookup.trace import Attempt, LookupContext, Served, StoreCall
from credpath._record import Frozen, Record
from credpath._resilience import CircuitBreaker, RefreshBackoff
from credpath.errors import BackendError, safe_reason
from credpath.protocol import Backend, Kind

__all__ = [
    "MISS",
    "Attempt",
    "CacheKey",
    "Entry",
    "Explanation",
    "Listing",
    "PrefetchReport",
    "Resolution",
    "named",
    "names",
    "what",
]

#: Cached "nothing in the path has it".
MISS: Any = object()
CacheKey = tuple[Kind, str, str | None]


# Records rather than dataclasses: these are defined on the CLI's way to one lookup (credpath._record).


class Resolution(Frozen):
    """A resolved value, the name of the backend that served it, and the store's version of it (where
    the store reports one)."""

    value: Any
    source: str
    version: str | None
    #: Wall-clock time after which no tier serves this value (the store announced a change then).
    valid_until: float | None

    _fields = ("value", "source", "version", "valid_until")
    _uncompared = frozenset({"version", "valid_until"})

    def __init__(
        self, value: Any, source: str, version: str | None = None, valid_until: float | None = None
    ) -> None:
        vars(self).update(value=value, source=source, version=version, valid_until=valid_until)


class Explanation(Record):
    kind: Kind
    key: str
    source: str | None
    attempts: list[Attempt]
    cached: bool
    team_name: str | None
    #: The source's refresh failed and its last good value was served (stale-if-error); age in seconds.
    stale: bool
    stale_age: float | None
    #: Backends that failed (transiently) during this resolution, in search order.
    failed: list[str]
    #: Which tier served the answer: "process" (in-process cache), "shared" (the shared tier), "store"
    #: (the backends were asked) or "stale" (a failed refresh; the last good value was served).
    tier: str
    #: While stale values are served: seconds until the source's store is asked again (backed off).
    refresh_in: float | None
    #: The store's version of the value served (where the store reports one), and the version each cache
    #: tier holds for the id ("process", "shared": None where a tier holds it without a version).
    version: str | None
    held: dict[str, str | None]
    #: When the store said the served value will change (wall clock): no tier serves it after that.
    valid_until: float | None

    _fields = (
        "kind", "key", "source", "attempts", "cached", "team_name", "stale", "stale_age", "failed", "tier",
        "refresh_in", "version", "held", "valid_until",
    )  # fmt: skip

    def __init__(
        self,
        kind: Kind,
        key: str,
        source: str | None,
        attempts: list[Attempt] | None = None,
        cached: bool = False,
        team_name: str | None = None,
        stale: bool = False,
        stale_age: float | None = None,
        failed: list[str] | None = None,
        tier: str = "store",
        refresh_in: float | None = None,
        version: str | None = None,
        held: dict[str, str | None] | None = None,
        valid_until: float | None = None,
    ) -> None:
        self.kind, self.key, self.source = kind, key, source
        self.attempts = [] if attempts is None else attempts
        self.cached, self.team_name = cached, team_name
        self.stale, self.stale_age = stale, stale_age
        self.failed = [] if failed is None else failed
        self.tier, self.refresh_in, self.version = tier, refresh_in, version
        self.held = {} if held is None else held
        self.valid_until = valid_until

    @property
    def found(self) -> bool:
        return self.source is not None

    @property
    def unavailable(self) -> bool:
        """Nothing found and a backend failed: a lookup raises BackendUnavailable, not NotFound."""
        return self.source is None and bool(self.failed)

    @property
    def fell_through(self) -> bool:
        """Served by a later backend because an earlier one failed (Airflow's fall-through)."""
        return self.found and not self.stale and bool(self.failed)

    @classmethod
    def from_trace(cls, context: LookupContext) -> Explanation:
        """The kept trace of one resolution, read as an explanation."""
        attempts = context.attempts()
        explanation = cls(
            kind=context.kind,  # type: ignore[arg-type]
            key=context.key,
            source=None,
            attempts=attempts,
            team_name=context.team,
            failed=[a.backend for a in attempts if a.outcome in ("error", "stale")],
        )
        for event in context.events or ():
            if isinstance(event, StoreCall) and event.outcome == "hit":
                explanation.version = event.version  # the last hit is the one served
                explanation.valid_until = event.valid_until
            if isinstance(event, Served):
                explanation.source, explanation.tier = event.source, event.tier
                explanation.stale = event.tier == "stale"
                explanation.stale_age, explanation.refresh_in = event.stale_age, event.refresh_in
        return explanation


class Entry(Record):
    name: str
    backend: Backend
    patterns: dict[Kind, Any]
    on_error: str
    breaker: CircuitBreaker
    #: False for backends whose answers must never come from the cache (env, files).
    cache_results: bool
    label: str
    #: When the store is asked again after a failed refresh whose last good value was served.
    refresh: RefreshBackoff

    _fields = ("name", "backend", "patterns", "on_error", "breaker", "cache_results", "label", "refresh")

    def __init__(
        self,
        name: str,
        backend: Backend,
        patterns: dict[Kind, Any],
        on_error: str = "skip",
        breaker: CircuitBreaker | None = None,
        cache_results: bool = True,
        label: str = "",
        refresh: RefreshBackoff | None = None,
    ) -> None:
        self.name, self.backend, self.patterns, self.on_error = name, backend, patterns, on_error
        self.breaker = CircuitBreaker("") if breaker is None else breaker
        self.cache_results, self.label = cache_results, label
        self.refresh = RefreshBackoff() if refresh is None else refresh

    def wants(self, kind: Kind, key: str) -> bool:
        pattern = self.patterns.get(kind)
        return pattern is None or pattern.match(key) is not None


class PrefetchReport(Record):
    requested: int
    hits: int
    misses: int
    errors: int

    _fields = ("requested", "hits", "misses", "errors")

    def __init__(self, requested: int = 0, hits: int = 0, misses: int = 0, errors: int = 0) -> None:
        self.requested, self.hits, self.misses, self.errors = requested, hits, misses, errors


class Listing(tuple):  # type: ignore[type-arg]
    """``(found, cannot_list)`` as :meth:`SearchPath.list_ids` always returned, plus ``failed``.

    ``found`` maps id -> names of the backends holding it (search order); ``cannot_list`` names the backends
    without a listing capability; ``failed`` maps the name of each backend that failed to list to a safe
    reason (its ids are missing from ``found``: the listing is incomplete).
    """

    found: dict[str, list[str]]
    cannot_list: list[str]
    failed: dict[str, str]

    def __new__(cls, found: dict[str, list[str]], cannot_list: list[str], failed: dict[str, str]) -> Listing:
        self = super().__new__(cls, (found, cannot_list))
        self.found, self.cannot_list, self.failed = found, cannot_list, failed
        return self


def what(kind: Kind | str, key: str, team: str | None) -> str:
    return f"{kind} {key!r}" if team is None else f"{kind} {key!r} (team {team!r})"


def names(failed: list[tuple[Entry, BackendError]]) -> str:
    listed = [repr(e.name) for e, _ in failed]
    return ("backend " if len(listed) == 1 else "backends ") + ", ".join(listed)


def named(entry: Entry, error: BaseException) -> str:
    """The error's safe message, prefixed with the backend's label unless it already names it."""
    message = safe_reason(error)
    if message.startswith((entry.label, f"backend {entry.name!r}")):
        return message
    return f"{entry.label}: {message}"
