"""The DIMSE audit events sent to a syslog collector (DESIGN.md §8,
PS3.15 A.5): C-STORE received and C-GET as DICOM Instances Transferred
with study and patient, C-FIND as Query with its keys, a rejected
association as a Security Alert — each message's XML valid against the
A.5.1 schema (tests/data/dicom-audit-message.rng, RELAX NG)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from xml.etree import ElementTree as ET

from lxml import etree as lxml_etree  # the test extra
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import dcmtk
from dicomfiles import make_ct
from test_audit import Collector
from test_dimse import run

SCHEMA = Path(__file__).parent / "data" / "dicom-audit-message.rng"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _valid(message: bytes) -> None:
    body = message[re.search(rb"\xef\xbb\xbf", message).end():]
    schema = lxml_etree.RelaxNG(lxml_etree.parse(str(SCHEMA)))
    doc = lxml_etree.fromstring(body)
    assert schema.validate(doc), (schema.error_log, body.decode())


def _objects(xml: ET.Element) -> dict[str, str]:
    return {o.find("ParticipantObjectIDTypeCode").get("csd-code"): o.get("ParticipantObjectID")
            for o in xml.findall("ParticipantObjectIdentification")}


def test_dimse_events_reach_syslog_as_valid_audit_messages(pacsnode_factory,
                                                             tmp_path: Path) -> None:
    collector = Collector("udp")
    try:
        config = tmp_path / "audit.toml"
        config.write_text(f'audit_syslog = "{collector.url}"\ndimse_unknown_ae = []\n'
                          '[nodes.MODALITY]\naet = "MODALITY"\nhost = "127.0.0.1"\n'
                          'port = 104\n[nodes.VIEWER]\naet = "VIEWER"\nhost = "127.0.0.1"\n'
                          'port = 104\nallow = ["find", "get"]\n')
        node = pacsnode_factory(config=str(config))
        port = str(node.dicom_port)
        for n in range(3):
            make_ct(tmp_path / f"{n}.dcm", patient_id="PAT-S", study_uid="1.2.826.0.1.7.1",
                    series_uid="1.2.826.0.1.7.1.1", sop_uid=f"1.2.826.0.1.7.1.1.{n}",
                    instance=n + 1)
        run(dcmtk("storescu"), "-aet", "MODALITY", "-aec", node.aet, "127.0.0.1", port,
            *[str(tmp_path / f"{n}.dcm") for n in range(3)])
        run(dcmtk("findscu"), "-S", "-aet", "VIEWER", "-aec", node.aet,
            "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=PAT-S", "-k", "StudyDate",
            "127.0.0.1", port)
        got = tmp_path / "got"
        got.mkdir()
        run(dcmtk("getscu"), "-S", "-aet", "VIEWER", "-aec", node.aet,
            "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=1.2.826.0.1.7.1",
            "-od", str(got), "127.0.0.1", port)
        assert len(list(got.iterdir())) == 3
        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(Verification)
        assert stranger.associate("127.0.0.1", node.dicom_port, ae_title=node.aet).is_rejected

        transferred = collector.wait_for("110104", count=2)
        query = collector.wait_for("110112")
        alert = collector.wait_for("110113")
        assert len(transferred) == 2 and len(query) == 1 and len(alert) == 1
        for message in collector.messages:
            _valid(message)

        received, sent = sorted(transferred, key=lambda x: x.find("ActiveParticipant")
                                .get("UserID"))
        for xml, user in ((received, "MODALITY"), (sent, "VIEWER")):
            requestor = xml.find("ActiveParticipant")
            assert requestor.get("UserID") == user
            assert requestor.get("NetworkAccessPointID") == "127.0.0.1"
            assert _objects(xml) == {"110180": "1.2.826.0.1.7.1", "2": "PAT-S"}
            assert xml.find("EventIdentification").get("EventOutcomeIndicator") == "0"
        q = query[0]
        assert q.find("ActiveParticipant").get("UserID") == "VIEWER"
        obj = [o for o in q.findall("ParticipantObjectIdentification")
               if o.find("ParticipantObjectQuery") is not None][0]
        assert obj.get("ParticipantObjectID") == STUDY_ROOT_FIND
        assert json.loads(base64.b64decode(obj.find("ParticipantObjectQuery").text)) == {
            "QueryRetrieveLevel": "STUDY", "PatientID": "PAT-S"}
        a = alert[0]
        assert a.find("ActiveParticipant").get("UserID") == "STRANGER"
        assert a.find("EventIdentification").get("EventOutcomeIndicator") == "4"
        assert "dimse_unknown_ae" in a.find("EventIdentification/EventOutcomeDescription").text
    finally:
        collector.close()
