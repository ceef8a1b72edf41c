"""The node's DIMSE service class provider.

``DimseServer(node)`` is what ``serve`` starts: the asyncio listener of
``dimse/server.py`` on ``dicom_port``, whose associations
(``dimse/association.py``) hand each request to its service handler
(``store.py``: C-STORE → ingest, ``find.py``: C-FIND → query engine,
``move_get.py``: C-MOVE/C-GET → retrieve, ``commitment.py``: N-ACTION →
storage commitment, ``echo.py``: C-ECHO).

With ``dimse_processes`` above 1, ``serve`` runs more of these in worker
processes (``dimse/worker.py``) on the main process's listening sockets
(``dicom_port``, and ``dicom_tls_port`` when set); each takes the next
connection when no other process has fewer.
"""

from __future__ import annotations

import logging
import os

from ..access.dimse_audit import DimseAudit
from ..access.dimse_gate import DimseGate
from ..access.setup import make_audit_trail
from ..config import Settings
from ..node import Node
from .limit import AssociationLimit
from .negotiation import TRANSFER_SYNTAXES
from .pdu import set_nodelay
from .server import AssociationServer

log = logging.getLogger("pacsnode.dimse")

__all__ = ["DimseServer", "TRANSFER_SYNTAXES", "set_nodelay", "dimse_processes"]


def dimse_processes(settings: Settings) -> int:
    """How many processes serve DIMSE: the setting, or with 0 one per CPU
    core this process may use (at least 1, at most 4).  One interpreter's
    GIL holds ingest to one core; on two cores with 4 parallel storescu,
    two processes that share connections by load stored small instances
    at ~1.3x, CT at ~1.1x the rate of one (paired runs, each server in a
    fresh ext4 block group).  A second process costs its
    resident memory (~90 MiB), used or not."""
    if settings.dimse_processes > 0:
        return int(settings.dimse_processes)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class DimseServer:
    """One process's DIMSE listener.

    In the main process it also prepares what worker processes share with it
    (``processes``, and ``limit_fd``: the association count behind
    ``max_associations``); a worker passes ``worker_slot`` and that file
    descriptor, and joins the port the main process holds."""

    def __init__(self, node: Node, *, worker_slot: int | None = None,
                 limit_fd: int | None = None, listen_fd: int | None = None,
                 tls_listen_fd: int | None = None) -> None:
        self.node = node
        s = node.settings
        self.processes = dimse_processes(s)
        worker = worker_slot is not None
        shared = worker or self.processes > 1
        if shared and limit_fd is None:
            limit_fd = AssociationLimit.shared_file(self.processes, s.max_associations)
        self.limit_fd = limit_fd
        limit = AssociationLimit(s.max_associations, limit_fd, worker_slot or 0,
                                 self.processes, s.max_associations_per_address,
                                 s.max_associations_per_ae) if shared else None
        # The audit trail of this process's DIMSE side (DESIGN.md §8).
        self.audit = make_audit_trail(s, node.db)
        self.dimse_audit = DimseAudit(self.audit, node.bus)
        gate = DimseGate(node, self.dimse_audit)
        self.server = AssociationServer(node, s, limit=limit, listen_fd=listen_fd,
                                        tls_listen_fd=tls_listen_fd, gate=gate)

    def start(self) -> None:
        self.server.start()
        s = self.node.settings
        log.info("DIMSE listening on %s:%s as %s (pid %d)", s.host, s.dicom_port, s.ae_title,
                 os.getpid())
        if self.server.tls_sock is not None:
            log.info("DICOM TLS listening on %s:%s (TLS 1.2+, BCP 195%s; pid %d)", s.host,
                     s.dicom_tls_port, ", client certificates signed by tls_ca required"
                     if s.tls_ca else "", os.getpid())

    @property
    def listen_fd(self) -> int:
        """The listening socket's descriptor, for worker processes to inherit."""
        assert self.server.sock is not None
        return self.server.sock.fileno()

    @property
    def tls_listen_fd(self) -> int | None:
        """The DICOM TLS listening socket's descriptor (None: no
        ``dicom_tls_port``), for worker processes to inherit."""
        return self.server.tls_sock.fileno() if self.server.tls_sock is not None else None

    @property
    def listening(self) -> bool:
        return self.server.listening

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let running associations finish for up to ``grace``
        seconds, then abort the rest (nothing unacknowledged is kept; nothing
        acknowledged is lost: ingest is atomic)."""
        self.server.stop(grace)
        self.dimse_audit.close()
        self.audit.close()

    @property
    def active_associations(self) -> int:
        return len(self.server.associations)
