"""Index table of the ``serve`` processes sharing one database (``pacsnode.cluster``).

One row per running process, refreshed by its heartbeat: who it is (host,
pid, AE title, ports) and the shared part of its configuration, which every
process joining later must match (DESIGN §12).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, String, Table, Text

from .metadata import metadata

__all__ = ["cluster_members"]

cluster_members = Table(
    "cluster_members", metadata,
    #: "<host>:<pid>:<nonce>", as the owners of jobs and triggers are named.
    Column("id", String(160), primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("ae_title", String(16), nullable=False),
    Column("dicom_port", Integer, nullable=False),
    Column("http_port", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
    #: ``Settings.shared_view()`` as JSON (sorted keys).
    Column("config", Text, nullable=False),
)
