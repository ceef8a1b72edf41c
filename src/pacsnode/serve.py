"""The running node of ``pacsnode serve``: where every piece is assembled.

``node.Node`` is the core every protocol adapter imports (index, blob store,
the one ingest path, the one query engine).  This module sits above the
adapters: it builds a Node and starts, in this order,

1. the cluster membership (``cluster.join``: heartbeat, refused on a
   configuration that differs from a running member's);
2. the clean-up of what a crashed process left in ``incoming/``;
3. the DIMSE listener (``dimse.scp.DimseServer``) and its worker processes
   (``dimse.worker``, ``dimse_processes`` > 1);
4. the background services (``BACKGROUND``: stable-study automation, jobs);
5. the HTTP app (``web.app.create_app``: DICOMweb, REST, access control,
   audit trail) on uvicorn with the zero-copy protocol (``web.zerocopy``);

and stops them in the reverse order.  Every piece is a plain import: one
that is missing stops ``serve`` at start with Python's own ImportError,
never silently.  Nothing below imports this module, so it closes no import
circle; ``archive_commands.serve`` only parses options and calls ``run``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from . import automation, cluster, routes
from .access.setup import check_exposure, describe_access
from .access.tls import https_options
from .check import clean_in_flight
from .classes import RuleError, server_rules
from .config import Settings
from .dimse.scp import DimseServer
from .dimse.worker import spawn
from .heap import freeze_startup_objects
from .node import Node
from .remote import jobs
from .web.app import create_app
from .web.zerocopy import http_config

__all__ = ["BACKGROUND", "StartError", "run"]

log = logging.getLogger("pacsnode")

#: Background services of a ``serve`` process: (name, start); ``start(node)``
#: returns the function that stops the service.
BACKGROUND: tuple[tuple[str, Callable[[Node], Callable[[], None]]], ...] = (
    ("automation", automation.start),  # stable-study triggers (command, webhook)
    ("jobs", jobs.start),  # retrieve/send jobs of the REST API
    ("routes", routes.start),  # route jobs ([[routes]], DESIGN.md §10)
)

#: Seconds running associations (and HTTP requests) get to finish at shutdown.
GRACE = 10.0


class StartError(Exception):
    """``serve`` cannot start; the message says why in plain words."""


def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT: DIMSE and HTTP, with the background
    services.  At a stop, no new work is taken, running associations get
    ``GRACE`` seconds, and everything started is stopped in reverse order.
    Raises StartError when something cannot start (nothing is left running)."""
    try:
        check_exposure(settings)
    except ValueError as exc:
        raise StartError(str(exc)) from None
    node = Node(settings)
    try:
        leave_cluster = cluster.join(node)
    except cluster.ConfigMismatch as exc:
        node.close()
        raise StartError(str(exc)) from None
    try:
        _check_arrival_settings(node)
    except ValueError as exc:
        leave_cluster()
        node.close()
        raise StartError(str(exc)) from None
    node.db.refresh_statistics()  # an index filled while the node was down
    _clean_in_flight(node)
    try:  # bound before anything starts, so a busy port stops serve at once
        http_socket = _http_socket(settings.host, settings.http_port)
    except OSError as exc:
        leave_cluster()
        node.close()
        raise StartError(f"cannot listen on HTTP port {settings.http_port} of "
                         f"{settings.host}: {exc.strerror or exc}") from None
    dimse = DimseServer(node)
    try:
        dimse.start()
    except OSError as exc:
        http_socket.close()
        leave_cluster()
        node.close()
        raise StartError(f"cannot listen on DICOM port {settings.dicom_port}: "
                         f"{exc.strerror or exc}") from None
    workers = DimseWorkers(settings, dimse)
    stops = [start(node) for _name, start in BACKGROUND]
    app = create_app(node, ready=lambda: dimse.listening and workers.started())
    config = http_config(app, settings.host, settings.http_port,
                         log_level="warning", access_log=False, lifespan="off",
                         timeout_graceful_shutdown=int(GRACE),
                         read_timeout=settings.http_read_timeout,
                         **https_options(settings))  # tls_cert/tls_key: HTTPS (§8)
    server = _HttpServer(config)
    log.info("HTTP listening on %s://%s:%s (DICOMweb /dicomweb, REST /api/v1)",
             "https" if settings.tls_cert else "http", settings.host, settings.http_port)
    log.info("%s", describe_access(settings))
    freeze_startup_objects()
    audit = app.state.audit
    audit.application("start", http=f"{settings.host}:{settings.http_port}",
                      dicom_port=settings.dicom_port, auth=settings.auth)
    try:
        server.run(sockets=[http_socket])
    finally:
        audit.application("stop")
        audit.close()
        log.info("shutting down: no new associations; waiting for running ones")
        workers.terminate()  # they drain alongside us
        for stop in stops:
            stop()
        dimse.stop(grace=GRACE)
        workers.wait(timeout=GRACE + 5)
        leave_cluster()
        node.close()
        log.info("stopped")


