"""Reading an instance's header once, and what the index keeps of it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO

import orjson
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .catalogue import Level
from .values import fold, norm_datetime, norm_time, row_values_from_json, text_value

__all__ = ["UID_RE", "valid_uid", "ParsedHeader", "read_header", "header_json",
           "describe", "describe_json", "pixel_data_marker", "without_group_lengths",
           "has_group_length", "GROUP_LENGTH_MARK", "json_text",
           "INDEXED_SEQUENCES", "BULK_URI_PREFIX", "BULK_DATA_THRESHOLD"]

#: PS3.5 9.1: digits and dots, no empty component, at most 64 characters.
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")

#: Sequences whose items' string attributes are indexed for sequence matching.
INDEXED_SEQUENCES = frozenset({
    "RequestAttributesSequence", "ReferencedStudySequence", "ReferencedSeriesSequence",
    "ProcedureCodeSequence", "AnatomicRegionSequence", "PerformedProtocolCodeSequence",
    "RequestedProcedureCodeSequence", "ReferencedPatientSequence",
    "ReferencedPerformedProcedureStepSequence", "OtherPatientIDsSequence",
})
_INDEXED_SEQUENCE_TAGS = frozenset(f"{tag_for_keyword(k):08X}" for k in INDEXED_SEQUENCES)

#: BulkDataURI values kept in the index are this prefix + the tag; the web
#: layer turns them into absolute URLs of the instance's bulk data.
BULK_URI_PREFIX = "bulk:"
#: Binary values longer than this (as base64) become BulkDataURIs.
BULK_DATA_THRESHOLD = 1024


def valid_uid(uid: Any) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(UID_RE.match(uid))


@dataclass
class ParsedHeader:
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
    body = ds.to_json_dict(bulk_data_threshold=BULK_DATA_THRESHOLD,
                           bulk_data_element_handler=_bulk_handler,
                           suppress_invalid_tags=True)
    if has_pixel_data:
        body["7FE00010"] = pixel_data_marker(body)
    return body


def header_json(ds: Dataset, has_pixel_data: bool) -> str:
    """``header_json_dict`` serialised compactly, so series metadata can be
    concatenated from rows."""
    return _header_text(header_json_dict(ds, has_pixel_data))


def _plain(value: Any) -> Any:
    """pydicom's number subclasses (DSfloat, IS), which orjson leaves to us."""
    for kind in (float, int, str):
        if isinstance(value, kind):
            return kind(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(body: dict[str, Any]) -> str:
    """Compact JSON of a header, by orjson (json.dumps took a noticeable
    share of a small C-STORE's CPU).
    json.dumps stays for what orjson refuses (an integer beyond 64 bits).
    The text may differ from json.dumps' (1e-6 for 1e-06; null for a NaN,
    which json.dumps wrote as invalid JSON) but reads back the same."""
    try:
        return orjson.dumps(body, default=_plain).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


#: The compact JSON text of a header, as the index keeps it.
json_text = _dumps


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
    """Everything the index needs from one header read by pydicom."""
    meta = getattr(ds, "file_meta", None) or Dataset()
    # The UIDs are read from the data set itself: the JSON model leaves out
    # an invalid value, which validation must see to name it.
    uids = {key: str(ds.get(keyword, "") or meta.get(fallback, ""))
            for key, keyword, fallback in _UIDS}
    return describe_json(
        header_json_dict(ds, has_pixel_data),
        dict(uids, TransferSyntaxUID=str(meta.get("TransferSyntaxUID", ""))),
        has_pixel_data, lambda: sequence_items(ds))


#: (JSON key, keyword, file meta fallback) of the UIDs every instance has.
_UIDS = (("00080016", "SOPClassUID", "MediaStorageSOPClassUID"),
         ("00080018", "SOPInstanceUID", "MediaStorageSOPInstanceUID"),
         ("0020000D", "StudyInstanceUID", ""), ("0020000E", "SeriesInstanceUID", ""))


def describe_json(body: dict[str, Any], meta: dict[str, str], has_pixel_data: bool,
                  items: Callable[[], list[tuple[str, int, str, str, str]]]) -> ParsedHeader:
    """Everything the index needs from one header, given as DICOM JSON (with
    the Pixel Data marker ``header_json_dict`` adds) and its file meta UIDs.
    A UID under its JSON key in ``meta`` (e.g. "00080018") is taken from
    there rather than from ``body``.  ``items`` reads the indexed sequences'
    items; it is called only when the header has one of them."""
    uids = {key: meta.get(key) or _first(body, key) or meta.get(fallback, "")
            for key, _, fallback in _UIDS}
    parsed = ParsedHeader(
        sop_class_uid=uids["00080016"],
        sop_instance_uid=uids["00080018"],
        study_uid=uids["0020000D"],
        series_uid=uids["0020000E"],
        transfer_syntax=meta.get("TransferSyntaxUID", ""),
        has_pixel_data=has_pixel_data,
    )
    # Element values are converted once, by the JSON model; the index
    # columns are read from it.
    for level in Level:
        parsed.rows[level] = row_values_from_json(body, level)
    if not _INDEXED_SEQUENCE_TAGS.isdisjoint(body):
        parsed.items = items()
    parsed.meta_json = _header_text(body)
    return parsed


def _header_text(body: dict[str, Any]) -> str:
    """The JSON text the index keeps of a header, without Group Length
    elements (rare: otherwise it costs one substring search)."""
    text = _dumps(body)
    if has_group_length(text):
        text = _dumps(without_group_lengths(body))
    return text


#: What every Group Length element (gggg,0000) leaves in the JSON text of a
#: header, and nothing else does: a key is 8 hex digits, and a quote inside
#: a string value is escaped (``\"``).  Also what ``index.migrations`` looks
#: for with LIKE in headers stored by earlier versions.
GROUP_LENGTH_MARK = '0000":'


def has_group_length(text: str) -> bool:
    """Whether a header's JSON text holds a Group Length element."""
    return GROUP_LENGTH_MARK in text


def without_group_lengths(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with every Group Length element (gggg,0000) removed, in
    sequence items too: PS3.18 F.2.2 leaves Group Length attributes out of
    the DICOM JSON model."""
    for key in [k for k in body if k.endswith("0000")]:
        del body[key]
    for element in body.values():
        if isinstance(element, dict) and element.get("vr") == "SQ":
            for item in element.get("Value") or ():
                if isinstance(item, dict):
                    without_group_lengths(item)
    return body


def pixel_data_marker(body: dict[str, Any]) -> dict[str, str]:
    """The BulkDataURI entry that stands for Pixel Data in the JSON model."""
    bits = (body.get("00280100") or {}).get("Value") or [16]
    return {"vr": "OB" if bits[0] == 8 else "OW", "BulkDataURI": f"{BULK_URI_PREFIX}7FE00010"}


def _first(body: dict[str, Any], tag: str) -> str:
    value = (body.get(tag) or {}).get("Value")
    return str(value[0]) if value and value[0] is not None else ""
