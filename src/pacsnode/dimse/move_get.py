"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3): the identifier becomes the
node's one query (``retrieve.locate_query``), and every instance goes out in
a C-STORE sub-operation — on a new association to the move destination
(C-MOVE, opened by the one requestor, ``dimse.client``), or back on the
requesting association (C-GET) — with a pending response after each.  What is sent,
and in which transfer syntax, is ``retrieve.outgoing``'s to decide.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import PacsnodeError
from ..query.parse import query_from_identifier
from ..retrieve import InstanceRef, Outgoing, locate_query, outgoing, store_contexts
from . import client
from . import messages as m
from .errors import RemoteError
from .handle import AssociationHandle, NotSent, Operation
from .pdu import ARTIM
from .responses import SubOperations, final, identifier

log = logging.getLogger("pacsnode.dimse")

__all__ = ["c_move", "c_get", "store_instance", "READ_AHEAD"]

#: Largest stored file read and framed whole ahead of its C-STORE
#: sub-operation, while the peer answers the one before (store_instance).
READ_AHEAD = 4 << 20


async def c_move(assoc: AssociationHandle, op: Operation, data: bytes) -> None:
    """C-MOVE: the instances go to the destination on a new association
    we request (one per C-MOVE), a pending response after each."""
    command = op.command
    dest_aet = command.move_destination
    dest = await assoc.server.pool.run(assoc.node.node_by_aet, dest_aet)
    if dest is None:
        log.warning("C-MOVE from %s: unknown destination %r", assoc.origin.describe(),
                    dest_aet)
        await final(assoc, op, m.C_MOVE_RSP, 0xA801, f"unknown destination {dest_aet}")
        return
    refs = await _refs(assoc, op, data, "C-MOVE")
    if refs is None:
        return
    log.info("C-MOVE from %s to %s: %d instances", assoc.origin.describe(), dest_aet,
             len(refs))
    if not refs:
        await final(assoc, op, m.C_MOVE_RSP, 0x0000, ops=SubOperations(0))
        return
    target = client.Destination(dest.aet, dest.host, dest.port, assoc.server.settings.ae_title,
                                ARTIM, assoc.server.timeout)
    try:
        sub = await client.connect(target, store_contexts(refs),
                                   ssl=assoc.server.client_tls() if dest.tls else None)
    except RemoteError as exc:
        log.warning("C-MOVE from %s: cannot associate with %s at %s:%s: %s",
                    assoc.origin.describe(), dest_aet, dest.host, dest.port, exc)
        await final(assoc, op, m.C_MOVE_RSP, 0xA801,
                    f"cannot associate with {dest_aet} at {dest.host}:{dest.port}")
        return
    ops = SubOperations(len(refs))
    cancelled = False
    try:
        for n, ref in enumerate(refs):
            if op.cancel.is_set():
                cancelled = True
                break
            status = None
            if not sub.closed:
                status = await _move_one(assoc, sub, ref, (assoc.peer_aet, command.message_id),
                                         refs[n + 1] if n + 1 < len(refs) else None)
            ops.count(status, ref.sop_instance_uid)
            await final(assoc, op, m.C_MOVE_RSP, 0xFF00, ops=ops, with_remaining=True)
    finally:
        await sub.release()
    log.info("C-MOVE from %s to %s: %d completed, %d failed, %d warning%s",
             assoc.origin.describe(), dest_aet, ops.completed, ops.failed, ops.warning,
             " (cancelled)" if cancelled else "")
    _audit_transfer(assoc, "C-MOVE", refs, ops, dest_aet)
    await final(assoc, op, m.C_MOVE_RSP, ops.final_status(cancelled), ops=ops,
                with_remaining=cancelled)


async def _move_one(assoc: AssociationHandle, sub: client.Requested, ref: InstanceRef,
                    originator: tuple[str, int], upcoming: InstanceRef | None) -> int | None:
    """One C-MOVE sub-operation on the association the requestor opened to
    the destination, sending what ``_prepared`` chose; ``upcoming`` is read
    ahead while the peer answers.  The response status, or None when it
    could not be sent."""
    usable = sub.accepted(ref.sop_class_uid)
    out = await _prepared(assoc, ref, usable, sub.name)
    if out is None:
        return None
    ahead = None
    if upcoming is not None:
        context_id = sub.accepted(upcoming.sop_class_uid).get(upcoming.transfer_syntax)
        ahead = None if context_id is None else (upcoming.path, context_id)
    try:
        rsp = await sub.store(usable[out.transfer_syntax], ref.sop_class_uid,
                              ref.sop_instance_uid, path=out.path, data=out.data,
                              offset=out.offset, originator=originator, upcoming=ahead)
    except RemoteError as exc:
        log.warning("C-MOVE to %s: association lost: %s", sub.name, exc)
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot send %s to %s: %s", ref.sop_instance_uid, sub.name, exc)
        return None
    return rsp.status


async def _prepared(assoc: AssociationHandle, ref: InstanceRef, usable: dict[str, int],
                    peer: str) -> Outgoing | None:
    """What a sub-operation sends of ``ref`` to ``peer``, whose accepted
    contexts for its SOP class are ``usable`` (transfer syntax → context
    id): the stored bytes when the peer accepted their syntax (nothing to
    read here), otherwise transcoded on the pool (``retrieve.outgoing``
    picks the syntax).  None, logged, when it cannot be sent."""
    try:
        if ref.transfer_syntax in usable:
            return outgoing(ref, usable)
        out: Outgoing = await assoc.server.pool.run(outgoing, ref, usable)
        return out
    except Exception as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        log.warning("cannot send %s to %s: %s", ref.sop_instance_uid, peer, reason)
        return None


