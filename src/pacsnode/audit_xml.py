"""An audit event as the DICOM audit message XML of PS3.15 A.5.1 (the
RFC 3881 based schema), the body of the syslog messages of ``audit_syslog``.

Event IDs and type codes are those of PS3.15 A.5.3 / PS3.16 (DCM); the
participant objects are the studies (Study Instance UID, 110180) and the
patients (RFC 3881 Patient Number) the event names, and for a Query the
query keys (base64 JSON in ParticipantObjectQuery).
"""

from __future__ import annotations

import base64
import json
import socket
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from xml.etree import ElementTree as ET

if TYPE_CHECKING:  # pragma: no cover
    from .audit import AuditEvent

__all__ = ["audit_message_xml", "EVENT_CODES"]

#: Event name → (EventID code (DCM), EventActionCode).
EVENT_CODES: dict[str, tuple[str, str]] = {
    "Application Activity": ("110100", "E"),
    "Audit Log Used": ("110101", "R"),
    "DICOM Instances Accessed": ("110103", "R"),
    "DICOM Instances Transferred": ("110104", "R"),
    "DICOM Study Deleted": ("110105", "D"),
    "Export": ("110106", "R"),
    "Import": ("110107", "C"),
    "Query": ("110112", "E"),
    "Security Alert": ("110113", "E"),
    "User Authentication": ("110114", "E"),
}

_TYPE_CODES = {
    ("Application Activity", "start"): ("110120", "Application Start"),
    ("Application Activity", "stop"): ("110121", "Application Stop"),
    ("Security Alert", ""): ("110132", "Use of Restricted Function"),
}


def _code(parent: ET.Element, tag: str, code: str, system: str, text: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system,
                                "originalText": text})


def audit_message_xml(event: "AuditEvent", source_id: str) -> bytes:
    event_code, action = EVENT_CODES[event.event]
    if event.detail.get("request") == "C-STORE received":
        action = "C"  # Instances Transferred, as their destination (PS3.15 A.5.3.2)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action,
        "EventDateTime": datetime.fromtimestamp(event.time, timezone.utc)
                                 .isoformat(timespec="milliseconds"),
        "EventOutcomeIndicator": str(event.outcome)})
    _code(ident, "EventID", event_code, "DCM", event.event)
    type_code = _TYPE_CODES.get((event.event, str(event.detail.get("activity", ""))))
    if type_code:
        _code(ident, "EventTypeCode", type_code[0], "DCM", type_code[1])
    reason = event.detail.get("reason")
    if reason:
        ET.SubElement(ident, "EventOutcomeDescription").text = str(reason)

    if event.user and event.event != "Application Activity":
        ET.SubElement(root, "ActiveParticipant", {
            "UserID": event.user, "UserIsRequestor": "true",
            **({"NetworkAccessPointID": event.address, "NetworkAccessPointTypeCode": "2"}
               if event.address else {})})
    elif event.address:
        ET.SubElement(root, "ActiveParticipant", {
            "UserID": "unknown", "UserIsRequestor": "true",
            "NetworkAccessPointID": event.address, "NetworkAccessPointTypeCode": "2"})
    application = ET.SubElement(root, "ActiveParticipant", {
        "UserID": source_id, "UserIsRequestor": "false",
        "NetworkAccessPointID": socket.gethostname(), "NetworkAccessPointTypeCode": "1"})
    _code(application, "RoleIDCode", "110150", "DCM", "Application")
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server

    for study in event.studies:
        obj = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": study, "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(obj, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    for patient in event.patients:
        obj = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": patient, "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        _code(obj, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    if event.event == "Query":
        obj = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(event.detail.get("request", "")),
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "24"})
        _code(obj, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        keys = json.dumps(event.detail.get("keys", {}), sort_keys=True).encode()
        ET.SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(keys).decode()
    xml: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return xml
