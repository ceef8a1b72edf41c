"""The asyncio DICOM upper layer of `pacsnode serve`: association
negotiation and rejection, the association limit, malformed PDUs of each
kind, fragmentation to a small maximum PDU length, a 200 MB instance
received in little memory, and associations spread over several processes."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (CTImageStorage, ModalityWorklistInformationFind,
                                  StudyRootQueryRetrieveInformationModelFind)

from conftest import dcmtk, storescu
from dicomfiles import dataset_bytes, make_ct
from dimse_peer import (associate_rq, closed, echo_command, echo_ok, established,
                        c_get, held_to_the_limit, p_data, pdv, recv_pdu, rejection)
from test_dimse import findscu, run


@pytest.fixture
def node(pacsnode_server):
    return pacsnode_server


def test_no_acceptable_presentation_context_is_rejected(node):
    """PS3.8 9.3.4: A-ASSOCIATE-RJ, permanent, service user, no reason given."""
    assert rejection(node, "WORKLIST", ModalityWorklistInformationFind) == (1, 1, 1)
    assert "no acceptable presentation context" in node.log()
    assert echo_ok(node)


def test_association_rejections_at_pdu_level(node):
    def reject(rq: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=5) as s:
            s.sendall(rq)
            kind, body = recv_pdu(s)
            assert closed(s)
            return kind, body

    # wrong application context: permanent, service user, context name not supported
    kind, body = reject(associate_rq(app_context="1.2.3.4"))
    assert kind == 0x03 and tuple(body[1:4]) == (1, 1, 2)
    # protocol version without bit 0: service provider (ACSE), version not supported
    kind, body = reject(associate_rq(version=2))
    assert kind == 0x03 and tuple(body[1:4]) == (1, 2, 2)
    # an A-ASSOCIATE-RQ whose items are garbage
    rq = bytearray(associate_rq())
    rq[74:] = os.urandom(len(rq) - 74)
    kind, body = reject(bytes(rq))
    assert kind == 0x03 and tuple(body[1:4]) == (1, 2, 1)
    # an impossible length
    kind, body = reject(b"\x01\x00\x7f\xff\xff\xff" + b"\x00" * 64)
    assert kind == 0x03
    log = node.log()
    assert "application context 1.2.3.4 not supported" in log
    assert "protocol version 2 not supported" in log
    assert "malformed A-ASSOCIATE-RQ" in log
    assert echo_ok(node)


def test_remembered_negotiations_answer_each_request_as_the_first_time(node, tmp_path):
    """Negotiations are remembered by the bytes of the A-ASSOCIATE-RQ: the
    same request gets the same A-ASSOCIATE-AC (and a rejection the same
    A-ASSOCIATE-RJ), another calling AE title or proposal its own answer,
    and a remembered association works (a real storescu, twice, proposing
    every storage SOP class)."""
    def answer(rq: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=5) as sock:
            sock.sendall(rq)
            kind, body = recv_pdu(sock)
            if kind == 0x02:
                sock.sendall(bytes.fromhex("05000000000400000000"))
                assert recv_pdu(sock)[0] == 0x06
            return kind, body

    first = answer(associate_rq(calling="FIRST"))
    assert first[0] == 0x02 and first[1][20:36].rstrip() == b"FIRST"
    assert answer(associate_rq(calling="FIRST")) == first
    other = answer(associate_rq(calling="OTHER"))
    assert other[0] == 0x02 and other[1][20:36].rstrip() == b"OTHER"
    refused = associate_rq(contexts={1: ModalityWorklistInformationFind})
    assert answer(refused)[0] == 0x03 and answer(refused)[0] == 0x03
    for n in range(2):
        make_ct(tmp_path / f"{n}.dcm", patient_id=f"MEMO{n}")
        run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
            str(tmp_path / f"{n}.dcm"))
    found = findscu(node, "QueryRetrieveLevel=PATIENT", "PatientID=MEMO*")
    assert sorted(r["PatientID"] for r in found) == ["MEMO0", "MEMO1"]


@pytest.mark.parametrize("what, payload, reason", [
    ("not DICOM", b"GET / HTTP/1.0\r\n\r\n", 1),
    ("unexpected P-DATA-TF", p_data(pdv(1, 3, echo_command())), 2),
    ("unexpected A-RELEASE-RQ", bytes.fromhex("05000000000400000000"), 2),
])
def test_anything_but_an_associate_request_is_aborted(node, what, payload, reason):
    with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=5) as s:
        s.sendall(payload)
        kind, body = recv_pdu(s)
        assert kind == 0x07, what  # A-ABORT
        assert body[2:4] == bytes([2, reason]), what  # service provider
        assert closed(s)
    assert echo_ok(node)


@pytest.mark.parametrize("what, payload, reason", [
    ("PDV longer than its PDU", struct.pack(">BBI", 4, 0, 10) + struct.pack(">IBB", 40, 1, 3)
     + b"\0\0\0\0", 6),
    ("PDV on a context not accepted", p_data(pdv(3, 3, echo_command())), 6),
    ("undecodable command set", p_data(pdv(1, 3, b"\x08\x00\x10\x00\xff\xff\xff\x7f")), 6),
    ("data set with no command", p_data(pdv(1, 2, b"\x08\x00\x05\x00\x00\x00\x00\x00")), 6),
    ("P-DATA-TF too short", struct.pack(">BBI", 4, 0, 2) + b"\0\0", 6),
    ("A-ASSOCIATE-AC after association", bytes.fromhex("02000000000400000000"), 2),
    ("unknown PDU type", bytes.fromhex("09000000000400000000"), 1),
    ("A-RELEASE-RQ of the wrong length", bytes.fromhex("0500000000020000"), 6),
])
def test_malformed_pdus_in_an_association_are_aborted(node, what, payload, reason):
    sock = established(node)
    with sock:
        sock.sendall(p_data(pdv(1, 3, echo_command(7))))  # a good message first
        kind, _ = recv_pdu(sock)
        assert kind == 0x04, what
        sock.sendall(payload)
        kind, body = recv_pdu(sock)
        assert kind == 0x07, what
        assert body[2:4] == bytes([2, reason]), what
        assert closed(sock)
    assert "aborted by us" in node.log()
    assert echo_ok(node)


def test_release_and_peer_abort_are_logged(node):
    with established(node) as sock:
        sock.sendall(bytes.fromhex("05000000000400000000"))
        assert recv_pdu(sock)[0] == 0x06  # A-RELEASE-RP
        assert closed(sock)
    with established(node) as sock:
        sock.sendall(bytes.fromhex("07000000000400000000"))
        assert closed(sock)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "aborted by the peer" not in node.log():
        time.sleep(0.05)
    log = node.log()
    assert re.search(r"association released: RAWSCU from 127\.0\.0\.1:\d+", log)
    assert re.search(r"association aborted by the peer .*: RAWSCU from", log)


def test_silent_peer_is_aborted_after_dimse_timeout(pacsnode_factory):
    node = pacsnode_factory(extra_env={"PACSNODE_DIMSE_TIMEOUT": "1"})
    with established(node) as sock:
        sock.settimeout(10)
        kind, body = recv_pdu(sock)
        assert kind == 0x07
    with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10) as sock:
        sock.sendall(b"\x01\x00")  # half a PDU header, then silence: the ARTIM timer
        assert recv_pdu(sock)[0] == 0x07
    deadline = time.monotonic() + 5
    while "no A-ASSOCIATE-RQ for 1 s" not in node.log():
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.05)
    assert "no PDU for 1 s" in node.log()


def test_max_associations_across_processes(pacsnode_factory):
    """The limit is for the node, whichever process an association lands in:
    the next one is rejected transient, presentation layer, local limit
    exceeded (PS3.8 Table 9-21)."""
    node = pacsnode_factory(extra_env={"PACSNODE_MAX_ASSOCIATIONS": "3",
                                       "PACSNODE_DIMSE_PROCESSES": "2"})
    time.sleep(2)  # the worker process is listening too
    held = held_to_the_limit(node, "MANY", 3, "max_associations 3")
    held.pop().release()
    time.sleep(0.2)
    again = held[0].ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
    assert again.is_established and again.send_c_echo().Status == 0
    again.release()
    for a in held:
        a.release()


def test_small_max_pdu_both_ways(node, tmp_path):
    """storescu sending 4 KiB PDUs; getscu and findscu receiving at most
    4 KiB PDUs: a 512×512 CT goes through fragmented, byte for byte."""
    ds = make_ct(tmp_path / "ct.dcm", size=512)
    run(dcmtk("storescu"), "--max-send-pdu", "4096", "-aec", node.aet, "127.0.0.1",
        str(node.dicom_port), str(tmp_path / "ct.dcm"))
    blob = node.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    assert dataset_bytes(blob) == dataset_bytes(tmp_path / "ct.dcm")
    out = tmp_path / "get"
    out.mkdir()
    run(dcmtk("getscu"), "-S", "--max-pdu", "4096", "-aec", node.aet,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-od", str(out), "127.0.0.1", str(node.dicom_port))
    got = [p for p in out.iterdir() if p.is_file()]
    assert len(got) == 1
    assert dcmread(got[0]).PixelData == ds.PixelData
    rs = findscu(node, "QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={ds.SOPInstanceUID}",
                 "PatientName")
    assert rs[0]["PatientName"] == "Doe^John"
    assert "max PDU 4096" in node.log()


def test_pynetdicom_peer_with_small_max_pdu(node, tmp_path):
    """Our P-DATA-TF PDUs respect the peer's Maximum Length Received."""
    from pynetdicom import evt
    ds = make_ct(tmp_path / "ct.dcm", size=128)
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        str(tmp_path / "ct.dcm"))
    sizes: list[int] = []

    def on_pdu(event):
        if event.pdu.pdu_type == 0x04:
            sizes.append(len(event.pdu.encode()))

    got = c_get(node, ds.StudyInstanceUID, syntaxes=[ExplicitVRLittleEndian], calling="SMALLPDU",
                max_pdu=4096, handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    assert got.statuses[-1] == 0
    assert got.raw == [dataset_bytes(tmp_path / "ct.dcm")]
    assert len(sizes) > 8 and max(sizes) == 4096 + 6  # the 6-byte PDU header is not counted


def _serve_pids(node) -> list[int]:
    """The serve process and its DIMSE workers."""
    pids = [node.proc.pid]
    for children in Path(f"/proc/{node.proc.pid}/task").glob("*/children"):
        try:
            pids += [int(p) for p in children.read_text().split()]
        except OSError:  # a thread that just ended
            pass
    return pids


def _alive(pid: int) -> bool:
    """Some thread of the process still runs.  A killed process's leader
    thread turns zombie before its other threads (fsync pool, checkpointer)
    have exited, and until the last one has, its sockets stay open."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            if "zombie" not in (task / "status").read_text():
                return True
        except OSError:  # that thread just ended
            continue
    return False


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def test_200_mb_instance_received_in_little_memory(node, tmp_path):
    """The data set goes from the socket into the temp file as it comes: no
    server process grows by more than a few tens of MB."""
    frames, rows = 100, 1024
    ds = make_ct(tmp_path / "head.dcm", size=16)
    ds.Rows = ds.Columns = rows
    ds.NumberOfFrames = frames
    del ds.PixelData
    ds.save_as(tmp_path / "head.dcm", enforce_file_format=True)
    big = tmp_path / "big.dcm"
    size = frames * rows * rows * 2
    with open(tmp_path / "head.dcm", "rb") as src, open(big, "wb") as fh:
        fh.write(src.read())
        element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)
        fh.write(element)
        block = bytes(range(256)) * 4096
        for _ in range(size // len(block)):
            fh.write(block)
    time.sleep(1.5)  # workers up
    pids = _serve_pids(node)
    before = {pid: _kib(pid, "VmRSS") for pid in pids}
    peak: dict[int, int] = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            for pid in pids:
                try:
                    peak[pid] = max(peak[pid], _kib(pid, "VmRSS"))
                except OSError:
                    pass

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port), str(big))
    finally:
        stop.set()
        sampler.join()
    growth = {pid: (peak[pid] - before[pid]) // 1024 for pid in pids}
    assert max(growth.values()) < 48, growth  # MB
    blob = node.data_dir / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    with open(big, "rb") as sent, open(blob, "rb") as stored:
        assert dataset_bytes_stream(sent) == dataset_bytes_stream(stored)


def dataset_bytes_stream(fh) -> str:
    """SHA-256 of what follows a Part 10 file's meta header, read in blocks."""
    head = fh.read(144)
    assert head[128:132] == b"DICM"
    fh.seek(144 + int.from_bytes(head[140:144], "little"))
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def test_associations_spread_over_processes(pacsnode_factory, tmp_path):
    """With dimse_processes = 2 the kernel spreads associations over both
    processes; what each stores is in the one index, and killing the node
    with -9 leaves no worker holding the port."""
    # 24 senders at once from one address and AE title: above the defaults of
    # max_associations_per_address and max_associations_per_ae.
    node = pacsnode_factory(extra_env={"PACSNODE_DIMSE_PROCESSES": "2",
                                       "PACSNODE_MAX_ASSOCIATIONS_PER_ADDRESS": "32",
                                       "PACSNODE_MAX_ASSOCIATIONS_PER_AE": "32"})
    deadline = time.monotonic() + 20
    while len(_serve_pids(node)) < 2 or node.log().count("DIMSE listening") < 2:
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    files = []
    study = "1.2.826.0.1.3680043.10.1466.99"
    for n in range(24):
        path = tmp_path / f"{n:02d}.dcm"
        make_ct(path, study_uid=study, series_uid=f"{study}.{n}", instance=1)
        files.append(path)
    procs = [subprocess.Popen([dcmtk("storescu"), "-aec", node.aet, "127.0.0.1",
                               str(node.dicom_port), str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for path in files]
    for p in procs:
        assert p.wait(120) == 0, (p.stderr.read() if p.stderr else "") + node.log()
    pids = set(re.findall(r"association accepted: STORESCU .* pid (\d+)\)", node.log()))
    assert len(pids) == 2, node.log()
    rs = findscu(node, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study}",
                 "SOPInstanceUID")
    assert len(rs) == 24, node.log()
    workers = _serve_pids(node)[1:]
    node.kill()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a DIMSE worker outlived kill -9 of serve"
        time.sleep(0.05)
    with socket.socket() as s:
        s.settimeout(5)
        assert s.connect_ex(("127.0.0.1", node.dicom_port)) != 0, "still listening"


def test_connections_go_to_the_least_busy_process(pacsnode_factory):
    """Four associations held open at once, opened one after another, are
    served two by each of two processes (each connection goes to the
    process with fewer open), and a fifth still gets served when they end."""
    node = pacsnode_factory(extra_env={"PACSNODE_DIMSE_PROCESSES": "2"})
    socks = []
    try:
        for n in range(4):
            sock = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10)
            socks.append(sock)
            sock.sendall(associate_rq(calling=f"HOLD{n}"))
            assert recv_pdu(sock)[0] == 0x02, node.log()  # A-ASSOCIATE-AC
        deadline = time.monotonic() + 10
        while node.log().count("association accepted: HOLD") < 4:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.05)
        pids = re.findall(r"association accepted: HOLD\d .* pid (\d+)\)", node.log())
        assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2], node.log()
    finally:
        for sock in socks:
            sock.close()
    assert echo_ok(node)


