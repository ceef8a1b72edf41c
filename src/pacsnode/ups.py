"""The UPS worklist (PS3.4 Annex CC; its web face is UPS-RS, PS3.18 11).

One ``Worklist`` per node, with one method per transaction: ``create``,
``retrieve``, ``update``, ``change_state``, ``request_cancel``, ``search``.
Protocol adapters (``pacsnode.web.ups``) only translate HTTP in and out; every
refusal is a ``UPSRefusal`` that knows its HTTP status, its DIMSE status and
the reason a client reads in the ``Warning`` header.

What the standard asks of each attribute is data: ``UPS_ATTRIBUTES`` is
PS3.4 Table CC.2.5-3 (N-CREATE and N-SET requirement types, Final State
code) for the attributes this server checks; creation, update and the final
state checks of CC.2.5.1.1 all read it.

Workitems live in the index database (``index.workitems``); every change is
one write transaction that also appends to the change feed (level
``workitem``).  Writes are conditional (``UPDATE … WHERE version = :read AND
state = :read``) and retried on a lost race, so two clients claiming one
Workitem on SQLite or PostgreSQL get exactly one winner.  Searches go through
the shared query machinery (``query.parse.constraint_for`` and
``query.sql.attribute_condition``), so matching follows PS3.4 C.2.2.2 exactly
as C-FIND and QIDO-RS do.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from sqlalchemy import ColumnElement, Connection, Row, delete, func, insert, select
from sqlalchemy import update as sql_update
from sqlalchemy.exc import IntegrityError

from .dicom.catalogue import Level
from .dicom.header import sequence_items, valid_uid
from .dicom.values import attribute_columns, norm_date, norm_datetime, norm_time, text_value
from .errors import NotFound, PacsnodeError
from .events import Event, EventBus, Origin
from .index.db import Database, inserted_id
from .index.schema import changes
from .index.workitems import (WORKITEM_ATTRIBUTES, WORKITEM_BY_KEYWORD, workitem_item_attrs,
                              workitems)
from .node import Node
from .query.model import Query, Sequence
from .query.parse import search_query
from .query.sql import attribute_condition, sequence_exists

__all__ = ["UPS_PUSH_SOP_CLASS", "SCHEDULED", "IN_PROGRESS", "COMPLETED", "CANCELED", "STATES",
           "Req", "UPS_ATTRIBUTES", "UPSRefusal", "InvalidWorkitem", "WorkitemExists",
           "WorkitemNotFound", "TransactionUIDMissing", "TransactionUIDIncorrect",
           "StateConflict", "FinalStateNotMet", "Outcome", "Worklist", "parse_workitem_json"]

log = logging.getLogger("pacsnode.ups")

#: PS3.4 CC.2.5.1.3.1: the SOP Class UID of every UPS instance.
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"

SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
CANCELED = "CANCELED"
#: PS3.4 Table CC.1.1-1.
STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
FINAL_STATES = (COMPLETED, CANCELED)

_TRANSACTION_UID = 0x00081195
_STATE_TAG = 0x00741000

#: The discontinuation reason the server records when a Workitem is canceled
#: without one (CID 9300 "Procedure Discontinuation Reasons").
DEFAULT_DISCONTINUATION = ("110513", "DCM", "Discontinued for unspecified reason")


# -- errors: one table (STYLE.md habit 4) ------------------------------------

class UPSRefusal(PacsnodeError):
    """A refused UPS request.  ``reason`` goes into the ``Warning`` header and
    the JSON body; ``dimse_status`` is the UPS status code of PS3.4 CC.2."""


class InvalidWorkitem(UPSRefusal):
    """The data set does not meet Table CC.2.5-3 (N-CREATE or N-SET column),
    or the request is malformed.  PS3.18 11.4.3.1 / 11.6.3.1: 400.
    DIMSE 0x0120 missing attribute / 0x0106 invalid value / 0xC309."""

    http_status = 400
    dimse_status = 0x0120


class WorkitemExists(UPSRefusal):
    """PS3.18 11.4.3.1: 409 "The Target Workitem already exists" (0x0111)."""

    http_status = 409
    dimse_status = 0x0111


class WorkitemNotFound(UPSRefusal, NotFound):
    """PS3.18 11.5-11.8: 404; DIMSE 0xC307."""

    http_status = 404
    dimse_status = 0xC307


class TransactionUIDMissing(UPSRefusal):
    """PS3.18 Tables 11.6.3-1 / 11.7.3-1: 400 "the Transaction UID is missing"
    (DIMSE 0xC301)."""

    http_status = 400
    dimse_status = 0xC301


class TransactionUIDIncorrect(UPSRefusal):
    """PS3.18 Tables 11.6.3-1 / 11.7.3-1: 400 "the Transaction UID is
    incorrect" (DIMSE 0xC301)."""

    http_status = 400
    dimse_status = 0xC301


class StateConflict(UPSRefusal):
    """The request is inconsistent with the Workitem's state: 409.  DIMSE
    0xC300 may no longer be updated, 0xC302 already IN PROGRESS, 0xC310 not
    yet IN PROGRESS, 0xC311 already COMPLETED, 0xC312 performer cannot be
    contacted; or 400 (``http_status`` overridden) where PS3.18 says so."""

    http_status = 409

    def __init__(self, reason: str, dimse_status: int = 0xC300, http_status: int = 409) -> None:
        super().__init__(reason)
        self.dimse_status = dimse_status
        self.http_status = http_status


class FinalStateNotMet(UPSRefusal):
    """PS3.4 CC.2.1.3: COMPLETED/CANCELED refused while attributes the Final
    State column asks for have no value (DIMSE 0xC304); HTTP 409."""

    http_status = 409
    dimse_status = 0xC304


# -- PS3.4 Table CC.2.5-3 as data ---------------------------------------------

