"""The labelled series of tests/data/classify_series.json turned into what
the index would hold: one DICOM JSON header per instance (through the
project's header→JSON code), or pydicom data sets to write as files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacsnode.dicom.header import header_json_dict

LABELLED = Path(__file__).parent / "data" / "classify_series.json"


def labelled_series() -> list[dict[str, Any]]:
    return json.loads(LABELLED.read_text())["series"]


#: VRs of the vendor private elements the set varies per instance.
PRIVATE_VR = {"00431039": "IS", "20011003": "FL", "20011020": "LO", "0019109C": "LO"}


def _set(ds: Dataset, key: str, value: Any, vr: str | None = None) -> None:
    if vr is not None or key in PRIVATE_VR:
        ds.add_new(int(key, 16), vr or PRIVATE_VR[key], value)
    else:
        setattr(ds, key, value)


def _base(entry: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for key, value in entry["header"].items():
        _set(ds, key, value)
    for key, (vr, value) in (entry.get("private") or {}).items():
        _set(ds, key, value, vr)
    return ds


def _private_vr(entry: dict[str, Any], key: str) -> str | None:
    private = entry.get("private") or {}
    return private[key][0] if key in private else None


def _normal(iop: list[float]) -> np.ndarray:
    return np.cross(np.array(iop[:3], float), np.array(iop[3:], float))


def _instance_values(entry: dict[str, Any], i: int) -> dict[str, Any]:
    """Values of instance ``i`` that differ between instances: the 'vary'
    items of its volume, and its position along the slice normal."""
    slices = entry["slices"]
    out = {key: values[(i // slices) % len(values)]
           for key, values in (entry.get("vary") or {}).items()}
    iop = out.get("ImageOrientationPatient", entry["header"].get("ImageOrientationPatient"))
    if iop is not None:
        position = _normal(iop) * 2.0 * (i % slices) + np.array([-100.0, -120.0, -40.0])
        out["ImagePositionPatient"] = [round(float(v), 4) for v in position]
    out["InstanceNumber"] = i + 1
    return out


def instance_headers(entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One DICOM JSON header per instance, as the index stores them."""
    base = header_json_dict(_base(entry), has_pixel_data=True)
    cache: dict[tuple[str, str], dict[str, Any]] = {}
    for i in range(entry["instances"]):
        header = dict(base)
        for key, value in _instance_values(entry, i).items():
            marker = (key, json.dumps(value))
            if marker not in cache:
                one = Dataset()
                _set(one, key, value, _private_vr(entry, key))
                cache[marker] = header_json_dict(one, has_pixel_data=False)
            header.update(cache[marker])
        yield header


def instance_datasets(entry: dict[str, Any], study_uid: str, series_uid: str,
                      transfer_syntax: str = ExplicitVRLittleEndian) -> Iterator[Dataset]:
    """Complete little instances (4×4 pixels) to write as files."""
    for i in range(entry["instances"]):
        ds = _base(entry)
        for key, value in _instance_values(entry, i).items():
            _set(ds, key, value, _private_vr(entry, key))
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = "CLASSIFY"
        ds.PatientName = "Classify^Test"
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.full((4, 4), i, dtype=np.uint16).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = transfer_syntax
        ds.file_meta = meta
        yield ds
