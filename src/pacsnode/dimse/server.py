"""The DIMSE listener of one process: the DICOM upper layer (PS3.8) on
asyncio — one event loop in its own thread, one coroutine per association
(``association.py``), PDUs read straight off the socket.  With
``dicom_tls_port`` it also listens for DICOM TLS (``access/tls.py``: the
handshake, then the same associations); like the plain port's, the TLS
listening socket is the main process's, inherited by the worker processes,
and a connection on either goes to the least busy process;
``client_tls`` is the context of the associations we request of nodes with
``tls = true``.

Why not pynetdicom's acceptor: it polls (a DUL thread that sleeps between
reactor loops, an association thread, queues with timeouts) and flushes per
fragment, so one association tops out near 155 C-STOREs/s whatever the disk
does.  Here a C-STORE's data set fragments go from the socket buffer into a
temp file as they arrive, the ingest runs on the loop or a thread pool (the
event loop stays free for other associations while one fsyncs), and the
response is one write.

pynetdicom is still used for what it does well and where speed does not
matter: the A-ASSOCIATE PDUs (``pynetdicom.pdu``), presentation context and
role negotiation (``negotiation.py``).  The associations we request (a
C-MOVE's destination, a storage commitment report on a new association)
are the one requestor's, ``client.py``, on the same wire code.

The layers, each a module: ``pdu.py`` (PDUs, the listening socket),
``negotiation.py``, ``association.py`` (reader, state, routing, writing),
``handle.py`` (what handlers see), the handlers ``echo.py``, ``store.py``,
``find.py``, ``move_get.py``, ``commitment.py``; and for the processes:
this listener, ``limit.py`` (the association limit shared between
processes), ``pool.py`` (worker threads), ``worker.py`` (a worker process),
``scp.py`` (what ``serve`` starts).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from ..access.dimse_gate import DimseGate
from ..access.tls import dicom_client_context, dicom_server_context
from ..aiosync import AioSync
from ..config import Settings
from ..durability import IngestScheduler
from ..events import Event
from ..node import Node
from .association import Association
from .limit import AssociationLimit
from .negotiation import TRANSFER_SYNTAXES, Negotiator
from .pdu import ARTIM, CHUNK, listen_socket, set_nodelay
from .pool import Workers

log = logging.getLogger("pacsnode.dimse")

__all__ = ["AssociationServer", "TRANSFER_SYNTAXES", "set_nodelay",
           "listen_socket"]


def _listening(inherited: int | None, host: str, port: int) -> socket.socket:
    """The listening socket of ``port``: a worker process's copy of the
    main process's (``inherited``), or a new one."""
    if inherited is None:
        return listen_socket(host, port)
    sock = socket.socket(fileno=os.dup(inherited))
    sock.setblocking(False)
    return sock


#: How long an acceptor that left a connection to a less busy process waits
#: before looking again, and at most how long it keeps leaving the same
#: backlog to another (whose loop may be busy) before taking it itself.
ACCEPT_RECHECK = 0.002
ACCEPT_DEFER_MAX = 0.05


