"""In-flight files after a crash (DESIGN.md §7, §12): `serve` killed with -9
in the middle of receiving a C-STORE leaves a half-written file in
``incoming/``.  Plain `check` lists it without failing; `check --repair` and
the next `serve` start ingest such files through the one ingest path, so a
half-written one is refused and removed — never indexed — and a whole one
(a rename lost to a crash) is stored.  A file that a live process holds is
left alone by both.  On SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CTImageStorage

from conftest import PacsnodeServer
from dicomfiles import dataset_bytes, make_ct
from dimse_peer import established, p_data, pdv
from pacsnode.dimse.messages import encode_command
from pacsnode.storage import FileStore

CHUNK = 8192


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


def serve(data: Path, url: str) -> PacsnodeServer:
    return PacsnodeServer(data, database_url=url).start()


def pacsnode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsnode", *args], capture_output=True,
                          text=True, timeout=300)


def half_sent_c_store(node: PacsnodeServer, path: Path) -> socket.socket:
    """Associate, send a C-STORE-RQ and about half of its data set (in
    PDVs that are not the last); return once the server has more than
    256 KiB of it in a file in ``incoming/``."""
    ds = dcmread(path, stop_before_pixels=True)
    body = dataset_bytes(path)
    incoming = node.data_dir / "incoming"
    before = set(incoming.iterdir())
    sock = established(node, timeout=10, calling="HALFSENDER", called=node.aet,
                       contexts={1: CTImageStorage}, transfer_syntax=ExplicitVRLittleEndian)
    command = encode_command(field=0x0001, message_id=1, affected_sop_class=CTImageStorage,
                             affected_sop_instance=ds.SOPInstanceUID, priority=0,
                             dataset_type=0x0000)
    sock.sendall(p_data(pdv(1, 0x03, command)))
    for at in range(0, len(body) // 2, CHUNK):
        sock.sendall(p_data(pdv(1, 0x00, body[at:at + CHUNK])))
    deadline = time.monotonic() + 20
    while not any(p.stat().st_size > 256 * 1024 for p in set(incoming.iterdir()) - before):
        assert time.monotonic() < deadline, list(incoming.iterdir())
        time.sleep(0.02)
    return sock


def big_ct(path: Path, patient_id: str) -> str:
    ds = make_ct(path, patient_id=patient_id, size=1024)  # 2 MiB of pixels
    return str(ds.SOPInstanceUID)


def stale_once_writers_gone(data: Path, count: int) -> list[Path]:
    """The in-flight files nobody holds, once there are ``count`` of them
    (the DIMSE worker processes of a killed serve die a moment after it)."""
    store = FileStore(data, fsync=False)
    deadline = time.monotonic() + 15
    while True:
        stale = [f.path for f in store.in_flight() if not f.held]
        if len(stale) >= count or time.monotonic() > deadline:
            return stale
        time.sleep(0.05)


HOLDER = """
import sys
from pathlib import Path
from pacsnode.storage import FileStore
store = FileStore(Path(sys.argv[1]), fsync=False)
fh, temp = store.new_temp()
fh.write(Path(sys.argv[2]).read_bytes())
fh.flush()
print(temp, flush=True)
sys.stdin.read()   # holds the file until the test closes stdin
"""


def test_kill_9_during_c_store_then_check_repair_and_restart(tmp_path: Path,
                                                             database_url: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    node = serve(data, database_url)
    db = ["--data-dir", str(data), "--database-url", database_url]

    # A live writer: another process with a half-written file of its own.
    half = tmp_path / "held.dcm"
    held_sop = big_ct(half, "HELD")
    half.write_bytes(half.read_bytes()[:300_000])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data), str(half)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = Path(holder.stdout.readline().strip())
        assert held.is_file()

        # kill -9 while a C-STORE is being received.
        cut_sop = big_ct(tmp_path / "cut.dcm", "CUT")
        sock = half_sent_c_store(node, tmp_path / "cut.dcm")
        node.kill()
        # The socket stays open until every process of that serve is gone
        # (a DIMSE worker dies just after it): a peer that went away would
        # have the file removed by a live receiver.
        stale = stale_once_writers_gone(data, 1)
        sock.close()
        assert len(stale) == 1 and stale[0] != held
        written = stale[0].stat().st_size
        assert 256 * 1024 < written < (tmp_path / "cut.dcm").stat().st_size
        # And a whole instance whose rename a crash lost, by a writer long gone.
        whole_sop = big_ct(tmp_path / "whole.dcm", "WHOLE")
        lost = data / "incoming" / "in-0123456789abcdef-7.part"
        lost.write_bytes((tmp_path / "whole.dcm").read_bytes())

        report = pacsnode("check", *db)
        assert report.returncode == 0, report.stdout + report.stderr
        assert f"stale temp file: {stale[0]}" in report.stdout
        assert f"stale temp file: {lost}" in report.stdout
        assert f"in-flight file of a running process: {held}" in report.stdout

        repaired = pacsnode("check", "--repair", *db)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert f"stale temp file {stale[0].name}: refused: truncated at byte {written}" \
            in repaired.stdout, repaired.stdout
        assert f"stale temp file {lost.name}: stored (instance {whole_sop})" in repaired.stdout
        assert not stale[0].exists() and not lost.exists() and held.is_file()
        after = pacsnode("check", *db)
        assert after.returncode == 0 and after.stdout.startswith("1 instances indexed"), \
            after.stdout
        blobs = {p.stem for p in (data / "studies").rglob("*.dcm")}
        assert blobs == {whole_sop}

        # Again, and this time the next `serve` start cleans up.
        node = serve(data, database_url)
        sock = half_sent_c_store(node, tmp_path / "cut.dcm")
        node.kill()
        stale = stale_once_writers_gone(data, 1)
        sock.close()
        assert len(stale) == 1
        node = serve(data, database_url)
        assert not stale[0].exists() and held.is_file()
        assert "removed: truncated at byte" in node.log()
        r = httpx.get(node.base_url + "/dicomweb/instances", params={"limit": "100"})
        assert [i["00080018"]["Value"][0] for i in r.json()] == [whole_sop]
        assert cut_sop not in {p.stem for p in (data / "studies").rglob("*.dcm")}
        node.stop()
    finally:
        holder.stdin.close()
        holder.wait(10)

    # The holder is gone: its file is nobody's now, and not whole.
    repaired = pacsnode("check", "--repair", *db)
    assert repaired.returncode == 0
    assert f"stale temp file {held.name}: refused: truncated at byte 300000" in repaired.stdout
    assert list((data / "incoming").iterdir()) == []
    assert {p.stem for p in (data / "studies").rglob("*.dcm")} == {whole_sop}
    assert held_sop not in repaired.stdout
