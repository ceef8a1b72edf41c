"""One association, from the A-ASSOCIATE-RQ (or our -RQ's -AC) to its
release or abort: the PDU reader (PS3.8 9.3), the state, the writing of
messages, and the routing of each DIMSE message to its service handler
(``ROUTES``: ``echo.py``, ``store.py``, ``find.py``, ``move_get.py``,
``commitment.py``), which sees the association through
``handle.AssociationHandle``.

Association life (PS3.8 9.2): A-ASSOCIATE-RQ → -AC (or -RJ: bad request,
no acceptable presentation context, too many associations); then P-DATA-TF
carrying DIMSE messages until A-RELEASE-RQ → -RP, or an A-ABORT either way.
Anything malformed — bytes that are no PDU, a PDV for a context that was not
accepted, an undecodable command set — gets an A-ABORT and the connection
is closed, with a log line.  A silent peer is aborted after
``dimse_timeout`` seconds (the ARTIM timer before association).

Two points decide who may do what: ``Association.admit`` (whether an
association that negotiated is accepted: the DIMSE policy,
``access/dimse_gate.py``, then ``max_associations``,
``max_associations_per_address`` and ``max_associations_per_ae``) and ``Association.refusal`` (whether one
request is carried out: the policy again, 0x0124, then the presentation
context).

Operations are synchronous (no Asynchronous Operations Window is
negotiated): a C-STORE is read, ingested and answered before the next PDU is
read.  C-FIND, C-MOVE, C-GET and N-ACTION run as tasks while the reader keeps
reading, so a C-CANCEL, or the C-STORE responses of a C-GET's
sub-operations, are seen while they run.

A C-STORE's data set fragments go from the socket buffer into a temp file as
they arrive (``_data_fragment``); a stored file goes out a block at a time,
or as read ahead (``_send_file``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom.presentation import PresentationContext

from .. import metrics
from ..access.dimse import NOT_AUTHORIZED, Admission
from ..dicom.read import HEAD_BYTES
from ..events import Origin
from ..ingest import tally
from ..retrieve import Outgoing
from ..storage import start_writeback
from . import messages as m
from .commitment import n_action
from .echo import c_echo
from .find import c_find
from .handle import NotSent, Operation, ServerHandle
from .move_get import c_get, c_move
from .negotiation import (FIND_MODELS, GET_MODELS, MOVE_MODELS, NOT_STORAGE, STORAGE_COMMITMENT,
                          Negotiation)
from .pdu import (A_RELEASE_RP, ABORT_REASONS, ABORT_SOURCES, ARTIM, CHUNK,
                  LINGER, MAX_ASSOCIATE_RQ, PDU_NAMES, REJECT_DELAY, ProtocolError, a_abort,
                  a_associate_rj)
from .responses import final
from .store import c_store

log = logging.getLogger("pacsnode.dimse")

__all__ = ["Association", "Outbox", "ROUTES", "MAX_COMMAND", "MAX_DATASET_IN_MEMORY",
           "WRITEBACK"]

#: Largest command set, and largest data set kept in memory (identifiers,
#: N-ACTION information); C-STORE data sets go to disk whatever their size.
MAX_COMMAND = 1 << 16
MAX_DATASET_IN_MEMORY = 64 << 20
#: Bytes of a received data set after which their writeback to disk starts.
WRITEBACK = 256 << 10

Handler = Callable[[Any, Operation, bytes], Awaitable[None]]

#: The service handler of each request that runs beside the reader, the
#: abstract syntaxes (presentation contexts) it may come on, and the
#: operation it counts as in ``pacsnode.metrics``.
ROUTES: dict[int, tuple[Handler, set[str], str]] = {
    m.C_FIND_RQ: (c_find, FIND_MODELS, "query"),
    m.C_MOVE_RQ: (c_move, MOVE_MODELS, "retrieve"),
    m.C_GET_RQ: (c_get, GET_MODELS, "retrieve"),
    m.N_ACTION_RQ: (n_action, {STORAGE_COMMITMENT}, "commitment"),
}


class Association:
    """One association, from the A-ASSOCIATE-RQ to the release or abort."""

    def __init__(self, server: ServerHandle, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.node = server.node
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.address, self.port = str(peer[0]), int(peer[1])
        self.peer_aet = ""
        self.called_aet = ""
        self.origin = Origin("dimse", address=self.address)
        self.contexts: dict[int, PresentationContext] = {}
        self.max_pdu = 0  # the peer's Maximum Length Received
        self.is_established = False
        self.closed = False
        self._counted = False  # holds a place under max_associations
        #: What the DIMSE policy lets this association do (access/dimse.py),
        #: and the operations already refused once (logged, audited).
        self.admission = Admission(frozenset(), False)
        self._refused_ops: set[str] = set()
        self.task: asyncio.Task[Any] | None = None
        self.ops: dict[int, Operation] = {}
        self.op_tasks: set[asyncio.Task[Any]] = set()
        self.waiting: dict[int, asyncio.Future[tuple[m.Command, bytes | None]]] = {}
        self.send_lock = asyncio.Lock()
        self.op_lock = asyncio.Lock()
        self.busy = 0
        self.outcome = ""  # how it ended, for the log line
        self.last_rx = self.loop.time()
        self._next_id = 0
        # The message being received.
        self._command_parts: list[bytes] = []
        self._command_size = 0
        self._command: m.Command | None = None  # waiting for its data set
        self._context_id = 0
        self._sink: BinaryIO | None = None
        self._temp: Path | None = None
        self._refusal: tuple[int, str] | None = None  # a C-STORE we will not ingest
        self._written = self._synced = 0  # temp file: end, start of unflushed writeback
        self._writeback = server.node.store.fsync and hasattr(os, "posix_fadvise")
        self._data: bytearray | None = None
        #: The first HEAD_BYTES (or more) of the C-STORE being received, as
        #: written to its temp file: the header is walked without reading it back.
        self._head: list[bytes] = []
        #: Our C-STORE sub-operations: the accepted (transfer syntax →
        #: context id) of each SOP class, and the next stored file's data
        #: set as P-DATA-TF PDUs, read while the peer answered the one
        #: before (path, context id, PDUs).
        self._usable: dict[str, dict[str, int]] = {}
        self.ahead: tuple[Path, int, bytes] | None = None
        #: What the ingest of the C-STORE being answered leaves to do after
        #: the response (Ingestor.commit's ``announce``).
        self.announce: list[Callable[[], None]] = []
        #: C-STORE outcome → how many, for the line that logs the end.
        self.stores: Counter[str] = Counter()

    def describe(self) -> str:
        return f"{self.peer_aet or '?'} from {self.address}:{self.port}"

    # -- the association's life

    async def run(self) -> None:
        """The association's reader, from its first PDU to its end."""
        try:
            if not await self._associate():
                return
            self.outcome = await self._serve()
        except asyncio.IncompleteReadError:
            self.outcome = self.outcome or "aborted (connection closed by the peer)"
        except (ConnectionError, OSError) as exc:
            self.outcome = self.outcome or f"aborted ({exc.__class__.__name__}: {exc})"
        except ProtocolError as exc:
            self.abort(2, exc.reason, str(exc))
        except asyncio.CancelledError:  # abort() from the watchdog or at shutdown
            self.outcome = self.outcome or "aborted"
        except Exception as exc:  # a bug here must not take the server down
            log.exception("association with %s failed", self.describe())
            self.abort(2, 0, f"internal error {exc.__class__.__name__}")
        finally:
            self._close()
            self._ended()
            if self.is_established:
                stores = tally(self.stores)
                log.info("association %s: %s%s", self.outcome or "closed", self.describe(),
                         f"; C-STORE {stores}" if stores else "")
            elif self.outcome:
                log.warning("connection from %s:%s %s", self.address, self.port, self.outcome)

    def _ended(self) -> None:
        """The association's end: its place under the limits given back,
        counted, and what it stored audited (DICOM Instances Transferred)."""
        if self._counted:
            self._counted = False
            self.server.limit.release(self.address, self.peer_aet, self.admission.known)
            metrics.ACTIVE_ASSOCIATIONS.dec()
        if self.is_established and self.server.gate.audit is not None:
            # after the events of its instances, which the audit gathers
            # (emitted on the pool when an event handler may wait)
            self.server.after_events(self.server.gate.audit.association_ended, self.origin)

    def _close(self) -> None:
        self.closed = True
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("association closed"))
        self.waiting.clear()
        for op in self.ops.values():
            op.cancel.set()
        for task in self.op_tasks:
            task.cancel()
        if self._sink is not None:  # a C-STORE cut short: nothing to keep
            self._sink.close()
            self._sink = None
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None
        if not self.writer.is_closing():
            linger = self.loop.create_task(self._linger())
            self.server.keep(linger)

    async def _linger(self) -> None:
        """PS3.8 Sta13: after our A-ASSOCIATE-RJ, A-ABORT or A-RELEASE-RP the
        peer closes the connection; give it a moment to read that PDU (a peer
        seeing the close first may take a rejection for an abort), then close."""
        try:
            async with asyncio.timeout(LINGER):
                while await self.reader.read(CHUNK):
                    pass
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()

    def abort(self, source: int, reason: int, why: str = "") -> None:
        """Send an A-ABORT and close (PS3.8 9.3.8)."""
        if not self.outcome:
            self.outcome = f"aborted by us ({why})" if why else "aborted by us"
        if not self.closed and not self.writer.is_closing():
            try:
                self.writer.write(a_abort(source, reason))
            except Exception:
                pass
        self.closed = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def check_timeout(self, now: float) -> None:
        limit = self.server.timeout if self.is_established else min(ARTIM, self.server.timeout)
        if self.closed or self.busy or now - self.last_rx <= limit:
            return
        what = "no PDU" if self.is_established else "no A-ASSOCIATE-RQ"
        self.abort(2, 0, f"{what} for {limit:.0f} s")

    async def read_header(self) -> tuple[int, int]:
        head = await self.reader.readexactly(6)
        self.last_rx = self.loop.time()
        return head[0], int.from_bytes(head[2:6], "big")

    # -- association establishment (PS3.8 9.3.2-9.3.4, PS3.7 D.3.3)

    async def _associate(self) -> bool:
        try:
            pdu_type, length = await self.read_header()
        except asyncio.IncompleteReadError:
            log.info("connection from %s:%s closed before an A-ASSOCIATE-RQ", self.address,
                     self.port)
            return False
        if pdu_type != 0x01:
            name = PDU_NAMES.get(pdu_type)
            if pdu_type == 0x07:
                log.info("A-ABORT from %s:%s before association", self.address, self.port)
                return False
            self.abort(2, 2 if name else 1, f"{name} instead of an A-ASSOCIATE-RQ" if name
                       else f"unknown PDU type 0x{pdu_type:02X}: not DICOM?")
            return False
        if length > MAX_ASSOCIATE_RQ or length < 68:
            log.warning("A-ASSOCIATE-RQ from %s:%s with an impossible length %d: rejecting",
                        self.address, self.port, length)
            await self._reject(1, 2, 1)
            return False
        body = await self.reader.readexactly(length)
        deal = self.server.negotiate(body)
        if deal.malformed:
            log.warning("malformed A-ASSOCIATE-RQ from %s:%s (%s): rejecting", self.address,
                        self.port, deal.malformed)
            await self._reject(1, 2, 1)
            return False
        self.peer_aet, self.called_aet = deal.calling, deal.called
        self.origin = Origin("dimse", peer_aet=deal.calling, address=self.address,
                             called_aet=deal.called)
        rejection = await self.admit(deal)
        if rejection is not None:
            return await self._rejected(*rejection)
        self.contexts = dict(deal.contexts)
        self.max_pdu = deal.max_pdu
        self.writer.write(deal.ac)
        self.is_established = True
        log.info("association accepted: %s (%d of %d contexts, max PDU %s, pid %d)",
                 self.describe(), len(self.contexts), deal.proposed,
                 self.max_pdu or "unlimited", os.getpid())
        return True

    async def admit(self, deal: Negotiation) -> tuple[int, int, int, str] | None:
        """Whether an association that negotiated is accepted: None, or the
        A-ASSOCIATE-RJ's result, source and reason, and why (for the log;
        empty when the DIMSE gate has logged and audited it already).
        The DIMSE policy decides first (``DimseGate.admit``: which calling
        AE, from where, may do what, kept in ``admission``); an accepted
        one then holds a place under ``max_associations``,
        ``max_associations_per_address`` and ``max_associations_per_ae``
        until it ends."""
        if deal.rejection is not None:
            return deal.rejection
        self.admission = await self.server.gate.admit(self.server.pool.run, deal.calling,
                                                      deal.called, self.address, self.port)
        if self.admission.rejection is not None:
            return (*self.admission.rejection, "")
        full = self.server.limit.acquire(self.address, deal.calling, self.admission.known)
        if full is not None:
            why = f"local limit exceeded ({full})"
            self.server.gate.over_limit(deal.calling, deal.called, self.address, why)
            return (2, 3, 2, why)
        self._counted = True
        metrics.ASSOCIATIONS.inc()
        metrics.ACTIVE_ASSOCIATIONS.inc()
        return None

    async def _reject(self, result: int, source: int, reason: int) -> None:
        # pynetdicom's requestor takes an A-ASSOCIATE-RJ that arrives before
        # its ACSE thread has seen the connection open for a failed
        # connection (and aborts): a rejection may as well take a moment.
        await asyncio.sleep(REJECT_DELAY)
        self.writer.write(a_associate_rj(result, source, reason))
        self.closed = True

    async def _rejected(self, result: int, source: int, reason: int, why: str) -> bool:
        if why:  # else the DIMSE gate said why
            log.warning("association rejected: %s: %s", self.describe(), why)
        await self._reject(result, source, reason)
        return False

    # -- established: PDUs until release or abort

    async def _serve(self) -> str:
        while True:
            pdu_type, length = await self.read_header()
            if pdu_type == 0x04:
                await self._p_data(length)
            elif pdu_type == 0x05:
                if length != 4:
                    raise ProtocolError(f"A-RELEASE-RQ of length {length}")
                await self.reader.readexactly(4)
                await self._release()
                return "released"
            elif pdu_type == 0x07:
                body = await self.reader.readexactly(4) if length == 4 else b"\0\0\0\0"
                return (f"aborted by the peer (source {ABORT_SOURCES.get(body[2], body[2])}, "
                        f"reason {ABORT_REASONS.get(body[3], body[3])})")
            elif pdu_type in PDU_NAMES:
                raise ProtocolError(f"unexpected {PDU_NAMES[pdu_type]}", reason=2)
            else:
                raise ProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", reason=1)

    async def _release(self) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the peer released the association"))
        self.waiting.clear()
        if self.op_tasks:
            for op in self.ops.values():
                op.cancel.set()
            await asyncio.wait(self.op_tasks, timeout=5)
        await self.write(A_RELEASE_RP)
        self.closed = True

    async def _p_data(self, length: int) -> None:
        """The PDVs of one P-DATA-TF, each read as it comes (PS3.8 9.3.5)."""
        remaining = length
        if remaining < 6:
            raise ProtocolError(f"P-DATA-TF of length {length}")
        reader = self.reader
        while remaining:
            if remaining < 6:
                raise ProtocolError("P-DATA-TF ends inside a PDV item header")
            head = await reader.readexactly(6)
            item_length = int.from_bytes(head[:4], "big")
            context_id, control = head[4], head[5]
            if item_length < 2 or item_length + 4 > remaining:
                raise ProtocolError(f"PDV item length {item_length} in a P-DATA-TF of "
                                    f"length {length}")
            remaining -= 4 + item_length
            size = item_length - 2
            if context_id not in self.contexts:
                raise ProtocolError(f"PDV for presentation context {context_id}, which "
                                    "was not accepted")
            last = bool(control & 0x02)
            if control & 0x01:
                await self._command_fragment(context_id, size, last)
            else:
                await self._data_fragment(context_id, size, last)
            self.last_rx = self.loop.time()

    async def _command_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self._command is not None:
            raise ProtocolError("command fragment while a data set was expected")
        self._command_size += size
        if self._command_size > MAX_COMMAND:
            raise ProtocolError(f"command set longer than {MAX_COMMAND} bytes")
        self._command_parts.append(await self.reader.readexactly(size))
        if not last:
            return
        raw = b"".join(self._command_parts)
        self._command_parts, self._command_size = [], 0
        try:
            command = m.decode_command(raw)
        except ValueError as exc:
            raise ProtocolError(f"undecodable command set: {exc}") from None
        await self._on_command(context_id, command)

    async def _data_fragment(self, context_id: int, size: int, last: bool) -> None:
        if self._command is None:
            raise ProtocolError("data set fragment with no command expecting one")
        if context_id != self._context_id:
            raise ProtocolError(f"data set fragment on context {context_id}, its command "
                                f"came on {self._context_id}")
        reader = self.reader
        if self._sink is not None:
            sink = self._sink
            while size:
                chunk = await reader.read(min(size, CHUNK))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", size)
                sink.write(chunk)
                size -= len(chunk)
                if self._written < HEAD_BYTES:  # kept for the header walk
                    self._head.append(chunk[:HEAD_BYTES - self._written])
                self._written += len(chunk)
            if self._written - self._synced >= WRITEBACK and self._writeback \
                    and self.server.limit.alone():
                # Start writing back what we have, so the fsync before the
                # acknowledgement finds less left to do (on a thread: the
                # call can wait for the disk queue, which stalled every
                # association of the loop).  Only for the node's one
                # association, whose sender waits on each fsync: with more,
                # their fsyncs overlap each other's receiving anyway, and
                # waking a thread for each 256 KiB cost ~12% of a CT
                # instance's CPU (paired runs: CT x1 +26% with writeback,
                # CT x4 +5% without).
                sink.flush()
                start_writeback(sink.fileno(), self._synced, self._written - self._synced)
                self._synced = self._written
        elif self._data is not None:
            if len(self._data) + size > MAX_DATASET_IN_MEMORY:
                raise ProtocolError(f"data set longer than {MAX_DATASET_IN_MEMORY} bytes "
                                    "for a command that is not C-STORE")
            self._data += await reader.readexactly(size)
        else:  # a C-STORE we could not open a file for: read and drop
            while size:
                chunk = await reader.read(min(size, CHUNK))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", size)
                size -= len(chunk)
        if last:
            await self._on_message()

    # -- messages

    async def _on_command(self, context_id: int, command: m.Command) -> None:
        field = command.field
        if field == m.C_CANCEL_RQ:
            op = self.ops.get(command.responded_to)
            if op is not None:
                op.cancel.set()
            return
        if command.has_dataset:
            self._command, self._context_id = command, context_id
            if field == m.C_STORE_RQ:
                self._refusal = self.refusal(context_id, command)
                if self._refusal is None:
                    self._open_sink(context_id, command)
            else:
                self._data = bytearray()
            return
        if field & 0x8000:
            self._response(command, None)
        else:
            await self._dispatch(context_id, command, None)

    def _open_sink(self, context_id: int, command: m.Command) -> None:
        """The temp file a C-STORE's data set is written into: Part 10 meta
        header first, then the fragments as received.  Created here, on the
        loop: ~0.05 ms of the kernel's time.  (Creating the next one ahead
        on the pool cost more, in thread switches and GIL contention, than
        it hid: without it, 9% more small instances/s on one association
        and a quarter less CPU per instance, paired runs.)"""
        unusable = command.unusable_uid()
        if unusable is not None:  # the data set is read and dropped
            self._refusal = unusable
            return
        try:
            fh, temp = self.node.store.new_temp()
        except OSError as exc:
            self._refusal = (0xA700, f"cannot write: {exc}")
            return
        self._sink, self._temp = fh, temp
        try:
            header = m.part10_header(command.affected_sop_class, command.affected_sop_instance,
                                     self.contexts[context_id].transfer_syntax[0])
            fh.write(header)
            self._written = self._synced = len(header)
            self._head = [header]
        except Exception as exc:
            fh.close()
            temp.unlink(missing_ok=True)
            self._sink = self._temp = None
            self._refusal = (0xC000, f"bad C-STORE command: {exc}")

    async def _on_message(self) -> None:
        command, context_id = self._command, self._context_id
        assert command is not None
        self._command = None
        if command.field == m.C_STORE_RQ:
            sink, temp = self._sink, self._temp
            self._sink = self._temp = None
            head, self._head = b"".join(self._head), []
            if sink is not None:
                sink.close()
            await c_store(self, context_id, command, temp, self._written, head, self._refusal)
            return
        data = bytes(self._data or b"")
        self._data = None
        if command.field & 0x8000:
            self._response(command, data)
        else:
            await self._dispatch(context_id, command, data)

    def _response(self, command: m.Command, data: bytes | None) -> None:
        future = self.waiting.pop(command.responded_to, None)
        if future is None or future.done():
            log.info("unexpected response 0x%04X to message %d from %s", command.field,
                     command.responded_to, self.describe())
            return
        future.set_result((command, data))

    def refusal(self, context_id: int, command: m.Command) -> tuple[int, str] | None:
        """Whether a request is carried out on this association: None, or the
        status and Error Comment of the failure response it gets instead
        (every request but C-CANCEL passes here, a C-STORE before its data
        set is read).  The DIMSE policy first: an operation the calling AE
        may not use is refused 0x0124 (Not Authorized), logged and audited
        once per association and kind (``DimseGate.refused``)."""
        field = command.field
        why = self.server.gate.refused(self.admission, self._refused_ops, field,
                                       self.peer_aet, self.address)
        if why is not None:
            return NOT_AUTHORIZED, why
        syntax = str(self.contexts[context_id].abstract_syntax)
        if field == m.C_STORE_RQ:
            if syntax in NOT_STORAGE:
                return 0x0122, f"C-STORE on a {syntax} context"
            return None
        if field == m.C_ECHO_RQ:
            return None
        route = ROUTES.get(field)
        if route is None:
            return 0x0211, "unrecognized operation"
        if syntax not in route[1]:
            return 0x0122, f"operation not supported on {syntax}"
        return None

    async def _dispatch(self, context_id: int, command: m.Command, data: bytes | None) -> None:
        field = command.field
        unusable = command.unusable_uid()
        if unusable is not None:  # a failure status, not an abort (DESIGN.md §6)
            log.warning("DIMSE command 0x%04X from %s refused: %s", field, self.describe(),
                        unusable[1])
            await self.send(context_id, m.response(field | 0x8000, command, unusable[0],
                                                   error_comment=unusable[1]))
            return
        refused = self.refusal(context_id, command)
        if refused is not None:
            if refused[0] == 0x0211:
                log.warning("unsupported DIMSE command 0x%04X from %s", field, self.describe())
            await self.send(context_id, m.response(
                field | 0x8000, command, refused[0], error_comment=refused[1],
                affected_sop_class=command.affected_sop_class or None))
            return
        if field == m.C_ECHO_RQ:
            await c_echo(self, context_id, command)
        elif field == m.C_STORE_RQ:  # without a data set
            await self.send(context_id, m.response(
                m.C_STORE_RSP, command, 0xC000, error_comment="C-STORE without a data set",
                affected_sop_class=command.affected_sop_class,
                affected_sop_instance=command.affected_sop_instance))
        else:
            op = Operation(command, context_id)
            self.ops[command.message_id] = op
            task = self.loop.create_task(self._operation(op, data or b""))
            self.op_tasks.add(task)
            task.add_done_callback(self.op_tasks.discard)

    async def send(self, context_id: int, command: bytes, dataset: bytes | None = None) -> None:
        """One DIMSE message, fragmented to the peer's maximum PDU length."""
        if self.closed or self.writer.is_closing():
            raise ConnectionError("association closed")
        await self.write(m.message(context_id, command, dataset, self.max_pdu))

    async def write(self, data: bytes) -> None:
        """Bytes out whole, between other messages (not inside one)."""
        async with self.send_lock:
            self.writer.write(data)
            await self.writer.drain()

    async def _send_file(self, context_id: int, command: bytes, out: Outgoing) -> None:
        """A C-STORE-RQ whose data set is ``out``: transcoded bytes in
        memory, or a stored file's from ``out.offset`` on, sent a block at a
        time (``messages.file_message``) — or as ``_read_ahead`` has them."""
        if self.closed or self.writer.is_closing():
            raise ConnectionError("association closed")
        ahead, self.ahead = self.ahead, None
        if out.data is not None:  # transcoded: the data set is in memory
            await self.write(m.message(context_id, command, memoryview(out.data)[out.offset:],
                                       self.max_pdu))
            return
        if ahead is not None and ahead[:2] == (out.path, context_id):
            async with self.send_lock:
                self.writer.write(b"".join(m.pdata(context_id, command, True, self.max_pdu)))
                self.writer.write(ahead[2])
                await self.writer.drain()
            return
        async with self.send_lock:
            with closing(m.file_message(out.path, context_id, command, self.max_pdu,
                                        out.offset)) as pieces:
                try:
                    first = next(pieces)
                except (OSError, ValueError) as exc:  # nothing sent
                    raise NotSent(str(exc)) from exc
                self.writer.write(first)
                await self.writer.drain()
                for piece in pieces:
                    self.writer.write(piece)
                    await self.writer.drain()

    async def request(self, context_id: int, command_fields: dict[str, Any],
                      dataset: bytes | None = None, out: Outgoing | None = None,
                      meanwhile: Callable[[], None] | None = None
                      ) -> tuple[m.Command, bytes | None]:
        """Send a request of ours and wait for its response; ``meanwhile``
        runs once it is sent."""
        self._next_id = self._next_id % 0xFFFF + 1
        message_id = self._next_id
        future: asyncio.Future[tuple[m.Command, bytes | None]] = self.loop.create_future()
        self.waiting[message_id] = future
        has_data = dataset is not None or out is not None
        command = m.encode_command(message_id=message_id,
                                   dataset_type=0x0000 if has_data else m.NO_DATASET,
                                   **command_fields)
        try:
            if out is not None:
                await self._send_file(context_id, command, out)
            else:
                await self.send(context_id, command, dataset)
            if meanwhile is not None:
                meanwhile()
            return await asyncio.wait_for(future, self.server.timeout)
        finally:
            self.waiting.pop(message_id, None)

    async def _operation(self, op: Operation, data: bytes) -> None:
        field = op.command.field
        handler, _, name = ROUTES[field]
        started, outcome = time.perf_counter(), "ok"
        async with self.op_lock:
            self.busy += 1
            try:
                await handler(self, op, data)
            except (ConnectionError, asyncio.CancelledError):
                pass
            except Exception as exc:
                outcome = "failed"
                log.exception("DIMSE 0x%04X from %s failed", field, self.describe())
                try:
                    await final(self, op, field | 0x8000, 0xC000, f"failed: {exc}")
                except Exception:
                    pass
            finally:
                self.busy -= 1
                self.ops.pop(op.command.message_id, None)
                metrics.operation("dimse", name, outcome, time.perf_counter() - started)

    def syntax(self, context_id: int) -> str:
        """The transfer syntax accepted on a presentation context."""
        return str(self.contexts[context_id].transfer_syntax[0])

    def accepted(self, sop_class: str) -> dict[str, int]:
        """Transfer syntax → id of the contexts on which we may send
        ``sop_class`` (as SCU), worked out once per class."""
        usable = self._usable.get(sop_class)
        if usable is None:
            usable = self._usable[sop_class] = {
                str(cx.transfer_syntax[0]): cid for cid, cx in self.contexts.items()
                if cx.abstract_syntax == sop_class and cx.as_scu}
        return usable

    def outbox(self, context_id: int) -> "Outbox":
        """A queue for a worker thread's responses on ``context_id``."""
        return Outbox(self, context_id)


