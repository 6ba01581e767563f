"""Exception types. Messages name settings, fields, paths and ids, never secret values.

How the search path treats an error a backend raises during a read (the full rule and its reasons are
written in ``credpath._lookup.policy``): :class:`ConfigError` (and :class:`MissingDependency`) propagates;
:class:`AccessDenied` propagates whatever ``on_error`` says; any other error is transient: the backend's
``on_error`` decides ("skip" tries the next backend, "fail" raises), its last good value may be served
(stale-if-error) and it counts against the backend's circuit breaker. When nothing is found and a backend
failed, the search path raises :class:`BackendUnavailable`, never :class:`NotFound`.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CircuitOpen",
    "ConfigError",
    "CredpathError",
    "MissingDependency",
    "MissingFile",
    "NotFound",
    "ReadOnlyBackend",
    "Throttled",
    "safe_reason",
]


class CredpathError(Exception):
    """Base class of every error credpath raises on purpose."""


class ConfigError(CredpathError, ValueError):
    """Bad configuration or input: a setting, field or key is wrong. The CLI exits 2 on it.

    Raised by a backend during a read (a missing client library, a wrong Fernet key), it propagates through
    the search path: it is never skipped, retried or reported as "not found".
    """


class MissingFile(ConfigError, FileNotFoundError):
    """A file a setting names does not exist (secrets file, ``kubernetes_jwt_path``, ``token_path``).

    Also a ``FileNotFoundError`` (an ``OSError``), which is what Airflow raises there, so callers that catch
    those keep working; ``filename`` is the path, ``errno`` is ENOENT, and ``str()`` is credpath's message.
    """

    def __init__(self, message: str, *, filename: str | None = None) -> None:
        import errno

        super().__init__(message)
        self.errno = errno.ENOENT
        self.strerror = message
        self.filename = filename

    def __str__(self) -> str:  # OSError would prefix "[Errno 2]" and append the file name
        return str(self.args[0])


class MissingDependency(ConfigError):
    """A backend's client library is not installed; the message says which extra installs it."""

    def __init__(self, message: str, *, module: str) -> None:
        super().__init__(message)
        self.module = module


class BackendError(CredpathError):
    """A backend could not answer (unreachable, sealed, throttled, timed out, malformed data).

    A transient failure: the search path applies the backend's ``on_error`` policy to it ("skip": try the
    next backend, with a WARNING; "fail": raise it), may serve that backend's last good value instead
    (``[cache] stale_if_error``), and counts it against the backend's circuit breaker. It never turns into
    a wrong value or into "not found". The CLI exits 1 on it.
    """

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


class BackendTimeout(BackendError):
    """A store call did not finish within its whole-call deadline (connect, reads, retries and waits)."""


class BackendUnavailable(BackendError):
    """Nothing was found and at least one backend failed: an outage, not a miss.

    Raised by the search path instead of :class:`NotFound` (the value may well exist in the failed store),
    also by ``get_variable(key, default=...)``/``get_config``: a default stands in for a missing value, not
    for an outage. ``backends`` names the failed backends in search-path order. The CLI exits 1 on it.
    """

    def __init__(self, message: str, *, backends: tuple[str, ...] = ()) -> None:
        super().__init__(message, backend=backends[0] if backends else None)
        self.backends = backends


class Throttled(BackendError):
    """The store refused the request for its rate (429, a throttling error code) after the retries.

    Transient, as any :class:`BackendError`; a type of its own so that counters tell it from an outage
    without reading the message."""


class CircuitOpen(BackendError):
    """The backend failed repeatedly and its circuit breaker is open: failed fast, no request was made."""


class AccessDenied(BackendError):
    """The store refused the caller (403 / AccessDenied / PermissionDenied).

    Authoritative: the search path raises it whatever ``on_error`` says and never falls through to a later
    backend (which could serve a copy the caller may no longer read), never retries it, never serves a stale
    value in its place (Airflow's ``AirflowSecretsBackendAccessDenied`` rule).
    """


class NotFound(CredpathError, KeyError):
    """Every backend that was asked answered, and none has the connection, variable or config key.

    The CLI exits 1 on it. If a backend failed instead of answering, :class:`BackendUnavailable` is raised.
    """

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found in any backend of the search path")
        self.kind = kind
        self.key = key

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ReadOnlyBackend(CredpathError):
    """The backend does not support the requested write/list operation (a capability, not a failure)."""


def safe_reason(exc: BaseException) -> str:
    """What may be shown of ``exc``: credpath's own errors have safe messages (they name settings and ids,
    never values); a foreign exception (a client library's, which may quote a value) by its type only."""
    if isinstance(exc, CredpathError):
        return str(exc)
    return f"{type(exc).__name__} (message withheld: it may contain a secret)"
