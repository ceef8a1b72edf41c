"""Durability in one place: when an instance is fsynced, on which thread,
and when it is acknowledged.

The ingest itself (``ingest.Ingestor``) is the same for everyone: header
read and validated, temp file fsynced, then rows and rename in a group
commit, events after the commit.  Who schedules those steps:

- A caller with a thread to spend (STOW-RS, ``pacsnode import``, ``check
  --repair``, the receivers of our own C-GET/C-MOVE retrieves, and the DIMSE
  pool): ``Ingestor.ingest_temp``/``ingest_temps`` on that thread.  The
  fsync starts on the fsync threads (``storage.FileStore.sync_temp``) before
  the header is read, runs beside it, is waited for, and the group commit
  follows; the caller acknowledges (a STOW response, a C-STORE response)
  once it returns.
- A received C-STORE on the DIMSE event loop: ``IngestScheduler.received``
  (below), which on SQLite keeps a small instance on the loop — the
  fsync on a thread that has taken it, or Linux AIO (``aiosync.py``), or
  the fsync threads — and the C-STORE response goes out after the commit,
  the instance's log line and event only after the response
  (``announce``).  Before that, while the data set arrives, the
  association starts the writeback of what it has written
  (``storage.start_writeback``, ``dimse/association.py``), so the fsync
  finds less to do.

Nothing is acknowledged before its fsync and its index commit are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .aiosync import AioSync
from .events import Event, Origin
from .ingest import IngestResult, Staged
from .node import Node
from .storage import SubmitFsync, fsync_started

__all__ = ["IngestScheduler", "INLINE_INGEST"]

#: Largest instance (bytes) ingested on the event loop (see IngestScheduler).
INLINE_INGEST = 4 << 20


class IngestScheduler:
    """Schedules the ingest of instances received on one DIMSE event loop.

    ``run``: runs a blocking call on the server's worker threads;
    ``alone``: whether this association is the node's only one (a hint);
    ``emit_later``: emits an event on the worker threads.  ``aio`` is set
    by the server once its loop runs (None: no Linux AIO)."""

    def __init__(self, node: Node, run: Callable[..., Awaitable[Any]],
                 alone: Callable[[], bool], emit_later: Callable[[Event], None]) -> None:
        self.node = node
        self.ingestor = node.ingestor
        self.run = run
        self.alone = alone
        self.emit_later = emit_later
        self.aio: AioSync | None = None
        #: Ingest on the loop: SQLite only, whose statements wait on no network.
        self.on_loop = node.db.is_sqlite

    async def received(self, temp: Path, origin: Origin, expected_sop: tuple[str, str],
                       head: bytes | None, size: int,
                       announce: list[Callable[[], None]]) -> IngestResult:
        """Ingest a received instance (a Part 10 temp file whose first bytes
        ``head`` and length ``size`` its receiver knows); its outcome once
        it is durable and indexed.  Its log line and event go into
        ``announce`` when they are to wait for the response.

        On SQLite, an instance up to INLINE_INGEST bytes is ingested here on
        the event loop, but for its fsync (awaited: Linux AIO started before
        the header walk, see aiosync.py, or else the fsync threads):
        header walk, validation and the index transaction take well under a
        millisecond, and handing them to a worker thread and back added two
        thread switches and the two threads contending for the GIL (~10% of
        the CPU of a small instance, measured A/B).  Whatever could wait
        goes to the pool: a header that needs pydicom's reader, and the
        index write when another writer holds the database (``commit_now``
        finds out without waiting).  Events go out on the pool when a
        handler may wait (automation)."""
        ingestor = self.ingestor
        if self.on_loop and size <= INLINE_INGEST:
            # The node's only association: a CPU to spare, so the fsync goes
            # to a thread that has taken it before the header walk begins
            # (an AIO fsync's kernel worker runs on the loop's CPU and
            # doubled the fsync's time beside the walk: +23% small
            # instances/s on one association, paired runs); with more, AIO,
            # which costs the least CPU.
            alone = self.alone()
            submit = fsync_started if alone else self.aio.fsync if self.aio else None
            staged = self._stage(temp, origin, expected_sop, head, size, submit)
            if isinstance(staged, IngestResult):  # refused
                return staged
            if staged is not None:
                emit = self.emit_later if self.node.bus.blocking else None
                if staged.syncing is not None and alone:
                    # Nothing else for the loop (or another process's
                    # writer) to do while the fsync runs, so the rows are
                    # written meanwhile and the loop blocks only for what is
                    # left of it, before the rename.
                    done = ingestor.commit_now([staged], emit=emit, announce=announce)
                    if done is not None:
                        return done[0]
                if staged.syncing is not None:
                    try:
                        await asyncio.wrap_future(staged.syncing)
                    except Exception:
                        pass  # staged.wait() keeps the error for the result
                staged.wait()
                done = ingestor.commit_now([staged], emit=emit, announce=announce)
                if done is not None:
                    return done[0]
                return (await self.run(ingestor.commit, [staged]))[0]
        return await self.run(self._ingest_here, temp, origin, expected_sop)

    def _ingest_here(self, temp: Path, origin: Origin,
                     expected_sop: tuple[str, str]) -> IngestResult:
        """(On the pool.)  The whole ingest on this thread."""
        return self.ingestor.ingest_temp(temp, origin, expected_sop=expected_sop)

    def _stage(self, temp: Path, origin: Origin, expected_sop: tuple[str, str],
               head: bytes | None, size: int, submit: SubmitFsync | None
               ) -> Staged | IngestResult | None:
        """The header read and validated with the fsync under way, on the
        loop; None, with nothing done but maybe the fsync started, when the
        header needs pydicom's reader (the pool's ``ingest_temp`` then).
        The fsync starts first, to run beside the header walk, when
        ``submit`` starts it without waiting for the GIL; one that would go
        to an fsync thread that waits for the GIL until the loop pauses
        anyway starts after it, so that a refusal costs no fsync."""
        ingestor = self.ingestor
        syncing = None
        if submit is not None:
            try:
                syncing = ingestor.store.sync_temp(temp, submit)
            except Exception as exc:
                return ingestor.failed(temp, origin, exc, None)
        checked = ingestor.check(temp, origin, expected_sop=expected_sop, head=head, size=size,
                                 fast_only=True)
        if checked is None or isinstance(checked, IngestResult):
            return checked
        parsed, size = checked
        if submit is None:
            try:
                syncing = ingestor.store.sync_temp(temp)
            except Exception as exc:
                return ingestor.failed(temp, origin, exc, parsed)
        return ingestor.staged(temp, origin, parsed, size, syncing)