async def c_get(assoc: AssociationHandle, op: Operation, data: bytes) -> None:
    """C-GET: the instances come back on this association, a pending
    response after each."""
    refs = await _refs(assoc, op, data, "C-GET")
    if refs is None:
        return
    log.info("C-GET from %s: %d instances", assoc.origin.describe(), len(refs))
    ops = SubOperations(len(refs))
    cancelled = False
    for n, ref in enumerate(refs):
        if op.cancel.is_set():
            cancelled = True
            break
        status = await store_instance(
            assoc, ref, upcoming=refs[n + 1] if n + 1 < len(refs) else None)
        ops.count(status, ref.sop_instance_uid)
        await final(assoc, op, m.C_GET_RSP, 0xFF00, ops=ops, with_remaining=True)
    log.info("C-GET from %s: %d completed, %d failed, %d warning%s",
             assoc.origin.describe(), ops.completed, ops.failed, ops.warning,
             " (cancelled)" if cancelled else "")
    _audit_transfer(assoc, "C-GET", refs, ops)
    await final(assoc, op, m.C_GET_RSP, ops.final_status(cancelled), ops=ops,
                with_remaining=cancelled)


def _audit_transfer(assoc: AssociationHandle, verb: str, refs: list[InstanceRef],
                    ops: SubOperations, destination: str = "") -> None:
    """One DICOM Instances Transferred event per C-MOVE / C-GET."""
    audit = assoc.server.gate.audit
    if audit is not None:
        audit.transferred(assoc.peer_aet, assoc.address, verb, {r.study_uid for r in refs},
                          ops.completed + ops.warning, ops.failed, destination)


async def _refs(assoc: AssociationHandle, op: Operation, data: bytes,
                verb: str) -> list[InstanceRef] | None:
    """Every stored instance under what the identifier matches, or None
    once the request is answered with a failure."""
    field = op.command.field | 0x8000
    try:
        ident = identifier(assoc, op, data)
    except Exception as exc:
        log.warning("%s from %s: cannot decode identifier: %s", verb,
                    assoc.origin.describe(), exc)
        await final(assoc, op, field, 0xC000, f"cannot decode identifier: {exc}")
        return None
    try:
        refs: list[InstanceRef] = await assoc.server.pool.run(_locate, assoc, ident)
        return refs
    except PacsnodeError as exc:
        log.warning("%s from %s refused: %s", verb, assoc.origin.describe(), exc.reason)
        await final(assoc, op, field, exc.dimse_status, exc.reason)
        return None


def _locate(assoc: AssociationHandle, ident: Any) -> list[InstanceRef]:
    """(On the pool.)  Raises PacsnodeError for a bad identifier."""
    return locate_query(assoc.node, query_from_identifier(ident))


async def store_instance(assoc: AssociationHandle, ref: InstanceRef,
                         upcoming: InstanceRef | None = None) -> int | None:
    """One C-GET sub-operation on ``assoc``, where we are the storage SCU
    (the C-GET SCU's association, with role selection), sending what
    ``_prepared`` chose.  The response status, or None when it could not
    be sent.  ``upcoming``: the instance the next call will send, read
    ahead while the peer answers this one."""
    usable = assoc.accepted(ref.sop_class_uid)
    out = await _prepared(assoc, ref, usable, assoc.describe())
    if out is None:
        return None
    fields: dict[str, Any] = dict(field=m.C_STORE_RQ, affected_sop_class=ref.sop_class_uid,
                                  affected_sop_instance=ref.sop_instance_uid, priority=0)
    try:
        rsp, _ = await assoc.request(
            usable[out.transfer_syntax], fields, out=out,
            meanwhile=None if upcoming is None else lambda: _read_ahead(assoc, upcoming))
    except NotSent as exc:
        log.warning("cannot send %s to %s: %s", ref.sop_instance_uid, assoc.describe(), exc)
        return None
    except asyncio.TimeoutError:
        log.warning("no C-STORE response for %s from %s in %.0f s: aborting",
                    ref.sop_instance_uid, assoc.describe(), assoc.server.timeout)
        assoc.abort(2, 0, "no C-STORE response")
        raise ConnectionError("no C-STORE response") from None
    return rsp.status


def _read_ahead(assoc: AssociationHandle, ref: InstanceRef) -> None:
    """The data set of ``ref``, sent as stored, read and cut into PDUs
    now, while the peer stores the one before: a sub-operation used to
    start with reading its file (~0.2 ms of 1.4 for a 512² CT sent to
    getscu) after the response to the last one came.  Only for files of
    up to READ_AHEAD bytes (``messages.file_dataset``)."""
    context_id = assoc.accepted(ref.sop_class_uid).get(ref.transfer_syntax)
    if context_id is None:
        return
    pdus = m.file_dataset(ref.path, context_id, assoc.max_pdu, READ_AHEAD)
    if pdus is not None:
        assoc.ahead = (ref.path, context_id, pdus)
