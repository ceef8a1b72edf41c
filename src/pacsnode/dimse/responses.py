"""Responses of the operations that run beside the reader (C-FIND, C-MOVE,
C-GET): the counts of a retrieve's C-STORE sub-operations, and the
response that carries them (PS3.4 C.4.2.1.5, C.4.3.1.4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from . import messages as m
from .handle import AssociationHandle, Operation

__all__ = ["SubOperations", "storage_status_kind", "final", "identifier"]


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


def identifier(assoc: AssociationHandle, op: Operation, data: bytes) -> Dataset:
    """The request's identifier (or action information), decoded."""
    return m.decode_dataset(data, assoc.syntax(op.context_id))


async def final(assoc: AssociationHandle, op: Operation, field: int, status: int,
                comment: str | None = None, ops: SubOperations | None = None,
                with_remaining: bool = False) -> None:
    """A C-FIND/MOVE/GET response carrying sub-operation counts and, when
    some failed, the Failed SOP Instance UID List (PS3.4 C.4.2.1.5)."""
    counts: dict[str, Any] = {}
    dataset = None
    if ops is not None:
        counts = dict(completed=ops.completed, failed=ops.failed, warning=ops.warning)
        if with_remaining:
            counts["remaining"] = ops.remaining
        if ops.failed_uids and status != 0xFF00:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = ops.failed_uids
            dataset = m.encode_dataset(ds, assoc.syntax(op.context_id))
    await assoc.send(op.context_id, m.response(
        field, op.command, status, dataset=dataset is not None, error_comment=comment,
        affected_sop_class=op.command.affected_sop_class or None, **counts), dataset)
