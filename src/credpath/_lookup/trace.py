"""A lookup's record: its context (kind, key, team, deadline) and the trace of events its resolution emits.

How a trace flows: the resolution emits each event into the lookup's :class:`LookupContext`, which keeps it
(``explain`` builds its :class:`~credpath._search_path.Explanation` from the kept events) and hands it to
every subscriber (:func:`subscribe`: metrics today; an audit trail or OpenTelemetry spans the same way).

Cost: with no subscriber and no ``explain``, a context records nothing (``live`` is False: the resolution
builds no event) and a process-cache hit makes no context at all. The one ambient channel is
:data:`_CALLING`, the store call in progress (a ``ContextVar``, as OpenTelemetry carries its current span):
the retry loops of :mod:`credpath._deadlines` run deep inside a backend and report a retry to it.

Events are named tuples (immutable, and cheap to make on the hot path); :class:`Attempt` is the row
``explain`` always returned. This module imports nothing of credpath: the lowest layers (deadlines) may
emit into it.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from credpath._record import Record

if TYPE_CHECKING:
    from credpath._deadlines import Deadline

__all__ = [
    "Attempt",
    "ChangeListener",
    "Done",
    "Event",
    "LookupContext",
    "Rejected",
    "Retry",
    "Served",
    "Sink",
    "StoreCall",
    "VersionCheck",
    "calling",
    "note_retry",
    "note_valid_until",
    "note_version",
    "retries_allowed",
    "single_try",
    "subscribe",
]

log = logging.getLogger("credpath.search_path")


class Attempt(Record):
    """What one backend answered in a resolution (the rows of ``explain``). A record, not a dataclass:
    it is defined on the CLI's way to one lookup (credpath._record)."""

    backend: str
    #: "hit" | "miss" | "stale" | "error" | "skipped (pattern)" | "not tried"
    outcome: str
    #: Lookup time, one-time start-up excluded.
    seconds: float
    detail: str
    #: One-time start-up (``backend.prepare()``: importing the client, building the session), timed apart.
    startup_seconds: float
    #: The backend's circuit breaker before the call ("closed", "open (...)", "half-open (...)").
    breaker: str

    _fields = ("backend", "outcome", "seconds", "detail", "startup_seconds", "breaker")

    def __init__(
        self,
        backend: str,
        outcome: str,
        seconds: float = 0.0,
        detail: str = "",
        startup_seconds: float = 0.0,
        breaker: str = "",
    ) -> None:
        self.backend, self.outcome, self.seconds, self.detail = backend, outcome, seconds, detail
        self.startup_seconds, self.breaker = startup_seconds, breaker


class StoreCall(NamedTuple):
    """One call made to a backend's store (a read, a batch read, a prefix read, a listing)."""

    backend: str
    kind: str
    #: "get" | "batch_get" | "prefetch" | "list"
    operation: str
    #: "hit" | "miss" | "error" | "throttled" (the error raised is a :class:`~credpath.errors.Throttled`)
    outcome: str
    seconds: float = 0.0
    #: The store's version of what it returned, where the backend reports one (:func:`note_version`).
    version: str | None = None
    #: When the store says the value will change (wall clock, :func:`note_valid_until`): no tier serves
    #: it after that. None: the store announced nothing.
    valid_until: float | None = None


class VersionCheck(NamedTuple):
    """A backend's cheap answer to "is the version I cached still the store's current one?" (a metadata
    request: never the value). ``valid_until``: the store's next announced change (wall clock), if any."""

    unchanged: bool
    valid_until: float | None = None


class Retry(NamedTuple):
    """One more try of a store request inside one store call (each is one more request the store bills)."""

    backend: str


class Rejected(NamedTuple):
    """A call refused by the backend's open circuit breaker: no request reached the store."""

    backend: str
    breaker: str


class Served(NamedTuple):
    """Which tier answered: "process", "shared", "store" or "stale"; ``source`` the backend (None: a miss)."""

    tier: str
    source: str | None
    #: For "stale": the served value's age in seconds, and when its refresh will next be tried (seconds).
    stale_age: float | None = None
    refresh_in: float | None = None


class Done(NamedTuple):
    """The end of one lookup: the tier that served it, "found" | "missing" | "error", and its duration."""

    kind: str
    tier: str
    result: str
    seconds: float
    #: The value served (for a keyed fingerprint in the audit trail only): never in the repr.
    value: Any = None

    def __repr__(self) -> str:
        return (
            f"Done(kind={self.kind!r}, tier={self.tier!r}, result={self.result!r}, seconds={self.seconds!r})"
        )


Event: TypeAlias = Attempt | StoreCall | Retry | Rejected | Served | Done
#: A subscriber: called with the lookup's context and each event, on the thread that resolves it.
Sink: TypeAlias = Callable[["LookupContext", Event], None]

#: Told by a backend that its store changed (a watch event): ``(backend name, the ids the changed entry
#: may hold as (kind, id), a test of any (kind, id), the new version or None)``; ids None: anything of the
#: backend may have changed (the watch restarted and missed events).
ChangeListener: TypeAlias = Callable[
    [str, list[tuple[str, str]] | None, Callable[[str, str], bool] | None, str | None], None
]

