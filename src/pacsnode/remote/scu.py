"""The SCU side of pacsnode: C-ECHO, C-FIND, C-MOVE, C-GET and C-STORE
against any DICOM node, on pacsnode's requestor (:mod:`pacsnode.dimse.client`).

One function per DIMSE verb; the CLI (:mod:`pacsnode.remote.commands`), the
Python API (:class:`pacsnode.remote.RemoteNode`) and the REST API all call
these.  Each call opens its own association through
:func:`pacsnode.remote.peer.associate` (TCP_NODELAY, timeouts, exceptions
naming the peer) and releases it before returning.

Failures raise :class:`~pacsnode.remote.errors.RemoteError` or one of its
subclasses.  A retrieve whose sub-operations partly failed is not an
exception: its final :class:`Progress` says how many failed and which.

Cancelling: :func:`move`, :func:`get` and :func:`send` take a
``threading.Event``; setting it (from any thread, or from a progress
callback) sends a C-CANCEL (PS3.7 9.3.2.3) for a retrieve, or stops a send
before its next file.  A cancelled retrieve ends normally with
``Progress.cancelled`` true.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.presentation import build_context
from pynetdicom.status import (QR_FIND_SERVICE_CLASS_STATUS, QR_GET_SERVICE_CLASS_STATUS,
                               QR_MOVE_SERVICE_CLASS_STATUS, STATUS_CANCEL, STATUS_FAILURE,
                               STATUS_PENDING, STATUS_SUCCESS, STATUS_WARNING,
                               STORAGE_SERVICE_CLASS_STATUS,
                               VERIFICATION_SERVICE_CLASS_STATUS, code_to_category)

from ..dicom.filemeta import read_meta
from ..dimse import client
from ..dimse import messages as m
from ..errors import PacsnodeError
from ..dimse.contexts import contexts_needed, storage_contexts
from .contexts import get_contexts
from .errors import AssociationAborted, NoAcceptedContext, RemoteError, status_text
from .identifiers import (DEFAULT_FIELDS, Level, build_identifier, flatten, model_uid,
                          parse_level, parse_model)
from .peer import MAX_CONTEXTS, Peer, Session, associate
from .receiver import get_store_handler

__all__ = ["Progress", "GetResult", "SendResult", "echo", "find", "iter_move", "move",
           "iter_get", "get", "send", "collect_files", "study_sop_classes"]

LOGGER = logging.getLogger(__name__)

#: Verification SOP Class (PS3.4 A.4).
VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class Progress:
    """Where a C-MOVE or C-GET stands, from the peer's latest response.

    The counts are the peer's Number of Completed/Failed/Warning/Remaining
    Sub-operations (PS3.4 C.4.2.3 / C.4.3.3); ``remaining`` is ``None`` when
    the peer did not say.  ``done`` marks the final response, whose
    ``status`` is 0x0000 (all done), 0xB000 (some sub-operations failed or
    had warnings) or 0xFE00 (cancelled).
    """

    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int | None = None
    status: int | None = None
    done: bool = False
    #: Failed SOP Instance UID List of the final response, when given.
    failed_sop_instance_uids: tuple[str, ...] = ()

    @property
    def cancelled(self) -> bool:
        return self.status is not None and code_to_category(self.status) == STATUS_CANCEL

    @property
    def ok(self) -> bool:
        """Finished, not cancelled, and no sub-operation failed."""
        return self.done and not self.cancelled and self.failed == 0

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.warning + (self.remaining or 0)


@dataclass
class GetResult:
    """What a C-GET brought: the final progress and, unless a store callback
    took them, the instances (each with its ``file_meta``)."""

    progress: Progress
    datasets: list[Dataset] = field(default_factory=list)
    #: Our own failures to keep an instance (store callback errors).
    store_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SendResult:
    """The outcome of sending one file."""

    path: Path
    sop_instance_uid: str | None = None
    #: The peer's C-STORE status; ``None`` when nothing was sent.
    status: int | None = None
    #: Why it failed (or the warning), for people.
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and code_to_category(self.status) in (
            STATUS_SUCCESS, STATUS_WARNING)


# --------------------------------------------------------------------- C-ECHO

def echo(peer: Peer) -> float:
    """C-ECHO ``peer``; return the round trip of the C-ECHO in milliseconds
    (association set-up and release not included)."""
    with associate(peer, [build_context(VERIFICATION)], required=[VERIFICATION]) as assoc:
        start = time.perf_counter()
        status, _ = assoc.call(VERIFICATION, dict(field=m.C_ECHO_RQ,
                                                  affected_sop_class=VERIFICATION))
        elapsed = (time.perf_counter() - start) * 1000.0
    _check_final(peer, "C-ECHO", status, VERIFICATION_SERVICE_CLASS_STATUS)
    return elapsed


# --------------------------------------------------------------------- C-FIND

def find(peer: Peer, level: str | Level, keys: Mapping[str, Any] | None = None, *,
         fields: Iterable[str] = (), model: str | None = None, defaults: bool = True,
         limit: int | None = None) -> list[dict[str, Any]]:
    """C-FIND at ``level`` (PATIENT, STUDY, SERIES, IMAGE).

    ``keys`` maps keywords (or tags) to matching values — see
    :func:`~pacsnode.remote.identifiers.build_identifier` — and ``fields``
    names extra return keys.  With ``defaults`` a few useful return keys of
    the level are asked for too (``identifiers.DEFAULT_FIELDS``).  ``model``
    is ``"study"`` or ``"patient"`` (default: Patient Root at PATIENT level,
    Study Root otherwise).  ``limit`` stops after that many matches with a
    C-CANCEL.

    Returns one flat dict per match (format in
    :mod:`pacsnode.remote.identifiers`), holding every requested key and the
    unique keys down to ``level``, in the peer's order.
    """
    lv = parse_level(level)
    mdl = parse_model(model, lv)
    extra = [*(DEFAULT_FIELDS[lv] if defaults else ()), *fields]
    identifier, names = build_identifier(lv, keys or {}, extra, mdl)
    uid = model_uid(mdl, "find")
    results: list[dict[str, Any]] = []
    enough = threading.Event()
    with associate(peer, [build_context(uid)], required=[uid]) as assoc:
        request = dict(field=m.C_FIND_RQ, affected_sop_class=uid, priority=0)
        for status, answer in assoc.responses(uid, request, identifier, enough):
            if status.status in (0xFF00, 0xFF01):
                if limit is None or len(results) < limit:
                    results.append(flatten(answer if answer is not None else Dataset(), names))
                if limit is not None and len(results) >= limit:
                    enough.set()
                continue
            _check_final(peer, "C-FIND", status, QR_FIND_SERVICE_CLASS_STATUS, results)
    return results


# ------------------------------------------------------------ C-MOVE / C-GET

def _progress(status: m.Command, answer: Dataset | None, last: Progress) -> Progress:
    def count(element: int, previous: int | None) -> int | None:
        raw = status.values.get(element)
        return previous if raw is None or len(raw) < 2 else status.us(element)

    code = status.status
    category = code_to_category(code)
    done = category != STATUS_PENDING
    failed_uids = last.failed_sop_instance_uids
    value = answer.get("FailedSOPInstanceUIDList") if answer is not None else None
    if value:
        values = value if isinstance(value, (list, MultiValue)) else [value]
        failed_uids = tuple(str(v) for v in values if v)
    remaining = count(m.REMAINING, last.remaining)
    return Progress(
        completed=count(m.COMPLETED, last.completed) or 0,
        failed=count(m.FAILED, last.failed) or 0,
        warning=count(m.WARNING, last.warning) or 0,
        remaining=0 if done and category in (STATUS_SUCCESS, STATUS_WARNING) else remaining,
        status=code, done=done, failed_sop_instance_uids=failed_uids)


def _retrieve(peer: Peer, assoc: Session, service: str, uid: str, request: dict[str, Any],
              identifier: Dataset, table: dict[int, tuple[str, str]],
              cancel: threading.Event | None) -> Iterator[Progress]:
    """A C-MOVE/C-GET request and its responses as Progress values, raising
    on failure statuses and on a dead association."""
    last = Progress()
    try:
        for status, answer in assoc.responses(uid, request, identifier, cancel):
            last = _progress(status, answer, last)
            if last.done:
                if code_to_category(status.status) == STATUS_FAILURE:
                    raise RemoteError(peer, f"{service} failed with status "
                                      f"{status_text(status.status, table)}"
                                      f"{_comment(status)}", status=status.status,
                                      result=last)
                yield last
                return
            yield last
    except AssociationAborted as exc:
        exc.result = last
        raise
    raise AssociationAborted(peer, f"{service} ended without a final response", result=last)


def iter_move(peer: Peer, level: str | Level, keys: Mapping[str, Any], destination: str, *,
              model: str | None = None,
              cancel: threading.Event | None = None) -> Iterator[Progress]:
    """C-MOVE what ``keys`` select at ``level`` to the AE ``destination``
    (which the peer must know), yielding a :class:`Progress` per response;
    the last one has ``done`` set.  Stopping the iteration early aborts the
    association (so the peer stops too)."""
    lv = parse_level(level)
    mdl = parse_model(model, lv)
    identifier, _ = build_identifier(lv, keys, (), mdl)
    uid = model_uid(mdl, "move")
    with associate(peer, [build_context(uid)], required=[uid]) as assoc:
        request = dict(field=m.C_MOVE_RQ, affected_sop_class=uid, priority=0,
                       move_destination=destination)
        yield from _retrieve(peer, assoc, "C-MOVE", uid, request, identifier,
                             QR_MOVE_SERVICE_CLASS_STATUS, cancel)


def move(peer: Peer, level: str | Level, keys: Mapping[str, Any], destination: str, *,
         model: str | None = None, cancel: threading.Event | None = None,
         on_progress: Callable[[Progress], None] | None = None) -> Progress:
    """C-MOVE to ``destination``, calling ``on_progress`` with each
    :class:`Progress`; return the final one.  Raises
    :class:`~pacsnode.remote.errors.RemoteError` on a failure status (e.g.
    0xA801, destination unknown); partial failures are in the result."""
    last = Progress()
    for last in iter_move(peer, level, keys, destination, model=model, cancel=cancel):
        if on_progress is not None:
            on_progress(last)
    return last


def study_sop_classes(peer: Peer, study_uid: str) -> list[str]:
    """SOP Classes in Study (0008,0062) of one study, by a STUDY-level
    C-FIND; ``[]`` when the peer does not say."""
    try:
        hits = find(peer, Level.STUDY, {"StudyInstanceUID": study_uid},
                    fields=["SOPClassesInStudy"], defaults=False)
    except RemoteError:
        return []
    classes: list[str] = []
    for hit in hits:
        value = hit.get("SOPClassesInStudy") or []
        classes += [value] if isinstance(value, str) else [str(v) for v in value]
    return [uid for uid in dict.fromkeys(classes) if uid]


def iter_get(peer: Peer, level: str | Level, keys: Mapping[str, Any],
             on_store: Callable[[Dataset], int | None], *, model: str | None = None,
             cancel: threading.Event | None = None,
             sop_classes: Sequence[str] | None = None,
             store_errors: list[str] | None = None) -> Iterator[Progress]:
    """C-GET what ``keys`` select at ``level``, passing each instance
    received (a Dataset with ``file_meta``) to ``on_store``, which may return
    a storage status; yields a :class:`Progress` per C-GET response.

    We propose ourselves as Storage SCP (role selection, PS3.4 C.4.3) for
    ``sop_classes`` with every syntax, then for the common storage classes
    (:func:`~pacsnode.remote.contexts.get_contexts`), so the peer can send
    instances as stored.
    """
    lv = parse_level(level)
    mdl = parse_model(model, lv)
    identifier, _ = build_identifier(lv, keys, (), mdl)
    uid = model_uid(mdl, "get")
    storage = get_contexts(sop_classes, budget=MAX_CONTEXTS - 1)
    errors = store_errors if store_errors is not None else []
    with associate(peer, [build_context(uid), *storage], required=[uid],
                   scp_roles=[str(cx.abstract_syntax) for cx in storage],
                   on_store=get_store_handler(on_store, errors)) as assoc:
        request = dict(field=m.C_GET_RQ, affected_sop_class=uid, priority=0)
        yield from _retrieve(peer, assoc, "C-GET", uid, request, identifier,
                             QR_GET_SERVICE_CLASS_STATUS, cancel)


def get(peer: Peer, level: str | Level, keys: Mapping[str, Any], *,
        model: str | None = None, on_store: Callable[[Dataset], int | None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None, sop_classes: Sequence[str] | None = None,
        discover: bool = True) -> GetResult:
    """C-GET into memory, or into ``on_store`` when given (e.g. an archive's
    ingest, or a writer to disk: then ``GetResult.datasets`` stays empty).

    With ``discover`` and a single StudyInstanceUID among ``keys``, the
    study's SOP classes are asked for first (:func:`study_sop_classes`) so
    that exactly those get storage contexts with every transfer syntax.
    """
    result = GetResult(progress=Progress())
    sink = on_store or (lambda ds: result.datasets.append(ds))
    classes = list(sop_classes or ())
    study = keys.get("StudyInstanceUID")
    if discover and isinstance(study, str) and study and "\\" not in study and "*" not in study:
        classes += study_sop_classes(peer, study)
    for progress in iter_get(peer, level, keys, sink, model=model, cancel=cancel,
                             sop_classes=classes, store_errors=result.store_errors):
        result.progress = progress
        if on_progress is not None:
            on_progress(progress)
    return result


# -------------------------------------------------------------------- C-STORE

def collect_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[SendResult]]:
    """Files to send: the given files, and every file under given folders
    (recursively, sorted; hidden files and DICOMDIRs skipped).  Paths that
    do not exist come back as failed results."""
    files: list[Path] = []
    missing: list[SendResult] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
        elif path.is_file():
            files.append(path)
        else:
            missing.append(SendResult(path, reason="no such file or folder"))
    return list(dict.fromkeys(files)), missing


@dataclass(frozen=True)
class _Header:
    path: Path
    sop_class: str
    transfer_syntax: str
    sop_instance_uid: str


#: Bytes read of each file to find its File Meta Information.
_HEAD = 16384


def _read_header(path: Path) -> _Header | SendResult:
    """SOP class, instance and transfer syntax from the File Meta
    Information, walked with struct (``dicom.filemeta``); pydicom only
    for a file whose meta lacks one of them."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD)
        if head[128:132] != b"DICM":
            return SendResult(path, reason="not a readable DICOM file (no 'DICM' prefix: not "
                                           "a DICOM Part 10 file)")
        _, meta = read_meta(head, path)
    except (OSError, ValueError, UnicodeDecodeError):
        meta = {}
    if meta.get(0x0002) and meta.get(0x0003) and meta.get(0x0010):
        return _Header(path, meta[0x0002], meta[0x0010], meta[0x0003])
    return _read_header_pydicom(path)


