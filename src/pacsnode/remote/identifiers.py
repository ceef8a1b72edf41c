"""Query/Retrieve identifiers: from a ``{keyword: value}`` dict to the
Dataset we send, and from the Datasets a peer answers to flat dicts.

Flat answers (what :func:`flatten` returns, and so what ``find`` returns):

- keys are DICOM keywords (``"PatientID"``); private or unknown tags are
  eight upper-case hex digits (``"00091001"``);
- text values are ``str``, person names their DICOM string (``"Doe^John"``),
  UIDs ``str``; IS values ``int``, DS values ``float``; binary numbers
  ``int``/``float``; AT ``"GGGGEEEE"``;
- an attribute with several values is a ``list`` of those (so
  ModalitiesInStudy is ``"CT"`` or ``["CT", "MR"]``); a sequence is a list
  of flat dicts;
- an empty or missing value is ``""`` for text VRs, ``None`` for numeric
  VRs and ``[]`` for sequences.  Every requested key is present.

QueryRetrieveLevel and SpecificCharacterSet are protocol detail and left out.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from ..dicom.catalogue import Level, resolve_key

__all__ = ["Level", "Model", "UNIQUE_KEYS", "DEFAULT_FIELDS", "parse_level", "parse_model",
           "model_uid", "build_identifier", "flatten", "key_name", "infer_level"]

#: Unique key of each level (PS3.4 C.6.1.1 / C.6.2.1).
UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

#: Return keys asked for by default at each level, so that a bare
#: ``find("STUDY")`` answers something a person can read.  Only keys that
#: belong to the level in both information models.
DEFAULT_FIELDS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: ("PatientName", "PatientBirthDate", "PatientSex",
                    "NumberOfPatientRelatedStudies"),
    Level.STUDY: ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
                  "StudyID", "StudyDescription", "ModalitiesInStudy",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("Modality", "SeriesNumber", "SeriesDescription",
                   "NumberOfSeriesRelatedInstances"),
    Level.IMAGE: ("SOPClassUID", "InstanceNumber"),
}

Model = str  # "patient" | "study"

#: Query/Retrieve information model SOP Class UIDs (PS3.4 C.6, PS3.6 Annex A).
_MODELS: dict[str, dict[str, str]] = {
    "patient": {
        "find": "1.2.840.10008.5.1.4.1.2.1.1",
        "move": "1.2.840.10008.5.1.4.1.2.1.2",
        "get": "1.2.840.10008.5.1.4.1.2.1.3",
    },
    "study": {
        "find": "1.2.840.10008.5.1.4.1.2.2.1",
        "move": "1.2.840.10008.5.1.4.1.2.2.2",
        "get": "1.2.840.10008.5.1.4.1.2.2.3",
    },
}

_SKIPPED = {0x00080052, 0x00080005}  # QueryRetrieveLevel, SpecificCharacterSet
_NUMERIC_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}


def parse_level(level: str | Level) -> Level:
    """``"series"``, ``"IMAGE"``, ``"instance"`` or a :class:`Level`."""
    return level if isinstance(level, Level) else Level.parse(level)


def parse_model(model: str | None, level: Level) -> Model:
    """The information model to use: ``"patient"`` or ``"study"``.

    ``None`` picks Patient Root for PATIENT-level requests and Study Root
    otherwise.  Study Root has no PATIENT level (PS3.4 C.6.2).
    """
    if model is None:
        return "patient" if level == Level.PATIENT else "study"
    text = model.strip().lower()
    if text in ("p", "patient", "patientroot"):
        text = "patient"
    elif text in ("s", "study", "studyroot"):
        text = "study"
    else:
        raise ValueError(f"unknown information model {model!r}: use 'study' or 'patient'")
    if text == "study" and level == Level.PATIENT:
        raise ValueError("the Study Root model has no PATIENT level; use the patient model")
    return text


def model_uid(model: Model, service: str) -> str:
    """SOP Class UID of ``model`` for ``service`` (``find``/``move``/``get``)."""
    return _MODELS[model][service]


def hierarchy_keys(level: Level, model: Model) -> list[str]:
    """Unique keys from the model's root down to ``level``."""
    top = Level.PATIENT if model == "patient" else Level.STUDY
    return [UNIQUE_KEYS[lv] for lv in Level if top <= lv <= level]


def key_name(key: str) -> str:
    """The name a key has in flat answers: its keyword, or ``GGGGEEEE``."""
    tag, keyword = resolve_key(key)
    return keyword or f"{tag:08X}"


def infer_level(keys: Mapping[str, Any]) -> Level:
    """The retrieve level implied by the most specific unique key given."""
    names = {key_name(k) for k, v in keys.items() if v not in (None, "")}
    for level in reversed(Level):
        if UNIQUE_KEYS[level] in names:
            return level
    raise ValueError("cannot tell the level: give PatientID, StudyInstanceUID, "
                     "SeriesInstanceUID or SOPInstanceUID (or the level)")


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise ValueError(f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the DICOM "
                         "dictionary; its VR is unknown") from None
    return vr.split(" or ")[0]


