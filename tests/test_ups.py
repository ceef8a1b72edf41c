"""UPS-RS (PS3.18 11, PS3.4 Annex CC) against a real node: the ASGI app under
uvicorn on a loopback port, spoken to with httpx (and dicomweb-client's HTTP
session).  Every response body is recorded; no Transaction UID may ever show up
in one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydicom.dataset import Dataset
from sqlalchemy import select

from conftest import free_port
from pacsnode.config import load_settings
from pacsnode.index.schema import changes
from pacsnode.node import Node
from pacsnode.web.app import create_app

UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
DICOM_JSON = {"Content-Type": "application/dicom+json", "Accept": "application/dicom+json"}

# Tags, as they appear in DICOM JSON.
STATE = "00741000"
TRANSACTION = "00081195"
LABEL = "00741204"
PRIORITY = "00741200"
START = "00404005"
MODIFIED = "00404010"
WORKLIST_LABEL = "00741202"
SOP_CLASS = "00080016"
SOP_INSTANCE = "00080018"
PATIENT_NAME = "00100010"
PROGRESS = "00741002"
PERFORMED = "00741216"
WORKITEM_CODES = "00404018"


# -- building Workitems ------------------------------------------------------------

def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def workitem(uid: str | None = None, *, start: str = "20240102093000", label: str = "CT head",
             patient: str = "Doe^Jane", patient_id: str = "P1",
             codes: list[tuple[str, str, str]] | None = None, priority: str = "MEDIUM",
             worklist_label: str | None = "AI", **extra: Any) -> dict[str, Any]:
    """A Workitem that meets the N-CREATE column of PS3.4 Table CC.2.5-3."""
    ds = Dataset()
    if uid:
        ds.SOPInstanceUID = uid
    ds.ProcedureStepState = "SCHEDULED"
    ds.ScheduledProcedureStepPriority = priority
    ds.ProcedureStepLabel = label
    if worklist_label is not None:
        ds.WorklistLabel = worklist_label
    ds.ScheduledProcedureStepStartDateTime = start
    ds.InputReadinessState = "READY"
    ds.ScheduledProcessingParametersSequence = []
    ds.ScheduledStationNameCodeSequence = [code("AI-1", "99LOCAL", "AI station 1")]
    ds.ScheduledStationClassCodeSequence = []
    ds.ScheduledStationGeographicLocationCodeSequence = []
    ds.ScheduledWorkitemCodeSequence = [code(*c) for c in
                                        (codes or [("110005", "DCM", "Interpretation")])]
    ds.CommentsOnTheScheduledProcedureStep = ""
    ds.InputInformationSequence = []
    ds.PatientName = patient
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = ""
    ds.IssuerOfPatientIDQualifiersSequence = []
    ds.OtherPatientIDsSequence = []
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.AdmissionID = ""
    ds.IssuerOfAdmissionIDSequence = []
    ds.AdmittingDiagnosesDescription = ""
    ds.AdmittingDiagnosesCodeSequence = []
    request = Dataset()
    request.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    request.AccessionNumber = "ACC1"
    request.IssuerOfAccessionNumberSequence = []
    request.OrderPlacerIdentifierSequence = []
    request.OrderFillerIdentifierSequence = []
    request.RequestedProcedureID = "RP1"
    request.RequestedProcedureDescription = "CT head"
    request.RequestedProcedureCodeSequence = []
    ds.ReferencedRequestSequence = [request]
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds.to_json_dict()


def performed_info() -> dict[str, Any]:
    """What an owner sets before COMPLETED (Final State code P)."""
    item = Dataset()
    item.PerformedStationNameCodeSequence = [code("AI-1", "99LOCAL", "AI station 1")]
    item.PerformedProcedureStepStartDateTime = "20240102093500"
    item.PerformedWorkitemCodeSequence = [code("110005", "DCM", "Interpretation")]
    item.PerformedProcedureStepEndDateTime = "20240102094000"
    item.OutputInformationSequence = []
    ds = Dataset()
    ds.UnifiedProcedureStepPerformedProcedureSequence = [item]
    return ds.to_json_dict()


def state_body(state: str, tx: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {STATE: {"vr": "CS", "Value": [state]}}
    if tx is not None:
        body[TRANSACTION] = {"vr": "UI", "Value": [tx]}
    return body


def value(obj: dict[str, Any], tag: str) -> Any:
    values = obj.get(tag, {}).get("Value") or [None]
    return values[0]


# -- a node under uvicorn, and a client that keeps every response body ----------------

class UPSNode:
    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        settings = load_settings(overrides={"data_dir": data_dir, "fsync": False, **overrides},
                                 environ={})
        self.node = Node(settings)
        self.port = free_port()
        config = uvicorn.Config(create_app(self.node), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.node.close()

    def changes(self) -> list[tuple[str, str, str]]:
        with self.node.db.read() as conn:
            rows = conn.execute(select(changes.c.action, changes.c.level, changes.c.instance_uid)
                                .where(changes.c.level == "workitem")
                                .order_by(changes.c.seq)).all()
        return [tuple(r) for r in rows]


class Client:
    """httpx against /dicomweb, recording every body and every Transaction
    UID it sends."""

    def __init__(self, base: str) -> None:
        self.bodies: list[bytes] = []
        self.transaction_uids: set[str] = set()
        self._n = 0
        self.http = httpx.Client(base_url=base, timeout=30,
                                 event_hooks={"response": [self._keep]})

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.bodies.append(response.content)

    def tx(self) -> str:
        self._n += 1
        uid = f"1.2.826.0.1.3680043.8.498.99{int(time.time() * 1000)}{self._n}"
        self.transaction_uids.add(uid)
        return uid

    def create(self, body: Any, query: str = "") -> httpx.Response:
        return self.http.post("/workitems" + query, content=json.dumps(body), headers=DICOM_JSON)

    def get(self, uid: str) -> httpx.Response:
        return self.http.get(f"/workitems/{uid}", headers={"Accept": "application/dicom+json"})

    def update(self, uid: str, body: Any, query: str = "") -> httpx.Response:
        return self.http.post(f"/workitems/{uid}{query}", content=json.dumps(body),
                              headers=DICOM_JSON)

    def state(self, uid: str, state: str, tx: str | None) -> httpx.Response:
        return self.http.put(f"/workitems/{uid}/state", content=json.dumps(state_body(state, tx)),
                             headers=DICOM_JSON)

    def cancel(self, uid: str, body: Any = None) -> httpx.Response:
        content = json.dumps(body) if body is not None else b""
        return self.http.post(f"/workitems/{uid}/cancelrequest", content=content,
                              headers=DICOM_JSON)

    def search(self, **params: Any) -> httpx.Response:
        return self.http.get("/workitems", params=params,
                             headers={"Accept": "application/dicom+json"})

    def assert_no_transaction_uid_leaked(self) -> None:
        assert self.bodies
        for body in self.bodies:
            text = body.decode("utf-8", "replace")
            assert TRANSACTION not in text
            for tx in self.transaction_uids:
                assert tx not in text


@pytest.fixture
def ups(tmp_path: Path, database_url: str) -> Iterator[UPSNode]:
    """A node on SQLite, then on PostgreSQL (conftest's ``database_url``)."""
    node = UPSNode(tmp_path / "data", database_url=database_url)
    yield node
    node.stop()


@pytest.fixture
def client(ups: UPSNode) -> Iterator[Client]:
    c = Client(ups.base)
    yield c
    c.http.close()
    c.assert_no_transaction_uid_leaked()


def refused(response: httpx.Response, status: int, *words: str) -> str:
    """A refusal: the status, a `299 <host> "<reason>"` Warning and a JSON
    body carrying the same reason."""
    assert response.status_code == status, (response.status_code, response.text)
    warning = response.headers.get("warning", "")
    assert warning.startswith("299 127.0.0.1:") and warning.endswith('"'), warning
    reason = response.json()["error"]
    assert reason and reason.replace('"', "'")[:200] in warning
    for word in words:
        assert word.lower() in reason.lower(), (word, reason)
    return reason


# -- Create ---------------------------------------------------------------------------

UID1 = "1.2.826.0.1.3680043.8.498.1001"


def test_create_in_both_query_forms_and_retrieve(client: Client, ups: UPSNode) -> None:
    r = client.create(workitem(), f"?{UID1}")  # raw form: POST /workitems?{workitem}
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{ups.base}/workitems/{UID1}"
    assert r.headers["content-location"] == r.headers["location"]
    assert r.content == b""

    uid2 = "1.2.826.0.1.3680043.8.498.1002"
    r = client.create([workitem(worklist_label=None)], f"?AffectedSOPInstanceUID={uid2}")
    assert r.status_code == 201, r.text  # an array of one; WorklistLabel left to the server

    uid3 = "1.2.826.0.1.3680043.8.498.1003"
    assert client.create(workitem(uid3)).status_code == 201  # UID from the body

    r = client.create(workitem())  # no UID at all: the server makes one
    assert r.status_code == 201
    generated = r.headers["location"].rsplit("/", 1)[1]
    assert generated.startswith("2.25.")

    r = client.get(UID1)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom+json")
    assert r.headers["content-location"] == f"{ups.base}/workitems/{UID1}"
    [item] = r.json()
    assert value(item, SOP_CLASS) == UPS_PUSH
    assert value(item, SOP_INSTANCE) == UID1
    assert value(item, STATE) == "SCHEDULED"
    assert value(item, LABEL) == "CT head"
    assert value(item, WORKLIST_LABEL) == "AI"
    assert len(value(item, MODIFIED)) >= 14  # filled by the server
    assert item[PROGRESS] == {"vr": "SQ", "Value": []} or "Value" not in item[PROGRESS]
    assert TRANSACTION not in item

    [item2] = client.get(uid2).json()
    assert value(item2, WORKLIST_LABEL) == "PACSNODE"  # filled: the AE title
    assert value(client.get(generated).json()[0], SOP_INSTANCE) == generated

    assert [c[0] for c in ups.changes()] == ["created"] * 4
    assert [c[2] for c in ups.changes()] == [UID1, uid2, uid3, generated]


def test_create_refusals(client: Client) -> None:
    assert client.create(workitem(UID1)).status_code == 201
    refused(client.create(workitem(UID1)), 409, "already exists")
    refused(client.create(workitem(), f"?{UID1}"), 409, "already exists")

    uid = "1.2.826.0.1.3680043.8.498.1010"
    body = workitem()
    del body[PRIORITY]
    refused(client.create(body, f"?{uid}"), 400, "ScheduledProcedureStepPriority",
            "type 1")
    body = workitem()
    del body["00404025"]  # Scheduled Station Name Code Sequence, type 2: created empty
    lenient = "1.2.826.0.1.3680043.8.498.1011"
    assert client.create(body, f"?{lenient}").status_code == 201
    got = client.get(lenient).json()[0]
    assert got["00404025"] == {"vr": "SQ"} or got["00404025"].get("Value") == []
    body = workitem()
    body[LABEL] = {"vr": "LO"}  # present but empty: type 1 wants a value
    refused(client.create(body, f"?{uid}"), 400, "ProcedureStepLabel")
    body = workitem()
    body[STATE] = {"vr": "CS", "Value": ["IN PROGRESS"]}
    refused(client.create(body, f"?{uid}"), 400, "SCHEDULED")
    refused(client.create(workitem(priority="URGENT"), f"?{uid}"), 400, "HIGH, MEDIUM, LOW")
    refused(client.create(workitem(start="2024-13-45"), f"?{uid}"), 400,
            "ScheduledProcedureStepStartDateTime")
    body = workitem()
    body[TRANSACTION] = {"vr": "UI", "Value": ["1.2.3.4"]}
    refused(client.create(body, f"?{uid}"), 400, "TransactionUID")
    body = workitem()
    body[PROGRESS] = {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [50]}}]}
    refused(client.create(body, f"?{uid}"), 400, "must be empty")
    body = workitem()
    body[WORKITEM_CODES] = {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["X"]}}]}
    refused(client.create(body, f"?{uid}"), 400, "CodeMeaning")
    body = workitem()
    body["0040A370"]["Value"][0].pop("0020000D")  # Referenced Request > Study UID, type 1
    refused(client.create(body, f"?{uid}"), 400, "ReferencedRequestSequence[1] > StudyInstanceUID")
    body = workitem()
    body[SOP_CLASS] = {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}
    refused(client.create(body, f"?{uid}"), 400, "UPS Push")
    refused(client.create(workitem("1.2.3.4"), f"?{uid}"), 400, "differ")
    refused(client.create(workitem(), "?1.2.x"), 400, "not a valid UID")
    refused(client.create([workitem(), workitem()], f"?{uid}"), 400, "array of 2")
    refused(client.create("just text", f"?{uid}"), 400)
    r = client.http.post(f"/workitems?{uid}", content=b"{not json", headers=DICOM_JSON)
    refused(r, 400, "not JSON")
    r = client.http.post(f"/workitems?{uid}", content=json.dumps(workitem()),
                         headers={"Content-Type": "application/dicom+xml"})
    refused(r, 415)
    assert client.get(uid).status_code == 404  # nothing of it was stored


