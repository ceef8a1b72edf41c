"""pacsnode img2dcm: JPEG kept byte for byte, PNG pixels equal, and every
output passes dicom3tools' dciodvfy without an error."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from conftest import require_tool
from pacsnode.cli import main

ENV = {**os.environ, "TCP_NODELAY": "1"}
SC = "1.2.840.10008.5.1.4.1.1.7"


def pacsnode(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def dciodvfy_errors(path: Path) -> list[str]:
    exe = require_tool("dciodvfy", "dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, env=ENV)
    report = proc.stdout + proc.stderr
    assert "SCImage" in report  # dciodvfy recognised the IOD
    return [line for line in report.splitlines() if line.startswith("Error")]


def dcmdump_ok(path: Path) -> str:
    exe = require_tool("dcmdump", "dcmtk")
    proc = subprocess.run([exe, str(path)], capture_output=True, env=ENV)
    assert proc.returncode == 0 and b"E:" not in proc.stderr, proc.stderr
    return proc.stdout.decode("latin-1")


def picture(shape: tuple[int, ...]) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    base = ((x * 7 + y * 3) % 256).astype(np.uint8)
    if len(shape) == 3:
        return np.stack([base, 255 - base, (base.astype(np.uint16) * 2 % 256).astype(np.uint8)],
                        axis=-1)
    return base


def frame_of(ds: pydicom.Dataset) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


@pytest.mark.parametrize("mode, photometric, samples", [
    ("RGB", "YBR_FULL_422", 3),
    ("L", "MONOCHROME2", 1),
])
def test_jpeg_is_kept_byte_for_byte(tmp_path: Path, mode: str, photometric: str,
                                    samples: int) -> None:
    arr = picture((48, 64, 3) if mode == "RGB" else (48, 64))
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="JPEG", quality=90)
    jpeg = tmp_path / "photo.jpg"
    jpeg.write_bytes(buf.getvalue())
    out = tmp_path / "photo.dcm"
    code, _, err = pacsnode("img2dcm", str(jpeg), str(out))
    assert code == 0, err
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.SOPClassUID == SC and ds.ConversionType == "WSD"
    assert (ds.Rows, ds.Columns, ds.SamplesPerPixel) == (48, 64, samples)
    assert ds.PhotometricInterpretation == photometric
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (8, 8, 7, 0)
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == "ISO_10918_1"
    frame = frame_of(ds)
    data = jpeg.read_bytes()
    assert frame[:len(data)] == data and frame[len(data):] in (b"", b"\x00")
    # the stored stream decodes (pydicom: to RGB) to what Pillow decodes from the file
    decoded = ds.pixel_array
    with Image.open(jpeg) as im:
        reference = np.asarray(im.convert("RGB" if samples == 3 else "L"))
    diff = np.abs(decoded.astype(int) - reference.astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 32  # decoders upsample chroma differently
    assert dciodvfy_errors(out) == []
    text = dcmdump_ok(out)
    assert "(7fe0,0010) OB (PixelSequence #=2)" in text


@pytest.mark.parametrize("mode, shape, photometric", [
    ("RGB", (40, 30, 3), "RGB"),
    ("L", (40, 30), "MONOCHROME2"),
    ("I;16", (40, 30), "MONOCHROME2"),
])
def test_png_pixels_are_equal(tmp_path: Path, mode: str, shape: tuple[int, ...],
                              photometric: str) -> None:
    arr = picture(shape)
    if mode == "I;16":
        arr = arr.astype(np.uint16) * 250
    png = tmp_path / "chart.png"
    Image.fromarray(arr).save(png)
    out = tmp_path / "chart.dcm"
    code, _, err = pacsnode("img2dcm", str(png), str(out))
    assert code == 0, err
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert ds.PhotometricInterpretation == photometric
    assert "LossyImageCompression" not in ds
    assert np.array_equal(ds.pixel_array, arr)
    assert ds.BitsStored == (16 if mode == "I;16" else 8)
    assert dciodvfy_errors(out) == []
    dcmdump_ok(out)


def test_series_from_and_study_from(tmp_path: Path) -> None:
    ref = get_testdata_file("CT_small.dcm")
    refds = pydicom.dcmread(ref)
    png = tmp_path / "x.png"
    Image.fromarray(picture((16, 16))).save(png)

    same_series = tmp_path / "series.dcm"
    assert pacsnode("img2dcm", str(png), str(same_series), "--series-from", ref)[0] == 0
    ds = pydicom.dcmread(same_series)
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyInstanceUID", "StudyID",
                    "StudyDate", "SeriesInstanceUID", "SeriesNumber", "Modality",
                    "SpecificCharacterSet"):
        assert ds[keyword].value == refds[keyword].value, keyword
    assert ds.OtherPatientIDsSequence[0].PatientID == "ABCD1234"
    assert ds.SOPInstanceUID != refds.SOPInstanceUID
    assert ds.InstanceNumber == refds.InstanceNumber + 1
    assert dciodvfy_errors(same_series) == []

    same_study = tmp_path / "study.dcm"
    assert pacsnode("img2dcm", str(png), str(same_study), "--study-from", ref)[0] == 0
    ds = pydicom.dcmread(same_study)
    assert ds.StudyInstanceUID == refds.StudyInstanceUID
    assert ds.PatientName == refds.PatientName
    assert ds.SeriesInstanceUID != refds.SeriesInstanceUID
    assert ds.Modality == "OT"
    assert dciodvfy_errors(same_study) == []

    alone = tmp_path / "alone.dcm"
    assert pacsnode("img2dcm", str(png), str(alone))[0] == 0
    ds = pydicom.dcmread(alone)
    assert ds.StudyInstanceUID not in (refds.StudyInstanceUID, "")
    assert ds.PatientName == "" and ds.PatientID == ""
    assert dciodvfy_errors(alone) == []

    code, _, err = pacsnode("img2dcm", str(png), str(alone), "--series-from", ref,
                            "--study-from", ref)
    assert code == 1 and "not both" in err


def test_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("no pixels here")
    code, _, err = pacsnode("img2dcm", str(bad), str(tmp_path / "x.dcm"))
    assert code == 1 and str(bad) in err and "not an image" in err
    assert not (tmp_path / "x.dcm").exists()
