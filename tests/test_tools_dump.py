"""pacsnode dump against DCMTK's dcmdump, line by line."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from conftest import require_tool
from pacsnode.cli import main

LINE = re.compile(r"^(\s*\([0-9a-f]{4},[0-9a-f]{4}\)) (\S\S) (.*\S)\s+#\s*(u/l|\d+),\s*(\d+) (.*)$")
ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmdump(*args: str) -> str:
    exe = require_tool("dcmdump", "dcmtk")
    proc = subprocess.run([exe, *args], capture_output=True, env=ENV, check=True)
    return proc.stdout.decode("latin-1")  # dcmdump prints ISO_IR 100 text as raw bytes


def pacsnode(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def columns(line: str) -> tuple[str, ...] | str:
    m = LINE.match(line)
    return m.groups()[:5] if m else line


def same_value(vr: str, ours: str, theirs: str) -> bool:
    """Values equal; FL/FD compared as numbers (DCMTK formats floats its own way)."""
    if ours == theirs:
        return True
    if vr in ("FL", "FD", "OF", "OD") and not ours.endswith("..."):
        a, b = ours.split("\\"), theirs.split("\\")
        return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=1e-6)
                                        for x, y in zip(a, b))
    return False


def assert_like_dcmdump(path: str, *, lengths: bool = True) -> int:
    code, out, err = pacsnode("dump", path)
    assert code == 0, err
    ours, theirs = out.splitlines(), dcmdump(path).splitlines()
    assert len(ours) == len(theirs)
    compared = 0
    for mine, ref in zip(ours, theirs):
        a, b = columns(mine), columns(ref)
        if isinstance(b, str):          # header and comment lines: identical
            assert mine == ref
            continue
        assert not isinstance(a, str), mine
        tag, vr, value, length, vm = a
        assert (tag, vr) == b[:2], (mine, ref)
        assert same_value(vr, value, b[2]), (mine, ref)
        if lengths:
            assert (length, vm) == b[3:5], (mine, ref)
        compared += 1
    return compared


def test_ct_small_matches_dcmdump() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert assert_like_dcmdump(path) > 250
    code, out, _ = pacsnode("dump", path)
    assert out.startswith("\n# Dicom-File-Format\n\n# Dicom-Meta-Information-Header\n"
                          "# Used TransferSyntax: Little Endian Explicit\n")
    assert "# Dicom-Data-Set\n# Used TransferSyntax: Little Endian Explicit\n" in out
    # the shape the brief asks for, column for column
    assert "(0010,0010) PN [CompressedSamples^CT1]                  #  22, 1 PatientName" in out
    assert "(0008,0016) UI =CTImageStorage                          #  26, 1 SOPClassUID" in out
    assert "(0008,0050) SH (no value available)                     #   0, 0 AccessionNumber" \
        in out
    # pixel data summarised, long binary values cut with '...'
    pixel_line = next(line for line in out.splitlines() if line.startswith("(7fe0,0010)"))
    assert pixel_line.split(" #")[0].rstrip().endswith("...")
    assert "# 32768, 1 PixelData" in pixel_line


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_sequences_match_dcmdump(name: str) -> None:
    """Nested sequences, items and their delimitation lines, as dcmdump."""
    path = get_testdata_file(name)
    assert assert_like_dcmdump(path) > 50
    _, out, _ = pacsnode("dump", path)
    assert re.search(r"^  \(fffe,e000\) na \(Item with (explicit|undefined) length #=\d+\)",
                     out, re.M)
    assert re.search(r"^  \(fffe,e00d\) na \(ItemDelimitationItem", out, re.M)
    assert re.search(r"^\(fffe,e0dd\) na \(SequenceDelimitationItem", out, re.M)


def test_encapsulated_pixel_data_and_big_endian_match_dcmdump() -> None:
    assert_like_dcmdump(get_testdata_file("JPEG-lossy.dcm"))
    assert_like_dcmdump(get_testdata_file("MR_small_bigendian.dcm"))
    _, out, _ = pacsnode("dump", get_testdata_file("JPEG-lossy.dcm"))
    assert "(7fe0,0010) OB (PixelSequence #=2)" in out
    assert "  (fffe,e000) pi (no value available)" in out


def test_file_without_preamble_and_meta_header() -> None:
    path = get_testdata_file("ExplVR_BigEndNoMeta.dcm")
    assert assert_like_dcmdump(path) > 10
    _, out, _ = pacsnode("dump", path)
    assert "# Used TransferSyntax: Unknown Transfer Syntax" in out
    assert "# Dicom-Data-Set\n# Used TransferSyntax: Big Endian Explicit" in out


def test_tag_prints_like_dcmdump_search(tmp_path: Path) -> None:
    path = get_testdata_file("CT_small.dcm")
    code, out, _ = pacsnode("dump", "--tag", "PatientID", "--tag", "(0008,0060)", path)
    assert code == 0
    assert out.splitlines() == dcmdump("+P", "PatientID", "+P", "0008,0060", path).splitlines()
    # found inside OtherPatientIDsSequence too
    assert out.count("PatientID") == 3
    code, out, err = pacsnode("dump", "--tag", "NoSuchKeyword", path)
    assert code == 2 and "NoSuchKeyword" in err


def test_full_prints_long_values_whole(tmp_path: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyDescription = "D" * 64
    ds.ImageComments = "C" * 100
    path = tmp_path / "long.dcm"
    ds.save_as(path)
    _, cut, _ = pacsnode("dump", str(path))
    _, full, _ = pacsnode("dump", "--full", str(path))
    assert "(0020,4000) LT [" + "C" * 66 + "... # 100, 1 ImageComments" in cut
    assert "(0020,4000) LT [" + "C" * 100 + "] # 100, 1 ImageComments" in full
    assert "[" + "D" * 64 + "]" in cut  # fits the line: not cut
    assert full.count("...") == 0


def test_json_round_trips_through_pydicom() -> None:
    path = get_testdata_file("CT_small.dcm")
    code, out, err = pacsnode("dump", "--json", path)
    assert code == 0, err
    doc = json.loads(out)
    pixel = doc["7FE00010"]
    assert "Value" not in pixel and "InlineBinary" not in pixel
    assert pixel["BulkDataURI"].startswith("file://")
    assert pixel["BulkDataURI"].endswith("#7FE00010")
    assert str(Path(path).resolve().name) in pixel["BulkDataURI"]

    back = Dataset.from_json(doc, bulk_data_uri_handler=lambda tag, vr, uri: None)
    original = pydicom.dcmread(path)
    bulk = {k for k, v in doc.items() if "BulkDataURI" in v}
    assert len(back) == len(original)
    for elem in original:
        key = f"{int(elem.tag):08X}"
        if key in bulk:
            continue
        mine = back[elem.tag]
        assert mine.VR == elem.VR, key
        if elem.VR == "SQ":
            assert len(mine.value) == len(elem.value)
            for a, b in zip(mine.value, elem.value):
                assert a == b
        else:
            assert mine.value == elem.value, key


def test_json_of_several_files_is_a_list_and_tag_filters() -> None:
    a, b = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    code, out, _ = pacsnode("dump", "--json", "--tag", "PatientName", a, b)
    assert code == 0
    docs = json.loads(out)
    assert [list(d) for d in docs] == [["00100010"], ["00100010"]]
    assert docs[0]["00100010"]["Value"][0]["Alphabetic"] == "CompressedSamples^CT1"


@pytest.mark.parametrize("content, reason", [
    (b"hello, this is a text file\n" * 10, "not a DICOM file"),
    (b"", "the file is empty"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 200, "not a DICOM file"),
])
def test_not_dicom_is_reported_clearly(tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "notes.dcm"
    bad.write_bytes(content)
    good = get_testdata_file("MR_small.dcm")
    code, out, err = pacsnode("dump", str(bad), good)
    assert code == 1
    assert str(bad) in err and reason in err
    assert "Traceback" not in err
    assert "# Dicom-Data-Set" in out  # the good file is still dumped
    code, _, err = pacsnode("dump", str(tmp_path / "missing.dcm"))
    assert code == 1 and "no such file" in err
