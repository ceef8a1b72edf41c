"""Who we talk to (:class:`Peer`) and how we open an association with it.

:func:`associate` is the only place in pacsnode where an SCU association is
made, so every outgoing connection gets the same timeouts, the same
TCP_NODELAY setting and the same exceptions (:mod:`pacsnode.remote.errors`).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from .errors import (AssociationAborted, AssociationRejected, ConnectionFailed,
                     NoAcceptedContext)

__all__ = ["Peer", "associate", "nodelay_handler", "MAX_CONTEXTS", "MAX_PDU"]

LOGGER = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255.
MAX_CONTEXTS = 128
#: Largest P-DATA PDU we accept (DCMTK's largest default); peers send less if
#: they like.  The 16 kB default of pynetdicom costs throughput on big images.
MAX_PDU = 131072


@dataclass(frozen=True)
class Peer:
    """A remote DICOM node and how we present ourselves to it.

    ``timeout`` bounds the TCP connect and the association negotiation;
    ``dimse_timeout`` bounds the wait for each DIMSE response (a C-MOVE that
    sends no pending responses needs it to cover the whole transfer) and the
    idle time on the socket.  ``None`` waits forever.
    """

    aet: str
    host: str
    port: int
    calling_aet: str = "PACSNODE"
    timeout: float = 30.0
    dimse_timeout: float | None = 600.0
    #: TLS for the association (a node with ``tls = true``, access/tls.py).
    tls: ssl.SSLContext | None = None

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def nodelay_handler(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: turn Nagle off on the association's socket.

    DIMSE exchanges small PDUs (a C-ECHO, each C-FIND response, the command
    set before each data set) and waits for an answer; with Nagle's algorithm
    on, each of those can sit ~40 ms waiting for the peer's delayed ACK.
    pynetdicom has no public socket-option hook, but EVT_CONN_OPEN is public
    and fires in the DUL thread right after ``connect()`` (or ``accept()``)
    and before the A-ASSOCIATE-RQ is written, so every byte of the
    association goes out without delay.  Used for our SCU associations and
    by :mod:`pacsnode.remote.receiver`.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - e.g. a non-TCP transport
            LOGGER.debug("could not set TCP_NODELAY on %s", sock)


def _connection_opened(event: evt.Event, state: dict[str, bool]) -> None:
    """Set TCP_NODELAY, and record that the TCP connection opened, which
    lets :func:`associate` tell "connection refused" from "aborted"."""
    state["connected"] = True
    nodelay_handler(event)


def _make_ae(peer: Peer) -> AE:
    ae = AE(ae_title=peer.calling_aet)
    ae.connection_timeout = peer.timeout
    ae.acse_timeout = peer.timeout
    ae.dimse_timeout = peer.dimse_timeout
    ae.network_timeout = peer.dimse_timeout
    ae.maximum_pdu_size = MAX_PDU
    return ae


@contextmanager
def associate(peer: Peer, contexts: Sequence[PresentationContext], *,
              ext_neg: list[Any] | None = None,
              handlers: Sequence[tuple[Any, ...]] = (),
              required: Sequence[str] = ()) -> Iterator[Association]:
    """Open an association with ``peer`` proposing ``contexts``; release it
    (or abort it, if the block raised) when the block ends.

    ``required`` lists abstract syntaxes that must be accepted, or
    :class:`NoAcceptedContext` is raised naming them.  ``handlers`` are
    pynetdicom ``(event, handler)`` pairs (e.g. EVT_C_STORE for a C-GET).
    """
    if not contexts:
        raise ValueError("at least one presentation context is needed")
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts; at most {MAX_CONTEXTS}")
    state = {"connected": False}
    ae = _make_ae(peer)
    evt_handlers: list[Any] = [(evt.EVT_CONN_OPEN, _connection_opened, [state]),
                              *handlers]
    assoc = ae.associate(peer.host, peer.port, contexts=list(contexts), ae_title=peer.aet,
                         max_pdu=MAX_PDU, ext_neg=ext_neg, evt_handlers=evt_handlers,
                         tls_args=(peer.tls, peer.host) if peer.tls is not None else None)
    if not assoc.is_established:
        _raise_not_established(peer, assoc, state["connected"])
    ok = False
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        missing = [uid for uid in required if uid not in accepted]
        if missing:
            names = ", ".join(_uid_name(uid) for uid in missing)
            raise NoAcceptedContext(peer, f"peer does not support {names}")
        yield assoc
        ok = True
    finally:
        if assoc.is_established:
            if ok:
                assoc.release()
            else:
                assoc.abort()


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


def _raise_not_established(peer: Peer, assoc: Association, connected: bool) -> None:
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        raise AssociationRejected(peer, rsp.result_str if rsp else "?",
                                  rsp.source_str if rsp else "?",
                                  rsp.reason_str if rsp else "?")
    if not connected:
        raise ConnectionFailed(peer, "cannot connect (connection refused, host unreachable "
                                     f"or no answer within {peer.timeout:g} s)")
    rsp = assoc.acceptor.primitive
    if rsp is not None and getattr(rsp, "result", None) == 0:
        raise NoAcceptedContext(peer, "association accepted but none of the proposed "
                                      "presentation contexts (SOP class / transfer syntax)")
    raise AssociationAborted(peer, "association aborted or not answered within "
                                   f"{peer.timeout:g} s")
