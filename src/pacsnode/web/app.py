"""The ASGI application: one FastAPI app, routers per feature."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..access.http import AccessMiddleware
from ..access.routes import router as access_router
from ..access.setup import access_options, make_audit_trail
from ..errors import PacsnodeError
from ..node import Node

__all__ = ["create_app"]

log = logging.getLogger("pacsnode.web")


class _Unexpected:
    """Any exception a route lets through becomes a 500 whose body is a
    plain sentence (``api.INTERNAL_ERROR``), never the exception's text; the
    traceback goes to the log.  Caught here rather than left to Starlette,
    whose handler re-raises to the server, which then drops the client's
    keep-alive connection.  (An error after a response has started can only
    end that response.)"""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            from .api import INTERNAL_ERROR
            await JSONResponse({"error": INTERNAL_ERROR}, status_code=500)(scope, receive, send)


class Health(BaseModel):
    """``ok`` once both the DIMSE and the HTTP listeners accept connections."""

    status: Literal["ok", "starting"]


def create_app(node: Node, ready: Any = None) -> FastAPI:
    """``ready()`` says whether every listener accepts connections (health).

    Access control is one middleware (access/http.py) applying one table
    (access/policy.py) to every route mounted here; ``app.state.audit`` is
    the audit trail (``serve`` closes it)."""
    app = FastAPI(title="pacsnode", version="0.1.0", openapi_url="/api/v1/openapi.json",
                  docs_url="/api/v1/docs", redoc_url=None)
    app.state.node = node
    app.state.audit = make_audit_trail(node.settings, node.db)
    # Added before CORS, so CORS wraps it: a browser's preflight (which
    # carries no credentials) is answered before access is checked.
    app.add_middleware(AccessMiddleware, **access_options(node.settings, node.db,
                                                          app.state.audit))
    # Outside the access check, inside CORS: any unexpected failure is a
    # plain 500 sentence, never exception text, and the connection stays.
    app.add_middleware(_Unexpected)
    if node.settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(node.settings.cors_origins),
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["Warning", "Location", "Content-Location", "ETag"])

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes, wrong methods: the same {"error": why} body as ours.
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(PacsnodeError)
    async def _pacsnode_error(_request: Request, exc: PacsnodeError) -> JSONResponse:
        return JSONResponse({"error": exc.reason}, status_code=exc.http_status)

    @app.get("/api/v1/health", tags=["node"], summary="Liveness of both listeners",
             response_model=Health,
             responses={503: {"model": Health, "description": "a listener is not up yet"}})
    def health() -> JSONResponse:
        ok = ready() if ready is not None else True
        if not ok:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    for name in ("dicomweb", "ups", "api", "changes", "series_api"):
        try:
            module = __import__(f"pacsnode.web.{name}", fromlist=["router"])
        except ImportError:
            continue  # feature not built yet
        app.include_router(module.router)
    app.include_router(access_router)
    return app