def test_not_found_and_bad_uids(client: Client) -> None:
    unknown = "1.2.826.0.1.3680043.8.498.404"
    refused(client.get(unknown), 404, "no knowledge")
    refused(client.update(unknown, {}), 404, "not found")
    refused(client.state(unknown, "IN PROGRESS", client.tx()), 404)
    refused(client.cancel(unknown), 404)
    refused(client.get("1.2.abc"), 400, "not a valid UID")
    r = client.http.get(f"/workitems/{unknown}", headers={"Accept": "application/dicom+xml"})
    refused(r, 406)
    r = client.http.post(f"/workitems/{unknown}/subscribers/MYAE")
    refused(r, 501, "Watch")
    r = client.http.get(f"/workitems/{unknown}/state")
    refused(r, 405, "allowed: PUT")
    assert r.headers["allow"] == "PUT"
    refused(client.http.delete(f"/workitems/{unknown}"), 405)
    refused(client.http.get(f"/workitems/{unknown}/nothing"), 404)


# -- the state machine, every legal and illegal transition ------------------------------

def test_walk_through_every_transition_to_completed(client: Client, ups: UPSNode) -> None:
    assert client.create(workitem(), f"?{UID1}").status_code == 201
    before = value(client.get(UID1).json()[0], MODIFIED)

    # Update while SCHEDULED: no Transaction UID needed; sequences replaced whole.
    time.sleep(0.01)
    new_codes = Dataset()
    new_codes.ScheduledWorkitemCodeSequence = [code("110001", "DCM", "Image Processing"),
                                               code("110002", "DCM", "Quality Control")]
    new_codes.ScheduledProcedureStepPriority = "HIGH"
    r = client.update(UID1, new_codes.to_json_dict())
    assert r.status_code == 200, r.text
    item = client.get(UID1).json()[0]
    assert value(item, PRIORITY) == "HIGH"
    assert [value(c, "00080100") for c in item[WORKITEM_CODES]["Value"]] == ["110001", "110002"]
    assert value(item, MODIFIED) != before  # "SCP shall use time of SET"

    # Illegal updates while SCHEDULED.
    refused(client.update(UID1, {}, f"?transaction={client.tx()}"), 400,
            "did not reference a claimed Workitem")
    refused(client.update(UID1, state_body("IN PROGRESS", None)), 400,
            "Change Workitem State")
    refused(client.update(UID1, {PATIENT_NAME: {"vr": "PN", "Value": [{"Alphabetic": "X^Y"}]}}),
            400, "PatientName", "not allowed")
    assert client.update(UID1, {PATIENT_NAME: item[PATIENT_NAME]}).status_code == 200
    refused(client.update(UID1, {LABEL: {"vr": "LO"}}), 400, "ProcedureStepLabel", "emptied")
    refused(client.update(UID1, {PRIORITY: {"vr": "CS", "Value": ["SOON"]}}), 400, "SOON")

    # Illegal state changes while SCHEDULED.
    refused(client.state(UID1, "COMPLETED", client.tx()), 409, "not yet IN PROGRESS")
    refused(client.state(UID1, "CANCELED", client.tx()), 409, "not yet IN PROGRESS")
    refused(client.state(UID1, "SCHEDULED", client.tx()), 400, "only when it is created")
    refused(client.state(UID1, "IN PROGRESS", None), 400, "Transaction UID is missing")
    refused(client.state(UID1, "DONE", client.tx()), 400, "not one of")

    # Claim.
    owner = client.tx()
    r = client.state(UID1, "IN PROGRESS", owner)
    assert r.status_code == 200, r.text
    assert r.content == b""
    item = client.get(UID1).json()[0]
    assert value(item, STATE) == "IN PROGRESS"
    assert TRANSACTION not in item

    # Claimed: others are refused.
    refused(client.state(UID1, "IN PROGRESS", client.tx()), 400, "Transaction UID is incorrect")
    refused(client.state(UID1, "IN PROGRESS", owner), 409, "already IN PROGRESS")
    refused(client.update(UID1, {LABEL: {"vr": "LO", "Value": ["x"]}}), 400,
            "Transaction UID is missing")
    refused(client.update(UID1, {LABEL: {"vr": "LO", "Value": ["x"]}},
                          f"?transaction={client.tx()}"), 400, "Transaction UID is incorrect")
    reason = refused(client.cancel(UID1), 409, "IN PROGRESS", "Watch/Event")
    assert "Change Workitem State" in reason
    refused(client.state(UID1, "COMPLETED", client.tx()), 400, "incorrect")

    # The owner cannot complete before the final state requirements are met.
    reason = refused(client.state(UID1, "COMPLETED", owner), 409, "final state requirements")
    assert "UnifiedProcedureStepPerformedProcedureSequence has no value" in reason
    partial = performed_info()
    partial[PERFORMED]["Value"][0].pop("00404051")  # no end date-time yet
    assert client.update(UID1, partial, f"?{owner}").status_code == 200  # raw form
    reason = refused(client.state(UID1, "COMPLETED", owner), 409, "final state")
    assert "PerformedProcedureStepEndDateTime has no value" in reason
    r = client.update(UID1, performed_info(), f"?transaction={owner}")  # named form
    assert r.status_code == 200, r.text

    r = client.state(UID1, "COMPLETED", owner)
    assert r.status_code == 200, r.text
    assert "warning" not in r.headers
    item = client.get(UID1).json()[0]  # completed Workitems stay retrievable
    assert value(item, STATE) == "COMPLETED"
    assert value(item[PERFORMED]["Value"][0], "00404051") == "20240102094000"

    # Final: only the warning for asking again; everything else refused.
    r = client.state(UID1, "COMPLETED", owner)
    assert r.status_code == 200
    assert "already in the requested state of COMPLETED" in r.headers["warning"]
    refused(client.state(UID1, "COMPLETED", client.tx()), 400, "incorrect")
    refused(client.state(UID1, "CANCELED", owner), 409, "may no longer be updated")
    refused(client.state(UID1, "IN PROGRESS", owner), 409, "may no longer be updated")
    refused(client.update(UID1, {LABEL: {"vr": "LO", "Value": ["x"]}}, f"?transaction={owner}"),
            400, "COMPLETED")
    refused(client.cancel(UID1), 409, "already COMPLETED")
    assert value(client.get(UID1).json()[0], LABEL) == "CT head"

    assert [c[0] for c in ups.changes()] == [
        "created", "updated", "updated", "state:IN PROGRESS", "updated", "updated",
        "state:COMPLETED"]
    assert {c[2] for c in ups.changes()} == {UID1}
    client.assert_no_transaction_uid_leaked()


