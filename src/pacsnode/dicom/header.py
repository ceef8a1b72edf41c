"""Reading an instance's header once, and what the index keeps of it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .catalogue import Level
from .values import fold, norm_datetime, norm_time, row_values_from_json, text_value

__all__ = ["UID_RE", "valid_uid", "ParsedHeader", "read_header", "header_json",
           "INDEXED_SEQUENCES", "BULK_URI_PREFIX"]

#: PS3.5 9.1: digits and dots, no empty component, at most 64 characters.
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Sequences whose items' string attributes are indexed for sequence matching.
INDEXED_SEQUENCES = frozenset({
    "RequestAttributesSequence", "ReferencedStudySequence", "ReferencedSeriesSequence",
    "ProcedureCodeSequence", "AnatomicRegionSequence", "PerformedProtocolCodeSequence",
    "RequestedProcedureCodeSequence", "ReferencedPatientSequence",
    "ReferencedPerformedProcedureStepSequence", "OtherPatientIDsSequence",
})

#: BulkDataURI values kept in the index are this prefix + the tag; the web
#: layer turns them into absolute URLs of the instance's bulk data.
BULK_URI_PREFIX = "bulk:"


def valid_uid(uid: Any) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(UID_RE.match(uid))


@dataclass
class ParsedHeader:
    ds: Dataset
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    has_pixel_data: bool
    rows: dict[Level, dict[str, Any]] = field(default_factory=dict)
    items: list[tuple[str, int, str, str, str]] = field(default_factory=list)
    meta_json: str = ""


def read_header(fp: BinaryIO | str | Path) -> Dataset:
    """The file meta and data set up to (not including) Pixel Data."""
    try:
        return dcmread(fp, stop_before_pixels=True, force=True, defer_size=256 * 1024)
    except InvalidDicomError as exc:
        raise ValueError(f"not a DICOM file: {exc}") from exc


def _bulk_handler(elem: DataElement) -> str:
    return f"{BULK_URI_PREFIX}{elem.tag:08X}"


def header_json_dict(ds: Dataset, has_pixel_data: bool) -> dict[str, Any]:
    """The header as DICOM JSON (PS3.18 F.2) with bulk data as BulkDataURI
    markers."""
    body = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=_bulk_handler,
                           suppress_invalid_tags=True)
    if has_pixel_data:
        vr = "OB" if ds.get("BitsAllocated", 16) == 8 else "OW"
        body["7FE00010"] = {"vr": vr, "BulkDataURI": f"{BULK_URI_PREFIX}7FE00010"}
    return body


def header_json(ds: Dataset, has_pixel_data: bool) -> str:
    """``header_json_dict`` serialised compactly, so series metadata can be
    concatenated from rows."""
    return _dumps(header_json_dict(ds, has_pixel_data))


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def sequence_items(ds: Dataset, sequences: frozenset[str] | None = INDEXED_SEQUENCES
                   ) -> list[tuple[str, int, str, str, str]]:
    """(sequence keyword, item number, keyword, value, folded value) for the
    string attributes of the items of ``sequences`` (None: every top-level
    sequence), for sequence matching (PS3.4 C.2.2.2.6).  Times and date-times
    are kept in the normal form the range constraints use."""
    out: list[tuple[str, int, str, str, str]] = []
    for elem in ds:
        if elem.VR != "SQ" or not elem.keyword or \
                (sequences is not None and elem.keyword not in sequences):
            continue
        for number, item in enumerate(elem.value or []):
            for sub in item:
                if sub.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or not sub.keyword:
                    continue
                value = text_value(sub.value)
                if len(value) > 256:
                    continue
                try:
                    if sub.VR == "DT" and value:
                        value = norm_datetime(value)
                    elif sub.VR == "TM" and value:
                        value = norm_time(value)
                except ValueError:
                    pass
                out.append((elem.keyword, number, sub.keyword, value, fold(value)))
    return out


def describe(ds: Dataset, has_pixel_data: bool) -> ParsedHeader:
    """Everything the index needs from one header, read once."""
    meta = getattr(ds, "file_meta", None) or Dataset()
    parsed = ParsedHeader(
        ds=ds,
        sop_class_uid=str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")
                             or meta.get("MediaStorageSOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        transfer_syntax=str(meta.get("TransferSyntaxUID", "")),
        has_pixel_data=has_pixel_data,
    )
    # Element values are converted once, by the JSON model; the index
    # columns are read from it.
    body = header_json_dict(ds, has_pixel_data)
    for level in Level:
        parsed.rows[level] = row_values_from_json(body, level)
    parsed.items = sequence_items(ds)
    parsed.meta_json = _dumps(body)
    return parsed
