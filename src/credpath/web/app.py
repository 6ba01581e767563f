"""The read-only web inventory as an ASGI app (FastAPI, Jinja2 templates rendered on the server, no JS).

:func:`create_app` takes a search path, so the same app runs standalone (``credpath web``, on uvicorn)
and mounted in Airflow's API server (:mod:`credpath.airflow_plugin`, behind Airflow's own auth).

Never a secret value: no view puts a password, an extra or a sensitive variable's value in a page (see
:mod:`credpath.web.views`); error pages are generic and echo nothing from the request (a 404 for an
unknown id does not repeat the id; a malformed request is a 404, not FastAPI's 422 that echoes input).

Store cost: each page's data is built at most once per ``cache_seconds`` (the page says how old it is),
a cached miss answers an unknown id, and page builds that reach the stores are rate-limited per client
(:mod:`credpath.web.budget`).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

from credpath import metrics
from credpath.web import access, views
from credpath.web.budget import PageCache, RateLimited, RateLimiter, host_allowed

__all__ = ["create_app"]


TEMPLATES = Path(__file__).parent / "templates"
TOKEN_COOKIE = "credpath_web_token"
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # No script at all; styles inline; framing only by the same origin (Airflow's UI shows it in a frame).
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'self'; base-uri 'none'"
    ),
}
_OPEN_PATHS = ("/login", "/healthz")
#: Defaults of ``credpath web --cache-seconds`` and ``--store-requests-per-minute``.
CACHE_SECONDS = 10.0
STORE_REQUESTS_PER_MINUTE = 30.0


def create_app(
    search_path: Any,
    *,
    token: str | None = None,
    dependencies: Sequence[Any] = (),
    title: str = "credpath",
    allowed_hosts: Sequence[str] | None = None,
    cache_seconds: float = CACHE_SECONDS,
    store_requests_per_minute: float = STORE_REQUESTS_PER_MINUTE,
) -> FastAPI:
    """The inventory app over ``search_path``.

    ``token``: when set, every page needs ``Authorization: Bearer <token>`` or the cookie set by the
    ``/login`` form. ``dependencies``: FastAPI dependencies run before every route (inside Airflow:
    its auth manager's checks). ``allowed_hosts``: when not None and no token is set, only requests
    whose ``Host`` is a loopback name or address or one of these are answered (others: 421), so a
    DNS-rebinding page cannot read the inventory. ``cache_seconds``: how long a page's data is reused;
    ``store_requests_per_minute``: page builds that reach the stores, per client (0: no limit).
    """
    metrics.enable()
    metrics.instrument(search_path)
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    app = FastAPI(
        title=title,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=list(dependencies),
    )
    app.state.search_path = search_path
    pages: PageCache[Any] = PageCache(cache_seconds)
    limiter = RateLimiter(store_requests_per_minute)
    app.state.pages, app.state.limiter = pages, limiter
    check_host = token is None and allowed_hosts is not None
    extra_hosts = tuple(allowed_hosts or ())

    def build(request: Request, key: Any, func: Any) -> tuple[Any, float]:
        client = request.client.host if request.client else ""
        return pages.get(key, func, admit=lambda: limiter.take(client))

    def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        html = env.get_template(template).render(base=base, title=title, **context)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def not_found(request: Request) -> HTMLResponse:
        return render(request, "error.html", 404, heading="Not found", message="No such page or id.")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        path = request.scope["path"][len(request.scope.get("root_path", "")) :] or "/"
        if check_host and not host_allowed(request.headers.get("host", ""), extra_hosts):
            # 421: this server does not serve that name (echoes nothing of it).
            return Response(
                "unknown host\n", status_code=421, headers=_SECURITY_HEADERS, media_type="text/plain"
            )
        if token is not None and not path.startswith(_OPEN_PATHS) and not _authorised(request, token):
            if "text/html" in request.headers.get("accept", ""):
                return RedirectResponse(f"{request.scope.get('root_path', '')}/login", 303)
            return Response(
                "authentication required\n",
                status_code=401,
                headers={**_SECURITY_HEADERS, "WWW-Authenticate": "Bearer"},
                media_type="text/plain",
            )
        try:
            response: Response = await call_next(request)
        except Exception:  # an unexpected failure: a generic page, never a traceback or a value
            return render(request, "error.html", 500, heading="Error", message="The page failed to render.")
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return not_found(request)
        if exc.status_code in (401, 403):  # Airflow's auth dependencies: keep their status, echo nothing
            return render(
                request,
                "error.html",
                exc.status_code,
                heading="Not allowed",
                message="You are not signed in, or not allowed to read connections.",
            )
        return render(request, "error.html", exc.status_code, heading="Error", message="Request refused.")

    @app.exception_handler(RateLimited)
    async def limited(request: Request, exc: RateLimited) -> Response:
        response = render(
            request,
            "error.html",
            429,
            heading="Too many requests",
            message="This page asks the secret stores; try again in a few seconds.",
        )
        response.headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return not_found(request)  # FastAPI's 422 body would echo the input

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        return render(request, "error.html", 500, heading="Error", message="The page failed to render.")

    @app.get("/", response_class=HTMLResponse, name="inventory")
    def inventory_page(
        request: Request, q: str = "", backend: str = "", kind: str = "", collisions: str = ""
    ) -> HTMLResponse:
        sp = request.app.state.search_path
        inv, age = build(request, "inventory", lambda: views.inventory(sp))
        if kind not in ("", *views.KINDS):
            kind = ""
        if backend not in inv.backends:
            backend = ""
        rows = views.filter_rows(inv.rows, q=q, backend=backend, kind=kind, collisions=bool(collisions))
        reads, reads_from = access.reads_of(sp, [(r.kind, r.id) for r in rows])
        return render(
            request,
            "inventory.html",
            inv=inv,
            rows=rows,
            reads=reads,
            reads_from=reads_from,
            total=len(inv.rows),
            collisions_total=sum(1 for r in inv.rows if r.collision),
            q=q,
            backend=backend,
            kind=kind,
            collisions=bool(collisions),
            detail_href=lambda row: f"/id/{row.kind}?{urlencode({'key': row.id})}",
            age=age,
            cache_seconds=cache_seconds,
        )

    @app.get("/id/{kind}", response_class=HTMLResponse, name="detail")
    def detail_page(request: Request, kind: str, key: str = "") -> HTMLResponse:
        sp = request.app.state.search_path
        if kind not in views.KINDS or not key:
            return not_found(request)
        found, age = build(request, ("detail", kind, key), lambda: views.detail(sp, kind, key))
        if not found.found:
            message = "No such id."
            if found.failed:  # backend names come from the configuration, never from the URL
                message = f"Not found in the backends that answered; {', '.join(found.failed)} failed."
            return render(request, "error.html", 404, heading="Not found", message=message)
        reads, reads_from = access.reads_of(sp, [(kind, key)])
        return render(
            request,
            "detail.html",
            d=found,
            read=reads.get((kind, key)),
            reads_from=reads_from,
            age=age,
            cache_seconds=cache_seconds,
        )

    @app.get("/backends", response_class=HTMLResponse, name="backends")
    def backends_page(request: Request) -> HTMLResponse:
        search_path = request.app.state.search_path
        rows, age = build(request, "backends", lambda: views.backends(search_path))
        return render(
            request,
            "backends.html",
            rows=rows,
            failed=sum(1 for r in rows if not r.ok),
            cache=views.shared_cache_stats(search_path),
            age=age,
            cache_seconds=cache_seconds,
        )

    @app.get("/metrics")
    def metrics_page() -> Response:
        body, content_type = metrics.prometheus_text()
        return Response(body, media_type=content_type, headers=_SECURITY_HEADERS)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", media_type="text/plain")

    def listing(request: Request) -> list[tuple[str, str, list[str]]]:
        sp = request.app.state.search_path
        inv, _age = build(request, "inventory", lambda: views.inventory(sp))
        return [(row.kind, row.id, list(row.holders)) for row in inv.rows]

    # GET /access, /report: who read what, from the audit trail
    access.register(app, title=title, listing=listing)

    if token is not None:

        @app.get("/login", response_class=HTMLResponse)
        def login_form(request: Request) -> HTMLResponse:
            return render(request, "login.html", failed=False)

        @app.post("/login", response_class=HTMLResponse)
        async def login(request: Request) -> Response:
            # A urlencoded form parsed here (no python-multipart): the token goes in a POST body, never a URL.
            body = (await request.body())[:4096].decode("utf-8", "replace")
            given = (parse_qs(body).get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), token.encode()):
                return render(request, "login.html", 401, failed=True)
            response = RedirectResponse(f"{request.scope.get('root_path', '')}/", 303)
            response.set_cookie(
                TOKEN_COOKIE, _session_value(token), httponly=True, samesite="strict", path="/"
            )
            return response

    return app


def _session_value(token: str) -> str:
    """The cookie's value: derived from the token, so the token itself is never sent back to a browser."""
    return hmac.new(token.encode(), b"credpath-web-session", "sha256").hexdigest()


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return hmac.compare_digest(header[7:].strip().encode(), token.encode())
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _session_value(token).encode())
