"""pacsnode create: Part 10 files from dcmdump's and our own dumps, read back
by DCMTK."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from conftest import require_tool
from pacsnode.cli import main
from pacsnode.tools.common import IMPLEMENTATION_CLASS_UID

ENV = {**os.environ, "TCP_NODELAY": "1"}


def pacsnode(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    exe = require_tool(tool, "dcmtk")
    return subprocess.run([exe, *args], capture_output=True, env=ENV)


def read_back_by_dcmtk(path: Path) -> str:
    proc = dcmtk("dcmdump", str(path))
    assert proc.returncode == 0, proc.stderr
    assert b"E:" not in proc.stderr and b"W:" not in proc.stderr, proc.stderr
    assert dcmtk("dcmftest", str(path)).stdout.startswith(b"yes:")
    return proc.stdout.decode("latin-1")


def assert_same_elements(a: Dataset, b: Dataset, where: str = "") -> None:
    assert [e.tag for e in a] == [e.tag for e in b], where
    for x in a:
        y = b[x.tag]
        assert x.VR == y.VR, f"{where}{x.tag}"
        if x.VR == "SQ":
            assert len(x.value) == len(y.value)
            for n, (i, j) in enumerate(zip(x.value, y.value)):
                assert_same_elements(i, j, f"{where}{x.tag}[{n}].")
        else:
            assert x.value == y.value, f"{where}{x.tag}: {x.value!r} != {y.value!r}"


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "test-SR.dcm"])
def test_from_dcmdump_output_reproduces_the_elements(tmp_path: Path, name: str) -> None:
    source = get_testdata_file(name)
    dump = tmp_path / "in.dump"
    proc = dcmtk("dcmdump", "+L", source)
    assert proc.returncode == 0
    dump.write_bytes(proc.stdout)
    out = tmp_path / "out.dcm"
    code, _, err = pacsnode("create", str(out), "--from-dump", str(dump))
    assert code == 0, err
    read_back_by_dcmtk(out)
    original, created = pydicom.dcmread(source), pydicom.dcmread(out)
    assert_same_elements(original, created)
    # the transfer syntax named in the dump is the one written
    assert created.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert created.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG-lossy.dcm", "MR_small_bigendian.dcm"])
def test_from_our_full_dump_round_trips(tmp_path: Path, name: str) -> None:
    """dump --full → create gives back the same data set, encapsulated pixel
    data and big endian OW included."""
    source = get_testdata_file(name)
    code, text, _ = pacsnode("dump", "--full", source)
    assert code == 0
    dump = tmp_path / "ours.dump"
    dump.write_text(text, encoding="utf-8")
    out = tmp_path / "out.dcm"
    code, _, err = pacsnode("create", str(out), "--from-dump", str(dump))
    assert code == 0, err
    read_back_by_dcmtk(out)
    original, created = pydicom.dcmread(source), pydicom.dcmread(out)
    assert_same_elements(original, created)
    assert created.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID


def test_dump2dcm_reads_our_dump(tmp_path: Path) -> None:
    source = get_testdata_file("rtplan.dcm")
    _, text, _ = pacsnode("dump", "--full", source)
    dump = tmp_path / "ours.dump"
    dump.write_text(text)
    out = tmp_path / "by_dcmtk.dcm"
    proc = dcmtk("dump2dcm", str(dump), str(out))
    assert proc.returncode == 0, proc.stderr
    assert_same_elements(pydicom.dcmread(source), pydicom.dcmread(out))


def test_empty_dump_gives_a_minimal_valid_file(tmp_path: Path) -> None:
    dump = tmp_path / "empty.dump"
    dump.touch()
    out = tmp_path / "one.dcm"
    code, _, err = pacsnode("create", str(out), "--from-dump", str(dump))
    assert code == 0, err
    text = read_back_by_dcmtk(out)
    assert "# Dicom-Data-Set" in text
    ds = pydicom.dcmread(out)
    assert len(ds) == 0
    meta = ds.file_meta
    for keyword in ("FileMetaInformationGroupLength", "FileMetaInformationVersion",
                    "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                    "TransferSyntaxUID", "ImplementationClassUID"):
        assert meta.get(keyword) not in (None, ""), keyword
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.FileMetaInformationVersion == b"\x00\x01"


def test_meta_header_from_the_data_set(tmp_path: Path) -> None:
    dump = tmp_path / "x.dump"
    dump.write_text(
        "# a hand-written dump\n"
        "(0002,0010) UI =LittleEndianImplicit      # meta lines make the meta header\n"
        "(0008,0016) UI =CTImageStorage\n"
        "(0008,0018) UI [1.2.3.4.5]\n"
        "(0008,0060) CT\n"
        "(0010,0010) PN DOE^JOHN\n"
        "(0028,0010) US 512   # 2, 1 Rows\n"
        "(0028,0030) DS [0.5\\0.5]\n"
        "(0020,9165) AT (0010,0010)\\(0020,0032)\n"
        "(0008,1115) SQ (Sequence with undefined length #=1)\n"
        "  (fffe,e000) na (Item with undefined length #=1)\n"
        "    (0020,000e) UI [1.2.3.6]\n"
        "  (fffe,e00d) na (ItemDelimitationItem)\n"
        "(fffe,e0dd) na (SequenceDelimitationItem)\n"
        "(0008,1110) SQ (Sequence with explicit length #=0)\n"
        "(fffe,e0dd) na (SequenceDelimitationItem for re-encod.)\n"
        "(0020,4000) LT [text with # and ] inside]   # comment\n")
    out = tmp_path / "x.dcm"
    code, _, err = pacsnode("create", str(out), "--from-dump", str(dump))
    assert code == 0, err
    text = read_back_by_dcmtk(out)
    assert "# Used TransferSyntax: Little Endian Implicit" in text
    ds = pydicom.dcmread(out)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert ds.Modality == "CT" and ds.PatientName == "DOE^JOHN" and ds.Rows == 512
    assert list(ds.PixelSpacing) == [0.5, 0.5]
    assert list(ds.DimensionIndexPointer) == [0x00100010, 0x00200032]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.6"
    assert len(ds.ReferencedStudySequence) == 0
    assert ds.ImageComments == "text with # and ] inside"


def test_invalid_vr_uses_the_dictionary_and_warns(tmp_path: Path) -> None:
    dump = tmp_path / "x.dump"
    dump.write_text("(0010,0020) LN [WORKSHOP01]\n(0008,0020) DA [yesterday]\n")
    out = tmp_path / "x.dcm"
    code, _, err = pacsnode("create", str(out), "--from-dump", str(dump))
    assert code == 0
    assert "line 1" in err and "'LN' is not a VR" in err and "LO" in err
    assert "line 2" in err and "DA" in err  # invalid value: written, with a warning
    ds = pydicom.dcmread(out)
    assert ds["PatientID"].VR == "LO" and ds.PatientID == "WORKSHOP01"
    assert "(0010,0020) LO [WORKSHOP01]" in read_back_by_dcmtk(out)


@pytest.mark.parametrize("body, words", [
    ("(0020,4000) LT [" + "C" * 66 + "... # 100, 1 ImageComments\n", ["line 1", "--full"]),
    ("(7fe0,0010) OW 00af\\00b4\\00a6... # 32768, 1 PixelData\n", ["line 1", "shortened"]),
    ("(0028,0010) US many\n", ["line 1", "not an integer"]),
    ("this is not a dump line\n", ["line 1", "cannot read"]),
    ("(fffe,e000) na (Item with explicit length #=0)\n", ["line 1", "outside of a sequence"]),
    ("(0008,0016) UI =NoSuchSOPClass\n", ["line 1", "NoSuchSOPClass"]),
    ("(0002,0010) UI [1.2.3]\n", ["not a transfer syntax"]),
])
def test_damaged_dumps_are_refused(tmp_path: Path, body: str, words: list[str]) -> None:
    dump = tmp_path / "bad.dump"
    dump.write_text(body)
    out = tmp_path / "bad.dcm"
    code, _, err = pacsnode("create", str(out), "--from-dump", str(dump))
    assert code == 1
    assert str(dump) in err
    for word in words:
        assert word in err
    assert not out.exists()
