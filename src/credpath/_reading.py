"""The one reader: ids of one kind from one backend, batched where it can, structured where it can,
team-scoped.

The search path (lookups, prefetch by id and by prefix, listing), import/export (:mod:`credpath._transfer`)
and ``credpath migrate`` all read through these functions. They are the plain per-backend read: no cache,
no retries, no circuit breaker, no ``on_error``. The search path wraps each call in its resilience (see
:mod:`credpath._lookup.policy`); migrate and transfer report per id.

What comes back: a connection is a :class:`~credpath.model.Connection` (structured stores give theirs
natively, string stores' values are parsed with the backend's ``connection_format``), a variable or config
value a ``str``, or with ``records=True`` a variable a :class:`~credpath.model.Variable` (with its
description where the store keeps one). In a batch, a value that cannot be parsed is that id's exception
(one malformed value fails its id only); a failed store call raises.

``team_name`` reaches only the methods that accept it (Airflow's rule, :func:`call_backend_method`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from credpath.errors import BackendError, ReadOnlyBackend
from credpath.model import Connection, Variable
from credpath.protocol import BaseBackend, Kind, call_backend_method, supports

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    from credpath.protocol import Backend

__all__ = [
    "READ_CHUNK",
    "Outcome",
    "Value",
    "as_connection",
    "batched",
    "exists",
    "label_of",
    "list_ids",
    "name_of",
    "read",
    "read_all",
    "read_batch",
    "read_connection",
    "read_many",
]

#: One id's answer: the value, or (in a batch) the exception that reading or parsing it raised.
Value: TypeAlias = Connection | Variable | str
Outcome: TypeAlias = Connection | Variable | str | BaseException

#: Ids per batch call handed to one worker by :func:`read_many` (backends chunk further to their limits).
READ_CHUNK = 100

_BATCHED_KINDS = ("connection", "variable")  # config has no batch read


def name_of(backend: Any) -> str:
    return getattr(backend, "name", None) or type(backend).__name__


def label_of(backend: Any, name: str | None = None) -> str:
    """How messages name ``backend``: its label, or ``backend 'NAME'`` for a foreign object."""
    if isinstance(backend, BaseBackend) and name in (None, backend.name):
        return backend.label
    return f"backend {name or name_of(backend)!r}"


# --- one id ------------------------------------------------------------------------------------------


def read(
    backend: Backend, kind: Kind, key: str, *, team_name: str | None = None, name: str | None = None
) -> Connection | str | None:
    """One id: a Connection, a string (variable, config), or None on a miss. ``name`` is the backend's
    configured name, for the error raised when a store returns something that is not a string."""
    if kind == "connection":
        return read_connection(backend, key, team_name=team_name)
    method = _method(backend, "get_variable" if kind == "variable" else "get_config")
    if method is None:
        return None
    value = call_backend_method(method, key, team_name=team_name)
    if value is not None and not isinstance(value, str):
        raise _not_a_string(backend, kind, key, value, name)
    return value


def read_connection(backend: Backend, conn_id: str, *, team_name: str | None = None) -> Connection | None:
    """Read one connection from any backend: credpath's own, or an Airflow-style "roll your own" class.

    ``team_name`` is passed only to methods that accept it (Airflow's rule)."""
    if isinstance(backend, BaseBackend):
        return call_backend_method(backend.get_connection, conn_id, team_name=team_name)  # type: ignore[no-any-return]
    get_value = _method(backend, "get_conn_value")
    if get_value is not None:
        raw = call_backend_method(get_value, conn_id, team_name=team_name)
        return None if raw is None else Connection.from_value(raw, conn_id=conn_id)
    get_conn = _method(backend, "get_connection")
    if get_conn is not None:
        return as_connection(call_backend_method(get_conn, conn_id, team_name=team_name), conn_id)
    return None


def exists(backend: Backend, kind: Kind, key: str, *, team_name: str | None = None) -> bool:
    """Whether ``key`` is stored, without parsing it: a malformed stored connection still exists."""
    if kind == "connection":
        get_value = _method(backend, "get_conn_value")
        if get_value is not None:
            return call_backend_method(get_value, key, team_name=team_name) is not None
    return read(backend, kind, key, team_name=team_name) is not None


# --- many ids ----------------------------------------------------------------------------------------


def read_batch(
    backend: Backend,
    kind: Kind,
    ids: list[str],
    *,
    team_name: str | None = None,
    records: bool = False,
) -> dict[str, Outcome]:
    """Hits among ``ids`` in one batch call; the backend must support "batch" (see :func:`batched`).

    Structured stores answer with their own objects (``get_connections``, ``get_variable_records``);
    string stores' connection values are parsed here, each id on its own."""
    if kind == "connection":
        if supports(backend, "structured"):
            found = call_backend_method(backend.get_connections, ids, team_name=team_name)  # type: ignore[union-attr]
            return {key: _as_connection(backend, key, value) for key, value in found.items()}
        raw = call_backend_method(backend.get_conn_values, ids, team_name=team_name)  # type: ignore[union-attr]
        return {key: _as_connection(backend, key, value) for key, value in raw.items()}
    if records and isinstance(backend, BaseBackend):
        return dict(call_backend_method(backend.get_variable_records, ids, team_name=team_name))
    values = call_backend_method(backend.get_variables, ids, team_name=team_name)  # type: ignore[union-attr]
    if records:
        return {key: Variable(key, value) for key, value in values.items()}
    return dict(values)


def read_all(backend: Backend, kind: Kind, *, team_name: str | None = None) -> dict[str, Outcome]:
    """Everything under the backend's prefix (it must support "prefetch"), parsed as :func:`read_batch`."""
    method = backend.prefetch_connections if kind == "connection" else backend.prefetch_variables  # type: ignore[union-attr]
    found = call_backend_method(method, team_name=team_name)
    if kind == "connection":
        return {key: _as_connection(backend, key, value) for key, value in found.items()}
    return dict(found)


def list_ids(backend: Backend, kind: Kind) -> list[str]:
    """The ids the backend lists; a backend without "list" raises ReadOnlyBackend ("cannot list")."""
    if not supports(backend, "list"):
        raise ReadOnlyBackend(f"{label_of(backend)} cannot list {kind}s")
    return list(backend.list_connections() if kind == "connection" else backend.list_variables())  # type: ignore[union-attr]


def batched(backend: Backend, kind: Kind) -> bool:
    """Whether ``kind`` is read in batches from ``backend`` (config is always read one key at a time)."""
    return kind in _BATCHED_KINDS and supports(backend, "batch")


def read_many(
    backend: Backend,
    kind: Kind,
    ids: Iterable[str],
    *,
    team_name: str | None = None,
    records: bool = False,
    pool: Executor | None = None,
    chunk: int = READ_CHUNK,
) -> dict[str, Outcome]:
    """Hits among ``ids`` (misses are absent): in batches of ``chunk`` where the backend has batch reads,
    else one read per id; concurrently on ``pool`` if given. A failed call is the exception of each id it
    covered, so one bad chunk or id never hides the others' answers."""
    ids = list(ids)
    results: dict[str, Outcome] = {}
    if not ids:
        return results
    if batched(backend, kind):
        chunks = [ids[start : start + chunk] for start in range(0, len(ids), chunk)]

        def batch(part: list[str]) -> dict[str, Outcome]:
            return read_batch(backend, kind, part, team_name=team_name, records=records)

        for part, outcome in zip(chunks, _run(pool, batch, chunks), strict=True):
            if isinstance(outcome, BaseException):
                results.update(dict.fromkeys(part, outcome))
            else:
                results.update((key, value) for key, value in outcome.items() if key in part)
        return results

    def one(key: str) -> Outcome | None:
        if records and kind == "variable" and isinstance(backend, BaseBackend):
            record = call_backend_method(backend.get_variable_record, key, team_name=team_name)
            if record is not None and not isinstance(record.value, str):
                raise _not_a_string(backend, kind, key, record.value, None)
            return record  # type: ignore[no-any-return]
        return read(backend, kind, key, team_name=team_name)

    for key, outcome in zip(ids, _run(pool, one, ids), strict=True):
        if outcome is not None:
            results[key] = outcome
    return results


# --- helpers -----------------------------------------------------------------------------------------


def _run(pool: Executor | None, func: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``func`` over ``items`` (on ``pool`` if given), each result or the exception it raised."""
    if pool is None:
        out: list[Any] = []
        for item in items:
            try:
                out.append(func(item))
            except Exception as exc:
                out.append(exc)
        return out
    futures: list[Future[Any]] = [pool.submit(func, item) for item in items]
    results: list[Any] = []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as exc:
            results.append(exc)
    return results


def _not_a_string(backend: Backend, kind: Kind, key: str, value: Any, name: str | None) -> BackendError:
    return BackendError(
        f"{label_of(backend, name)}: returned a {type(value).__name__} for {kind} {key!r}, not a string",
        backend=name or name_of(backend),
    )


def _as_connection(backend: Backend, conn_id: str, value: Any) -> Connection | BaseException:
    try:
        if isinstance(value, Connection):
            return value.with_id(conn_id)
        if isinstance(backend, BaseBackend):
            return backend.deserialize_connection(conn_id, value)
        converted = as_connection(value, conn_id)
        if converted is None:
            raise BackendError(f"{label_of(backend)}: returned nothing for connection {conn_id!r}")
        return converted
    except Exception as exc:  # one malformed value fails its id only
        return exc


def _method(backend: Any, name: str) -> Callable[..., Any] | None:
    """One of the three reads (or ``get_connection``): always there on a BaseBackend; a foreign
    Airflow-style object may lack one (Airflow itself reads ``get_conn_value`` else ``get_connection``)."""
    method = getattr(backend, name, None)
    return method if callable(method) else None


def as_connection(obj: Any, conn_id: str) -> Connection | None:
    """Convert a foreign connection object (e.g. Airflow's) by its attributes."""
    if obj is None or isinstance(obj, Connection):
        return obj
    if isinstance(obj, str):
        return Connection.from_value(obj, conn_id=conn_id)
    extra = getattr(obj, "extra", None)
    return Connection(
        conn_id=conn_id,
        conn_type=getattr(obj, "conn_type", None),
        description=getattr(obj, "description", None),
        host=getattr(obj, "host", None),
        login=getattr(obj, "login", None),
        password=getattr(obj, "password", None),
        schema=getattr(obj, "schema", None),
        port=getattr(obj, "port", None),
        extra=extra if extra else None,
    )
