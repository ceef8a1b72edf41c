"""Test data: pydicom's bundled files, one per transfer syntax, given fresh
UIDs so they form one study of distinct series; and small generated CT sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: transfer syntax UID → (pydicom test file, DCMTK storescu option proposing it)
TS_FILES: dict[str, tuple[str, str]] = {
    "1.2.840.10008.1.2.1": ("CT_small.dcm", "-xe"),
    "1.2.840.10008.1.2": ("MR_small_implicit.dcm", "-xi"),
    "1.2.840.10008.1.2.2": ("MR_small_bigendian.dcm", "-xb"),
    "1.2.840.10008.1.2.1.99": ("image_dfl.dcm", "-xd"),
    "1.2.840.10008.1.2.4.50": ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),
    "1.2.840.10008.1.2.4.51": ("JPEG-lossy.dcm", "-xx"),
    "1.2.840.10008.1.2.4.70": ("SC_rgb_jpeg_gdcm.dcm", "-xs"),
    "1.2.840.10008.1.2.4.80": ("MR_small_jpeg_ls_lossless.dcm", "-xt"),
    "1.2.840.10008.1.2.4.90": ("MR_small_jp2klossless.dcm", "-xv"),
    "1.2.840.10008.1.2.4.91": ("JPEG2000.dcm", "-xw"),
    "1.2.840.10008.1.2.5": ("MR_small_RLE.dcm", "-xr"),
}


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta information (what travels in a C-STORE)."""
    raw = Path(path).read_bytes()
    assert raw[128:132] == b"DICM"
    # (0002,0000) UL group length: tag(4) VR(2) len(2) value(4) from offset 132
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length:]


def one_study_per_syntax(folder: Path) -> tuple[str, dict[str, Path]]:
    """Copies of the TS_FILES under one new study, each its own series."""
    study = generate_uid()
    out: dict[str, Path] = {}
    folder.mkdir(parents=True, exist_ok=True)
    for ts, (name, _opt) in TS_FILES.items():
        ds = dcmread(get_testdata_file(name))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = "TSROUND"
        path = folder / f"{name}"
        ds.save_as(path, enforce_file_format=True)
        assert str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == ts
        out[ts] = path
    return study, out


def make_ct(path: Path, *, patient_id: str = "P1", patient_name: str = "Doe^John",
            study_uid: str | None = None, series_uid: str | None = None,
            sop_uid: str | None = None, study_date: str = "20200102",
            study_time: str = "101500", modality: str = "CT", instance: int = 1,
            size: int = 16, accession: str = "A1", description: str = "Head",
            series_description: str = "AX T1", charset: str | None = None,
            **extra: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyDescription = description
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0, 0, float(instance)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    for key, value in extra.items():
        setattr(ds, key, value)
    rng = np.random.default_rng(instance)
    ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
