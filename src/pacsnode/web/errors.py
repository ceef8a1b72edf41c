"""How the HTTP side answers a failure: one body, one error type, one handler.

Every refusal is ``{"error": "<reason in plain words>"}`` with its status:

* the core errors (``pacsnode.errors``: bad query, not found, conflict,
  storage failure…) carry their own HTTP status;
* ``WebError`` is a refusal an HTTP adapter decides itself (400 for a bad
  parameter, 406, 413, 415, 501…), with the status given where it is raised;
* Starlette's own answers (unknown route, wrong method) get the same body;
* anything unexpected is a 500 whose body is ``INTERNAL_ERROR``, never the
  exception's text (``Answers``); the traceback goes to the log.

``install`` registers the handlers on the app.  Adapters with a protocol of
their own wrap the same errors in their shape (UPS-RS adds a ``Warning``
header, pfdcm's ``/api/v1/cmd`` its ``{"status": false, …}``).
"""

from __future__ import annotations

import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PacsnodeError
from .metrics import count_answer

__all__ = ["INTERNAL_ERROR", "Answers", "WebError", "error_response", "install"]

log = logging.getLogger("pacsnode.web")

#: What a client reads when something failed that it did not cause: never
#: the exception's text (a Python internal, paths); the log has the details.
INTERNAL_ERROR = ("internal error: the server could not complete this request; "
                  "its log has the details")


class WebError(PacsnodeError):
    """A refusal decided by an HTTP adapter, with its HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = status


def error_response(exc: PacsnodeError) -> JSONResponse:
    """``{"error": reason}`` with the error's HTTP status."""
    return JSONResponse({"error": exc.reason}, status_code=exc.http_status)


async def _pacsnode_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PacsnodeError)
    return error_response(exc)


async def _starlette_error(request: Request, exc: Exception) -> JSONResponse:
    # Unknown routes, wrong methods: the same {"error": why} body as ours.
    assert isinstance(exc, StarletteHTTPException)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:  # every method of the path, not the first route's
        from .openapi import allowed_methods
        headers = {**(headers or {}),
                   "Allow": ", ".join(allowed_methods(request.app, request.scope))}
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                        headers=headers)


def install(app: FastAPI) -> None:
    """Answer the errors routes raise with ``{"error": …}`` (the 500 of an
    unexpected one is ``Answers``, a middleware the app places)."""
    app.add_exception_handler(StarletteHTTPException, _starlette_error)
    app.add_exception_handler(PacsnodeError, _pacsnode_error)


class Answers:
    """The outermost of our middlewares (inside CORS): counts each request in
    the metrics when its answer starts (``metrics.count_answer``), and turns
    any exception a route lets through into a 500 whose body is
    ``INTERNAL_ERROR``, the traceback going to the log.  Caught here rather
    than left to Starlette, whose handler re-raises to the server, which
    then drops the client's keep-alive connection.  (An error after a
    response has started can only end that response.)  One middleware for
    both: each ASGI layer, with its send wrapper, cost ~5 µs of a ~1.2 ms
    QIDO-RS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        answered = False

        async def watch(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                count_answer(scope, int(message["status"]), began)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if answered:
                raise
            await JSONResponse({"error": INTERNAL_ERROR}, status_code=500)(scope, receive, watch)
        except BaseException:  # cancelled: the client went away
            if not answered:
                count_answer(scope, None, began)
            raise