def test_cancel_request_and_owner_cancel(client: Client, ups: UPSNode) -> None:
    uid_a = "1.2.826.0.1.3680043.8.498.2001"
    uid_b = "1.2.826.0.1.3680043.8.498.2002"
    assert client.create(workitem(uid_a)).status_code == 201
    assert client.create(workitem(uid_b)).status_code == 201

    # A SCHEDULED Workitem: the cancel request cancels it (202).
    info = Dataset()
    info.ReasonForCancellation = "Patient left"
    info.ContactDisplayName = "Dr. Who"
    info.ContactURI = "tel:+15555550100"
    r = client.cancel(uid_a, info.to_json_dict())
    assert r.status_code == 202, r.text
    item = client.get(uid_a).json()[0]  # canceled Workitems stay retrievable
    assert value(item, STATE) == "CANCELED"
    progress = item[PROGRESS]["Value"][0]
    assert len(value(progress, "00404052")) >= 14  # cancellation date-time, by the server
    assert value(progress, "00741238") == "Patient left"
    assert value(progress["0074100E"]["Value"][0], "00080100") == "110513"
    assert value(progress["00741008"]["Value"][0], "0074100A") == "tel:+15555550100"
    reason = refused(client.cancel(uid_a), 409)
    assert reason == "The UPS is already in the requested state of CANCELED."
    refused(client.state(uid_a, "CANCELED", client.tx()), 400, "incorrect")
    refused(client.update(uid_a, {LABEL: {"vr": "LO", "Value": ["x"]}}), 400, "CANCELED")

    # The owner cancels an IN PROGRESS Workitem with the Change State transaction.
    owner = client.tx()
    assert client.state(uid_b, "IN PROGRESS", owner).status_code == 200
    reason_code = Dataset()
    reason_code.ProcedureStepProgressInformationSequence = [Dataset()]
    reason_code.ProcedureStepProgressInformationSequence[0].\
        ProcedureStepDiscontinuationReasonCodeSequence = [
            code("110514", "DCM", "Incorrect worklist entry selected")]
    assert client.update(uid_b, reason_code.to_json_dict(), f"?{owner}").status_code == 200
    r = client.state(uid_b, "CANCELED", owner)
    assert r.status_code == 200, r.text
    item = client.get(uid_b).json()[0]
    assert value(item, STATE) == "CANCELED"
    progress = item[PROGRESS]["Value"][0]
    assert value(progress, "00404052")  # filled by the server
    assert value(progress["0074100E"]["Value"][0], "00080100") == "110514"  # kept
    r = client.state(uid_b, "CANCELED", owner)
    assert r.status_code == 200
    assert "already in the requested state of CANCELED" in r.headers["warning"]
    refused(client.state(uid_b, "COMPLETED", owner), 409, "may no longer be updated")

    assert [c[:2] for c in ups.changes()] == [
        ("created", "workitem"), ("created", "workitem"), ("state:CANCELED", "workitem"),
        ("state:IN PROGRESS", "workitem"), ("updated", "workitem"),
        ("state:CANCELED", "workitem")]