def _read_header_pydicom(path: Path) -> _Header | SendResult:
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return SendResult(path, reason="not a readable DICOM file (no 'DICM' prefix: not a "
                                       "DICOM Part 10 file)")
    except (OSError, ValueError, EOFError) as exc:
        return SendResult(path, reason=f"not a readable DICOM file: {exc}")
    meta = getattr(ds, "file_meta", Dataset())
    sop_class = meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID")
    ts = meta.get("TransferSyntaxUID")
    uid = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID")
    if not sop_class or not ts or not uid:
        return SendResult(path, sop_instance_uid=str(uid) if uid else None,
                          reason="no SOP Class UID, SOP Instance UID or Transfer Syntax UID "
                                 "(not a DICOM Part 10 file)")
    return _Header(path, str(sop_class), str(ts), str(uid))


def _batches(headers: Sequence[_Header], size: int) -> Iterator[list[_Header]]:
    """Split files, in order, into runs needing at most ``size`` contexts."""
    batch: list[_Header] = []
    pairs: dict[tuple[str, str], None] = {}
    for header in headers:
        pair = (header.sop_class, header.transfer_syntax)
        if pair not in pairs and contexts_needed([*pairs, pair]) > size:
            yield batch
            batch, pairs = [], {}
        pairs[pair] = None
        batch.append(header)
    if batch:
        yield batch