@dataclass(frozen=True)
class Req:
    """One row of Table CC.2.5-3.

    ``create`` and ``nset`` are the table's ``SCU/SCP`` requirement types
    (``"1/1"``, ``"2/2"``, ``"1C/2"``, …); ``"-"`` means "not allowed" (for
    ``create``: the client does not send it, the server fills it), ``"E"``
    means type 2 created empty.  ``final`` is the Final State code of
    CC.2.5.1.1 (R, RC, P, X, O).  ``items`` are the rows for the items of a
    sequence; ``code`` says the items follow the Code Sequence Macro."""

    keyword: str
    create: str
    nset: str
    final: str = "O"
    items: tuple["Req", ...] = ()
    code: bool = False
    enum: tuple[str, ...] = ()
    #: The server fills a missing or empty value on creation.
    server_fills: bool = False
    #: A Final State "value" may be a sequence with no items (e.g. Output
    #: Information Sequence: "may have no items" if there are no outputs).
    empty_ok: bool = False

    @property
    def scu_create(self) -> str:
        return self.create.split("/")[0]

    @property
    def scp_set(self) -> str:
        return self.nset.split("/")[-1]


def _code(keyword: str, create: str, nset: str, final: str = "O") -> Req:
    return Req(keyword, create, nset, final, code=True)


_HUMAN_PERFORMER = (
    _code("HumanPerformerCodeSequence", "1/1", "1/1"),
    Req("HumanPerformerName", "1/1", "1/1"),
    Req("HumanPerformerOrganization", "1/1", "1/1"),
)

#: PS3.4 Table CC.2.5-3 (the rows this server checks; "all other attributes"
#: of the UPS modules are 3/3 and O, and are kept as sent).
UPS_ATTRIBUTES: tuple[Req, ...] = (
    # SOP Common Module
    Req("SpecificCharacterSet", "1C/1C", "1C/1C", "RC"),
    Req("SOPClassUID", "-/1", "-", "R"),
    Req("SOPInstanceUID", "-/1", "-", "R"),
    # Unified Procedure Step Scheduled Procedure Information Module
    Req("ScheduledProcedureStepPriority", "1/1", "3/1", "R", enum=("HIGH", "MEDIUM", "LOW")),
    Req("ScheduledProcedureStepModificationDateTime", "-/1", "-/1", "R"),
    Req("ProcedureStepLabel", "1/1", "3/1"),
    # 2/1: "If a value is not provided by the SCU, the SCP shall fill in the
    # Worklist Label"; we also accept it absent.
    Req("WorklistLabel", "2/1", "3/1", server_fills=True),
    Req("ScheduledProcessingParametersSequence", "2/2", "3/2"),
    _code("ScheduledStationNameCodeSequence", "2/2", "3/2"),
    _code("ScheduledStationClassCodeSequence", "2/2", "3/2"),
    _code("ScheduledStationGeographicLocationCodeSequence", "2/2", "3/2"),
    Req("ScheduledHumanPerformersSequence", "2C/2C", "3/2", items=_HUMAN_PERFORMER),
    Req("ScheduledProcedureStepStartDateTime", "1/1", "3/1", "R"),
    Req("ExpectedCompletionDateTime", "3/1", "3/1"),
    Req("ScheduledProcedureStepExpirationDateTime", "3/3", "3/3"),
    _code("ScheduledWorkitemCodeSequence", "2/2", "3/1"),
    Req("CommentsOnTheScheduledProcedureStep", "2/2", "3/1"),
    Req("InputReadinessState", "1/1", "3/1", "R", enum=("INCOMPLETE", "UNAVAILABLE", "READY")),
    Req("InputInformationSequence", "2/2", "3/2"),
    Req("StudyInstanceUID", "1C/2", "3/2", server_fills=True),
    Req("OutputDestinationSequence", "3/3", "3/3"),
    # Unified Procedure Step Relationship Module
    Req("PatientName", "2/2", "-"),
    Req("PatientID", "1C/2", "-", server_fills=True),
    Req("IssuerOfPatientID", "2/2", "-"),
    Req("IssuerOfPatientIDQualifiersSequence", "2/2", "-"),
    Req("OtherPatientIDsSequence", "2/2", "3/3", items=(Req("PatientID", "1/1", "1/1"),)),
    Req("PatientBirthDate", "2/2", "-"),
    Req("PatientSex", "2/2", "-"),
    Req("ReferencedPatientPhotoSequence", "3/3", "3/3"),
    Req("AdmissionID", "2/2", "-"),
    Req("IssuerOfAdmissionIDSequence", "2/2", "-"),
    Req("AdmittingDiagnosesDescription", "2/2", "-"),
    _code("AdmittingDiagnosesCodeSequence", "2/2", "-"),
    Req("ReferencedRequestSequence", "2/2", "-", items=(
        Req("StudyInstanceUID", "1/1", "-"),
        Req("AccessionNumber", "2/2", "-"),
        Req("IssuerOfAccessionNumberSequence", "2/2", "-"),
        Req("PlacerOrderNumberImagingServiceRequest", "3/1", "-"),
        Req("OrderPlacerIdentifierSequence", "2/2", "-"),
        Req("FillerOrderNumberImagingServiceRequest", "3/1", "-"),
        Req("OrderFillerIdentifierSequence", "2/2", "-"),
        Req("RequestedProcedureID", "2/2", "-"),
        Req("RequestedProcedureDescription", "2/2", "-"),
        _code("RequestedProcedureCodeSequence", "2/2", "-"),
    )),
    Req("ReplacedProcedureStepSequence", "1C/1C", "-"),
    # Patient Medical Module
    Req("MedicalAlerts", "3/2", "3/2"),
    Req("PregnancyStatus", "3/2", "3/2"),
    Req("SpecialNeeds", "3/2", "3/2"),
    # Unified Procedure Step Progress Information Module
    Req("ProcedureStepState", "1/1", "-", "R", enum=STATES),
    Req("ProcedureStepProgressInformationSequence", "E", "3/2", "X", items=(
        Req("ProcedureStepProgress", "-", "3/1"),
        Req("ProcedureStepProgressDescription", "-", "3/1"),
        Req("ProcedureStepProgressParametersSequence", "-", "3/3"),
        Req("ProcedureStepCommunicationsURISequence", "-", "3/1", items=(
            Req("ContactURI", "-", "1/1"),
            Req("ContactDisplayName", "-", "3/1"),
        )),
        # "If changing the UPS State to CANCELED and this Attribute has no
        # value, the SCP shall fill it with the current date time."
        Req("ProcedureStepCancellationDateTime", "-", "3/1", "X"),
        Req("ReasonForCancellation", "-", "3/1"),
        Req("ProcedureStepDiscontinuationReasonCodeSequence", "-", "3/1", "X", code=True),
    )),
    # Unified Procedure Step Performed Procedure Information Module
    Req("UnifiedProcedureStepPerformedProcedureSequence", "E", "3/2", "P", items=(
        Req("ActualHumanPerformersSequence", "-", "3/1", "RC", items=(
            _code("HumanPerformerCodeSequence", "-", "3/1", "RC"),
            Req("HumanPerformerName", "-", "3/1", "RC"),
            Req("HumanPerformerOrganization", "-", "3/1"),
        )),
        _code("PerformedStationNameCodeSequence", "-", "3/2", "P"),
        _code("PerformedStationClassCodeSequence", "-", "3/2"),
        _code("PerformedStationGeographicLocationCodeSequence", "-", "3/2"),
        Req("PerformedProcedureStepStartDateTime", "-", "3/1", "P"),
        Req("PerformedProcedureStepDescription", "-", "3/1"),
        Req("CommentsOnThePerformedProcedureStep", "-", "3/1"),
        _code("PerformedWorkitemCodeSequence", "-", "3/1", "P"),
        Req("PerformedProcessingParametersSequence", "-", "3/1"),
        Req("PerformedProcedureStepEndDateTime", "-", "3/1", "P"),
        Req("OutputInformationSequence", "-", "2/2", "P", empty_ok=True),
    )),
)

