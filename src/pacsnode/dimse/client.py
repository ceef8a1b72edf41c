"""The requestor side of DIMSE: every association pacsnode opens to another
node goes through here — the SCU tools (``pacsnode send/find/echo/get/move``),
:class:`~pacsnode.remote.RemoteNode`, retrieve jobs, storage commitment
reports on a new association, and (for its A-ASSOCIATE exchange) a C-MOVE's
association to its destination.

Built on the same wire code as the server (:mod:`pacsnode.dimse.messages`:
command sets by hand, P-DATA-TF framing) and on :mod:`pacsnode.dimse.acse`
for the A-ASSOCIATE PDUs (no pydicom or pynetdicom until a data set must be
encoded or decoded), on asyncio:

* :func:`request_association` — TCP connect (timeout, TCP_NODELAY, optional
  TLS), A-ASSOCIATE-RQ with our contexts and role selection items, the
  answer negotiated.  Raises the exceptions of :mod:`pacsnode.dimse.errors`.
* :class:`Requested` — an established association: one reader task takes
  every PDU off the socket; responses go to whoever waits for that message
  id, requests from the peer (the C-STOREs of a C-GET, an N-EVENT-REPORT)
  to the handlers given.  Operations: :meth:`Requested.echo`,
  :meth:`~Requested.store_file` (a file's data set bytes streamed as stored,
  or transcoded through :func:`pacsnode.retrieve.outgoing`, the one reader),
  :meth:`~Requested.request` + :meth:`~Requested.responses` for C-FIND /
  C-MOVE / C-GET (with :meth:`~Requested.cancel`), :meth:`~Requested.event_report`,
  :meth:`~Requested.release`, :meth:`~Requested.abort`.
* :func:`run` — the synchronous facade: one event loop on a daemon thread per
  process runs the coroutines of sync callers (tools, jobs, RemoteNode).

No Asynchronous Operations Window is negotiated: one request of ours is
outstanding at a time on an association, as PS3.7 requires by default.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl as _ssl
import struct
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..dicom.filemeta import read_meta
from . import messages as m
from .acse import (MAX_CONTEXTS, Context, ProposedContext, a_associate_rq, proposal,
                   read_answer, read_rejection)
from .errors import AssociationAborted, AssociationRejected, ConnectionFailed, NoAcceptedContext
from .pdu import A_RELEASE_RP, A_RELEASE_RQ, CHUNK, PDU_NAMES, a_abort

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Target", "Destination", "Handshake", "Context", "Upcoming", "StoredFile",
           "report_event",
           "Requested",
           "request_association", "connect", "run",
           "MAX_CONTEXTS", "MAX_PDU"]

log = logging.getLogger("pacsnode.dimse.client")

#: Our Maximum Length Received on associations we request: a P-DATA-TF is
#: read whole, so it is bounded (DCMTK's largest default).
MAX_PDU = 131072
#: Longest A-ASSOCIATE-AC / -RJ we read.
MAX_ASSOCIATE_PDU = 1 << 20
#: Largest file read and framed whole ahead of its C-STORE (``Requested.store``).
READ_AHEAD = 4 << 20
#: How often a wait for a response looks at its cancel flag and idle clock.
POLL = 0.05
#: How often an association looks at how long the peer has been silent.
IDLE_CHECK = 1.0
#: Seconds we wait for the A-RELEASE-RP.
RELEASE_WAIT = 10.0
#: Transfer syntaxes proposed for an N-EVENT-REPORT's own association:
#: Implicit and Explicit VR Little Endian, Deflated, Explicit VR Big Endian.
REPORT_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                   "1.2.840.10008.1.2.2")



class Target(Protocol):
    """Who we associate with (:class:`pacsnode.remote.peer.Peer` is one):
    ``timeout`` bounds the connect and the negotiation, ``dimse_timeout``
    each wait for the peer (``None``: forever)."""

    @property
    def aet(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def calling_aet(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def dimse_timeout(self) -> float | None: ...


@dataclass(frozen=True)
class Destination:
    """A :class:`Target` for the server's own associations (a C-MOVE
    destination, a storage commitment report): a configured node."""

    aet: str
    host: str
    port: int
    calling_aet: str
    timeout: float = 30.0
    dimse_timeout: float | None = 600.0


def _name(target: Target) -> str:
    return f"{target.aet}@{target.host}:{target.port}"


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not TCP
            pass


# ----------------------------------------------------------------- association

@dataclass
class Handshake:
    """An accepted association before anyone reads from it: the streams,
    the accepted contexts by id (transfer syntax and roles negotiated) and
    the peer's Maximum Length Received (0: no limit)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    contexts: dict[int, Context]
    max_pdu: int
    proposed: int


