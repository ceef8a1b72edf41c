"""Index tables of the UPS worklist (PS3.4 Annex CC), on the shared `metadata`.

``workitems`` holds one row per Workitem (unique SOP Instance UID): the
Transaction UID that locks it while IN PROGRESS (a column of its own, never
part of the JSON, so no response can leak it), a version counter for
optimistic concurrency, the searchable attributes (Procedure Step State among
them) in columns built exactly as the instance index builds them
(``<col>_ci`` / ``<col>_fz`` for names, ``<col>_n`` for date-times, see
``index.schema``), and the whole Workitem as DICOM JSON.

``workitem_item_attrs`` holds the string attributes of the items of every
top-level sequence, for sequence matching (PS3.4 C.2.2.2.6) in SQL, like
``index.schema.item_attrs`` does for instances.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (Column, Float, ForeignKey, Index, Integer, String, Table, Text,
                        UniqueConstraint)

from ..dicom.catalogue import Attribute, Level
from .metadata import ID, columns_for, metadata

__all__ = ["WORKITEM_ATTRIBUTES", "WORKITEM_BY_KEYWORD", "workitems", "workitem_item_attrs"]


def _w(keyword: str) -> Attribute:
    from pydicom.datadict import dictionary_VR
    # The Level is irrelevant for workitems; the instance-level Attribute
    # gives us the column naming and matching kind of the shared query engine.
    return Attribute(keyword, Level.IMAGE, dictionary_VR(keyword))


#: Top-level Workitem attributes held in indexed columns: the Matching Keys
#: (R and O) of PS3.4 Table CC.2.5-3 that are not sequences.  Adding a
#: searchable attribute is one line (and a new database, or a migration).
WORKITEM_ATTRIBUTES: tuple[Attribute, ...] = (
    _w("SOPInstanceUID"),
    _w("SOPClassUID"),
    _w("ProcedureStepState"),
    _w("ScheduledProcedureStepPriority"),
    _w("ScheduledProcedureStepModificationDateTime"),
    _w("ProcedureStepLabel"),
    _w("WorklistLabel"),
    _w("ScheduledProcedureStepStartDateTime"),
    _w("ExpectedCompletionDateTime"),
    _w("ScheduledProcedureStepExpirationDateTime"),
    _w("InputReadinessState"),
    _w("StudyInstanceUID"),
    _w("PatientName"),
    _w("PatientID"),
    _w("IssuerOfPatientID"),
    _w("PatientBirthDate"),
    _w("PatientSex"),
    _w("AdmissionID"),
)

WORKITEM_BY_KEYWORD: dict[str, Attribute] = {a.keyword: a for a in WORKITEM_ATTRIBUTES}


def _attribute_columns() -> list[Column[Any]]:
    cols: list[Column[Any]] = []
    for attr in WORKITEM_ATTRIBUTES:
        cols.extend(columns_for(attr))
    return cols


workitems = Table(
    "workitems", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    # The locking Transaction UID (PS3.4 CC.1.1); "" while SCHEDULED.
    Column("transaction_uid", String(64), nullable=False, default=""),
    # Bumped by every write; writes are conditional on it (optimistic locking).
    Column("version", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    *_attribute_columns(),
    # The Workitem as DICOM JSON (PS3.18 F.2), without the Transaction UID.
    Column("meta_json", Text, nullable=False),
    UniqueConstraint("sopinstanceuid", name="uq_workitem"),
)

workitem_item_attrs = Table(
    "workitem_item_attrs", metadata,
    Column("workitem_fk", ID, ForeignKey("workitems.id", ondelete="CASCADE"), nullable=False),
    Column("seq", String(64), nullable=False),
    Column("item", Integer, nullable=False),
    Column("keyword", String(64), nullable=False),
    Column("value", Text, nullable=False),
    Column("value_ci", Text, nullable=False),
    Index("ix_workitem_item_attrs_lookup", "seq", "keyword", "value"),
    Index("ix_workitem_item_attrs_owner", "workitem_fk"),
)