UPS_BY_KEYWORD: dict[str, Req] = {r.keyword: r for r in UPS_ATTRIBUTES}

#: PS3.18 11.9.2 / Table CC.2.5-3: the Return Keys of type 1 and 2 that every
#: search result carries (empty when the Workitem has no value).
DEFAULT_RETURN_KEYS: tuple[str, ...] = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID",
    "ScheduledProcedureStepPriority", "ProcedureStepLabel", "WorklistLabel",
    "ScheduledProcessingParametersSequence", "ScheduledStationNameCodeSequence",
    "ScheduledStationClassCodeSequence", "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledHumanPerformersSequence", "ScheduledProcedureStepStartDateTime",
    "ScheduledWorkitemCodeSequence", "InputReadinessState", "InputInformationSequence",
    "StudyInstanceUID", "PatientName", "PatientID", "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "PatientBirthDate",
    "PatientSex", "AdmissionID", "IssuerOfAdmissionIDSequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence",
    "ReferencedRequestSequence", "ProcedureStepState",
    "ProcedureStepProgressInformationSequence",
)


# -- data set helpers ---------------------------------------------------------

def parse_workitem_json(body: bytes, *, optional: bool = False) -> Dataset | None:
    """A request body (one DICOM JSON object, or an array of exactly one) as
    a Dataset.  ``optional``: an empty body gives None."""
    if not body.strip():
        if optional:
            return None
        raise InvalidWorkitem("the request has no body; a DICOM JSON data set is expected")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidWorkitem(f"the body is not JSON: {exc}") from None
    if isinstance(obj, list):
        if len(obj) != 1:
            raise InvalidWorkitem(f"the body is an array of {len(obj)} data sets; "
                                  "exactly one Workitem is expected")
        obj = obj[0]
    if not isinstance(obj, dict):
        raise InvalidWorkitem("the body is not a DICOM JSON object")
    try:
        return Dataset.from_json(obj)
    except Exception as exc:  # pydicom raises several types on bad JSON models
        log.info("UPS-RS: DICOM JSON body refused: %s", exc)
        raise InvalidWorkitem("the body is not a valid DICOM JSON data set (each attribute "
                              "is a tag key holding {\"vr\": …, \"Value\": [...]}, "
                              "PS3.18 F.2)") from None


def _has_value(elem: DataElement | None) -> TypeGuard[DataElement]:
    if elem is None:
        return False
    value = elem.value
    if elem.VR == "SQ":
        return value is not None and len(value) > 0
    if value is None:
        return False
    if isinstance(value, (list, MultiValue)):
        return any(str(v).strip() for v in value)
    if isinstance(value, bytes):
        return len(value) > 0
    if isinstance(value, PersonName):
        return str(value).strip("^= ") != ""
    return str(value).strip() != ""


def _el(ds: Dataset, keyword: str) -> DataElement | None:
    """The element (not its value) of ``keyword``, or None."""
    return ds[keyword] if keyword in ds else None


def _text(ds: Dataset, keyword: str) -> str:
    elem = _el(ds, keyword)
    return text_value(elem.value).strip() if elem is not None and elem.value is not None \
        and elem.VR != "SQ" else ""


def _now_dt() -> str:
    return datetime.now().astimezone().strftime("%Y%m%d%H%M%S.%f%z")


def _path(prefix: str, keyword: str) -> str:
    return f"{prefix}{keyword}" if not prefix else f"{prefix} > {keyword}"


def _check_code_item(item: Dataset, where: str, problems: list[str]) -> None:
    """Code Sequence Macro (Table CC.2.5-2a): Code Meaning 1; one of Code
    Value / Long Code Value / URN Code Value; Coding Scheme Designator with
    Code Value or Long Code Value."""
    if not _has_value(_el(item, "CodeMeaning")):
        problems.append(f"{where} > CodeMeaning has no value")
    values = [k for k in ("CodeValue", "LongCodeValue", "URNCodeValue")
              if _has_value(_el(item, k))]
    if not values:
        problems.append(f"{where} has no CodeValue (or LongCodeValue / URNCodeValue)")
    elif values[0] != "URNCodeValue" and not _has_value(_el(item, "CodingSchemeDesignator")):
        problems.append(f"{where} > CodingSchemeDesignator has no value")


