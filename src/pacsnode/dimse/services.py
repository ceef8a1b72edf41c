"""What the DIMSE services do, with plain arguments: no sockets, no PDUs.

``dimse/server.py`` decodes a request and calls one of these (from a worker
thread: they block on the disk, the index or a peer), then encodes what they
return.  Each only translates to the node's one path per verb: C-STORE →
``Ingestor.ingest_temp``, C-FIND → query parser + ``QueryEngine``,
C-MOVE/C-GET → ``retrieve.locate_query`` (what is sent, and in which
transfer syntax, is ``retrieve.outgoing``'s to decide), Storage Commitment →
``retrieve.locate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..config import NodeConfig
from ..errors import PacsnodeError
from ..events import Event, Origin
from ..ingest import IngestResult, Staged
from ..node import Node
from ..query.engine import MatchFields
from ..query.parse import query_from_identifier
from ..retrieve import InstanceRef, locate, locate_query
from ..storage import SubmitFsync
from .messages import encode_dataset, encode_elements

log = logging.getLogger("pacsnode.dimse")

__all__ = ["Services", "SubOperations", "storage_status_kind", "COMMITMENT_INSTANCE"]

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"


@dataclass
class SubOperations:
    """Counts of a C-MOVE/C-GET's C-STORE sub-operations (PS3.4 C.4.2.1.5)."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def count(self, status: int | None, sop_uid: str) -> None:
        kind = storage_status_kind(status)
        self.remaining -= 1
        if kind == "success":
            self.completed += 1
        elif kind == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_uid)

    def final_status(self, cancelled: bool) -> int:
        """PS3.4 C.4.2.1.5 / C.4.3.1.4: cancel 0xFE00; all failed 0xA702;
        some failed or warned 0xB000; otherwise 0x0000."""
        if cancelled:
            return 0xFE00
        if not self.failed and not self.warning:
            return 0x0000
        if self.failed and not self.completed and not self.warning:
            return 0xA702
        return 0xB000


def storage_status_kind(status: int | None) -> str:
    """success, warning or failure for a C-STORE response status (PS3.4 B.2.3)."""
    if status == 0x0000:
        return "success"
    if status is not None and (0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107,
                                                                         0x0116)):
        return "warning"
    return "failure"


def _encode_match(match: MatchFields, level: Any, charset: Any,
                  transfer_syntax: str) -> bytes:
    """A C-FIND match as the identifier of its pending response: its return
    keys, the Query/Retrieve Level and the Specific Character Set (ISO_IR
    192 when a value is not ASCII, else the request's).  Encoded by hand
    when every value came from an index column, through pydicom otherwise."""
    extra: list[tuple[int, str, Any, Any]] = [(0x00080052, "CS", str(level), None)]
    if match.non_ascii:
        extra.append((0x00080005, "CS", "ISO_IR 192", None))
    elif charset is not None:
        extra.append((0x00080005, "CS", list(charset) if isinstance(charset, MultiValue)
                      else charset, None))
    if match.plain:
        try:
            elements = sorted(match.fields + extra, key=lambda f: f[0])
            return encode_elements([(tag, vr, value) for tag, vr, value, _ in elements],
                                   transfer_syntax, utf8=match.non_ascii)
        except ValueError:
            pass
    ds = match.dataset()
    ds.QueryRetrieveLevel = level
    if charset is not None and "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = charset
    return encode_dataset(ds, transfer_syntax)


