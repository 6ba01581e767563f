"""Listing every id of one kind across the backends that can list."""

from __future__ import annotations

from credpath import _reading as reading
from credpath._lookup.model import Listing, named
from credpath._lookup.policy import call, failure
from credpath._lookup.state import LookupState
from credpath._lookup.trace import LookupContext
from credpath.errors import ReadOnlyBackend
from credpath.protocol import Kind, supports

__all__ = ["list_ids"]


def list_ids(state: LookupState, kind: Kind) -> Listing:
    """Every id of ``kind`` the backends can list; AccessDenied/ConfigError propagate, on_error="fail"
    raises, other failures are named in ``Listing.failed``."""
    found: dict[str, list[str]] = {}
    cannot: list[str] = []
    failed: dict[str, str] = {}
    context = LookupContext(kind, "*")
    for entry in state.entries:
        if not supports(entry.backend, "list"):
            cannot.append(entry.name)
            continue
        try:
            ids = call(context, entry, "list", kind, reading.list_ids, entry.backend, kind)
        except ReadOnlyBackend:
            cannot.append(entry.name)
            continue
        except Exception as exc:
            error = failure(state, entry, exc, f"listing {kind}s", then="listing the other backends")
            failed[entry.name] = named(entry, error)  # type: ignore[arg-type]
            continue
        for key in ids:
            if entry.wants(kind, key):
                found.setdefault(key, []).append(entry.name)
    return Listing(dict(sorted(found.items())), cannot, failed)