#: PS3.5 Table 6.2-1 DT: YYYY[MM[DD[HH[MM[SS[.F{1-6}]]]]]][&ZZXX].
_DT_RE = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")


def _check_value(req: Req, elem: DataElement, where: str, problems: list[str]) -> None:
    """Enumerated values and parsable dates/times/UIDs."""
    if not _has_value(elem) or elem.VR == "SQ":
        return
    text = text_value(elem.value).strip()
    if req.enum and text not in req.enum:
        problems.append(f"{where} is {text!r}, not one of {', '.join(req.enum)}")
    try:
        if elem.VR == "DT":
            for v in text.split("\\"):
                if not _DT_RE.match(v.strip()):
                    raise ValueError(f"not a DICOM date-time: {v!r}")
                norm_datetime(v)
        elif elem.VR == "DA":
            for v in text.split("\\"):
                norm_date(v)
        elif elem.VR == "TM":
            for v in text.split("\\"):
                norm_time(v)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
    if elem.VR == "UI":
        for v in text.split("\\"):
            if not valid_uid(v):
                problems.append(f"{where}: {v!r} is not a valid UID")


def _check_items(req: Req, elem: DataElement, where: str, column: str,
                 problems: list[str]) -> None:
    """The items of a present sequence against the item rows of ``req``
    (``column``: "create" or "nset")."""
    for number, item in enumerate(elem.value or [], start=1):
        at = f"{where}[{number}]"
        if req.code:
            _check_code_item(item, at, problems)
        for sub in req.items:
            code = (sub.scu_create if column == "create" else sub.nset.split("/")[0])
            sub_elem = _el(item, sub.keyword)
            sub_where = f"{at} > {sub.keyword}"
            if code == "1" and not _has_value(sub_elem):
                problems.append(f"{sub_where} is required (type 1) and has no value")
            elif code == "2" and sub_elem is None:
                problems.append(f"{sub_where} is required (type 2) and is missing")
            if sub_elem is not None:
                _check_value(sub, sub_elem, sub_where, problems)
                if sub_elem.VR == "SQ":
                    _check_items(sub, sub_elem, sub_where, column, problems)


def _add_missing_type2(ds: Dataset, reqs: tuple[Req, ...] | list[Req]) -> None:
    """Type 2 attributes the client left out are created empty, as PS3.4
    allows the SCP to (a zero-length value means "unknown"); type 1
    attributes are still required.  Applied to present sequence items too."""
    for req in reqs:
        elem = _el(ds, req.keyword)
        if elem is None and req.scu_create == "2" and not req.server_fills:
            ds.add_new(req.keyword, dictionary_VR(req.keyword),
                       [] if dictionary_VR(req.keyword) == "SQ" else None)
        elif elem is not None and elem.VR == "SQ" and req.items:
            for item in elem.value or []:
                _add_missing_type2(item, req.items)


def check_create(ds: Dataset) -> list[str]:
    """Problems of ``ds`` against the N-CREATE column of Table CC.2.5-3
    (empty when it may be created)."""
    problems: list[str] = []
    for req in UPS_ATTRIBUTES:
        elem = _el(ds, req.keyword)
        code = req.scu_create
        if code == "1" and not _has_value(elem):
            problems.append(f"{req.keyword} is required (type 1) and has no value")
        elif code == "2" and elem is None and not req.server_fills:
            problems.append(f"{req.keyword} is required (type 2) and is missing "
                            "(send it empty if there is no value)")
        elif code == "E" and _has_value(elem):
            problems.append(f"{req.keyword} must be empty when a Workitem is created")
        if elem is None:
            continue
        if elem.VR != dictionary_VR(req.keyword):
            problems.append(f"{req.keyword} has VR {elem.VR}, expected "
                            f"{dictionary_VR(req.keyword)}")
            continue
        _check_value(req, elem, req.keyword, problems)
        if elem.VR == "SQ" and code != "E":
            _check_items(req, elem, req.keyword, "create", problems)
    state = _text(ds, "ProcedureStepState")
    if state and state != SCHEDULED:
        problems.append(f"ProcedureStepState is {state!r}; a Workitem is created SCHEDULED "
                        "(PS3.4 CC.2.5.3, 0xC309)")
    if _has_value(ds.get(_TRANSACTION_UID)):
        problems.append("TransactionUID must be empty when a Workitem is created")
    sop_class = _text(ds, "SOPClassUID")
    if sop_class and sop_class != UPS_PUSH_SOP_CLASS:
        problems.append(f"SOPClassUID is {sop_class}, not the UPS Push SOP Class "
                        f"{UPS_PUSH_SOP_CLASS}")
    return problems


def final_state_problems(ds: Dataset, target: str) -> list[str]:
    """Attributes without a value that the Final State column (PS3.4
    CC.2.5.1.1) asks for before ``target`` (COMPLETED or CANCELED).  RC
    conditions ("if known") cannot be judged by the server and are skipped."""
    wanted = {"R"} | ({"P"} if target == COMPLETED else {"X"})
    problems: list[str] = []

    def walk(reqs: Iterable[Req], data: Dataset, prefix: str) -> None:
        for req in reqs:
            elem = _el(data, req.keyword)
            where = _path(prefix, req.keyword)
            if req.final in wanted:
                ok = (elem is not None) if req.empty_ok else _has_value(elem)
                if not ok:
                    problems.append(f"{where} has no value")
            if req.items and elem is not None and elem.VR == "SQ" and elem.value:
                for item in elem.value:
                    walk(req.items, item, where)

    walk(UPS_ATTRIBUTES, ds, "")
    return problems


# -- outcomes ----------------------------------------------------------------

