"""The DCMTK session of seed 002 ("Create a DICOM file from thin air"),
replayed with pacsnode commands only, each result checked by DCMTK's dcmdump
and dicom3tools' dciodvfy.  (The seed's storescp/storescu part is tested
with the network commands.)

    touch empty.dump; dump2dcm empty.dump one.dcm
    dcmdump one.dcm > step2.dump; echo ... >> step2.dump; dump2dcm step2.dump two.dcm
    convert image.pnm image.jpg; img2dcm --series-from two.dcm image.jpg three.dcm
    dcmdump +P StudyDescription PI...; dcmodify -m "StudyDescription=I changed that" PI...
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import require_tool
from pacsnode.cli import main

ENV = {**os.environ, "TCP_NODELAY": "1"}
STEP2_LINES = (
    "(0010,0010) PN [WORKSHOP01]\n"
    "(0010,0020) LN [WORKSHOP01]\n"
    "(0020,000D) UI [1.3.6.1.4.1.45037.5.2.1.987655444]\n"
    "(0020,000E) UI [1.3.6.1.4.1.45037.5.2.1.123456789]\n"
)
PNM = "P1\n10 10\n" + "0 0 0 0 0 0 0 0 0 0\n" * 10
#: What dciodvfy says about any file whose data set names no SOP Class (as
#: dump2dcm's own one.dcm): the IOD cannot be identified.
NO_IOD_ERRORS = ("missing SOPInstanceUID", "missing SOPClassUID", "Information Object Not found")


def pacsnode(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def tool(name: str, package: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool(name, package)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=ENV,
                          errors="replace")


def dcmdump(*args: str) -> str:
    proc = tool("dcmdump", "dcmtk", *args)
    assert proc.returncode == 0, proc.stderr
    assert "E:" not in proc.stderr and "W:" not in proc.stderr, proc.stderr
    return proc.stdout


def dciodvfy_errors(path: Path) -> list[str]:
    proc = tool("dciodvfy", "dicom3tools", str(path))
    assert "Abort" not in proc.stdout + proc.stderr
    return [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("Error")]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def test_seed_session_with_pacsnode(work: Path) -> None:
    # touch empty.dump; dump2dcm empty.dump one.dcm
    empty = work / "empty.dump"
    empty.touch()
    one = work / "one.dcm"
    code, _, err = pacsnode("create", str(one), "--from-dump", str(empty))
    assert code == 0, err
    text = dcmdump(str(one))
    assert "# Dicom-Meta-Information-Header" in text and "=LittleEndianExplicit" in text
    assert tool("dcmftest", "dcmtk", str(one)).stdout.startswith("yes:")
    # dciodvfy finds nothing wrong but what it also says about DCMTK's own one.dcm
    dcmtk_one = work / "dcmtk_one.dcm"
    assert tool("dump2dcm", "dcmtk", str(empty), str(dcmtk_one)).returncode == 0
    ours = dciodvfy_errors(one)
    assert all(any(k in e for k in NO_IOD_ERRORS) for e in ours), ours
    assert len(ours) <= len(dciodvfy_errors(dcmtk_one))

    # dcmdump one.dcm > step2.dump; echo ... >> step2.dump; dump2dcm step2.dump two.dcm
    code, dumped, _ = pacsnode("dump", str(one))
    assert code == 0
    step2 = work / "step2.dump"
    step2.write_text(dumped + STEP2_LINES)
    two = work / "two.dcm"
    code, _, err = pacsnode("create", str(two), "--from-dump", str(step2))
    assert code == 0, err
    assert "'LN' is not a VR" in err          # the seed's typo, mended with a warning
    text = dcmdump(str(two))
    assert "(0010,0010) PN [WORKSHOP01]" in text
    assert "(0010,0020) LO [WORKSHOP01]" in text
    assert "(0020,000d) UI [1.3.6.1.4.1.45037.5.2.1.987655444]" in text
    assert "(0020,000e) UI [1.3.6.1.4.1.45037.5.2.1.123456789]" in text
    assert all(any(k in e for k in NO_IOD_ERRORS) for e in dciodvfy_errors(two))
    # DCMTK reads the same dump (our dump text) to the same data set
    dcmtk_two = work / "dcmtk_two.dcm"
    assert tool("dump2dcm", "dcmtk", str(step2), str(dcmtk_two)).returncode == 0
    a, b = pydicom.dcmread(two), pydicom.dcmread(dcmtk_two)
    assert [(e.tag, e.VR, e.value) for e in a] == [(e.tag, e.VR, e.value) for e in b]

    # convert image.pnm image.jpg; img2dcm --series-from two.dcm image.jpg three.dcm
    (work / "image.pnm").write_text(PNM)
    with Image.open(work / "image.pnm") as pnm:
        assert pnm.size == (10, 10)
        buf = io.BytesIO()
        pnm.convert("L").save(buf, format="JPEG")
    jpg = work / "image.jpg"
    jpg.write_bytes(buf.getvalue())
    three = work / "three.dcm"
    code, _, err = pacsnode("img2dcm", "--series-from", str(two), str(jpg), str(three))
    assert code == 0, err
    text = dcmdump(str(three))
    for line in ("(0002,0002) UI =SecondaryCaptureImageStorage",
                 "(0002,0010) UI =JPEGBaseline",
                 "# Used TransferSyntax: JPEG Baseline",
                 "(0008,0064) CS [WSD]",
                 "(0010,0010) PN [WORKSHOP01]",
                 "(0010,0020) LO [WORKSHOP01]",
                 "(0020,000d) UI [1.3.6.1.4.1.45037.5.2.1.987655444]",
                 "(0020,000e) UI [1.3.6.1.4.1.45037.5.2.1.123456789]",
                 "(0028,0002) US 1", "(0028,0004) CS [MONOCHROME2]",
                 "(0028,0010) US 10", "(0028,0011) US 10",
                 "(0028,2110) CS [01]", "(7fe0,0010) OB (PixelSequence #=2)"):
        assert line in text, line
    assert dciodvfy_errors(three) == []
    ds = pydicom.dcmread(three)
    # PBM 0 is white: the seed image is a white 10x10 square
    assert ds.pixel_array.shape == (10, 10) and int(ds.pixel_array.min()) > 247

    # dcmdump +P StudyDescription PI...; dcmodify -m "StudyDescription=I changed that" PI...
    pi = work / "PI.1.3.6.1.4.1.14519.5.2.1.6450.9002.927456543152011698231718997971"
    shutil.copy(get_testdata_file("CT_small.dcm"), pi)
    code, before, _ = pacsnode("dump", "--tag", "StudyDescription", str(pi))
    assert code == 0
    assert before == dcmdump("+P", "StudyDescription", str(pi))
    assert "(0008,1030) LO [e+1]" in before
    code, _, err = pacsnode("modify", "-m", "StudyDescription=I changed that", str(pi))
    assert code == 0, err
    code, after, _ = pacsnode("dump", "--tag", "StudyDescription", str(pi))
    assert after == dcmdump("+P", "StudyDescription", str(pi))
    assert after == ("(0008,1030) LO [I changed that]                         "
                     "#  14, 1 StudyDescription\n")
    assert dciodvfy_errors(pi) == []