# -- Search --------------------------------------------------------------------------

@pytest.fixture
def worklist(client: Client) -> dict[str, str]:
    """Four Workitems: two SCHEDULED, one IN PROGRESS, one COMPLETED."""
    uids = {name: f"1.2.826.0.1.3680043.8.498.30{i}" for i, name in enumerate("abcd")}
    specs = {
        "a": dict(start="20240102080000", patient="Doe^Jane", patient_id="P1",
                  codes=[("110005", "DCM", "Interpretation")]),
        "b": dict(start="20240102140000", patient="Smith^John", patient_id="P2",
                  codes=[("110001", "DCM", "Image Processing"),
                         ("110002", "DCM", "Quality Control")]),
        "c": dict(start="20240103090000", patient="Müller^Jörg", patient_id="P3",
                  codes=[("110005", "DCM", "Interpretation")]),
        "d": dict(start="20240105090000", patient="Doe^John", patient_id="P4",
                  codes=[("X1", "99LOCAL", "Local thing")]),
    }
    for name, spec in specs.items():
        assert client.create(workitem(uids[name], **spec)).status_code == 201
    tx_c = client.tx()
    assert client.state(uids["c"], "IN PROGRESS", tx_c).status_code == 200
    tx_d = client.tx()
    assert client.state(uids["d"], "IN PROGRESS", tx_d).status_code == 200
    assert client.update(uids["d"], performed_info(), f"?{tx_d}").status_code == 200
    assert client.state(uids["d"], "COMPLETED", tx_d).status_code == 200
    return uids


