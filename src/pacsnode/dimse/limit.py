"""The association limits (``max_associations``, and
``max_associations_per_address`` for one peer address) for the node as a
whole, and each DIMSE process's load, which the acceptors read to leave a new
connection to the least busy process (see ``AssociationServer``)."""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import time

__all__ = ["AssociationLimit", "ALIVE_SECONDS"]

#: Per process in the AssociationLimit file: open connections, last alive.
_LOAD = struct.Struct("<qd")
#: Per association place in the AssociationLimit file: peer address key, count.
_PEER = struct.Struct("<Qq")
#: A DIMSE process not heard from for this long takes no connections.
ALIVE_SECONDS = 5.0


def _peer_key(address: str) -> int:
    """A stable 64-bit key of a peer address (the same in every process;
    never 0, which marks a free place)."""
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(),
                          "little") or 1


class AssociationLimit:
    """Established associations against ``max_associations``, and the load
    of each DIMSE process.

    With several DIMSE processes the count is shared: a small unlinked file
    that every process maps (inherited as a file descriptor), summed under a
    POSIX record lock when an association is accepted, so the limit holds
    for the node as a whole.  The file holds, per process (slot), its
    association count, then its open connections and the time it last
    said it was alive, which the acceptors read to leave a connection to
    the least busy process (``defer``), then its associations per peer
    address (for ``per_address``)."""

    def __init__(self, limit: int, fd: int | None = None, slot: int = 0,
                 slots: int = 1, per_address: int = 0) -> None:
        self.limit = limit
        #: Most associations of one peer address (0: no such limit).
        self.per_address = per_address
        self.fd, self.slot, self.slots = fd, slot, slots
        self.local = 0
        #: This process's associations per peer address.
        self.by_address: dict[str, int] = {}
        self.connections = 0
        self._map = mmap.mmap(fd, self.file_size(slots, limit)) if fd is not None else None
        if self._map is not None:  # a restarted worker: its predecessor's count is gone
            struct.pack_into("<q", self._map, slot * 8, 0)
            self._publish_addresses()

    @staticmethod
    def file_size(slots: int, limit: int) -> int:
        """Counts, loads, then per slot a table of ``limit`` (address key,
        associations) pairs: a process never holds more than ``limit``."""
        return slots * 8 + slots * _LOAD.size + slots * limit * _PEER.size

    @staticmethod
    def shared_file(slots: int, limit: int) -> int:
        """A file descriptor for ``slots`` processes to share (no name on disk)."""
        fd, name = tempfile.mkstemp(prefix="pacsnode-dimse-")
        os.unlink(name)
        os.ftruncate(fd, AssociationLimit.file_size(slots, limit))
        return fd

    def acquire(self, address: str = "") -> str | None:
        """Take a place for an association from ``address``: None, or which
        limit is reached (for the log)."""
        if self._map is None:
            why = self._full(self.local, self.by_address.get(address, 0))
            if why is None:
                self._count(address, +1)
            return why
        assert self.fd is not None
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            why = self._full(sum(struct.unpack_from(f"<{self.slots}q", self._map)),
                             self._node_wide(address) if self.per_address else 0)
            if why is None:
                self._count(address, +1)
                struct.pack_into("<q", self._map, self.slot * 8, self.local)
            return why
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _full(self, total: int, from_address: int) -> str | None:
        if total >= self.limit:
            return f"max_associations {self.limit}"
        if self.per_address and from_address >= self.per_address:
            return f"max_associations_per_address {self.per_address}"
        return None

    def _count(self, address: str, change: int) -> None:
        self.local += change
        left = self.by_address.get(address, 0) + change
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)
        if self._map is not None and self.per_address:
            self._publish_addresses()

    def _node_wide(self, address: str) -> int:
        """Associations from ``address`` in every process (under the lock)."""
        assert self._map is not None
        key = _peer_key(address)
        total = 0
        for slot in range(self.slots):
            base = self._peer_offset(slot)
            for n in range(self.limit):
                peer, count = _PEER.unpack_from(self._map, base + n * _PEER.size)
                if count and peer == key:
                    total += count
        return total

    def _publish_addresses(self) -> None:
        """This process's table (only this process writes it)."""
        assert self._map is not None
        base = self._peer_offset(self.slot)
        rows = list(self.by_address.items())[:self.limit]
        for n in range(self.limit):
            peer, count = (_peer_key(rows[n][0]), rows[n][1]) if n < len(rows) else (0, 0)
            _PEER.pack_into(self._map, base + n * _PEER.size, peer, count)

    def _peer_offset(self, slot: int) -> int:
        return self.slots * 8 + self.slots * _LOAD.size + slot * self.limit * _PEER.size

    def release(self, address: str = "") -> None:
        self._count(address, -1)
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
