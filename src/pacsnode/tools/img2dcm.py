"""``pacsnode img2dcm``: wrap an image as a Secondary Capture Image
(PS3.3 A.8.1), as DCMTK's ``img2dcm`` does.

A baseline JPEG is kept as it is, byte for byte, in encapsulated Pixel Data
with the JPEG Baseline transfer syntax (PS3.5 8.2.1, A.4.1); its header says
the size, the number of components and whether the colour is subsampled
(YBR_FULL_422) or not (YBR_FULL).  Other images (PNG, BMP, TIFF, PNM,
progressive JPEG …) are decoded with Pillow and stored uncompressed in
Explicit VR Little Endian.

Patient and study attributes (and with ``--series-from`` the series ones)
come from a reference file, so the image joins that patient's study or
series; otherwise a new study and series are made.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit,
                         SecondaryCaptureImageStorage, generate_uid)

from .. import __version__
from .common import ToolError, file_meta_for, read_dicom, write_atomic

__all__ = ["JpegHeader", "read_jpeg_header", "image_dataset", "image_to_dicom",
           "PATIENT_ATTRIBUTES", "STUDY_ATTRIBUTES", "SERIES_ATTRIBUTES"]

#: Patient module (PS3.3 C.7.1.1) attributes copied from a reference file.
PATIENT_ATTRIBUTES = ("PatientName", "PatientID", "IssuerOfPatientID",
                      "IssuerOfPatientIDQualifiersSequence", "PatientBirthDate",
                      "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence",
                      "OtherPatientNames", "EthnicGroup", "PatientComments",
                      "PatientIdentityRemoved", "DeidentificationMethod",
                      "DeidentificationMethodCodeSequence")
#: General Study and Patient Study modules (C.7.2.1, C.7.2.2).
STUDY_ATTRIBUTES = ("StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
                    "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence",
                    "StudyDescription", "ProcedureCodeSequence", "PatientAge", "PatientSize",
                    "PatientWeight")
#: General Series module (C.7.3.1).
SERIES_ATTRIBUTES = ("SeriesInstanceUID", "SeriesNumber", "Modality", "SeriesDescription",
                     "SeriesDate", "SeriesTime", "Laterality", "BodyPartExamined",
                     "OperatorsName", "PerformingPhysicianName")
_TYPE2_DEFAULTS = {"PatientName": "", "PatientID": "", "PatientBirthDate": "",
                   "PatientSex": "", "ReferringPhysicianName": "", "StudyID": "",
                   "AccessionNumber": "", "StudyDate": "", "StudyTime": ""}


@dataclass(frozen=True)
class JpegHeader:
    """What the SOF and APP segments of a JPEG stream say."""

    sof: int                 # the SOFn marker's second byte (0xC0 baseline …)
    precision: int
    rows: int
    columns: int
    components: int
    sampling: tuple[tuple[int, int], ...]
    adobe_transform: int | None
    jfif: bool

    @property
    def baseline(self) -> bool:
        return self.sof == 0xC0

    @property
    def photometric(self) -> str:
        if self.components == 1:
            return "MONOCHROME2"
        if self.adobe_transform == 0 and not self.jfif:
            return "RGB"
        subsampled = any(s != self.sampling[0] for s in self.sampling[1:])
        return "YBR_FULL_422" if subsampled else "YBR_FULL"


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def read_jpeg_header(data: bytes) -> JpegHeader:
    """Parse the markers of a JPEG stream up to its frame header (ITU T.81 B.2)."""
    if data[:2] != b"\xff\xd8":
        raise ToolError("not a JPEG stream (no SOI marker)")
    pos, adobe, jfif = 2, None, False
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ToolError(f"damaged JPEG stream at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if marker == 0xE0 and segment[:5] == b"JFIF\x00":
            jfif = True
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe = segment[11]
        if marker in _SOF_MARKERS:
            if len(segment) < 6:
                raise ToolError("damaged JPEG frame header")
            precision = segment[0]
            rows = int.from_bytes(segment[1:3], "big")
            columns = int.from_bytes(segment[3:5], "big")
            components = segment[5]
            sampling = tuple((segment[6 + 3 * i + 1] >> 4, segment[6 + 3 * i + 1] & 0x0F)
                             for i in range(components))
            return JpegHeader(marker, precision, rows, columns, components, sampling,
                              adobe, jfif)
        if marker == 0xDA:
            break
        pos += 2 + length
    raise ToolError("JPEG stream without a frame header (SOF)")


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _copy(dst: Dataset, src: Dataset, keywords: Iterable[str]) -> None:
    for keyword in keywords:
        if keyword in src:
            dst.add(copy.deepcopy(src.data_element(keyword)))


def _pixels_from_jpeg(ds: Dataset, data: bytes, header: JpegHeader) -> UID:
    if header.components not in (1, 3):
        raise ToolError(f"JPEG with {header.components} components is not supported")
    if header.sof == 0xC0 and header.precision == 8:
        ts = JPEGBaseline8Bit
    elif header.sof == 0xC1 and header.precision in (8, 12):
        ts = JPEGExtended12Bit
    else:
        raise ToolError("unsupported JPEG process")
    ds.SamplesPerPixel = header.components
    ds.PhotometricInterpretation = header.photometric
    if header.components > 1:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = header.rows, header.columns
    ds.BitsAllocated = 8 if header.precision == 8 else 16
    ds.BitsStored = header.precision
    ds.HighBit = header.precision - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    raw_size = header.rows * header.columns * header.components * (ds.BitsAllocated // 8)
    ratio = raw_size / max(len(data), 1)
    ds.LossyImageCompressionRatio = f"{ratio:.4g}"[:16]
    frame = data if len(data) % 2 == 0 else data + b"\x00"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ts


def _pixels_from_pillow(ds: Dataset, path: Path, lossy_source: bool) -> UID:
    try:
        with Image.open(path) as opened:
            opened.load()
            img = opened.copy()
            frames = getattr(opened, "n_frames", 1)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ToolError(f"{path}: not an image Pillow can read ({exc})") from None
    if frames > 1:
        raise ToolError(f"{path}: has {frames} frames; only single images are supported")
    mode = img.mode
    if mode == "1" or mode == "LA":
        img, mode = img.convert("L"), "L"
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 0xFFFF:
            raise ToolError(f"{path}: pixel values outside 0..65535 are not supported")
        arr = arr.astype("<u2")
        samples, photometric, bits = 1, "MONOCHROME2", 16
    elif mode == "L":
        arr = np.asarray(img, dtype=np.uint8)
        samples, photometric, bits = 1, "MONOCHROME2", 8
    elif mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"):
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        samples, photometric, bits = 3, "RGB", 8
    else:
        raise ToolError(f"{path}: image mode {mode!r} is not supported")
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if lossy_source:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds["PixelData"].VR = "OW" if bits == 16 else "OB"
    return ExplicitVRLittleEndian


def image_dataset(image: str | os.PathLike[str], reference: Dataset | None = None,
                  level: Literal["study", "series"] = "study") -> Dataset:
    """A Secondary Capture data set (with ``file_meta``) holding ``image``;
    with ``reference``, the patient and study (``level="series"``: and the
    series) attributes are copied from it."""
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ToolError(f"{path}: cannot read: {exc.strerror or exc}") from None
    ds = Dataset()
    today, now = _now()
    if reference is not None and "SpecificCharacterSet" in reference:
        ds.SpecificCharacterSet = reference.SpecificCharacterSet
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = today, now
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    for keyword, value in _TYPE2_DEFAULTS.items():
        setattr(ds, keyword, value)
    if reference is not None:
        _copy(ds, reference, PATIENT_ATTRIBUTES)
        _copy(ds, reference, STUDY_ATTRIBUTES)
    if "StudyInstanceUID" not in ds or not ds.StudyInstanceUID:
        ds.StudyInstanceUID = generate_uid(prefix=None)
        ds.StudyDate, ds.StudyTime = today, now
    if reference is not None and level == "series":
        _copy(ds, reference, SERIES_ATTRIBUTES)
        number = reference.get("InstanceNumber")
        ds.InstanceNumber = int(number) + 1 if number not in (None, "") else 1
    if "SeriesInstanceUID" not in ds or not ds.SeriesInstanceUID:
        ds.SeriesInstanceUID = generate_uid(prefix=None)
        ds.SeriesNumber = 1 if reference is None else ""
        ds.InstanceNumber = 1
    if "SeriesNumber" not in ds:
        ds.SeriesNumber = ""  # type 2
    if not ds.get("Modality"):
        ds.Modality = "OT"
    if "Laterality" not in ds:  # type 2C whose condition a converter cannot know
        ds.Laterality = ""
    ds.Manufacturer = ""
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = "pacsnode"
    ds.SecondaryCaptureDeviceManufacturerModelName = "pacsnode img2dcm"
    ds.SecondaryCaptureDeviceSoftwareVersions = __version__
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = today, now
    ds.ContentDate, ds.ContentTime = today, now
    ds.PatientOrientation = ""
    if data[:2] == b"\xff\xd8":
        header = read_jpeg_header(data)
        if header.sof in (0xC0, 0xC1) and header.components in (1, 3):
            ts = _pixels_from_jpeg(ds, data, header)
        else:  # progressive, lossless, arithmetic …: decode and keep the pixels
            ts = _pixels_from_pillow(ds, path, lossy_source=header.sof != 0xC3)
    else:
        ts = _pixels_from_pillow(ds, path, lossy_source=False)
    ds.file_meta = file_meta_for(ds, ts)
    return ds


def image_to_dicom(image: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   series_from: str | os.PathLike[str] | None = None,
                   study_from: str | os.PathLike[str] | None = None) -> Dataset:
    """Write ``image`` as a Secondary Capture file ``out``."""
    if series_from is not None and study_from is not None:
        raise ToolError("give either --series-from or --study-from, not both")
    ref_path = series_from if series_from is not None else study_from
    reference = read_dicom(ref_path, stop_before_pixels=True) if ref_path is not None else None
    ds = image_dataset(image, reference, "series" if series_from is not None else "study")
    write_atomic(ds, out)
    return ds
