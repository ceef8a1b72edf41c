"""The one SQLAlchemy ``MetaData`` every table of the index registers on,
and the column builders the tables share.

The tables live beside what they serve (``schema.py`` for the archive,
``workitems.py``, ``jobs_tables.py``, ``automation_tables.py``,
``cluster_tables.py``, ``access_tables.py``); each imports its ``metadata``
from here, and ``schema.py`` imports them all so that ``create_all`` sees
every table.

A catalogue attribute becomes one or more columns (``columns_for``); some
kinds get helper columns used only for matching:

* ``pn``: ``<col>_ci`` holds the name upper-cased (case-insensitive matching,
  documented in CONFORMANCE.md) and ``<col>_fz`` holds its components,
  upper-cased and stripped of accents, space separated with a leading space
  (QIDO fuzzy matching: a prefix of any component).
* ``time`` / ``datetime``: ``<col>_n`` holds the value normalised to a fixed
  width so that ranges compare as strings.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Text

from ..dicom.catalogue import Attribute, Level

__all__ = ["ID", "columns_for", "metadata"]

metadata = MetaData()

#: The type of row ids and the foreign keys to them: 64 bits on PostgreSQL,
#: SQLite's INTEGER (its rowid alias) there.
ID = BigInteger().with_variant(Integer(), "sqlite")


def columns_for(attr: Attribute) -> list[Column[Any]]:
    """The columns that hold ``attr`` (with its helper columns)."""
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
#: every b-tree on ``instances`` costs each stored instance its page writes
#: (the C-STORE rows of bench/RESULTS.md).
_IMAGE_INDEXED = frozenset({"SOPClassUID"})


def _indexed(attr: Attribute) -> bool:
    if attr.unique or attr.keyword in _UNINDEXED:
        return False
    return attr.level is not Level.IMAGE or attr.keyword in _IMAGE_INDEXED