def test_a_dead_worker_is_replaced(pacsnode_factory):
    import signal
    node = pacsnode_factory(extra_env={"PACSNODE_DIMSE_PROCESSES": "2"})
    deadline = time.monotonic() + 20
    while len(_serve_pids(node)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    worker = _serve_pids(node)[1]
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while True:
        pids = _serve_pids(node)[1:]
        if pids and worker not in pids:
            break
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    assert f"DIMSE worker 1 (pid {worker}) exited with -9" in node.log()
    for _ in range(6):
        assert echo_ok(node)
    # SIGTERM stops the replacement too, cleanly.
    replacement = pids[0]
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0
    node.proc = None
    deadline = time.monotonic() + 10
    while _alive(replacement):
        assert time.monotonic() < deadline, "the replacement worker outlived serve"
        time.sleep(0.05)


def test_c_find_cancel(node, tmp_path):
    """A C-CANCEL that arrives with its C-FIND (one write, so the server
    reads it before the query runs): the final response is 0xFE00 and not
    every match is sent.  (A cancel sent after the first pending responses
    races a server that answers 30 matches in a few milliseconds.)"""
    from pacsnode.dimse import messages as m
    for n in range(30):
        make_ct(tmp_path / f"{n}.dcm", patient_id=f"P{n:02d}")
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        *[str(tmp_path / f"{n}.dcm") for n in range(30)])
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = ""
    identifier = m.encode_dataset(query, ImplicitVRLittleEndian)
    find = m.encode_command(field=m.C_FIND_RQ, message_id=5, priority=0,
                            affected_sop_class=StudyRootQueryRetrieveInformationModelFind,
                            dataset_type=0x0000)
    cancel = m.encode_command(field=m.C_CANCEL_RQ, responded_to=5, dataset_type=m.NO_DATASET)
    with socket.create_connection(("127.0.0.1", node.dicom_port), timeout=10) as sock:
        sock.sendall(associate_rq(contexts={1: StudyRootQueryRetrieveInformationModelFind}))
        assert recv_pdu(sock)[0] == 0x02
        sock.sendall(b"".join([*m.pdata(1, find, True, 16384),
                               *m.pdata(1, identifier, False, 16384),
                               *m.pdata(1, cancel, True, 16384)]))
        statuses, parts = [], b""
        while not statuses or statuses[-1] == 0xFF00:
            kind, body = recv_pdu(sock)
            assert kind == 0x04, (kind, body)
            pos = 0
            while pos < len(body):
                length, control = struct.unpack_from(">I", body, pos)[0], body[pos + 5]
                if control & 0x01:  # command fragment
                    parts += body[pos + 6:pos + 4 + length]
                    if control & 0x02:
                        command = m.decode_command(parts)
                        parts = b""
                        assert command.field == m.C_FIND_RSP
                        assert command.responded_to == 5
                        statuses.append(command.status)
                pos += 4 + length
        sock.sendall(bytes.fromhex("05000000000400000000"))  # A-RELEASE-RQ
        assert recv_pdu(sock)[0] == 0x06
    assert statuses[-1] == 0xFE00, statuses
    assert len(statuses) < 31