@dataclass
class Outcome:
    """What a successful transaction did; ``warning`` is for the HTTP
    Warning header (e.g. PS3.18 11.7.3.2 "already in the requested state")."""

    uid: str
    state: str
    warning: str = ""
    seq: int = 0


@dataclass
class _Plan:
    """The write a transaction wants, decided from the row it read."""

    ds: Dataset | None = None  # new data set, or None for no write
    state: str = ""
    transaction_uid: str | None = None
    action: str = ""
    warning: str = ""


class _LostRace(Exception):
    """The conditional UPDATE matched no row: someone wrote first; retry."""


# -- the service ---------------------------------------------------------------

@dataclass
class Worklist:
    """The UPS worklist of one node (PS3.4 CC.1: one Worklist per service)."""

    db: Database
    bus: EventBus | None = None  # events are emitted after commit
    default_worklist_label: str = "PACSNODE"
    _max_retries: int = field(default=50, repr=False)

    @classmethod
    def for_node(cls, node: Node) -> "Worklist":
        return cls(node.db, node.bus, node.settings.ae_title or "PACSNODE")

    # ---- Create (N-CREATE; PS3.18 11.4)

    def create(self, ds: Dataset, uid: str | None = None,
               origin: Origin | None = None) -> Outcome:
        body_uid = _text(ds, "SOPInstanceUID")
        if uid and body_uid and uid != body_uid:
            raise InvalidWorkitem(f"the Workitem UID in the query ({uid}) and the "
                                  f"SOPInstanceUID in the body ({body_uid}) differ")
        uid = uid or body_uid or _new_uid()
        if not valid_uid(uid):
            raise InvalidWorkitem(f"the Workitem UID {uid[:80]!r} is not a valid UID "
                                  "(1-64 characters of digits and dots)")
        ds = _copy(ds)
        _add_missing_type2(ds, UPS_ATTRIBUTES)
        problems = check_create(ds)
        if problems:
            raise InvalidWorkitem("The Workitem does not meet the N-CREATE requirements of "
                                  "PS3.4 Table CC.2.5-3: " + "; ".join(problems))
        if _TRANSACTION_UID in ds:
            del ds[_TRANSACTION_UID]
        # What the SCP fills (Table CC.2.5-3 N-CREATE SCP column).
        ds.SOPClassUID = UPS_PUSH_SOP_CLASS
        ds.SOPInstanceUID = uid
        ds.ProcedureStepState = SCHEDULED
        ds.ScheduledProcedureStepModificationDateTime = _now_dt()
        if not _has_value(_el(ds, "WorklistLabel")):
            ds.WorklistLabel = self.default_worklist_label
        for keyword in ("PatientID", "StudyInstanceUID"):
            if keyword not in ds:
                ds.add_new(keyword, dictionary_VR(keyword), None)
        for keyword in ("ProcedureStepProgressInformationSequence",
                        "UnifiedProcedureStepPerformedProcedureSequence"):
            if keyword not in ds:
                ds.add_new(keyword, "SQ", [])
        now = time.time()
        try:
            with self.db.write() as conn:
                if conn.execute(select(workitems.c.id).where(
                        workitems.c.sopinstanceuid == uid)).first() is not None:
                    raise WorkitemExists(f"The Target Workitem already exists: {uid}")
                added = conn.execute(insert(workitems).values(
                    transaction_uid="", version=1, created_at=now, updated_at=now,
                    meta_json=_dumps(ds), **_row_values(ds)))
                row_id = inserted_id(added)
                _write_items(conn, row_id, ds, replace=False)
                seq = _record(conn, "created", ds, origin)
        except IntegrityError:
            # PostgreSQL: another request created the same UID between our
            # SELECT and INSERT.
            raise WorkitemExists(f"The Target Workitem already exists: {uid}") from None
        self._emit("created", ds, origin, seq)
        return Outcome(uid, SCHEDULED, seq=seq)

    # ---- Retrieve (N-GET; PS3.18 11.5)

    def retrieve(self, uid: str) -> dict[str, Any]:
        """The Workitem as DICOM JSON; never with the Transaction UID (it is
        not stored in the JSON at all).  COMPLETED and CANCELED Workitems
        stay retrievable."""
        with self.db.read() as conn:
            raw = conn.execute(select(workitems.c.meta_json).where(
                workitems.c.sopinstanceuid == uid)).scalar_one_or_none()
        if raw is None:
            raise WorkitemNotFound(f"The origin server has no knowledge of the Target "
                                   f"Workitem {uid}")
        return _public(json.loads(raw))

    # ---- Update (N-SET; PS3.18 11.6)

    def update(self, uid: str, changes_ds: Dataset, transaction_uid: str | None = None,
               origin: Origin | None = None) -> Outcome:
        """Set attributes (sequences are replaced whole).  SCHEDULED needs no
        Transaction UID (and must not be given one); IN PROGRESS needs the
        owner's; COMPLETED and CANCELED refuse (PS3.18 11.6.2: 400)."""
        changes_ds = _copy(changes_ds)
        body_tx = _text(changes_ds, "TransactionUID")
        if _TRANSACTION_UID in changes_ds:
            del changes_ds[_TRANSACTION_UID]
        if body_tx and transaction_uid and body_tx != transaction_uid:
            raise InvalidWorkitem("the Transaction UID in the query and in the body differ")
        transaction_uid = transaction_uid or body_tx or None
        new_state = _text(changes_ds, "ProcedureStepState") if _STATE_TAG in changes_ds else None

        def plan(row: Row[Any], current: Dataset) -> _Plan:
            state = row.procedurestepstate
            if state in FINAL_STATES:
                raise StateConflict(
                    "The submitted request is inconsistent with the current state of the "
                    f"Workitem: it is {state} and may no longer be updated (PS3.18 11.6.2)",
                    dimse_status=0xC300, http_status=400)
            if state == SCHEDULED and transaction_uid:
                raise StateConflict(
                    "The target URI did not reference a claimed Workitem: it is SCHEDULED, "
                    "so an update must not carry a Transaction UID", dimse_status=0xC301,
                    http_status=400)
            if state == IN_PROGRESS:
                if not transaction_uid:
                    raise TransactionUIDMissing(
                        "The Transaction UID is missing: the Workitem is IN PROGRESS and "
                        "only its owner may update it (?transaction=<Transaction UID>)")
                if transaction_uid != row.transaction_uid:
                    raise TransactionUIDIncorrect(
                        "The Transaction UID is incorrect: the Workitem is IN PROGRESS and "
                        "owned by another transaction")
            if new_state is not None and new_state != state:
                raise InvalidWorkitem(
                    "The submitted request is inconsistent with the current state of the "
                    "Workitem: ProcedureStepState cannot be changed by an update; use the "
                    "Change Workitem State transaction (PUT .../state)")
            problems = check_update(changes_ds, current)
            if problems:
                raise InvalidWorkitem("The update does not meet the N-SET requirements of "
                                      "PS3.4 Table CC.2.5-3: " + "; ".join(problems))
            merged = _copy(current)
            for elem in changes_ds:
                if int(elem.tag) in _NOT_SETTABLE_TAGS:
                    continue  # unchanged values of not-settable attributes
                merged[elem.tag] = elem
            merged.ScheduledProcedureStepModificationDateTime = _now_dt()
            return _Plan(merged, state, None, "updated")

        return self._mutate(uid, plan, origin)

    # ---- Change state (N-ACTION Change UPS State; PS3.18 11.7)

    def change_state(self, uid: str, requested: str, transaction_uid: str,
                     origin: Origin | None = None) -> Outcome:
        """PS3.4 Table CC.1.1-2, row by row."""
        requested = (requested or "").strip()
        if not requested:
            raise InvalidWorkitem("the request has no ProcedureStepState (0074,1000)")
        if requested not in STATES:
            raise InvalidWorkitem(f"ProcedureStepState {requested!r} is not one of "
                                  f"{', '.join(STATES)}")
        if not transaction_uid:
            raise TransactionUIDMissing("The Transaction UID is missing: a state change "
                                        "carries the TransactionUID (0008,1195)")
        if not valid_uid(transaction_uid):
            raise InvalidWorkitem(f"the Transaction UID {transaction_uid[:80]!r} is not a "
                                  "valid UID")
        if requested == SCHEDULED:
            raise StateConflict(
                "The submitted request is inconsistent with the state of the UPS Instance: "
                "a Workitem becomes SCHEDULED only when it is created (0xC303)",
                dimse_status=0xC303, http_status=400)

        def plan(row: Row[Any], current: Dataset) -> _Plan:
            state = row.procedurestepstate
            owner = row.transaction_uid
            if state == SCHEDULED:
                if requested == IN_PROGRESS:
                    ds = _copy(current)
                    ds.ProcedureStepState = IN_PROGRESS
                    return _Plan(ds, IN_PROGRESS, transaction_uid, f"state:{IN_PROGRESS}")
                raise StateConflict(
                    "The submitted request is inconsistent with the state of the UPS "
                    "Instance: it is SCHEDULED, not yet IN PROGRESS; claim it first (0xC310)",
                    dimse_status=0xC310)
            if transaction_uid != owner:
                raise TransactionUIDIncorrect(
                    f"The Transaction UID is incorrect: the Workitem is {state} and was "
                    "claimed with another Transaction UID")
            if state == IN_PROGRESS:
                if requested == IN_PROGRESS:
                    raise StateConflict(
                        "The submitted request is inconsistent with the state of the UPS "
                        "Instance: it is already IN PROGRESS (0xC302)", dimse_status=0xC302)
                ds = _copy(current)
                if requested == CANCELED:
                    _fill_cancellation(ds, None)
                problems = final_state_problems(ds, requested)
                if problems:
                    raise FinalStateNotMet(
                        "The submitted request is inconsistent with the state of the UPS "
                        f"Instance: it has not met the final state requirements for "
                        f"{requested} (PS3.4 CC.2.5.1.1, 0xC304): " + "; ".join(problems))
                ds.ProcedureStepState = requested
                return _Plan(ds, requested, owner, f"state:{requested}")
            # COMPLETED or CANCELED, with the owner's Transaction UID.
            if requested == state:
                return _Plan(None, state, warning=f"The UPS is already in the requested state "
                                                  f"of {state}.")
            raise StateConflict(
                "The submitted request is inconsistent with the state of the UPS Instance: "
                f"it is {state} and may no longer be updated (0xC300)", dimse_status=0xC300)

        return self._mutate(uid, plan, origin)

    # ---- Request cancellation (N-ACTION Request UPS Cancel; PS3.18 11.8)

    def request_cancel(self, uid: str, info: Dataset | None = None,
                       origin: Origin | None = None) -> Outcome:
        """A SCHEDULED Workitem is canceled at once (PS3.4 CC.2.2.3: the SCP
        moves it through IN PROGRESS to CANCELED, meeting the final state
        requirements).  One IN PROGRESS is refused: its performer would have
        to be told through the UPS Watch/Event SOP classes, which this server
        does not implement (0xC312)."""
        info = info if info is not None else Dataset()
        problems: list[str] = []
        reasons = _el(info, "ProcedureStepDiscontinuationReasonCodeSequence")
        if reasons is not None and reasons.VR == "SQ":
            for number, item in enumerate(reasons.value or [], start=1):
                _check_code_item(item, f"ProcedureStepDiscontinuationReasonCodeSequence[{number}]",
                                 problems)
        if problems:
            raise InvalidWorkitem("The cancel request is invalid: " + "; ".join(problems))

        def plan(row: Row[Any], current: Dataset) -> _Plan:
            state = row.procedurestepstate
            if state == SCHEDULED:
                ds = _copy(current)
                _fill_cancellation(ds, info)
                problems = final_state_problems(ds, CANCELED)
                if problems:  # cannot happen with the fills above; kept as a guard
                    raise FinalStateNotMet("The Workitem cannot be canceled: " +
                                           "; ".join(problems))
                ds.ProcedureStepState = CANCELED
                return _Plan(ds, CANCELED, None, f"state:{CANCELED}")
            if state == IN_PROGRESS:
                raise StateConflict(
                    "The request is inconsistent with the current state of the Target "
                    "Workitem: it is IN PROGRESS, and its performer cannot be told of a "
                    "cancel request because this server does not implement the UPS "
                    "Watch/Event SOP classes (no subscriptions or event reports); the "
                    "performer can cancel it with the Change Workitem State transaction "
                    "(0xC312)", dimse_status=0xC312)
            if state == COMPLETED:
                raise StateConflict(
                    "The request is inconsistent with the current state of the Target "
                    "Workitem: it is already COMPLETED (0xC311)", dimse_status=0xC311)
            raise StateConflict("The UPS is already in the requested state of CANCELED.",
                                dimse_status=0xB304)

        return self._mutate(uid, plan, origin)

    # ---- Search (C-FIND; PS3.18 11.9)

    def search(self, params: Iterable[tuple[str, str]], max_limit: int = 1000
               ) -> list[dict[str, Any]]:
        query = parse_search(params, max_limit)
        stmt = select(workitems.c.meta_json).where(*search_conditions(query)) \
            .order_by(workitems.c.id)
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        if query.offset:
            stmt = stmt.offset(query.offset)
        with self.db.read() as conn:
            rows = conn.execute(stmt).scalars().all()
        return [_public(_project(json.loads(raw), query)) for raw in rows]

    def count(self, params: Iterable[tuple[str, str]]) -> int:
        query = parse_search(params, 0)
        stmt = select(func.count(workitems.c.id)).where(*search_conditions(query))
        with self.db.read() as conn:
            return int(conn.execute(stmt).scalar_one())

    # ---- the one write path

    def _mutate(self, uid: str, decide: Callable[[Any, Dataset], _Plan],
                origin: Origin | None) -> Outcome:
        """Read the row, let ``decide`` refuse or plan a write, write it
        conditionally on the version and state read, with its items and its
        change-feed row, in one transaction; retry when another writer won."""
        for _attempt in range(self._max_retries):
            try:
                with self.db.write() as conn:
                    row = conn.execute(select(workitems).where(
                        workitems.c.sopinstanceuid == uid)).first()
                    if row is None:
                        raise WorkitemNotFound(f"The Target Workitem {uid} was not found")
                    current = Dataset.from_json(json.loads(row.meta_json))
                    plan = decide(row, current)
                    if plan.ds is None:
                        return Outcome(uid, plan.state, plan.warning)
                    tx = row.transaction_uid if plan.transaction_uid is None \
                        else plan.transaction_uid
                    result = conn.execute(
                        sql_update(workitems)
                        .where(workitems.c.id == row.id, workitems.c.version == row.version,
                               workitems.c.procedurestepstate == row.procedurestepstate)
                        .values(transaction_uid=tx, version=row.version + 1,
                                updated_at=time.time(), meta_json=_dumps(plan.ds),
                                **_row_values(plan.ds)))
                    if result.rowcount != 1:
                        raise _LostRace()
                    _write_items(conn, int(row.id), plan.ds, replace=True)
                    seq = _record(conn, plan.action, plan.ds, origin)
            except _LostRace:
                time.sleep(0.005)
                continue
            self._emit(plan.action, plan.ds, origin, seq)
            return Outcome(uid, plan.state, plan.warning, seq)
        raise UPSRefusal(f"the Workitem {uid} kept changing under this request; try again")

    def _emit(self, action: str, ds: Dataset, origin: Origin | None, seq: int) -> None:
        if self.bus is None:
            return
        self.bus.emit(Event(action=action, level="workitem",
                            study_uid=_text(ds, "StudyInstanceUID"),
                            instance_uid=_text(ds, "SOPInstanceUID"), origin=origin,
                            patient_id=_text(ds, "PatientID"), seq=seq,
                            extra={"state": _text(ds, "ProcedureStepState")}))


