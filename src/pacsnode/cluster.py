"""Several ``serve`` processes on one database are one node (DESIGN §12).

What a process owns is its AE title, its ports and its in-flight files;
everything else — nodes, triggers, policies, duplicate handling — comes from
one configuration that every process of the cluster shares.  ``join`` makes
that checkable: a process records itself and the shared part of its settings
(``Settings.shared_view``) in ``cluster_members`` and keeps the row fresh
with a heartbeat; a process whose shared settings differ from those of a
live member refuses to start, naming the settings that differ.

A member is live while its heartbeat is younger than ``STALE_SECONDS``; on
the same host a member whose pid is gone is dead at once (a ``kill -9``
followed by a restart with a new configuration is not refused).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, delete, select, update

from .errors import PacsnodeError
from .index.cluster_tables import cluster_members as members
from .leases import pid_alive

if TYPE_CHECKING:
    from .node import Node

__all__ = ["ConfigMismatch", "join", "live_members", "HEARTBEAT_SECONDS", "STALE_SECONDS"]

log = logging.getLogger("pacsnode.cluster")

HEARTBEAT_SECONDS = 5.0
#: A member whose heartbeat is older than this is gone.
STALE_SECONDS = 30.0
_HOST = socket.gethostname()


class ConfigMismatch(PacsnodeError):
    """This process's shared settings differ from a running member's."""


def _is_live(row: Row[Any], now: float) -> bool:
    if row.heartbeat < now - STALE_SECONDS:
        return False
    return not (row.host == _HOST and not pid_alive(int(row.pid)))


def live_members(node: Node) -> list[Row[Any]]:
    """The rows of the processes running on this database now."""
    now = time.time()
    with node.db.read() as conn:
        rows = conn.execute(select(members).order_by(members.c.started)).all()
    return [r for r in rows if _is_live(r, now)]


def _differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))


def join(node: Node) -> Callable[[], None]:
    """Record this process as a member, after checking that its shared
    settings match every live member's; returns the function that leaves.
    Raises ``ConfigMismatch`` (nothing recorded) when they do not."""
    s = node.settings
    view = s.shared_view()
    text = json.dumps(view, sort_keys=True)
    me = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    now = time.time()
    with node.db.write() as conn:
        conn.execute(delete(members).where(members.c.heartbeat < now - 3600))
        conn.execute(members.insert().values(
            id=me, host=_HOST, pid=os.getpid(), ae_title=s.ae_title, dicom_port=s.dicom_port,
            http_port=s.http_port, started=now, heartbeat=now, config=text))
    # Checked after recording ourselves: of two processes starting together
    # with different settings, neither can miss the other (both refuse).
    for other in live_members(node):
        if other.id == me or other.config == text:
            continue
        with node.db.write() as conn:
            conn.execute(delete(members).where(members.c.id == me))
        differ = _differences(view, json.loads(other.config))
        raise ConfigMismatch(
            f"this process's configuration differs from that of the running serve "
            f"{other.host}:{other.pid} (AE {other.ae_title}) on the same database in: "
            f"{', '.join(differ)}. Every serve sharing a database must use one "
            "configuration (docs/SCALING.md); only data_dir, database_url, ae_title, ports, "
            "host, fsync, association limits, dimse_processes and log_level may differ.")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                with node.db.write() as conn:
                    conn.execute(update(members).where(members.c.id == me)
                                 .values(heartbeat=time.time()))
            except Exception:  # the database may be away for a moment
                log.warning("cluster heartbeat failed; trying again", exc_info=True)

    thread = threading.Thread(target=beat, name="pacsnode-cluster", daemon=True)
    thread.start()
    others = [m for m in live_members(node) if m.id != me]
    if others:
        log.info("joined a cluster of %d serve process(es) on this database: %s",
                 len(others) + 1, ", ".join(f"{m.ae_title}@{m.host}:{m.dicom_port}"
                                            for m in [*others]))

    def leave() -> None:
        stop.set()
        thread.join(2)
        try:
            with node.db.write() as conn:
                conn.execute(delete(members).where(members.c.id == me))
        except Exception:
            log.warning("could not remove this process from cluster_members", exc_info=True)

    return leave