def found(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    return [value(item, SOP_INSTANCE) for item in response.json()]


def test_search_by_state_dates_codes_and_patient(client: Client, worklist: dict[str, str]
                                                 ) -> None:
    w = worklist
    assert found(client.search(ProcedureStepState="SCHEDULED")) == [w["a"], w["b"]]
    assert found(client.search(ProcedureStepState="IN PROGRESS")) == [w["c"]]
    assert found(client.search(**{"00741000": "COMPLETED"})) == [w["d"]]  # tag form
    assert len(found(client.search())) == 4

    # Scheduled start date-time: ranges, open ends, a date-only range.
    assert found(client.search(ScheduledProcedureStepStartDateTime="20240102-20240102")) == \
        [w["a"], w["b"]]
    assert found(client.search(
        ScheduledProcedureStepStartDateTime="20240102120000-20240103120000")) == [w["b"], w["c"]]
    assert found(client.search(ScheduledProcedureStepStartDateTime="20240103-")) == \
        [w["c"], w["d"]]
    assert found(client.search(ScheduledProcedureStepStartDateTime="-20240102090000")) == \
        [w["a"]]
    assert found(client.search(ScheduledProcedureStepStartDateTime="20240102080000")) == \
        [w["a"]]

    # Sequence item matching.
    assert found(client.search(**{"ScheduledWorkitemCodeSequence.CodeValue": "110005"})) == \
        [w["a"], w["c"]]
    assert found(client.search(**{"00404018.00080100": "110002"})) == [w["b"]]
    assert found(client.search(**{"ScheduledWorkitemCodeSequence.CodeValue": "1100*",
                                  "ProcedureStepState": "SCHEDULED"})) == [w["a"], w["b"]]
    # Both item constraints must hold in the same item (C.2.2.2.6).
    assert found(client.search(**{"ScheduledWorkitemCodeSequence.CodeValue": "110001",
                                  "ScheduledWorkitemCodeSequence.CodeMeaning":
                                      "Image Processing"})) == [w["b"]]
    r = client.search(**{"ScheduledWorkitemCodeSequence.CodeValue": "110001",
                         "ScheduledWorkitemCodeSequence.CodeMeaning": "Quality Control"})
    assert r.status_code == 204 and r.content == b""
    assert found(client.search(**{"ReferencedRequestSequence.AccessionNumber": "ACC1",
                                  "PatientID": "P2"})) == [w["b"]]

    # Patients: PN case-insensitive, wildcards, fuzzy; IDs exact; UID lists.
    assert found(client.search(PatientName="doe^jane")) == [w["a"]]
    assert found(client.search(PatientName="DOE*")) == [w["a"], w["d"]]
    assert found(client.search(PatientName="jo", fuzzymatching="true")) == [w["b"], w["c"],
                                                                            w["d"]]
    assert found(client.search(PatientName="müller^jörg")) == [w["c"]]
    assert found(client.search(PatientID="P3")) == [w["c"]]
    assert found(client.search(SOPInstanceUID=f"{w['a']},{w['d']}")) == [w["a"], w["d"]]
    assert client.search(PatientID="nobody").status_code == 204


def test_search_returns_includefield_and_pages(client: Client, worklist: dict[str, str]
                                               ) -> None:
    w = worklist
    [item] = client.search(PatientID="P1").json()
    # Return keys of type 1 and 2, present even when empty.
    for tag in (SOP_CLASS, SOP_INSTANCE, STATE, PRIORITY, LABEL, WORKLIST_LABEL, START,
                PATIENT_NAME, "00100020", "00404025", "0040A370", "0020000D"):
        assert tag in item, tag
    assert value(item, "0020000D") is None  # StudyInstanceUID: present, empty
    assert "00400400" not in item  # Comments: not a default return key
    assert TRANSACTION not in item
    [item] = client.search(PatientID="P1", includefield="CommentsOnTheScheduledProcedureStep,"
                                                        "00404010").json()
    assert "00400400" in item and value(item, MODIFIED)
    [item] = client.search(PatientID="P4", includefield="all").json()
    assert value(item[PERFORMED]["Value"][0], "00404050") == "20240102093500"
    assert TRANSACTION not in item

    assert found(client.search(limit=2)) == [w["a"], w["b"]]
    assert found(client.search(limit=2, offset=2)) == [w["c"], w["d"]]
    assert found(client.search(offset=3)) == [w["d"]]
    assert client.search(offset=4).status_code == 204


def test_search_bad_queries(client: Client, worklist: dict[str, str]) -> None:
    refused(client.search(NoSuchAttribute="x"), 400, "unknown attribute")
    refused(client.search(ScheduledProcedureStepStartDateTime="2024-13-99"), 400)
    refused(client.search(ScheduledProcedureStepStartDateTime="20240105-20240101"), 400,
            "ends before")
    refused(client.search(limit="abc"), 400, "limit")
    refused(client.search(offset="-1"), 400, "offset")
    refused(client.search(fuzzymatching="maybe"), 400, "fuzzymatching")
    refused(client.search(TransactionUID="1.2.3"), 400, "cannot be queried")
    refused(client.search(AccessionNumber="ACC1"), 400, "not supported")
    refused(client.search(ScheduledWorkitemCodeSequence="110005"), 400, "sequence")
    refused(client.search(**{"PatientName.CodeValue": "x"}), 400, "not a sequence")
    refused(client.search(SOPInstanceUID="1.2.x"), 400, "not a valid UID")


def test_search_paging_warning_at_the_server_limit(tmp_path: Path) -> None:
    node = UPSNode(tmp_path / "small", qido_max_limit=2)
    c = Client(node.base)
    try:
        for i in range(3):
            assert c.create(workitem(f"1.2.826.0.1.3680043.8.498.40{i}")).status_code == 201
        r = c.search()
        assert len(r.json()) == 2
        assert "offset=2" in r.headers["warning"]
        assert len(c.search(offset=2).json()) == 1
    finally:
        c.http.close()
        node.stop()


# -- other clients ---------------------------------------------------------------------

def test_dicomweb_client_session_reads_workitems(client: Client, ups: UPSNode) -> None:
    """dicomweb-client 0.61.2 has no UPS methods (no create_workitem etc.);
    its HTTP layer still speaks to the Worklist Service as any DICOMweb
    client does."""
    from dicomweb_client import DICOMwebClient
    dw = DICOMwebClient(url=ups.base)
    dw._session.hooks["response"].append(  # its bodies are checked for leaks too
        lambda response, *args, **kwargs: client.bodies.append(response.content))
    assert not hasattr(dw, "create_workitem")  # if this fails: use the real methods here
    response = dw._session.post(f"{ups.base}/workitems?{UID1}", data=json.dumps(workitem()),
                                headers={"Content-Type": "application/dicom+json"})
    assert response.status_code == 201
    [item] = dw._http_get_application_json(f"{ups.base}/workitems/{UID1}")
    ds = Dataset.from_json(item)
    assert ds.ProcedureStepState == "SCHEDULED"
    assert ds.SOPClassUID == UPS_PUSH
    results = dw._http_get_application_json(f"{ups.base}/workitems",
                                            params={"PatientName": "DOE^JANE"})
    assert [Dataset.from_json(r).SOPInstanceUID for r in results] == [UID1]
    tx = client.tx()
    response = dw._session.put(f"{ups.base}/workitems/{UID1}/state",
                               data=json.dumps(state_body("IN PROGRESS", tx)),
                               headers={"Content-Type": "application/dicom+json"})
    assert response.status_code == 200
    [item] = dw._http_get_application_json(f"{ups.base}/workitems/{UID1}")
    assert TRANSACTION not in item and tx not in json.dumps(item)


def test_cancel_request_with_a_bad_reason_code_is_refused(client: Client) -> None:
    assert client.create(workitem(UID1)).status_code == 201
    info = Dataset()
    info.ProcedureStepDiscontinuationReasonCodeSequence = [Dataset()]
    info.ProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue = "110513"
    refused(client.cancel(UID1, info.to_json_dict()), 400, "CodeMeaning")
    assert value(client.get(UID1).json()[0], STATE) == "SCHEDULED"


def test_transaction_uid_never_returned_whatever_the_request(client: Client,
                                                             worklist: dict[str, str]) -> None:
    """DESIGN.md §7: (0008,1195) is in no response body, even empty, even
    when a search names it as a return key (by tag, keyword, or all)."""
    w = worklist
    for include in ("00081195", "TransactionUID", "all", "TransactionUID,all",
                    "00081195,PatientID"):
        r = client.search(includefield=include)
        assert found(r) == [w["a"], w["b"], w["c"], w["d"]]
        for item in r.json():
            assert TRANSACTION not in item, (include, item)
        r = client.search(includefield=include, ProcedureStepState="IN PROGRESS")
        assert found(r) == [w["c"]]
        assert TRANSACTION not in r.json()[0]
    # As a matching key, by keyword or tag, with or without a value: refused.
    for key in ("TransactionUID", "00081195"):
        for given in ("", "1.2.3", "*"):
            refused(client.search(**{key: given}), 400, "cannot be queried")
    # Retrieve of a claimed (c), a completed (d) and a scheduled (a) Workitem.
    for uid in (w["a"], w["c"], w["d"]):
        r = client.get(uid)
        assert r.status_code == 200
        assert TRANSACTION not in r.json()[0]
    # The bodies of every response above, and of the creates, claims and
    # update in the fixture, are checked by the client fixture at teardown.
    client.assert_no_transaction_uid_leaked()