# -- update checks -------------------------------------------------------------

#: Attributes an update may not change (N-SET "Not allowed"); an update that
#: repeats their current value is accepted and the value ignored.
_NOT_SETTABLE = tuple(r.keyword for r in UPS_ATTRIBUTES if r.nset == "-")


def check_update(changes_ds: Dataset, current: Dataset) -> list[str]:
    """Problems of an update against the N-SET column of Table CC.2.5-3."""
    problems: list[str] = []
    for elem in changes_ds:
        keyword = elem.keyword
        req = UPS_BY_KEYWORD.get(keyword)
        if req is None:
            continue  # "all other attributes": 3/3
        if req.nset == "-":
            if keyword == "ProcedureStepState":
                continue  # judged by the caller
            if keyword == "ScheduledProcedureStepModificationDateTime":
                continue  # the server sets it ("SCP shall use time of SET")
            old = current.get(elem.tag)
            if old is None or _json_of(old) != _json_of(elem):
                problems.append(f"{keyword} may not be changed by an update "
                                "(N-SET not allowed)")
            continue
        if req.scp_set == "1" and elem.VR != "SQ" and not _has_value(elem):
            problems.append(f"{keyword} may not be emptied (type 1)")
        _check_value(req, elem, keyword, problems)
        if elem.VR == "SQ":
            _check_items(req, elem, keyword, "nset", problems)
    return problems


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return int(tag)


