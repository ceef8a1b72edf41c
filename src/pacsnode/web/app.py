"""The ASGI application: one FastAPI app, routers per feature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..access.http import AccessMiddleware
from ..access.routes import router as access_router
from ..access.setup import access_options, make_audit_trail
from ..node import Node
from . import (api, api_docs, archive_zip, changes, dicomweb, errors, gateway, metrics, ohif,
               series_api, ui, ups, wado_uri)
from .openapi import install_openapi

__all__ = ["create_app"]


class Health(BaseModel):
    """``ok`` once both the DIMSE and the HTTP listeners accept connections."""

    status: Literal["ok", "starting"]


def create_app(node: Node, ready: Callable[[], bool] | None = None) -> FastAPI:
    """``ready()`` says whether every listener accepts connections (health).

    Access control is one middleware (access/http.py) applying one table
    (access/policy.py) to every route mounted here; ``app.state.audit`` is
    the audit trail (``serve`` closes it)."""
    app = FastAPI(title="pacsnode", version="0.1.0", openapi_url="/api/v1/openapi.json",
                  docs_url=None, redoc_url=None)  # docs: web/api_docs.py, no CDN
    app.state.node = node
    app.state.audit = make_audit_trail(node.settings, node.db)
    # Added before CORS, so CORS wraps it: a browser's preflight (which
    # carries no credentials) is answered before access is checked.
    app.add_middleware(AccessMiddleware, **access_options(node.settings, node.db,
                                                          app.state.audit))
    # Outside the access check, inside CORS: every answer is counted,
    # refusals too, and any unexpected failure is a plain 500 sentence,
    # never exception text, and the connection stays.
    app.add_middleware(errors.Answers)
    if node.settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(node.settings.cors_origins),
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["Warning", "Location", "Content-Location", "ETag"])

    errors.install(app)

    @app.get("/api/v1/health", tags=["node"], summary="Liveness of both listeners",
             response_model=Health,
             responses={503: {"model": Health, "description": "a listener is not up yet"}})
    def health() -> JSONResponse:
        ok = ready() if ready is not None else True
        if not ok:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    for module in (dicomweb, ups, api, changes, wado_uri, metrics, archive_zip, api_docs, ui,
                   ohif, gateway, series_api):
        app.include_router(module.router)
    app.include_router(access_router)
    install_openapi(app)
    return app
