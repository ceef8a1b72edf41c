"""The change feed under ``/api/v1/changes``: every store, replacement and
deletion (and UPS workitem change), in commit order, from the ``changes``
table that ingest, delete and UPS write in the same transaction as their rows.

* ``GET /api/v1/changes?since=N&limit=M`` — a page of changes with
  ``seq > N``; continue with ``since=<last>``.  Pages neither repeat nor skip.
* ``GET /api/v1/changes/latest`` — the newest sequence number (0 when empty).
* ``GET /api/v1/changes/stream?since=N`` — the same changes as server-sent
  events (``id:`` is the sequence number, ``data:`` the change as JSON),
  followed live until the client goes away.  Without ``since`` (or a
  ``Last-Event-ID`` header from a reconnecting ``EventSource``) the stream
  starts at the present.

Sequence numbers come from the database, so they are shared by every
``serve`` process on one PostgreSQL.  A sequence number may be missing (a
transaction that rolled back), never reused.  Because concurrent PostgreSQL
transactions can commit out of sequence order, a change is handed out only
once every smaller sequence number has committed or is known to have rolled
back (``GAP_GRACE_SECONDS``; the hosts' clocks must agree to within that).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from ..errors import BadQuery
from ..events import Event
from ..index.feeds import settled
from ..index.schema import changes
from ..node import Node
from ..query.parse import integer_param

__all__ = ["router", "Change", "ChangesPage", "LatestChange", "DEFAULT_LIMIT", "MAX_LIMIT"]

router = APIRouter(prefix="/api/v1/changes", tags=["change feed"])

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: How often a stream looks for changes made by other processes.
STREAM_POLL_SECONDS = 0.2
#: A comment line this often keeps proxies from closing an idle stream.
STREAM_KEEPALIVE_SECONDS = 15.0
_STREAM_BATCH = 500
#: How long a gap in the sequence may stay open before it counts as a
#: rolled-back transaction (``index.feeds.settled``).
GAP_GRACE_SECONDS = 5.0


class Change(BaseModel):
    """One change: an instance stored, replaced or deleted, or a UPS workitem
    created or updated."""

    seq: int = Field(description="Sequence number: increasing in commit order, never reused.")
    action: str = Field(description="Instances: 'stored', 'replaced' or 'deleted'; "
                                    "workitems: 'created' and the like.")
    level: str = Field(description="What changed: 'instance' or 'workitem'.")
    study_uid: str
    series_uid: str = Field(description="Empty for workitems.")
    instance_uid: str = Field(description="SOP Instance UID (of the workitem, for workitems).")
    at: datetime = Field(description="When the change was committed (UTC).")


class ChangesPage(BaseModel):
    changes: list[Change]
    last: int = Field(description="Sequence number of the last change in this page "
                                  "(``since`` when the page is empty): the next ``since``.")


class LatestChange(BaseModel):
    seq: int = Field(description="Newest sequence number; 0 when nothing has changed yet.")


class ChangeFeedError(BaseModel):
    error: str


_SINCE_PARAM = {"name": "since", "in": "query", "required": False,
                "description": "Return changes with a sequence number greater than this.",
                "schema": {"type": "integer", "minimum": 0, "default": 0}}
_LIMIT_PARAM = {"name": "limit", "in": "query", "required": False,
                "description": f"Most changes returned (values above {MAX_LIMIT} are treated "
                               f"as {MAX_LIMIT}).",
                "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_LIMIT}}
_STREAM_SINCE_PARAM = {
    "name": "since", "in": "query", "required": False,
    "description": "Start after this sequence number; default: the present (or the "
                   "Last-Event-ID header of a reconnecting EventSource).",
    "schema": {"type": "integer", "minimum": 0}}
_BAD_REQUEST: dict[int | str, dict[str, Any]] = {
    400: {"model": ChangeFeedError, "description": "A parameter is not a valid integer or is "
                                             "out of range."}}


def _node(request: Request) -> Node:
    node: Node = request.app.state.node  # (Starlette's State holds Any)
    return node


def _int_param(request: Request, name: str, default: int | None, minimum: int) -> int | None:
    """A numeric query parameter, ASCII digits within bounds (400 otherwise,
    through the shared ``query.parse.integer_param``)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return integer_param(name, raw, minimum=minimum)


def _fetch(node: Node, since: int, limit: int) -> list[Change]:
    with node.db.read() as conn:
        rows = conn.execute(
            select(changes.c.seq, changes.c.action, changes.c.level, changes.c.study_uid,
                   changes.c.series_uid, changes.c.instance_uid, changes.c.at)
            .where(changes.c.seq > since).order_by(changes.c.seq).limit(limit)).all()
    rows = settled(rows, since, time.time(), written_at="at", grace=GAP_GRACE_SECONDS)
    return [Change(seq=int(r.seq), action=r.action, level=r.level, study_uid=r.study_uid,
                   series_uid=r.series_uid, instance_uid=r.instance_uid,
                   at=datetime.fromtimestamp(float(r.at), timezone.utc)) for r in rows]


