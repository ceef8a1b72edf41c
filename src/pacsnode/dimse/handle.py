"""What a DIMSE service handler may use of the association it serves, and
of the server around it: the interface between the association machinery
(``association.py``, ``server.py``) and the handlers (``echo.py``,
``store.py``, ``find.py``, ``move_get.py``, ``commitment.py``).

A handler is a coroutine ``handler(assoc, op, data)`` (``echo`` and
``store`` take the context and command as they come); it answers through
``assoc.send``/``assoc.write``, asks the peer through ``assoc.request``,
runs blocking work on ``assoc.server.pool``, reads who asks from
``assoc.origin`` and records audit events through
``assoc.server.gate.audit``.  Whether a request may run at all is decided
before the handler is called (``Association.refusal``).  This module
names the machinery's types only for the type checker, so the handlers
and the association never import each other in a circle
(tests/test_dimse_layers.py).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Settings
from ..events import Event, Origin
from . import messages as m

if TYPE_CHECKING:
    from ..access.dimse_gate import DimseGate
    from ..aiosync import AioSync
    from ..durability import IngestScheduler
    from ..node import Node
    from ..retrieve import Outgoing
    from .limit import AssociationLimit
    from .negotiation import Negotiation
    from .pool import Workers

__all__ = ["Operation", "ServerHandle", "AssociationHandle", "ResponseQueue", "NotSent"]


class NotSent(Exception):
    """A stored file could not be read: nothing of its C-STORE-RQ went out
    (raised by ``AssociationHandle.request`` with ``out``)."""


@dataclass
class Operation:
    """A request that runs beside the association's reader (C-FIND, C-MOVE,
    C-GET, N-ACTION): its command, its context, and its C-CANCEL."""

    command: m.Command
    context_id: int
    cancel: threading.Event = field(default_factory=threading.Event)


class ResponseQueue(Protocol):
    """Responses a worker thread queues for the event loop to write
    (``AssociationHandle.outbox``)."""

    def put(self, command: bytes, dataset: bytes | None) -> None: ...

    def flushed(self) -> None: ...


class ServerHandle(Protocol):
    """What handlers (and associations) use of the DIMSE server of this
    process."""

    settings: Settings
    node: "Node"
    limit: "AssociationLimit"
    pool: "Workers"
    #: The loop's AIO fsyncs (Linux), else None: fsync on threads.
    aio: "AioSync | None"
    #: When a received instance is fsynced and acknowledged.
    scheduler: "IngestScheduler"
    #: Ingest and C-FIND on the loop: SQLite only.
    on_loop: bool
    #: dimse_timeout, in seconds.
    timeout: float
    #: Access control and the DIMSE audit (``gate.audit``: None when not audited).
    gate: "DimseGate"

    def negotiate(self, body: bytes) -> "Negotiation":
        """The answer to the body of an A-ASSOCIATE-RQ."""
        ...

    def background(self, func: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        """Run ``func`` on the pool, outliving the association that asked."""
        ...

    def after_events(self, func: Callable[..., Any], *args: Any) -> None:
        """Call ``func`` on the loop once the events handed to the pool so
        far are emitted."""
        ...

    def keep(self, future: "asyncio.Future[Any]") -> None:
        """Hold a task that outlives its association until it is done."""
        ...

    def emit_later(self, event: Event) -> None: ...

    def client_tls(self) -> ssl.SSLContext:
        """The TLS context of the associations we request of nodes with
        ``tls = true``."""
        ...


class AssociationHandle(Protocol):
    """One association, as its handlers see it."""

    server: ServerHandle
    node: "Node"
    origin: Origin
    peer_aet: str
    #: The peer's IP address.
    address: str
    #: The peer's Maximum Length Received.
    max_pdu: int
    closed: bool
    #: Operations under way; the idle timeout waits while it is not 0.
    busy: int
    #: What a C-STORE's ingest leaves to do once it is answered.
    announce: list[Callable[[], None]]
    #: C-STORE outcome ("stored", "refused", …) → how many, for the line
    #: that logs the association's end.
    stores: Counter[str]
    #: The next C-STORE sub-operation's data set as PDUs, read ahead:
    #: (path, context id, PDUs); ``request(out=...)`` sends it.
    ahead: "tuple[Path, int, bytes] | None"

    def describe(self) -> str: ...

    def syntax(self, context_id: int) -> str:
        """The transfer syntax accepted on a presentation context."""
        ...

    def accepted(self, sop_class: str) -> dict[str, int]:
        """Transfer syntax → context id on which we may send ``sop_class`` as SCU."""
        ...

    async def send(self, context_id: int, command: bytes,
                   dataset: bytes | None = None) -> None: ...

    async def write(self, data: bytes) -> None:
        """Encoded messages (``messages.message``) out whole, in one write."""
        ...

    def outbox(self, context_id: int) -> ResponseQueue: ...

    async def request(self, context_id: int, command_fields: dict[str, Any],
                      dataset: bytes | None = None, out: "Outgoing | None" = None,
                      meanwhile: Callable[[], None] | None = None
                      ) -> tuple[m.Command, bytes | None]: ...

    def abort(self, source: int, reason: int, why: str = "") -> None: ...
