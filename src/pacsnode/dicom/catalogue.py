"""The one catalogue of attributes the index knows about.

Each row says which level an attribute lives at, its VR and the column that
holds it.  The index schema, the C-FIND identifier parser, the QIDO parameter
parser and the result projection are all driven from here, so adding a
searchable attribute is one line (STYLE.md habit 7).

Sources: PS3.4 Annex C.6 (required and unique keys of the Patient Root and
Study Root information models) and PS3.18 Table 6.7.1-1 (QIDO-RS keys).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

__all__ = ["Level", "Attribute", "ATTRIBUTES", "BY_KEYWORD", "BY_TAG", "COMPUTED",
           "attributes_at", "resolve_key", "UnknownAttribute"]


class Level(enum.IntEnum):
    """Query/Retrieve levels, ordered from the top of the hierarchy."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @classmethod
    def parse(cls, value: str) -> "Level":
        text = value.strip().upper()
        if text == "INSTANCE":
            text = "IMAGE"
        try:
            return cls[text]
        except KeyError:
            raise ValueError(f"unknown query/retrieve level {value!r}") from None

    @property
    def table(self) -> str:
        return ("patients", "studies", "series", "instances")[self]


@dataclass(frozen=True)
class Attribute:
    """One catalogue attribute; its derived facts are computed once
    (cached_property: the ingest asks for them ~30 times per instance)."""

    keyword: str
    level: Level
    vr: str
    #: The attribute is the unique key of its level.
    unique: bool = False

    @cached_property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        if tag is None:
            raise ValueError(f"{self.keyword!r} is not a DICOM keyword")
        return tag

    @cached_property
    def column(self) -> str:
        return self.keyword.lower()

    @cached_property
    def kind(self) -> str:
        """How the index stores and matches the value (see ``index.schema``)."""
        return vr_kind(self.vr)

    @cached_property
    def multi_valued(self) -> bool:
        return self.keyword in MULTI_VALUED


def vr_kind(vr: str) -> str:
    if vr == "PN":
        return "pn"
    if vr in ("DA",):
        return "date"
    if vr == "TM":
        return "time"
    if vr == "DT":
        return "datetime"
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return "int"
    if vr == "UI":
        return "uid"
    return "text"


#: Attributes whose values are stored ``\\``-joined and matched value by value.
MULTI_VALUED = frozenset({"OtherPatientIDs", "ImageType", "NameOfPhysiciansReadingStudy",
                          "OperatorsName", "PerformingPhysicianName",
                          "AdmittingDiagnosesDescription"})


def _a(keyword: str, level: Level, unique: bool = False) -> Attribute:
    return Attribute(keyword, level, dictionary_VR(keyword), unique)


P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

#: Attributes held in indexed columns.  Order within a level is the order of
#: the columns in the table.
ATTRIBUTES: tuple[Attribute, ...] = (
    # Patient (PS3.4 C.6.1.1.2)
    _a("PatientID", P, unique=True),
    _a("IssuerOfPatientID", P),
    _a("PatientName", P),
    _a("PatientBirthDate", P),
    _a("PatientBirthTime", P),
    _a("PatientSex", P),
    _a("OtherPatientIDs", P),
    _a("EthnicGroup", P),
    _a("PatientComments", P),
    # Study (PS3.4 C.6.1.1.3 / C.6.2.1.2, PS3.18 Table 6.7.1-1)
    _a("StudyInstanceUID", ST, unique=True),
    _a("StudyDate", ST),
    _a("StudyTime", ST),
    _a("AccessionNumber", ST),
    _a("StudyID", ST),
    _a("StudyDescription", ST),
    _a("ReferringPhysicianName", ST),
    _a("NameOfPhysiciansReadingStudy", ST),
    _a("PatientAge", ST),
    _a("PatientSize", ST),
    _a("PatientWeight", ST),
    _a("AdmittingDiagnosesDescription", ST),
    _a("InstitutionName", ST),
    # Series (PS3.4 C.6.1.1.4, PS3.18 Table 6.7.1-1)
    _a("SeriesInstanceUID", SE, unique=True),
    _a("Modality", SE),
    _a("SeriesNumber", SE),
    _a("SeriesDescription", SE),
    _a("SeriesDate", SE),
    _a("SeriesTime", SE),
    _a("BodyPartExamined", SE),
    _a("ProtocolName", SE),
    _a("PerformedProcedureStepStartDate", SE),
    _a("PerformedProcedureStepStartTime", SE),
    _a("Manufacturer", SE),
    _a("StationName", SE),
    _a("OperatorsName", SE),
    _a("PerformingPhysicianName", SE),
    _a("FrameOfReferenceUID", SE),
    # Instance (PS3.4 C.6.1.1.5, PS3.18 Table 6.7.1-1)
    _a("SOPInstanceUID", IM, unique=True),
    _a("SOPClassUID", IM),
    _a("InstanceNumber", IM),
    _a("ContentDate", IM),
    _a("ContentTime", IM),
    _a("AcquisitionDate", IM),
    _a("AcquisitionTime", IM),
    _a("AcquisitionDateTime", IM),
    _a("ImageType", IM),
    _a("Rows", IM),
    _a("Columns", IM),
    _a("BitsAllocated", IM),
    _a("NumberOfFrames", IM),
    _a("ImageComments", IM),
    _a("InstanceCreationDate", IM),
    _a("InstanceCreationTime", IM),
)

#: Attributes the index derives from the hierarchy rather than reading from
#: one instance (PS3.4 C.6.1.1.x "number of related ..." and PS3.18 6.7.1).
#: They are answered by aggregate sub-queries; ModalitiesInStudy and
#: SOPClassesInStudy can also be matched on.
COMPUTED: dict[str, tuple[Level, str]] = {
    "NumberOfPatientRelatedStudies": (P, "IS"),
    "NumberOfPatientRelatedSeries": (P, "IS"),
    "NumberOfPatientRelatedInstances": (P, "IS"),
    "NumberOfStudyRelatedSeries": (ST, "IS"),
    "NumberOfStudyRelatedInstances": (ST, "IS"),
    "ModalitiesInStudy": (ST, "CS"),
    "SOPClassesInStudy": (ST, "UI"),
    "NumberOfSeriesRelatedInstances": (SE, "IS"),
}

BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in ATTRIBUTES}
BY_TAG: dict[int, Attribute] = {a.tag: a for a in ATTRIBUTES}

#: The unique key of each level.
UNIQUE: dict[Level, Attribute] = {a.level: a for a in ATTRIBUTES if a.unique}


def attributes_at(level: Level) -> list[Attribute]:
    return [a for a in ATTRIBUTES if a.level == level]


class UnknownAttribute(ValueError):
    """A query named an attribute that is not in the DICOM dictionary."""


def resolve_key(key: str) -> tuple[int, str]:
    """Turn a keyword or a tag (``00100020``, ``(0010,0020)``, ``0010,0020``)
    into ``(tag, keyword)``; the keyword is ``""`` for private tags."""
    text = key.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    hexdigits = text.replace(",", "")
    if len(hexdigits) == 8 and all(c in "0123456789abcdefABCDEF" for c in hexdigits):
        tag = int(hexdigits, 16)
        return tag, keyword_for_tag(tag)
    tag_or_none = tag_for_keyword(text)
    if tag_or_none is None:
        raise UnknownAttribute(f"unknown attribute {key!r}: not a DICOM keyword or tag")
    return int(tag_or_none), text
