"""DIMSE access control against DCMTK's tools and raw associations
(DESIGN.md §8): per-node `allow` checked against the node's host,
`dimse_unknown_ae`, `check_called_ae`, A-ASSOCIATE-RJ for an AE allowed
nothing, status 0x0124 for a refused operation, each refusal logged with
AE and address and audited as a Security Alert; the DIMSE audit events
(Query keys, Instances Transferred with studies and patients); and
`max_associations_per_address` and `max_associations_per_ae` across DIMSE
processes."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from conftest import dcmtk
from dicomfiles import dataset_bytes, make_ct
from dimse_peer import held_to_the_limit, rejection
from test_dimse import run


def _events(server: Any, wanted: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The audit trail of ``server`` once it holds at least ``wanted``
    events besides Application Activity (read from its index)."""
    from pacsnode.audit import list_events
    from pacsnode.index.db import Database
    db = Database(f"sqlite:///{server.data_dir / 'index.sqlite'}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in list_events(db, limit=1000)[0]
                      if e["event"] != "Application Activity"]
            if len(events) >= wanted or time.monotonic() > deadline:
                return events
            time.sleep(0.2)
    finally:
        db.dispose()


@pytest.fixture
def guarded(pacsnode_factory, storescp_factory, tmp_path):
    """A node whose policy: MODALITY may store/echo, VIEWER may find/get/move,
    STORESCP (a C-MOVE destination) may do nothing when it calls, FARAWAY
    is registered at another address, anyone else may only echo; and only
    associations to our own AE title."""
    scp_port, scp_dir = storescp_factory("STORESCP")
    config = tmp_path / "guarded.toml"
    config.write_text(
        'dimse_unknown_ae = ["echo"]\ncheck_called_ae = true\n'
        '[nodes.MODALITY]\naet = "MODALITY"\nhost = "127.0.0.1"\nport = 104\n'
        'allow = ["echo", "store"]\n'
        '[nodes.VIEWER]\naet = "VIEWER"\nhost = "localhost"\nport = 104\n'
        'allow = ["find", "get", "move"]\n'
        f'[nodes.STORESCP]\naet = "STORESCP"\nhost = "127.0.0.1"\nport = {scp_port}\n'
        'allow = []\n'
        '[nodes.FARAWAY]\naet = "FARAWAY"\nhost = "192.0.2.10"\nport = 104\n')
    server = pacsnode_factory(config=str(config))
    server.scp_dir = scp_dir
    return server


#: How DCMTK's tools print status 0x0124 (Refused: Not Authorized).
NOT_AUTHORIZED = re.compile(r"0x0?124\b")


def _out(proc: Any) -> str:
    return proc.stdout + proc.stderr


