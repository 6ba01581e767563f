"""What the web pages show, built from a search path: plain data, no secret value ever.

Every string that reaches a page passes :func:`_safe` (the search path's masker: each password and
sensitive extra the search path has read is in it). Passwords and extras are never put in a row at all;
a variable's value only when its key is not sensitive, and then through
:func:`credpath._masking.redact_text_value` (a JSON value's sensitive keys are masked at any depth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from credpath import metrics
from credpath._masking import is_sensitive_key, redact_text_value
from credpath._teams import team_view
from credpath.errors import BackendUnavailable, ConfigError, CredpathError, safe_reason
from credpath.protocol import supports

__all__ = [
    "BackendRow",
    "Detail",
    "Inventory",
    "Row",
    "backends",
    "detail",
    "filter_rows",
    "inventory",
    "shared_cache_stats",
]


KINDS = ("connection", "variable")
#: Longest variable value shown (the inventory is an index, not an export).
MAX_VALUE = 120


@dataclass
class Row:
    kind: str
    id: str
    source: str  # the backend that serves it ("" when the lookup failed)
    holders: list[str]  # the listing backends that hold it, search order
    shadowed: list[str]  # holders other than the source: copies a lookup never reaches
    status: str = "ok"  # "ok" | "unavailable" | "error" | "missing"
    note: str = ""
    conn_type: str = ""
    host: str = ""
    port: str = ""
    schema: str = ""
    login: str = ""
    description: str = ""
    value: str = ""  # variables: the masked value; "(sensitive)" for a sensitive key

    @property
    def collision(self) -> bool:
        return len(self.holders) > 1 or bool(self.source and self.holders and self.source not in self.holders)


@dataclass
class Inventory:
    rows: list[Row]
    backends: list[str]
    cannot_list: dict[str, list[str]] = field(default_factory=dict)  # kind -> backends
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> backend -> safe reason
    error: str = ""
    #: Ids owned by a team (Airflow 3 multi-team): listed by their store, but not readable without the
    #: team, so not shown (as Airflow's UI shows a caller only what it can read), counted per kind.
    other_teams: dict[str, int] = field(default_factory=dict)


def _safe(search_path: Any, value: Any) -> str:
    if value is None:
        return ""
    return str(search_path.masker.redact(str(value)))


def inventory(search_path: Any) -> Inventory:
    """Every id every listing backend holds, with the backend a lookup is served by (one lookup per id:
    through the cache, so a warm page costs no store call for cached backends)."""
    inv = Inventory(rows=[], backends=list(search_path.names))
    for kind in KINDS:
        try:
            listing = search_path.list_ids(kind)
        except CredpathError as exc:  # ConfigError / AccessDenied / on_error="fail": say it, render the rest
            inv.failed.setdefault(kind, {})["(listing)"] = safe_reason(exc)
            continue
        inv.cannot_list[kind] = list(listing.cannot_list)
        if listing.failed:
            inv.failed[kind] = dict(listing.failed)
        view = team_view(search_path, kind, dict(listing.found), None)
        if view.hidden:
            inv.other_teams[kind] = view.hidden
        for key, holders in view.found.items():
            inv.rows.append(_row(search_path, kind, key, list(holders)))
    return inv


def _row(search_path: Any, kind: str, key: str, holders: list[str]) -> Row:
    row = Row(kind=kind, id=key, source="", holders=holders, shadowed=[])
    try:
        resolution = search_path.lookup(kind, key)
    except BackendUnavailable as exc:
        row.status, row.note = "unavailable", safe_reason(exc)
        row.shadowed = holders[1:]
        return row
    except (ConfigError, CredpathError) as exc:
        row.status, row.note = "error", safe_reason(exc)
        return row
    except Exception as exc:  # a foreign backend's own exception: named by type only
        row.status, row.note = "error", safe_reason(exc)
        return row
    if resolution is None:  # listed, but a lookup does not find it (e.g. a lookup pattern)
        row.status, row.note = "missing", "listed, but a lookup does not find it"
        return row
    row.source = resolution.source
    row.shadowed = [h for h in holders if h != resolution.source]
    value = resolution.value
    if kind == "connection":
        row.conn_type = _safe(search_path, value.conn_type)
        row.host = _safe(search_path, value.host)
        row.port = "" if value.port is None else str(value.port)
        row.schema = _safe(search_path, value.schema)
        row.login = _safe(search_path, value.login)
        row.description = _safe(search_path, value.description)
    else:
        row.value = variable_value(search_path, key, value)
    return row


def variable_value(search_path: Any, key: str, value: Any) -> str:
    if is_sensitive_key(key):
        return "(sensitive: not shown)"
    if value is None:
        return ""
    text = redact_text_value(str(value), key, masker=getattr(search_path, "masker", None))
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + "..."


def filter_rows(
    rows: list[Row], *, q: str = "", backend: str = "", kind: str = "", collisions: bool = False
) -> list[Row]:
    needle = q.strip().lower()
    out = []
    for row in rows:
        if kind and row.kind != kind:
            continue
        if backend and backend != row.source and backend not in row.holders:
            continue
        if collisions and not row.collision:
            continue
        if needle and not any(
            needle in text.lower() for text in (row.id, row.conn_type, row.host, row.description)
        ):
            continue
        out.append(row)
    return out


# --- one id ----------------------------------------------------------------------------------------------


@dataclass
class Detail:
    kind: str
    id: str
    source: str | None
    tier: str
    summary: str
    attempts: list[dict[str, str]]
    holders: list[str]
    fields: list[tuple[str, str]]
    failed: list[str] = field(default_factory=list)
    #: The store's version of the value served, and the version each cache tier holds ("" none reported).
    version: str = ""
    held: list[tuple[str, str]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.source is not None


def detail(search_path: Any, kind: str, key: str) -> Detail:
    """The explain of ``key``; not ``found`` when no backend that answered has it (the caller's 404)."""
    probe = search_path.explain(kind, key, use_cache=True)
    if probe.cached and probe.source is None:
        # A cached miss: answered from the miss cache, no store is asked again for an unknown id.
        return Detail(kind, key, None, "", "", [], [], [])
    cached = probe.cached and probe.found
    explanation = search_path.explain(kind, key)
    if not explanation.found:
        # Not found (or not found while a backend failed): the caller's 404 repeats nothing of the URL.
        return Detail(kind, key, None, "", "", [], [], [], failed=list(explanation.failed))
    if cached:
        tier = "process (in-process cache)"
    elif explanation.stale:
        tier = "stale (the source failed; its last good value)"
    elif explanation.found:
        tier = "store (read from the backend)"
    else:
        tier = "none (unavailable)"
    attempts = [
        {
            "backend": a.backend,
            "outcome": a.outcome,
            "ms": f"{a.seconds * 1000:.3f}",
            "startup_ms": f"{a.startup_seconds * 1000:.3f}" if a.startup_seconds else "",
            "breaker": a.breaker,
            "detail": _safe(search_path, a.detail),
        }
        for a in explanation.attempts
    ]
    # The copies a lookup never reaches: from the listings (what the inventory shows), plus the source.
    try:
        holders = list(search_path.list_ids(kind).found.get(key, []))
    except Exception:
        holders = []
    if explanation.source and explanation.source not in holders:
        holders.insert(0, explanation.source)
    fields: list[tuple[str, str]] = []
    if explanation.found:
        try:
            resolution = search_path.lookup(kind, key)
        except Exception:
            resolution = None
        if resolution is not None:
            value = resolution.value
            if kind == "connection":
                fields = [
                    ("conn_type", _safe(search_path, value.conn_type)),
                    ("host", _safe(search_path, value.host)),
                    ("port", "" if value.port is None else str(value.port)),
                    ("schema", _safe(search_path, value.schema)),
                    ("login", _safe(search_path, value.login)),
                    ("password", "(set: not shown)" if value.password else ""),
                    ("extra", "(set: not shown)" if value.extra else ""),
                    ("description", _safe(search_path, value.description)),
                ]
            else:
                fields = [("value", variable_value(search_path, key, value))]
    return Detail(
        kind=kind,
        id=key,
        source=explanation.source,
        tier=tier,
        summary=_summary(explanation),
        attempts=attempts,
        holders=holders,
        fields=fields,
        version=explanation.version or "",
        held=[(tier_name, v or "(none reported)") for tier_name, v in probe.held.items()]
        if any(v is not None for v in probe.held.values())
        else [],
    )


def _summary(explanation: Any) -> str:
    failed = ", ".join(explanation.failed)
    if explanation.stale:
        return f"served by {explanation.source} (stale: its refresh failed)"
    if explanation.fell_through:
        return f"served by {explanation.source} (while {failed} failed)"
    if explanation.found:
        return f"served by {explanation.source}"
    return f"not found in the backends that answered, but {failed} failed: an outage, not a miss"


# --- backends ---------------------------------------------------------------------------------------------


@dataclass
class BackendRow:
    name: str
    description: str
    on_error: str
    ok: bool
    ms: str
    breaker: str
    detail: str
    counts: dict[str, int]
    can_list: str


def backends(search_path: Any) -> list[BackendRow]:
    """Each backend in search order with its check() (always reaches the store), breaker and counts."""
    rows = []
    for entry in search_path.entries:
        started = time.perf_counter()
        check = getattr(entry.backend, "check", None)
        try:
            detail = str(check()) if callable(check) else "no check available"
            ok = True
        except Exception as exc:
            detail, ok = safe_reason(exc), False
        if callable(check) and metrics.on:
            metrics.count_store(entry.name, "backend", "check", "hit" if ok else "error")
        describe = getattr(entry.backend, "describe", None)
        try:
            description = str(describe()) if callable(describe) else type(entry.backend).__name__
        except Exception:
            description = type(entry.backend).__name__
        lists = ["connections", "variables"] if supports(entry.backend, "list") else []
        rows.append(
            BackendRow(
                name=entry.name,
                description=_safe(search_path, description),
                on_error=entry.on_error,
                ok=ok,
                ms=f"{(time.perf_counter() - started) * 1000:.1f}",
                breaker=entry.breaker.describe(),
                detail=_safe(search_path, detail),
                counts=metrics.store_counts(entry.name),
                can_list=", ".join(lists) or "no",
            )
        )
    return rows


def shared_cache_stats(search_path: Any) -> dict[str, Any] | None:
    """The shared tier's counters, as ``credpath cache stats`` reads them; None without a tier, or a
    one-key ``{"error": ...}`` when the tier cannot be read (the page still renders)."""
    shared = getattr(search_path, "shared", None)
    if shared is None:
        return None
    from credpath._shared_cache import stats_report

    try:
        return stats_report(shared)
    except Exception as exc:  # the tier is down: say so by type, never its URL or password
        return {
            "error": f"shared cache {shared.description}: reading its counters failed ({type(exc).__name__})"
        }
