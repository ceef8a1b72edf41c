"""The association limits (``max_associations``, and
``max_associations_per_address`` for one peer address and
``max_associations_per_ae`` for one calling AE title) for the node as a
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
#: Per peer in the AssociationLimit file: key of its address or calling AE
#: title (see ``_peer_key``), count.
_PEER = struct.Struct("<Qq")
#: Peer table rows per association place: its address and its calling AE.
_KINDS = 2
#: A DIMSE process not heard from for this long takes no connections.
ALIVE_SECONDS = 5.0


def _peer_key(peer: str) -> int:
    """A stable 64-bit key of ``peer`` (``_address`` or ``_ae``: the same
    in every process; never 0, which marks a free place)."""
    return int.from_bytes(hashlib.blake2b(peer.encode(), digest_size=8).digest(),
                          "little") or 1


def _address(address: str) -> str:
    """The peer-table name of a peer address."""
    return "address\0" + address


def _ae(aet: str, known: bool) -> str:
    """The peer-table name of a calling AE title (one namespace apart from
    addresses, so that an AE titled like an address is not counted with it).
    A known AE (a node calling from its host, ``access/dimse.py``) is
    counted apart from the same title calling from elsewhere: a title is
    the caller's claim, and an impostor must not use up the places of the
    node it names."""
    return ("node\0" if known else "ae\0") + aet


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
    address and per calling AE title (for ``per_address`` and ``per_ae``)."""

    def __init__(self, limit: int, fd: int | None = None, slot: int = 0,
                 slots: int = 1, per_address: int = 0, per_ae: int = 0) -> None:
        self.limit = limit
        #: Most associations of one peer address (0: no such limit).
        self.per_address = per_address
        #: Most associations of one calling AE title, from any address (0: none).
        self.per_ae = per_ae
        self.fd, self.slot, self.slots = fd, slot, slots
        self.local = 0
        #: This process's associations per peer (``_address``, ``_ae`` names).
        self.by_peer: dict[str, int] = {}
        self.connections = 0
        self._map = mmap.mmap(fd, self.file_size(slots, limit)) if fd is not None else None
        if self._map is not None:  # a restarted worker: its predecessor's count is gone
            struct.pack_into("<q", self._map, slot * 8, 0)
            self._publish_peers()

    @staticmethod
    def file_size(slots: int, limit: int) -> int:
        """Counts, loads, then per slot a table of ``2 * limit`` (peer key,
        associations) pairs: a process never holds more than ``limit``
        associations, each from one address and one calling AE."""
        return slots * 8 + slots * _LOAD.size + slots * _KINDS * limit * _PEER.size

    @staticmethod
    def shared_file(slots: int, limit: int) -> int:
        """A file descriptor for ``slots`` processes to share (no name on disk)."""
        fd, name = tempfile.mkstemp(prefix="pacsnode-dimse-")
        os.unlink(name)
        os.ftruncate(fd, AssociationLimit.file_size(slots, limit))
        return fd

    def acquire(self, address: str = "", aet: str = "", known: bool = False) -> str | None:
        """Take a place for an association from ``address`` whose calling AE
        title is ``aet`` (``known``: a node's, calling from its host): None,
        or which limit is reached (for the log)."""
        ae = _ae(aet, known)
        if self._map is None:
            why = self._full(self.local, self.by_peer.get(_address(address), 0),
                             self.by_peer.get(ae, 0))
            if why is None:
                self._count(address, ae, +1)
            return why
        assert self.fd is not None
        fcntl.lockf(self.fd, fcntl.LOCK_EX)
        try:
            why = self._full(sum(struct.unpack_from(f"<{self.slots}q", self._map)),
                             *self._node_wide(address, ae))
            if why is None:
                self._count(address, ae, +1)
                struct.pack_into("<q", self._map, self.slot * 8, self.local)
            return why
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def _full(self, total: int, from_address: int, from_ae: int) -> str | None:
        if total >= self.limit:
            return f"max_associations {self.limit}"
        if self.per_address and from_address >= self.per_address:
            return f"max_associations_per_address {self.per_address}"
        if self.per_ae and from_ae >= self.per_ae:
            return f"max_associations_per_ae {self.per_ae}"
        return None

    def _count(self, address: str, ae: str, change: int) -> None:
        """Count an association of ``address`` and ``ae`` (an ``_ae`` name)."""
        self.local += change
        for peer in (_address(address), ae):
            left = self.by_peer.get(peer, 0) + change
            if left > 0:
                self.by_peer[peer] = left
            else:
                self.by_peer.pop(peer, None)
        if self._map is not None and (self.per_address or self.per_ae):
            self._publish_peers()

    def _node_wide(self, address: str, ae: str) -> tuple[int, int]:
        """Associations from ``address``, and of ``ae`` (an ``_ae`` name),
        in every process (under the lock; one pass over the tables)."""
        assert self._map is not None
        if not (self.per_address or self.per_ae):
            return 0, 0
        by_address, by_ae = _peer_key(_address(address)), _peer_key(ae)
        from_address = from_ae = 0
        for slot in range(self.slots):
            base = self._peer_offset(slot)
            for n in range(_KINDS * self.limit):
                peer, count = _PEER.unpack_from(self._map, base + n * _PEER.size)
                if not count:
                    continue
                if peer == by_address:
                    from_address += count
                elif peer == by_ae:
                    from_ae += count
        return from_address, from_ae

    def _publish_peers(self) -> None:
        """This process's table (only this process writes it)."""
        assert self._map is not None
        base = self._peer_offset(self.slot)
        rows = list(self.by_peer.items())[:_KINDS * self.limit]
        for n in range(_KINDS * self.limit):
            peer, count = (_peer_key(rows[n][0]), rows[n][1]) if n < len(rows) else (0, 0)
            _PEER.pack_into(self._map, base + n * _PEER.size, peer, count)

    def _peer_offset(self, slot: int) -> int:
        return (self.slots * 8 + self.slots * _LOAD.size
                + slot * _KINDS * self.limit * _PEER.size)

    def release(self, address: str = "", aet: str = "", known: bool = False) -> None:
        self._count(address, _ae(aet, known), -1)
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
