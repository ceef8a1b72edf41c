"""Index tables of access control (``pacsnode.access``) and the audit trail
(``pacsnode.audit``), DESIGN.md §8.

``api_tokens`` holds one row per API token made by ``pacsnode token create``:
only the SHA-256 of the token, never the token.  Every HTTP request with a
token looks its hash up here (one query on a unique index), so a revocation
by any process on the same database counts from the next request on.

``audit`` is append-only: rows are inserted, never updated or deleted by
pacsnode (no route or command removes them).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, String, Table, Text

from .metadata import ID, metadata

__all__ = ["api_tokens", "audit"]

api_tokens = Table(
    "api_tokens", metadata,
    Column("name", String(64), primary_key=True),
    #: Hex SHA-256 of the token (see access/tokens.py for why not a slow KDF).
    Column("token_hash", String(64), nullable=False, unique=True),
    #: reader, writer, editor, operator or admin.
    Column("role", String(16), nullable=False),
    #: Epoch seconds.
    Column("created", Float, nullable=False),
    #: Epoch seconds after which the token is refused; NULL: never.
    Column("expires", Float, nullable=True),
    #: Epoch seconds of the revocation; NULL: not revoked.
    Column("revoked", Float, nullable=True),
)

audit = Table(
    "audit", metadata,
    Column("seq", ID, primary_key=True, autoincrement=True),
    #: Epoch seconds.
    Column("time", Float, nullable=False),
    #: The PS3.15 A.5 event name ("Query", "DICOM Instances Accessed", …).
    Column("event", String(48), nullable=False),
    #: EventOutcomeIndicator: 0 success, 4 minor, 8 serious, 12 major failure.
    Column("outcome", Integer, nullable=False, default=0),
    #: Token name, OIDC subject or calling AE title ("" when unknown).
    Column("user", Text, nullable=False, default=""),
    Column("address", Text, nullable=False, default=""),
    #: JSON arrays of Study Instance UIDs and Patient IDs involved.
    Column("studies", Text, nullable=False, default="[]"),
    Column("patients", Text, nullable=False, default="[]"),
    #: JSON object: what else the event says (query keys, route, reason …).
    Column("detail", Text, nullable=False, default="{}"),
)


