"""``pacsnode send``: C-STORE of files and folders to another node, on
pacsnode's requestor (:mod:`pacsnode.dimse.client`).

Each file's data set goes as it is in the file, read with struct
(:mod:`pacsnode.dicom.filemeta`), in its own transfer syntax.  Nothing here
loads pydicom or pynetdicom unless a file needs it (a File Meta Information
without its UIDs, a syntax the peer refused, a failure status to name):
started from the command line, a send of many small files is mostly the
files and the wire.  :func:`pacsnode.remote.scu.send` is this module's
:func:`send`.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dicom.filemeta import read_meta
from ..dimse import client
from ..dimse import messages as m
from ..dimse.contexts import contexts_needed, storage_contexts
from ..errors import PacsnodeError
from .errors import AssociationAborted, NoAcceptedContext, RemoteError, status_text
from .peer import MAX_CONTEXTS, Peer

__all__ = ["SendResult", "send", "collect_files", "HAND_OVER"]

#: C-STORE status Success (PS3.4 B.2.3).
SUCCESS = 0x0000


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
        """Stored: Success or a Warning status."""
        if self.status is None:
            return False
        return self.status == SUCCESS or _category(self.status) in ("Success", "Warning")


def _category(status: int) -> str:
    """A status's category (PS3.7 C): pynetdicom's table, loaded only for
    a status that is not Success."""
    from pynetdicom.status import code_to_category
    return code_to_category(status)


def collect_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[SendResult]]:
    """Files to send: the given files, and every file under given folders
    (recursively, sorted; hidden files and DICOMDIRs skipped).  Paths that
    do not exist come back as failed results."""
    files: list[Path] = []
    missing: list[SendResult] = []
    for item in paths:
        path = Path(item)
        try:
            mode = os.stat(path).st_mode  # one stat a path: a command line of many files
        except (OSError, ValueError):
            mode = 0
        if stat.S_ISDIR(mode):
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
        elif stat.S_ISREG(mode):
            files.append(path)
        else:
            missing.append(SendResult(path, reason="no such file or folder"))
    return list(dict.fromkeys(files)), missing


@dataclass(frozen=True)
class _Header:
    """A file to send, from its File Meta Information (a ``client.StoredFile``)."""

    path: Path
    sop_class: str
    transfer_syntax: str
    sop_instance_uid: str
    #: Where its data set starts (-1: not known, read through pydicom).
    offset: int = -1


#: Bytes read of each file to find its File Meta Information.
_HEAD = 16384


def _read_header(path: Path) -> _Header | SendResult:
    """SOP class, instance and transfer syntax from the File Meta
    Information, walked with struct (``dicom.filemeta``); pydicom only
    for a file whose meta lacks one of them."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.read(fd, _HEAD)
        finally:
            os.close(fd)
        if head[128:132] != b"DICM":
            return SendResult(path, reason="not a readable DICOM file (no 'DICM' prefix: not "
                                           "a DICOM Part 10 file)")
        offset, meta = read_meta(head, path)
    except (OSError, ValueError, UnicodeDecodeError):
        offset, meta = -1, {}
    if meta.get(0x0002) and meta.get(0x0003) and meta.get(0x0010):
        return _Header(path, meta[0x0002], meta[0x0010], meta[0x0003], offset)
    return _read_header_pydicom(path)


def _read_header_pydicom(path: Path) -> _Header | SendResult:
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError
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
            f"{peer} accepts no presentation context for {_uid_name(header.sop_class)} in "
            f"{_uid_name(header.transfer_syntax)}"))
    try:
        status = await assoc.store_file(path, header.sop_class, header.sop_instance_uid,
                                        header.transfer_syntax, upcoming)
    except AssociationAborted:
        return SendResult(path, header.sop_instance_uid,
                          reason="no C-STORE response (association aborted or timed out)")
    except (OSError, ValueError, PacsnodeError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return SendResult(path, header.sop_instance_uid, reason=f"could not send: {reason}")
    code = status.status
    reason = None
    if code != SUCCESS and _category(code) != "Success":
        from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
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
            contexts = storage_contexts(((h.sop_class, h.transfer_syntax) for h in pending),
                                        compressed_fallback=False)
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


def _comment(status: m.Command) -> str:
    comment = status.text(m.ERROR_COMMENT)
    return f": {comment}" if comment else ""


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID
    return UID(uid).name
