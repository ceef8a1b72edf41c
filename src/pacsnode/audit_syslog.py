"""Audit events to a syslog collector: RFC 5424 messages (RFC 5426 over
UDP, RFC 6587 octet-counted frames over TCP) whose MSG is the PS3.15 A.5.1
audit message XML (:mod:`pacsnode.audit_xml`), as PS3.15 A.6 asks.

Sent by the audit trail's writer thread, never by a request; a collector
that is down costs a log line, not a request.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .audit_xml import audit_message_xml

if TYPE_CHECKING:  # pragma: no cover
    from .audit import AuditEvent

__all__ = ["SyslogSender", "syslog_message"]

log = logging.getLogger("pacsnode.audit")

#: facility 10 (security/authorization messages, "authpriv")
FACILITY = 10
#: UDP datagrams larger than this are not sent whole by every network.
UDP_MAX = 65000


def syslog_message(event: "AuditEvent", source_id: str) -> bytes:
    severity = 5 if event.outcome == 0 else 4  # notice / warning
    stamp = datetime.fromtimestamp(event.time, timezone.utc).isoformat(timespec="milliseconds")
    header = (f"<{FACILITY * 8 + severity}>1 {stamp.replace('+00:00', 'Z')} "
              f"{socket.gethostname() or '-'} pacsnode {os.getpid()} DICOM+RFC3881 - ")
    return header.encode("ascii", "replace") + b"\xef\xbb\xbf" + \
        audit_message_xml(event, source_id)


class SyslogSender:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
            raise ValueError(f"audit_syslog {url!r}: udp://host:port or tcp://host:port")
        self.scheme = parts.scheme
        self.address = (parts.hostname, parts.port)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def send(self, event: "AuditEvent", source_id: str) -> None:
        message = syslog_message(event, source_id)
        with self._lock:
            try:
                if self.scheme == "udp":
                    if len(message) > UDP_MAX:
                        log.warning("audit event %s too large for UDP syslog (%d bytes)",
                                    event.event, len(message))
                        return
                    self._socket().sendto(message, self.address)
                else:
                    frame = str(len(message)).encode() + b" " + message
                    try:
                        self._socket().sendall(frame)
                    except OSError:  # the collector restarted: one new connection
                        self._drop()
                        self._socket().sendall(frame)
            except OSError as exc:
                self._drop()
                log.warning("audit syslog %s://%s:%s: %s", self.scheme, *self.address, exc)

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if self.scheme == "udp":
                family = socket.getaddrinfo(*self.address, type=socket.SOCK_DGRAM)[0][0]
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
            else:
                self._sock = socket.create_connection(self.address, timeout=5)
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._drop()
