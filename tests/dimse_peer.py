"""A test's DIMSE peer, for what DCMTK's tools will not do: PDUs made by
hand on a bare socket (``associate_rq``, ``established``, ``pdv``,
``p_data``, ``recv_pdu``), a C-STORE of a file's data set bytes as they
are (``c_store_raw``), how an association is rejected (``rejection``),
associations held open up to a limit (``held_to_the_limit``), and whether
the node still answers (``echo_ok``)."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (CTImageStorage, StudyRootQueryRetrieveInformationModelGet,
                                  Verification)

from pacsnode.dimse.messages import encode_command

__all__ = ["VERIFICATION", "associate_rq", "established", "recv_pdu", "closed", "pdv",
           "p_data", "echo_command", "c_store_raw", "c_get", "Got", "echo_ok", "rejection",
           "held_to_the_limit"]

VERIFICATION = "1.2.840.10008.1.1"


# -- PDUs by hand

def associate_rq(calling: str = "RAWSCU", called: str = "PACSNODE",
                 contexts: dict[int, str] | None = None,
                 transfer_syntax: str = ImplicitVRLittleEndian,
                 app_context: str = "1.2.840.10008.3.1.1.1", version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` (id → abstract syntax;
    Verification on context 1 unless given), each in ``transfer_syntax``,
    with a maximum PDU length of 16 KiB."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = app_context
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    proposed = []
    for context_id, abstract in (contexts or {1: VERIFICATION}).items():
        cx = build_context(abstract, [transfer_syntax])
        cx.context_id = context_id
        proposed.append(cx)
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    pdu.protocol_version = version
    return bytes(pdu.encode())


def recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(type, body) of the next PDU; (0, b"") when the server closed."""
    head = b""
    while len(head) < 6:
        part = sock.recv(6 - len(head))
        if not part:
            return 0, b""
        head += part
    length = struct.unpack(">I", head[2:6])[0]
    body = b""
    while len(body) < length:
        part = sock.recv(length - len(body))
        if not part:
            break
        body += part
    return head[0], body


def established(node: Any, timeout: float = 5, **rq: Any) -> socket.socket:
    """A socket on which ``node`` accepted an association (the
    A-ASSOCIATE-RQ of ``associate_rq(**rq)``)."""
    sock = socket.create_connection(("127.0.0.1", node.dicom_port), timeout=timeout)
    sock.sendall(associate_rq(**rq))
    kind, _ = recv_pdu(sock)
    assert kind == 0x02  # A-ASSOCIATE-AC
    return sock


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def pdv(context: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context, control) + data


def p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def echo_command(message_id: int = 1) -> bytes:
    return encode_command(field=0x0030, message_id=message_id, affected_sop_class=VERIFICATION,
                          dataset_type=0x0101)


# -- through pynetdicom

def c_store_raw(node: Any, path: Path, transfer_syntax: str, *,
                sop_class: str = CTImageStorage, calling: str = "RAWSCU") -> tuple[int, str]:
    """C-STORE a Part 10 file's data set bytes as they are (pynetdicom's
    chunked send: the command comes from the file meta, the data set is not
    parsed); the status and Error Comment."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
    assert assoc.is_established
    saved, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        rsp = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        assoc.release()
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


@dataclass
class Got:
    """What a C-GET brought: the status of every response, and each C-STORE
    sub-operation's data set as sent (``raw``) and decoded."""

    statuses: list[int] = field(default_factory=list)
    final: Dataset | None = None
    raw: list[bytes] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)


def c_get(node: Any, study: str, series: str | None = None, *,
          syntaxes: list[str] | None = None, sop_class: str = CTImageStorage,
          calling: str = "GETTER", handlers: list[Any] | None = None,
          **associate: Any) -> Got:
    """A C-GET (Study Root) of a study, or one of its series, by a
    pynetdicom SCU taking the SCP role for ``sop_class`` in ``syntaxes``
    (pynetdicom's default ones unless given); ``handlers`` and
    ``associate`` (``max_pdu`` …) go to its association."""
    got = Got()

    def on_store(event: Any) -> int:
        got.raw.append(event.request.DataSet.getvalue())
        got.datasets.append(event.dataset)
        return 0x0000

    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet,
                         ext_neg=[build_role(sop_class, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store), *(handlers or [])],
                         **associate)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES" if series else "STUDY"
    query.StudyInstanceUID = study
    if series:
        query.SeriesInstanceUID = series
    try:
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            got.statuses.append(int(status.Status))
            got.final = status
    finally:
        assoc.release()
    return got


def echo_ok(server: Any) -> bool:
    ae = AE(ae_title="PROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    try:
        return bool(assoc.is_established and assoc.send_c_echo().Status == 0)
    finally:
        if assoc.is_established:
            assoc.release()


def rejection(node: Any, calling: str, abstract: str = Verification) -> tuple[int, int, int]:
    """The A-ASSOCIATE-RJ's (result, source, reason) when ``calling``
    proposes ``abstract`` to ``node`` (which must reject it)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(abstract)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def held_to_the_limit(node: Any, calling: str, count: int, limit: str) -> list[Association]:
    """``count`` idle associations from ``calling``, all accepted; the next
    one is rejected transient, presentation layer, local limit exceeded
    (PS3.8 Table 9-21), and the node's log names ``limit`` (e.g.
    ``max_associations 3``).  The held ones, for the caller to release."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet) for _ in range(count)]
    assert all(a.is_established for a in held)
    assert rejection(node, calling) == (2, 3, 2)
    assert f"local limit exceeded ({limit})" in node.log()
    return held
