"""The DICOM upper layer (PS3.8) on asyncio: one event loop, one coroutine
per association, PDUs read straight off the socket.

Why not pynetdicom's acceptor: it polls (a DUL thread that sleeps between
reactor loops, an association thread, queues with timeouts) and flushes per
fragment, so one association tops out near 155 C-STOREs/s whatever the disk
does.  Here a C-STORE's data set fragments go from the socket buffer into a
temp file as they arrive, the ingest runs on a thread pool (the event loop
stays free for other associations while one fsyncs), and the response is
one write.

pynetdicom is still used for what it does well and where speed does not
matter: the A-ASSOCIATE PDUs (``pynetdicom.pdu``), presentation context and
role negotiation (``negotiate_as_acceptor``).  The associations a C-MOVE
opens to its destination are the one requestor's (``dimse.client``), which
streams the stored bytes as this reader does on a C-GET.

Association life (PS3.8 9.2): A-ASSOCIATE-RQ → -AC (or -RJ: bad request,
no acceptable presentation context, too many associations); then P-DATA-TF
carrying DIMSE messages until A-RELEASE-RQ → -RP, or an A-ABORT either way.
Anything malformed — bytes that are no PDU, a PDV for a context that was not
accepted, an undecodable command set — gets an A-ABORT and the connection
is closed, with a log line.  A silent peer is aborted after
``dimse_timeout`` seconds (the ARTIM timer before association).

Operations are synchronous (no Asynchronous Operations Window is
negotiated): a C-STORE is read, ingested and answered before the next PDU is
read.  C-FIND, C-MOVE, C-GET and N-ACTION run as tasks while the reader keeps
reading, so a C-CANCEL, or the C-STORE responses of a C-GET's
sub-operations, are seen while they run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import mmap
import os
import queue
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import (AllStoragePresentationContexts, PresentationContext,
                                     negotiate_as_acceptor)

from ..aiosync import AioSync
from ..config import Settings
from ..errors import PacsnodeError
from ..events import Origin
from ..ingest import HEAD_BYTES
from ..storage import fsync_started, start_writeback
from . import client
from . import messages as m
from .errors import RemoteError
from ..retrieve import Outgoing, meta_end, outgoing, sending_syntax, store_contexts
from .services import COMMITMENT_INSTANCE, STORAGE_COMMITMENT, Services, SubOperations

log = logging.getLogger("pacsnode.dimse")

__all__ = ["AssociationServer", "AssociationLimit", "Association",
           "TRANSFER_SYNTAXES", "supported_contexts", "set_nodelay", "listen_socket",
           "MAX_PDU_RECEIVE"]

#: Accepted for storage and stored as received (PS3.5 Section 10).
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
]

VERIFICATION = "1.2.840.10008.1.1"
FIND_MODELS = {"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"}
MOVE_MODELS = {"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"}
GET_MODELS = {"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"}
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_NOT_STORAGE = FIND_MODELS | MOVE_MODELS | GET_MODELS | {VERIFICATION, STORAGE_COMMITMENT}

#: Our Maximum Length Received: 0, no limit (PS3.8 D.1).  Fewer, larger
#: P-DATA-TF PDUs; the reader streams PDVs, so a large PDU is never held
#: whole in memory.
MAX_PDU_RECEIVE = 0
#: Longest A-ASSOCIATE-RQ we read (128 contexts of many syntaxes fit in 64 KiB).
MAX_ASSOCIATE_RQ = 1 << 20
#: Largest command set, and largest data set kept in memory (identifiers,
#: N-ACTION information); C-STORE data sets go to disk whatever their size.
MAX_COMMAND = 1 << 16
MAX_DATASET_IN_MEMORY = 64 << 20
#: Bytes read from the socket buffer per file write.
CHUNK = 1 << 20
#: Negotiations remembered (AssociationServer.negotiate), and the longest
#: A-ASSOCIATE-RQ body remembered.
NEGOTIATION_MEMO_SIZE = 64
NEGOTIATION_MEMO_BYTES = 64 << 10
#: Pending C-FIND responses answered from the loop between two turns of it.
FIND_YIELD = 16
#: Largest instance (bytes) ingested on the event loop (see Association._ingest).
INLINE_INGEST = 4 << 20
#: Bytes of a received data set after which their writeback to disk starts.
WRITEBACK = 256 << 10
#: Largest stored file read and framed whole ahead of its C-STORE
#: sub-operation, while the peer answers the one before (store_instance).
READ_AHEAD = 4 << 20
#: Seconds we wait for the A-ASSOCIATE-RQ (the ARTIM timer) at most.
ARTIM = 30.0
#: Seconds we wait for the peer to close after our last PDU.
LINGER = 2.0
#: Seconds before an A-ASSOCIATE-RJ goes out (see Association._reject).
REJECT_DELAY = 0.05

_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ",
              0x04: "P-DATA-TF", 0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP",
              0x07: "A-ABORT"}
A_RELEASE_RP = bytes.fromhex("06000000000400000000")
_ABORT_SOURCES = {0: "service user", 1: "reserved", 2: "service provider"}
_ABORT_REASONS = {0: "not specified", 1: "unrecognized PDU", 2: "unexpected PDU",
                  4: "unrecognized PDU parameter", 5: "unexpected PDU parameter",
                  6: "invalid PDU parameter value"}


def _our_user_information() -> list[Any]:
    """The user information items we send in A-ASSOCIATE-AC: maximum length
    received, implementation class UID and version name (PS3.7 D.3.3)."""
    return client.user_information(MAX_PDU_RECEIVE)


def a_abort(source: int, reason: int) -> bytes:
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, reason)


def a_associate_rj(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def set_nodelay(sock: Any) -> None:
    """Nagle's algorithm plus delayed ACKs costs ~40 ms per small exchange."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def supported_contexts() -> list[PresentationContext]:
    """What we accept: Verification; every storage SOP class in any of
    TRANSFER_SYNTAXES, in both roles (a C-GET SCU is the storage SCP on its
    own association); Patient/Study Root FIND, MOVE, GET; Storage Commitment
    Push Model (either role: the report may go either way)."""
    uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    contexts = [build_context(VERIFICATION, uncompressed)]
    for cx in AllStoragePresentationContexts:
        storage = build_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        storage.scu_role = storage.scp_role = True
        contexts.append(storage)
    for model in sorted(FIND_MODELS | MOVE_MODELS | GET_MODELS):
        contexts.append(build_context(model, uncompressed))
    commitment = build_context(STORAGE_COMMITMENT, uncompressed)
    commitment.scu_role = commitment.scp_role = True
    contexts.append(commitment)
    return contexts


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket with TCP_NODELAY.

    Worker processes share it (inherited; see AssociationServer), so a port
    somebody else holds fails here, once, with EADDRINUSE."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        set_nodelay(sock)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True)
