"""Claims and leases on rows of the shared database: how several ``serve``
processes on one index (§12) agree on who does what, once.

A claim is one conditional ``UPDATE … WHERE <row> AND <still claimable>``:
only the process whose UPDATE changed the row holds it (on SQLite and
PostgreSQL alike, without locks held across the work).  The holder renews
its lease while it works; a row whose lease ran out, or whose owner was a
process of this host that is gone, may be taken over by another.

Used by the job runner (``runner.py``: the retrieve and the route jobs)
and by the stable-study triggers (``automation.py``).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, update
from sqlalchemy.sql.elements import ColumnElement

if TYPE_CHECKING:
    from .index.db import Database

__all__ = ["HOST", "owner_id", "claim", "pid_alive", "owner_is_dead", "owner_pid"]

HOST = socket.gethostname()


def owner_id() -> str:
    """A name for one claimant: ``host:pid:nonce`` (the nonce tells a
    restarted process that got the same pid from its earlier life)."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(db: Database, table: Table, where: list[ColumnElement[bool]],
          values: dict[str, Any]) -> bool:
    """Set ``values`` on the one row ``where`` selects (its key and the
    condition that it is still claimable); True when this call changed it,
    i.e. this process holds the claim."""
    with db.write() as conn:
        changed = conn.execute(update(table).where(*where).values(**values)).rowcount
    return bool(changed == 1)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has ``pid`` (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_pid(owner: str) -> int | None:
    try:
        return int(owner.rsplit(":", 2)[1])
    except (ValueError, IndexError):
        return None


def owner_is_dead(owner: str, me: str) -> bool:
    """True when ``owner`` was a process on this host that no longer runs:
    its pid is gone, or it is our pid but not us (a restart that got the
    same pid, as in a container).  Owners on other hosts are judged by
    their lease only."""
    try:
        host, pid_text, _nonce = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != HOST or owner == me:
        return False
    return pid == os.getpid() or not pid_alive(pid)
