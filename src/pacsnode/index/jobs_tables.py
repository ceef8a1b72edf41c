"""Index tables of the gateway's retrieve jobs (``pacsnode.remote.jobs``).

A job lives in the same database as the archive so that every ``pacsnode
serve`` sharing that database sees it, and any of them may run it: a worker
claims a pending job with ``UPDATE jobs SET state='running', owner=… WHERE
id=… AND state='pending'`` (one winner, on SQLite and PostgreSQL alike) and
keeps a lease (``lease_until``) that it renews while the job runs.  A job
whose lease ran out, or whose owner died on this host, is failed with a
reason by the next process that looks (see ``pacsnode.remote.jobs``).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text

from .metadata import metadata

__all__ = ["jobs", "JOB_STATES", "TERMINAL_STATES"]

#: Every state a job can be in; the last three are final.
JOB_STATES = ("pending", "running", "succeeded", "failed", "canceled")
TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled"})

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False, default="retrieve"),
    # What to do: retrieve `level` (STUDY|SERIES) from remote node `node`
    # by `method` (move|get) into our archive.
    Column("node", String(64), nullable=False),
    Column("level", String(16), nullable=False),
    Column("study_uid", String(64), nullable=False, default=""),
    Column("series_uid", String(64), nullable=False, default=""),
    Column("method", String(8), nullable=False),
    # How, resolved when the job is made so that any process of a cluster
    # runs it alike (§12): the peer's AE title and address, and the AE title
    # the peer is asked to C-MOVE to (also our calling AE title).  Empty in
    # rows of earlier releases: those resolve `node` when they run.
    Column("peer_aet", String(16), nullable=False, default=""),
    Column("peer_host", Text, nullable=False, default=""),
    Column("peer_port", Integer, nullable=False, default=0),
    Column("destination", String(16), nullable=False, default=""),
    # Where it stands: pending|running|succeeded|failed|canceled, and the
    # peer's sub-operation counts from its latest C-MOVE/C-GET response.
    Column("state", String(16), nullable=False, default="pending"),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("warning", Integer, nullable=False, default=0),
    Column("remaining", Integer, nullable=True),
    Column("error", Text, nullable=False, default=""),
    # Times (seconds since the epoch).
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("started", Float, nullable=True),
    Column("finished", Float, nullable=True),
    # Who runs it: "<host>:<pid>:<nonce>" of the serve process, until when
    # its claim holds, and whether someone asked to cancel it.
    Column("owner", String(160), nullable=False, default=""),
    Column("lease_until", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    # Who asked (REST client address, "pfdcm", …), for people.
    Column("requested_by", Text, nullable=False, default=""),
    # Route jobs (kind "route", pacsnode.routes): the route's name, the
    # action's details as JSON (what to send where, the placeholders of a
    # command, the series it covers), attempts made and when the next is due.
    Column("route", String(64), nullable=False, default=""),
    Column("payload", Text, nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_try", Float, nullable=True),
    Index("ix_jobs_state_created", "state", "created"),
    Index("ix_jobs_created", "created"),
    Index("ix_jobs_series", "series_uid"),
)
