"""``GET /api/v1/studies/{study}/archive``: a study as a ZIP of its files,
``<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, streamed.

The ZIP is written as it is sent (entries with data descriptors, ZIP64
where sizes need it, stored rather than deflated: DICOM pixel data gains
little and the CPU is better spent elsewhere), a block at a time, so a
2 GB study costs the memory of one block.  Files go out as stored, through
the one reader (``retrieve.outgoing`` with ``AS_STORED``).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from ..dicom.header import valid_uid
from ..errors import BadQuery, NotFound
from ..node import Node
from ..retrieve import AS_STORED, InstanceRef, locate, outgoing

__all__ = ["router", "zip_stream"]

log = logging.getLogger("pacsnode.web.archive_zip")

router = APIRouter(prefix="/api/v1", tags=["archive"])

#: Bytes read from a file at a time, and about the most held before they
#: are handed to the server.
BLOCK = 1 << 20


class _Sink:
    """A write-only, unseekable file for ``zipfile`` whose bytes are taken
    away after each block (``zipfile`` then writes data descriptors)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> int:
        self.pieces.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.pieces)
        self.pieces.clear()
        return data


def zip_stream(refs: list[InstanceRef]) -> Iterator[bytes]:
    """The ZIP of ``refs``, block by block.  A file deleted since it was
    located is left out (and logged)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED,
                         allowZip64=True) as archive:
        for ref in refs:
            out = outgoing(ref, [AS_STORED])
            try:
                fh = open(out.path, "rb")
            except OSError as exc:
                log.warning("ZIP of study %s: leaving out %s: %s", ref.study_uid,
                            ref.sop_instance_uid, exc)
                continue
            info = zipfile.ZipInfo(f"{ref.series_uid}/{ref.sop_instance_uid}.dcm")
            info.compress_type = zipfile.ZIP_STORED
            with fh, archive.open(info, "w", force_zip64=ref.size >= 1 << 31) as entry:
                while block := fh.read(BLOCK):
                    entry.write(block)
                    if sink.size >= BLOCK:
                        sink.size = 0
                        yield sink.take()
    yield sink.take()


@router.get("/studies/{study}/archive", summary="The study's files as a ZIP (streamed)",
            response_class=Response,
            responses={200: {"content": {"application/zip": {}},
                             "description": "<SeriesInstanceUID>/<SOPInstanceUID>.dcm"},
                       400: {"description": "the study UID is malformed"},
                       404: {"description": "no such study"}})
def study_archive(request: Request, study: str) -> Response:
    if not valid_uid(study):
        raise BadQuery(f"StudyInstanceUID {study[:80]!r} is not a valid UID "
                       "(1-64 characters of digits and dots)")
    node: Node = request.app.state.node
    refs = locate(node, study)
    if not refs:
        raise NotFound(f"study {study} is not in the archive")
    return StreamingResponse(zip_stream(refs), media_type="application/zip",
                             headers={"Content-Disposition":
                                      f'attachment; filename="{study}.zip"'})
