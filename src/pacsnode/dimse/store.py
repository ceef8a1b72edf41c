"""Storage SCP (PS3.4 B): a received C-STORE — its data set already in a
temp file, written there by the association's reader as it arrived — is
ingested, and answered with the status of its outcome.

When the instance is fsynced, on which thread, and when it is acknowledged
is ``durability.IngestScheduler``'s to decide; the ingest itself is the
node's one path, ``Ingestor``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import metrics
from ..events import Origin
from ..ingest import IngestResult, Outcome
from . import messages as m
from .handle import AssociationHandle

log = logging.getLogger("pacsnode.dimse")

__all__ = ["c_store", "store_status", "store_outcome"]


async def c_store(assoc: AssociationHandle, context_id: int, command: m.Command,
                  temp: Path | None, size: int, head: bytes | None,
                  refusal: tuple[int, str] | None) -> None:
    """Ingest the received instance in ``temp`` (None: refused while it was
    received, for ``refusal``) and answer the C-STORE-RQ."""
    sop_class, sop_uid = command.affected_sop_class, command.affected_sop_instance
    started = time.perf_counter()
    comment: str | None
    outcome = Outcome.FAILED
    if temp is None:
        status, comment = refusal or (0xA700, "cannot write")
        if store_outcome(status) == "refused":
            outcome = Outcome.REFUSED
        log.warning("C-STORE %s from %s failed: %s", sop_uid, assoc.origin.describe(),
                    comment)
    else:
        assoc.busy += 1
        try:
            result = await assoc.server.scheduler.received(
                temp, assoc.origin, (sop_class, sop_uid), head, size, assoc.announce)
            status, comment = store_status(result, assoc.origin, sop_uid)
            outcome = result.outcome
        except Exception as exc:  # ingest reports its failures; this is a bug
            log.exception("C-STORE %s from %s", sop_uid, assoc.origin.describe())
            temp.unlink(missing_ok=True)
            status, comment = 0xA700, f"storage failed: {exc}"
        finally:
            assoc.busy -= 1
    assoc.stores[outcome.value] += 1
    try:
        await assoc.send(context_id, m.response(
            m.C_STORE_RSP, command, status, error_comment=comment,
            affected_sop_class=sop_class, affected_sop_instance=sop_uid))
    finally:
        _tell(assoc)
        metrics.operation("dimse", "store", store_outcome(status),
                          time.perf_counter() - started)


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


def store_outcome(status: int) -> str:
    """A C-STORE status as a metrics outcome: success and warnings (0xBxxx)
    ok, out of resources (0xA7xx) failed, the rest refused."""
    if status == 0 or 0xB000 <= status <= 0xBFFF:
        return "ok"
    return "failed" if 0xA700 <= status <= 0xA7FF else "refused"


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