def test_dimse_policy_with_dcmtk(guarded, tmp_path: Path) -> None:
    node = guarded
    port = str(node.dicom_port)
    ds = make_ct(tmp_path / "ct.dcm", patient_id="PAT-D")
    study = ds.StudyInstanceUID
    blob = node.data_dir / "studies" / study / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"

    # Store: refused for an AE not allowed to (0x0124), done for the modality.
    refused = run(dcmtk("storescu"), "-v", "-aet", "VIEWER", "-aec", node.aet, "127.0.0.1",
                  port, str(tmp_path / "ct.dcm"), check=False)
    assert NOT_AUTHORIZED.search(_out(refused)), _out(refused)
    assert not blob.exists()
    run(dcmtk("storescu"), "-aet", "MODALITY", "-aec", node.aet, "127.0.0.1", port,
        str(tmp_path / "ct.dcm"))
    assert dataset_bytes(blob) == dataset_bytes(tmp_path / "ct.dcm")

    # Echo: anyone (dimse_unknown_ae); a wrong called AE title: rejected.
    ok = run(dcmtk("echoscu"), "-v", "-aet", "SOMEONE", "-aec", node.aet, "127.0.0.1", port)
    assert "Received Echo Response (Success)" in _out(ok)
    wrong_called = run(dcmtk("echoscu"), "-v", "-aet", "SOMEONE", "-aec", "NOT-US",
                       "127.0.0.1", port, check=False)
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in _out(wrong_called), _out(wrong_called)

    # Find: the viewer gets the study; an unknown AE, and a registered AE
    # calling from another address than its node's host, get 0x0124.
    args = ["-S", "-aec", node.aet, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", "-k", "PatientID", "127.0.0.1", port]
    viewer = run(dcmtk("findscu"), "-v", "-aet", "VIEWER", *args)
    assert "PAT-D" in _out(viewer)
    for aet in ("FINDSCU", "FARAWAY"):
        denied = run(dcmtk("findscu"), "-v", "-aet", aet, *args, check=False)
        assert NOT_AUTHORIZED.search(_out(denied)), _out(denied)
        assert "PAT-D" not in _out(denied)

    # Move and get: the viewer's work, refused to the modality.
    q = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    run(dcmtk("movescu"), "-S", "-aet", "VIEWER", "-aec", node.aet, "-aem", "STORESCP", *q,
        "127.0.0.1", port)
    moved = [p for p in node.scp_dir.iterdir() if p.is_file()]
    assert len(moved) == 1 and dcmread(moved[0]).SOPInstanceUID == ds.SOPInstanceUID
    no_move = run(dcmtk("movescu"), "-v", "-S", "-aet", "MODALITY", "-aec", node.aet,
                  "-aem", "STORESCP", *q, "127.0.0.1", port, check=False)
    assert NOT_AUTHORIZED.search(_out(no_move)), _out(no_move)
    assert len([p for p in node.scp_dir.iterdir() if p.is_file()]) == 1
    got_dir, no_dir = tmp_path / "got", tmp_path / "none"
    got_dir.mkdir()
    no_dir.mkdir()
    run(dcmtk("getscu"), "-S", "-aet", "VIEWER", "-aec", node.aet, *q, "-od", str(got_dir),
        "127.0.0.1", port)
    got = [p for p in got_dir.iterdir() if p.is_file()]
    assert len(got) == 1 and dcmread(got[0]).PixelData == ds.PixelData
    no_get = run(dcmtk("getscu"), "-v", "-S", "-aet", "MODALITY", "-aec", node.aet, *q,
                 "-od", str(no_dir), "127.0.0.1", port, check=False)
    assert NOT_AUTHORIZED.search(_out(no_get)), _out(no_get)
    assert not any(no_dir.iterdir())

    # The C-MOVE destination's own AE is allowed nothing: its associations are rejected.
    nothing = run(dcmtk("echoscu"), "-v", "-aet", "STORESCP", "-aec", node.aet, "127.0.0.1",
                  port, check=False)
    assert nothing.returncode != 0
    assert "Calling AE Title Not Recognized" in _out(nothing), _out(nothing)

    # Every refusal is in the log with the AE and the address ...
    log = node.log()
    for line in ("DIMSE store from VIEWER at 127.0.0.1 refused",
                 "DIMSE find from FINDSCU at 127.0.0.1 refused",
                 "DIMSE find from FARAWAY at 127.0.0.1 refused",
                 "DIMSE move from MODALITY at 127.0.0.1 refused",
                 "DIMSE get from MODALITY at 127.0.0.1 refused"):
        assert line in log, line
    assert "association from SOMEONE at 127.0.0.1" in log and "NOT-US" in log
    assert "association from STORESCP at 127.0.0.1" in log

    # ... and in the audit trail, with what was done.
    events = _events(node, 11)
    alerts = [(e["user"], e["detail"]["request"]) for e in events
              if e["event"] == "Security Alert"]
    assert sorted(alerts) == sorted([
        ("VIEWER", "store"), ("SOMEONE", "A-ASSOCIATE-RQ to NOT-US"), ("FINDSCU", "find"),
        ("FARAWAY", "find"), ("MODALITY", "move"), ("MODALITY", "get"),
        ("STORESCP", f"A-ASSOCIATE-RQ to {node.aet}")])
    assert all(e["outcome"] == 4 and e["address"] == "127.0.0.1" for e in events
               if e["event"] == "Security Alert")
    stored = [e for e in events if e["event"] == "DICOM Instances Transferred"
              and e["detail"]["request"] == "C-STORE received"]
    assert [(e["user"], e["studies"], e["patients"], e["detail"]["instances"])
            for e in stored] == [("MODALITY", [study], ["PAT-D"], 1)]
    queries = [e for e in events if e["event"] == "Query"]
    assert [(e["user"], e["studies"]) for e in queries] == [("VIEWER", [study])]
    assert queries[0]["detail"]["keys"] == {"QueryRetrieveLevel": "STUDY",
                                            "StudyInstanceUID": study}
    sent = sorted((e["user"], e["detail"]["request"], e["studies"], e["patients"],
                   e["detail"]["completed"], e["outcome"]) for e in events
                  if e["event"] == "DICOM Instances Transferred" and e not in stored)
    assert sent == [("VIEWER", "C-GET", [study], ["PAT-D"], 1, 0),
                    ("VIEWER", "C-MOVE", [study], ["PAT-D"], 1, 0)]
    assert [e["detail"].get("destination") for e in events
            if e["detail"].get("request") == "C-MOVE"] == ["STORESCP"]


def test_unknown_ae_door_closed(pacsnode_factory, tmp_path: Path) -> None:
    """`dimse_unknown_ae = []`: an AE not in [nodes] cannot associate at
    all; a node calling from its host can."""
    config = tmp_path / "closed.toml"
    config.write_text('dimse_unknown_ae = []\n'
                      '[nodes.KNOWN]\naet = "KNOWN"\nhost = "127.0.0.1"\nport = 104\n')
    node = pacsnode_factory(config=str(config))
    assert rejection(node, "STRANGER") == (1, 1, 3)
    known = AE(ae_title="KNOWN")
    known.add_requested_context(Verification)
    assoc = known.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()
    assert "association from STRANGER at 127.0.0.1" in node.log()


def test_one_address_cannot_take_every_association(pacsnode_factory) -> None:
    """With max_associations_per_address, idle associations from one address
    (spread over two DIMSE processes) stop at that number; another address
    (127.0.0.2) still gets in, and the limit counts across the processes."""
    node = pacsnode_factory(extra_env={"PACSNODE_MAX_ASSOCIATIONS": "8",
                                       "PACSNODE_MAX_ASSOCIATIONS_PER_ADDRESS": "3",
                                       "PACSNODE_DIMSE_PROCESSES": "2"})
    time.sleep(2)  # the worker process is listening too
    held = held_to_the_limit(node, "HOG", 3, "max_associations_per_address 3")
    other = AE(ae_title="OTHER")
    other.add_requested_context(Verification)
    others = [other.associate("127.0.0.1", node.dicom_port, ae_title=node.aet,
                              bind_address=("127.0.0.2", 0)) for _ in range(2)]
    assert all(a.is_established and a.send_c_echo().Status == 0 for a in others)
    pids = {line.rsplit("pid ", 1)[1].rstrip(")") for line in node.log().splitlines()
            if "association accepted: HOG" in line}
    assert len(pids) == 2  # the three of 127.0.0.1 were spread over both processes
    held.pop().release()
    time.sleep(0.3)
    again = held[0].ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
    assert again.is_established and again.send_c_echo().Status == 0
    for a in [again, *held, *others]:
        a.release()


def test_one_calling_ae_cannot_take_every_association(pacsnode_factory,
                                                      tmp_path: Path) -> None:
    """With max_associations_per_ae, idle associations of one calling AE
    title from three addresses (over two DIMSE processes) stop at that
    number: DCMTK's echoscu under that title is rejected, from a fourth
    address too, while another title from the same address gets in.  An
    impostor using a node's title from other addresses fills only its own
    places: the node calling from its host still gets in."""
    config = tmp_path / "ct1.toml"
    config.write_text('[nodes.CT1]\naet = "CT1"\nhost = "127.0.0.1"\nport = 104\n')
    node = pacsnode_factory(config=str(config),
                            extra_env={"PACSNODE_MAX_ASSOCIATIONS": "12",
                                       "PACSNODE_MAX_ASSOCIATIONS_PER_AE": "3",
                                       "PACSNODE_DIMSE_PROCESSES": "2"})
    time.sleep(2)  # the worker process is listening too
    hog = AE(ae_title="HOG")
    hog.add_requested_context(Verification)
    held = [hog.associate("127.0.0.1", node.dicom_port, ae_title=node.aet,
                          bind_address=(f"127.0.0.{n}", 0)) for n in (1, 2, 3)]
    assert all(a.is_established for a in held)
    port = str(node.dicom_port)
    refused = run(dcmtk("echoscu"), "-v", "-aet", "HOG", "-aec", node.aet, "127.0.0.1", port,
                  check=False)
    assert refused.returncode != 0
    assert "Association Rejected" in _out(refused)
    assert "Local Limit Exceeded" in _out(refused)
    assert re.search(r"association rejected: HOG from 127\.0\.0\.1:\d+: local limit exceeded "
                     r"\(max_associations_per_ae 3\)", node.log())
    # The same AE from an address it does not use yet: still its limit.
    other_address = hog.associate("127.0.0.1", node.dicom_port, ae_title=node.aet,
                                  bind_address=("127.0.0.4", 0))
    assert other_address.is_rejected
    rj = other_address.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2)
    # Another AE title from the same address is not held back.
    for _ in range(2):
        ok = run(dcmtk("echoscu"), "-aet", "OTHER", "-aec", node.aet, "127.0.0.1", port)
        assert ok.returncode == 0
    pids = {line.rsplit("pid ", 1)[1].rstrip(")") for line in node.log().splitlines()
            if "association accepted: HOG" in line}
    assert len(pids) == 2  # the three of HOG were spread over both processes
    held.pop().release()
    time.sleep(0.3)
    again = run(dcmtk("echoscu"), "-aet", "HOG", "-aec", node.aet, "127.0.0.1", port)
    assert again.returncode == 0

    impostor = AE(ae_title="CT1")
    impostor.add_requested_context(Verification)
    fakes = [impostor.associate("127.0.0.1", node.dicom_port, ae_title=node.aet,
                                bind_address=(f"127.0.0.{n}", 0)) for n in (5, 6, 7, 8)]
    assert [a.is_established for a in fakes] == [True, True, True, False]
    genuine = run(dcmtk("echoscu"), "-v", "-aet", "CT1", "-aec", node.aet, "127.0.0.1", port)
    assert "Received Echo Response (Success)" in _out(genuine)
    for a in held + fakes:
        if a.is_established:
            a.release()
