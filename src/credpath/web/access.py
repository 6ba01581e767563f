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

__all__ = ["access_view", "register"]

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


def register(app: FastAPI, *, title: str = "credpath", path: Path | None = None) -> None:
    """Add ``GET /access`` to the inventory app (the audit file: ``path``, else ``[audit] path``)."""
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