#: The subscribers, replaced whole on (un)subscribe so that readers need no lock.
_sinks: tuple[Sink, ...] = ()


def subscribe(sink: Sink) -> Callable[[], None]:
    """Receive every event of every lookup from now on; returns the function that unsubscribes. A sink
    must be fast and must not raise (an exception is logged at DEBUG and dropped: it never fails a lookup)."""
    global _sinks
    _sinks = (*_sinks, sink)

    def unsubscribe() -> None:
        global _sinks
        _sinks = tuple(s for s in _sinks if s is not sink)

    return unsubscribe


def subscribed() -> bool:
    """Whether anything listens (the hot path's one test before it builds a context)."""
    return bool(_sinks)


class LookupContext:
    """One resolution: what is looked up, by when, and (when ``live``) the trace of what happened."""

    __slots__ = (
        "deadline",
        "events",
        "key",
        "kind",
        "live",
        "sinks",
        "started",
        "team",
        "tier",
        "valid_until",
        "version",
    )

    def __init__(
        self,
        kind: str,
        key: str,
        team: str | None = None,
        *,
        deadline: Deadline | None = None,
        keep: bool = False,
    ) -> None:
        self.kind = kind
        self.key = key
        self.team = team
        #: The whole lookup's deadline, if the caller set one (each store call has its backend's own).
        self.deadline = deadline
        self.sinks = _sinks
        #: The events, kept for ``explain`` (None: not kept).
        self.events: list[Event] | None = [] if keep else None
        #: Whether anything wants events: build none when False.
        self.live = keep or bool(self.sinks)
        self.tier = "store"
        #: The version the last store call reported (:func:`note_version`), None: none reported.
        self.version: str | None = None
        #: When the store said the value of the last store call will change (:func:`note_valid_until`).
        self.valid_until: float | None = None
        self.started = time.perf_counter() if self.live else 0.0

    def emit(self, event: Event) -> None:
        if self.events is not None:
            self.events.append(event)
        for sink in self.sinks:
            try:
                sink(self, event)
            except Exception:  # a subscriber must never break a lookup
                log.debug("a lookup trace subscriber failed", exc_info=True)

    def attempt(
        self,
        backend: str,
        outcome: str,
        seconds: float = 0.0,
        detail: str = "",
        startup: float = 0.0,
        breaker: str = "",
    ) -> None:
        """What one backend answered (an :class:`Attempt`), if anything listens."""
        if self.live:
            self.emit(Attempt(backend, outcome, seconds, detail, startup, breaker))

    def served(self, tier: str, source: str | None, **facts: Any) -> None:
        self.tier = tier
        if self.live:
            self.emit(Served(tier, source, **facts))

    def done(self, result: str, value: Any = None) -> None:
        """End of a lookup: one :class:`Done` for the subscribers (``explain`` has no use for it)."""
        if self.sinks:
            self.emit(Done(self.kind, self.tier, result, time.perf_counter() - self.started, value))

    def attempts(self) -> list[Attempt]:
        return [e for e in self.events or () if isinstance(e, Attempt)]


_CALLING: contextvars.ContextVar[tuple[LookupContext, str] | None] = contextvars.ContextVar(
    "credpath_store_call", default=None
)


@contextmanager
def calling(context: LookupContext, backend: str) -> Iterator[None]:
    """Mark the store call to ``backend`` in progress, so that retries inside it reach this trace."""
    token = _CALLING.set((context, backend))
    try:
        yield
    finally:
        _CALLING.reset(token)


_SINGLE_TRY: contextvars.ContextVar[bool] = contextvars.ContextVar("credpath_single_try", default=False)


@contextmanager
def single_try() -> Iterator[None]:
    """Store calls made inside try once: a refresh that holds a last good value to serve does not retry a
    failing store (the stale value is served at once, and the store is not hammered)."""
    token = _SINGLE_TRY.set(True)
    try:
        yield
    finally:
        _SINGLE_TRY.reset(token)


def retries_allowed() -> bool:
    """False inside :func:`single_try` (read by the retry loops)."""
    return not _SINGLE_TRY.get()


def note_retry() -> None:
    """One more try inside the store call in progress (hook of the retry loops); nothing outside one."""
    current = _CALLING.get()
    if current is not None and current[0].live:
        current[0].emit(Retry(current[1]))


def note_version(version: object) -> None:
    """The store's version of what the store call in progress returned (a backend reports it from the
    answer it already has: no extra request); kept with the cached value and shown by ``explain``."""
    current = _CALLING.get()
    if current is not None and version is not None:
        current[0].version = str(version)


def note_valid_until(when: float | None) -> None:
    """The store's word on when what the store call in progress returned will change (wall-clock seconds:
    Secrets Manager's ``NextRotationDate``, a Vault lease's end). Every cache tier, stale-if-error
    included, stops serving the value at that time; the earliest of several reports wins."""
    current = _CALLING.get()
    if current is None or when is None:
        return
    context = current[0]
    if context.valid_until is None or when < context.valid_until:
        context.valid_until = float(when)
