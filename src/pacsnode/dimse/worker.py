"""An extra DIMSE process of ``pacsnode serve`` (``dimse_processes`` > 1).

Each worker has its own Node (index connection, blob store, ingest) and its
own asyncio DIMSE server on the main process's listening sockets (the
plain one and, with ``dicom_tls_port``, the DICOM TLS one; inherited;
each process takes a connection when no other live one has fewer, see
``AssociationServer._on_connection``), so C-STOREs are parsed
and indexed on every core instead of queueing behind one interpreter's GIL.
What must be shared is in the database (index, change feed, stable-study
arrivals, remote nodes) or inherited (the association count).

The main process starts workers with ``spawn`` and stops them with SIGTERM
(a worker stops accepting, lets its associations finish, exits).  A worker
dies with its parent (PR_SET_PDEATHSIG), so a killed ``serve`` never leaves
a process holding the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from typing import Any

from ..config import Settings

__all__ = ["spawn", "main"]

log = logging.getLogger("pacsnode.dimse")


def spawn(settings: Settings, slot: int, processes: int, limit_fd: int,
          listen_fd: int, tls_listen_fd: int | None = None) -> subprocess.Popen[bytes]:
    """Start worker number ``slot`` (1 … processes-1) on the main process's
    listening sockets.  Its standard output and error are ours, so its log
    lines go where the main process's go."""
    args = {"settings": replace(settings, dimse_processes=processes), "slot": slot,
            "limit_fd": limit_fd, "listen_fd": listen_fd, "tls_listen_fd": tls_listen_fd,
            "parent": os.getpid()}
    fds = (limit_fd, listen_fd) + ((tls_listen_fd,) if tls_listen_fd is not None else ())
    proc = subprocess.Popen([sys.executable, "-m", "pacsnode.dimse.worker"],
                            stdin=subprocess.PIPE, pass_fds=fds)
    assert proc.stdin is not None
    proc.stdin.write(pickle.dumps(args))
    proc.stdin.close()
    return proc


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the process that started us dies (Linux), as a kill -9
    of ``serve`` must take its workers with it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before we got here
        os._exit(1)


def main() -> None:
    args: dict[str, Any] = pickle.load(sys.stdin.buffer)
    _die_with_parent(args["parent"])
    settings: Settings = args["settings"]
    from ..automation import record_arrivals
    from ..heap import freeze_startup_objects
    from ..logs import setup_logging as _setup_logging
    from ..node import Node
    from .scp import DimseServer

    _setup_logging(settings.log_level)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node = Node(settings)
    record_arrivals(node)  # stable-study triggers: arrivals are recorded where the write happens
    dimse = DimseServer(node, worker_slot=args["slot"], limit_fd=args["limit_fd"],
                        listen_fd=args["listen_fd"], tls_listen_fd=args.get("tls_listen_fd"))
    try:
        dimse.start()
    except OSError as exc:
        log.error("DIMSE worker %d cannot listen on port %s: %s", args["slot"],
                  settings.dicom_port, exc)
        sys.exit(1)
    freeze_startup_objects()
    while not stop.wait(1.0):
        if os.getppid() != args["parent"]:
            break
    dimse.stop(grace=10.0)
    node.close()


if __name__ == "__main__":
    main()