class Outbox:
    """DIMSE messages a worker thread hands to the event loop for one
    association without waiting for each to be written (C-FIND's pending
    responses): the thread encodes the PDUs, the loop writes whatever has
    gathered in one go.  A round trip to the loop per response cost more
    than encoding the match.  When the peer reads slower than we answer,
    ``put`` waits once the transport holds ``HIGH_WATER`` bytes."""

    HIGH_WATER = 1 << 20

    def __init__(self, assoc: "Association", context_id: int) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._scheduled = False
        self._room = threading.Event()
        self._room.set()
        self._written = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # the loop keeps only weak ones

    def put(self, command: bytes, dataset: bytes | None) -> None:
        """Queue one message (from a worker thread)."""
        assoc = self.assoc
        pdus = m.message(self.context_id, command, dataset, assoc.max_pdu)
        if not self._room.wait(assoc.server.timeout):
            raise ConnectionError(f"{assoc.describe()} reads no responses")
        if self._error is not None:
            raise self._error
        with self._lock:
            self._pending.append(pdus)
            schedule, self._scheduled = not self._scheduled, True
            self._written.clear()
        if schedule:
            assoc.loop.call_soon_threadsafe(self._flush)

    def flushed(self) -> None:
        """Wait until everything queued is handed to the transport."""
        with self._lock:
            idle = not self._scheduled
        if not idle and not self._written.wait(self.assoc.server.timeout):
            raise ConnectionError(f"responses to {self.assoc.describe()} not written")
        if self._error is not None:
            raise self._error

    # -- in the loop

    def _flush(self) -> None:
        assoc = self.assoc
        if assoc.send_lock.locked():  # another message is going out in parts
            self._task(self._flush_after_lock())
            return
        self._write()

    def _task(self, coroutine: Any) -> None:
        task = self.assoc.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush_after_lock(self) -> None:
        async with self.assoc.send_lock:
            self._write()

    def _write(self) -> None:
        assoc = self.assoc
        with self._lock:
            data = b"".join(self._pending)
            self._pending.clear()
            self._scheduled = False
        try:
            if assoc.closed or assoc.writer.is_closing():
                raise ConnectionError("association closed")
            assoc.writer.write(data)
        except Exception as exc:
            self._fail(exc)
            return
        with self._lock:
            if not self._scheduled:  # nothing queued since
                self._written.set()
        if assoc.writer.transport.get_write_buffer_size() > self.HIGH_WATER:
            self._room.clear()
            self._task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.assoc.writer.drain()
        except Exception as exc:
            self._fail(exc)
        self._room.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc if isinstance(exc, ConnectionError) else ConnectionError(str(exc))
        self._room.set()
        self._written.set()
