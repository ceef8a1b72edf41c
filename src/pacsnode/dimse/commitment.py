"""Storage Commitment Push Model SCP (PS3.4 J.3): answer the N-ACTION, then
report in an N-EVENT-REPORT which instances the archive durably holds — on
the requesting association, or, when the peer does not take it there, on a
new one to the configured node."""

from __future__ import annotations

import asyncio
import logging
from pydicom.dataset import Dataset

from ..access.tls import dicom_client_context
from ..node import Node
from ..retrieve import locate
from . import client
from . import messages as m
from .errors import RemoteError
from .handle import AssociationHandle, Operation
from .negotiation import COMMITMENT_INSTANCE, STORAGE_COMMITMENT
from .pdu import ARTIM
from .responses import identifier

log = logging.getLogger("pacsnode.dimse")

__all__ = ["n_action", "commitment_report", "send_commitment"]


async def n_action(assoc: AssociationHandle, op: Operation, data: bytes) -> None:
    command = op.command
    status, comment = 0x0000, None
    info = None
    if command.requested_sop_class != STORAGE_COMMITMENT:
        status, comment = 0x0118, "no such SOP class"
    elif command.action_type != 1:
        status, comment = 0x0123, f"no such action type {command.action_type}"
    else:
        try:
            info = identifier(assoc, op, data)
            transaction = str(info.get("TransactionUID", ""))
            wanted = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                      for i in info.get("ReferencedSOPSequence", [])]
        except Exception as exc:
            status, comment = 0x0110, f"cannot decode action information: {exc}"
    await assoc.send(op.context_id, m.response(
        m.N_ACTION_RSP, command, status, error_comment=comment,
        affected_sop_class=STORAGE_COMMITMENT,
        affected_sop_instance=command.requested_sop_instance or COMMITMENT_INSTANCE,
        action_type=command.action_type if status == 0 else None))
    if status != 0:
        log.warning("storage commitment from %s refused: %s", assoc.origin.describe(),
                    comment)
        return
    log.info("storage commitment %s from %s for %d instances", transaction,
             assoc.origin.describe(), len(wanted))
    report = await assoc.server.pool.run(commitment_report, assoc.node, transaction, wanted)
    event_type, ds = report
    try:
        rsp, _ = await assoc.request(op.context_id, dict(
            field=m.N_EVENT_REPORT_RQ, affected_sop_class=STORAGE_COMMITMENT,
            affected_sop_instance=COMMITMENT_INSTANCE, event_type=event_type),
            dataset=m.encode_dataset(ds, assoc.syntax(op.context_id)))
        if rsp.status == 0x0000:
            log.info("storage commitment %s reported to %s (event type %d)", transaction,
                     assoc.origin.describe(), event_type)
            return
        log.info("storage commitment report refused by %s (0x%04X)",
                 assoc.origin.describe(), rsp.status)
    except (ConnectionError, asyncio.TimeoutError) as exc:
        log.info("storage commitment report on the same association failed: %s", exc)
    assoc.server.background(send_commitment, assoc.node, assoc.peer_aet, report)


def commitment_report(node: Node, transaction: str,
                      wanted: list[tuple[str, str]]) -> tuple[int, Dataset]:
    """Event type (1 all committed, 2 some failed) and Event Information."""
    ok, failed = [], []
    for sop_class, sop_uid in wanted:
        refs = locate(node, sop_uid=sop_uid)
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        if refs and refs[0].path.is_file() and refs[0].sop_class_uid == sop_class:
            ok.append(item)
        else:
            item.FailureReason = 0x0112 if not refs else 0x0119
            failed.append(item)
    ds = Dataset()
    ds.TransactionUID = transaction
    if ok:
        ds.ReferencedSOPSequence = ok
    if failed:
        ds.FailedSOPSequence = failed
    return (1 if not failed else 2), ds


def send_commitment(node: Node, peer_aet: str, report: tuple[int, Dataset]) -> bool:
    """The N-EVENT-REPORT on a new association to the configured node
    whose AE title is ``peer_aet`` (PS3.4 J.3.3), through the requestor
    (``dimse.client``), which proposes the SCP role of Storage Commitment;
    over TLS to a node with ``tls = true``.  (On the pool.)"""
    dest = node.node_by_aet(peer_aet)
    if dest is None:
        log.warning("storage commitment: cannot report to %s (not a configured node)",
                    peer_aet)
        return False
    event_type, ds = report
    target = client.Destination(dest.aet, dest.host, dest.port, node.settings.ae_title,
                                ARTIM, node.settings.dimse_timeout)
    try:
        tls = dicom_client_context(node.settings) if dest.tls else None
        status = client.run(client.report_event(
            target, STORAGE_COMMITMENT, COMMITMENT_INSTANCE, event_type, ds, ssl=tls))
    except (RemoteError, OSError) as exc:
        log.warning("storage commitment: cannot report to %s: %s", dest.aet, exc)
        return False
    ok = status == 0x0000
    log.info("storage commitment %s reported to %s on a new association: %s",
             ds.TransactionUID, dest.aet, "ok" if ok else f"status 0x{status:04X}")
    return ok
