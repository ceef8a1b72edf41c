"""What can go wrong when we talk to another DICOM node, as exception types.

The classes are defined beside the requestor that raises them
(:mod:`pacsnode.dimse.errors`); this is the name callers import.  All derive
from :class:`RemoteError`; ``except RemoteError`` catches every network
failure, and every message names the peer (``ORTHANC@127.0.0.1:4242``).
"""

from __future__ import annotations

from ..dimse.errors import (AssociationAborted, AssociationRejected, ConnectionFailed,
                            NoAcceptedContext, RemoteError, status_text)

__all__ = ["RemoteError", "ConnectionFailed", "AssociationRejected", "AssociationAborted",
           "NoAcceptedContext", "status_text"]
