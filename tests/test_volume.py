"""load_volume: sorting, geometry, rescale and refusals, on generated slices.

``make_ct_series`` is also used by the remote tests to put a known volume in
a real PACS."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacsnode.volume import NotAVolume, Volume, load_volume

SLOPE, INTERCEPT = 2.0, -1024.0
ROWS, COLS = 64, 48
PIXEL_SPACING = (0.7, 0.9)  # between rows (y), between columns (x)
SLICE_GAP = 2.5


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A proper rotation matrix from three angles (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = rotation(0.3, -0.2, 0.5)
ORIGIN = np.array([-120.5, 33.25, 410.0])


def stored_pixels(k: int) -> np.ndarray:
    """The stored (pre-rescale) values of slice ``k``: unique per voxel."""
    j, i = np.mgrid[0:ROWS, 0:COLS]
    return (k * 500 + j * COLS + i - 1000).astype(np.int16)


def make_slice(k: int, *, study_uid: str, series_uid: str, frame_uid: str,
               instance_number: int, rot: np.ndarray = OBLIQUE,
               position: np.ndarray | None = None, rows: int = ROWS, cols: int = COLS,
               patient_id: str = "99999", patient_name: str = "Volume^Test",
               study_date: str = "20111206", series_description: str = "AX SYNTHETIC",
               series_number: int = 3) -> Dataset:
    """One CT slice ``k`` of the synthetic volume."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC" + patient_id
    ds.StudyDescription = "Synthetic volume"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.FrameOfReferenceUID = frame_uid
    ds.InstanceNumber = instance_number
    row, col, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    pos = ORIGIN + k * SLICE_GAP * normal if position is None else position
    ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*row, *col)]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
    ds.PixelSpacing = [str(v) for v in PIXEL_SPACING]
    ds.SliceThickness = "2.0"
    ds.RescaleSlope = str(SLOPE)
    ds.RescaleIntercept = str(INTERCEPT)
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    pixels = stored_pixels(k)
    if (rows, cols) != (ROWS, COLS):
        pixels = np.zeros((rows, cols), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def make_ct_series(count: int = 20, seed: int = 4, **kwargs: object) -> list[Dataset]:
    """``count`` slices in shuffled order, with InstanceNumbers that disagree
    with their position (a reversed, shuffled numbering)."""
    study_uid = str(kwargs.pop("study_uid", None) or generate_uid())
    series_uid, frame_uid = generate_uid(), generate_uid()
    rng = random.Random(seed)
    numbers = list(range(1, count + 1))
    rng.shuffle(numbers)
    slices = [make_slice(k, study_uid=study_uid, series_uid=series_uid, frame_uid=frame_uid,
                         instance_number=numbers[k], **kwargs)  # type: ignore[arg-type]
              for k in range(count)]
    rng.shuffle(slices)
    return slices


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def pydicom_file(name: str) -> Path:
    """A file bundled with pydicom (``pydicom.data``), as a Path."""
    path = get_testdata_file(name)
    assert isinstance(path, str), f"pydicom test file {name} not available"
    return Path(path)


def k_of(ds: Dataset) -> int:
    """Slice index of a generated slice, from its position."""
    pos = np.array([float(v) for v in ds.ImagePositionPatient])
    return int(round(float((pos - ORIGIN) @ OBLIQUE[:, 2]) / SLICE_GAP))


# ---------------------------------------------------------------------- tests

def test_volume_shape_order_geometry_and_values() -> None:
    series = make_ct_series(20)
    assert [k_of(ds) for ds in series] != list(range(20))  # really shuffled
    vol = load_volume(series)
    assert isinstance(vol, Volume)
    assert vol.array.shape == (20, ROWS, COLS) == vol.shape
    assert vol.array.dtype == np.float32
    for k in range(20):
        expected = stored_pixels(k).astype(np.float32) * SLOPE + INTERCEPT
        np.testing.assert_array_equal(vol.array[k], expected)
    assert vol.spacing == pytest.approx((SLICE_GAP, PIXEL_SPACING[0], PIXEL_SPACING[1]),
                                        abs=1e-5)
    assert vol.origin == pytest.approx(tuple(ORIGIN), abs=1e-5)
    np.testing.assert_allclose(vol.direction, OBLIQUE.T, atol=1e-8)
    by_uid = {str(ds.SOPInstanceUID): k_of(ds) for ds in series}
    assert [by_uid[uid] for uid in vol.sop_instance_uids] == list(range(20))
    # InstanceNumber is not what orders the slices.
    numbers = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for ds in series}
    assert [numbers[u] for u in vol.sop_instance_uids] != sorted(numbers.values())


