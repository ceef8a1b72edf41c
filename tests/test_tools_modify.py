"""pacsnode modify: -m / -i / -e, paths into sequences, VR checks, backups,
and the file keeping its transfer syntax — checked with DCMTK's dcmdump."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from conftest import require_tool
from pacsnode.cli import main

ENV = {**os.environ, "TCP_NODELAY": "1"}


def pacsnode(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def dcmdump(*args: str) -> str:
    exe = require_tool("dcmdump", "dcmtk")
    proc = subprocess.run([exe, *args], capture_output=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert b"E:" not in proc.stderr, proc.stderr
    return proc.stdout.decode("latin-1")


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    return path


def test_modify_existing_keeps_a_backup(ct: Path) -> None:
    original = ct.read_bytes()
    assert "[e+1]" in dcmdump("+P", "StudyDescription", str(ct))
    code, _, err = pacsnode("modify", "-m", "StudyDescription=I changed that", str(ct))
    assert code == 0, err
    assert dcmdump("+P", "StudyDescription", str(ct)).strip() == (
        "(0008,1030) LO [I changed that]                         #  14, 1 StudyDescription")
    assert (ct.parent / "ct.dcm.bak").read_bytes() == original
    before, after = pydicom.dcmread(ct.parent / "ct.dcm.bak"), pydicom.dcmread(ct)
    assert after.PixelData == before.PixelData
    assert [e.tag for e in after] == [e.tag for e in before]


def test_modify_absent_attribute_fails_and_leaves_file(ct: Path) -> None:
    original = ct.read_bytes()
    code, _, err = pacsnode("modify", "-m", "PatientComments=x", str(ct))
    assert code == 1
    assert str(ct) in err and "PatientComments" in err and "not present" in err
    assert ct.read_bytes() == original
    assert not (ct.parent / "ct.dcm.bak").exists()
    code, _, err = pacsnode("modify", "-e", "PatientComments", str(ct))
    assert code == 1 and ct.read_bytes() == original
    code, _, _ = pacsnode("modify", "--ignore-missing", "-e", "PatientComments",
                          "--no-backup", str(ct))
    assert code == 0


def test_insert_nested_path_creates_sequence_and_item(ct: Path) -> None:
    code, _, err = pacsnode(
        "modify", "-i", "ReferencedSeriesSequence[0].SeriesInstanceUID=1.2.3.4",
        "-i", "(0008,1115)[1].(0020,000e)=1.2.3.5", str(ct))
    assert code == 0, err
    ds = pydicom.dcmread(ct)
    assert [i.SeriesInstanceUID for i in ds.ReferencedSeriesSequence] == ["1.2.3.4", "1.2.3.5"]
    text = dcmdump(str(ct))
    assert "(0008,1115) SQ (Sequence with explicit length #=2)" in text
    assert "    (0020,000e) UI [1.2.3.4]" in text
    # -m into an existing nested element; [*] for every item
    code, _, err = pacsnode("modify", "-m", "ReferencedSeriesSequence[*].SeriesInstanceUID=9.9",
                            "--no-backup", str(ct))
    assert code == 0, err
    ds = pydicom.dcmread(ct)
    assert [i.SeriesInstanceUID for i in ds.ReferencedSeriesSequence] == ["9.9", "9.9"]
    # an item that is not there
    code, _, err = pacsnode("modify", "-m", "ReferencedSeriesSequence[5].SeriesInstanceUID=1",
                            str(ct))
    assert code == 1 and "has no item 5" in err


def test_insert_overwrites_and_erase_removes(ct: Path) -> None:
    code, _, err = pacsnode("modify", "-i", "PatientName=DOE^JANE", "-i",
                            "ImageType=DERIVED\\SECONDARY", "-i", "PatientComments",
                            "-e", "(0009,1001)", "-e", "OtherPatientIDsSequence", str(ct))
    assert code == 0, err
    ds = pydicom.dcmread(ct)
    assert ds.PatientName == "DOE^JANE"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert "PatientComments" in ds and ds.PatientComments == ""
    assert 0x00091001 not in ds and "OtherPatientIDsSequence" not in ds
    assert "(0010,4000) LT (no value available)" in dcmdump(str(ct))


@pytest.mark.parametrize("spec, words", [
    ("StudyDate=2024-13-45", ["StudyDate", "DA"]),
    ("StudyDate=20241301", ["StudyDate", "DA"]),
    ("StudyInstanceUID=1.2.abc", ["StudyInstanceUID", "UI"]),
    ("StudyInstanceUID=" + "1." * 40 + "1", ["StudyInstanceUID", "UI"]),
    ("Rows=70000", ["Rows", "US", "65535"]),
    ("Rows=-1", ["Rows", "US"]),
    ("Columns=abc", ["Columns", "not an integer"]),
    ("SliceThickness=thick", ["SliceThickness", "DS"]),
    ("PatientSex=male person", ["PatientSex", "CS"]),
    ("PatientID=a\\b", ["PatientID", "single value"]),
    ("StationName=" + "S" * 17, ["StationName", "SH"]),
])
def test_invalid_values_are_refused_file_untouched(ct: Path, spec: str,
                                                    words: list[str]) -> None:
    original = ct.read_bytes()
    code, _, err = pacsnode("modify", "-m", "StudyDescription=fine", "-m", spec, str(ct))
    assert code == 1
    assert str(ct) in err and "left unchanged" in err
    for word in words:
        assert word in err
    assert ct.read_bytes() == original
    assert not (ct.parent / "ct.dcm.bak").exists()


def test_charset_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "mr.dcm"
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.pop("SpecificCharacterSet", None)
    ds.save_as(path)
    code, _, err = pacsnode("modify", "-m", "PatientName=Jörg", str(path))
    assert code == 1 and "SpecificCharacterSet" in err
    code, _, err = pacsnode("modify", "-i", "SpecificCharacterSet=ISO_IR 192",
                            "-m", "PatientName=Jörg^Müller", str(path))
    assert code == 0, err
    assert str(pydicom.dcmread(path).PatientName) == "Jörg^Müller"


@pytest.mark.parametrize("name, ts", [
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
    ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51"),
])
def test_transfer_syntax_is_kept(tmp_path: Path, name: str, ts: str) -> None:
    path = tmp_path / name
    shutil.copy(get_testdata_file(name), path)
    before = pydicom.dcmread(path)
    code, _, err = pacsnode("modify", "-m", "PatientID=NEW-ID", "-i", "Rows=" + str(before.Rows),
                            "--no-backup", str(path))
    assert code == 0, err
    after = pydicom.dcmread(path)
    assert after.file_meta.TransferSyntaxUID == ts
    assert after.PatientID == "NEW-ID"
    assert after.PixelData == before.PixelData
    assert "PatientID" in dcmdump("+P", "PatientID", str(path))
    assert not (tmp_path / (name + ".bak")).exists()


def test_sop_instance_uid_change_updates_meta(ct: Path) -> None:
    code, _, err = pacsnode("modify", "-m", "SOPInstanceUID=1.2.826.0.1.99", str(ct))
    assert code == 0, err
    assert "[1.2.826.0.1.99]" in dcmdump("+P", "0002,0003", str(ct))


def test_file_without_meta_header_stays_without(tmp_path: Path) -> None:
    path = tmp_path / "raw.dcm"
    shutil.copy(get_testdata_file("ExplVR_BigEndNoMeta.dcm"), path)
    code, _, err = pacsnode("modify", "-i", "PatientID=X1", str(path))
    assert code == 0, err
    data = path.read_bytes()
    assert data[128:132] != b"DICM"
    ds = pydicom.dcmread(path, force=True)
    assert ds.PatientID == "X1"
    assert ds.original_encoding == (False, False)  # still explicit VR big endian


def test_several_files_one_bad(ct: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("not dicom")
    code, _, err = pacsnode("modify", "-m", "PatientID=P2", str(bad), str(ct))
    assert code == 1 and str(bad) in err and "not a DICOM file" in err
    assert pydicom.dcmread(ct).PatientID == "P2"


def test_nothing_to_do_and_bad_path() -> None:
    code, _, err = pacsnode("modify", "x.dcm")
    assert code == 2 and "-m, -i or -e" in err
    code, _, err = pacsnode("modify", "-m", "ReferencedSeriesSequence.SeriesInstanceUID=1",
                            "x.dcm")
    assert code == 2 and "ReferencedSeriesSequence[0]" in err
