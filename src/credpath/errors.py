"""Exception types. Messages name settings, fields, paths and ids, never secret values."""

from __future__ import annotations


class CredpathError(Exception):
    """Base class of every error credpath raises on purpose."""


class ConfigError(CredpathError, ValueError):
    """Bad configuration or input: a setting, field or key is wrong. The CLI exits 2 on it."""


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
    """A backend could not answer (unreachable, sealed, throttled, malformed data).

    The search path applies the backend's ``on_error`` policy to it; it never turns into a wrong value.
    """

    def __init__(self, message: str, *, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


class BackendTimeout(BackendError):
    """A store call did not finish within its whole-call deadline (connect, reads, retries and waits)."""


class BackendUnavailable(BackendError):
    """Nothing was found and at least one backend failed: an outage, not a miss.

    ``backends`` names the failed backends in search-path order.
    """

    def __init__(self, message: str, *, backends: tuple[str, ...] = ()) -> None:
        super().__init__(message, backend=backends[0] if backends else None)
        self.backends = backends


class AccessDenied(BackendError):
    """The store refused the caller (403 / AccessDenied / PermissionDenied)."""


class NotFound(CredpathError, KeyError):
    """Nothing in the search path has the requested connection, variable or config key."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} not found in any backend of the search path")
        self.kind = kind
        self.key = key

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ReadOnlyBackend(CredpathError):
    """The backend does not support the requested write/list operation."""
