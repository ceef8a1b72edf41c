"""The node's numbers over HTTP: ``GET /api/v1/statistics`` (JSON),
``GET /metrics`` (Prometheus text) and the middleware that counts HTTP
operations for it (``pacsnode.metrics`` holds the metrics).

An HTTP request is counted by what its route does, the permission the
access policy gives it (``access/policy.py``): STOW-RS is a ``store``,
QIDO-RS a ``query``, WADO-RS/URI a ``retrieve``, …; its outcome by status
(2xx/3xx ok, 4xx refused, 5xx failed)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..access.policy import rule_for
from ..metrics import operation, registry_for, statistics

__all__ = ["router", "MetricsMiddleware"]

router = APIRouter(tags=["node"])

#: Permission of a route → the operation it counts as.
_OPERATION = {"query": "query", "retrieve": "retrieve", "store": "store", "delete": "delete",
              "worklist": "worklist", "remote": "remote", "jobs": "jobs"}


def _operation(method: str, path: str) -> str:
    rule = rule_for(method, path)
    return _OPERATION.get(rule.permission, "other") if rule is not None else "other"


class MetricsMiddleware:
    """Counts each HTTP request when its answer has started (the latency of
    a streamed body is the time to its first byte)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        protocol = "dicomweb" if path.startswith(("/dicomweb", "/wado")) else "rest"
        counted = False

        async def watch(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                status = int(message["status"])
                outcome = "ok" if status < 400 else "refused" if status < 500 else "failed"
                operation(protocol, _operation(scope["method"], path), outcome,
                          time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except BaseException:
            if not counted:
                operation(protocol, _operation(scope["method"], path), "failed",
                          time.perf_counter() - started)
            raise


@router.get("/metrics", summary="Prometheus metrics",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus text exposition format"}})
async def metrics(request: Request) -> Response:
    node = request.app.state.node
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = request.app.state.metrics_registry = registry_for(node)
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class Statistics(BaseModel):
    """What the archive holds, and the free space left for more."""

    patients: int
    studies: int
    series: int
    instances: int
    #: Bytes of the stored instances (as stored).
    bytes: int
    #: Free bytes on the file system of the blob store.
    disk_free: int


@router.get("/api/v1/statistics", tags=["archive"], summary="What the archive holds",
            response_model=Statistics)
async def get_statistics(request: Request) -> Statistics:
    stats = await run_in_threadpool(statistics, request.app.state.node)
    return Statistics(**stats)
