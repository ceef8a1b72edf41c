"""Tables of the extra query tags (``pacsnode.index.extra_index``): one row
per value of a declared tag, owned by the study, series or SOP Instance UID
of the tag's level; and how far ``pacsnode reindex`` got."""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text

from .metadata import metadata

__all__ = ["extra_attrs", "reindex_state"]

extra_attrs = Table(
    "extra_attrs", metadata,
    Column("level", Integer, nullable=False),
    Column("owner_uid", String(64), nullable=False),
    Column("key", String(96), nullable=False),
    Column("value", Text, nullable=False),
    Column("value_ci", Text, nullable=False),
    # Matching: key and value lead, so the value drives the search (with the
    # level first, SQLite without statistics walked every row of the level).
    Index("ux_extra_attrs", "key", "value", "level", "owner_uid", unique=True),
    # Return keys: the values of a page's entities.
    Index("ix_extra_attrs_owner", "owner_uid", "key", "level", "value"),
)

#: How far ``pacsnode reindex`` got, per set of declared tags.
reindex_state = Table(
    "extra_reindex", metadata,
    Column("signature", String(32), primary_key=True),
    Column("last_instance", Integer, nullable=False),
    Column("done", Integer, nullable=False, default=0),
)
