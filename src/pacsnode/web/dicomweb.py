"""DICOMweb (PS3.18) under ``/dicomweb``: STOW-RS, QIDO-RS, WADO-RS, DELETE.

An adapter only: instances go in through ``node.ingestor.ingest_temp``,
searches through ``query_from_qido`` + ``node.engine``, reads through
``pacsnode.retrieve`` (which picks the transfer syntax and transcodes;
frames through ``pacsnode.transcode``'s frame functions), deletions through
``pacsnode.delete.delete_entities``.  What is supported, and every choice the
standard leaves open, is written down in docs/CONFORMANCE.md (DICOMweb).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
import os
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from ..delete import delete_entities
from ..dicom.catalogue import Level
from ..dicom.header import valid_uid
from ..errors import NotFound, PacsnodeError, StorageFailure
from ..events import Origin
from ..index.schema import instances, series, studies
from ..ingest import IngestResult, Outcome, tally
from ..node import Node
from ..query.parse import query_from_qido
from ..retrieve import (FramePlan, InstanceRef, PixelFacts, choose_syntax, frame_bytes,
                        frame_plan, locate, outgoing, pixel_facts, select_instances)
from ..transcode import (PixelInfo, TranscodeError, little_endian_words,
                         media_type_for_syntax, native_frame, pixel_info)
from .errors import WebError
from .multipart import (MultipartError, MultipartParser, PartData, PartEnd, PartStart,
                        new_boundary, parse_content_type)
from .render import RenderOptions, parse_quality, parse_viewport, parse_window, render_frame
from .zerocopy import ZEROCOPYSEND

__all__ = ["router", "parse_accept", "MediaRange", "accept_of", "render_bytes", "WebError"]

log = logging.getLogger("pacsnode.web.dicomweb")

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

DICOM_JSON = "application/dicom+json"
CHUNK = 512 * 1024
#: Bytes of a multipart WADO-RS body handed to the server at a time.
YIELD_BYTES = 4 * 1024 * 1024
#: Most stored files a multipart WADO-RS response opens at once to send them
#: as a snapshot of known length (_Snapshot); more are streamed one by one.
SNAPSHOT_FILES = 512
#: The first block of such a body: smaller, so that sending starts sooner.
FIRST_BLOCK = 256 * 1024

#: A piece of a WADO-RS body: a part head or CRLF, or a view of a file's map.
_Piece = bytes | memoryview

#: Instance headers of a metadata response read with one query.
METADATA_BATCH = 200


class DicomJSONResponse(JSONResponse):
    """A DICOM JSON body written by orjson: for a page of 396 series
    json.dumps took ~9 ms, orjson ~1 (a fifth of that QIDO's time at 100k
    instances).  The same JSON, up to the spelling of a float (``1e-7``
    for ``1e-07``); json.dumps stays for what orjson refuses (an integer
    beyond 64 bits)."""

    media_type = DICOM_JSON

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except orjson.JSONEncodeError:
            return super().render(content)


def _node(request: Request) -> Node:
    node: Node = request.app.state.node  # (Starlette's State holds Any)
    return node


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _check_uids(**uids: str | None) -> None:
    """A malformed UID in a path is the client's error (PS3.5 9.1): 400."""
    for name, uid in uids.items():
        if uid is not None and not valid_uid(uid):
            raise PacsnodeError(f"{name} {uid[:80]!r} is not a valid UID "
                                "(1-64 characters of digits and dots)")


def _header_text(text: str) -> str:
    """Something safe to put in a header value."""
    clean = "".join(ch if 32 <= ord(ch) < 127 and ch != '"' else "'" if ch == '"' else " "
                    for ch in text)
    return clean[:900]


def _warning(text: str) -> str:
    return f'299 pacsnode "{_header_text(text)}"'


# -- content negotiation ------------------------------------------------------

@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str]
    q: float = 1.0

    @property
    def transfer_syntax(self) -> str | None:
        ts = self.params.get("transfer-syntax")
        return ts.strip() if ts else None


def _split_commas(value: str) -> list[str]:
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [item.strip() for item in out if item.strip()]


def parse_accept(value: str | None) -> list[MediaRange]:
    """An Accept header as media ranges, most preferred first (q, then order)."""
    if not value or not value.strip():
        return [MediaRange("*/*", {})]
    ranked = []
    for i, item in enumerate(_split_commas(value)):
        media, params = parse_content_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0:
            continue
        ranked.append((-q, i, MediaRange(media, params, q)))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [r for _, _, r in ranked]


def _media_type_plus(item: str) -> str:
    """A ``+`` in a media type sent unescaped in a query string arrives as
    a space (``application/dicom+json`` → ``application/dicom json``):
    a media type holds no space, so one there was a ``+``."""
    head, sep, rest = item.strip().partition(";")
    return head.strip().replace(" ", "+") + sep + rest


def accept_of(request: Request) -> str | None:
    """What the client accepts: the ``accept`` query parameter when present
    (PS3.18 8.3.3.1: it takes precedence over the Accept header; repeated,
    its values are one list), else the Accept header."""
    values = request.query_params.getlist("accept")
    if values:
        items = [_media_type_plus(item) for value in values for item in _split_commas(value)]
        return ", ".join(items) or None
    return request.headers.get("accept")


def _accepts_json(request: Request) -> None:
    for mr in parse_accept(accept_of(request)):
        if mr.type in ("*/*", "application/*", DICOM_JSON, "application/json"):
            return
        if mr.type == "multipart/related" and mr.params.get("type") == DICOM_JSON:
            return
    raise WebError(406, "this resource is available as application/dicom+json only")


# -- 404s that say what is missing ---------------------------------------------