class Services:
    """The DIMSE services of one node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    # -- C-STORE

    def store(self, temp: Path, origin: Origin, sop_class: str,
              sop_uid: str) -> tuple[int, str | None]:
        """Ingest a received instance (a Part 10 temp file in the store's
        incoming folder); the C-STORE response status and Error Comment."""
        result = self.node.ingestor.ingest_temp(temp, origin,
                                                expected_sop=(sop_class, sop_uid))
        return self.store_status(result, origin, sop_uid)

    def stage_store(self, temp: Path, origin: Origin, sop_class: str, sop_uid: str,
                    head: bytes | None = None, size: int = 0,
                    submit: SubmitFsync | None = None
                    ) -> Staged | tuple[int, str | None] | None:
        """``store`` in steps for a caller that must not wait (the event
        loop): parse and validate with the fsync started (by ``submit``
        when given, see FileStore.sync_temp) — a Staged to finish with
        ``finish_store`` once the fsync is done, or the status of a
        refusal; None when the header needs pydicom's reader (use
        ``store``)."""
        staged = self.node.ingestor.stage(temp, origin, expected_sop=(sop_class, sop_uid),
                                          fast_only=True, head=head, size=size,
                                          submit=submit)
        if staged is None or isinstance(staged, Staged):
            return staged
        return self.store_status(staged, origin, sop_uid)

    def finish_store(self, staged: Staged, sop_uid: str, *, wait: bool = True,
                     emit: Callable[[Event], None] | None = None,
                     announce: list[Callable[[], None]] | None = None,
                     fsync_in_transaction: bool = False
                     ) -> tuple[int, str | None] | None:
        """The index write of a staged C-STORE; None when ``wait`` is False
        and the index is busy (nothing done: call again with ``wait``).
        ``announce``, ``fsync_in_transaction``: see Ingestor.commit."""
        results = self.node.ingestor.commit([staged], wait=wait, emit=emit, announce=announce,
                                            fsync_in_transaction=fsync_in_transaction)
        if results is None:
            return None
        return self.store_status(results[0], staged.pending.origin, sop_uid)

    @staticmethod
    def store_status(result: IngestResult, origin: Origin,
                     sop_uid: str) -> tuple[int, str | None]:
        if result.outcome.ok:
            if result.kept_existing:
                log.info("C-STORE %s: kept the stored copy (duplicate_policy=keep)",
                         result.sop_instance_uid)
            return 0x0000, None
        status = result.error.dimse_status if result.error else 0xA700
        log.warning("C-STORE %s from %s failed 0x%04X: %s", sop_uid, origin.describe(),
                    status, result.reason)
        return status, result.reason

    # -- C-FIND

    def find(self, identifier: Dataset, origin: Origin, cancelled: Callable[[], bool],
             transfer_syntax: str) -> Iterator[tuple[int, bytes | None, str | None]]:
        """(status, encoded identifier, error comment) for each response:
        pending 0xFF00 with a match in ``transfer_syntax``, then the final one."""
        try:
            query = query_from_identifier(identifier)
        except PacsnodeError as exc:
            log.warning("C-FIND from %s refused: %s", origin.describe(), exc.reason)
            yield exc.dimse_status, None, exc.reason
            return
        except Exception as exc:
            log.warning("C-FIND from %s: cannot decode identifier: %s", origin.describe(), exc)
            yield 0xC000, None, f"cannot decode identifier: {exc}"
            return
        level = identifier.QueryRetrieveLevel
        charset = identifier.get("SpecificCharacterSet")
        count = 0
        try:
            for match in self.node.engine.matches(query):
                if cancelled():
                    log.info("C-FIND from %s cancelled after %d matches", origin.describe(),
                             count)
                    yield 0xFE00, None, None
                    return
                try:
                    encoded = _encode_match(match, level, charset, transfer_syntax)
                except Exception as exc:
                    log.warning("C-FIND from %s: cannot encode a match: %s", origin.describe(),
                                exc)
                    yield 0xC000, None, f"cannot encode a match: {exc}"
                    return
                count += 1
                yield 0xFF00, encoded, None
        except PacsnodeError as exc:
            log.warning("C-FIND from %s refused: %s", origin.describe(), exc.reason)
            yield exc.dimse_status, None, exc.reason
            return
        log.info("C-FIND %s from %s: %d matches", query.level.name, origin.describe(), count)
        yield 0x0000, None, None

    # -- C-MOVE / C-GET

    def locate(self, identifier: Dataset) -> list[InstanceRef]:
        """Every stored instance under what the identifier matches (raises
        PacsnodeError for a bad identifier)."""
        return locate_query(self.node, query_from_identifier(identifier))

    def move_destination(self, aet: str) -> NodeConfig | None:
        return self.node.node_by_aet(aet)

    # -- Storage Commitment Push Model (PS3.4 J.3)

    def commitment_report(self, transaction: str,
                          wanted: list[tuple[str, str]]) -> tuple[int, Dataset]:
        """Event type (1 all committed, 2 some failed) and Event Information."""
        ok, failed = [], []
        for sop_class, sop_uid in wanted:
            refs = locate(self.node, sop_uid=sop_uid)
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

    def send_commitment(self, peer_aet: str, report: tuple[int, Dataset]) -> bool:
        """The N-EVENT-REPORT on a new association to the configured node
        whose AE title is ``peer_aet`` (PS3.4 J.3.3), through the requestor
        (``dimse.client``); we propose the SCP role of Storage Commitment."""
        node = self.node.node_by_aet(peer_aet)
        if node is None:
            log.warning("storage commitment: cannot report to %s (not a configured node)",
                        peer_aet)
            return False
        from . import client
        from .errors import RemoteError
        event_type, ds = report
        target = client.Destination(node.aet, node.host, node.port, self.node.settings.ae_title,
                                    30.0, self.node.settings.dimse_timeout)
        try:
            status = client.run(client.report_event(
                target, STORAGE_COMMITMENT, COMMITMENT_INSTANCE, event_type, ds))
        except RemoteError as exc:
            log.warning("storage commitment: cannot report to %s: %s", node.aet, exc)
            return False
        ok = status == 0x0000
        log.info("storage commitment %s reported to %s on a new association: %s",
                 ds.TransactionUID, node.aet, "ok" if ok else f"status 0x{status:04X}")
        return ok
