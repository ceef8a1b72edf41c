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
series; otherwise a new study and series are made.  What is copied must hold
in a Secondary Capture image too: a conditional attribute is written only
when its condition (PS3.3) holds for the new image, and a value that breaks
its VR (an ACR-NEMA date such as ``1997.04.24``) is converted when its
meaning is clear and left out otherwise, with a note.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit,
                         SecondaryCaptureImageStorage, generate_uid)

from .. import __version__
from .common import ToolError, file_meta_for, read_dicom, write_atomic
from .textvalues import check_value, values_of

__all__ = ["JpegHeader", "read_jpeg_header", "image_dataset", "image_to_dicom",
           "PATIENT_ATTRIBUTES", "STUDY_ATTRIBUTES", "SERIES_ATTRIBUTES",
           "UNPAIRED_BODY_PARTS", "UNPAIRED_MODALITIES"]

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
#: General Series module (C.7.3.1); Laterality, Type 2C, is decided apart
#: (:func:`_series_laterality`).
SERIES_ATTRIBUTES = ("SeriesInstanceUID", "SeriesNumber", "Modality", "SeriesDescription",
                     "SeriesDate", "SeriesTime", "BodyPartExamined",
                     "OperatorsName", "PerformingPhysicianName")
#: Body Part Examined terms (PS3.16 Annex L, CID 4031) that name a structure
#: or region that is not paired: a series of one has no Laterality.
UNPAIRED_BODY_PARTS = frozenset("""
    ABDOMEN ABDOMENPELVIS ABDOMINALAORTA AMNIOTICFLUID ANUSRECTUMSIGMD AORTA AORTICARCH
    APPENDIX ASCAORTA ASCENDINGCOLON AZYGOSVEIN BACK BASILARA BILEDUCT BLADDER
    BLADDERURETHRA BRAIN CECUM CELIACA CERVIX CHEST CHESTABDOMEN CHESTABDPELVIS
    CIRCLEOFWILLIS COCCYX COLON CORONARYARTERY CSPINE CTSPINE DESCAORTA DESCENDINGCOLON
    DUODENUM ENTIREBODY EPIGASTRIC ESOPHAGUS FACE GALLBLADDER GESTSAC HEAD HEADNECK HEART
    HEPATICA HYPOPHARYNX ILEUM ILIUM INFMESA INFVENACAVA JAW JEJUNUM LARGEINTESTINE LARYNX
    LIVER LSPINE LSSPINE MANDIBLE MAXILLA MEDIASTINUM MOUTH NECK NECKCHEST NECKCHESTABDOMEN
    NECKCHESTABDPELV NOSE PANCBILEDUCT PANCREAS PANCREATICDUCT PELVIS PENIS PERICARDIUM
    PERINEUM PHARYNX PHARYNXLARYNX PLACENTA PORTALV PROSTATE RECTUM RETROPERITONEUM SACRUM
    SCALP SELLA SIGMOID SKULL SMALLINTESTINE SPINALCORD SPINE SPLEEN SPLENICA SPLENICV
    SSPINE STERNUM STOMACH SUPMESA SUPRAPUBIC SUPVENACAVA THORACICAORTA THYROID TLSPINE
    TONGUE TRACHEA TRANSVERSECOLON TSPINE URETER URETHRA UTERUS VAGINA VULVA WHOLEBODY
""".split())
#: Modalities that only examine an unpaired structure (ECG and cardiac
#: electrophysiology: the heart; respiratory waveform: the chest).
UNPAIRED_MODALITIES = frozenset({"ECG", "EPS", "RESP"})
#: VRs whose values have a format that a copied value must still follow.
_FORMATTED_VRS = frozenset({"AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
_ACR_NEMA_DATE = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")
_ACR_NEMA_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2}(?:\.\d{1,6})?))?$")
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


def _legacy_value(vr: str, value: str) -> str:
    """An ACR-NEMA date (``1997.04.24``) or time (``14:04:38``) in the DICOM
    form (``19970424``, ``140438``); other values as they are."""
    if vr == "DA":
        m = _ACR_NEMA_DATE.match(value)
        return "".join(m.groups()) if m else value
    if vr == "TM":
        m = _ACR_NEMA_TIME.match(value)
        return "".join(g for g in m.groups() if g) if m else value
    return value