def test_command_sets_and_meta_header_match_pydicom():
    """The hand-written encoders produce what pydicom produces."""
    from io import BytesIO

    from pydicom.filewriter import write_file_meta_info
    from pynetdicom.dsutils import decode, encode

    from pacsnode.dicom.uids import file_meta
    from pacsnode.dimse import messages as m

    for args in (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.44", "1.2.840.10008.1.2.1"),
                 ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", "1.2.840.10008.1.2")):
        fh = BytesIO()
        fh.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fh, file_meta(*args), enforce_standard=True)
        assert m.part10_header(*args) == fh.getvalue()
    raw = m.encode_command(field=0x0001, message_id=7, priority=0, dataset_type=0,
                           affected_sop_class=CTImageStorage, affected_sop_instance="1.2.3",
                           move_originator_aet="ABC", move_originator_id=3)
    ds = decode(BytesIO(raw), True, True)
    assert (ds.CommandField, ds.MessageID, ds.AffectedSOPInstanceUID,
            ds.MoveOriginatorApplicationEntityTitle) == (1, 7, "1.2.3", "ABC")
    assert encode(ds, True, True) == raw
    command = m.decode_command(raw[12:])
    assert (command.field, command.message_id, command.affected_sop_class,
            command.has_dataset) == (1, 7, CTImageStorage, True)
    rsp = m.decode_command(m.response(m.C_STORE_RSP, command, 0xA900,
                                      error_comment="bad\\thing" + "x" * 80)[12:])
    assert rsp.responded_to == 7 and rsp.status == 0xA900 and not rsp.has_dataset
    assert rsp.text(m.ERROR_COMMENT) == ("bad thing" + "x" * 80)[:64]
    with pytest.raises(ValueError):
        m.decode_command(b"\x08\x00\x10\x00\x02\x00\x00\x00ab")
    pdus = list(m.pdata(3, b"x" * 10, False, 10))
    assert [len(p) for p in pdus] == [12, 4, 12, 4, 12, 2]
    assert pdus[-2][-1] == 0x02 and pdus[0][-1] == 0x00  # last bit only on the last PDV


