"""SQLAlchemy Core schema of the index, built from the attribute catalogue.

Every catalogue attribute becomes a column on its level's table.  Some kinds
get helper columns used only for matching:

* ``pn``: ``<col>_ci`` holds the name upper-cased (case-insensitive matching,
  documented in CONFORMANCE.md) and ``<col>_fz`` holds its components,
  upper-cased and stripped of accents, space separated with a leading space
  (QIDO fuzzy matching: a prefix of any component).
* ``time`` / ``datetime``: ``<col>_n`` holds the value normalised to a fixed
  width so that ranges compare as strings.

Text is stored decoded (Specific Character Set applied), never as raw bytes.
Absent string attributes are stored as ``''`` so unique constraints behave the
same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (BigInteger, Column, Float, ForeignKey, Index, Integer, MetaData,
                        String, Table, Text, UniqueConstraint)

from ..dicom.catalogue import ATTRIBUTES, Attribute, Level

metadata = MetaData()

_ID = BigInteger().with_variant(Integer(), "sqlite")


def columns_for(attr: Attribute) -> list[Column]:
    name = attr.column
    kind = attr.kind
    if kind == "int":
        return [Column(name, Integer, nullable=True, index=_indexed(attr))]
    if kind == "pn":
        return [Column(name, Text, nullable=False, default=""),
                Column(name + "_ci", Text, nullable=False, default="", index=_indexed(attr)),
                Column(name + "_fz", Text, nullable=False, default="")]
    if kind in ("time", "datetime"):
        return [Column(name, String(64), nullable=False, default=""),
                Column(name + "_n", String(32), nullable=False, default="",
                       index=_indexed(attr))]
    length = 64 if kind in ("uid", "date") else None
    col_type = String(length) if length else Text
    return [Column(name, col_type, nullable=False, default="", index=_indexed(attr))]


#: Long free-text attributes nobody range-scans; a b-tree on them only costs.
_UNINDEXED = frozenset({"PatientComments", "ImageComments", "AdmittingDiagnosesDescription"})
#: Instance attributes with a b-tree of their own.  An instance-level query is
#: nearly always within a study or series (whose keys use their indexes), and
#: every b-tree on ``instances`` costs each stored instance its page writes:
#: with all of them, the commit of one small instance took 3× as long.
_IMAGE_INDEXED = frozenset({"SOPClassUID"})


def _indexed(attr: Attribute) -> bool:
    if attr.unique or attr.keyword in _UNINDEXED:
        return False
    return attr.level is not Level.IMAGE or attr.keyword in _IMAGE_INDEXED


def _level_columns(level: Level) -> list[Column]:
    cols: list[Column] = []
    for attr in ATTRIBUTES:
        if attr.level == level:
            cols.extend(columns_for(attr))
    return cols


patients = Table(
    "patients", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    *_level_columns(Level.PATIENT),
    UniqueConstraint("patientid", "issuerofpatientid", name="uq_patient"),
)

studies = Table(
    "studies", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("patient_fk", _ID, ForeignKey("patients.id"), nullable=False, index=True),
    *_level_columns(Level.STUDY),
    UniqueConstraint("studyinstanceuid", name="uq_study"),
)

series = Table(
    "series", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("study_fk", _ID, ForeignKey("studies.id"), nullable=False, index=True),
    *_level_columns(Level.SERIES),
    UniqueConstraint("seriesinstanceuid", name="uq_series"),
)

instances = Table(
    "instances", metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("series_fk", _ID, ForeignKey("series.id"), nullable=False, index=True),
    Column("study_fk", _ID, ForeignKey("studies.id"), nullable=False, index=True),
    *_level_columns(Level.IMAGE),
    # Storage facts.
    Column("transfer_syntax", String(64), nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("stored_at", Float, nullable=False),
    Column("origin", Text, nullable=False, default=""),
    # The header as DICOM JSON (PS3.18 F), bulk data left out.
    Column("meta_json", Text, nullable=False),
    UniqueConstraint("sopinstanceuid", name="uq_instance"),
)

#: String attributes of the items of catalogued sequences, for sequence
#: matching (PS3.4 C.2.2.2.6) in SQL.
item_attrs = Table(
    "item_attrs", metadata,
    Column("instance_fk", _ID, ForeignKey("instances.id", ondelete="CASCADE"),
           nullable=False),
    Column("seq", String(64), nullable=False),
    Column("item", Integer, nullable=False),
    Column("keyword", String(64), nullable=False),
    Column("value", Text, nullable=False),
    Column("value_ci", Text, nullable=False),
    Index("ix_item_attrs_lookup", "seq", "keyword", "value"),
    Index("ix_item_attrs_instance", "instance_fk"),
)

#: The change feed: every store and delete, in commit order.
changes = Table(
    "changes", metadata,
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("action", String(32), nullable=False),
    Column("level", String(16), nullable=False),
    Column("study_uid", String(64), nullable=False, default=""),
    Column("series_uid", String(64), nullable=False, default=""),
    Column("instance_uid", String(64), nullable=False, default=""),
    Column("at", Float, nullable=False),
    Column("detail", Text, nullable=False, default=""),
)

#: Remote DICOM nodes added at run time (those from the TOML are merged in).
nodes = Table(
    "nodes", metadata,
    Column("name", String(64), primary_key=True),
    Column("aet", String(16), nullable=False),
    Column("host", Text, nullable=False),
    Column("port", Integer, nullable=False),
)

LEVEL_TABLES: dict[Level, Table] = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}

# Feature tables live beside their features but in the same database and
# metadata; importing them here makes `create_all` see every table.
from . import (  # noqa: E402,F401
    access_tables, automation_tables, classes_tables, cluster_tables, jobs_tables, workitems)
