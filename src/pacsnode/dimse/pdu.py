"""The DICOM upper layer's PDUs (PS3.8 9.3): their types and names, the
small ones we write (A-ABORT, A-ASSOCIATE-RJ, A-RELEASE-RP), the user
information we send in A-ASSOCIATE-AC, the listening socket, and
the limits and timers of reading them.

An association's reading and writing of PDUs is ``association.py``;
negotiating one from an A-ASSOCIATE-RQ is ``negotiation.py``.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from ..dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["ProtocolError", "a_abort", "a_associate_rj", "set_nodelay", "listen_socket",
           "our_user_information", "user_information", "PDU_NAMES", "A_RELEASE_RQ", "A_RELEASE_RP",
           "ABORT_SOURCES", "ABORT_REASONS", "APPLICATION_CONTEXT", "MAX_PDU_RECEIVE",
           "MAX_ASSOCIATE_RQ", "CHUNK", "ARTIM",
           "LINGER", "REJECT_DELAY"]

#: The DICOM Application Context Name (PS3.7 A.2.1).
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Our Maximum Length Received: 0, no limit (PS3.8 D.1).  Fewer, larger
#: P-DATA-TF PDUs; the reader streams PDVs, so a large PDU is never held
#: whole in memory.
MAX_PDU_RECEIVE = 0
#: Longest A-ASSOCIATE-RQ we read (128 contexts of many syntaxes fit in 64 KiB).
MAX_ASSOCIATE_RQ = 1 << 20
#: Bytes read from the socket buffer per file write.
CHUNK = 1 << 20
#: Seconds we wait for the A-ASSOCIATE-RQ (the ARTIM timer) at most.
ARTIM = 30.0
#: Seconds we wait for the peer to close after our last PDU.
LINGER = 2.0
#: Seconds before an A-ASSOCIATE-RJ goes out (see Association._reject).
REJECT_DELAY = 0.05

PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ",
             0x04: "P-DATA-TF", 0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP",
             0x07: "A-ABORT"}
A_RELEASE_RQ = bytes.fromhex("05000000000400000000")
A_RELEASE_RP = bytes.fromhex("06000000000400000000")
ABORT_SOURCES = {0: "service user", 1: "reserved", 2: "service provider"}
ABORT_REASONS = {0: "not specified", 1: "unrecognized PDU", 2: "unexpected PDU",
                 4: "unrecognized PDU parameter", 5: "unexpected PDU parameter",
                 6: "invalid PDU parameter value"}


class ProtocolError(Exception):
    """The peer broke PS3.8/PS3.7: abort with this reason (PS3.8 9.3.8)."""

    def __init__(self, message: str, reason: int = 6) -> None:
        super().__init__(message)
        self.reason = reason


def user_information(max_pdu: int) -> list[Any]:
    """Maximum length received, implementation class UID and version name
    (PS3.7 D.3.3): the user information of our A-ASSOCIATE-AC, as
    pynetdicom items (imported here: the requestor writes its own, in
    ``acse.py``, without pynetdicom)."""
    from pynetdicom.pdu_primitives import (ImplementationClassUIDNotification,
                                           ImplementationVersionNameNotification,
                                           MaximumLengthNotification)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return [max_length, class_uid, version]


def our_user_information() -> list[Any]:
    """The user information items we send in A-ASSOCIATE-AC."""
    return user_information(MAX_PDU_RECEIVE)


def a_abort(source: int, reason: int) -> bytes:
    return struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, source, reason)


def a_associate_rj(result: int, source: int, reason: int) -> bytes:
    return struct.pack(">BBIBBBB", 0x03, 0, 4, 0, result, source, reason)


def set_nodelay(sock: Any) -> None:
    """Nagle's algorithm plus delayed ACKs costs ~40 ms per small exchange."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket with TCP_NODELAY.

    Worker processes share it (inherited; see AssociationServer), so a port
    somebody else holds fails here, once, with EADDRINUSE."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        set_nodelay(sock)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
