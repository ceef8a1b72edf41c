"""Index tables of series classification (``pacsnode.classes``).

``series_classification`` records that a series was classified, when, and
its classes in rule order (JSON list, as the API answers them);
``series_classes`` holds one row per (series, class) so that
``GET /api/v1/series?class=T1`` is an indexed lookup.  Both are keyed by the
Series Instance UID rather than by the ``series`` row, so that a series
deleted and sent again keeps no stale foreign key: queries join on the UID,
and the next classification of that series replaces its rows.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, String, Table, Text

from .metadata import metadata

__all__ = ["series_classification", "series_classes"]

series_classification = Table(
    "series_classification", metadata,
    Column("series_uid", String(64), primary_key=True),
    #: The classes as a JSON list, in rule order ("[]": classified, none fit).
    Column("classes", Text, nullable=False, default="[]"),
    #: How many instances the series had when it was classified.
    Column("instances", Integer, nullable=False, default=0),
    Column("classified_at", Float, nullable=False),
)

series_classes = Table(
    "series_classes", metadata,
    Column("series_uid", String(64), primary_key=True),
    #: The class name folded to lower case: what ``?class=`` and ``match`` compare.
    Column("name_ci", String(64), primary_key=True),
    Column("name", String(64), nullable=False),
    Index("ix_series_classes_name", "name_ci"),
)