def _copy(dst: Dataset, src: Dataset, keywords: Iterable[str], notes: list[str]) -> None:
    """Copy the attributes of ``keywords`` that ``src`` holds; a value that
    breaks the format of its VR is mended (ACR-NEMA dates and times) or left
    out with a note."""
    for keyword in keywords:
        if keyword not in src:
            continue
        with warnings.catch_warnings():  # pydicom's own VR warnings: said in plain words
            warnings.simplefilter("ignore")
            elem = _checked_copy(src, keyword, notes)
        if elem is not None:
            dst.add(elem)


def _checked_copy(src: Dataset, keyword: str, notes: list[str]) -> DataElement | None:
    elem = copy.deepcopy(src.data_element(keyword))
    if elem is None or elem.VR not in _FORMATTED_VRS or elem.is_empty:
        return elem
    if elem.VR in ("DA", "TM") and isinstance(elem.value, str):
        elem.value = _legacy_value(elem.VR, elem.value.strip())
    try:  # numbers as pydicom read them (IS, DSfloat) are checked as text
        check_value(elem.VR, [str(v) for v in values_of(elem.value)], keyword)
    except ToolError as exc:
        notes.append(f"not copied: {exc}")
        return None
    return elem


def _series_laterality(ds: Dataset, reference: Dataset | None) -> None:
    """Laterality (0020,0060) of the General Series module is Type 2C (PS3.3
    C.7.3.1): required when the body part examined is paired and no Image,
    Frame or Measurement Laterality is sent (a Secondary Capture image sends
    none), absent otherwise.  Written as R or L when the reference says so,
    empty (unknown) when it does not or when the body part is not known to
    be unpaired (no Body Part Examined, or a term outside the table), left
    out for an unpaired body part or a modality that examines one."""
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if body_part in UNPAIRED_BODY_PARTS or modality in UNPAIRED_MODALITIES:
        return
    value = str(reference.get("Laterality", "") or "").strip().upper() \
        if reference is not None else ""
    ds.Laterality = value if value in ("R", "L") else ""


def _deidentification_method(ds: Dataset) -> None:
    """Patient Identity Removed = YES needs De-identification Method or its
    code sequence (Type 1C, PS3.3 C.7.1.1); a reference file that says YES
    without either gets a method that says so."""
    removed = str(ds.get("PatientIdentityRemoved", "") or "").strip().upper()
    if removed == "YES" and not ds.get("DeidentificationMethod") \
            and not ds.get("DeidentificationMethodCodeSequence"):
        ds.DeidentificationMethod = "not stated in the reference file"


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
                  level: Literal["study", "series"] = "study",
                  notes: list[str] | None = None) -> Dataset:
    """A Secondary Capture data set (with ``file_meta``) holding ``image``;
    with ``reference``, the patient and study (``level="series"``: and the
    series) attributes are copied from it.  Reference values that could not
    be copied are described in ``notes``."""
    notes = notes if notes is not None else []
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ToolError(f"{path}: cannot read: {exc.strerror or exc}") from None
    ds = Dataset()
    today, now = _now()
    if reference is not None and reference.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = reference.SpecificCharacterSet  # Type 1C: only with a value
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = today, now
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(prefix=None)
    for keyword, value in _TYPE2_DEFAULTS.items():
        setattr(ds, keyword, value)
    if reference is not None:
        _copy(ds, reference, PATIENT_ATTRIBUTES, notes)
        _deidentification_method(ds)
        _copy(ds, reference, STUDY_ATTRIBUTES, notes)
    if "StudyInstanceUID" not in ds or not ds.StudyInstanceUID:
        ds.StudyInstanceUID = generate_uid(prefix=None)
        ds.StudyDate, ds.StudyTime = today, now
    if reference is not None and level == "series":
        _copy(ds, reference, SERIES_ATTRIBUTES, notes)
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
    _series_laterality(ds, reference if level == "series" else None)
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
                   study_from: str | os.PathLike[str] | None = None,
                   notes: list[str] | None = None) -> Dataset:
    """Write ``image`` as a Secondary Capture file ``out``; reference values
    that could not be copied are described in ``notes``."""
    if series_from is not None and study_from is not None:
        raise ToolError("give either --series-from or --study-from, not both")
    ref_path = series_from if series_from is not None else study_from
    reference = read_dicom(ref_path, stop_before_pixels=True) if ref_path is not None else None
    ds = image_dataset(image, reference, "series" if series_from is not None else "study",
                       notes)
    write_atomic(ds, out)
    return ds
