"""SQLAlchemy Core schema of the index, built from the attribute catalogue.

Every catalogue attribute becomes a column on its level's table, with the
helper columns used for matching (``index.metadata.columns_for``).

Text is stored decoded (Specific Character Set applied), never as raw bytes.
Absent string attributes are stored as ``''`` so unique constraints behave the
same on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, String,
                        Table, Text, UniqueConstraint)

from ..dicom.catalogue import ATTRIBUTES, Level
from .metadata import ID, columns_for
from .metadata import metadata as metadata  # the tables below register on it


def _level_columns(level: Level) -> list[Column[Any]]:
    cols: list[Column[Any]] = []
    for attr in ATTRIBUTES:
        if attr.level == level:
            cols.extend(columns_for(attr))
    return cols


patients = Table(
    "patients", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    *_level_columns(Level.PATIENT),
    UniqueConstraint("patientid", "issuerofpatientid", name="uq_patient"),
)

studies = Table(
    "studies", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("patient_fk", ID, ForeignKey("patients.id"), nullable=False, index=True),
    *_level_columns(Level.STUDY),
    UniqueConstraint("studyinstanceuid", name="uq_study"),
)

series = Table(
    "series", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("study_fk", ID, ForeignKey("studies.id"), nullable=False, index=True),
    *_level_columns(Level.SERIES),
    UniqueConstraint("seriesinstanceuid", name="uq_series"),
)

instances = Table(
    "instances", metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("series_fk", ID, ForeignKey("series.id"), nullable=False, index=True),
    Column("study_fk", ID, ForeignKey("studies.id"), nullable=False, index=True),
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
    Column("instance_fk", ID, ForeignKey("instances.id", ondelete="CASCADE"),
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
    Column("seq", ID, primary_key=True, autoincrement=True),
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
    #: JSON array of the DIMSE operations this AE may use when it calls us
    #: (DESIGN.md §8, ``[nodes.NAME] allow``); NULL: all five.
    Column("allow", Text, nullable=True),
    #: Our associations to this node use DICOM TLS (``[nodes.NAME] tls``).
    Column("tls", Boolean, nullable=False, default=False),
)

LEVEL_TABLES: dict[Level, Table] = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}

# Feature tables live beside their features but in the same database and
# metadata (index/metadata.py); importing them here makes `create_all` see
# every table.
from . import (  # noqa: E402,F401
    access_tables, automation_tables, classes_tables, cluster_tables, extra_tables, jobs_tables,
    workitems)
