"""``credpath web``: a read-only inventory of every connection and variable id, standalone or in Airflow.

Needs the ``web`` extra (``pip install 'credpath[web]'``): FastAPI, uvicorn, Jinja2, prometheus-client.
"""

from __future__ import annotations

from typing import Any


def create_app(search_path: Any, **kwargs: Any) -> Any:
    """See :func:`credpath.web.app.create_app` (imported lazily: FastAPI is an optional dependency)."""
    from credpath.web.app import create_app as _create_app

    return _create_app(search_path, **kwargs)


__all__ = ["create_app"]