def test_commitment_report_on_a_new_association(pacsnode_factory, tmp_path):
    """An SCU that releases right after the N-ACTION-RSP gets the
    N-EVENT-REPORT on a new association to it (a configured node)."""
    from conftest import free_port
    from pydicom.uid import generate_uid
    from pynetdicom import evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    reports: list[Dataset] = []
    got = threading.Event()

    def on_report(event):
        reports.append(event.event_information)
        got.set()
        return 0x0000, None

    scu_port = free_port()
    listener = AE(ae_title="COMMITSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = listener.start_server(("127.0.0.1", scu_port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        config = tmp_path / "pacsnode.toml"
        config.write_text(f'[nodes.COMMITSCU]\naet = "COMMITSCU"\nhost = "127.0.0.1"\n'
                          f'port = {scu_port}\n')
        node = pacsnode_factory(config=str(config))
        ds = make_ct(tmp_path / "a.dcm")
        run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
            str(tmp_path / "a.dcm"))
        ae = AE(ae_title="COMMITSCU")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
        request = Dataset()
        request.TransactionUID = generate_uid()
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        request.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                        "1.2.840.10008.1.20.1.1")
        assoc.release()  # without waiting for the report
        assert status.Status == 0x0000
        assert got.wait(20), node.log()
        assert reports[0].TransactionUID == request.TransactionUID
        assert [i.ReferencedSOPInstanceUID for i in reports[0].ReferencedSOPSequence] == \
            [ds.SOPInstanceUID]
        deadline = time.monotonic() + 10
        while "reported to COMMITSCU on a new association: ok" not in node.log():
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.05)
    finally:
        server.shutdown()


