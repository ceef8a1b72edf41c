"""The DIMSE service class provider: pynetdicom AE and its handlers.

Handlers only translate: C-STORE → ``Ingestor``, C-FIND → query parser and
``QueryEngine``, C-MOVE/C-GET → ``retrieve``.  An exception inside a handler
becomes a DIMSE failure status (pynetdicom does that), never a dead process.
"""

from __future__ import annotations

import functools
import os
import tempfile
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynetdicom.dimse_messages as _dimse_messages
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import (UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelGet,
                                  PatientRootQueryRetrieveInformationModelMove,
                                  StorageCommitmentPushModel,
                                  StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove, Verification)

from ..errors import PacsnodeError
from ..events import Origin
from ..ingest import Outcome
from ..node import Node
from ..query.parse import query_from_identifier
from ..retrieve import InstanceRef, locate, locate_query

log = logging.getLogger("pacsnode.dimse")

__all__ = ["DimseServer", "TRANSFER_SYNTAXES", "set_nodelay"]

#: Accepted for storage and stored as received (PS3.5 Section 10).
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless,
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
]

QR_MODELS = [PatientRootQueryRetrieveInformationModelFind,
             StudyRootQueryRetrieveInformationModelFind,
             PatientRootQueryRetrieveInformationModelMove,
             StudyRootQueryRetrieveInformationModelMove,
             PatientRootQueryRetrieveInformationModelGet,
             StudyRootQueryRetrieveInformationModelGet]


def set_nodelay(sock: socket.socket | None) -> None:
    """Nagle's algorithm plus delayed ACKs costs ~40 ms per small exchange."""
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _on_conn(event: evt.Event) -> None:
    set_nodelay(getattr(event.assoc.dul.socket, "socket", None))


def _receive_into(folder: Path) -> None:
    """Make pynetdicom's chunked C-STORE receive write its temp files into the
    blob store's incoming folder (same filesystem), so ingest can rename the
    file into place instead of copying it.  pynetdicom has no option for the
    folder; it calls ``NamedTemporaryFile`` from this module."""
    import tempfile
    _dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined]
        tempfile.NamedTemporaryFile, dir=str(folder), prefix="in-", suffix=".part")


