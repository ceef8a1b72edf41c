"""pacsnode img2dcm: JPEG kept byte for byte, PNG pixels equal, and every
output passes dicom3tools' dciodvfy without an error."""

from __future__ import annotations

import io
import os
import subprocess
import warnings
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


# -- --series-from: what is copied holds in a Secondary Capture image --------

def _readable_testdata() -> list[str]:
    """pydicom's bundled files that pacsnode reads as DICOM (no_meta.dcm
    starts with a stray byte and is refused as not DICOM)."""
    from pacsnode.tools.common import ToolError, read_dicom
    names = []
    for path in sorted(Path(pydicom.data.__file__).parent.joinpath("test_files").glob("*.dcm")):
        try:
            read_dicom(path, stop_before_pixels=True)
        except ToolError:
            continue
        names.append(Path(path).name)
    return names


def dciodvfy_report(path: Path) -> tuple[list[str], list[str]]:
    exe = require_tool("dciodvfy", "dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, env=ENV)
    lines = (proc.stdout + proc.stderr).splitlines()
    return ([l for l in lines if l.startswith("Error")],
            [l for l in lines if l.startswith("Warning")])


@pytest.fixture(scope="module")
def small_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    png = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(picture((16, 16))).save(png)
    return png


@pytest.mark.parametrize("name", _readable_testdata())
def test_series_from_every_bundled_file_passes_dciodvfy(tmp_path: Path, small_png: Path,
                                                        name: str) -> None:
    ref = get_testdata_file(name)
    with warnings.catch_warnings():  # some bundled files are odd on purpose
        warnings.simplefilter("ignore")
        refds = pydicom.dcmread(ref, stop_before_pixels=True, force=True)
    out = tmp_path / "sc.dcm"
    code, _, err = pacsnode("img2dcm", str(small_png), str(out), "--series-from", ref)
    assert code == 0, err
    ds = pydicom.dcmread(out)
    assert ds.SeriesInstanceUID == refds.get("SeriesInstanceUID", ds.SeriesInstanceUID)
    errors, warning_lines = dciodvfy_report(out)
    assert errors == [], name
    # the only warnings about what pacsnode wrote: an empty Laterality where the
    # body part is not known to be unpaired (Type 2: "unknown")
    for line in warning_lines:
        if "Laterality" in line:
            assert "only permitted to be empty when actually unknown" in line, line


def test_series_from_the_suite_test_data_passes_dciodvfy(tmp_path: Path,
                                                         small_png: Path) -> None:
    from dicomfiles import make_ct, one_study_per_syntax
    _, files = one_study_per_syntax(tmp_path / "ts")
    sources = list(files.values())
    make_ct(tmp_path / "ct.dcm", charset="ISO_IR 192", patient_name="Müller^Jürgen")
    sources.append(tmp_path / "ct.dcm")
    for n, ref in enumerate(sources):
        out = tmp_path / f"sc{n}.dcm"
        code, _, err = pacsnode("img2dcm", str(small_png), str(out), "--series-from", str(ref))
        assert code == 0, err
        assert dciodvfy_report(out)[0] == [], ref.name
    assert pydicom.dcmread(tmp_path / f"sc{len(sources) - 1}.dcm").PatientName == \
        "Müller^Jürgen"


def reference(tmp_path: Path, **attrs: object) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in attrs.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            with warnings.catch_warnings():  # invalid values on purpose
                warnings.simplefilter("ignore")
                setattr(ds, keyword, value)
    path = tmp_path / "ref.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path)
    return path


@pytest.mark.parametrize("body_part, modality, laterality, expected", [
    ("BREAST", "MG", "L", "L"),       # paired, known side: copied
    ("KNEE", "CT", None, ""),         # paired, side not given: present, empty (unknown)
    ("HEAD", "CT", "R", None),        # unpaired: never present
    ("ABDOMEN", "MR", "", None),
    (None, "CT", "R", "R"),           # no body part: the reference's side
    (None, "CT", "", ""),             # no body part, no side: unknown
    (None, "ECG", "", None),          # ECG examines the heart: unpaired
])
def test_laterality_only_when_its_condition_holds(tmp_path: Path, small_png: Path,
                                                  body_part: str | None, modality: str,
                                                  laterality: str | None,
                                                  expected: str | None) -> None:
    ref = reference(tmp_path, BodyPartExamined=body_part, Modality=modality,
                    Laterality=laterality)
    out = tmp_path / "sc.dcm"
    code, _, err = pacsnode("img2dcm", str(small_png), str(out), "--series-from", str(ref))
    assert code == 0, err
    ds = pydicom.dcmread(out)
    if expected is None:
        assert "Laterality" not in ds
    else:
        assert ds.Laterality == expected
    errors, _ = dciodvfy_report(out)
    assert errors == []


def test_copied_values_are_mended_or_left_out(tmp_path: Path, small_png: Path) -> None:
    ref = reference(tmp_path, StudyDate="1997.04.24", StudyTime="14:04:38",
                    SeriesDate="2024-13-45", SpecificCharacterSet="",
                    PatientIdentityRemoved="YES")
    out = tmp_path / "sc.dcm"
    code, _, err = pacsnode("img2dcm", str(small_png), str(out), "--series-from", str(ref))
    assert code == 0, err
    assert "warning" in err and "SeriesDate" in err and str(ref) in err
    sc = pydicom.dcmread(out)
    assert (sc.StudyDate, sc.StudyTime) == ("19970424", "140438")   # ACR-NEMA forms mended
    assert "SeriesDate" not in sc                                    # invalid, Type 3: left out
    assert "SpecificCharacterSet" not in sc                          # Type 1C: only with a value
    assert sc.PatientIdentityRemoved == "YES" and sc.DeidentificationMethod
    assert dciodvfy_report(out)[0] == []
