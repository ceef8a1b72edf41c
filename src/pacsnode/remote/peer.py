"""Who we talk to (:class:`Peer`) and how a synchronous caller opens an
association with it.

:func:`associate` is the only way the SCU side (tools, RemoteNode, jobs)
opens an association: a thin synchronous face over
:mod:`pacsnode.dimse.client`, the one requestor of pacsnode (the server's
C-MOVE sub-operations and storage commitment reports use it too), so every
outgoing connection gets the same timeouts, TCP_NODELAY and exceptions
(:mod:`pacsnode.remote.errors`).
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dimse import client
from ..dimse import messages as m
from ..dimse.acse import Context, ProposedContext
from ..dimse.client import MAX_CONTEXTS, MAX_PDU, EventHandler, Requested, StoreHandler

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Peer", "Session", "associate", "MAX_CONTEXTS", "MAX_PDU"]


@dataclass(frozen=True)
class Peer:
    """A remote DICOM node and how we present ourselves to it.

    ``timeout`` bounds the TCP connect and the association negotiation;
    ``dimse_timeout`` bounds the wait for each DIMSE response (a C-MOVE that
    sends no pending responses needs it to cover the whole transfer) and the
    idle time on the socket.  ``None`` waits forever.  ``tls``: speak
    TLS (PS3.15 B.1) with it.
    """

    aet: str
    host: str
    port: int
    calling_aet: str = "PACSNODE"
    timeout: float = 30.0
    dimse_timeout: float | None = 600.0
    #: TLS for the association (a node with ``tls = true``, access/tls.py).
    tls: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


class Session:
    """An association of :func:`associate`, for a synchronous caller: each
    method runs the matching :class:`~pacsnode.dimse.client.Requested`
    coroutine on the requestor's loop and waits for it."""

    def __init__(self, assoc: Requested) -> None:
        self.assoc = assoc

    @property
    def contexts(self) -> dict[int, Context]:
        return self.assoc.contexts

    @property
    def is_established(self) -> bool:
        return not self.assoc.closed

    def context_for(self, sop_class: str) -> tuple[int, str]:
        found = self.assoc.context_for(sop_class)
        assert found is not None, "required contexts are checked by associate()"
        return found

    def call(self, sop_class: str, fields: dict[str, Any],
             dataset: Dataset | None = None) -> tuple[m.Command, bytes | None]:
        """One request on ``sop_class``'s context, and its one response."""
        context_id, syntax = self.context_for(sop_class)
        data = m.encode_dataset(dataset, syntax) if dataset is not None else None
        return client.run(self.assoc.call(context_id, fields, data))

    def responses(self, sop_class: str, fields: dict[str, Any], dataset: Dataset,
                  cancel: threading.Event | None = None
                  ) -> Iterator[tuple[m.Command, Dataset | None]]:
        """A request with a data set (C-FIND/C-MOVE/C-GET) and each of its
        responses with its decoded data set, up to the final one; setting
        ``cancel`` sends a C-CANCEL."""
        context_id, syntax = self.context_for(sop_class)
        message_id = client.run(self.assoc.request(context_id, fields,
                                                   m.encode_dataset(dataset, syntax)))
        stream = self.assoc.responses(message_id, cancel, context_id)
        try:
            while True:
                try:
                    command, data = client.run(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield command, (m.decode_dataset(data, syntax) if data else None)
        finally:
            client.run(stream.aclose())

    def cancel(self, sop_class: str, message_id: int) -> None:
        client.run(self.assoc.cancel(self.context_for(sop_class)[0], message_id))

    def store_file(self, path: Path, sop_class: str, sop_instance: str,
                   transfer_syntax: str) -> m.Command:
        return client.run(self.assoc.store_file(path, sop_class, sop_instance,
                                                transfer_syntax))


@contextmanager
def associate(peer: Peer, contexts: Sequence[ProposedContext], *,
              scp_roles: Sequence[str] = (), required: Sequence[str] = (),
              on_store: StoreHandler | None = None,
              on_event: EventHandler | None = None) -> Iterator[Session]:
    """Open an association with ``peer`` proposing ``contexts``; release it
    (or abort it, if the block raised) when the block ends.

    ``required`` lists abstract syntaxes that must be accepted, or
    :class:`NoAcceptedContext` is raised naming them.  ``scp_roles``: the
    abstract syntaxes for which we propose the SCP role (a C-GET's storage
    classes), ``on_store`` taking the peer's C-STOREs on them.
    """
    assoc = client.run(client.connect(peer, contexts, scp_roles=scp_roles,
                                      ssl=peer.tls, required=required,
                                      on_store=on_store, on_event=on_event))
    ok = False
    try:
        yield Session(assoc)
        ok = True
    finally:
        if ok:
            client.run(assoc.release())
        else:
            assoc.loop.call_soon_threadsafe(assoc.abort, "the caller stopped")
