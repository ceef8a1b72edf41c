"""The audit events of DIMSE (DESIGN.md §8, PS3.15 A.5.3): one per
association or operation, never per PDU or per instance on the hot path.

- a rejected association or a refused operation: Security Alert (an
  operation once per association and kind, however often it is tried),
  at most one per address, AE, request and reason and minute with a count
  (``alerts.AlertThrottle``), however many associations are refused;
- C-FIND: Query, with the identifier's keys;
- C-MOVE / C-GET: DICOM Instances Transferred, with the studies sent (the
  trail adds their patients);
- C-STORE received: one DICOM Instances Transferred per association, at
  its end, with the studies received — gathered from the ingest events
  the node emits anyway (a set insert per stored instance).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

from ..audit import AuditEvent, AuditTrail
from ..events import Event, EventBus, Origin
from .alerts import AlertThrottle

__all__ = ["DimseAudit", "query_keys"]

#: Longest value of a query key kept in the trail.
_KEY_MAX = 256


def query_keys(identifier: Dataset) -> dict[str, str]:
    """The keys of a C-FIND identifier that match something (non-empty
    values, no sequences), by keyword."""
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            continue
        name = elem.keyword or str(elem.tag)
        keys[name] = str(elem.value)[:_KEY_MAX]
    return keys


def _outcome(failed: int, completed: int) -> int:
    """0 all sent, 4 some failed, 8 none of several could be sent."""
    if not failed:
        return 0
    return 8 if not completed else 4


class DimseAudit:
    """The DIMSE side of one process's :class:`AuditTrail`."""

    def __init__(self, trail: AuditTrail, bus: EventBus) -> None:
        self.trail = trail
        #: Security Alerts go through it (bounded, counted).
        self.alerts = AlertThrottle(trail.record)
        self._received: dict[Origin, tuple[set[str], list[int]]] = {}
        self._lock = threading.Lock()
        bus.subscribe(self._on_event)

    # -- refusals

    def rejected(self, calling: str, called: str, address: str, reason: str) -> None:
        self.alerts.alert(AuditEvent("Security Alert", 4, calling, address, detail={
            "request": f"A-ASSOCIATE-RQ to {called}", "reason": reason, "protocol": "DIMSE"}))

    def refused(self, calling: str, address: str, operation: str, reason: str) -> None:
        self.alerts.alert(AuditEvent("Security Alert", 4, calling, address, detail={
            "request": operation, "reason": reason, "protocol": "DIMSE"}))

    def close(self) -> None:
        """Record the alerts still being counted (before the trail closes)."""
        self.alerts.close()

    # -- operations

    def query(self, calling: str, address: str, sop_class: str, identifier: Dataset,
              status: int = 0) -> None:
        keys = query_keys(identifier)
        study = keys.get("StudyInstanceUID", "")
        studies = [study] if study and "\\" not in study and "*" not in study else []
        self.trail.record(AuditEvent("Query", 0 if status in (0, 0xFF00, 0xFE00) else 4,
                                     calling, address, studies, detail={
                                         "request": sop_class, "keys": keys,
                                         "protocol": "DIMSE"}))

    def transferred(self, calling: str, address: str, verb: str, studies: Iterable[str],
                    completed: int, failed: int, destination: str = "") -> None:
        detail: dict[str, Any] = {"request": verb, "completed": completed, "failed": failed,
                                  "protocol": "DIMSE"}
        if destination:
            detail["destination"] = destination
        self.trail.record(AuditEvent("DICOM Instances Transferred", _outcome(failed, completed),
                                     calling, address, sorted(set(studies)), detail=detail))

    # -- C-STORE received: gathered per association

    def _on_event(self, event: Event) -> None:
        origin = event.origin
        if origin is None or origin.protocol != "dimse" or event.action == "deleted":
            return
        with self._lock:
            studies, count = self._received.setdefault(origin, (set(), [0]))
            studies.add(event.study_uid)
            count[0] += 1

    def association_ended(self, origin: Origin) -> None:
        """Record what this association (and any other still open with the
        same calling AE and address) stored since the last record."""
        with self._lock:
            got = self._received.pop(origin, None)
        if got is None:
            return
        studies, count = got
        self.trail.record(AuditEvent(
            "DICOM Instances Transferred", 0, origin.peer_aet, origin.address, sorted(studies),
            detail={"request": "C-STORE received", "instances": count[0],
                    "called": origin.called_aet, "protocol": "DIMSE"}))