async def request_association(target: Target, contexts: Sequence[ProposedContext], *,
                              scp_roles: Sequence[str] = (),
                              ssl: _ssl.SSLContext | None = None,
                              max_pdu: int = MAX_PDU) -> Handshake:
    """Connect to ``target`` and negotiate an association proposing
    ``contexts`` (with us as SCP for the abstract syntaxes in ``scp_roles``).

    Raises :class:`ConnectionFailed` (no connection within ``timeout``),
    :class:`AssociationRejected`, :class:`AssociationAborted` (A-ABORT, no
    answer, or not an association answer) or :class:`NoAcceptedContext`."""
    proposed = proposal(contexts, scp_roles)
    name = _name(target)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, ssl=ssl, limit=4 * CHUNK),
            target.timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectionFailed(name, "cannot connect (connection refused, host unreachable "
                                     f"or no answer within {target.timeout:g} s)") from exc
    _set_nodelay(writer)
    try:
        writer.write(a_associate_rq(target.aet, target.calling_aet, proposed, scp_roles,
                                    max_pdu))
        pdu_type, body = await asyncio.wait_for(_read_pdu(reader), target.timeout)
        contexts_by_id, peer_max = _answer(name, pdu_type, body, proposed)
    except BaseException as exc:
        if isinstance(exc, NoAcceptedContext):  # accepted, so it is ended by an abort
            writer.write(a_abort(0, 0))
        writer.close()
        if isinstance(exc, asyncio.TimeoutError):  # (an OSError too, since 3.11)
            raise AssociationAborted(name, "association aborted or not answered within "
                                           f"{target.timeout:g} s") from None
        if isinstance(exc, (OSError, asyncio.IncompleteReadError)):
            raise AssociationAborted(name, "connection closed during association "
                                           "negotiation") from None
        raise
    return Handshake(reader, writer, contexts_by_id, peer_max, len(proposed))


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(6)
    length = int.from_bytes(head[2:6], "big")
    if length > MAX_ASSOCIATE_PDU:
        raise asyncio.IncompleteReadError(b"", length)
    return head[0], await reader.readexactly(length)


def _answer(name: str, pdu_type: int, body: bytes, proposed: list[Context]
            ) -> tuple[dict[int, Context], int]:
    """The accepted contexts and max PDU of an A-ASSOCIATE-AC, or the
    exception its -RJ or A-ABORT means."""
    if pdu_type == 0x03:
        why = read_rejection(body)
        raise AssociationRejected(name, why.result, why.source, why.reason)
    if pdu_type == 0x07:
        raise AssociationAborted(name, "association aborted by the peer")
    if pdu_type != 0x02:
        raise AssociationAborted(name, f"{PDU_NAMES.get(pdu_type, 'an unknown PDU')} "
                                       "instead of A-ASSOCIATE-AC")
    try:
        answer = read_answer(body, proposed)
    except (ValueError, struct.error) as exc:
        raise AssociationAborted(name, f"malformed A-ASSOCIATE-AC ({exc})") from None
    if not answer.accepted:
        raise NoAcceptedContext(name, "association accepted but none of the proposed "
                                      "presentation contexts (SOP class / transfer syntax)")
    return answer.accepted, answer.max_pdu


@dataclass(frozen=True)
class Upcoming:
    """The file the next C-STORE will send, to read ahead: on which
    context, and (for its C-STORE-RQ to be framed ahead too) its UIDs."""

    path: Path
    context_id: int
    sop_class: str | None = None
    sop_instance: str | None = None
    #: Where its data set starts, when known (-1: read its meta again).
    offset: int = -1


