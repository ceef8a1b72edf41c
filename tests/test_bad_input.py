"""Bad input answered with a clear refusal, never an abort, a 500 or a
Python internal, and the node keeps serving afterwards (DESIGN.md §6):
DIMSE commands whose UIDs hold non-ASCII bytes, numeric parameters out of
range or not ASCII, queries too large, dates and times in another format,
export paths no file system takes, and an unexpected failure inside a route."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                                  Verification)

from dicomfiles import make_ct
from dimse_peer import echo_ok, established, p_data, pdv, recv_pdu
from test_dimse import findscu
from web_server import WebServer, make_instance, uid

from pacsnode.dimse import messages as m
from pacsnode.errors import BadQuery
from pacsnode.query.parse import constraint_for
from pacsnode.web.errors import INTERNAL_ERROR

HUGE = "9223372036854775808"  # 2^63: one more than SQLite and PostgreSQL take

# -- DIMSE: a command whose UID holds bytes no UID may hold ----------------------------

#: Presentation contexts of the raw association: id → abstract syntax.
CONTEXTS = {1: Verification, 3: CTImageStorage, 5: StudyRootQueryRetrieveInformationModelFind}


def raw_command(*elements: tuple[int, bytes]) -> bytes:
    """A command set (Implicit VR LE, group 0000) written byte by byte, so a
    UID can hold what no encoder would write."""
    body = b"".join(struct.pack("<HHI", 0, element, len(value)) + value
                    for element, value in sorted(elements))
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def pdata(context_id: int, command: bytes, dataset: bytes | None = None) -> bytes:
    """A message: its command set, then its data set, a P-DATA-TF each."""
    out = p_data(pdv(context_id, 0x03, command))
    return out if dataset is None else out + p_data(pdv(context_id, 0x02, dataset))


def response(sock: socket.socket) -> m.Command:
    """The next DIMSE response's command set (its data set, if any, skipped)."""
    command = b""
    while True:
        kind, body = recv_pdu(sock)
        assert kind == 0x04, f"PDU type 0x{kind:02X} instead of a P-DATA-TF (aborted?)"
        pos = 0
        while pos < len(body):
            length = struct.unpack(">I", body[pos:pos + 4])[0]
            control, data = body[pos + 5], body[pos + 6:pos + 4 + length]
            pos += 4 + length
            if control & 0x01:
                command += data
                if control & 0x02:
                    return m.decode_command(command[12:])  # after the group length


@pytest.fixture
def dimse_node(pacsnode_server: Any) -> Any:
    return pacsnode_server


@pytest.fixture
def raw_assoc(dimse_node: Any) -> Iterator[socket.socket]:
    sock = established(dimse_node, timeout=10, called=dimse_node.aet, contexts=CONTEXTS)
    yield sock
    sock.close()


def assert_still_serving(sock: socket.socket, node: Any) -> None:
    """A normal C-ECHO on the same association, and one on a new association."""
    sock.sendall(pdata(1, raw_command((0x0002, b"1.2.840.10008.1.1\x00"), (0x0100, us(0x30)),
                                      (0x0110, us(99)), (0x0800, us(0x0101)))))
    rsp = response(sock)
    assert (rsp.field, rsp.responded_to, rsp.status) == (0x8030, 99, 0x0000)
    assert echo_ok(node)


def test_c_echo_with_a_non_ascii_sop_class_uid_gets_0122(raw_assoc: socket.socket,
                                                         dimse_node: Any) -> None:
    bad = "1.2.840.10008.1.¹".encode() + b"\x00"  # UTF-8 bytes where digits belong
    raw_assoc.sendall(pdata(1, raw_command((0x0002, bad), (0x0100, us(0x30)),
                                           (0x0110, us(7)), (0x0800, us(0x0101)))))
    rsp = response(raw_assoc)
    # PS3.7 Annex C: "Refused: SOP Class not supported"; the UID that cannot
    # be echoed is left out of the response.
    assert (rsp.field, rsp.responded_to, rsp.status) == (0x8030, 7, 0x0122)
    assert "Affected SOP Class UID holds bytes no UID may hold" in rsp.text(m.ERROR_COMMENT)
    assert m.AFFECTED_SOP_CLASS not in rsp.values
    assert_still_serving(raw_assoc, dimse_node)
    assert "UnicodeEncodeError" not in dimse_node.log()


