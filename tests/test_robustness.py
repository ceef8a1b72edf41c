"""Bad input and faults on the DIMSE port: clear failures, the node keeps
serving, nothing already stored is touched; and a kill -9 loses nothing
that was acknowledged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from conftest import dcmtk
from dicomfiles import dataset_bytes, make_ct
from dimse_peer import c_store_raw, echo_ok
from test_dimse import findscu, run


def raw_store(server, ds, tmp_path: Path, *, command_sop_uid: str | None = None,
              truncate: int | None = None) -> int:
    """C-STORE ``ds`` as raw bytes (``c_store_raw``: the command's SOP
    Instance UID comes from the file meta, the bytes are sent unparsed),
    with another SOP Instance UID in the command or cut after ``truncate``
    bytes of its data set; the status."""
    from pydicom.filewriter import write_file_meta_info
    path = tmp_path / f"raw-{time.monotonic_ns()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    body = dataset_bytes(path)
    meta = ds.file_meta
    meta.MediaStorageSOPInstanceUID = command_sop_uid or ds.SOPInstanceUID
    with open(path, "wb") as fh:  # the file meta says what the command will say
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, meta, enforce_standard=True)
        fh.write(body)
    if truncate is not None:
        size = len(path.read_bytes()) - len(dataset_bytes(path))
        with open(path, "r+b") as fh:
            fh.truncate(size + truncate)
    return c_store_raw(server, path, ExplicitVRLittleEndian)[0]


@pytest.fixture
def node(pacsnode_server):
    return pacsnode_server


def test_random_bytes_and_aborts_do_not_hurt(node, tmp_path):
    ds = make_ct(tmp_path / "keep.dcm")
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "keep.dcm"))
    # Random bytes instead of an A-ASSOCIATE-RQ.
    for payload in (os.urandom(2048), b"\x01\x00" + b"\xff" * 64, b"GET / HTTP/1.0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=5) as s:
            s.sendall(payload)
            try:
                s.recv(1024)
            except (ConnectionResetError, socket.timeout):
                pass
    # An association aborted in the middle.
    ae = AE(ae_title="ABORTER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
    assert assoc.is_established
    assoc.abort()
    assert echo_ok(node)
    blob = node.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    assert dataset_bytes(blob) == dataset_bytes(tmp_path / "keep.dcm")


def test_bad_c_store_requests_get_failure_statuses(node, tmp_path):
    ds = make_ct(tmp_path / "a.dcm")
    # SOP Instance UID of the data set differs from the command's
    assert raw_store(node, ds, tmp_path, command_sop_uid="1.2.3.4.5.6.7") == 0xA900
    # invalid UID in the data set
    bad = make_ct(tmp_path / "b.dcm")
    bad.StudyInstanceUID = "1.2.abc.4"
    assert raw_store(node, bad, tmp_path) == 0xC000
    # a truncated data set
    assert raw_store(node, make_ct(tmp_path / "c.dcm"), tmp_path, truncate=301) == 0xC000
    # none of them is indexed or left on disk, and the node still works
    assert findscu(node, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID") == []
    assert list((node.data_dir / "studies").rglob("*.dcm")) == []
    assert list((node.data_dir / "incoming").iterdir()) == []
    assert raw_store(node, ds, tmp_path) == 0x0000
    assert len(findscu(node, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID")) == 1
    log = node.log()
    assert "differs from the command's Affected SOP Instance UID" in log
    assert "is not a valid UID" in log


def test_kill_9_during_storescu_loses_nothing_acknowledged(pacsnode_factory, tmp_path):
    node = pacsnode_factory()
    files = []
    study = "1.2.826.0.1.3680043.10.1466.77"
    for n in range(200):
        path = tmp_path / "in" / f"{n:03d}.dcm"
        make_ct(path, study_uid=study, series_uid=study + ".1", instance=n + 1, size=64)
        files.append(path)
    proc = subprocess.Popen([dcmtk("storescu"), "-v", "-aec", node.aet, "127.0.0.1",
                             str(node.dicom_port), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Wait until some instances are in, then kill -9 the node mid-stream.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(list((node.data_dir / "studies").rglob("*.dcm"))) >= 40:
            break
        time.sleep(0.02)
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    out, _ = proc.communicate(timeout=60)
    acknowledged = set()
    current = None
    for line in out.splitlines():
        if "Sending Store Request" in line:
            current = None
        if "Received Store Response (Success)" in line and current is not None:
            acknowledged.add(current)
        if "MsgID" in line and "Sending Store Request" in line:
            current = int(line.split("MsgID")[1].split(",")[0].strip(" :)"))
    # MsgIDs count from 1 in file order.
    acked_files = [files[i - 1] for i in sorted(acknowledged)]
    assert 0 < len(acked_files) < 200, len(acked_files)

    restarted = pacsnode_factory(data_dir=node.data_dir)
    stored = {r["SOPInstanceUID"] for r in findscu(
        restarted, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID")}
    for path in acked_files:
        assert dcmread(path, stop_before_pixels=True).SOPInstanceUID in stored
    restarted.stop()
    check = subprocess.run([*_pacsnode(), "check", "--data-dir", str(node.data_dir)],
                           capture_output=True, text=True)
    repair = subprocess.run([*_pacsnode(), "check", "--repair", "--data-dir",
                             str(node.data_dir)], capture_output=True, text=True)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    after = subprocess.run([*_pacsnode(), "check", "--data-dir", str(node.data_dir)],
                           capture_output=True, text=True)
    assert after.returncode == 0, after.stdout
    assert "consistent" in after.stdout
    # No index row without its file, before or after repair.
    assert "index row without file" not in check.stdout
    indexed = int(after.stdout.split()[0])
    assert indexed >= len(acked_files)
    assert indexed == len(list((node.data_dir / "studies").rglob("*.dcm")))


def _pacsnode() -> list[str]:
    import sys
    return [sys.executable, "-m", "pacsnode"]


def test_sigterm_shuts_down_cleanly(pacsnode_factory, tmp_path):
    node = pacsnode_factory()
    make_ct(tmp_path / "a.dcm")
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "a.dcm"))
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(20) == 0
    assert "stopped" in node.log()
    node.proc = None
    check = subprocess.run([*_pacsnode(), "check", "--data-dir", str(node.data_dir)],
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.startswith("1 instances indexed")

