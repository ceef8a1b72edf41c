"""Only whole instances are stored (DESIGN.md §7): a file or data set cut
anywhere — in the file meta, in an element header, in an element value, in
a defined or undefined length sequence, in native or encapsulated Pixel
Data, one byte short — or one whose lengths run past its end, is refused on
every ingest path (C-STORE, STOW-RS, `pacsnode import`) with a reason that
names the byte, and nothing of it reaches the index or the blob root.  On
SQLite and PostgreSQL, against a real `pacsnode serve`."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import CTImageStorage

from conftest import PacsnodeServer, dcmtk
from dimse_peer import c_store_raw
from test_fastheader import ex, item, sequence, tag_bytes, uid

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=whole-test-boundary'
FAILED, FAILURE = "00081198", "00081197"


def meta(sop: str, ts: str) -> bytes:
    elements = (ex(0x00020001, "OB", b"\0\1") + ex(0x00020002, "UI", uid(CTImageStorage))
                + ex(0x00020003, "UI", uid(sop)) + ex(0x00020010, "UI", uid(ts))
                + ex(0x00020012, "UI", uid("1.2.3.999")))
    return b"\0" * 128 + b"DICM" + ex(0x00020000, "UL", struct.pack("<L", len(elements))) \
        + elements


def us(tag: int, value: int) -> bytes:
    return ex(tag, "US", struct.pack("<H", value))


@dataclass
class Sample:
    """A whole Part 10 file and named offsets in it."""
    raw: bytes
    start: int  # where the data set starts
    marks: dict[str, int]
    sop: str


def sample(*, encapsulated: bool = False, tail: bytes = b"", pixels: bool = True,
           sop: str | None = None) -> Sample:
    """A CT instance in Explicit VR Little Endian (or JPEG Baseline, with
    encapsulated Pixel Data of two fragments) holding a defined-length
    sequence and an undefined-length one; ``tail`` is appended after the
    last element (it must sort after it)."""
    sop = sop or generate_uid()
    study, series = generate_uid(), generate_uid()
    marks: dict[str, int] = {}
    parts: list[bytes] = []

    def add(name: str | None, data: bytes) -> None:
        if name:
            marks[name] = sum(map(len, parts))
        parts.append(data)

    add(None, ex(0x00080016, "UI", uid(CTImageStorage)))
    add(None, ex(0x00080018, "UI", uid(sop)))
    add(None, ex(0x00080060, "CS", b"CT"))
    add("defined sequence", ex(0x00081115, "SQ", item(
        ex(0x00081150, "UI", uid(CTImageStorage)) + ex(0x00081155, "UI", uid(generate_uid()))
        + ex(0x0020000E, "UI", uid(generate_uid())))))
    add("undefined sequence", ex(0x00081140, "SQ", sequence(item(
        ex(0x00081150, "UI", uid(CTImageStorage)) + ex(0x00081155, "UI", uid(generate_uid())),
        undefined=True), undefined=True), undefined=True))
    add("patient name", ex(0x00100010, "PN", b"Whole^Test^Patient^Name "))
    add(None, ex(0x00100020, "LO", b"WHOLE1"))
    add(None, ex(0x0020000D, "UI", uid(study)))
    add(None, ex(0x0020000E, "UI", uid(series)))
    add(None, us(0x00280002, 1) + ex(0x00280004, "CS", b"MONOCHROME2 ")
        + us(0x00280010, 64) + us(0x00280011, 64) + us(0x00280100, 8) + us(0x00280101, 8)
        + us(0x00280102, 7) + us(0x00280103, 0))
    if pixels and encapsulated:
        fragments = [bytes([0xFF, 0xD8]) + os.urandom(1500), os.urandom(1200) + b"\xff\xd9"]
        add("pixel data", tag_bytes(0x7FE00010) + b"OB\0\0" + b"\xff" * 4
            + item(b"") + b"".join(item(f) for f in fragments)
            + tag_bytes(0xFFFEE0DD) + b"\0" * 4)
        marks["second fragment"] = marks["pixel data"] + 12 + 8 + 8 + 1502
    elif pixels:
        add("pixel data", ex(0x7FE00010, "OB", bytes(range(256)) * 16))
    add("tail", tail)
    head = meta(sop, JPEG_BASELINE if encapsulated else EXPLICIT)
    return Sample(head + b"".join(parts), len(head), {k: v + len(head) for k, v in marks.items()},
                  sop)


@dataclass
class Case:
    name: str
    raw: bytes
    start: int
    #: The start of the reason for a file (STOW, import), and its byte count
    #: from the data set's start for C-STORE (None: no C-STORE, the file
    #: meta itself is cut).
    reason: str
    data_set_reason: str | None


def cut(name: str, s: Sample, at: int) -> Case:
    return Case(name, s.raw[:at], s.start, f"truncated at byte {at}",
                f"truncated at byte {at - s.start} of the data set" if at >= s.start else None)


def cases() -> list[Case]:
    native, jpeg = sample(), sample(encapsulated=True)
    m, j = native.marks, jpeg.marks
    out = [
        cut("in the file meta", native, 150),
        cut("in the first element header", native, native.start + 3),
        cut("in an element header", native, m["patient name"] + 5),
        cut("in an element value", native, m["patient name"] + 12),
        cut("in a defined-length sequence", native, m["defined sequence"] + 40),
        cut("in an undefined-length sequence", native, m["undefined sequence"] + 40),
        cut("before a sequence delimiter", native, m["patient name"] - 8),
        cut("in the Pixel Data header", native, m["pixel data"] + 10),
        cut("in native Pixel Data", native, m["pixel data"] + 2000),
        cut("one byte short", native, len(native.raw) - 1),
        cut("in a fragment", jpeg, j["second fragment"] + 600),
        cut("in a fragment header", jpeg, j["second fragment"] + 4),
        cut("before the fragments' delimiter", jpeg, len(jpeg.raw) - 8),
        cut("in the fragments' delimiter", jpeg, len(jpeg.raw) - 3),
    ]
    # Whole files whose lengths say more than they hold.
    more = bytearray(native.raw)
    at = m["pixel data"] + 8
    more[at:at + 4] = struct.pack("<L", 4096 + 64)
    out.append(Case("Pixel Data declaring more than follows", bytes(more), native.start,
                    f"truncated at byte {len(more)}",
                    f"truncated at byte {len(more) - native.start} of the data set"))
    for vr, tag in (("UT", 0x0040A160), ("OB", 0x00420011)):
        s = sample(pixels=False, tail=tag_bytes(tag) + vr.encode() + b"\0\0"
                   + struct.pack("<L", 0x80000000) + os.urandom(64))
        out.append(Case(f"an impossible {vr} length", s.raw, s.start,
                        f"truncated at byte {len(s.raw)}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) "
                        f"at byte {s.marks['tail']} declares 2147483648 bytes, only 64 follow",
                        f"truncated at byte {len(s.raw) - s.start} of the data set"))
    # An item that runs past its defined-length sequence (the file is long
    # enough): malformed, not truncated.
    bad = bytearray(native.raw)
    at = m["defined sequence"] + 12 + 4
    bad[at:at + 4] = struct.pack("<L", struct.unpack_from("<L", bad, at)[0] + 2)
    out.append(Case("an item longer than its sequence", bytes(bad), native.start,
                    f"malformed at byte {m['defined sequence'] + 12}",
                    f"malformed at byte {m['defined sequence'] + 12 - native.start} of the "
                    "data set"))
    # Bytes after the last element that are not one.
    out.append(Case("trailing bytes", native.raw + b"\0\0\0", native.start,
                    f"truncated at byte {len(native.raw) + 3}",
                    f"truncated at byte {len(native.raw) + 3 - native.start} of the data set"))
    return out


CASES = cases()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsnodeServer]:
    base = tmp_path_factory.mktemp(f"whole-{request.param}")
    url = ""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
    (base / "data").mkdir()
    node = PacsnodeServer(base / "data", database_url=url).start()
    yield node
    node.stop()


def stow(node: PacsnodeServer, raw: bytes) -> httpx.Response:
    body = (b"--whole-test-boundary\r\nContent-Type: application/dicom\r\n\r\n" + raw
            + b"\r\n--whole-test-boundary--\r\n")
    return httpx.post(node.base_url + "/dicomweb/studies", content=body,
                      headers={"Content-Type": STOW_TYPE}, timeout=30)


def nothing_stored(node: PacsnodeServer) -> None:
    r = httpx.get(node.base_url + "/dicomweb/instances", params={"PatientID": "WHOLE1"})
    assert r.status_code == 204 or r.json() == [], r.text
    assert list((node.data_dir / "studies").rglob("*.dcm")) == []
    assert list((node.data_dir / "incoming").iterdir()) == []


def test_cut_and_overlong_files_are_refused_by_stow(server: PacsnodeServer) -> None:
    for case in CASES:
        r = stow(server, case.raw)
        assert r.status_code == 409, (case.name, r.text)
        failed = r.json()[FAILED]["Value"]
        assert [f[FAILURE]["Value"] for f in failed] == [[0xC000]], case.name
        warning = r.headers["warning"]
        assert case.reason in warning, (case.name, warning)
        assert "Error" not in warning and "'" not in warning.split(":", 1)[1], warning
    nothing_stored(server)


def test_cut_and_overlong_data_sets_are_refused_by_c_store(server: PacsnodeServer,
                                                           tmp_path: Path) -> None:
    for n, case in enumerate(CASES):
        if case.data_set_reason is None:
            continue  # a C-STORE carries no file meta
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(case.raw)
        ts = JPEG_BASELINE if b"1.2.840.10008.1.2.4.50" in case.raw[:case.start] else EXPLICIT
        status, comment = c_store_raw(server, path, ts)
        assert status == 0xC000, (case.name, hex(status), comment)
        if len(case.raw) < case.start + 8:
            # pynetdicom sends no data set for a few bytes that hold no element
            assert comment == "not DICOM: the data set is empty"
            continue
        # The Error Comment is an LO: its first 64 characters.
        assert comment == case.data_set_reason[:64] or comment.startswith(case.data_set_reason), \
            (case.name, comment)
    nothing_stored(server)


def test_dcmtk_judges_the_cases_as_we_do(tmp_path: Path) -> None:
    """DCMTK as the oracle: dcmdump fails on every file we call truncated,
    and reads the whole samples.  (Which is also why the C-STORE test sends
    with pynetdicom: DCMTK's storescu will not read, so not send, such a
    file.)  An item longer than its defined-length sequence DCMTK reads with
    a warning, letting the item swallow what follows; we refuse it."""
    dcmdump = dcmtk("dcmdump")
    for n, case in enumerate(CASES):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(case.raw)
        proc = subprocess.run([dcmdump, str(path)], capture_output=True, text=True)
        if case.reason.startswith("truncated"):
            assert proc.returncode != 0 and "E: " in proc.stdout + proc.stderr, case.name
    for s in (sample(), sample(encapsulated=True)):
        path = tmp_path / "whole.dcm"
        path.write_bytes(s.raw)
        proc = subprocess.run([dcmdump, str(path)], capture_output=True, text=True)
        assert proc.returncode == 0 and "E: " not in proc.stdout + proc.stderr, proc.stderr


def test_cut_and_overlong_files_are_refused_by_import(server: PacsnodeServer,
                                                      tmp_path: Path) -> None:
    folder = tmp_path / "cuts"
    folder.mkdir()
    for n, case in enumerate(CASES):
        (folder / f"case{n:02d}.dcm").write_bytes(case.raw)
    cmd = [sys.executable, "-m", "pacsnode", "import", str(folder), "--data-dir",
           str(server.data_dir)]
    if server.database_url:
        cmd += ["--database-url", server.database_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"stored 0, replaced 0, already stored 0, refused {len(CASES)}, failed 0" \
        in proc.stdout, proc.stdout
    lines = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1]
             for line in proc.stderr.splitlines() if ".dcm: " in line}
    for n, case in enumerate(CASES):
        label = str(folder / f"case{n:02d}.dcm")
        assert lines[label].startswith(f"refused: {case.reason}"), (case.name, lines[label])
    nothing_stored(server)


def test_not_dicom_has_the_same_words_on_every_path(server: PacsnodeServer,
                                                    tmp_path: Path) -> None:
    text = b"hello, this is a text file and not an image\n" * 20
    r = stow(server, text)
    assert r.status_code == 409
    assert "not DICOM: no 'DICM' prefix and no readable data set" in r.headers["warning"]
    (tmp_path / "readme.txt").write_bytes(text)
    cmd = [sys.executable, "-m", "pacsnode", "import", str(tmp_path / "readme.txt"),
           "--data-dir", str(server.data_dir)]
    if server.database_url:
        cmd += ["--database-url", server.database_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert "refused: not DICOM: no 'DICM' prefix and no readable data set" in proc.stderr
    # A C-STORE whose data set is not DICOM.
    path = tmp_path / "garbage.dcm"
    path.write_bytes(meta(generate_uid(), EXPLICIT) + text)
    status, comment = c_store_raw(server, path, EXPLICIT)
    assert (status, comment) == (0xC000, "not DICOM: the data set does not start with a "
                                         "readable element")
    for where in (r.headers["warning"], proc.stderr, comment):
        assert "FileDataset" not in where and "attribute" not in where
    nothing_stored(server)


def test_whole_samples_are_stored(server: PacsnodeServer, tmp_path: Path) -> None:
    """The control: the same samples uncut are stored by each path."""
    native, jpeg = sample(), sample(encapsulated=True)
    assert stow(server, native.raw).status_code == 200
    path = tmp_path / "jpeg.dcm"
    path.write_bytes(jpeg.raw)
    assert c_store_raw(server, path, JPEG_BASELINE) == (0, "")
    r = httpx.get(server.base_url + "/dicomweb/instances", params={"PatientID": "WHOLE1"})
    assert sorted(i["00080018"]["Value"][0] for i in r.json()) == sorted([native.sop, jpeg.sop])
    for s in (native, jpeg):
        stored = next((server.data_dir / "studies").rglob(f"{s.sop}.dcm")).read_bytes()
        assert stored.endswith(s.raw[s.start:])
    httpx.delete(server.base_url + f"/dicomweb/studies/{_study(native)}")
    httpx.delete(server.base_url + f"/dicomweb/studies/{_study(jpeg)}")


def _study(s: Sample) -> str:
    at = s.raw.index(tag_bytes(0x0020000D) + b"UI")
    length = struct.unpack_from("<H", s.raw, at + 6)[0]
    return s.raw[at + 8:at + 8 + length].rstrip(b"\0").decode()


# -- the walk itself, in process ---------------------------------------------------------

def test_pydicom_test_files_are_whole_but_the_cut_ones() -> None:
    """Every file pydicom ships is whole, except the ones it ships cut (and
    those that are not DICOM at all)."""
    from pydicom.data import get_testdata_files

    from pacsnode.dicom.wholeness import Incomplete, check_bare, check_file
    refused = {}
    for name in get_testdata_files("*"):
        path = Path(name)
        if not path.is_file():
            continue
        raw = path.read_bytes()
        try:
            check_file(raw) if raw[128:132] == b"DICM" else check_bare(raw)
        except Incomplete as exc:
            refused[path.name] = exc.describe()
    cut = {n for n in refused if n.endswith((".dcm",)) and "truncated" in n}
    assert cut == {"MR_truncated.dcm", "rtplan_truncated.dcm"}, refused
    assert refused["MR_truncated.dcm"].startswith("truncated at byte 9630: (7FE0,0010)")
    others = set(refused) - cut
    # Not DICOM (text, JSON, gzip, ICC profile) or a data set pydicom itself
    # reads as one garbage element (no_meta.dcm).
    assert all(n.endswith((".txt", ".json", ".gz", ".icc", ".dump")) or n == "no_meta.dcm"
               for n in others), others


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "image_dfl.dcm",
                                  "MR_small_implicit.dcm", "ExplVR_BigEndNoMeta.dcm"])
def test_other_encodings_cut_are_refused(tmp_path: Path, name: str) -> None:
    """Big Endian, Deflated, Implicit VR and a Big Endian data set without
    file meta: whole, stored; cut short, refused naming the byte."""
    from pydicom.data import get_testdata_file

    from pacsnode.config import load_settings
    from pacsnode.events import Origin
    from pacsnode.node import Node
    node = Node(load_settings(overrides={"data_dir": tmp_path / "data", "fsync": False},
                              environ={}))
    try:
        raw = Path(get_testdata_file(name)).read_bytes()
        (tmp_path / "cut.dcm").write_bytes(raw[:-101])
        result = node.ingestor.ingest_path(tmp_path / "cut.dcm", Origin("import"))
        assert result.outcome.value == "refused"
        assert result.reason.startswith(f"truncated at byte {len(raw) - 101}: "), result.reason
        assert list((tmp_path / "data" / "studies").rglob("*.dcm")) == []
        whole = node.ingestor.ingest_path(get_testdata_file(name), Origin("import"))
        assert whole.outcome.value == "stored", whole.reason
    finally:
        node.close()