class DimseServer:
    def __init__(self, node: Node) -> None:
        self.node = node
        s = node.settings
        _config.STORE_RECV_CHUNKED_DATASET = True  # large instances never sit in memory
        _config.STORE_SEND_CHUNKED_DATASET = True  # files sent as stored, not re-encoded
        _config.LOG_HANDLER_LEVEL = "none"
        _receive_into(node.store.incoming)
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.dimse_timeout
        ae.acse_timeout = 30
        ae.maximum_pdu_size = 0  # unlimited: fewer, larger P-DATA
        ae.require_called_aet = False
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        for cx in AllStoragePresentationContexts:
            # Both roles: a storescu sends to us; a C-GET SCU proposes to be
            # the storage SCP on the same association (role selection).
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES,
                                     scu_role=True, scp_role=True)
        for model in QR_MODELS:
            ae.add_supported_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_supported_context(StorageCommitmentPushModel,
                                 [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                                 scu_role=True, scp_role=True)
        self.ae = ae
        self._server: Any = None
        self.handlers = [
            (evt.EVT_CONN_OPEN, _on_conn),
            (evt.EVT_ACCEPTED, self._log_assoc, ["accepted"]),
            (evt.EVT_RELEASED, self._log_assoc, ["released"]),
            (evt.EVT_ABORTED, self._log_assoc, ["aborted"]),
            (evt.EVT_REJECTED, self._log_assoc, ["rejected"]),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_N_ACTION, self.on_n_action),
        ]

    # -- lifecycle

    def start(self) -> None:
        s = self.node.settings
        self._server = self.ae.start_server((s.host, s.dicom_port), block=False,
                                            evt_handlers=self.handlers)
        set_nodelay(self._server.socket)
        log.info("DIMSE listening on %s:%s as %s", s.host, s.dicom_port, s.ae_title)

    @property
    def listening(self) -> bool:
        return self._server is not None

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let running associations finish for up to ``grace``
        seconds, then abort the rest (nothing unacknowledged is kept; nothing
        acknowledged is lost: ingest is atomic)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # stops the accept loop and closes the listening socket
        deadline = time.monotonic() + grace
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            log.warning("aborting association with %s at shutdown",
                        str(assoc.requestor.ae_title).strip())
            assoc.abort()

    @property
    def active_associations(self) -> int:
        return len(self.ae.active_associations)

    # -- helpers

    @staticmethod
    def _origin(event: evt.Event) -> Origin:
        req = event.assoc.requestor
        return Origin("dimse", peer_aet=str(req.ae_title).strip(), address=f"{req.address}",
                      called_aet=str(event.assoc.acceptor.ae_title).strip())

    def _log_assoc(self, event: evt.Event, what: str) -> None:
        req = event.assoc.requestor
        log.info("association %s: %s from %s:%s", what, str(req.ae_title).strip(),
                 req.address, req.port)

    # -- services

    def on_echo(self, event: evt.Event) -> int:
        log.info("C-ECHO from %s", self._origin(event).describe())
        return 0x0000

    def on_store(self, event: evt.Event) -> int | Dataset:
        origin = self._origin(event)
        req = event.request
        path = Path(event.dataset_path)
        result = self.node.ingestor.ingest_temp(
            path, origin, expected_sop=(str(req.AffectedSOPClassUID),
                                        str(req.AffectedSOPInstanceUID)))
        if result.outcome.ok:
            if result.kept_existing:
                log.info("C-STORE %s: kept the stored copy (duplicate_policy=keep)",
                         result.sop_instance_uid)
            return 0x0000
        status = result.error.dimse_status if result.error else 0xA700
        log.warning("C-STORE %s from %s failed 0x%04X: %s", req.AffectedSOPInstanceUID,
                    origin.describe(), status, result.reason)
        rsp = Dataset()
        rsp.Status = status
        rsp.ErrorComment = result.reason[:64]
        return rsp

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        origin = self._origin(event)
        try:
            identifier = event.identifier
            query = query_from_identifier(identifier)
        except PacsnodeError as exc:
            log.warning("C-FIND from %s refused: %s", origin.describe(), exc.reason)
            yield _failure(exc.dimse_status, exc.reason)
            return
        except Exception as exc:
            log.warning("C-FIND from %s: cannot decode identifier: %s", origin.describe(), exc)
            yield _failure(0xC000, f"cannot decode identifier: {exc}")
            return
        count = 0
        try:
            for match in self.node.engine.iter(query):
                if event.is_cancelled:
                    log.info("C-FIND from %s cancelled after %d matches", origin.describe(),
                             count)
                    yield 0xFE00, None
                    return
                match.QueryRetrieveLevel = identifier.QueryRetrieveLevel
                if "SpecificCharacterSet" in identifier and "SpecificCharacterSet" not in match:
                    match.SpecificCharacterSet = identifier.SpecificCharacterSet
                count += 1
                yield 0xFF00, match
        except PacsnodeError as exc:
            log.warning("C-FIND from %s refused: %s", origin.describe(), exc.reason)
            yield _failure(exc.dimse_status, exc.reason)
            return
        log.info("C-FIND %s from %s: %d matches", query.level.name, origin.describe(), count)

    def _refs_for(self, event: evt.Event) -> list[InstanceRef]:
        query = query_from_identifier(event.identifier)
        return locate_query(self.node, query)

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        origin = self._origin(event)
        dest_aet = str(event.move_destination).strip()
        dest = self.node.node_by_aet(dest_aet)
        if dest is None:
            log.warning("C-MOVE from %s: unknown destination %r", origin.describe(), dest_aet)
            yield None, None
            return
        try:
            refs = self._refs_for(event)
        except PacsnodeError as exc:
            log.warning("C-MOVE from %s refused: %s", origin.describe(), exc.reason)
            yield dest.host, dest.port
            yield _failure(exc.dimse_status, exc.reason)
            return
        contexts = _store_contexts(refs)
        yield dest.host, dest.port, {"contexts": contexts,
                                     "evt_handlers": [(evt.EVT_CONN_OPEN, _on_conn),
                                                      (evt.EVT_ACCEPTED, _on_store_assoc)]}
        yield len(refs)
        log.info("C-MOVE from %s to %s: %d instances", origin.describe(), dest_aet, len(refs))
        yield from self._send(event, refs)

    def on_get(self, event: evt.Event) -> Iterator[Any]:
        origin = self._origin(event)
        try:
            refs = self._refs_for(event)
        except PacsnodeError as exc:
            log.warning("C-GET from %s refused: %s", origin.describe(), exc.reason)
            yield 1
            yield _failure(exc.dimse_status, exc.reason)
            return
        yield len(refs)
        log.info("C-GET from %s: %d instances", origin.describe(), len(refs))
        _send_raw_files(event.assoc)
        yield from self._send(event, refs)

    def _send(self, event: evt.Event, refs: list[InstanceRef]) -> Iterator[Any]:
        for ref in refs:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, StoredInstance(ref)

    def on_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """Storage Commitment Push Model (PS3.4 J.3): answer the N-ACTION, then
        report in an N-EVENT-REPORT which instances the archive durably holds."""
        req = event.request
        if str(req.RequestedSOPClassUID) != StorageCommitmentPushModel:
            return 0x0112, None
        info = event.action_information
        transaction = str(info.get("TransactionUID", ""))
        wanted = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                  for i in info.get("ReferencedSOPSequence", [])]
        origin = self._origin(event)
        log.info("storage commitment %s from %s for %d instances", transaction,
                 origin.describe(), len(wanted))
        report = self._commitment_report(transaction, wanted)
        threading.Thread(target=self._send_commitment, args=(event.assoc, origin, report),
                         daemon=True).start()
        return 0x0000, None

    def _commitment_report(self, transaction: str,
                           wanted: list[tuple[str, str]]) -> tuple[int, Dataset]:
        ok, failed = [], []
        for sop_class, sop_uid in wanted:
            refs = locate(self.node, sop_uid=sop_uid)
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_uid
            if refs and refs[0].path.is_file() and refs[0].sop_class_uid == sop_class:
                ok.append(item)
            else:
                item.FailureReason = 0x0112 if not refs else 0x0119
                failed.append(item)
        ds = Dataset()
        ds.TransactionUID = transaction
        if ok:
            ds.ReferencedSOPSequence = ok
        if failed:
            ds.FailedSOPSequence = failed
        return (1 if not failed else 2), ds

    def _send_commitment(self, assoc: Any, origin: Origin, report: tuple[int, Dataset]) -> None:
        event_type, ds = report
        time.sleep(0.05)  # let the N-ACTION response go first
        if assoc.is_established:
            try:
                rsp = assoc.send_n_event_report(ds, event_type, StorageCommitmentPushModel,
                                                "1.2.840.10008.1.20.1.1")
                if rsp and getattr(rsp, "Status", None) == 0:
                    return
            except Exception as exc:
                log.info("storage commitment report on the same association failed: %s", exc)
        node = self.node.node_by_aet(origin.peer_aet)
        if node is None:
            log.warning("storage commitment: cannot report to %s (not a configured node)",
                        origin.peer_aet)
            return
        ae = AE(ae_title=self.node.settings.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        new = ae.associate(node.host, node.port, ae_title=node.aet,
                           evt_handlers=[(evt.EVT_CONN_OPEN, _on_conn)])
        if new.is_established:
            new.send_n_event_report(ds, event_type, StorageCommitmentPushModel,
                                    "1.2.840.10008.1.20.1.1")
            new.release()


class StoredInstance(Dataset):
    """A stored file handed through pynetdicom's C-GET/C-MOVE machinery, which
    insists on Datasets.  ``_send_raw_files`` makes the association send the
    file's bytes as stored instead of decoding and re-encoding them."""

    def __init__(self, ref: InstanceRef) -> None:
        super().__init__()
        self.SOPClassUID = ref.sop_class_uid
        self.SOPInstanceUID = ref.sop_instance_uid
        self.stored = ref


def _on_store_assoc(event: evt.Event) -> None:
    if event.assoc.is_requestor:
        _send_raw_files(event.assoc)


def _send_raw_files(assoc: Any) -> None:
    """Wrap ``assoc.send_c_store`` so a StoredInstance goes out as its raw
    file (pynetdicom's chunked send: no decode, same bytes as stored) when the
    peer accepted the stored transfer syntax, and otherwise is read, and
    decompressed if need be, so pynetdicom can convert it to what the peer
    accepted."""
    original = assoc.send_c_store
    if getattr(original, "_pacsnode_raw", False):
        return

    def send(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(dataset, StoredInstance):
            return original(dataset, *args, **kwargs)
        ref = dataset.stored
        accepted = [cx.transfer_syntax[0] for cx in assoc.accepted_contexts
                    if cx.abstract_syntax == ref.sop_class_uid and cx.as_scu]
        if ref.transfer_syntax in accepted:
            return original(ref.path, *args, **kwargs)
        # The peer wants another syntax: decode, re-encode uncompressed into
        # a temp file, and send that.
        targets = [UID(ts) for ts in accepted if not UID(ts).is_compressed]
        if not targets:
            return original(dcmread(ref.path), *args, **kwargs)  # pynetdicom says why
        target = targets[0]
        ds = dcmread(ref.path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = target
        fd, name = tempfile.mkstemp(suffix=".dcm")
        os.close(fd)
        try:
            ds.preamble = b"\x00" * 128
            dcmwrite(name, ds, implicit_vr=target.is_implicit_VR,
                     little_endian=target.is_little_endian, force_encoding=True)
            return original(Path(name), *args, **kwargs)
        finally:
            os.unlink(name)

    send._pacsnode_raw = True  # type: ignore[attr-defined]
    assoc.send_c_store = send


def _failure(status: int, reason: str) -> tuple[int, Dataset]:
    ds = Dataset()
    ds.ErrorComment = reason[:64]
    return status, ds


def _store_contexts(refs: list[InstanceRef]) -> list[Any]:
    """Presentation contexts for sending these instances: one per (SOP class,
    stored syntax) so the peer can accept each syntax, plus one per SOP class
    with the uncompressed syntaxes to fall back on (at most 128)."""
    pairs: dict[tuple[str, str], None] = {}
    classes: dict[str, None] = {}
    for ref in refs:
        pairs[(ref.sop_class_uid, ref.transfer_syntax)] = None
        classes[ref.sop_class_uid] = None
    contexts = [build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                for sop_class in classes]
    contexts += [build_context(sop_class, [ts]) for sop_class, ts in pairs
                 if ts != ExplicitVRLittleEndian]
    return contexts[:128]