_NOT_SETTABLE_TAGS = frozenset(_tag(k) for k in _NOT_SETTABLE)


def _json_of(elem: DataElement) -> Any:
    ds = Dataset()
    ds[elem.tag] = elem
    return ds.to_json_dict()


def _fill_cancellation(ds: Dataset, info: Dataset | None) -> None:
    """What the SCP fills when a Workitem becomes CANCELED (Table CC.2.5-3:
    Procedure Step Cancellation DateTime "the SCP shall fill it with the
    current date time"; a discontinuation reason, from the cancel request or
    CID 9300's "unspecified", so that the X final state requirements hold as
    CC.2.5.1.3.2 expects of a cancel without N-SETs)."""
    seq = _el(ds, "ProcedureStepProgressInformationSequence")
    if seq is None or seq.VR != "SQ":
        ds.ProcedureStepProgressInformationSequence = []
        seq = ds["ProcedureStepProgressInformationSequence"]
    if not seq.value:
        seq.value.append(Dataset())
    item = seq.value[0]
    if not _has_value(_el(item, "ProcedureStepCancellationDateTime")):
        item.ProcedureStepCancellationDateTime = _now_dt()
    if info is not None:
        if _has_value(_el(info, "ReasonForCancellation")):
            item.ReasonForCancellation = info.ReasonForCancellation
        reasons = _el(info, "ProcedureStepDiscontinuationReasonCodeSequence")
        if _has_value(reasons):
            item.ProcedureStepDiscontinuationReasonCodeSequence = reasons.value
        contact = {k: _el(info, k) for k in ("ContactURI", "ContactDisplayName")}
        if _has_value(contact["ContactURI"]):
            entry = Dataset()
            entry.ContactURI = contact["ContactURI"].value
            if _has_value(contact["ContactDisplayName"]):
                entry.ContactDisplayName = contact["ContactDisplayName"].value
            item.ProcedureStepCommunicationsURISequence = [entry]
    if not _has_value(_el(item, "ProcedureStepDiscontinuationReasonCodeSequence")):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DEFAULT_DISCONTINUATION
        item.ProcedureStepDiscontinuationReasonCodeSequence = [code]


