"""The SCU side of pacsnode: C-ECHO, C-FIND, C-MOVE, C-GET and C-STORE
against any DICOM node, on pacsnode's requestor (:mod:`pacsnode.dimse.client`).

One function per DIMSE verb; the CLI (:mod:`pacsnode.remote.commands`), the
Python API (:class:`pacsnode.remote.RemoteNode`) and the REST API all call
these.  Each call opens its own association through
:func:`pacsnode.remote.peer.associate` (TCP_NODELAY, timeouts, exceptions
naming the peer) and releases it before returning.  C-STORE (:func:`send`,
:func:`collect_files`, :class:`SendResult`) is :mod:`pacsnode.remote.send`,
which starts without pydicom for ``pacsnode send``.

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

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.presentation import build_context
from pynetdicom.status import (QR_FIND_SERVICE_CLASS_STATUS, QR_GET_SERVICE_CLASS_STATUS,
                               QR_MOVE_SERVICE_CLASS_STATUS, STATUS_CANCEL, STATUS_FAILURE, STATUS_PENDING,
                               STATUS_SUCCESS, STATUS_WARNING,
                               VERIFICATION_SERVICE_CLASS_STATUS, code_to_category)

from ..dimse import messages as m
from .contexts import get_contexts
from .errors import AssociationAborted, RemoteError, status_text
from .identifiers import (DEFAULT_FIELDS, Level, build_identifier, flatten, model_uid,
                          parse_level, parse_model)
from .peer import MAX_CONTEXTS, Peer, Session, associate
from .receiver import get_store_handler
from .send import SendResult, collect_files, send

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