def _latest(node: Node) -> int:
    """The newest sequence number with no unsettled gap before it (see
    ``index.feeds.settled``): a client starting after it misses nothing."""
    now = time.time()
    with node.db.read() as conn:
        floor = conn.execute(select(changes.c.seq).where(changes.c.at <= now - GAP_GRACE_SECONDS)
                             .order_by(changes.c.seq.desc()).limit(1)).scalar()
        floor = int(floor or 0)
        recent = conn.execute(select(changes.c.seq, changes.c.at).where(changes.c.seq > floor)
                              .order_by(changes.c.seq)).all()
    done = settled(recent, floor, now, written_at="at", grace=GAP_GRACE_SECONDS)
    return int(done[-1].seq) if done else floor


@router.get("", response_model=ChangesPage, summary="Changes after a sequence number",
            responses=_BAD_REQUEST,
            openapi_extra={"parameters": [_SINCE_PARAM, _LIMIT_PARAM]})
def list_changes(request: Request) -> ChangesPage:
    since = _int_param(request, "since", 0, 0) or 0
    limit = min(_int_param(request, "limit", DEFAULT_LIMIT, 1) or DEFAULT_LIMIT, MAX_LIMIT)
    page = _fetch(_node(request), since, limit)
    return ChangesPage(changes=page, last=page[-1].seq if page else since)


@router.get("/latest", response_model=LatestChange, summary="Newest sequence number")
def latest_change(request: Request) -> LatestChange:
    return LatestChange(seq=_latest(_node(request)))


class _Wakeup:
    """Wakes the streams of this process when its event bus reports a change
    (changes made by other processes are found by polling)."""

    def __init__(self) -> None:
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()

    def __call__(self, _event: Event) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, flag in waiters:
            try:
                loop.call_soon_threadsafe(flag.set)
            except RuntimeError:  # loop closed
                pass

    def add(self, flag: asyncio.Event) -> None:
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), flag))

    def discard(self, flag: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not flag}


_wakeup_lock = threading.Lock()


def _wakeup_for(request: Request) -> _Wakeup:
    state = request.app.state
    with _wakeup_lock:
        wakeup: _Wakeup | None = getattr(state, "changes_wakeup", None)
        if wakeup is None:
            wakeup = _Wakeup()
            _node(request).bus.subscribe(wakeup)
            state.changes_wakeup = wakeup
    return wakeup


def _sse(change: Change) -> str:
    data = json.dumps(change.model_dump(mode="json"), separators=(",", ":"))
    return f"id: {change.seq}\ndata: {data}\n\n"


@router.get("/stream", summary="Changes as server-sent events, followed live",
            response_class=StreamingResponse, responses={
                200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                      "description": "One event per change: ``id`` is its sequence number, "
                                     "``data`` the change as JSON (as in GET /api/v1/changes)."},
                **_BAD_REQUEST},
            openapi_extra={"parameters": [_STREAM_SINCE_PARAM]})
async def stream_changes(request: Request) -> StreamingResponse:
    node = _node(request)
    since = _int_param(request, "since", None, 0)
    if since is None:
        last_event_id = request.headers.get("last-event-id", "").strip()
        try:  # a header we cannot read starts at the present, as none would
            since = integer_param("Last-Event-ID", last_event_id)
        except BadQuery:
            since = None
    if since is None:
        # Decided before the response starts, so nothing committed after the
        # client sees the response headers is missed.
        since = await run_in_threadpool(_latest, node)
    wakeup = _wakeup_for(request)

    async def events(cursor: int) -> AsyncIterator[str]:
        flag = asyncio.Event()
        wakeup.add(flag)
        try:
            yield f"retry: 2000\n: changes after {cursor}\n\n"
            last_sent = time.monotonic()
            while True:
                flag.clear()
                batch = await run_in_threadpool(_fetch, node, cursor, _STREAM_BATCH)
                if batch:
                    yield "".join(_sse(c) for c in batch)
                    cursor = batch[-1].seq
                    last_sent = time.monotonic()
                    if len(batch) == _STREAM_BATCH:
                        continue
                elif time.monotonic() - last_sent >= STREAM_KEEPALIVE_SECONDS:
                    yield ": keepalive\n\n"
                    last_sent = time.monotonic()
                try:
                    await asyncio.wait_for(flag.wait(), STREAM_POLL_SECONDS)
                except asyncio.TimeoutError:
                    pass
        finally:
            wakeup.discard(flag)

    return StreamingResponse(events(since), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