class Negotiation:
    """What an A-ASSOCIATE-RQ gets (PS3.8 9.3.2-9.3.4, PS3.7 D.3.3): the
    A-ASSOCIATE-AC to send and the accepted presentation contexts, or why
    it is rejected (result, source, reason, log text), or why it is
    malformed."""

    calling: str = ""
    called: str = ""
    malformed: str = ""
    rejection: tuple[int, int, int, str] | None = None
    contexts: dict[int, PresentationContext] = field(default_factory=dict)
    max_pdu: int = 0
    proposed: int = 0
    ac: bytes = b""


def negotiate(body: bytes, supported: list[PresentationContext]) -> Negotiation:
    """Negotiate an association from the body of its A-ASSOCIATE-RQ with
    pynetdicom's PDU classes and ``negotiate_as_acceptor``: a pure function
    of the bytes (AssociationServer.negotiate remembers its answers)."""
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        request = pdu.to_primitive()
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        proposed = request.presentation_context_definition_list
    except Exception as exc:
        return Negotiation(malformed=str(exc) or exc.__class__.__name__)
    deal = Negotiation(calling=calling, called=called, proposed=len(proposed))
    if not pdu.protocol_version & 1:
        return dataclasses.replace(deal, rejection=(
            1, 2, 2, f"protocol version {pdu.protocol_version} not supported"))
    if str(request.application_context_name) != APPLICATION_CONTEXT:
        return dataclasses.replace(deal, rejection=(
            1, 1, 2, f"application context {request.application_context_name} not supported"))
    roles = {str(item.sop_class_uid): (item.scu_role, item.scp_role)
             for item in request.user_information
             if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
    result, reply_roles = negotiate_as_acceptor(proposed, supported, roles)
    _choose_sending_syntaxes(result, proposed)
    contexts = {int(cx.context_id): cx for cx in result if cx.result == 0x00}
    if not contexts:
        offered = sorted({str(cx.abstract_syntax) for cx in proposed})
        return dataclasses.replace(deal, rejection=(
            1, 1, 1, "no acceptable presentation context (proposed "
            f"{', '.join(offered[:5])}{' …' if len(offered) > 5 else ''})"))
    reply = A_ASSOCIATE()
    reply.application_context_name = APPLICATION_CONTEXT
    reply.calling_ae_title = request.calling_ae_title
    reply.called_ae_title = request.called_ae_title
    reply.result = 0x00
    reply.result_source = 0x01
    reply.presentation_context_definition_results_list = result
    reply.user_information = [*_our_user_information(), *reply_roles]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(reply)
    return dataclasses.replace(deal, contexts=contexts, ac=ac.encode(),
                               max_pdu=int(request.maximum_length_received or 0))


def _choose_sending_syntaxes(result: list[PresentationContext],
                             proposed: list[PresentationContext]) -> None:
    """On an accepted storage context where we are the SCU (a C-GET SCU's
    context for the C-STORE sub-operations), the transfer syntax is chosen
    by ``retrieve.sending_syntax`` — the peer's preference among what we can
    send — rather than by our order for receiving (pynetdicom's choice),
    so that stored bytes go out unchanged where the peer offered their
    syntax."""
    offered = {cx.context_id: cx.transfer_syntax for cx in proposed}
    for cx in result:
        if cx.result != 0x00 or not cx.as_scu or cx.abstract_syntax in _NOT_STORAGE:
            continue
        ts = sending_syntax(offered.get(cx.context_id, []), TRANSFER_SYNTAXES)
        if ts is not None:
            cx.transfer_syntax = [UID(ts)]


class AssociationLimit:
    """Established associations against ``max_associations``, and the load
    of each DIMSE process.

    With several DIMSE processes the count is shared: a small unlinked file
    that every process maps (inherited as a file descriptor), summed under a
    POSIX record lock when an association is accepted, so the limit holds
    for the node as a whole.  The file holds, per process (slot), its
    association count, then its open connections and the time it last
    said it was alive, which the acceptors read to leave a connection to
    the least busy process (``defer``)."""

    def __init__(self, limit: int, fd: int | None = None, slot: int = 0,
                 slots: int = 1) -> None:
        self.limit = limit
        self.fd, self.slot, self.slots = fd, slot, slots
        self.local = 0
        self.connections = 0
        self._map = mmap.mmap(fd, self.file_size(slots)) if fd is not None else None
        if self._map is not None:  # a restarted worker: its predecessor's count is gone
            struct.pack_into("<q", self._map, slot * 8, 0)

    @staticmethod
    def file_size(slots: int) -> int:
        return slots * 8 + slots * _LOAD.size

    @staticmethod
    def shared_file(slots: int) -> int:
        """A file descriptor for ``slots`` processes to share (no name on disk)."""
        fd, name = tempfile.mkstemp(prefix="pacsnode-dimse-")
        os.unlink(name)
        os.ftruncate(fd, AssociationLimit.file_size(slots))
        return fd

    def acquire(self) -> bool:
        if self._map is None:
            if self.local >= self.limit:
                return False
            self.local += 1
            return True
        assert self.fd is not None
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            if sum(struct.unpack_from(f"<{self.slots}q", self._map)) >= self.limit:
                return False
            self.local += 1
            struct.pack_into("<q", self._map, self.slot * 8, self.local)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def release(self) -> None:
        self.local -= 1
        if self._map is not None:  # only this process writes its slot
            struct.pack_into("<q", self._map, self.slot * 8, self.local)

    def alone(self) -> bool:
        """Whether this process's one association is the node's only one
        (read without the lock: a hint, see ``Association._ingest``)."""
        if self.local != 1:
            return False
        return self._map is None or sum(struct.unpack_from(f"<{self.slots}q", self._map)) == 1

    # -- load balance between the processes (only this process writes its slot)

    def connected(self, change: int) -> None:
        self.connections += change
        self._publish()

    def alive(self) -> None:
        """Say this process accepts (at start, then from the watchdog)."""
        self._publish()

    def has_started(self, slot: int) -> bool:
        """Whether process ``slot`` has said it accepts, ever."""
        return self._map is not None and _LOAD.unpack_from(
            self._map, self._load_offset(slot))[1] > 0

    def _publish(self) -> None:
        if self._map is not None:
            _LOAD.pack_into(self._map, self._load_offset(self.slot), self.connections,
                            time.monotonic())

    def _load_offset(self, slot: int) -> int:
        return self.slots * 8 + slot * _LOAD.size

    def defer(self) -> bool:
        """Whether another live process has fewer connections than this one
        (so it, not we, should take the next).  CLOCK_MONOTONIC is the
        same clock in every process; a process silent for ALIVE_SECONDS
        (dead, being restarted) is left out."""
        if self._map is None:
            return False
        now = time.monotonic()
        for slot in range(self.slots):
            if slot == self.slot:
                continue
            connections, seen = _LOAD.unpack_from(self._map, self._load_offset(slot))
            if connections < self.connections and now - seen < ALIVE_SECONDS:
                return True
        return False


#: Per process in the AssociationLimit file: open connections, last alive.
_LOAD = struct.Struct("<qd")
#: A DIMSE process not heard from for this long takes no connections.
ALIVE_SECONDS = 5.0
#: How long an acceptor that left a connection to a less busy process waits
#: before looking again, and at most how long it keeps leaving the same
#: backlog to another (whose loop may be busy) before taking it itself.
ACCEPT_RECHECK = 0.002
ACCEPT_DEFER_MAX = 0.05


class Workers:
    """Threads for the blocking work (ingest, index queries, peers we call),
    each result handed back to the event loop with one
    ``call_soon_threadsafe`` — on the C-STORE path this is leaner than
    ``run_in_executor`` (no concurrent Future, no future chaining).  Grows
    to ``size`` threads so that many ingests can wait for their fsync at
    once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.submit(loop, future, func, args)
        return await future

    def submit(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
               func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"pacsnode-dimse-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        self._queue.put((loop, future, func, args))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, func, args = item
            try:
                result, error = func(*args), None
            except BaseException as exc:
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_deliver, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let queued and running work finish, then end the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class NotSent(Exception):
    """A stored file could not be read: nothing of its C-STORE-RQ went out."""


class ProtocolError(Exception):
    """The peer broke PS3.8/PS3.7: abort with this reason (PS3.8 9.3.8)."""

    def __init__(self, message: str, reason: int = 6) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Operation:
    command: m.Command
    context_id: int
    cancel: threading.Event = field(default_factory=threading.Event)


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


class AssociationServer:
    """The DIMSE listener: its own event loop in a thread, so ``start()``
    returns at once and ``serve`` can run the HTTP side in the main thread."""

    def __init__(self, services: Services, settings: Settings, *,
                 limit: AssociationLimit | None = None,
                 listen_fd: int | None = None) -> None:
        self.services = services
        self.limit = limit or AssociationLimit(settings.max_associations)
        self.settings = settings
        #: The listening socket a worker process inherited from the main one.
        self.listen_fd = listen_fd
        self.sock: socket.socket | None = None
        #: The loop's AIO fsyncs (Linux), else None: fsync on threads.
        self.aio: AioSync | None = None
        #: When this process began leaving the waiting connections to a
        #: less busy one, and last did (see _on_connection).
        self._deferring_since: float | None = None
        self._last_deferral = 0.0
        self._connections: set[asyncio.Task[None]] = set()
        self.contexts = supported_contexts()
        self._negotiated: dict[bytes, Negotiation] = {}
        self.timeout = float(settings.dimse_timeout)
        # Ingests overlap their fsyncs; C-FIND/MOVE/GET hold one thread each.
        self.pool = Workers(max(4, min(64, settings.max_associations + 4)))
        self.associations: set[Association] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._background: set[asyncio.Future[Any]] = set()
        #: Ingest and C-FIND on the loop (Association._ingest, _c_find_here):
        #: SQLite only, whose statements wait on no network.
        self.on_loop = services.node.db.is_sqlite
        self.listening = False

    # -- lifecycle (called from other threads)

    def start(self) -> None:
        s = self.settings
        if self.listen_fd is not None:
            sock = socket.socket(fileno=os.dup(self.listen_fd))
            sock.setblocking(False)
        else:
            sock = listen_socket(s.host, s.dicom_port)
        self.sock = sock
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.add_reader(sock.fileno(), self._on_connection)
                self.aio = AioSync.create(self.loop)
                self.limit.alive()
                watchdog = self.loop.create_task(self._watchdog())
            except BaseException as exc:  # pragma: no cover - start-up failure
                failed.append(exc)
                ready.set()
                return
            ready.set()
            try:
                self.loop.run_forever()
            finally:
                watchdog.cancel()
                if self.aio is not None:
                    self.aio.close()
                self.loop.run_until_complete(asyncio.sleep(0))
                self.loop.close()

        self._thread = threading.Thread(target=run, name="pacsnode-dimse-loop", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        self.listening = True

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let running associations finish for up to
        ``grace`` seconds, then abort the rest.  Nothing acknowledged is
        lost (ingest is atomic); an instance whose ingest is under way is
        finished before we return."""
        if not self.listening or self.loop is None:
            return
        self.listening = False
        done = asyncio.run_coroutine_threadsafe(self._shutdown(grace), self.loop)
        try:
            done.result(grace + 15)
        except Exception:
            log.exception("DIMSE shutdown")
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self.pool.shutdown()

    async def _shutdown(self, grace: float) -> None:
        assert self.sock is not None and self.loop is not None
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()  # our descriptor; workers may still hold theirs
        deadline = self.loop.time() + grace
        while self.associations and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for assoc in list(self.associations):
            log.warning("aborting association with %s at shutdown", assoc.describe())
            assoc.abort(0, 0, "server shutting down")
        tasks = [a.task for a in self.associations if a.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._background:
            await asyncio.wait(self._background, timeout=5)

    # -- inside the loop

    def _on_connection(self) -> None:
        """The listening socket is readable: take one connection, unless
        another DIMSE process has fewer (then look again shortly; it takes
        it meanwhile).

        Written here rather than with asyncio.start_server because the
        processes share one listening socket and choose by load: the
        kernel's SO_REUSEPORT spreading hashes each connection to a process
        whatever its load, which put 3 or 4 of 4 parallel senders on one
        process as often as not."""
        assert self.loop is not None and self.sock is not None
        if self.limit.defer():
            now = self.loop.time()
            if self._deferring_since is None or now - self._last_deferral > ACCEPT_DEFER_MAX:
                self._deferring_since = now  # a new backlog, not the one left before
            self._last_deferral = now
            if now - self._deferring_since < ACCEPT_DEFER_MAX:
                self.loop.remove_reader(self.sock.fileno())
                self.loop.call_later(ACCEPT_RECHECK, self._resume_accepting)
                return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):  # another process took it
            self._deferring_since = None
            return
        except OSError as exc:  # out of descriptors, say: pause rather than spin
            log.warning("cannot accept a DIMSE connection: %s", exc)
            self.loop.remove_reader(self.sock.fileno())
            self.loop.call_later(0.1, self._resume_accepting)
            return
        self._deferring_since = None
        conn.setblocking(False)
        set_nodelay(conn)
        self.limit.connected(+1)
        task = self.loop.create_task(self._connection(conn))
        self._connections.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._connections.discard)

    def _resume_accepting(self) -> None:
        if self.listening and self.sock is not None and self.sock.fileno() >= 0:
            assert self.loop is not None
            self.loop.add_reader(self.sock.fileno(), self._on_connection)

    async def _connection(self, conn: socket.socket) -> None:
        try:
            try:
                reader, writer = await asyncio.open_connection(sock=conn, limit=4 * CHUNK)
            except OSError:
                conn.close()
                return
            await self._accept(reader, writer)
        finally:
            self.limit.connected(-1)

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        assoc = Association(self, reader, writer)
        assoc.task = asyncio.current_task()
        self.associations.add(assoc)
        try:
            await assoc.run()
        finally:
            self.associations.discard(assoc)

    async def _watchdog(self) -> None:
        """The ARTIM timer and the idle timeout, for every association at once
        (cheaper than a timer per read)."""
        assert self.loop is not None
        period = max(0.2, min(1.0, self.timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.limit.alive()
            now = self.loop.time()
            for assoc in list(self.associations):
                assoc.check_timeout(now)

    def negotiate(self, body: bytes) -> Negotiation:
        """``negotiate`` of an A-ASSOCIATE-RQ body, remembered: a tool that
        proposes every storage SOP class (storescu, getscu: 120 contexts
        and more) cost ~20 ms of pynetdicom's PDU decoding and negotiation
        per association, and sends the same request every time."""
        if len(body) > NEGOTIATION_MEMO_BYTES:
            return negotiate(body, self.contexts)
        deal = self._negotiated.get(body)
        if deal is None:
            deal = negotiate(body, self.contexts)
            if len(self._negotiated) >= NEGOTIATION_MEMO_SIZE:
                self._negotiated.pop(next(iter(self._negotiated)))
            self._negotiated[body] = deal
        return deal

    def emit_later(self, event: Any) -> None:
        """Emit an ingest event on the pool (from the loop: a handler may wait)."""
        self.background(self.services.node.bus.emit, event)

    def background(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func`` on the pool, outliving the association that asked."""
        assert self.loop is not None
        future = self.loop.create_future()
        self.pool.submit(self.loop, future, func, args)
        self._background.add(future)
        future.add_done_callback(self._background.discard)


class Association:
    """One association, from the A-ASSOCIATE-RQ to the release or abort."""

    def __init__(self, server: AssociationServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.services = server.services
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
        self.requestor = False  # True on the associations we open (C-MOVE)
        self._counted = False  # holds a place under max_associations
        self._release_requested = False
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
        self._writeback = server.services.node.store.fsync and hasattr(os, "posix_fadvise")
        self._data: bytearray | None = None
        #: The first HEAD_BYTES (or more) of the C-STORE being received, as
        #: written to its temp file: the header is walked without reading it back.
        self._head: list[bytes] = []
        #: Our C-STORE sub-operations: the accepted (transfer syntax →
        #: context id) of each SOP class, and the next stored file's data
        #: set as P-DATA-TF PDUs, read while the peer answered the one
        #: before (path, context id, PDUs).
        self._usable: dict[str, dict[str, int]] = {}
        self._ahead: tuple[Path, int, bytes] | None = None
        #: What the ingest of the C-STORE being answered leaves to do after
        #: the response (Ingestor.commit's ``announce``).
        self._announce: list[Callable[[], None]] = []

    def describe(self) -> str:
        if self.requestor:
            return f"{self.peer_aet} at {self.address}:{self.port}"
        return f"{self.peer_aet or '?'} from {self.address}:{self.port}"

    # -- the association's life

    async def run(self) -> None:
        """The association's reader, from its first PDU (or, when we are the
        requestor, from the A-ASSOCIATE-AC) to its end."""
        try:
            if not self.requestor and not await self._associate():
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
            if self._counted:
                self.server.limit.release()
            if self.is_established:
                log.info("association %s: %s", self.outcome or "closed", self.describe())
            elif self.outcome:
                log.warning("connection from %s:%s %s", self.address, self.port, self.outcome)

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
        if self.requestor and self.outcome == "released":
            self.writer.close()  # PS3.8 AR-3: the requestor closes after A-RELEASE-RP
        elif not self.writer.is_closing():
            linger = self.loop.create_task(self._linger())
            self.server._background.add(linger)
            linger.add_done_callback(self.server._background.discard)

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

    async def _header(self) -> tuple[int, int]:
        head = await self.reader.readexactly(6)
        self.last_rx = self.loop.time()
        return head[0], int.from_bytes(head[2:6], "big")

    # -- association establishment (PS3.8 9.3.2-9.3.4, PS3.7 D.3.3)

    async def _associate(self) -> bool:
        try:
            pdu_type, length = await self._header()
        except asyncio.IncompleteReadError:
            log.info("connection from %s:%s closed before an A-ASSOCIATE-RQ", self.address,
                     self.port)
            return False
        if pdu_type != 0x01:
            name = _PDU_NAMES.get(pdu_type)
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
        if deal.rejection is not None:
            return await self._rejected(*deal.rejection)
        self.contexts = dict(deal.contexts)
        self.max_pdu = deal.max_pdu
        if not self.server.limit.acquire():
            return await self._rejected(2, 3, 2, "local limit exceeded (max_associations "
                                  f"{self.server.limit.limit})")
        self._counted = True
        self.writer.write(deal.ac)
        self.is_established = True
        log.info("association accepted: %s (%d of %d contexts, max PDU %s, pid %d)",
                 self.describe(), len(self.contexts), deal.proposed,
                 self.max_pdu or "unlimited", os.getpid())
        return True

    async def _reject(self, result: int, source: int, reason: int) -> None:
        # pynetdicom's requestor takes an A-ASSOCIATE-RJ that arrives before
        # its ACSE thread has seen the connection open for a failed
        # connection (and aborts): a rejection may as well take a moment.
        await asyncio.sleep(REJECT_DELAY)
        self.writer.write(a_associate_rj(result, source, reason))
        self.closed = True

    async def _rejected(self, result: int, source: int, reason: int, why: str) -> bool:
        log.warning("association rejected: %s: %s", self.describe(), why)
        await self._reject(result, source, reason)
        return False

    # -- established: PDUs until release or abort

    async def _serve(self) -> str:
        while True:
            pdu_type, length = await self._header()
            if pdu_type == 0x04:
                await self._p_data(length)
            elif pdu_type == 0x05:
                if length != 4:
                    raise ProtocolError(f"A-RELEASE-RQ of length {length}")
                await self.reader.readexactly(4)
                await self._release()
                return "released"
            elif pdu_type == 0x06 and self._release_requested:
                await self.reader.readexactly(min(length, 64))
                return "released"
            elif pdu_type == 0x07:
                body = await self.reader.readexactly(4) if length == 4 else b"\0\0\0\0"
                return (f"aborted by the peer (source {_ABORT_SOURCES.get(body[2], body[2])}, "
                        f"reason {_ABORT_REASONS.get(body[3], body[3])})")
            elif pdu_type in _PDU_NAMES:
                raise ProtocolError(f"unexpected {_PDU_NAMES[pdu_type]}", reason=2)
            else:
                raise ProtocolError(f"unrecognized PDU type 0x{pdu_type:02X}", reason=1)

    async def release(self) -> None:
        """Release an association we requested (A-RELEASE-RQ, wait for the
        -RP), or abort it when the peer does not answer."""
        if self.closed or self.task is None:
            return
        self._release_requested = True
        try:
            await self._write(bytes.fromhex("05000000000400000000"))
            await asyncio.wait_for(asyncio.shield(self.task), min(self.server.timeout, 10.0))
        except (ConnectionError, OSError, asyncio.TimeoutError):
            self.abort(0, 0, "no A-RELEASE-RP")

    async def _release(self) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("the peer released the association"))
        self.waiting.clear()
        if self.op_tasks:
            for op in self.ops.values():
                op.cancel.set()
            await asyncio.wait(self.op_tasks, timeout=5)
        await self._write(A_RELEASE_RP)
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
                self._refusal = None
                syntax = str(self.contexts[context_id].abstract_syntax)
                if syntax in _NOT_STORAGE:
                    self._refusal = (0x0122, f"C-STORE on a {syntax} context")
                else:
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
            fh, temp = self.services.node.store.new_temp()
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
            await self._c_store(context_id, command, temp, self._written, head)
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

    async def _dispatch(self, context_id: int, command: m.Command, data: bytes | None) -> None:
        field = command.field
        unusable = command.unusable_uid()
        if unusable is not None:  # a failure status, not an abort (DESIGN.md §6)
            log.warning("DIMSE command 0x%04X from %s refused: %s", field, self.describe(),
                        unusable[1])
            await self.send(context_id, m.response(field | 0x8000, command, unusable[0],
                                                   error_comment=unusable[1]))
            return
        syntax = str(self.contexts[context_id].abstract_syntax)
        allowed = {m.C_ECHO_RQ: None, m.C_STORE_RQ: "storage", m.C_FIND_RQ: FIND_MODELS,
                   m.C_MOVE_RQ: MOVE_MODELS, m.C_GET_RQ: GET_MODELS,
                   m.N_ACTION_RQ: {STORAGE_COMMITMENT}}
        if field not in allowed:
            log.warning("unsupported DIMSE command 0x%04X from %s", field, self.describe())
            await self.send(context_id, m.response(
                field | 0x8000, command, 0x0211, error_comment="unrecognized operation",
                affected_sop_class=command.affected_sop_class or None))
            return
        classes = allowed[field]
        if classes == "storage":
            ok = syntax not in _NOT_STORAGE
        else:
            ok = classes is None or syntax in classes
        if not ok:
            await self.send(context_id, m.response(
                field | 0x8000, command, 0x0122,
                error_comment=f"operation not supported on {syntax}",
                affected_sop_class=command.affected_sop_class or None))
            return
        if field == m.C_ECHO_RQ:
            log.info("C-ECHO from %s", self.origin.describe())
            await self.send(context_id, m.response(
                m.C_ECHO_RSP, command, 0x0000,
                affected_sop_class=command.affected_sop_class or VERIFICATION))
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
        await self._write(m.message(context_id, command, dataset, self.max_pdu))

    async def _write(self, data: bytes) -> None:
        """Bytes out whole, between other messages (not inside one)."""
        async with self.send_lock:
            self.writer.write(data)
            await self.writer.drain()

    async def _send_file(self, context_id: int, command: bytes, out: Outgoing) -> None:
        """A C-STORE-RQ whose data set is a stored file's bytes from
        ``out.offset`` on, read and sent a block at a time: the command with
        the first block, one write per block (writelines() of the fragments
        made a send() per fragment, 16 KiB for DCMTK's tools) — or, when
        ``_read_ahead`` has them, its PDUs as read ahead."""
        if self.closed or self.writer.is_closing():
            raise ConnectionError("association closed")
        ahead, self._ahead = self._ahead, None
        if out.data is not None:  # transcoded: the data set is in memory
            await self._write(b"".join(
                [*m.pdata(context_id, command, True, self.max_pdu),
                 *m.pdata(context_id, memoryview(out.data)[out.offset:], False,
                          self.max_pdu)]))
            return
        if ahead is not None and ahead[:2] == (out.path, context_id):
            async with self.send_lock:
                self.writer.write(b"".join(m.pdata(context_id, command, True, self.max_pdu)))
                self.writer.write(ahead[2])
                await self.writer.drain()
            return
        async with self.send_lock:
            try:
                fh = open(out.path, "rb")
            except OSError as exc:
                raise NotSent(str(exc)) from exc
            try:
                size = os.fstat(fh.fileno()).st_size
                block: bytes | memoryview = b""
                if out.offset < 0:  # the end of the file meta, read here
                    head = fh.read(CHUNK)
                    offset = meta_end(head, out.path)[0]
                    block = memoryview(head)[offset:]
                else:
                    offset = out.offset
                    fh.seek(offset)
            except (OSError, ValueError) as exc:
                fh.close()
                raise NotSent(str(exc)) from exc
            with fh:
                left = size - offset
                parts = list(m.pdata(context_id, command, True, self.max_pdu))
                if left <= 0:
                    parts += m.pdata(context_id, b"", False, self.max_pdu)
                    self.writer.write(b"".join(parts))
                while left > 0:
                    if not block:
                        block = fh.read(min(left, CHUNK))
                        if not block:
                            raise OSError(f"{out.path} shrank while being sent")
                    left -= len(block)
                    parts += m.pdata(context_id, block, False, self.max_pdu, last=left <= 0)
                    self.writer.write(b"".join(parts))
                    parts, block = [], b""
                    await self.writer.drain()
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

    # -- the services

    async def _ingest(self, temp: Path, size: int, sop_class: str, sop_uid: str,
                      head: bytes | None = None) -> tuple[int, str | None]:
        """Ingest a received instance; its C-STORE status and comment.

        On SQLite, an instance up to INLINE_INGEST bytes is ingested here on
        the event loop, but for its fsync (awaited: Linux AIO started before
        the header walk, see aiosync.py, or else the fsync threads):
        header walk, validation and the index transaction take well under a
        millisecond, and handing them to a worker thread and back added two
        thread switches and the two threads contending for the GIL (~10% of
        the CPU of a small instance, measured A/B).  The log line and event
        of an instance stored here wait in ``_announce`` until its response
        is sent.  Whatever could wait goes to the pool: a
        header that needs pydicom's reader, and the index write when another
        writer holds the database (``wait=False`` finds out without waiting).
        Events go out on the pool when a handler may wait (automation)."""
        services, server = self.services, self.server
        if server.on_loop and size <= INLINE_INGEST:
            # The node's only association: a CPU to spare, so the fsync goes
            # to a thread that has taken it before the header walk begins
            # (an AIO fsync's kernel worker runs on the loop's CPU and
            # doubled the fsync's time beside the walk: +23% small
            # instances/s on one association, paired runs); with more, AIO,
            # which costs the least CPU.
            alone = server.limit.alone()
            submit = fsync_started if alone else server.aio.fsync if server.aio else None
            staged = services.stage_store(temp, self.origin, sop_class, sop_uid, head, size,
                                          submit)
            if isinstance(staged, tuple):  # refused
                return staged
            if staged is not None:
                emit = server.emit_later if services.node.bus.blocking else None
                if staged.syncing is not None and alone:
                    # Nothing else for the loop (or another process's
                    # writer) to do while the fsync runs, so the rows are
                    # written meanwhile and the loop blocks only for what is
                    # left of it, before the rename.
                    done = services.finish_store(staged, sop_uid, wait=False, emit=emit,
                                                 announce=self._announce,
                                                 fsync_in_transaction=True)
                    if done is not None:
                        return done
                if staged.syncing is not None:
                    try:
                        await asyncio.wrap_future(staged.syncing)
                    except Exception:
                        pass  # staged.wait() keeps the error for the result
                staged.wait()
                done = services.finish_store(staged, sop_uid, wait=False, emit=emit,
                                             announce=self._announce)
                if done is not None:
                    return done
                done = await server.pool.run(services.finish_store, staged, sop_uid)
                assert done is not None
                return done
        return await server.pool.run(services.store, temp, self.origin, sop_class, sop_uid)

    async def _c_store(self, context_id: int, command: m.Command, temp: Path | None,
                       size: int = 0, head: bytes | None = None) -> None:
        sop_class, sop_uid = command.affected_sop_class, command.affected_sop_instance
        if temp is None:
            status, comment = self._refusal or (0xA700, "cannot write")
            log.warning("C-STORE %s from %s failed: %s", sop_uid, self.origin.describe(),
                        comment)
        else:
            self.busy += 1
            try:
                status, comment = await self._ingest(temp, size, sop_class, sop_uid, head)
            except Exception as exc:  # ingest_temp reports its failures; this is a bug
                log.exception("C-STORE %s from %s", sop_uid, self.origin.describe())
                temp.unlink(missing_ok=True)
                status, comment = 0xA700, f"storage failed: {exc}"
            finally:
                self.busy -= 1
        try:
            await self.send(context_id, m.response(
                m.C_STORE_RSP, command, status, error_comment=comment,
                affected_sop_class=sop_class, affected_sop_instance=sop_uid))
        finally:
            self._tell()

    def _tell(self) -> None:
        """The log lines and events of instances stored and answered (or
        whose sender has gone): ~0.1 ms each, no longer between the index
        commit and the response."""
        announce, self._announce = self._announce, []
        for tell in announce:
            try:
                tell()
            except Exception:  # a handler's bug: the instance is stored
                log.exception("after storing an instance from %s", self.describe())

    async def _operation(self, op: Operation, data: bytes) -> None:
        field = op.command.field
        handler = {m.C_FIND_RQ: self._c_find, m.C_MOVE_RQ: self._c_move,
                   m.C_GET_RQ: self._c_get, m.N_ACTION_RQ: self._n_action}[field]
        async with self.op_lock:
            self.busy += 1
            try:
                await handler(op, data)
            except (ConnectionError, asyncio.CancelledError):
                pass
            except Exception as exc:
                log.exception("DIMSE 0x%04X from %s failed", field, self.describe())
                try:
                    await self._final(op, field | 0x8000, 0xC000, f"failed: {exc}")
                except Exception:
                    pass
            finally:
                self.busy -= 1
                self.ops.pop(op.command.message_id, None)

    def _syntax(self, op: Operation) -> str:
        return str(self.contexts[op.context_id].transfer_syntax[0])

    async def _final(self, op: Operation, field: int, status: int, comment: str | None = None,
                     ops: SubOperations | None = None, with_remaining: bool = False) -> None:
        """A C-FIND/MOVE/GET response carrying sub-operation counts and, when
        some failed, the Failed SOP Instance UID List (PS3.4 C.4.2.1.5)."""
        counts: dict[str, Any] = {}
        dataset = None
        if ops is not None:
            counts = dict(completed=ops.completed, failed=ops.failed, warning=ops.warning)
            if with_remaining:
                counts["remaining"] = ops.remaining
            if ops.failed_uids and status != 0xFF00:
                ds = Dataset()
                ds.FailedSOPInstanceUIDList = ops.failed_uids
                dataset = m.encode_dataset(ds, self._syntax(op))
        await self.send(op.context_id, m.response(
            field, op.command, status, dataset=dataset is not None, error_comment=comment,
            affected_sop_class=op.command.affected_sop_class or None, **counts), dataset)

    def _identifier(self, op: Operation, data: bytes) -> Dataset:
        return m.decode_dataset(data, self._syntax(op))

    async def _c_find(self, op: Operation, data: bytes) -> None:
        try:
            identifier = self._identifier(op, data)
        except Exception as exc:
            log.warning("C-FIND from %s: cannot decode identifier: %s", self.origin.describe(),
                        exc)
            await self._final(op, m.C_FIND_RSP, 0xC000, f"cannot decode identifier: {exc}")
            return
        syntax, command = self._syntax(op), op.command
        responses = self.services.find(identifier, self.origin, op.cancel.is_set, syntax)

        pending: bytes | None = None

        def response(status: int, comment: str | None, encoded: bytes | None) -> bytes:
            # Every pending response with an identifier has the same command
            # set: encoded once per C-FIND.
            nonlocal pending
            if status == 0xFF00 and comment is None and encoded is not None:
                if pending is None:
                    pending = m.response(m.C_FIND_RSP, command, status, dataset=True,
                                         affected_sop_class=command.affected_sop_class or None)
                return pending
            return m.response(m.C_FIND_RSP, command, status, dataset=encoded is not None,
                              error_comment=comment,
                              affected_sop_class=command.affected_sop_class or None)

        if self.server.on_loop:
            await self._c_find_here(op, responses, response)
            return
        outbox = Outbox(self, op.context_id)

        def run() -> None:
            for status, encoded, comment in responses:
                if self.closed:  # aborted: nobody to answer (and the loop may be gone)
                    return
                outbox.put(response(status, comment, encoded), encoded)
                if status != 0xFF00:
                    break
            outbox.flushed()

        await self.server.pool.run(run)

    async def _c_find_here(self, op: Operation,
                           responses: Iterator[tuple[int, bytes | None, str | None]],
                           response: Callable[[int, str | None, bytes | None], bytes]) -> None:
        """A C-FIND on SQLite, answered from the loop: its queries read a
        page of rows at a time and never wait on a writer (WAL), and every
        match costs some 30 µs to encode, against the thread switches and
        GIL contention of a worker thread handing responses over.  Every
        FIND_YIELD responses the loop serves the other associations and
        this one's reader (a C-CANCEL is seen within that many matches).
        Those responses go out in one write: one send() and one wake-up of
        the peer for them all, not one each."""
        batch: list[bytes] = []
        for status, encoded, comment in responses:
            if self.closed:
                return
            batch.append(m.message(op.context_id, response(status, comment, encoded),
                                   encoded, self.max_pdu))
            if status != 0xFF00:
                break
            if len(batch) == FIND_YIELD:
                await self._write(b"".join(batch))
                batch = []
                await asyncio.sleep(0)
        if batch:
            await self._write(b"".join(batch))

    async def _refs(self, op: Operation, data: bytes, verb: str) -> list[Any] | None:
        field = op.command.field | 0x8000
        try:
            identifier = self._identifier(op, data)
        except Exception as exc:
            log.warning("%s from %s: cannot decode identifier: %s", verb,
                        self.origin.describe(), exc)
            await self._final(op, field, 0xC000, f"cannot decode identifier: {exc}")
            return None
        try:
            return await self.server.pool.run(self.services.locate,
                                                   identifier)
        except PacsnodeError as exc:
            log.warning("%s from %s refused: %s", verb, self.origin.describe(), exc.reason)
            await self._final(op, field, exc.dimse_status, exc.reason)
            return None

    async def _c_move(self, op: Operation, data: bytes) -> None:
        """C-MOVE: the instances go to the destination on a new association
        we request (one per C-MOVE), a pending response after each."""
        command = op.command
        dest_aet = command.move_destination
        dest = await self.server.pool.run(self.services.move_destination, dest_aet)
        if dest is None:
            log.warning("C-MOVE from %s: unknown destination %r", self.origin.describe(),
                        dest_aet)
            await self._final(op, m.C_MOVE_RSP, 0xA801, f"unknown destination {dest_aet}")
            return
        refs = await self._refs(op, data, "C-MOVE")
        if refs is None:
            return
        log.info("C-MOVE from %s to %s: %d instances", self.origin.describe(), dest_aet,
                 len(refs))
        if not refs:
            await self._final(op, m.C_MOVE_RSP, 0x0000, ops=SubOperations(0))
            return
        target = client.Destination(dest.aet, dest.host, dest.port,
                                    self.server.settings.ae_title, ARTIM, self.server.timeout)
        try:
            sub = await client.connect(target, store_contexts(refs))
        except RemoteError as exc:
            log.warning("C-MOVE from %s: cannot associate with %s at %s:%s: %s",
                        self.origin.describe(), dest_aet, dest.host, dest.port, exc)
            await self._final(op, m.C_MOVE_RSP, 0xA801,
                              f"cannot associate with {dest_aet} at {dest.host}:{dest.port}")
            return
        ops = SubOperations(len(refs))
        cancelled = False
        try:
            for n, ref in enumerate(refs):
                if op.cancel.is_set():
                    cancelled = True
                    break
                status = None
                if not sub.closed:
                    status = await self._move_one(
                        sub, ref, (self.peer_aet, command.message_id),
                        refs[n + 1] if n + 1 < len(refs) else None)
                ops.count(status, ref.sop_instance_uid)
                await self._final(op, m.C_MOVE_RSP, 0xFF00, ops=ops, with_remaining=True)
        finally:
            await sub.release()
        log.info("C-MOVE from %s to %s: %d completed, %d failed, %d warning%s",
                 self.origin.describe(), dest_aet, ops.completed, ops.failed, ops.warning,
                 " (cancelled)" if cancelled else "")
        await self._final(op, m.C_MOVE_RSP, ops.final_status(cancelled), ops=ops,
                          with_remaining=cancelled)

    async def _move_one(self, sub: client.Requested, ref: Any, originator: tuple[str, int],
                        upcoming: Any) -> int | None:
        """One C-MOVE sub-operation on the association the requestor opened
        to the destination: the stored bytes when the peer accepted that
        syntax, otherwise transcoded (``retrieve.outgoing``).  The response
        status, or None when it could not be sent."""
        usable = sub.accepted(ref.sop_class_uid)
        try:
            if ref.transfer_syntax in usable:  # as stored: nothing to read here
                out = outgoing(ref, usable)
            else:
                out = await self.server.pool.run(outgoing, ref, usable)
        except Exception as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            log.warning("cannot send %s to %s: %s", ref.sop_instance_uid, sub.name, reason)
            return None
        ahead = None
        if upcoming is not None:
            context_id = sub.accepted(upcoming.sop_class_uid).get(upcoming.transfer_syntax)
            ahead = None if context_id is None else (upcoming.path, context_id)
        try:
            rsp = await sub.store(usable[out.transfer_syntax], ref.sop_class_uid,
                                  ref.sop_instance_uid, path=out.path, data=out.data,
                                  offset=out.offset, originator=originator, upcoming=ahead)
        except RemoteError as exc:
            log.warning("C-MOVE to %s: association lost: %s", sub.name, exc)
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot send %s to %s: %s", ref.sop_instance_uid, sub.name, exc)
            return None
        return rsp.status

    async def _c_get(self, op: Operation, data: bytes) -> None:
        """C-GET: the instances come back on this association, a pending
        response after each."""
        refs = await self._refs(op, data, "C-GET")
        if refs is None:
            return
        log.info("C-GET from %s: %d instances", self.origin.describe(), len(refs))
        ops = SubOperations(len(refs))
        cancelled = False
        for n, ref in enumerate(refs):
            if op.cancel.is_set():
                cancelled = True
                break
            status = await self.store_instance(
                ref, upcoming=refs[n + 1] if n + 1 < len(refs) else None)
            ops.count(status, ref.sop_instance_uid)
            await self._final(op, m.C_GET_RSP, 0xFF00, ops=ops, with_remaining=True)
        log.info("C-GET from %s: %d completed, %d failed, %d warning%s",
                 self.origin.describe(), ops.completed, ops.failed, ops.warning,
                 " (cancelled)" if cancelled else "")
        await self._final(op, m.C_GET_RSP, ops.final_status(cancelled), ops=ops,
                          with_remaining=cancelled)

    async def store_instance(self, ref: Any, originator: tuple[str, int] | None = None,
                             upcoming: Any = None) -> int | None:
        """One C-STORE sub-operation on this association, where we are the
        storage SCU (a C-MOVE association we requested, or a C-GET SCU's
        association with role selection): the stored bytes when the peer
        accepted that syntax, otherwise transcoded (``retrieve.outgoing``
        picks the syntax among the accepted contexts).  The response status, or
        None when it could not be sent.  ``upcoming``: the instance the next
        call will send, read ahead while the peer answers this one."""
        usable = self._accepted(ref.sop_class_uid)
        try:
            if ref.transfer_syntax in usable:  # as stored: nothing to read here
                out = outgoing(ref, usable)
            else:
                out = await self.server.pool.run(outgoing, ref, usable)
        except Exception as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            log.warning("cannot send %s to %s: %s", ref.sop_instance_uid, self.describe(),
                        reason)
            return None
        fields: dict[str, Any] = dict(field=m.C_STORE_RQ, affected_sop_class=ref.sop_class_uid,
                                      affected_sop_instance=ref.sop_instance_uid, priority=0)
        if originator is not None:
            fields.update(move_originator_aet=originator[0], move_originator_id=originator[1])
        try:
            rsp, _ = await self.request(
                usable[out.transfer_syntax], fields, out=out,
                meanwhile=None if upcoming is None else lambda: self._read_ahead(upcoming))
        except NotSent as exc:
            log.warning("cannot send %s to %s: %s", ref.sop_instance_uid, self.describe(), exc)
            return None
        except asyncio.TimeoutError:
            log.warning("no C-STORE response for %s from %s in %.0f s: aborting",
                        ref.sop_instance_uid, self.describe(), self.server.timeout)
            self.abort(2, 0, "no C-STORE response")
            raise ConnectionError("no C-STORE response") from None
        return rsp.status

    def _accepted(self, sop_class: str) -> dict[str, int]:
        """Transfer syntax → id of the contexts on which we may send
        ``sop_class`` (as SCU), worked out once per class."""
        usable = self._usable.get(sop_class)
        if usable is None:
            usable = self._usable[sop_class] = {
                str(cx.transfer_syntax[0]): cid for cid, cx in self.contexts.items()
                if cx.abstract_syntax == sop_class and cx.as_scu}
        return usable

    def _read_ahead(self, ref: Any) -> None:
        """The data set of ``ref``, sent as stored, read and cut into PDUs
        now, while the peer stores the one before: a sub-operation used to
        start with reading its file (~0.2 ms of 1.4 for a 512² CT sent to
        getscu) after the response to the last one came.  Only for files of
        up to READ_AHEAD bytes; anything wrong is left for the send itself
        to meet and report."""
        context_id = self._accepted(ref.sop_class_uid).get(ref.transfer_syntax)
        if context_id is None:
            return
        try:
            with open(ref.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size > READ_AHEAD:
                    return
                data = fh.read(READ_AHEAD + 1)
            offset = meta_end(data, ref.path)[0]
        except (OSError, ValueError):
            return
        if len(data) > READ_AHEAD:  # grew since the fstat
            return
        self._ahead = (ref.path, context_id, b"".join(
            m.pdata(context_id, memoryview(data)[offset:], False, self.max_pdu)))

    async def _n_action(self, op: Operation, data: bytes) -> None:
        """Storage Commitment Push Model (PS3.4 J.3): answer the N-ACTION, then
        report in an N-EVENT-REPORT which instances the archive durably
        holds — on this association, or, when the peer does not take it
        here, on a new one to the configured node."""
        command = op.command
        status, comment = 0x0000, None
        info = None
        if command.requested_sop_class != STORAGE_COMMITMENT:
            status, comment = 0x0118, "no such SOP class"
        elif command.action_type != 1:
            status, comment = 0x0123, f"no such action type {command.action_type}"
        else:
            try:
                info = self._identifier(op, data)
                transaction = str(info.get("TransactionUID", ""))
                wanted = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                          for i in info.get("ReferencedSOPSequence", [])]
            except Exception as exc:
                status, comment = 0x0110, f"cannot decode action information: {exc}"
        await self.send(op.context_id, m.response(
            m.N_ACTION_RSP, command, status, error_comment=comment,
            affected_sop_class=STORAGE_COMMITMENT,
            affected_sop_instance=command.requested_sop_instance or COMMITMENT_INSTANCE,
            action_type=command.action_type if status == 0 else None))
        if status != 0:
            log.warning("storage commitment from %s refused: %s", self.origin.describe(),
                        comment)
            return
        log.info("storage commitment %s from %s for %d instances", transaction,
                 self.origin.describe(), len(wanted))
        report = await self.server.pool.run(self.services.commitment_report,
                                                 transaction, wanted)
        event_type, ds = report
        try:
            rsp, _ = await self.request(op.context_id, dict(
                field=m.N_EVENT_REPORT_RQ, affected_sop_class=STORAGE_COMMITMENT,
                affected_sop_instance=COMMITMENT_INSTANCE, event_type=event_type),
                dataset=m.encode_dataset(ds, self._syntax(op)))
            if rsp.status == 0x0000:
                log.info("storage commitment %s reported to %s (event type %d)", transaction,
                         self.origin.describe(), event_type)
                return
            log.info("storage commitment report refused by %s (0x%04X)",
                     self.origin.describe(), rsp.status)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            log.info("storage commitment report on the same association failed: %s", exc)
        self.server.background(self.services.send_commitment, self.peer_aet, report)
