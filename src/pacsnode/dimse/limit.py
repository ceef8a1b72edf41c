"""The association limit (``max_associations``) for the node as a whole,
and each DIMSE process's load, which the acceptors read to leave a new
connection to the least busy process (see ``AssociationServer``)."""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
import time

__all__ = ["AssociationLimit", "ALIVE_SECONDS"]

#: Per process in the AssociationLimit file: open connections, last alive.
_LOAD = struct.Struct("<qd")
#: A DIMSE process not heard from for this long takes no connections.
ALIVE_SECONDS = 5.0


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
        (read without the lock: a hint, see ``durability.IngestScheduler``)."""
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
