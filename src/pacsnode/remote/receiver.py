"""A short-lived Storage SCP, so a C-MOVE can bring instances to *us*
without a running ``pacsnode serve`` (what DCMTK's ``movescu --port`` does).

The peer must know our AE title → host:port (its modality list); the
receiver listens only while the block runs.  ``pacsnode serve`` remains the
place for a permanent listener that ingests into the archive.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from ..dimse.messages import Command, part10_header
from .peer import MAX_PDU

__all__ = ["storage_scp", "store_handler", "get_store_handler", "nodelay_handler",
           "STORE_REFUSED"]

LOGGER = logging.getLogger(__name__)

#: Storage status for "we could not keep it" (PS3.4 B.2.3, Refused: Out of
#: Resources).
STORE_REFUSED = 0xA700


def nodelay_handler(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: turn Nagle off on the accepted socket (each
    small PDU would otherwise wait ~40 ms for the peer's delayed ACK)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - e.g. a non-TCP transport
            LOGGER.debug("could not set TCP_NODELAY on %s", sock)


def store_handler(event: evt.Event, sink: Callable[[Dataset], int | None],
                  errors: list[str]) -> int:
    """EVT_C_STORE handler (for a C-GET association or a Storage SCP): hand
    the instance, a Dataset with ``file_meta``, to ``sink``, which may return
    a status (see ``_kept``)."""
    def received() -> Dataset:
        ds = event.dataset
        ds.file_meta = event.file_meta
        return ds

    return _kept(str(getattr(event.request, "AffectedSOPInstanceUID", "")), received, sink,
                 errors)


def get_store_handler(sink: Callable[[Dataset], int | None],
                      errors: list[str]) -> Callable[[Command, str, bytes], int]:
    """The C-STORE handler of a C-GET association (``dimse.client``): the
    received data set, with its ``file_meta``, to ``sink`` — as
    :func:`store_handler` does for pynetdicom's events."""
    def handle(command: Command, transfer_syntax: str, data: bytes) -> int:
        uid = command.affected_sop_instance

        def received() -> Dataset:
            head = part10_header(command.affected_sop_class, uid, transfer_syntax)
            return dcmread(BytesIO(head + data))

        return _kept(uid, received, sink, errors)

    return handle


def _kept(uid: str, received: Callable[[], Dataset], sink: Callable[[Dataset], int | None],
          errors: list[str]) -> int:
    """The status of the instance ``received`` returns once handed to
    ``sink``: the sink's, or success when it returns None.  An exception,
    reading or keeping it, becomes a failure status for that instance (the
    transfer goes on) and a line in ``errors``."""
    try:
        status = sink(received())
    except Exception as exc:  # noqa: BLE001 - reported, and the sender is told
        LOGGER.exception("could not keep instance %s", uid)
        errors.append(f"{uid}: {exc}")
        return STORE_REFUSED
    return 0x0000 if status is None else int(status)


@contextmanager
def storage_scp(aet: str, port: int, on_store: Callable[[Dataset], int | None], *,
                host: str = "0.0.0.0") -> Iterator[list[str]]:
    """Listen on ``host:port`` as ``aet`` for C-STOREs while the block runs,
    handing each instance to ``on_store`` (see :func:`store_handler`); the
    block gets the list of errors ``on_store`` raised.

    Every storage SOP class is accepted in every transfer syntax pynetdicom
    knows, so instances arrive as the sender has them.
    """
    errors: list[str] = []
    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = MAX_PDU
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    handlers: list[Any] = [(evt.EVT_C_STORE, store_handler, [on_store, errors]),
                           (evt.EVT_CONN_OPEN, nodelay_handler)]
    try:
        server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port} for C-STORE: {exc}") from exc
    assert server is not None  # block=False always returns the server
    try:
        yield errors
    finally:
        server.shutdown()