def _missing(node: Node, study: str, series_uid: str | None = None,
             sop: str | None = None) -> NotFound:
    with node.db.read() as conn:
        st = conn.execute(select(studies.c.id).where(
            studies.c.studyinstanceuid == study)).first()
        if st is None:
            return NotFound(f"study {study} not found")
        if series_uid:
            se = conn.execute(select(series.c.id).where(
                series.c.seriesinstanceuid == series_uid,
                series.c.study_fk == st.id)).first()
            if se is None:
                return NotFound(f"series {series_uid} not found in study {study}")
        if sop:
            return NotFound(f"instance {sop} not found"
                            + (f" in series {series_uid}" if series_uid else ""))
    return NotFound(f"no instances stored for {series_uid or study}")


def _scope_exists(node: Node, study: str, series_uid: str | None) -> None:
    err = _missing(node, study, series_uid)
    if not str(err.reason).startswith("no instances"):
        raise err


# -- STOW-RS ------------------------------------------------------------------

_SOP_CLASS, _SOP_INSTANCE, _RETRIEVE_URL = "00081150", "00081155", "00081190"
_FAILURE_REASON, _WARNING_REASON = "00081197", "00081196"
_FAILED_SEQ, _REFERENCED_SEQ = "00081198", "00081199"

#: PS3.18 Table 10.5.3-2: the data stored differs from the data sent
#: (used when duplicate_policy "keep" kept a different stored instance).
_WARN_COERCED = 0xB000


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


