"""The "Access" view: recent reads from the audit trail with filters, and per id its last read, reads in
the last hour and day, the tiers that served them and the dags that read it (never a value: the trail has
none).

Registered on the inventory app with one line in :func:`credpath.web.app.create_app`:
``access.register(app, title=title)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

__all__ = ["access_view", "reads_of", "register", "report_view"]

#: Events read from the end of the trail per page (the newest).
WINDOW = 20_000


def access_view(
    path: Path, *, ident: str = "", dag: str = "", backend: str = "", outcome: str = "", limit: int = 200
) -> dict[str, Any]:
    """The page's data: the newest matching events, and the per-id summary of the reads in the window."""
    from collections import deque

    from credpath import _audit
    from credpath.cli.audit import events_of

    window: deque[dict[str, Any]] = deque(maxlen=WINDOW)
    window.extend(events_of(path))
    reads: dict[tuple[str, str], dict[str, Any]] = {}
    for event in window:
        _audit.add_event(reads, event)
    checks = {"id": ident, "dag_id": dag, "backend": backend, "outcome": outcome}
    wanted = {k: v for k, v in checks.items() if v}
    recent = [e for e in window if all(e.get(k) == v for k, v in wanted.items())][-limit:]
    summary = []
    now = datetime.now(UTC).timestamp()
    for (kind, key), row in sorted(_audit.summarize(reads, now).items()):
        if ident and key != ident:
            continue
        last = datetime.fromtimestamp(row["last_read"], UTC).isoformat(timespec="seconds")
        summary.append({"kind": kind, "id": key, **row, "last_read": last})
    return {"recent": list(reversed(recent)), "summary": summary, "events": len(window)}


def reads_of(
    search_path: Any, ids: list[tuple[str, str]]
) -> tuple[dict[tuple[str, str], dict[str, Any]], str]:
    """Per (kind, id): last read, by whom, reads in the last hour and day, tiers. From the shared tier's
    counters (every process of the deployment) when it keeps them, else this process's own reads.
    Returns the rows and where they come from (shown on the page)."""
    from credpath import _audit

    try:
        deployed = _audit.deployment_reads(search_path, ids)
    except Exception as exc:  # the tier down: the page still renders, with this process's counts
        deployed, failed = None, type(exc).__name__
    else:
        failed = ""
    if deployed is not None:
        return _dated(deployed), f"the deployment (shared tier {search_path.shared.description})"
    rows = _dated(_audit.inventory())
    return rows, "this process" + (f" (the shared tier failed: {failed})" if failed else "")


def _dated(rows: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    for row in rows.values():
        row["last_read_text"] = datetime.fromtimestamp(row["last_read"], UTC).isoformat(timespec="seconds")
    return rows


def report_view(
    path: Path, search_path: Any, *, unused_days: int, many_dags: int, listed: Any = None
) -> dict[str, Any]:
    """The report panel's data: :func:`credpath._audit.report`, as ``credpath audit report`` prints it
    (``listed``: the inventory's cached listing, so the panel adds no store request)."""
    from credpath import _audit
    from credpath.cli.audit import events_of

    return _audit.report(
        events_of(path), search_path, unused_days=unused_days, many_dags=many_dags, listed=listed
    )


def register(app: FastAPI, *, title: str = "credpath", path: Path | None = None, listing: Any = None) -> None:
    """Add ``GET /access`` and ``GET /report`` to the inventory app (the audit file: ``path``, else
    ``[audit] path``; ``listing(request)``: the inventory's cached ``(kind, id, backends)``)."""
    from credpath.web.app import _SECURITY_HEADERS, TEMPLATES

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))

    @app.get("/access", response_class=HTMLResponse, name="access")
    def access_page(
        request: Request, id: str = "", dag: str = "", backend: str = "", outcome: str = ""
    ) -> HTMLResponse:
        from credpath import _audit

        file = path if path is not None else _audit.settings.file()
        data = access_view(file, ident=id, dag=dag, backend=backend, outcome=outcome)
        base = request.scope.get("root_path", "").rstrip("/")
        html = env.get_template("access.html").render(
            base=base, title=title, file=str(file), id=id, dag=dag, backend=backend, outcome=outcome, **data
        )
        return HTMLResponse(html, headers=_SECURITY_HEADERS)

    @app.get("/report", response_class=HTMLResponse, name="report")
    def report_page(request: Request, unused_days: int = 30, many_dags: int = 5) -> HTMLResponse:
        from credpath import _audit

        unused_days, many_dags = max(1, min(unused_days, 3650)), max(2, min(many_dags, 10_000))
        file = path if path is not None else _audit.settings.file()
        listed = listing(request) if listing is not None else None
        data = report_view(
            file, request.app.state.search_path, unused_days=unused_days, many_dags=many_dags, listed=listed
        )
        base = request.scope.get("root_path", "").rstrip("/")
        html = env.get_template("report.html").render(
            base=base, title=title, file=str(file), unused_days=unused_days, many_dags=many_dags, **data
        )
        return HTMLResponse(html, headers=_SECURITY_HEADERS)
