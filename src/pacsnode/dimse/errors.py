"""What can go wrong when we talk to another DICOM node, as exception types.

They live here, beside the requestor (:mod:`pacsnode.dimse.client`), which
raises them; :mod:`pacsnode.remote.errors` is the name callers import.
Every message names the peer (``ORTHANC@127.0.0.1:4242``) so that a log line
or a CLI error is enough to know which node misbehaved.  All derive from
:class:`RemoteError`; ``except RemoteError`` catches every network failure.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RemoteError", "ConnectionFailed", "AssociationRejected", "AssociationAborted",
           "NoAcceptedContext", "status_text"]


def status_text(status: int, table: dict[int, tuple[str, str]] | None = None) -> str:
    """``0xA801 (Failure: Move destination unknown)`` — a status for humans.

    ``table`` is one of pynetdicom's per-service status tables
    (``pynetdicom.status.QR_MOVE_SERVICE_CLASS_STATUS`` …, PS3.4 Annex C.4).
    """
    from pynetdicom.status import code_to_category  # not with the module: see client.py
    category, meaning = (table or {}).get(status, (code_to_category(status), ""))
    return f"0x{status:04X} ({category}{': ' + meaning if meaning else ''})"


class RemoteError(Exception):
    """A DICOM peer failed us.  ``peer`` is what names it (a ``Peer``, whose
    text is ``AET@host:port``, or that text); ``status`` is the DIMSE status
    when the peer answered with a failure status (PS3.7 Annex C), else
    ``None``."""

    def __init__(self, peer: object, message: str, *, status: int | None = None,
                 result: Any = None) -> None:
        self.peer = str(peer)
        self.status = status
        #: What was achieved before the failure (e.g. a retrieve's Progress).
        self.result = result
        super().__init__(f"{self.peer}: {message}")


class ConnectionFailed(RemoteError):
    """No TCP connection to the peer (refused, unreachable, timed out)."""


class AssociationRejected(RemoteError):
    """The peer answered our A-ASSOCIATE-RQ with A-ASSOCIATE-RJ (PS3.8 9.3.4).

    ``result``/``source``/``reason`` are the standard texts (pynetdicom's
    tables), e.g. "Rejected Permanent", "DUL service-user", "Called AE title
    not recognised".
    """

    def __init__(self, peer: object, result: str, source: str, reason: str) -> None:
        self.result_text, self.source, self.reason = result, source, reason
        super().__init__(peer, f"association rejected ({result}, by {source}): {reason}")


class AssociationAborted(RemoteError):
    """The association was aborted (A-ABORT / A-P-ABORT) or timed out."""


class NoAcceptedContext(RemoteError):
    """The peer accepted the association but none of the presentation
    contexts we need (it does not support that service, SOP class or
    transfer syntax)."""