class _PartWriter:
    """Writes each application/dicom part into its own blob-store temp file."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: One entry per part: (temp path or None, failure or None).
        self.parts: list[tuple[Path | None, PacsnodeError | None]] = []
        self._fh: BinaryIO | None = None

    def apply(self, events: list[PartStart | PartData | PartEnd]) -> None:
        for ev in events:
            if isinstance(ev, PartStart):
                self._close()
                media, _ = parse_content_type(ev.content_type or "application/dicom")
                if media != "application/dicom":
                    self.parts.append((None, PacsnodeError(
                        f"part {len(self.parts) + 1} is {media or 'untyped'}, not "
                        "application/dicom (only DICOM parts are accepted)")))
                    continue
                try:
                    fh, temp = self.node.store.new_temp()
                except OSError as exc:
                    self.parts.append((None, StorageFailure(f"cannot create a temp file: {exc}")))
                    continue
                self._fh = fh
                self.parts.append((temp, None))
            elif isinstance(ev, PartData):
                if self._fh is None:
                    continue
                try:
                    self._fh.write(ev.data)
                except OSError as exc:
                    self._fail(StorageFailure(f"cannot write the instance: {exc}"))
            else:
                self._close()

    def _fail(self, error: PacsnodeError) -> None:
        temp, _ = self.parts[-1]
        self._close()
        if temp is not None:
            temp.unlink(missing_ok=True)
        self.parts[-1] = (None, error)

    def _close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError as exc:
                self._fh = None
                self._fail(StorageFailure(f"cannot write the instance: {exc}"))
            self._fh = None

    def discard(self) -> None:
        self._close()
        for temp, _ in self.parts:
            if temp is not None:
                temp.unlink(missing_ok=True)
        self.parts.clear()


@router.post("/studies", summary="STOW-RS: store instances")
async def stow(request: Request) -> Response:
    return await _stow(request, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(request: Request, study: str) -> Response:
    _check_uids(StudyInstanceUID=study)
    return await _stow(request, study)


async def _stow(request: Request, study: str | None) -> Response:
    node = _node(request)
    media, params = parse_content_type(request.headers.get("content-type", ""))
    if media != "multipart/related":
        raise WebError(415, f"STOW-RS takes multipart/related; type=\"application/dicom\", "
                            f"not {media or 'a body without Content-Type'}")
    part_type = params.get("type", "application/dicom").strip().lower()
    if part_type != "application/dicom":
        raise WebError(415, f"only application/dicom parts are accepted, not {part_type} "
                            "(metadata+bulk data uploads are not supported; a BulkDataURI "
                            "is never dereferenced)")
    boundary = params.get("boundary")
    if not boundary:
        raise PacsnodeError("the multipart/related Content-Type has no boundary")
    limit = node.settings.max_stow_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise WebError(413, f"the body ({int(declared)} bytes) is larger than "
                                    f"max_stow_bytes ({limit})")
        except ValueError:
            raise PacsnodeError(f"Content-Length {declared[:40]!r} is not a number") from None
    try:
        parser = MultipartParser(boundary)
    except MultipartError as exc:
        raise PacsnodeError(str(exc)) from None
    writer = _PartWriter(node)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise WebError(413, f"the body is larger than max_stow_bytes ({limit})")
            events = parser.feed(chunk)
            if events:
                await run_in_threadpool(writer.apply, events)
        parser.close()
    except MultipartError as exc:
        writer.discard()  # quick (close, unlink), and must run even when cancelled
        raise PacsnodeError(f"malformed multipart body: {exc}") from None
    except BaseException:  # 413, client gone, cancelled: nothing is stored
        writer.discard()  # quick (close, unlink), and must run even when cancelled
        raise
    if not writer.parts:
        raise PacsnodeError("the multipart body holds no part")
    address = request.client.host if request.client else ""
    origin = Origin("stow", address=address)
    # The parts are ingested together (their fsyncs overlap, their rows share
    # transactions), in order.
    temps: list[Path] = []
    for temp, error in writer.parts:
        if error is None:
            assert temp is not None  # a part without an error has its file
            temps.append(temp)
    stored = iter(await run_in_threadpool(node.ingestor.ingest_temps, temps, origin,
                                          expected_study=study))
    results = [next(stored) if error is None else
               IngestResult(Outcome.REFUSED if not isinstance(error, StorageFailure)
                            else Outcome.FAILED, error=error)
               for _temp, error in writer.parts]
    log.info("STOW-RS from %s%s: %s", address or "?", f" to study {study}" if study else "",
             tally(Counter(r.outcome.value for r in results)))
    return _stow_response(_base(request), study, results)


def _stow_response(base: str, study: str | None, results: list[IngestResult]) -> Response:
    referenced, failed, reasons = [], [], []
    stored_studies: set[str] = set()
    warnings = False
    for r in results:
        if r.outcome.ok:
            item = {_SOP_CLASS: _ui(r.sop_class_uid), _SOP_INSTANCE: _ui(r.sop_instance_uid),
                    _RETRIEVE_URL: {"vr": "UR", "Value": [
                        f"{base}/studies/{r.study_uid}/series/{r.series_uid}"
                        f"/instances/{r.sop_instance_uid}"]}}
            if r.kept_existing:
                item[_WARNING_REASON] = {"vr": "US", "Value": [_WARN_COERCED]}
                warnings = True
                reasons.append(f"{r.sop_instance_uid}: a different instance with this UID "
                               "is stored and was kept")
            referenced.append(item)
            stored_studies.add(r.study_uid)
        else:
            error = r.error or StorageFailure("storage failed")
            failed.append({_SOP_CLASS: _ui(r.sop_class_uid),
                           _SOP_INSTANCE: _ui(r.sop_instance_uid),
                           _FAILURE_REASON: {"vr": "US", "Value": [error.failure_reason]}})
            reasons.append(f"{r.sop_instance_uid or 'part'}: {error.reason}")
    body: dict[str, Any] = {}
    retrieve_study = study or (next(iter(stored_studies)) if len(stored_studies) == 1 else None)
    if retrieve_study and referenced:
        body[_RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{retrieve_study}"]}
    if failed:
        body[_FAILED_SEQ] = {"vr": "SQ", "Value": failed}
    body[_REFERENCED_SEQ] = {"vr": "SQ", "Value": referenced} if referenced else {"vr": "SQ"}
    if not referenced:
        status = 409
    elif failed or warnings:
        status = 202
    else:
        status = 200
    headers = {"Warning": _warning("; ".join(reasons))} if reasons else {}
    return DicomJSONResponse(body, status_code=status, headers=headers)


# -- QIDO-RS ------------------------------------------------------------------

def _retrieve_url(base: str, level: Level, item: dict[str, Any]) -> str | None:
    def uid(tag: str) -> str | None:
        values = item.get(tag, {}).get("Value")
        return str(values[0]) if values else None
    study, series_uid, sop = uid("0020000D"), uid("0020000E"), uid("00080018")
    if not study:
        return None
    url = f"{base}/studies/{study}"
    if level >= Level.SERIES:
        if not series_uid:
            return None
        url += f"/series/{series_uid}"
    if level == Level.IMAGE:
        if not sop:
            return None
        url += f"/instances/{sop}"
    return url


def _qido(request: Request, level: Level, study: str | None = None,
          series_uid: str | None = None) -> Response:
    node = _node(request)
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid)
    _accepts_json(request)
    scope: dict[str, str] = {}
    if study:
        scope["StudyInstanceUID"] = study
    if series_uid:
        scope["SeriesInstanceUID"] = series_uid
    params = request.query_params.multi_items()
    max_limit = node.settings.qido_max_limit
    query = query_from_qido(level, params, scope=scope or None, max_limit=max_limit)
    if study:
        _scope_exists(node, study, series_uid)
    matches = node.engine.search_json(query)
    if not matches:
        return Response(status_code=204)
    base = _base(request)
    body = []
    for item in matches:
        url = _retrieve_url(base, level, item)
        if url:
            item[_RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        body.append(item)
    headers: dict[str, str] = {}
    asked = [v for k, v in params if k == "limit"]
    asked_limit = int(asked[-1]) if asked else None
    if len(matches) == query.limit and (asked_limit is None or asked_limit > max_limit):
        total = node.engine.count(query)
        if total > query.offset + len(matches):
            headers["Warning"] = _warning(
                f"There are additional results that can be requested: {total} matches, "
                f"at most {max_limit} per response; use offset={query.offset + len(matches)}")
    return DicomJSONResponse(body, headers=headers)


@router.get("/studies", summary="QIDO-RS: search studies")
def search_studies(request: Request) -> Response:
    return _qido(request, Level.STUDY)


@router.get("/series", summary="QIDO-RS: search series")
def search_series(request: Request) -> Response:
    return _qido(request, Level.SERIES)


@router.get("/instances", summary="QIDO-RS: search instances")
def search_instances(request: Request) -> Response:
    return _qido(request, Level.IMAGE)


@router.get("/studies/{study}/series", summary="QIDO-RS: search the series of a study")
def search_study_series(request: Request, study: str) -> Response:
    return _qido(request, Level.SERIES, study)


@router.get("/studies/{study}/instances", summary="QIDO-RS: search the instances of a study")
def search_study_instances(request: Request, study: str) -> Response:
    return _qido(request, Level.IMAGE, study)


@router.get("/studies/{study}/series/{series_uid}/instances",
            summary="QIDO-RS: search the instances of a series")
def search_series_instances(request: Request, study: str, series_uid: str) -> Response:
    return _qido(request, Level.IMAGE, study, series_uid)


# -- WADO-RS: instances ---------------------------------------------------------

def _dicom_options(accept: str | None, single_allowed: bool) -> list[tuple[str | None, bool]]:
    """Acceptable (transfer syntax option, single part) pairs, most preferred
    first.  Option ``None``: no transfer-syntax parameter (PS3.18 default,
    Explicit VR Little Endian); ``"*"``: as stored."""
    options: list[tuple[str | None, bool]] = []
    for mr in parse_accept(accept):
        if mr.type == "multipart/related":
            part = mr.params.get("type", "application/dicom").strip().lower()
            if part in ("application/dicom", "*/*", "application/*"):
                options.append((mr.transfer_syntax, False))
        elif mr.type == "application/dicom" and single_allowed:
            options.append((mr.transfer_syntax, True))
        elif mr.type in ("*/*", "multipart/*"):
            options.append((None, False))
    if not options:
        raise WebError(406, "instances are available as multipart/related; "
                            "type=\"application/dicom\""
                            + (" or application/dicom" if single_allowed else ""))
    return options


def _syntax_for(option: str | None, ref: InstanceRef, facts: PixelFacts | None) -> str | None:
    """The syntax ``ref`` goes out in for one Accept option (the reader
    decides, ``retrieve.choose_syntax``).  Without a transfer-syntax
    parameter PS3.18 means Explicit VR Little Endian; we fall back to the
    stored syntax rather than refuse (e.g. a video, or no decoder)."""
    if option is None:
        return choose_syntax(ref, [ExplicitVRLittleEndian], facts) or ref.transfer_syntax
    return choose_syntax(ref, [option], facts)


def _plan(node: Node, refs: list[InstanceRef], accept: str | None, single_allowed: bool
          ) -> tuple[list[tuple[InstanceRef, str]], bool, dict[str, PixelFacts]]:
    options = _dicom_options(accept, single_allowed)
    facts: dict[str, PixelFacts] = {}
    for option, single in options:
        if option != "*" and not facts:  # as stored needs no facts (nor their query)
            facts = pixel_facts(node, refs)
        plan = []
        for ref in refs:
            ts = _syntax_for(option, ref, facts.get(ref.sop_instance_uid))
            if ts is None:
                break
            plan.append((ref, ts))
        else:
            return plan, single, facts
    wanted = ", ".join(sorted({o or "default" for o, _ in options}))
    raise WebError(406, f"cannot provide the instances in the requested transfer syntax "
                        f"({wanted}); see docs/CONFORMANCE.md for what can be produced")


def _part_head(boundary: str, content_type: str, location: str | None = None) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if location:
        head += f"Content-Location: {location}\r\n"
    return (head + "\r\n").encode("latin-1")


def _file_chunks(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                return
            yield chunk


def _instance_parts(plan: list[tuple[InstanceRef, str]], boundary: str,
                    facts: dict[str, PixelFacts]) -> Iterator[bytes]:
    """The multipart body, one instance at a time: a file as stored is read in
    chunks, a transcoded one is produced (``retrieve.outgoing``) when its
    turn comes."""
    for ref, ts in plan:
        content_type = f"application/dicom; transfer-syntax={ts}"
        if ts == ref.transfer_syntax:
            try:
                fh = open(ref.path, "rb")
            except OSError as exc:  # deleted meanwhile
                log.warning("WADO-RS: skipping %s: %s", ref.sop_instance_uid, exc)
                continue
            yield _part_head(boundary, content_type)
            yield from _file_chunks(fh)
        else:
            try:
                data = _transcoded(ref, ts, facts)
            except FileNotFoundError:
                log.warning("WADO-RS: skipping %s: file gone", ref.sop_instance_uid)
                continue
            except TranscodeError as exc:
                # Headers are sent: all we can do is end the body early.
                log.error("WADO-RS: %s: %s; aborting the response", ref.sop_instance_uid,
                          exc.reason)
                raise
            yield _part_head(boundary, content_type)
            yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")


def _transcoded(ref: InstanceRef, ts: str, facts: dict[str, PixelFacts]) -> bytes:
    """The Part 10 bytes of ``ref`` in the syntax the plan chose for it."""
    return outgoing(ref, [ts], facts.get(ref.sop_instance_uid)).part10()


def _retrieve(request: Request, study: str, series_uid: str | None = None,
              sop: str | None = None) -> Response:
    node = _node(request)
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid, SOPInstanceUID=sop)
    refs = locate(node, study, series_uid, sop)
    if not refs:
        raise _missing(node, study, series_uid, sop)
    plan, single, facts = _plan(node, refs, accept_of(request), sop is not None)
    if sop is not None and not refs[0].path.is_file():
        raise NotFound(f"instance {sop} is indexed but its file is missing "
                       "(pacsnode check --repair mends this)")
    if single:
        ref, ts = plan[0]
        media = f"application/dicom; transfer-syntax={ts}"
        if ts == ref.transfer_syntax:
            return FileResponse(ref.path, media_type=media)
        return Response(_transcoded(ref, ts, facts), media_type=media)
    if sop is not None:
        # One instance: transcode before the status line so a failure is a 406.
        ref, ts = plan[0]
        if ts != ref.transfer_syntax:
            data = _transcoded(ref, ts, facts)
            boundary = new_boundary()
            body = (_part_head(boundary, f"application/dicom; transfer-syntax={ts}") + data
                    + f"\r\n--{boundary}--\r\n".encode("latin-1"))
            return Response(body, media_type=_multipart_type("application/dicom", boundary))
    boundary = new_boundary()
    if len(plan) <= SNAPSHOT_FILES and all(ts == ref.transfer_syntax for ref, ts in plan):
        return _SnapshotResponse(_Snapshot.open(plan, boundary),
                                 _multipart_type("application/dicom", boundary))
    return StreamingResponse(_coalesce(_instance_parts(plan, boundary, facts)),
                             media_type=_multipart_type("application/dicom", boundary))


class _Snapshot:
    """A multipart body of stored files sent as they are, each opened when
    the request is answered (so the body is the series as it was then: a
    file deleted meanwhile is still read through its open descriptor), and
    so of known length.  With a Content-Length the server writes each piece
    as it is instead of copying it into a chunk of chunked encoding, and the
    pieces are memory maps of the files: the socket write is the one copy of
    every byte in this process (file chunks read, joined into blocks and
    then into chunks were three more)."""

    def __init__(self, parts: list[tuple[bytes, BinaryIO, int]], tail: bytes) -> None:
        self.parts = parts
        self.tail = tail
        self.length = sum(len(head) + size + 2 for head, _, size in parts) + len(tail)

    @classmethod
    def open(cls, plan: list[tuple[InstanceRef, str]], boundary: str) -> "_Snapshot":
        parts: list[tuple[bytes, BinaryIO, int]] = []
        try:
            for ref, ts in plan:
                try:
                    fh = open(ref.path, "rb")
                except OSError as exc:  # deleted since it was located
                    log.warning("WADO-RS: skipping %s: %s", ref.sop_instance_uid, exc)
                    continue
                try:
                    size = os.fstat(fh.fileno()).st_size
                except BaseException:
                    fh.close()
                    raise
                parts.append((_part_head(boundary, f"application/dicom; transfer-syntax={ts}"),
                              fh, size))
        except BaseException:
            for _, opened, _ in parts:
                opened.close()
            raise
        return cls(parts, f"--{boundary}--\r\n".encode("latin-1"))

    def blocks(self, size: int = YIELD_BYTES) -> Iterator[list[_Piece]]:
        """The body in blocks of about ``size`` bytes (the first one smaller,
        to start sending sooner), each a list of pieces: part heads, and
        memoryviews of the files' memory maps that the server's socket
        writes copy from straight (no copy of ours: joining the files into
        blocks took ~28 ms of CPU for a 50-instance CT series here, against
        ~23 now, and ~900 MB/s against ~1,150).  Made on a worker thread
        (``_read_ahead``), which pages each map in, so that the writes on the
        event loop do not wait for the disk.  A map is unmapped when the last
        view of it is gone (the server may hold one until it is written)."""
        pending: list[_Piece] = []
        held = 0
        first, size = size, FIRST_BLOCK
        separator = b""
        try:
            for head, fh, length in self.parts:
                pending.append(separator + head)
                separator = b"\r\n"
                with fh:
                    if length:
                        mapped = mmap.mmap(fh.fileno(), length, access=mmap.ACCESS_READ)
                        _page_in(mapped)
                        pending.append(memoryview(mapped))
                held += len(head) + length + 2
                if held >= size:
                    yield pending
                    pending, held, size = [], 0, first
            pending.append(separator + self.tail)
            yield pending
        finally:  # (the last list is the loop's now: not to be cleared here)
            for _, fh, _ in self.parts:
                fh.close()


class _SnapshotResponse(StreamingResponse):
    """A snapshot's body: where the server takes file bodies
    (``zerocopy.ZEROCOPYSEND``, as ``pacsnode serve`` runs it), each file
    goes by sendfile(2) between its part head and CRLF, and the process
    never touches its bytes (a 50-instance CT series: ~1.9 GB/s against
    ~1.2, see docs/ARCHITECTURE.md); elsewhere (another server, a test
    client) the memory-mapped blocks of ``_Snapshot.blocks``."""

    def __init__(self, snapshot: _Snapshot, media_type: str) -> None:
        self.snapshot = snapshot
        self.blocks = _read_ahead(snapshot.blocks())
        super().__init__(self.blocks, media_type=media_type,
                         headers={"Content-Length": str(snapshot.length)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if ZEROCOPYSEND not in scope.get("extensions", {}):
            await super().__call__(scope, receive, send)
            return
        await self.blocks.aclose()  # not started: nothing to wait for
        parts, tail = self.snapshot.parts, self.snapshot.tail
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            separator = b""
            for head, fh, size in parts:
                await send({"type": "http.response.body", "body": separator + head,
                            "more_body": True})
                separator = b"\r\n"
                await send({"type": ZEROCOPYSEND, "file": fh, "offset": 0, "count": size,
                            "more_body": True})
            await send({"type": "http.response.body", "body": separator + tail,
                        "more_body": False})
        finally:
            for _, fh, _ in parts:
                fh.close()


#: madvise(MADV_POPULATE_READ) (Linux 5.14): fault a map's pages in now.
#: Python's mmap module has no name for it; older kernels refuse it, and
#: MADV_WILLNEED (start reading, do not wait) is what is left.
_POPULATE_READ = 22 if os.uname().sysname == "Linux" else None


def _page_in(mapped: mmap.mmap) -> None:
    global _POPULATE_READ
    if _POPULATE_READ is not None:
        try:
            mapped.madvise(_POPULATE_READ)
            return
        except OSError:
            _POPULATE_READ = None
    try:
        mapped.madvise(mmap.MADV_WILLNEED)
    except (AttributeError, OSError):
        pass


async def _read_ahead(blocks: Iterator[list[_Piece]]) -> AsyncGenerator[_Piece, None]:
    """The pieces of a blocking iterator's lists, the next list made on a
    worker thread while the server sends the one before (Starlette makes
    one, then sends it, then makes the next)."""
    loop = asyncio.get_running_loop()
    coming = loop.run_in_executor(None, next, blocks, None)
    try:
        while True:
            block = await coming
            if block is None:
                return
            coming = loop.run_in_executor(None, next, blocks, None)
            for piece in block:
                yield piece
            block = None
    finally:
        try:
            await asyncio.shield(coming)  # a generator cannot be closed while it runs
        except BaseException:
            pass
        try:
            getattr(blocks, "close", lambda: None)()
        except ValueError:  # still running (cancelled twice): the collector closes it
            pass


def _coalesce(pieces: Iterator[bytes], size: int = YIELD_BYTES) -> Iterator[bytes]:
    """Pieces joined into blocks of about ``size`` bytes: Starlette runs each
    step of a sync body iterator on a worker thread (and the server writes
    each step on its own): a step per part head, file chunk and CRLF was
    ~150 of them for a 50-instance CT series."""
    pending: list[bytes] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def _multipart_type(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(request: Request, study: str) -> Response:
    return _retrieve(request, study)


@router.get("/studies/{study}/series/{series_uid}", summary="WADO-RS: retrieve a series")
def retrieve_series(request: Request, study: str, series_uid: str) -> Response:
    return _retrieve(request, study, series_uid)


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}",
            summary="WADO-RS: retrieve an instance")
def retrieve_instance(request: Request, study: str, series_uid: str, sop: str) -> Response:
    return _retrieve(request, study, series_uid, sop)


# -- WADO-RS: metadata (from the index only) --------------------------------------

_BULK_MARK = '"BulkDataURI":"bulk:'


def _metadata(request: Request, study: str, series_uid: str | None = None,
              sop: str | None = None) -> Response:
    node = _node(request)
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid, SOPInstanceUID=sop)
    _accepts_json(request)
    cols = (instances.c.id, instances.c.stored_at, series.c.seriesinstanceuid,
            instances.c.sopinstanceuid)
    order = (instances.c.series_fk, instances.c.instancenumber.is_(None),
             instances.c.instancenumber, instances.c.id)
    uids = dict(study_uid=study, series_uid=series_uid, sop_uid=sop)
    with node.db.read() as conn:
        # Up to METADATA_BATCH instances, their headers come with the first
        # query; more are read in batches while the body streams.
        rows = conn.execute(select_instances(*cols, instances.c.meta_json, **uids)
                            .order_by(*order).limit(METADATA_BATCH + 1)).all()
        if len(rows) > METADATA_BATCH:
            rows = conn.execute(select_instances(*cols, **uids).order_by(*order)).all()
    if not rows:
        raise _missing(node, study, series_uid, sop)
    base = _base(request)
    digest = hashlib.sha256(base.encode())
    for row in rows:
        digest.update(f"{row.id}:{row.stored_at!r};".encode())
    etag = f'"{digest.hexdigest()[:40]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    prefix = {int(r.id): f'"BulkDataURI":"{base}/studies/{study}/series/'
                         f'{r.seriesinstanceuid}/instances/{r.sopinstanceuid}/bulkdata/'
              for r in rows}
    ids = [int(r.id) for r in rows]
    if len(rows) <= METADATA_BATCH:
        texts = [r.meta_json.replace(_BULK_MARK, prefix[int(r.id)]) for r in rows]
        return Response(("[" + ",".join(texts) + "]").encode("utf-8"), media_type=DICOM_JSON,
                        headers=headers)

    def body() -> Iterator[bytes]:
        yield b"["
        first = True
        for i in range(0, len(ids), METADATA_BATCH):
            batch = ids[i:i + METADATA_BATCH]
            with node.db.read() as conn:
                metas = dict(conn.execute(select(instances.c.id, instances.c.meta_json)
                                          .where(instances.c.id.in_(batch))).all())
            for row_id in batch:
                meta = metas.get(row_id)
                if meta is None:
                    continue  # deleted since the first query
                text = meta.replace(_BULK_MARK, prefix[row_id])
                yield (text if first else "," + text).encode("utf-8")
                first = False
        yield b"]"

    return StreamingResponse(body(), media_type=DICOM_JSON, headers=headers)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


@router.get("/studies/{study}/metadata", summary="WADO-RS: study metadata")
async def study_metadata(request: Request, study: str) -> Response:
    return await _metadata_here(request, study)


@router.get("/studies/{study}/series/{series_uid}/metadata", summary="WADO-RS: series metadata")
async def series_metadata(request: Request, study: str, series_uid: str) -> Response:
    return await _metadata_here(request, study, series_uid)


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}/metadata",
            summary="WADO-RS: instance metadata")
async def instance_metadata(request: Request, study: str, series_uid: str,
                            sop: str) -> Response:
    return await _metadata_here(request, study, series_uid, sop)


async def _metadata_here(request: Request, study: str, series_uid: str | None = None,
                         sop: str | None = None) -> Response:
    """``_metadata`` answered on the event loop on SQLite: its one indexed
    read never waits on a writer (WAL) and takes well under a millisecond,
    less than handing the request to a worker thread and back cost (a
    50-instance series' metadata took ~18% less time answered here, A/B
    with fresh servers alternated).  On PostgreSQL the query goes over the
    network: a worker thread."""
    if _node(request).db.is_sqlite:
        return _metadata(request, study, series_uid, sop)
    return await run_in_threadpool(_metadata, request, study, series_uid, sop)


# -- WADO-RS: frames and bulk data -------------------------------------------------

def _one_instance(request: Request, study: str, series_uid: str, sop: str) -> InstanceRef:
    node = _node(request)
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid, SOPInstanceUID=sop)
    refs = locate(node, study, series_uid, sop)
    if not refs:
        raise _missing(node, study, series_uid, sop)
    return refs[0]


def _pixels(ref: InstanceRef) -> PixelInfo:
    try:
        info = pixel_info(ref.path)
    except FileNotFoundError:
        raise NotFound(f"instance {ref.sop_instance_uid} is no longer stored") from None
    if info is None:
        raise NotFound(f"instance {ref.sop_instance_uid} has no pixel data")
    return info


def _frame_numbers(text: str, info: PixelInfo) -> list[int]:
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or len(part) > 10 or int(part) < 1:
            raise PacsnodeError(f"frame numbers are integers from 1 (digits 0-9), "
                                f"not {part[:20]!r}")
        numbers.append(int(part))
    missing = [n for n in numbers if n > info.frames]
    if missing:
        raise NotFound(f"frame {missing[0]} does not exist: the instance has "
                       f"{info.frames} frame(s)")
    return numbers


def _frame_plan(accept: str | None, info: PixelInfo) -> FramePlan:
    """The Accept header's media ranges as (part type, transfer syntax)
    pairs, planned by the reader (``retrieve.frame_plan``)."""
    wanted: list[tuple[str, str | None]] = []
    for mr in parse_accept(accept):
        if mr.type == "multipart/related":
            part = mr.params.get("type", "application/octet-stream").strip().lower()
            wanted.append((part, mr.transfer_syntax))
        elif mr.type in ("*/*", "multipart/*"):
            wanted.append(("application/octet-stream", None))
    plan = frame_plan(wanted, info)
    if plan is None:
        stored = info.transfer_syntax
        raise WebError(406, "cannot provide the frames in any requested media type; stored "
                            f"as {stored}; available: application/octet-stream"
                            + (f", {media_type_for_syntax(stored)}" if info.encapsulated else ""))
    return plan


def _frame_bytes(ref: InstanceRef, info: PixelInfo, plan: FramePlan, index: int) -> bytes:
    return frame_bytes(ref.path, info, plan, index)


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}/frames/{frames}",
            summary="WADO-RS: retrieve frames")
def retrieve_frames(request: Request, study: str, series_uid: str, sop: str,
                    frames: str) -> Response:
    ref = _one_instance(request, study, series_uid, sop)
    info = _pixels(ref)
    numbers = _frame_numbers(frames, info)
    plan = _frame_plan(accept_of(request), info)
    boundary = new_boundary()
    content_type = f"{plan.media_type}; transfer-syntax={plan.transfer_syntax}"
    base = f"{_base(request)}/studies/{study}/series/{series_uid}/instances/{sop}/frames/"
    try:
        first = _frame_bytes(ref, info, plan, numbers[0] - 1)
    except TranscodeError:
        raise
    except Exception:
        log.exception("WADO-RS: frame %d of %s", numbers[0], sop)
        if plan.mode == "encode":
            raise WebError(406, f"frame {numbers[0]} of instance {sop} cannot be encoded as "
                                f"{plan.media_type}; ask for application/octet-stream") from None
        raise WebError(500, f"frame {numbers[0]} of instance {sop} could not be read from "
                            "its stored file (see the node's log)") from None

    def parts() -> Iterator[bytes]:
        for i, number in enumerate(numbers):
            data = first if i == 0 else _frame_bytes(ref, info, plan, number - 1)
            yield _part_head(boundary, content_type, base + str(number))
            yield data
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode("latin-1")

    return StreamingResponse(parts(), media_type=_multipart_type(plan.media_type, boundary))


def _find_element(ds: Dataset, tag: int) -> Any:
    if tag in ds:
        return ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                found = _find_element(item, tag)
                if found is not None:
                    return found
    return None


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}/bulkdata/{tag}",
            summary="WADO-RS: retrieve bulk data named by a BulkDataURI")
def retrieve_bulkdata(request: Request, study: str, series_uid: str, sop: str,
                      tag: str) -> Response:
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise PacsnodeError(f"bulk data is named by an 8-digit hex tag, not {tag[:20]!r}")
    ref = _one_instance(request, study, series_uid, sop)
    number = int(tag, 16)
    accept = parse_accept(accept_of(request))
    single = bool(accept) and accept[0].type == "application/octet-stream"
    if not single and not any(
            mr.type in ("*/*", "multipart/*") or (mr.type == "multipart/related" and
                                                  mr.params.get("type", "application/octet-stream")
                                                  in ("application/octet-stream", "*/*"))
            or mr.type == "application/octet-stream" for mr in accept):
        raise WebError(406, "bulk data is available as multipart/related; "
                            "type=\"application/octet-stream\" or application/octet-stream")
    if number == 0x7FE00010:
        info = _pixels(ref)
        data = b"".join(native_frame(ref.path, info, i) for i in range(info.frames))
    else:
        try:
            ds = dcmread(ref.path, force=True, stop_before_pixels=number < 0x7FE00010)
        except FileNotFoundError:
            raise NotFound(f"instance {sop} is no longer stored") from None
        elem = _find_element(ds, number)
        if elem is None or elem.value is None:
            raise NotFound(f"instance {sop} has no bulk data {tag.upper()}")
        value = elem.value
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
            if ds.file_meta.get("TransferSyntaxUID") == ExplicitVRBigEndian:
                data = little_endian_words(data, elem.VR)
        else:
            raise NotFound(f"{tag.upper()} of instance {sop} is not bulk data")
    if single:
        return Response(data, media_type="application/octet-stream")
    boundary = new_boundary()
    body = (_part_head(boundary, "application/octet-stream") + data
            + f"\r\n--{boundary}--\r\n".encode("latin-1"))
    return Response(body, media_type=_multipart_type("application/octet-stream", boundary))


# -- WADO-RS: rendered and thumbnail ---------------------------------------------
#
# PS3.18 10.4.1 defines rendered resources at study, series, instance and
# frame level, and thumbnails at the same four.  A rendered study or series
# is every image instance of it rendered (its first frame), in
# InstanceNumber order, as a multipart/related body of JPEG or PNG parts;
# an instance or a frame is one image.  A thumbnail is one small image at
# every level: a study's or series' shows its representative instance (the
# middle image of its first series with images).

_RENDERED = ("image/jpeg", "image/png")


def _rendered_media(request: Request, multipart: bool) -> str:
    """The rendered media type to answer in.  A multi-instance resource
    also takes ``multipart/related; type="image/…"``."""
    for mr in parse_accept(accept_of(request)):
        media = mr.type
        if media == "multipart/related" and multipart:
            media = mr.params.get("type", "image/jpeg").strip().lower()
        if media in _RENDERED:
            return media
        if media in ("*/*", "image/*") or (multipart and media == "multipart/*"):
            return "image/jpeg"
    raise WebError(406, "rendered images are available as image/jpeg or image/png"
                        + (" (in multipart/related)" if multipart else ""))


def _render_options(request: Request, multipart: bool = False) -> RenderOptions:
    q = request.query_params
    return RenderOptions(media_type=_rendered_media(request, multipart),
                         window=parse_window(q.get("window")),
                         viewport=parse_viewport(q.get("viewport")),
                         quality=parse_quality(q.get("quality")))


def render_bytes(ref: InstanceRef, frame: int, options: RenderOptions,
                 thumbnail: bool) -> bytes:
    """Frame ``frame`` (from 1) of ``ref`` rendered; a file that cannot be
    decoded is a 406 in plain words (the decoder's message goes to the log)."""
    try:
        return render_frame(ref.path, frame - 1, options, thumbnail=thumbnail)
    except FileNotFoundError:
        raise NotFound(f"instance {ref.sop_instance_uid} is no longer stored") from None
    except PacsnodeError:
        raise
    except Exception:
        log.exception("rendering %s frame %d failed", ref.sop_instance_uid, frame)
        raise WebError(406, f"instance {ref.sop_instance_uid} cannot be rendered: its pixel "
                            "data could not be decoded (see the node's log)") from None


def _render(ref: InstanceRef, frame: int, options: RenderOptions, thumbnail: bool) -> Response:
    return Response(render_bytes(ref, frame, options, thumbnail), media_type=options.media_type)


def _one_frame(ref: InstanceRef, frames: str) -> int:
    numbers = _frame_numbers(frames, _pixels(ref))
    if len(numbers) != 1:
        raise PacsnodeError("render one frame at a time")
    return numbers[0]


def _rendered_one(request: Request, study: str, series_uid: str, sop: str,
                  frames: str | None, thumbnail: bool) -> Response:
    """One frame of an instance rendered (or as a thumbnail): the one
    ``frames`` names, else the first — of an instance that has pixels."""
    ref = _one_instance(request, study, series_uid, sop)
    options = _render_options(request)
    if frames is None:
        _pixels(ref)
        return _render(ref, 1, options, thumbnail)
    return _render(ref, _one_frame(ref, frames), options, thumbnail)


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}/rendered",
            summary="WADO-RS: instance rendered as JPEG/PNG (first frame)")