class StoredFile(Protocol):
    """A Part 10 file to C-STORE as it is, its meta already read."""

    @property
    def path(self) -> Path: ...
    @property
    def sop_class(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def offset(self) -> int:
        """Where its data set starts (-1: not known)."""


@dataclass(frozen=True)
class _Ahead:
    """A file read and framed ahead of its C-STORE (``Requested._read_ahead``)."""

    path: Path
    context_id: int
    #: The data set as P-DATA-TF PDUs.
    data: bytes
    #: The C-STORE-RQ as P-DATA-TF PDUs, for ``key`` (message id, SOP class
    #: and instance): used only when the request that comes matches it.
    command: bytes | None
    key: tuple[int, str, str] | None


def _store_command(message_id: int, sop_class: str, sop_instance: str,
                   originator: tuple[str, int] | None) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1) with a data set following;
    ``originator``: the C-MOVE's (AE title, message id)."""
    fields: dict[str, Any] = {}
    if originator is not None:
        fields.update(move_originator_aet=originator[0], move_originator_id=originator[1])
    return m.encode_command(field=m.C_STORE_RQ, message_id=message_id, priority=0,
                            dataset_type=0x0000, affected_sop_class=sop_class,
                            affected_sop_instance=sop_instance, **fields)


#: A handler for the peer's C-STOREs (a C-GET's sub-operations): gets the
#: command and the data set bytes, returns a status (it runs on a thread).
StoreHandler = Callable[[m.Command, str, bytes], int]
#: A handler for the peer's N-EVENT-REPORTs: (event type, information) → status.
EventHandler = Callable[[int, "Dataset | None"], int]

_END = object()