def _check_arrival_settings(node: Node) -> None:
    """Refuse to start with a classification rule file or a route that
    cannot work (ValueError with a plain message)."""
    try:
        server_rules(node.settings)
    except RuleError as exc:
        raise ValueError(f"classification_rules: {exc}") from None
    routes.check_routes(node)


def _http_socket(host: str, port: int) -> socket.socket:
    """The HTTP listener's socket, bound (uvicorn listens on it): bound
    here, so that "HTTP listening" is logged only once it is true."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only
    # on connections whose socket says proto == IPPROTO_TCP, and an accepted
    # socket inherits the listener's 0 otherwise — every response with a body
    # then waited ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _clean_in_flight(node: Node) -> None:
    """What a crash left in ``incoming/`` by processes that are gone: whole
    instances stored, the rest removed (check.clean_in_flight); the files
    of live processes sharing the blob root are left to them."""
    for name, result in clean_in_flight(node):
        if result.outcome.ok:
            log.info("in-flight file %s left by a stopped process: %s (instance %s)", name,
                     result.outcome.value, result.sop_instance_uid)
        else:
            log.warning("in-flight file %s left by a stopped process: %s, removed: %s", name,
                        result.outcome.value, result.reason)


class DimseWorkers:
    """The extra DIMSE processes of ``serve`` (``dimse_processes`` > 1, see
    dimse/worker.py): started after the main process holds the port,
    restarted if one dies, sent SIGTERM and waited for at shutdown."""

    def __init__(self, settings: Settings, dimse: DimseServer) -> None:
        self._settings = settings
        self._dimse = dimse
        self.procs = {slot: self._spawn(slot) for slot in range(1, dimse.processes)}
        self._limit = dimse.server.limit
        self._spawned = time.monotonic()
        self._all_started = not self.procs
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._log = logging.getLogger("pacsnode.dimse")
        if self.procs:
            self._log.info("DIMSE served by %d processes", dimse.processes)
            threading.Thread(target=self._watch, name="pacsnode-dimse-workers",
                             daemon=True).start()

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        limit_fd = self._dimse.limit_fd
        assert limit_fd is not None  # DimseServer shares the count when it has workers
        return spawn(self._settings, slot, self._dimse.processes, limit_fd,
                     self._dimse.listen_fd, self._dimse.tls_listen_fd)

    def _watch(self) -> None:
        started = {slot: time.monotonic() for slot in self.procs}
        delay = {slot: 1.0 for slot in self.procs}
        dead_since: dict[int, float] = {}
        # This thread lives until the workers are gone: a worker it restarted
        # gets PR_SET_PDEATHSIG for *this thread*'s exit.
        while not self._done.wait(1.0):
            for slot, proc in list(self.procs.items()):
                if proc.poll() is None or self._stopping.is_set():
                    continue
                now = time.monotonic()
                if slot not in dead_since:  # one that dies young again waits longer
                    dead_since[slot] = now
                    young = now - started[slot] < 60
                    delay[slot] = min(delay[slot] * 2, 120.0) if young else 1.0
                    self._log.error("DIMSE worker %d (pid %d) exited with %s: restarting it "
                                    "in %.0f s", slot, proc.pid, proc.returncode, delay[slot])
                if now - dead_since[slot] >= delay[slot]:
                    with self._lock:
                        if not self._stopping.is_set():
                            self.procs[slot] = self._spawn(slot)
                    started[slot] = now
                    del dead_since[slot]

    def started(self) -> bool:
        """Whether every worker has come up (accepts connections), exited,
        or had 30 s to: until then health says "starting", so that a client
        that waits for it finds every process taking associations."""
        if not self._all_started:
            self._all_started = time.monotonic() - self._spawned > 30 or all(
                self._limit.has_started(slot) or proc.poll() is not None
                for slot, proc in self.procs.items())
        return self._all_started

    def terminate(self) -> None:
        with self._lock:
            self._stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for slot, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._log.warning("DIMSE worker %d (pid %d) did not stop: killing it", slot,
                                  proc.pid)
                proc.kill()
                proc.wait(5)
        self._done.set()


class _HttpServer(uvicorn.Server):
    """A uvicorn server that stops on SIGTERM/SIGINT without re-raising the
    signal afterwards (uvicorn does, which would kill the process before the
    DIMSE side has drained)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original: dict[int, Any] = {sig: signal.signal(sig, self.handle_exit)
                                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