def test_affine_maps_indices_to_patient_positions() -> None:
    series = make_ct_series(5)
    vol = load_volume(series)
    for ds in series:
        k = k_of(ds)
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose((vol.affine @ [0, 0, k, 1])[:3], position, atol=1e-4)
    # Voxel (i=column 3, j=row 2) of slice 0 is 3 columns along the row cosine.
    expected = ORIGIN + 3 * PIXEL_SPACING[1] * OBLIQUE[:, 0] + 2 * PIXEL_SPACING[0] * OBLIQUE[:, 1]
    np.testing.assert_allclose((vol.affine @ [3, 2, 0, 1])[:3], expected, atol=1e-4)


def test_single_slice_uses_slice_thickness() -> None:
    vol = load_volume(make_ct_series(1))
    assert vol.array.shape == (1, ROWS, COLS)
    assert vol.spacing[0] == pytest.approx(2.0)


def test_axial_series_sorted_by_position_not_instance_number() -> None:
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = [make_slice(k, study_uid=study, series_uid=series, frame_uid=frame,
                         instance_number=k + 1, rot=np.eye(3),
                         position=np.array([0.0, 0.0, -10.0 * k]))
              for k in range(6)]
    vol = load_volume(reversed(slices))
    # Normal is +z, so the slice at z = -50 comes first.
    assert vol.origin == pytest.approx((0.0, 0.0, -50.0))
    assert vol.spacing[0] == pytest.approx(10.0)
    np.testing.assert_array_equal(vol.array[0], stored_pixels(5) * SLOPE + INTERCEPT)


def _refused(datasets: list[Dataset], match: str) -> None:
    with pytest.raises(NotAVolume, match=match):
        load_volume(datasets)


def test_refuses_empty_input() -> None:
    _refused([], "no datasets")
    assert issubclass(NotAVolume, ValueError)


def test_refuses_two_series() -> None:
    _refused(make_ct_series(3) + make_ct_series(3), "2 series")


def test_refuses_mixed_orientation() -> None:
    series = make_ct_series(6)
    other = make_slice(6, study_uid=series[0].StudyInstanceUID,
                       series_uid=series[0].SeriesInstanceUID,
                       frame_uid=series[0].FrameOfReferenceUID, instance_number=7,
                       rot=rotation(0.0, 0.0, 0.0))
    _refused([*series, other], "mixed orientations")


def test_refuses_missing_slice() -> None:
    series = sorted(make_ct_series(10), key=k_of)
    del series[4]
    _refused(series, r"uneven slice spacing.*about 1 missing slice")


def test_refuses_duplicate_position() -> None:
    series = make_ct_series(5)
    dup = make_slice(k_of(series[0]), study_uid=series[0].StudyInstanceUID,
                     series_uid=series[0].SeriesInstanceUID,
                     frame_uid=series[0].FrameOfReferenceUID, instance_number=99)
    _refused([*series, dup], "same position")


def test_refuses_different_size() -> None:
    series = make_ct_series(5)
    odd = make_slice(5, study_uid=series[0].StudyInstanceUID,
                     series_uid=series[0].SeriesInstanceUID,
                     frame_uid=series[0].FrameOfReferenceUID, instance_number=6,
                     rows=32)
    _refused([*series, odd], "differ in Rows")


def test_refuses_sheared_stack() -> None:
    series = sorted(make_ct_series(5), key=k_of)
    shifted = np.array([float(v) for v in series[2].ImagePositionPatient]) + 5 * OBLIQUE[:, 0]
    series[2].ImagePositionPatient = [f"{v:.6f}" for v in shifted]
    _refused(series, "do not follow the slice normal")


def test_refuses_missing_geometry() -> None:
    series = make_ct_series(3)
    del series[1].ImagePositionPatient
    _refused(series, "ImagePositionPatient missing")


def test_refuses_multiframe() -> None:
    series = make_ct_series(2)
    series[0].NumberOfFrames = 2
    _refused(series, "multi-frame")
