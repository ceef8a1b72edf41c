"""The node's numbers over HTTP: ``GET /api/v1/statistics`` (JSON),
``GET /metrics`` (Prometheus text) and how an HTTP operation is counted
for it (``count_answer``, called by ``errors.Answers``; ``pacsnode.metrics``
holds the metrics).

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
from starlette.types import Scope

from ..access.policy import rule_for
from ..metrics import operation, registry_for, statistics

__all__ = ["router", "count_answer"]

router = APIRouter(tags=["node"])

#: Permission of a route → the operation it counts as.
_OPERATION = {"query": "query", "retrieve": "retrieve", "store": "store", "delete": "delete",
              "worklist": "worklist", "remote": "remote", "jobs": "jobs"}


def count_answer(scope: Scope, status: int | None, began: float) -> None:
    """Count an HTTP request whose answer starts with ``status`` (None: it
    ended unanswered), ``began`` (``perf_counter``) when it came in; its
    operation by the access rule that governed it (which AccessMiddleware
    keeps in the scope's state)."""
    path = scope["path"]
    protocol = "dicomweb" if path.startswith(("/dicomweb", "/wado")) else "rest"
    rule = scope.get("state", {}).get("rule") or rule_for(scope["method"], path)
    kind = _OPERATION.get(rule.permission, "other") if rule is not None else "other"
    outcome = ("failed" if status is None or status >= 500 else
               "refused" if status >= 400 else "ok")
    operation(protocol, kind, outcome, time.perf_counter() - began)


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