def rendered_instance(request: Request, study: str, series_uid: str, sop: str) -> Response:
    return _rendered_one(request, study, series_uid, sop, None, thumbnail=False)


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}/frames/{frames}/rendered",
            summary="WADO-RS: one frame rendered as JPEG/PNG")
def rendered_frame(request: Request, study: str, series_uid: str, sop: str,
                   frames: str) -> Response:
    return _rendered_one(request, study, series_uid, sop, frames, thumbnail=False)


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}/thumbnail",
            summary="WADO-RS: instance thumbnail")
def thumbnail_instance(request: Request, study: str, series_uid: str, sop: str) -> Response:
    return _rendered_one(request, study, series_uid, sop, None, thumbnail=True)


@router.get("/studies/{study}/series/{series_uid}/instances/{sop}/frames/{frames}/thumbnail",
            summary="WADO-RS: frame thumbnail")
def thumbnail_frame(request: Request, study: str, series_uid: str, sop: str,
                    frames: str) -> Response:
    return _rendered_one(request, study, series_uid, sop, frames, thumbnail=True)


def _images(request: Request, study: str, series_uid: str | None) -> list[InstanceRef]:
    """The instances with pixel data of a study or series, in InstanceNumber
    order (series by series); 404 when there is none."""
    node = _node(request)
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid)
    refs = locate(node, study, series_uid)
    if not refs:
        raise _missing(node, study, series_uid)
    facts = pixel_facts(node, refs)
    images = [r for r in refs if facts.get(r.sop_instance_uid, PixelFacts(None, False)).has_pixels]
    if not images:
        raise NotFound(f"{'series ' + series_uid if series_uid else 'study ' + study} "
                       "has no image to show")
    return images


