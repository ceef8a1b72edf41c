"""The audit trail (DESIGN.md §8): who stored, queried, viewed, deleted and
was refused, read back through `GET /api/v1/audit` (admin) in the shape of
§8, and sent to a syslog collector (RFC 5424, UDP and TCP) with the PS3.15
A.5.1 audit message XML as body; Application Activity at start and stop."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest

from dicomfiles import dataset_bytes, make_ct
from pacsnode.access.tokens import create_token
from web_server import WebServer

KEYS = {"seq", "time", "event", "outcome", "user", "address", "studies", "patients", "detail"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _events(web: WebServer, admin: str, since: int = 0, limit: int = 1000) -> dict[str, Any]:
    r = httpx.get(web.base_url + "/api/v1/audit", params={"since": since, "limit": limit},
                  headers=_bearer(admin), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


class Collector:
    """A syslog collector on a loopback port: UDP datagrams or RFC 6587
    octet-counted TCP frames, kept as bytes."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.arrived = threading.Condition()
        self.thread = threading.Thread(target=self._udp if scheme == "udp" else self._tcp,
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _add(self, message: bytes) -> None:
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()

    def _udp(self) -> None:
        while True:
            try:
                self._add(self.sock.recv(65535))
            except OSError:
                return

    def _tcp(self) -> None:
        self.sock.listen(4)
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            buffer = b""
            while chunk := conn.recv(65536):
                buffer += chunk
                while (m := re.match(rb"(\d+) ", buffer)) and \
                        len(buffer) >= m.end() + int(m.group(1)):
                    end = m.end() + int(m.group(1))
                    self._add(buffer[m.end():end])
                    buffer = buffer[end:]
            conn.close()

    def wait_for(self, event_code: str, count: int = 1, timeout: float = 20) -> list[ET.Element]:
        def found() -> list[ET.Element]:
            out = []
            for message in self.messages:
                xml = _parse_syslog(message)
                if xml.find("EventIdentification/EventID").get("csd-code") == event_code:
                    out.append(xml)
            return out
        with self.arrived:
            self.arrived.wait_for(lambda: len(found()) >= count, timeout)
            return found()

    def close(self) -> None:
        self.sock.close()


def _parse_syslog(message: bytes) -> ET.Element:
    """Check the RFC 5424 header; the XML body."""
    header = re.match(rb"<(\d+)>1 (\S+) (\S+) pacsnode (\d+) DICOM\+RFC3881 - \xef\xbb\xbf",
                      message)
    assert header, message[:120]
    assert int(header.group(1)) // 8 == 10  # facility: security/authorization
    assert re.match(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", header.group(2))
    return ET.fromstring(message[header.end():])


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector("udp")
    yield c
    c.close()


def test_the_trail_of_store_query_view_delete_and_refusals(tmp_path: Path,
                                                           collector: Collector) -> None:
    web = WebServer(tmp_path / "data", auth="on", audit_syslog=collector.url).start()
    try:
        db = web.node.db
        admin, reader, writer, editor = (create_token(db, name, name) for name in
                                         ("admin", "reader", "writer", "editor"))
        ds = make_ct(tmp_path / "a.dcm", patient_id="PAT-7")
        study = ds.StudyInstanceUID
        from web_server import STOW_TYPE, multipart_body
        r = httpx.post(web.dicomweb + "/studies",
                       content=multipart_body([dataset_bytes(tmp_path / "a.dcm")]),
                       headers={"Content-Type": STOW_TYPE, **_bearer(writer)}, timeout=60)
        assert r.status_code == 200, r.text
        r = httpx.get(web.dicomweb + "/studies", params={"PatientID": "PAT-7", "limit": 5},
                      headers=_bearer(reader), timeout=10)
        assert r.status_code == 200
        r = httpx.get(web.dicomweb + f"/studies/{study}/metadata", headers=_bearer(reader),
                      timeout=10)
        assert r.status_code == 200
        assert httpx.get(web.dicomweb + "/studies", headers=_bearer("pn_forged"),
                         timeout=10).status_code == 401
        assert httpx.delete(web.dicomweb + f"/studies/{study}", headers=_bearer(reader),
                            timeout=10).status_code == 403
        assert httpx.delete(web.dicomweb + f"/studies/{study}", headers=_bearer(editor),
                            timeout=10).status_code in (200, 204)

        page = _events(web, admin)
        events = page["events"]
        assert set(page) == {"events", "next"} and page["next"] == events[-1]["seq"]
        assert all(set(e) == KEYS for e in events)
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        by_event = [(e["event"], e["user"], e["outcome"]) for e in events]
        assert by_event == [("Import", "writer", 0), ("Query", "reader", 0),
                            ("DICOM Instances Accessed", "reader", 0),
                            ("Security Alert", "", 4), ("Security Alert", "reader", 4),
                            ("DICOM Study Deleted", "editor", 0)]
        imported, query, accessed, forged, refused, deleted = events
        for e in (imported, accessed, deleted):
            assert e["studies"] == [study] and e["patients"] == ["PAT-7"], e
        assert query["detail"]["keys"] == {"PatientID": "PAT-7"}  # paging left out
        assert forged["detail"]["reason"] == "unknown token"
        assert "editor" in refused["detail"]["reason"]
        assert all(e["address"] == "127.0.0.1" for e in events)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", events[0]["time"])

        # Paging; reading the trail is itself an event.
        first_two = _events(web, admin, limit=2)
        assert [e["seq"] for e in first_two["events"]] == [events[0]["seq"], events[1]["seq"]]
        rest = _events(web, admin, since=first_two["next"])["events"]
        assert [e["seq"] for e in rest][:4] == [e["seq"] for e in events[2:]]
        assert rest[-1]["event"] == "Audit Log Used" and rest[-1]["user"] == "admin"
        # Nobody removes it: there is no route for that, and readers may not look.
        assert httpx.delete(web.base_url + "/api/v1/audit", headers=_bearer(admin),
                            timeout=10).status_code == 405
        assert httpx.get(web.base_url + "/api/v1/audit", headers=_bearer(editor),
                         timeout=10).status_code == 403

        # The same events reached the collector as DICOM audit messages.
        deleted_xml = collector.wait_for("110105")[0]
        ident = deleted_xml.find("EventIdentification")
        assert ident.get("EventActionCode") == "D" and ident.get("EventOutcomeIndicator") == "0"
        objects = {o.find("ParticipantObjectIDTypeCode").get("csd-code"):
                   o.get("ParticipantObjectID")
                   for o in deleted_xml.findall("ParticipantObjectIdentification")}
        assert objects == {"110180": study, "2": "PAT-7"}
        users = [p.get("UserID") for p in deleted_xml.findall("ActiveParticipant")]
        assert users[0] == "editor" and "PACSNODE" in users
        assert deleted_xml.find("AuditSourceIdentification").get("AuditSourceID") == "PACSNODE"
        query_xml = collector.wait_for("110112")[0]
        import base64
        import json
        encoded = query_xml.find("ParticipantObjectIdentification/ParticipantObjectQuery").text
        assert json.loads(base64.b64decode(encoded)) == {"PatientID": "PAT-7"}
        alerts = collector.wait_for("110113", count=2)
        assert {a.find("EventIdentification").get("EventOutcomeIndicator")
                for a in alerts} == {"4"}
    finally:
        web.stop()


def test_application_start_and_stop_over_tcp_syslog(tmp_path: Path, pacsnode_factory) -> None:
    collector = Collector("tcp")
    try:
        server = pacsnode_factory(extra_env={"PACSNODE_AUDIT_SYSLOG": collector.url})
        start = collector.wait_for("110100")
        assert start and start[0].find("EventIdentification/EventTypeCode").get(
            "csd-code") == "110120"
        server.stop()
        kinds = [m.find("EventIdentification/EventTypeCode").get("originalText")
                 for m in collector.wait_for("110100", count=2)]
        assert kinds == ["Application Start", "Application Stop"]
        from pacsnode.audit import list_events
        from pacsnode.index.db import Database
        db = Database(f"sqlite:///{server.data_dir / 'index.sqlite'}")
        events, _ = list_events(db)
        db.dispose()
        assert [(e["event"], e["detail"]["activity"]) for e in events] == [
            ("Application Activity", "start"), ("Application Activity", "stop")]
        assert events[0]["user"] == "PACSNODE"
    finally:
        collector.close()
