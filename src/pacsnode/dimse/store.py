"""Storage SCP (PS3.4 B): a received C-STORE — its data set already in a
temp file, written there by the association's reader as it arrived — is
ingested, and answered with the status of its outcome.

When the instance is fsynced, on which thread, and when it is acknowledged
is ``ingest_received``'s to decide (see its docstring); the ingest itself is
the node's one path, ``Ingestor``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from ..events import Event, Origin
from ..ingest import IngestResult, Staged
from ..node import Node
from ..storage import SubmitFsync, fsync_started
from . import messages as m
from .handle import AssociationHandle

log = logging.getLogger("pacsnode.dimse")

__all__ = ["c_store", "ingest_received", "store_status", "INLINE_INGEST"]

#: Largest instance (bytes) ingested on the event loop (see ingest_received).
INLINE_INGEST = 4 << 20


async def c_store(assoc: AssociationHandle, context_id: int, command: m.Command,
                  temp: Path | None, size: int, head: bytes | None,
                  refusal: tuple[int, str] | None) -> None:
    """Ingest the received instance in ``temp`` (None: refused while it was
    received, for ``refusal``) and answer the C-STORE-RQ."""
    sop_class, sop_uid = command.affected_sop_class, command.affected_sop_instance
    if temp is None:
        status, comment = refusal or (0xA700, "cannot write")
        log.warning("C-STORE %s from %s failed: %s", sop_uid, assoc.origin.describe(),
                    comment)
    else:
        assoc.busy += 1
        try:
            status, comment = await ingest_received(assoc, temp, size, sop_class, sop_uid,
                                                    head)
        except Exception as exc:  # ingest_temp reports its failures; this is a bug
            log.exception("C-STORE %s from %s", sop_uid, assoc.origin.describe())
            temp.unlink(missing_ok=True)
            status, comment = 0xA700, f"storage failed: {exc}"
        finally:
            assoc.busy -= 1
    try:
        await assoc.send(context_id, m.response(
            m.C_STORE_RSP, command, status, error_comment=comment,
            affected_sop_class=sop_class, affected_sop_instance=sop_uid))
    finally:
        _tell(assoc)


def _tell(assoc: AssociationHandle) -> None:
    """The log lines and events of instances stored and answered (or
    whose sender has gone): ~0.1 ms each, no longer between the index
    commit and the response."""
    announce, assoc.announce = assoc.announce, []
    for tell in announce:
        try:
            tell()
        except Exception:  # a handler's bug: the instance is stored
            log.exception("after storing an instance from %s", assoc.describe())


async def ingest_received(assoc: AssociationHandle, temp: Path, size: int, sop_class: str,
                          sop_uid: str, head: bytes | None = None) -> tuple[int, str | None]:
    """Ingest a received instance; its C-STORE status and comment.

    On SQLite, an instance up to INLINE_INGEST bytes is ingested here on
    the event loop, but for its fsync (awaited: Linux AIO started before
    the header walk, see aiosync.py, or else the fsync threads):
    header walk, validation and the index transaction take well under a
    millisecond, and handing them to a worker thread and back added two
    thread switches and the two threads contending for the GIL (~10% of
    the CPU of a small instance, measured A/B).  The log line and event
    of an instance stored here wait in ``assoc.announce`` until its response
    is sent.  Whatever could wait goes to the pool: a
    header that needs pydicom's reader, and the index write when another
    writer holds the database (``wait=False`` finds out without waiting).
    Events go out on the pool when a handler may wait (automation)."""
    server, node, origin = assoc.server, assoc.node, assoc.origin
    if server.on_loop and size <= INLINE_INGEST:
        # The node's only association: a CPU to spare, so the fsync goes
        # to a thread that has taken it before the header walk begins
        # (an AIO fsync's kernel worker runs on the loop's CPU and
        # doubled the fsync's time beside the walk: +23% small
        # instances/s on one association, paired runs); with more, AIO,
        # which costs the least CPU.
        alone = server.limit.alone()
        submit = fsync_started if alone else server.aio.fsync if server.aio else None
        staged = _stage(node, temp, origin, sop_class, sop_uid, head, size, submit)
        if isinstance(staged, tuple):  # refused
            return staged
        if staged is not None:
            emit = server.emit_later if node.bus.blocking else None
            if staged.syncing is not None and alone:
                # Nothing else for the loop (or another process's
                # writer) to do while the fsync runs, so the rows are
                # written meanwhile and the loop blocks only for what is
                # left of it, before the rename.
                done = _finish(node, staged, sop_uid, wait=False, emit=emit,
                               announce=assoc.announce, fsync_in_transaction=True)
                if done is not None:
                    return done
            if staged.syncing is not None:
                try:
                    await asyncio.wrap_future(staged.syncing)
                except Exception:
                    pass  # staged.wait() keeps the error for the result
            staged.wait()
            done = _finish(node, staged, sop_uid, wait=False, emit=emit,
                           announce=assoc.announce)
            if done is not None:
                return done
            done = await server.pool.run(_finish, node, staged, sop_uid)
            assert done is not None
            return done
    return await server.pool.run(_store, node, temp, origin, sop_class, sop_uid)


def _store(node: Node, temp: Path, origin: Origin, sop_class: str,
           sop_uid: str) -> tuple[int, str | None]:
    """Ingest a received instance (a Part 10 temp file in the store's
    incoming folder) on this thread; the C-STORE response status and Error Comment."""
    result = node.ingestor.ingest_temp(temp, origin, expected_sop=(sop_class, sop_uid))
    return store_status(result, origin, sop_uid)


def _stage(node: Node, temp: Path, origin: Origin, sop_class: str, sop_uid: str,
           head: bytes | None = None, size: int = 0, submit: SubmitFsync | None = None
           ) -> Staged | tuple[int, str | None] | None:
    """``_store`` in steps for a caller that must not wait (the event
    loop): parse and validate with the fsync started (by ``submit``
    when given, see FileStore.sync_temp) — a Staged to finish with
    ``_finish`` once the fsync is done, or the status of a
    refusal; None when the header needs pydicom's reader (use
    ``_store``)."""
    staged = node.ingestor.stage(temp, origin, expected_sop=(sop_class, sop_uid),
                                 fast_only=True, head=head, size=size, submit=submit)
    if staged is None or isinstance(staged, Staged):
        return staged
    return store_status(staged, origin, sop_uid)


def _finish(node: Node, staged: Staged, sop_uid: str, *, wait: bool = True,
            emit: Callable[[Event], None] | None = None,
            announce: list[Callable[[], None]] | None = None,
            fsync_in_transaction: bool = False) -> tuple[int, str | None] | None:
    """The index write of a staged C-STORE; None when ``wait`` is False
    and the index is busy (nothing done: call again with ``wait``).
    ``announce``, ``fsync_in_transaction``: see Ingestor.commit."""
    results = node.ingestor.commit([staged], wait=wait, emit=emit, announce=announce,
                                   fsync_in_transaction=fsync_in_transaction)
    if results is None:
        return None
    return store_status(results[0], staged.pending.origin, sop_uid)


def store_status(result: IngestResult, origin: Origin, sop_uid: str) -> tuple[int, str | None]:
    """The C-STORE response status and Error Comment of an ingest's outcome."""
    if result.outcome.ok:
        if result.kept_existing:
            log.info("C-STORE %s: kept the stored copy (duplicate_policy=keep)",
                     result.sop_instance_uid)
        return 0x0000, None
    status = result.error.dimse_status if result.error else 0xA700
    log.warning("C-STORE %s from %s failed 0x%04X: %s", sop_uid, origin.describe(),
                status, result.reason)
    return status, result.reason