def test_c_store_with_a_non_ascii_sop_instance_uid_gets_c000(raw_assoc: socket.socket,
                                                             dimse_node: Any,
                                                             tmp_path: Path) -> None:
    ds = make_ct(tmp_path / "ct.dcm")
    data = m.encode_dataset(dcmread(tmp_path / "ct.dcm"), ImplicitVRLittleEndian)
    bad_uid = ds.SOPInstanceUID.encode()[:-1] + b"\xb3"
    command = raw_command((0x0002, CTImageStorage.encode()), (0x0100, us(0x01)),
                          (0x0110, us(8)), (0x0700, us(0)), (0x0800, us(0)),
                          (0x1000, bad_uid + b"\x00" * (len(bad_uid) % 2)))
    raw_assoc.sendall(pdata(3, command, data))
    rsp = response(raw_assoc)
    # PS3.4 B.2.3 "Error: Cannot understand".
    assert (rsp.field, rsp.responded_to, rsp.status) == (0x8001, 8, 0xC000)
    assert "Affected SOP Instance UID holds bytes no UID may hold" in \
        rsp.text(m.ERROR_COMMENT)
    assert rsp.affected_sop_class == CTImageStorage  # what can be echoed is
    assert m.AFFECTED_SOP_INSTANCE not in rsp.values
    assert_still_serving(raw_assoc, dimse_node)
    # Nothing of it was stored.
    assert findscu(dimse_node, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID") == []
    assert list(dimse_node.data_dir.rglob("*.dcm")) == []


def test_c_find_with_a_non_ascii_sop_class_uid_gets_0122(raw_assoc: socket.socket,
                                                         dimse_node: Any) -> None:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    data = m.encode_dataset(identifier, ImplicitVRLittleEndian)
    bad = StudyRootQueryRetrieveInformationModelFind.encode()[:-2] + b"\xff\xfe"
    command = raw_command((0x0002, bad), (0x0100, us(0x20)), (0x0110, us(9)),
                          (0x0700, us(0)), (0x0800, us(0)))
    raw_assoc.sendall(pdata(5, command, data))
    rsp = response(raw_assoc)
    assert (rsp.field, rsp.responded_to, rsp.status) == (0x8020, 9, 0x0122)
    assert "Affected SOP Class UID holds bytes" in rsp.text(m.ERROR_COMMENT)
    assert_still_serving(raw_assoc, dimse_node)


# -- C-FIND: dates and times in another format ----------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("StudyDate", "2024-13-45", "use YYYYMMDD, or a range"),
    ("StudyDate", "2024/01/01", "use YYYYMMDD, or a range"),
    ("StudyTime", "25", "use HHMMSS"),
    ("StudyTime", "1200-9999", "use HHMMSS"),
])
def test_c_find_bad_date_or_time_says_the_format(dimse_node: Any, key: str, value: str,
                                                 words: str) -> None:
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", dimse_node.dicom_port, ae_title=dimse_node.aet)
    assert assoc.is_established
    try:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        setattr(identifier, key, value)
        results = list(assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()
    (status, found), = results
    assert found is None
    # PS3.4 C.4.1.1.4: "Identifier does not match SOP Class", with the
    # reason (an LO: its first 64 characters) in the Error Comment; the
    # whole reason is the one QIDO-RS gives.
    with pytest.raises(BadQuery) as refusal:
        constraint_for(key, "DA" if key == "StudyDate" else "TM", value)
    assert words in refusal.value.reason
    assert status.Status == 0xA900
    assert str(status.ErrorComment) == refusal.value.reason[:64].rstrip()
    assert str(status.ErrorComment).startswith(f"{key}: {value!r} is not a ")
    assert echo_ok(dimse_node)


# -- HTTP -------------------------------------------------------------------------------

@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    (tmp_path / "exports").mkdir()
    server = WebServer(tmp_path / "data", export_roots=[str(tmp_path / "exports")]).start()
    yield server
    server.stop()


@pytest.fixture
def stored(web: WebServer) -> dict[str, str]:
    ids = {"study": uid(), "series": uid(), "sop": uid()}
    r = web.stow([make_instance(ids["study"], ids["series"], ids["sop"])])
    assert r.status_code == 200, r.text
    return ids


class KeepAlive:
    """One HTTP/1.1 connection: every request must come back on it, so a
    response that drops the connection fails the test."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.sock = self.conn.sock

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        hdrs = dict(headers or {})
        if payload is not None:
            hdrs["Content-Type"] = "application/json"
        self.conn.request(method, path, body=payload, headers=hdrs)
        r = self.conn.getresponse()
        content = r.read()
        assert self.conn.sock is self.sock, f"{method} {path[:80]}: the connection was dropped"
        assert r.getheader("connection", "").lower() != "close"
        return r.status, {k.lower(): v for k, v in r.getheaders()}, content

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def http_conn(web: WebServer) -> Iterator[KeepAlive]:
    c = KeepAlive(web.port)
    yield c
    c.close()


def refused(conn: KeepAlive, path: str, *words: str, method: str = "GET", body: Any = None,
            status: int = 400) -> str:
    """The refusal's status and reason; then the same connection serves a
    normal request."""
    code, headers, content = conn.request(method, path, body)
    assert code == status, (path[:120], code, content[:300])
    reason = json.loads(content)["error"]
    for word in words:
        assert word in reason, (word, reason)
    for internal in ("Traceback", "Error:", "sqlite", "Overflow", "int()", "Errno"):
        assert internal not in reason, reason
    code, _, _ = conn.request("GET", "/api/v1/health")
    assert code == 200
    return reason


QIDO_PATHS = ("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances")


@pytest.mark.parametrize("name", ["offset", "limit"])
@pytest.mark.parametrize("value", [HUGE, "99999999999999999999999", "%C2%B2", "%D9%A3",
                                   "-1", "1_0", "%2B5", "1.5"])
def test_qido_numeric_parameters(http_conn: KeepAlive, stored: dict[str, str], name: str,
                                 value: str) -> None:
    for path in QIDO_PATHS:
        refused(http_conn, f"{path}?{name}={value}", name, "must be an integer from 0 to",
                "digits 0-9")
    # The largest accepted offset is answered (no match), not a 500.
    code, _, _ = http_conn.request("GET", f"/dicomweb/studies?offset={int(HUGE) - 1}")
    assert code == 204
    code, _, body = http_conn.request("GET", "/dicomweb/studies?limit=1&offset=0")
    assert code == 200 and len(json.loads(body)) == 1


@pytest.mark.parametrize("value", ["99999999999999999999", "2147483648", "%D9%A3", "1_0",
                                   "%2B-5", "1-3", "x"])
def test_integer_matching_values(http_conn: KeepAlive, stored: dict[str, str],
                                 value: str) -> None:
    for key in ("InstanceNumber", "Rows", "SeriesNumber"):
        refused(http_conn, f"/dicomweb/instances?{key}={value}", f"{key}: ",
                "is not an integer from -2147483648 to 2147483647 (digits 0-9)")
    code, _, body = http_conn.request("GET", "/dicomweb/instances?InstanceNumber=%2B1")
    assert code == 200 and len(json.loads(body)) == 1


def test_query_size_is_bounded(http_conn: KeepAlive, stored: dict[str, str]) -> None:
    many = "&".join(["PatientID=x"] * 1000)
    for path in QIDO_PATHS + ("/dicomweb/workitems",):
        refused(http_conn, f"{path}?{many}", "1000 matching parameters", "at most 64")
    uids = ",".join(f"1.2.3.{i}" for i in range(1001))
    refused(http_conn, f"/dicomweb/studies?StudyInstanceUID={uids}", "1001 UIDs",
            "at most 1000")
    # At the bounds: answered.
    code, _, body = http_conn.request(
        "GET", "/dicomweb/studies?" + "&".join(["PatientID=P1"] * 64))
    assert code == 200 and len(json.loads(body)) == 1
    uids = ",".join([stored["study"]] + [f"1.2.3.{i}" for i in range(999)])
    code, _, body = http_conn.request("GET", f"/dicomweb/studies?StudyInstanceUID={uids}")
    assert code == 200 and len(json.loads(body)) == 1


@pytest.mark.parametrize("param, value, words", [
    ("StudyDate", "2024-13-45", "'2024-13-45' is not a date: use YYYYMMDD, or a range "
                                "YYYYMMDD-YYYYMMDD (either end may be left out)"),
    ("StudyDate", "20240231x", "is not a date: use YYYYMMDD"),
    ("StudyDate", "-", "'-' is not a date"),
    ("StudyDate", "%D9%A2%D9%A0%D9%A2%D9%A4%D9%A0%D9%A1%D9%A0%D9%A1", "is not a date"),
    ("StudyTime", "2500", "'2500' is not a time: use HHMMSS"),
    ("StudyTime", "10:15-x", "is not a time: use HHMMSS (or HH, HHMM, HHMMSS.FFFFFF), "
                             "or a range HHMMSS-HHMMSS"),
])
def test_qido_date_and_time_errors_say_the_format(http_conn: KeepAlive, stored: dict[str, str],
                                                  param: str, value: str, words: str) -> None:
    refused(http_conn, f"/dicomweb/studies?{param}={value}", f"{param}: ", words)


def test_ups_search_date_time_and_numbers(http_conn: KeepAlive) -> None:
    refused(http_conn, "/dicomweb/workitems?ScheduledProcedureStepStartDateTime=2024-13",
            "is not a date-time: use YYYYMMDDHHMMSS")
    for name in ("limit", "offset"):
        for value in (HUGE, "%D9%A3", "%C2%B2"):
            refused(http_conn, f"/dicomweb/workitems?{name}={value}", name, "digits 0-9")


@pytest.mark.parametrize("path, words", [
    (f"/api/v1/changes?since={HUGE}", ("since must be an integer from 0 to",)),
    ("/api/v1/changes?since=%D9%A3", ("since", "digits 0-9")),
    (f"/api/v1/changes?limit={HUGE}", ("limit must be an integer from 1 to",)),
    ("/api/v1/changes?limit=0", ("limit must be an integer from 1 to",)),
    (f"/api/v1/changes/stream?since={HUGE}", ("since must be an integer",)),
    (f"/api/v1/jobs?offset={HUGE}", ("offset", "less than or equal to 9223372036854775807")),
    ("/api/v1/jobs?offset=%D9%A3", ("offset", "valid integer")),
    ("/api/v1/jobs?limit=%C2%B2", ("limit", "valid integer")),
    ("/api/v1/jobs?limit=5000", ("limit", "less than or equal to 1000")),
])
def test_api_numeric_parameters(http_conn: KeepAlive, path: str, words: tuple[str, ...]) -> None:
    refused(http_conn, path, *words)


def test_frame_numbers_are_ascii_digits(http_conn: KeepAlive, stored: dict[str, str]) -> None:
    base = (f"/dicomweb/studies/{stored['study']}/series/{stored['series']}/instances/"
            f"{stored['sop']}/frames/")
    for frames in ("%C2%B2", "%D9%A1", "1,%D9%A1", "0", "-1", HUGE, "1_0", "x"):
        refused(http_conn, base + frames, "frame numbers are integers from 1 (digits 0-9)")
    code, _, _ = http_conn.request("GET", base + "2")
    assert code == 404  # a number, but beyond the instance's one frame
    code, headers, _ = http_conn.request("GET", base + "1")
    assert code == 200 and headers["content-type"].startswith("multipart/related")


def test_rendered_parameters(http_conn: KeepAlive, stored: dict[str, str]) -> None:
    base = (f"/dicomweb/studies/{stored['study']}/series/{stored['series']}/instances/"
            f"{stored['sop']}/rendered")
    refused(http_conn, base + "?quality=%D9%A3", "quality must be an integer from 1 to 100")
    refused(http_conn, base + f"?quality={HUGE}", "quality must be an integer from 1 to 100")
    refused(http_conn, base + "?viewport=%D9%A3,10", "viewport values must be integers")
    refused(http_conn, base + f"?viewport=10,10,0,0,{HUGE},1", "viewport values must be")
    refused(http_conn, base + "?window=nan,100", "window center and width must be numbers")
    refused(http_conn, base + "?window=40,1e999", "window center and width must be numbers")
    code, headers, _ = http_conn.request("GET", base + "?quality=80&viewport=8,8")
    assert code == 200 and headers["content-type"] == "image/jpeg"


def test_export_path_no_file_system_takes(http_conn: KeepAlive, web: WebServer,
                                          stored: dict[str, str]) -> None:
    root = web.node.settings.export_roots[0]
    url = f"/api/v1/series/{stored['series']}/export"
    refused(http_conn, url, "is 256 bytes long; a folder name takes at most 255",
            method="POST", body={"path": f"{root}/{'a' * 256}"})
    refused(http_conn, url, "is 400 bytes long", method="POST",
            body={"path": f"{root}/{'é' * 200}"})  # 200 characters, 400 bytes
    refused(http_conn, url, "at most 4095 are taken", method="POST",
            body={"path": root + "/a" * 2100})
    assert not any(Path(root).iterdir())
    # A name of 255 bytes is taken.
    code, _, body = http_conn.request("POST", url, {"path": f"{root}/{'b' * 255}"})
    assert code == 200, body
    assert json.loads(body)["files"] == [f"{stored['sop']}.dcm"]


def test_an_unexpected_failure_is_a_plain_500_and_the_connection_stays(
        http_conn: KeepAlive, web: WebServer, stored: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Faults injected into a DICOMweb route and an API route: the body is a
    sentence, the traceback is in the log."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret /var/lib/pacsnode detail")

    monkeypatch.setattr(web.node.engine, "search_json", broken)
    from pacsnode.remote import jobs
    monkeypatch.setattr(jobs, "list_jobs", broken)
    with caplog.at_level(logging.ERROR):
        for path in ("/dicomweb/studies", "/api/v1/jobs"):
            code, headers, content = http_conn.request("GET", path)
            assert code == 500, (path, content)
            assert json.loads(content) == {"error": INTERNAL_ERROR}
            assert b"secret" not in content
    assert "secret /var/lib/pacsnode detail" in caplog.text  # the log has it
    monkeypatch.undo()
    code, _, body = http_conn.request("GET", "/dicomweb/studies")
    assert code == 200 and len(json.loads(body)) == 1