def _to_element(tag: int, value: Any) -> DataElement:
    vr = _vr(tag)
    if vr == "SQ":
        items = [] if value in (None, "") else (
            [value] if isinstance(value, Mapping) else list(value))
        seq = DicomSequence([_dataset(item) for item in items])
        return DataElement(tag, vr, seq)
    if value is None or value == "":
        return DataElement(tag, vr, None)
    if isinstance(value, (list, tuple, set, frozenset)):
        return DataElement(tag, vr, [_scalar(v, vr) for v in value])
    return DataElement(tag, vr, _scalar(value, vr))


def _scalar(value: Any, vr: str) -> Any:
    if isinstance(value, _dt.datetime):
        return value.strftime("%Y%m%d%H%M%S") if vr == "DT" else (
            value.strftime("%H%M%S") if vr == "TM" else value.strftime("%Y%m%d"))
    if isinstance(value, _dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, _dt.time):
        return value.strftime("%H%M%S")
    if vr in ("US", "UL", "SS", "SL", "SV", "UV"):
        return int(value)
    if vr in ("FL", "FD"):
        return float(value)
    return str(value)


def _dataset(keys: Mapping[str, Any]) -> Dataset:
    ds = Dataset()
    for key, value in keys.items():
        tag, _ = resolve_key(key)
        ds.add(_to_element(tag, value))
    return ds


def _needs_utf8(keys: Mapping[str, Any]) -> bool:
    def walk(v: Any) -> bool:
        if isinstance(v, str):
            return not v.isascii()
        if isinstance(v, Mapping):
            return any(walk(x) for x in v.values())
        if isinstance(v, (list, tuple, set, frozenset)):
            return any(walk(x) for x in v)
        return False
    return walk(keys)


def build_identifier(level: Level, keys: Mapping[str, Any], fields: Iterable[str] = (),
                     model: Model = "study") -> tuple[Dataset, list[str]]:
    """The identifier Dataset for a request, and the names of every key it
    holds (the columns a flat answer must have, in display order).

    ``keys`` are matching keys: keyword or tag → value, where ``None``/``""``
    means "return this" (universal match), a list/tuple is a UID list (or a
    multi-value), a dict is a single sequence item, and ``date``/``datetime``
    objects are formatted for their VR.  Strings go as they are, so wildcards
    (``"AX*"``) and ranges (``"20200101-"``) are the peer's to interpret.
    ``fields`` are extra return keys.  The unique keys of the level and of
    the levels above it (down from the model's root) are always added.
    """
    ds = _dataset(keys)
    ds.QueryRetrieveLevel = level.name
    fields = list(fields)
    for key in [*fields, *hierarchy_keys(level, model)]:
        tag, _ = resolve_key(key)
        if tag not in ds:
            ds.add(_to_element(tag, None))
    if _needs_utf8(keys):
        ds.SpecificCharacterSet = "ISO_IR 192"
    # Column order for people: the keys as given, the return keys, then the
    # unique keys.
    names = [key_name(k) for k in (*keys, *fields, *hierarchy_keys(level, model))]
    return ds, [n for n in dict.fromkeys(names) if int(resolve_key(n)[0]) not in _SKIPPED]


def empty_value(vr: str) -> Any:
    if vr == "SQ":
        return []
    return None if vr in _NUMERIC_VRS else ""


def _convert(value: Any, vr: str) -> Any:
    if vr == "IS":
        return int(value)
    if vr == "DS":
        return float(value)
    if vr == "AT":
        return f"{int(value):08X}"
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (int, float)):
        return value
    return str(value)


def element_value(elem: DataElement) -> Any:
    """A pydicom element's value in the flat form described above."""
    vr = elem.VR
    if vr == "SQ":
        return [flatten(item) for item in elem.value]
    value = elem.value
    if value is None or value == "" or (isinstance(value, (list, MultiValue))
                                        and len(value) == 0):
        return empty_value(vr)
    if isinstance(value, (list, MultiValue)):
        return [_convert(v, vr) if v not in (None, "") else empty_value(vr) for v in value]
    try:
        return _convert(value, vr)
    except (TypeError, ValueError):
        return str(value)


def flatten(ds: Dataset, keys: Sequence[str] = ()) -> dict[str, Any]:
    """A response identifier as a flat dict (see module docstring).

    ``keys`` are the names that must be present even when the peer left them
    out; they come first, in order, followed by anything else the peer sent.
    """
    out: dict[str, Any] = {}
    for key in keys:
        tag, _ = resolve_key(key)
        out[key_name(key)] = empty_value(_vr_or_un(tag))
    for elem in ds:
        if elem.tag in _SKIPPED or elem.tag.is_private and elem.tag.element < 0x100:
            continue
        name = keyword_for_tag(elem.tag) or f"{int(elem.tag):08X}"
        out[name] = element_value(elem)
    return out


def _vr_or_un(tag: int) -> str:
    try:
        return _vr(tag)
    except ValueError:
        return "UN"