class Requested:
    """An association we requested, from the A-ASSOCIATE-AC to its release
    or abort.  Use it from the event loop it was made on."""

    def __init__(self, target: Target, hs: Handshake, *,
                 on_store: StoreHandler | None = None,
                 on_event: EventHandler | None = None) -> None:
        self.target = target
        self.name = _name(target)
        self.reader, self.writer = hs.reader, hs.writer
        self.contexts = hs.contexts
        self.max_pdu = hs.max_pdu
        self.on_store = on_store
        self.on_event = on_event
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.why_closed = ""
        self.last_rx = self.loop.time()
        self._next_id = 0
        self._queues: dict[int, asyncio.Queue[Any]] = {}
        self._send_lock = asyncio.Lock()
        self._released = self.loop.create_future()
        self._usable: dict[str, dict[str, int]] = {}
        self._ahead: _Ahead | None = None
        self._task = self.loop.create_task(self._read())
        self._watchdog = self.loop.call_later(IDLE_CHECK, self._check_idle)

    def _check_idle(self) -> None:
        """Abort when a request waits and the peer has sent nothing for
        ``dimse_timeout`` seconds (checked every IDLE_CHECK seconds)."""
        if self.closed:
            return
        limit = self.target.dimse_timeout
        if limit is not None and self._queues and self.loop.time() - self.last_rx > limit:
            self.abort(f"no answer within {limit:g} s")
            return
        self._watchdog = self.loop.call_later(IDLE_CHECK, self._check_idle)

    # -- contexts

    def accepted(self, sop_class: str) -> dict[str, int]:
        """Transfer syntax → context id of the accepted contexts for ``sop_class``."""
        usable = self._usable.get(sop_class)
        if usable is None:
            usable = self._usable[sop_class] = {
                str(cx.transfer_syntax[0]): cid for cid, cx in self.contexts.items()
                if str(cx.abstract_syntax) == sop_class}
        return usable

    def context_for(self, sop_class: str) -> tuple[int, str] | None:
        """The first accepted context for ``sop_class``: (id, transfer syntax)."""
        for ts, cid in self.accepted(sop_class).items():
            return cid, ts
        return None

    # -- the reader

    async def _read(self) -> None:
        try:
            await self._read_pdus()
        except asyncio.IncompleteReadError:
            self._closed("connection closed by the peer")
        except (ConnectionError, OSError) as exc:
            self._closed(f"connection lost ({exc.__class__.__name__}: {exc})")
        except _ProtocolError as exc:
            self._write_now(a_abort(2, 6))
            self._closed(f"aborted by us: {exc}")
        except asyncio.CancelledError:
            self._closed(self.why_closed or "aborted")
        except Exception as exc:  # noqa: BLE001 - a bug must not hang the waiters
            log.exception("association with %s failed", self.name)
            self._write_now(a_abort(2, 0))
            self._closed(f"internal error {exc.__class__.__name__}")
        finally:
            self.writer.close()

    async def _read_pdus(self) -> None:
        command_parts: list[bytes] = []
        command: m.Command | None = None
        data = bytearray()
        reader = self.reader
        while True:
            head = await reader.readexactly(6)
            pdu_type, length = head[0], int.from_bytes(head[2:6], "big")
            self.last_rx = self.loop.time()
            if pdu_type != 0x04:
                await self._other_pdu(pdu_type, length)
                if self.closed:
                    return
                continue
            if length > max(MAX_PDU, 1 << 24):
                raise _ProtocolError(f"P-DATA-TF of length {length}")
            body = await reader.readexactly(length)
            self.last_rx = self.loop.time()
            pos = 0
            while pos < length:
                if pos + 6 > length:
                    raise _ProtocolError("P-DATA-TF ends inside a PDV item header")
                item = int.from_bytes(body[pos:pos + 4], "big")
                context_id, control = body[pos + 4], body[pos + 5]
                if item < 2 or pos + 4 + item > length:
                    raise _ProtocolError(f"PDV item length {item}")
                if context_id not in self.contexts:
                    raise _ProtocolError(f"PDV for presentation context {context_id}, "
                                         "which was not accepted")
                fragment = body[pos + 6:pos + 4 + item]
                pos += 4 + item
                last = bool(control & 0x02)
                if control & 0x01:
                    if command is not None:
                        raise _ProtocolError("command fragment while a data set was expected")
                    command_parts.append(fragment)
                    if not last:
                        continue
                    decoded = _decode_command(b"".join(command_parts), self.name)
                    command_parts = []
                    if decoded.has_dataset:
                        command = decoded
                    else:
                        await self._message(context_id, decoded, None)
                else:
                    if command is None:
                        raise _ProtocolError("data set fragment with no command expecting one")
                    data += fragment
                    if last:
                        done, command = command, None
                        payload, data = bytes(data), bytearray()
                        await self._message(context_id, done, payload)

    async def _other_pdu(self, pdu_type: int, length: int) -> None:
        if length > MAX_ASSOCIATE_PDU:
            raise _ProtocolError(f"{PDU_NAMES.get(pdu_type, 'PDU')} of length {length}")
        body = await self.reader.readexactly(length)
        if pdu_type == 0x06:
            self._closed("released")
            if not self._released.done():
                self._released.set_result(None)
        elif pdu_type == 0x05:
            await self._write(A_RELEASE_RP)
            self._closed("released by the peer")
        elif pdu_type == 0x07:
            source = body[2] if len(body) == 4 else 0
            self._closed(f"aborted by the peer (source {source}, reason "
                         f"{body[3] if len(body) == 4 else 0})")
        else:
            raise _ProtocolError(f"unexpected {PDU_NAMES.get(pdu_type, 'unknown PDU')}")

    def _closed(self, why: str) -> None:
        self._watchdog.cancel()
        if not self.closed:
            self.closed = True
            self.why_closed = why
        for queue in self._queues.values():
            queue.put_nowait(_END)
        if not self._released.done():
            self._released.set_result(None)

    async def _message(self, context_id: int, command: m.Command, data: bytes | None) -> None:
        if command.field & 0x8000:
            queue = self._queues.get(command.responded_to)
            if queue is None:
                log.info("unexpected response 0x%04X to message %d from %s", command.field,
                         command.responded_to, self.name)
                return
            queue.put_nowait((command, data))
            return
        syntax = str(self.contexts[context_id].transfer_syntax[0])
        if command.field == m.C_STORE_RQ:
            status = 0x0122 if self.on_store is None or data is None else \
                await self.loop.run_in_executor(None, self.on_store, command, syntax, data)
            await self.send(context_id, m.response(
                m.C_STORE_RSP, command, status, affected_sop_class=command.affected_sop_class,
                affected_sop_instance=command.affected_sop_instance))
        elif command.field == m.N_EVENT_REPORT_RQ:
            status = 0x0000
            if self.on_event is not None:
                info = m.decode_dataset(data, syntax) if data else None
                status = await self.loop.run_in_executor(
                    None, self.on_event, command.us(m.EVENT_TYPE), info)
            await self.send(context_id, m.response(
                m.N_EVENT_REPORT_RSP, command, status,
                affected_sop_class=command.affected_sop_class,
                affected_sop_instance=command.affected_sop_instance,
                event_type=command.us(m.EVENT_TYPE)))
        elif command.field == m.C_ECHO_RQ:
            await self.send(context_id, m.response(
                m.C_ECHO_RSP, command, 0x0000, affected_sop_class=command.affected_sop_class))
        else:
            await self.send(context_id, m.response(
                command.field | 0x8000, command, 0x0211, error_comment="unrecognized operation"))

    # -- writing

    def _write_now(self, data: bytes) -> None:
        if not self.writer.is_closing():
            try:
                self.writer.write(data)
            except Exception:  # noqa: BLE001 - closing anyway
                pass

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            self.writer.write(data)
            await self.writer.drain()

    async def send(self, context_id: int, command: bytes, dataset: bytes | None = None) -> None:
        """One DIMSE message, fragmented to the peer's maximum PDU length."""
        if self.closed:
            raise AssociationAborted(self.name, f"association {self.why_closed}")
        await self._write(m.message(context_id, command, dataset, self.max_pdu))

    # -- requests and responses

    async def request(self, context_id: int, fields: dict[str, Any],
                      dataset: bytes | None = None) -> int:
        """Send a request; its message id, to read its responses with."""
        message_id = self._register()
        command = m.encode_command(message_id=message_id,
                                   dataset_type=0x0000 if dataset is not None else m.NO_DATASET,
                                   **fields)
        try:
            await self.send(context_id, command, dataset)
        except BaseException:
            self._queues.pop(message_id, None)
            raise
        return message_id

    def _register(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        self._queues[self._next_id] = asyncio.Queue()
        return self._next_id

    async def response(self, message_id: int, cancel: threading.Event | None = None,
                       on_cancel: Callable[[], Awaitable[None]] | None = None
                       ) -> tuple[m.Command, bytes | None]:
        """The next response to ``message_id``.  The association is aborted
        after ``dimse_timeout`` seconds without a PDU (``_check_idle``); when
        ``cancel`` gets set, awaits ``on_cancel`` once and keeps waiting."""
        queue = self._queues[message_id]
        while True:
            if cancel is not None and on_cancel is not None and cancel.is_set():
                cancel_once, on_cancel = on_cancel, None
                await cancel_once()
            if not queue.empty():
                item = queue.get_nowait()
                break
            if cancel is None or on_cancel is None:  # silence is _check_idle's
                item = await queue.get()
                break
            try:
                item = await asyncio.wait_for(queue.get(), POLL)
                break
            except asyncio.TimeoutError:
                pass
        if item is _END:
            queue.put_nowait(_END)
            raise AssociationAborted(self.name, f"association {self.why_closed or 'closed'} "
                                                "before the response came")
        command, data = item
        return command, data

    def done(self, message_id: int) -> None:
        """Forget a request whose last response came."""
        self._queues.pop(message_id, None)

    async def responses(self, message_id: int, cancel: threading.Event | None = None,
                        cancel_context: int | None = None
                        ) -> AsyncGenerator[tuple[m.Command, bytes | None], None]:
        """Every response to ``message_id`` up to the final one (not
        Pending); setting ``cancel`` sends a C-CANCEL-RQ on ``cancel_context``."""
        async def send_cancel() -> None:
            if cancel_context is not None and not self.closed:
                await self.cancel(cancel_context, message_id)
        try:
            while True:
                command, data = await self.response(message_id, cancel, send_cancel)
                yield command, data
                if command.status not in (0xFF00, 0xFF01):
                    return
        finally:
            self.done(message_id)

    async def cancel(self, context_id: int, message_id: int) -> None:
        """C-CANCEL-RQ for the request ``message_id`` (PS3.7 9.3.2.3)."""
        try:
            await self.send(context_id, m.encode_command(
                field=m.C_CANCEL_RQ, responded_to=message_id, dataset_type=m.NO_DATASET))
        except (AssociationAborted, ConnectionError, OSError):
            log.debug("C-CANCEL to %s not sent", self.name)

    async def call(self, context_id: int, fields: dict[str, Any],
                   dataset: bytes | None = None) -> tuple[m.Command, bytes | None]:
        """A request with one response (C-ECHO, C-STORE, N-EVENT-REPORT)."""
        message_id = await self.request(context_id, fields, dataset)
        try:
            return await self.response(message_id)
        finally:
            self.done(message_id)

    # -- the operations

    async def echo(self, context_id: int, sop_class: str) -> int:
        command, _ = await self.call(context_id, dict(field=m.C_ECHO_RQ,
                                                      affected_sop_class=sop_class))
        return command.status

    async def store_file(self, path: Path, sop_class: str, sop_instance: str,
                         transfer_syntax: str,
                         upcoming: StoredFile | None = None) -> m.Command:
        """C-STORE the data set of a Part 10 file: its bytes as they are when
        the peer accepted its syntax for ``sop_class``, otherwise transcoded
        by :func:`pacsnode.retrieve.outgoing` into one it accepted.  Raises
        OSError/ValueError for a file that cannot be read or transcoded,
        :class:`NoAcceptedContext` when no context takes the SOP class.
        ``upcoming``: the file the next call will send, read ahead and
        framed with its C-STORE-RQ while the peer answers this one, when it
        goes as stored."""
        usable = self.accepted(sop_class)
        if not usable:
            raise NoAcceptedContext(self.name, f"no accepted presentation context for "
                                               f"{_uid_name(sop_class)}")
        if transfer_syntax in usable:
            ahead = None
            if upcoming is not None:
                context_id = self.accepted(upcoming.sop_class).get(upcoming.transfer_syntax)
                if context_id is not None:
                    ahead = Upcoming(upcoming.path, context_id, upcoming.sop_class,
                                     upcoming.sop_instance_uid, upcoming.offset)
            return await self.store(usable[transfer_syntax], sop_class, sop_instance,
                                    path=path, upcoming=ahead)
        data, offset, ts = await self.loop.run_in_executor(
            None, _transcoded, path, sop_class, sop_instance, transfer_syntax, list(usable))
        return await self.store(usable[ts], sop_class, sop_instance, data=data, offset=offset)

    async def store(self, context_id: int, sop_class: str, sop_instance: str, *,
                    path: Path | None = None, data: bytes | None = None, offset: int = -1,
                    originator: tuple[str, int] | None = None,
                    upcoming: tuple[Path, int] | Upcoming | None = None) -> m.Command:
        """C-STORE-RQ on ``context_id`` and its response.  The data set is
        ``data[offset:]`` (already in the context's syntax), or the file at
        ``path`` from ``offset`` on (-1: after its File Meta Information),
        streamed a block at a time.  ``originator``: the C-MOVE's (AE title,
        message id).  ``upcoming``: the (file, context id) the next call
        will send, read and framed while the peer answers this one (an
        :class:`Upcoming` with its UIDs: its C-STORE-RQ framed too)."""
        message_id = self._register()
        try:
            ahead, self._ahead = self._ahead, None
            if data is None and (ahead is None or (ahead.path, ahead.context_id)
                                 != (path, context_id)):
                ahead = None
            if ahead is not None and self.closed:
                raise AssociationAborted(self.name, f"association {self.why_closed}")
            if ahead is not None and ahead.command is not None and originator is None \
                    and ahead.key == (message_id, sop_class, sop_instance):
                await self._write(ahead.command + ahead.data)  # all of it framed ahead
            else:
                command = _store_command(message_id, sop_class, sop_instance, originator)
                if data is not None:
                    await self._write(b"".join([
                        *m.pdata(context_id, command, True, self.max_pdu),
                        *m.pdata(context_id, memoryview(data)[max(offset, 0):], False,
                                 self.max_pdu)]))
                elif ahead is not None:
                    await self._write(b"".join(m.pdata(context_id, command, True,
                                                       self.max_pdu)) + ahead.data)
                else:
                    assert path is not None
                    await self._stream_file(context_id, command, path, offset)
            if upcoming is not None:
                self._read_ahead(upcoming if isinstance(upcoming, Upcoming)
                                 else Upcoming(*upcoming))
            reply, _ = await self.response(message_id)
            return reply
        finally:
            self.done(message_id)

    def _read_ahead(self, upcoming: Upcoming) -> None:
        """The data set of the next file cut into P-DATA-TF PDUs now, while
        the peer stores the one before, and its C-STORE-RQ when its UIDs are
        known (it takes the next message id); files up to READ_AHEAD bytes.
        Anything wrong is left for the send itself to meet and report."""
        self._ahead = None
        path, context_id = upcoming.path, upcoming.context_id
        try:
            data = _small_file(path, READ_AHEAD)
            if data is None:
                return
            offset = upcoming.offset
            if not (132 < offset < len(data) and data[128:132] == b"DICM"
                    and data[offset:offset + 2] != b"\x02\x00"):
                offset = meta_end(data, path)  # not known, or not where it was
        except (OSError, ValueError):
            return
        framed = b"".join(m.pdata(context_id, memoryview(data)[offset:], False, self.max_pdu))
        command = key = None
        if upcoming.sop_class is not None and upcoming.sop_instance is not None:
            message_id = self._next_id % 0xFFFF + 1  # what _register gives next
            command = b"".join(m.pdata(context_id, _store_command(
                message_id, upcoming.sop_class, upcoming.sop_instance, None), True,
                self.max_pdu))
            key = (message_id, upcoming.sop_class, upcoming.sop_instance)
        self._ahead = _Ahead(path, context_id, framed, command, key)

    async def _stream_file(self, context_id: int, command: bytes, path: Path,
                           offset: int = -1) -> None:
        """The command and the file's data set, a block per write
        (``messages.file_message``): a small file goes out in one write."""
        if self.closed:
            raise AssociationAborted(self.name, f"association {self.why_closed}")
        with closing(m.file_message(path, context_id, command, self.max_pdu, offset)) as pieces:
            first = next(pieces)  # the file opened and its meta read: nothing sent on failure
            async with self._send_lock:
                self.writer.write(first)
                await self.writer.drain()
                for piece in pieces:
                    self.writer.write(piece)
                    await self.writer.drain()

    async def event_report(self, context_id: int, sop_class: str, sop_instance: str,
                           event_type: int, info: Dataset) -> int:
        """N-EVENT-REPORT (e.g. a storage commitment result, PS3.4 J.3.3); its status."""
        syntax = str(self.contexts[context_id].transfer_syntax[0])
        command, _ = await self.call(context_id, dict(
            field=m.N_EVENT_REPORT_RQ, affected_sop_class=sop_class,
            affected_sop_instance=sop_instance, event_type=event_type),
            m.encode_dataset(info, syntax))
        return command.status

    # -- the end

    async def release(self) -> None:
        """A-RELEASE-RQ, and wait for the -RP (abort when it does not come)."""
        if self.closed:
            await self._finish()
            return
        try:
            await self._write(A_RELEASE_RQ)
            await asyncio.wait_for(asyncio.shield(self._released), RELEASE_WAIT)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            self.abort("no A-RELEASE-RP")
        await self._finish()

    def abort(self, why: str = "") -> None:
        """A-ABORT (PS3.8 9.3.8) and close."""
        if not self.closed:
            self._write_now(a_abort(0, 0))
            self.why_closed = f"aborted by us ({why})" if why else "aborted by us"
            self._task.cancel()
        self._closed(self.why_closed)
        self.writer.close()

    async def _finish(self) -> None:
        if not self._task.done():
            self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - ending anyway
            pass


class _ProtocolError(Exception):
    """The peer broke PS3.8: we abort."""


def _decode_command(raw: bytes, name: str) -> m.Command:
    """A command set; elements of another group after it in the command PDV
    (Orthanc puts a C-GET-RSP's Failed SOP Instance UID List there) are
    ignored, as pynetdicom did, instead of aborting."""
    try:
        return m.decode_command(raw)
    except ValueError as exc:
        pos = 0
        while pos + 8 <= len(raw) and raw[pos:pos + 2] == b"\0\0":
            pos += 8 + int.from_bytes(raw[pos + 4:pos + 8], "little")
        if 0 < pos < len(raw):
            try:
                command = m.decode_command(raw[:pos])
            except ValueError:
                pass
            else:
                log.debug("%s: %d bytes after the command set ignored", name, len(raw) - pos)
                return command
        raise _ProtocolError(f"undecodable command set: {exc}") from None


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID
    name = UID(uid).name
    return name if name and name != uid else uid


def _small_file(path: Path, limit: int) -> bytes | None:
    """The whole file, when it has at most ``limit`` bytes and did not
    change size while read (else None): os-level calls, one read for most
    files (the file object's read costs a few more system calls a file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return None
        data = os.read(fd, size + 1)
        while len(data) < size:  # a short read (a network file system)
            more = os.read(fd, size + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    return data if len(data) == size else None


def meta_end(head: bytes | memoryview, path: Path | str = "") -> int:
    """Where the data set of a Part 10 file starts, from its first bytes."""
    return read_meta(head, path)[0]


def _transcoded(path: Path, sop_class: str, sop_instance: str, stored: str,
                accepted: list[str]) -> tuple[bytes, int, str]:
    """A file in a syntax the peer accepted, through the one reader."""
    from ..retrieve import InstanceRef, outgoing
    ref = InstanceRef(sop_class, sop_instance, "", "", stored, Path(path),
                      os.path.getsize(path), None)
    out = outgoing(ref, accepted)
    if out.data is None:  # the stored syntax after all
        data = Path(path).read_bytes()
        return data, meta_end(data, path), out.transfer_syntax
    return out.data, out.offset, out.transfer_syntax


async def connect(target: Target, contexts: Sequence[ProposedContext], *,
                  scp_roles: Sequence[str] = (), ssl: _ssl.SSLContext | None = None,
                  required: Sequence[str] = (), on_store: StoreHandler | None = None,
                  on_event: EventHandler | None = None) -> Requested:
    """An established :class:`Requested` association with ``target``.
    ``required`` abstract syntaxes must be accepted, or
    :class:`NoAcceptedContext` (naming them) is raised after an abort."""
    hs = await request_association(target, contexts, scp_roles=scp_roles, ssl=ssl)
    assoc = Requested(target, hs, on_store=on_store, on_event=on_event)
    accepted = {str(cx.abstract_syntax) for cx in assoc.contexts.values()}
    missing = [uid for uid in required if uid not in accepted]
    if missing:
        assoc.abort("a needed context was not accepted")
        await assoc._finish()
        raise NoAcceptedContext(assoc.name, "peer does not support "
                                + ", ".join(_uid_name(uid) for uid in missing))
    log.info("association requested: %s (%d of %d contexts, max PDU %s)", assoc.name,
             len(assoc.contexts), hs.proposed, assoc.max_pdu or "unlimited")
    return assoc


async def report_event(target: Target, sop_class: str, sop_instance: str, event_type: int,
                       info: Dataset, *, ssl: _ssl.SSLContext | None = None) -> int:
    """An N-EVENT-REPORT on an association of its own, with us as the SCP of
    ``sop_class`` (role selection): a storage commitment result the
    requesting association was gone for (PS3.4 J.3.3).  Its status."""
    assoc = await connect(target, [Context(None, sop_class, list(REPORT_SYNTAXES))],
                          scp_roles=[sop_class], ssl=ssl, required=[sop_class])
    try:
        context_id = next(iter(assoc.accepted(sop_class).values()))
        return await assoc.event_report(context_id, sop_class, sop_instance, event_type, info)
    finally:
        await assoc.release()


# ----------------------------------------------------------- synchronous facade

T = TypeVar("T")
_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None
_LOOP_LOCK = threading.Lock()


def loop() -> asyncio.AbstractEventLoop:
    """The requestor's event loop for synchronous callers: one per process,
    on a daemon thread, started on first use (and again after a fork)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[0] != os.getpid():
            new = asyncio.new_event_loop()
            threading.Thread(target=new.run_forever, name="pacsnode-scu", daemon=True).start()
            _LOOP = (os.getpid(), new)
        return _LOOP[1]


def run(coroutine: Awaitable[T]) -> T:
    """Run ``coroutine`` on the requestor's loop and wait for its result
    (from a thread that is not that loop's)."""
    future = asyncio.run_coroutine_threadsafe(_awaited(coroutine), loop())
    return future.result()


async def _awaited(awaitable: Awaitable[T]) -> T:
    """A coroutine of any awaitable (an async generator's ``__anext__()``
    is one asyncio takes only by duck typing)."""
    return await awaitable