def test_c_store_waits_off_the_loop_while_another_writer_holds_the_index(pacsnode_factory,
                                                                         tmp_path):
    """C-STOREs are ingested on the event loop only while the index's write
    lock is free: with another process holding it (as `pacsnode import`
    would), a C-STORE waits on the pool — not acknowledged until the lock is
    released — and the loop goes on serving other associations."""
    import fcntl

    node = pacsnode_factory(extra_env={"PACSNODE_DIMSE_PROCESSES": "1"})
    files = []
    for n in range(3):
        files.append(tmp_path / f"{n}.dcm")
        make_ct(files[-1], patient_id="LOCKED", study_uid="1.2.826.0.1.3680043.8.498.77",
                series_uid="1.2.826.0.1.3680043.8.498.77.1", instance=n + 1)
    lock_fd = os.open(str(node.data_dir / "index.sqlite.writelock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        sender = subprocess.Popen([dcmtk("storescu"), "-aec", node.aet, "127.0.0.1",
                                   str(node.dicom_port), *map(str, files)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.5)
        assert sender.poll() is None, "acknowledged while the index was locked"
        assert echo_ok(node)  # the loop is not the one waiting
    finally:
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        os.close(lock_fd)
    out, _ = sender.communicate(timeout=60)
    assert sender.returncode == 0, out
    found = findscu(node, "QueryRetrieveLevel=STUDY", "PatientID=LOCKED",
                    "NumberOfStudyRelatedInstances")
    assert [r["NumberOfStudyRelatedInstances"] for r in found] == ["3"], found


@pytest.mark.parametrize("syncer", ["started", "aio", "threads"])
def test_failed_fsync_fails_that_c_store_only(tmp_path, monkeypatch, syncer):
    """The fsync of a received instance runs beside the loop's header walk
    (for the node's one association on a thread that has taken it, its
    rows written meanwhile; with more, Linux AIO, or a thread where AIO is
    missing): when it fails, that C-STORE gets a failure status and no
    index row, and the association's next C-STORE (and the next
    association) store as usual."""
    from conftest import free_port
    from pacsnode import storage
    from pacsnode.aiosync import AioSync
    from pacsnode.config import load_settings
    from pacsnode.dimse.scp import DimseServer
    from pacsnode.dimse.limit import AssociationLimit
    from pacsnode.node import Node

    if syncer != "started":  # as if other associations were open
        monkeypatch.setattr(AssociationLimit, "alone", lambda self: False)
    started: list[int] = []
    real_started = storage.fsync_started

    def fsync_started(fd: int):
        started.append(fd)
        return real_started(fd)

    monkeypatch.setattr("pacsnode.durability.fsync_started", fsync_started)

    port = free_port()
    node = Node(load_settings(overrides={"data_dir": tmp_path / "data", "dicom_port": port,
                                         "dimse_processes": 1, "fsync": True}, environ={}))
    if syncer == "threads":
        monkeypatch.setattr(AioSync, "create", classmethod(lambda cls, loop: None))
    dimse = DimseServer(node)
    dimse.start()
    study = "1.2.826.0.1.3680043.8.498.77"
    files = []
    for n in range(3):
        path = tmp_path / f"{n}.dcm"
        make_ct(path, study_uid=study, series_uid=study + ".1", instance=n + 1, size=8)
        files.append(path)
    failing = {dcmread(files[1]).SOPInstanceUID}
    real_fsync = os.fsync
    incoming = str(node.store.incoming)
    failed: list[str] = []

    def fsync(fd: int) -> None:
        # Fail the fsync of the second instance's temp file, whoever makes it.
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not failed and target.startswith(incoming) and _written_sop(target) in failing:
            failed.append(target)
            raise OSError(5, "Input/output error (injected)")
        real_fsync(fd)

    real_submit = AioSync.fsync

    def submit(self, fd: int):
        # The AIO path: the kernel's answer for that file becomes EIO.
        target = os.readlink(f"/proc/self/fd/{fd}")
        if not failed and target.startswith(incoming) and _written_sop(target) in failing:
            failed.append(target)
            os.close(fd)
            future = self.loop.create_future()
            future.set_exception(OSError(5, "Input/output error (injected)"))
            return future
        return real_submit(self, fd)

    if syncer == "aio":
        monkeypatch.setattr(AioSync, "fsync", submit)
    monkeypatch.setattr(os, "fsync", fsync)
    try:
        if syncer == "aio":
            assert dimse.server.aio is not None, "no AIO fsync on this Linux"
        proc = run(dcmtk("storescu"), "-v", "--no-halt", "-aec", "PACSNODE", "127.0.0.1",
                   str(port), *map(str, files), check=False)
        assert failed, "the injected fsync failure never ran"
        assert bool(started) == (syncer == "started"), started
        answers = re.findall(r"Received Store Response \(([^)]*)\)", proc.stdout + proc.stderr)
        assert len(answers) == 3 and answers[0] == answers[2] == "Success", answers
        assert "Out of Resources" in answers[1] or "Refused" in answers[1], answers
        stored = _stored_sops(node)
        expected = {dcmread(f).SOPInstanceUID for f in files} - failing
        assert stored == expected
        assert not any(p.name.endswith(".part") and p.stat().st_size > 0
                       and _written_sop(str(p)) in failing
                       for p in node.store.incoming.iterdir())
        monkeypatch.setattr(os, "fsync", real_fsync)
        run(dcmtk("storescu"), "-aec", "PACSNODE", "127.0.0.1", str(port), str(files[1]))
        assert _stored_sops(node) == {str(dcmread(f).SOPInstanceUID) for f in files}
    finally:
        dimse.stop(grace=5.0)
        node.close()


def _stored_sops(node) -> set[str]:
    from sqlalchemy import select

    from pacsnode.index.schema import instances
    with node.db.read() as conn:
        return {r[0] for r in conn.execute(select(instances.c.sopinstanceuid))}


def _written_sop(path: str) -> str | None:
    try:
        return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    except Exception:
        return None


def test_aio_fsync_closes_what_it_syncs(tmp_path):
    """AioSync: an fsync of a regular file completes and closes the
    descriptor; one the kernel will not take (a pipe has no fsync) is
    refused at once and left to the caller, which then uses a thread."""
    import asyncio
    from pacsnode.aiosync import AioSync

    async def check() -> None:
        aio = AioSync.create(asyncio.get_running_loop())
        assert aio is not None, "no AIO fsync on this Linux"
        try:
            fds = []
            for n in range(20):  # several in flight at once
                fd = os.open(tmp_path / f"{n}.bin", os.O_CREAT | os.O_WRONLY, 0o600)
                os.write(fd, bytes([n]) * 4096)
                fds.append(fd)
            futures = [aio.fsync(fd) for fd in fds]
            assert all(f is not None for f in futures)
            await asyncio.wait_for(asyncio.gather(*futures), 30)
            for fd in fds:
                with pytest.raises(OSError):
                    os.fstat(fd)  # closed by AioSync
            read_end, write_end = os.pipe()
            try:
                assert aio.fsync(read_end) is None
                os.fstat(read_end)  # still open: the caller's
            finally:
                os.close(read_end)
                os.close(write_end)
        finally:
            aio.close()

    asyncio.run(check())
    assert sorted(p.stat().st_size for p in tmp_path.glob("*.bin")) == [4096] * 20


def test_c_get_of_stored_files_gone_or_not_dicom_fails_those_only(node, tmp_path):
    """A C-GET sub-operation whose stored file cannot be sent — removed from
    disk, or no longer Part 10 — sends nothing of it (``NotSent``: no
    half message on the association) and counts a failure; the others of
    the C-GET arrive whole, and the node keeps serving."""
    study, series = "1.2.826.0.1.3680043.8.498.7101", "1.2.826.0.1.3680043.8.498.7101.1"
    paths = [tmp_path / f"i{n}.dcm" for n in range(1, 5)]
    sops = [make_ct(p, study_uid=study, series_uid=series, instance=n, size=16).SOPInstanceUID
            for n, p in enumerate(paths, 1)]
    run(dcmtk("storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
        *map(str, paths))
    blobs = [node.data_dir / "studies" / study / series / f"{sop}.dcm" for sop in sops]
    blobs[1].unlink()
    blobs[2].write_bytes(b"not a Part 10 file" * 100)
    got = c_get(node, study, series, syntaxes=[ExplicitVRLittleEndian])
    assert got.statuses[-1] == 0xB000, got.statuses
    assert got.final is not None
    assert (got.final.NumberOfCompletedSuboperations,
            got.final.NumberOfFailedSuboperations) == (2, 2)
    assert got.raw == [dataset_bytes(blobs[0]), dataset_bytes(blobs[3])]
    log = node.log()
    assert f"cannot send {sops[1]}" in log and f"cannot send {sops[2]}" in log
    assert echo_ok(node)


def test_an_association_logs_what_it_stored(node, tmp_path):
    """One line per association says what its C-STOREs did; a new
    instance gets no INFO line of its own (DEBUG), a replacement does."""
    first, second = tmp_path / "1.dcm", tmp_path / "2.dcm"
    make_ct(first, instance=1)
    make_ct(second, instance=2)
    storescu(node, [first, second, first])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "association released: MODALITY" not in node.log():
        time.sleep(0.05)
    log = node.log()
    assert re.search(r"association released: MODALITY from 127\.0\.0\.1:\d+; "
                     r"C-STORE 2 stored, 1 already stored\n", log), log[-2000:]
    assert "stored instance" not in log
    changed = tmp_path / "changed.dcm"
    ds = dcmread(first)
    ds.PatientName = "Doe^Jane"
    ds.save_as(changed)
    storescu(node, [changed])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "C-STORE 1 replaced" not in node.log():
        time.sleep(0.05)
    log = node.log()
    assert f"replaced instance {ds.SOPInstanceUID}" in log
    assert re.search(r"association released: MODALITY from 127\.0\.0\.1:\d+; "
                     r"C-STORE 1 replaced\n", log)