# -- storage helpers -------------------------------------------------------------

def _copy(ds: Dataset) -> Dataset:
    return Dataset.from_json(ds.to_json_dict())


def _dumps(ds: Dataset) -> str:
    body = ds.to_json_dict()
    body.pop(f"{_TRANSACTION_UID:08X}", None)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def _new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _row_values(ds: Dataset) -> dict[str, Any]:
    """Index column values of the searchable attributes (the same normal
    forms as the instance index, so the shared SQL matches them)."""
    out: dict[str, Any] = {}
    for attr in WORKITEM_ATTRIBUTES:
        elem = ds.get(attr.tag)
        value = None if elem is None or elem.VR == "SQ" else elem.value
        out.update(attribute_columns(attr, value))
    return out


def _item_rows(row_id: int, ds: Dataset) -> list[dict[str, Any]]:
    """Item attributes of every top-level sequence, for sequence matching."""
    return [{"workitem_fk": row_id, "seq": seq, "item": number, "keyword": keyword,
             "value": value, "value_ci": folded}
            for seq, number, keyword, value, folded in sequence_items(ds, sequences=None)]


def _write_items(conn: Connection, row_id: int, ds: Dataset, *, replace: bool) -> None:
    if replace:
        conn.execute(delete(workitem_item_attrs).where(
            workitem_item_attrs.c.workitem_fk == row_id))
    rows = _item_rows(row_id, ds)
    if rows:
        conn.execute(insert(workitem_item_attrs), rows)


def _record(conn: Connection, action: str, ds: Dataset, origin: Origin | None) -> int:
    """The change-feed row, in the caller's transaction."""
    added = conn.execute(insert(changes).values(
        action=action, level="workitem", study_uid=_text(ds, "StudyInstanceUID"),
        series_uid="", instance_uid=_text(ds, "SOPInstanceUID"), at=time.time(),
        detail=origin.describe() if origin is not None else ""))
    return inserted_id(added)


# -- search -----------------------------------------------------------------------

def parse_search(params: Iterable[tuple[str, str]], max_limit: int) -> Query:
    """UPS-RS search parameters (PS3.18 8.3.4, 11.9.1.2) → Query, through the
    search QIDO-RS makes (``query.parse.search_query``); ``max_limit`` 0 is
    no cap."""
    return search_query(Level.IMAGE,  # the level is unused for workitems
                        params, defaults=DEFAULT_RETURN_KEYS,
                        searchable=WORKITEM_BY_KEYWORD.__contains__, max_limit=max_limit,
                        not_matchable={_TRANSACTION_UID: "TransactionUID cannot be queried "
                                                         "(PS3.4 Table CC.2.5-3)"},
                        what=" for Workitems")


def _vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def search_conditions(query: Query) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    for c in query.constraints:
        if isinstance(c, Sequence):
            conds.append(_sequence_condition(c))
        else:
            conds.append(attribute_condition(workitems, WORKITEM_BY_KEYWORD[c.keyword], c))
    return conds


def _sequence_condition(c: Sequence) -> ColumnElement[bool]:
    """Item matching through the shared ``query.sql.sequence_exists``."""
    return sequence_exists(workitem_item_attrs, "workitem_fk", c,
                           lambda first, sub: (sub, first.c.workitem_fk == workitems.c.id))


_TRANSACTION_KEY = f"{_TRANSACTION_UID:08X}"


def _public(body: dict[str, Any]) -> dict[str, Any]:
    """A Workitem as it may leave the server: the one place every response
    body passes through.  The Transaction UID (0008,1195) is the claim
    secret of the performer (PS3.4 Table CC.2.5-3 allows it in neither the
    N-GET nor the C-FIND column; DESIGN.md §7), so it never appears, even
    empty, even when a request names it as a return key."""
    body.pop(_TRANSACTION_KEY, None)
    return body


def _project(body: dict[str, Any], query: Query) -> dict[str, Any]:
    """A search result: the return keys (empty when the Workitem has no
    value), or everything for includefield=all."""
    if query.include_all:
        return body
    out: dict[str, Any] = {}
    for rk in query.return_keys:
        key = f"{rk.tag:08X}"
        if key in body:
            out[key] = body[key]
        elif rk.keyword != "SpecificCharacterSet":
            out[key] = {"vr": _vr(rk.tag)}
    return dict(sorted(out.items()))