def _representative(request: Request, study: str, series_uid: str | None) -> InstanceRef:
    """The middle image (InstanceNumber order) of the first series with images."""
    images = _images(request, study, series_uid)
    first_series = [r for r in images if r.series_uid == images[0].series_uid]
    return first_series[(len(first_series) - 1) // 2]


def _rendered_many(request: Request, study: str, series_uid: str | None) -> Response:
    """Every image of a study or series rendered, one part each.  The first
    is rendered before the status line (so that an image that cannot be
    rendered is a 406); one that fails later is left out and logged."""
    options = _render_options(request, multipart=True)
    images = _images(request, study, series_uid)
    boundary = new_boundary()
    first = render_bytes(images[0], 1, options, False)
    base = _base(request)

    def parts() -> Iterator[bytes]:
        for i, ref in enumerate(images):
            if i == 0:
                data = first
            else:
                try:
                    data = render_bytes(ref, 1, options, False)
                except PacsnodeError as exc:
                    log.warning("rendered %s: leaving out %s: %s", series_uid or study,
                                ref.sop_instance_uid, exc.reason)
                    continue
            location = (f"{base}/studies/{ref.study_uid}/series/{ref.series_uid}"
                        f"/instances/{ref.sop_instance_uid}/rendered")
            yield _part_head(boundary, options.media_type, location) + data + b"\r\n"
        yield f"--{boundary}--\r\n".encode("latin-1")

    return StreamingResponse(parts(), media_type=_multipart_type(options.media_type, boundary))


@router.get("/studies/{study}/rendered", summary="WADO-RS: every image of a study rendered")
def rendered_study(request: Request, study: str) -> Response:
    return _rendered_many(request, study, None)


@router.get("/studies/{study}/series/{series_uid}/rendered",
            summary="WADO-RS: every image of a series rendered")
def rendered_series(request: Request, study: str, series_uid: str) -> Response:
    return _rendered_many(request, study, series_uid)


def _thumbnail_of(request: Request, study: str, series_uid: str | None) -> Response:
    """A study's or series' thumbnail: its representative image's."""
    options = _render_options(request)
    return _render(_representative(request, study, series_uid), 1, options, True)


@router.get("/studies/{study}/thumbnail", summary="WADO-RS: study thumbnail")
def thumbnail_study(request: Request, study: str) -> Response:
    return _thumbnail_of(request, study, None)


@router.get("/studies/{study}/series/{series_uid}/thumbnail", summary="WADO-RS: series thumbnail")
def thumbnail_series(request: Request, study: str, series_uid: str) -> Response:
    return _thumbnail_of(request, study, series_uid)


# -- DELETE -----------------------------------------------------------------------

def _delete(request: Request, study: str, series_uid: str | None = None,
            sop: str | None = None) -> Response:
    node = _node(request)
    _check_uids(StudyInstanceUID=study, SeriesInstanceUID=series_uid, SOPInstanceUID=sop)
    address = request.client.host if request.client else ""
    count = delete_entities(node, study, series_uid, sop, origin=Origin("dicomweb",
                                                                         address=address))
    if count == 0:
        raise _missing(node, study, series_uid, sop)
    return Response(status_code=204)


@router.delete("/studies/{study}", summary="Delete a study", status_code=204)
def delete_study(request: Request, study: str) -> Response:
    return _delete(request, study)


@router.delete("/studies/{study}/series/{series_uid}", summary="Delete a series",
               status_code=204)
def delete_series(request: Request, study: str, series_uid: str) -> Response:
    return _delete(request, study, series_uid)


@router.delete("/studies/{study}/series/{series_uid}/instances/{sop}",
               summary="Delete an instance", status_code=204)
def delete_instance(request: Request, study: str, series_uid: str, sop: str) -> Response:
    return _delete(request, study, series_uid, sop)