class AssociationServer:
    """The DIMSE listener: its own event loop in a thread, so ``start()``
    returns at once and ``serve`` can run the HTTP side in the main thread."""

    def __init__(self, node: Node, settings: Settings, *,
                 limit: AssociationLimit | None = None,
                 listen_fd: int | None = None, tls_listen_fd: int | None = None,
                 gate: DimseGate | None = None) -> None:
        self.node = node
        self.limit = limit or AssociationLimit(
            settings.max_associations, per_address=settings.max_associations_per_address,
            per_ae=settings.max_associations_per_ae)
        #: Access control and audit (access/dimse_gate.py), asked by
        #: Association.admit and Association.refusal.
        self.gate = gate or DimseGate(node, None)
        self.settings = settings
        #: The listening sockets (plain, DICOM TLS) a worker process
        #: inherited from the main one.
        self.listen_fd = listen_fd
        self.tls_listen_fd = tls_listen_fd
        self.sock: socket.socket | None = None
        #: The loop's AIO fsyncs (Linux), else None: fsync on threads.
        self.aio: AioSync | None = None
        #: Per listening socket (by descriptor): when this process began
        #: leaving its waiting connections to a less busy one, and last did
        #: (see _on_connection).
        self._deferring_since: dict[int, float | None] = {}
        self._last_deferral: dict[int, float] = {}
        self._connections: set[asyncio.Task[None]] = set()
        #: The answer to an A-ASSOCIATE-RQ (negotiation.negotiate, remembered).
        self.negotiate = Negotiator()
        self.timeout = float(settings.dimse_timeout)
        # Ingests overlap their fsyncs; C-FIND/MOVE/GET hold one thread each.
        self.pool = Workers(max(4, min(64, settings.max_associations + 4)))
        self.associations: set[Association] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._background: set[asyncio.Future[Any]] = set()
        #: Events being emitted on the pool (emit_later), not yet done.
        self._emitting: set[asyncio.Future[Any]] = set()
        #: Ingest and C-FIND on the loop (durability.IngestScheduler,
        #: find._answer_here): SQLite only, whose statements wait on no network.
        self.on_loop = node.db.is_sqlite
        self.scheduler = IngestScheduler(node, self.pool.run, self.limit.alone,
                                         self.emit_later)
        self.listening = False
        #: The DICOM TLS listener (dicom_tls_port).
        self.tls_sock: socket.socket | None = None
        self.tls_context: ssl.SSLContext | None = None
        self._client_tls: ssl.SSLContext | None = None

    # -- lifecycle (called from other threads)

    def start(self) -> None:
        s = self.settings
        sock = self.sock = _listening(self.listen_fd, s.host, s.dicom_port)
        if s.dicom_tls_port:
            self.tls_context = dicom_server_context(s)
            self.tls_sock = _listening(self.tls_listen_fd, s.host, s.dicom_tls_port)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            try:
                self._accept_on(sock)
                if self.tls_sock is not None:
                    self._accept_on(self.tls_sock)
                self.aio = self.scheduler.aio = AioSync.create(self.loop)
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
        if self.tls_sock is not None:
            self.loop.remove_reader(self.tls_sock.fileno())
            self.tls_sock.close()
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

    def _on_connection(self, sock: socket.socket) -> None:
        """A listening socket (``sock`` or ``tls_sock``) is readable: take
        one connection, unless another DIMSE process has fewer (then look
        again shortly; it takes it meanwhile).

        Written here rather than with asyncio.start_server because the
        processes share one listening socket and choose by load: the
        kernel's SO_REUSEPORT spreading hashes each connection to a process
        whatever its load, which put 3 or 4 of 4 parallel senders on one
        process as often as not."""
        assert self.loop is not None
        fd = sock.fileno()
        if self.limit.defer():
            now = self.loop.time()
            since = self._deferring_since.get(fd)
            if since is None or now - self._last_deferral.get(fd, 0.0) > ACCEPT_DEFER_MAX:
                since = self._deferring_since[fd] = now  # a new backlog, not the last one
            self._last_deferral[fd] = now
            if now - since < ACCEPT_DEFER_MAX:
                self.loop.remove_reader(fd)
                self.loop.call_later(ACCEPT_RECHECK, self._resume_accepting, sock)
                return
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):  # another process took it
            self._deferring_since[fd] = None
            return
        except OSError as exc:  # out of descriptors, say: pause rather than spin
            log.warning("cannot accept a DIMSE connection: %s", exc)
            self.loop.remove_reader(fd)
            self.loop.call_later(0.1, self._resume_accepting, sock)
            return
        self._deferring_since[fd] = None
        conn.setblocking(False)
        set_nodelay(conn)
        self.limit.connected(+1)
        serve = self._tls_connection if sock is self.tls_sock else self._connection
        task = self.loop.create_task(serve(conn))
        self._connections.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._connections.discard)

    async def _tls_connection(self, conn: socket.socket) -> None:
        assert self.loop is not None
        try:
            try:
                peer = conn.getpeername()[0]
            except OSError:
                peer = "?"
            reader = asyncio.StreamReader(limit=4 * CHUNK)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await self.loop.connect_accepted_socket(
                    lambda: protocol, conn, ssl=self.tls_context, ssl_handshake_timeout=ARTIM)
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
                why = f"TLS handshake failed: {exc.__class__.__name__}: {exc}"
                log.warning("DICOM TLS connection from %s refused: %s", peer, why)
                self.gate.tls_refused(peer, why)
                conn.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, self.loop)
            await self._accept(reader, writer)
        finally:
            self.limit.connected(-1)

    def client_tls(self) -> ssl.SSLContext:
        """The context of our TLS associations (nodes with ``tls = true``)."""
        if self._client_tls is None:
            self._client_tls = dicom_client_context(self.settings)
        return self._client_tls

    def _accept_on(self, sock: socket.socket) -> None:
        assert self.loop is not None
        self.loop.add_reader(sock.fileno(), self._on_connection, sock)

    def _resume_accepting(self, sock: socket.socket) -> None:
        """Take connections on ``sock`` again (not once it is closed)."""
        if self.listening and sock.fileno() >= 0:
            self._accept_on(sock)

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

    def emit_later(self, event: Event) -> None:
        """Emit an ingest event from the loop: on the pool when a handler
        that may wait wants it, else here."""
        bus = self.node.bus
        if not bus.must_wait(event):
            bus.emit(event, waiting=False)
            return
        future = self.background(bus.emit, event)
        self._emitting.add(future)
        future.add_done_callback(self._emitting.discard)

    def after_events(self, func: Callable[..., Any], *args: Any) -> None:
        """Call ``func`` on the loop once the events handed to the pool so
        far are emitted (at once when none are): an association's end is
        audited after the events of what it stored."""
        assert self.loop is not None
        pending = set(self._emitting)
        if not pending:
            func(*args)
            return

        async def later() -> None:
            await asyncio.wait(pending)
            func(*args)

        self.keep(self.loop.create_task(later()))

    def background(self, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``func`` on the pool, outliving the association that asked."""
        assert self.loop is not None
        future = self.loop.create_future()
        self.pool.submit(self.loop, future, func, args)
        self.keep(future)
        return future

    def keep(self, future: asyncio.Future[Any]) -> None:
        """Hold ``future`` (a task that outlives its association) until it
        is done; shutdown waits for it a moment."""
        self._background.add(future)
        future.add_done_callback(self._background.discard)
