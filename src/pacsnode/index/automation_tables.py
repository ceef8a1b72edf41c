"""Index table of the arrival automation (``pacsnode.automation``).

One row per study or series that has received instances while a stable
trigger is configured.  Each arrival bumps ``generation`` and clears
``fired``; a poller claims a row once it has been quiet long enough
(``UPDATE … WHERE generation = ? AND fired = false``), so with several
``serve`` processes on one database exactly one of them fires it, and a
restart finds the pending rows where it left them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, String, Table, Text

from .metadata import metadata

__all__ = ["automation_pending"]

automation_pending = Table(
    "automation_pending", metadata,
    #: "study" or "series".
    Column("kind", String(8), primary_key=True),
    #: Study Instance UID (kind "study") or Series Instance UID (kind "series").
    Column("uid", String(64), primary_key=True),
    #: The study the row belongs to (equal to ``uid`` for kind "study").
    Column("study_uid", String(64), nullable=False),
    Column("patient_id", Text, nullable=False, default=""),
    #: Calling AE title of the association that brought the last instance
    #: ("" when it came by STOW-RS or import).
    Column("calling_aet", String(64), nullable=False, default=""),
    Column("first_arrival", Float, nullable=False),
    #: Wall-clock time (epoch seconds) of the last arrival recorded.
    Column("last_arrival", Float, nullable=False),
    #: Bumped by every recorded arrival; a claim names the generation it fires.
    Column("generation", BigInteger, nullable=False, default=1),
    #: True once a process has claimed the current generation.
    Column("fired", Boolean, nullable=False, default=False),
    #: True once the claimed generation's command and webhooks have finished.
    Column("done", Boolean, nullable=False, default=False),
    #: Which process holds the claim ("host:pid:nonce") and when it last said
    #: so; a claim not renewed for a lease period is taken over.
    Column("claimed_by", Text, nullable=True),
    Column("claimed_at", Float, nullable=True),
    Index("ix_automation_pending_due", "kind", "fired", "last_arrival"),
    Index("ix_automation_pending_study", "study_uid"),
)