async def _store_one(peer: Peer, assoc: client.Requested, header: _Header,
                     upcoming: _Header | None) -> SendResult:
    path = header.path
    if not assoc.accepted(header.sop_class):
        return SendResult(path, header.sop_instance_uid, reason=(
            f"{peer} accepts no presentation context for {UID(header.sop_class).name} in "
            f"{UID(header.transfer_syntax).name}"))
    ahead = None if upcoming is None else (upcoming.path, upcoming.sop_class,
                                           upcoming.transfer_syntax)
    try:
        status = await assoc.store_file(path, header.sop_class, header.sop_instance_uid,
                                        header.transfer_syntax, ahead)
    except AssociationAborted:
        return SendResult(path, header.sop_instance_uid,
                          reason="no C-STORE response (association aborted or timed out)")
    except (OSError, ValueError, PacsnodeError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return SendResult(path, header.sop_instance_uid, reason=f"could not send: {reason}")
    code = status.status
    reason = None
    if code_to_category(code) != STATUS_SUCCESS:
        reason = f"{status_text(code, STORAGE_SERVICE_CLASS_STATUS)}{_comment(status)}"
    return SendResult(path, header.sop_instance_uid, code, reason)


async def _send_share(peer: Peer, headers: list[_Header], report: Callable[[SendResult], None],
                      cancel: threading.Event | None) -> None:
    """Send ``headers`` in order over one association at a time (a new one
    per run of 128 contexts, or after the peer aborted one)."""
    for batch in _batches(headers, MAX_CONTEXTS):
        pending = list(reversed(batch))
        while pending:
            if cancel is not None and cancel.is_set():
                for header in reversed(pending):
                    report(SendResult(header.path, header.sop_instance_uid, reason="cancelled"))
                return
            contexts = storage_contexts((h.sop_class, h.transfer_syntax) for h in pending)
            try:
                assoc = await client.connect(peer, contexts, ssl=peer.tls)
            except NoAcceptedContext as exc:
                while pending:
                    header = pending.pop()
                    report(SendResult(header.path, header.sop_instance_uid, reason=str(exc)))
                break
            try:
                while pending and not assoc.closed:
                    if cancel is not None and cancel.is_set():
                        break
                    header = pending.pop()
                    report(await _store_one(peer, assoc, header,
                                            pending[-1] if pending else None))
            finally:
                await assoc.release()


async def _send_all(peer: Peer, shares: list[list[_Header]],
                    report: Callable[[SendResult], None],
                    cancel: threading.Event | None) -> None:
    outcomes = await asyncio.gather(*(_send_share(peer, share, report, cancel)
                                      for share in shares), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


#: Seconds between two hand-overs of send results to the calling thread.
HAND_OVER = 0.05


def _wait(future: Any, seconds: float) -> bool:
    """Whether ``future`` (concurrent) finished within ``seconds``."""
    try:
        future.exception(timeout=seconds)
    except TimeoutError:
        return False
    except BaseException:  # noqa: BLE001 - cancelled: finished too
        pass
    return True


def send(peer: Peer, paths: Iterable[str | Path], *,
         on_result: Callable[[SendResult], None] | None = None,
         cancel: threading.Event | None = None, parallel: int = 1) -> list[SendResult]:
    """C-STORE files and folders (see :func:`collect_files`) to ``peer``.

    Each file goes in its own transfer syntax, its data set bytes as they
    are in the file: we propose one presentation context per SOP class and
    syntax found (in several associations if more than 128 are needed); a
    file whose syntax the peer did not take but could take another of the
    uncompressed ones is transcoded (``pacsnode.retrieve``).  ``parallel``
    sends over that many associations at once, each a share of the files.

    Returns one :class:`SendResult` per file — paths that do not exist and
    files that are not DICOM first, then the sent files in order — each
    also passed to ``on_result`` (on the calling thread) as soon as it is
    known.  Raises :class:`RemoteError` when no association can be made (the
    results so far are in the exception's ``result``); a peer accepting none
    of a batch's contexts fails those files instead.
    """
    files, results = collect_files(paths)
    for failed in results:
        if on_result is not None:
            on_result(failed)

    def report(result: SendResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    headers: list[_Header] = []
    for path in files:
        header = _read_header(path)
        if isinstance(header, SendResult):
            report(header)
        else:
            headers.append(header)
    if not headers:
        return results
    ways = max(1, min(int(parallel), len(headers)))
    size = -(-len(headers) // ways)
    shares = [headers[i:i + size] for i in range(0, len(headers), size)]
    first_sent = len(results)
    # Results are handed over in batches (a wake-up of this thread per file
    # cost more than the file's C-STORE).
    sent: list[SendResult] = []
    future = asyncio.run_coroutine_threadsafe(_send_all(peer, shares, sent.append, cancel),
                                              client.loop())
    taken = 0
    while True:
        finished = future.done() or _wait(future, HAND_OVER)
        while taken < len(sent):
            report(sent[taken])
            taken += 1
        if finished:
            break
    try:
        future.result()
    except RemoteError as exc:
        exc.result = results
        raise
    if ways > 1:
        order = {h.path: n for n, h in enumerate(headers)}
        results[first_sent:] = sorted(results[first_sent:], key=lambda r: order[r.path])
    return results


# -------------------------------------------------------------------- helpers

def _comment(status: m.Command) -> str:
    comment = status.text(m.ERROR_COMMENT)
    return f": {comment}" if comment else ""


def _check_final(peer: Peer, service: str, status: m.Command,
                 table: dict[int, tuple[str, str]], result: Any = None) -> None:
    code = status.status
    if code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING, STATUS_CANCEL):
        return
    raise RemoteError(peer, f"{service} failed with status {status_text(code, table)}"
                      f"{_comment(status)}", status=code, result=result)
