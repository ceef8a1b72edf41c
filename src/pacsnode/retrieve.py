"""What leaves the node, and in which transfer syntax: C-GET and C-MOVE
sub-operations, WADO-RS and WADO-URI instances, export and the study ZIP
locate the stored instances here and take their bytes from ``outgoing`` —
the stored file unchanged or transcoded; WADO-RS frames and pixel bulk data
take theirs from ``frame_plan`` / ``frame_bytes``.  The adapters then send
those bytes themselves (the DIMSE handlers stream the file a block at a
time; WADO-RS sends a stored file by sendfile, ``web/zerocopy.py``).  Two
readers go around this module on purpose: rendered images decode single
frames through ``transcode.py`` (``web/render.py``), and the anonymized
export reads the stored file with pydicom to rewrite it.

* locating: ``locate`` / ``locate_query`` turn UIDs or a C-MOVE/C-GET
  identifier into stored instances (``InstanceRef``);
* choosing: ``choose_syntax`` picks the transfer syntax a peer gets from
  what it accepts (the presentation contexts it accepted for the SOP class,
  or the transfer syntaxes of a WADO-RS Accept header);
* sending: ``outgoing`` is the one function that picks the syntax and
  transcodes (through the codec layer, ``pacsnode.transcode``), and
  ``Outgoing`` is what is sent: the stored file unchanged, or the
  transcoded Part 10 bytes, with where the data set starts in them;
* frames: ``frame_plan`` picks the media type and syntax of WADO-RS
  frames and pixel bulk data from what the client accepts, and
  ``frame_bytes`` produces one frame that way;
* negotiating: ``sending_syntax`` (the syntax we accept for a storage
  context on which we send, C-GET) and ``store_contexts`` (what we propose
  for a C-MOVE's sub-operations).

The policy (docs/CONFORMANCE.md, "Transfer syntaxes"): the stored bytes go
out unchanged whenever the peer accepted the stored syntax; otherwise the
first syntax the peer accepted that we can produce losslessly; a lossy
syntax only when the peer accepted nothing else for the instance.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import Select, select

from .dicom.catalogue import Level
from .dicom.filemeta import TRANSFER_SYNTAX, read_meta
from .index.schema import instances, series, studies
from .node import Node
from .query.model import Query
from .query.sql import compile_query
from .transcode import (FRAME_MEDIA_TYPES, LOSSY_PRODUCED, PRODUCIBLE, UNCOMPRESSED,
                        PixelInfo, TranscodeError, can_transcode, encode_frame,
                        media_type_for_syntax, native_frame, stored_frame, transcode_file)

if TYPE_CHECKING:
    from .dimse.acse import Context

__all__ = ["InstanceRef", "locate", "locate_query", "select_instances", "PixelFacts",
           "pixel_facts", "AS_STORED", "choose_syntax", "Outgoing", "outgoing",
           "dataset_offset", "meta_end", "sending_syntax", "store_contexts", "FramePlan",
           "frame_plan", "frame_bytes"]

@dataclass(frozen=True)
class InstanceRef:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    path: Path
    size: int
    instance_number: int | None
    bits_allocated: int | None = None


_COLUMNS = (instances.c.sopclassuid, instances.c.sopinstanceuid, studies.c.studyinstanceuid,
            series.c.seriesinstanceuid, instances.c.transfer_syntax, instances.c.blob_key,
            instances.c.size, instances.c.instancenumber, instances.c.bitsallocated)


def _refs(node: Node, stmt: Select[Any]) -> list[InstanceRef]:
    with node.db.read() as conn:
        rows = conn.execute(stmt).all()
    return [InstanceRef(r[0], r[1], r[2], r[3], r[4], node.store.path(r[5]), int(r[6]), r[7],
                        r[8]) for r in rows]


def _ordered(stmt: Select[Any]) -> Select[Any]:
    return stmt.order_by(instances.c.study_fk, instances.c.series_fk,
                         instances.c.instancenumber.is_(None), instances.c.instancenumber,
                         instances.c.id)


def select_instances(*cols: Any, study_uid: str | None = None, series_uid: str | None = None,
                     sop_uid: str | None = None) -> Select[Any]:
    """SELECT ``cols`` over the instances of a study / series / instance
    (instances joined with their series and study)."""
    stmt = select(*cols).select_from(instances) \
        .join(series, series.c.id == instances.c.series_fk) \
        .join(studies, studies.c.id == instances.c.study_fk)
    if study_uid:
        stmt = stmt.where(studies.c.studyinstanceuid == study_uid)
    if series_uid:
        stmt = stmt.where(series.c.seriesinstanceuid == series_uid)
    if sop_uid:
        stmt = stmt.where(instances.c.sopinstanceuid == sop_uid)
    return stmt


def locate(node: Node, study_uid: str | None = None, series_uid: str | None = None,
           sop_uid: str | None = None) -> list[InstanceRef]:
    """Stored instances of a study / series / instance, in InstanceNumber order."""
    return _refs(node, _ordered(select_instances(*_COLUMNS, study_uid=study_uid,
                                                 series_uid=series_uid, sop_uid=sop_uid)))


def locate_query(node: Node, query: Query) -> list[InstanceRef]:
    """Instances under every entity a (C-MOVE/C-GET) identifier matches."""
    image_query = Query(Level.IMAGE, list(query.constraints))
    return _refs(node, _ordered(compile_query(image_query, *_COLUMNS)))


@dataclass(frozen=True)
class PixelFacts:
    """What choosing a syntax needs to know of an instance beyond its ref."""

    bits_allocated: int | None
    has_pixels: bool


def pixel_facts(node: Node, refs: list[InstanceRef]) -> dict[str, PixelFacts]:
    """PixelFacts by SOP Instance UID, from the index (no file read)."""
    out: dict[str, PixelFacts] = {}
    uids = [r.sop_instance_uid for r in refs]
    with node.db.read() as conn:
        for i in range(0, len(uids), 500):
            for uid, bits, pixels in conn.execute(
                    select(instances.c.sopinstanceuid, instances.c.bitsallocated,
                           instances.c.meta_json.contains('"7FE00010"'))
                    .where(instances.c.sopinstanceuid.in_(uids[i:i + 500]))).all():
                out[uid] = PixelFacts(bits, bool(pixels))
    return out


# -- choosing the transfer syntax ------------------------------------------------

#: In an accepted list: "whatever it is stored in" (WADO-RS transfer-syntax=*).
AS_STORED = "*"


def choose_syntax(ref: InstanceRef, accepted: Iterable[str],
                  facts: PixelFacts | None = None) -> str | None:
    """The transfer syntax ``ref`` goes out in to a peer that accepts
    ``accepted`` (its order: the peer's preference), or None when we cannot
    give it any of them.

    1. The stored syntax, when accepted: the stored bytes go out unchanged.
    2. Else the first accepted syntax we can produce without loss.
    3. Else the first accepted lossy syntax we can produce (JPEG Baseline
       from 8-bit data): the peer accepted only lossy syntaxes for it.

    A data set without Pixel Data asked for in a compressed syntax goes in
    Explicit VR Little Endian (the compressed syntaxes only concern pixel
    data).  Decided from index facts only: no file is read."""
    stored = ref.transfer_syntax
    accepted = list(accepted)
    if stored in accepted or AS_STORED in accepted:
        return stored
    bits = facts.bits_allocated if facts else ref.bits_allocated
    pixels = facts.has_pixels if facts else True
    lossy: str | None = None
    for ts in accepted:
        if not can_transcode(stored, ts, bits_allocated=bits, has_pixels=pixels):
            continue
        if not pixels and ts not in UNCOMPRESSED:
            return ExplicitVRLittleEndian
        if ts not in LOSSY_PRODUCED:
            return ts
        lossy = lossy or ts
    return lossy


# -- what is sent -----------------------------------------------------------------

@dataclass
class Outgoing:
    """An instance on its way out, in ``transfer_syntax``: the stored file
    as it is (``data`` None), or transcoded Part 10 bytes.  ``offset`` is
    where its data set starts (after the File Meta Information) in the file
    or in ``data``; -1 for a stored file: found when it is first read, so
    that a file sent as stored costs no read here."""

    ref: InstanceRef
    transfer_syntax: str
    data: bytes | None = None
    offset: int = -1

    @property
    def path(self) -> Path:
        return self.ref.path

    def part10(self) -> bytes:
        """The whole Part 10 file (a transcoded WADO-RS part)."""
        if self.data is not None:
            return self.data
        return self.ref.path.read_bytes()

    def write_part10(self, fh: BinaryIO) -> None:
        """The Part 10 file into ``fh`` (export), the stored one a block at a time."""
        if self.data is not None:
            fh.write(self.data)
            return
        with open(self.ref.path, "rb") as blob:
            shutil.copyfileobj(blob, fh, 1 << 20)


def outgoing(ref: InstanceRef, accepted: Iterable[str],
             facts: PixelFacts | None = None) -> Outgoing:
    """The one function that picks the syntax an instance goes out in and
    transcodes it: C-GET and C-MOVE sub-operations (``accepted``: the
    syntaxes of the contexts the peer accepted for its SOP class), WADO-RS
    (the Accept header's), export (``[AS_STORED]``).  Reads nothing when the
    stored syntax is accepted; otherwise reads and re-encodes the file
    (call it from a worker thread then).  Raises TranscodeError when the
    peer accepted nothing we can give it, FileNotFoundError when the file
    is gone."""
    accepted = list(accepted)
    ts = choose_syntax(ref, accepted, facts)
    if ts is None:
        raise TranscodeError(
            f"{ref.sop_instance_uid} is stored as {UID(ref.transfer_syntax).name}; none of "
            f"{', '.join(UID(t).name for t in accepted) or 'no syntax'} can be produced "
            "from it")
    if ts == ref.transfer_syntax:
        return Outgoing(ref, ts)
    data = transcode_file(ref.path, ts)
    return Outgoing(ref, ts, data, meta_end(data, ref.path)[0])


# -- frames (WADO-RS frames and pixel bulk data) ----------------------------------------

#: The syntax a frame is encoded into for a compressed media type it is not
#: stored in.
FRAME_ENCODE = {"image/jp2": "1.2.840.10008.1.2.4.90",
                "image/x-dicom-rle": "1.2.840.10008.1.2.5",
                "image/jpeg": "1.2.840.10008.1.2.4.50"}

_OCTETS = ("application/octet-stream", "*/*", "application/*")


@dataclass(frozen=True)
class FramePlan:
    """How frames go out: ``mode`` "native" (uncompressed little endian
    bytes), "stored" (the compressed frame as stored) or "encode"
    (re-encoded into ``transfer_syntax``)."""

    mode: str
    media_type: str
    transfer_syntax: str


def frame_plan(accepted: Iterable[tuple[str, str | None]], info: PixelInfo) -> FramePlan | None:
    """The first of ``accepted`` — (part media type, transfer-syntax
    parameter or None), the client's preference order — that we can give
    the frames of ``info`` in; None when none.  ``*`` as transfer syntax
    means "as stored"."""
    stored = info.transfer_syntax
    native = FramePlan("native", "application/octet-stream", ExplicitVRLittleEndian)
    as_stored = FramePlan("stored", media_type_for_syntax(stored), stored)
    for part, ts in accepted:
        if part in _OCTETS:
            if ts == AS_STORED and info.encapsulated:
                return as_stored
            if ts in (None, AS_STORED, ExplicitVRLittleEndian):
                return native
            continue
        if part == "image/*" and ts in (None, AS_STORED) and info.encapsulated:
            return as_stored
        syntaxes = FRAME_MEDIA_TYPES.get(part)
        if syntaxes is None or (ts not in (None, AS_STORED) and ts not in syntaxes):
            continue
        if stored in syntaxes and ts in (None, AS_STORED, stored):
            return FramePlan("stored", part, stored)
        target = ts if ts not in (None, AS_STORED) else FRAME_ENCODE.get(part)
        if target and can_transcode(ExplicitVRLittleEndian, target,
                                    bits_allocated=info.bits_allocated) \
                and UID(target).is_compressed:
            return FramePlan("encode", part, target)
    return None


def frame_bytes(path: Path, info: PixelInfo, plan: FramePlan, index: int) -> bytes:
    """Frame ``index`` (0-based) as ``plan`` says."""
    if plan.mode == "stored":
        return stored_frame(path, info, index)
    if plan.mode == "encode":
        return encode_frame(path, info, index, plan.transfer_syntax)
    return native_frame(path, info, index)


# -- the Part 10 layout --------------------------------------------------------------

def dataset_offset(path: Path) -> tuple[int, str]:
    """Where the data set of a Part 10 file starts (after the File Meta
    Information, which is always Explicit VR Little Endian) and its transfer
    syntax.  Does not trust the group length."""
    with open(path, "rb") as fh:
        return meta_end(fh.read(65536), path)


def meta_end(head: bytes | memoryview, path: Path) -> tuple[int, str]:
    """``dataset_offset`` of the file whose first bytes are ``head``."""
    offset, values = read_meta(head, path)
    syntax = values.get(TRANSFER_SYNTAX)
    if not syntax:
        raise ValueError(f"{path} has no Transfer Syntax UID in its file meta")
    return offset, syntax


# -- DIMSE negotiation ---------------------------------------------------------------

def sending_syntax(proposed: Sequence[str], storable: Iterable[str]) -> str | None:
    """The transfer syntax we accept for a storage presentation context on
    which we are the one sending (a C-GET SCU's context with the SCP role
    for itself), from the syntaxes the peer ``proposed`` in its order of
    preference.  We do not know yet what will be sent on it, so:

    * the peer's first choice among the syntaxes we can produce
      (``PRODUCIBLE``), so that instances stored in it go as stored and
      the others are transcoded into it — except that Explicit VR Little
      Endian is taken over Implicit VR Little Endian when both are offered;
    * else the peer's first choice among ``storable`` (the syntaxes we
      store as received): only instances stored in it can go;
    * None when neither."""
    proposed = [str(ts) for ts in proposed]
    producible = [ts for ts in proposed if ts in PRODUCIBLE]
    if producible:
        first = producible[0]
        if first == ImplicitVRLittleEndian and ExplicitVRLittleEndian in producible:
            return ExplicitVRLittleEndian
        return first
    storable = set(storable)
    return next((ts for ts in proposed if ts in storable), None)


def store_contexts(refs: list[InstanceRef]) -> list[Context]:
    """Presentation contexts for sending these instances to a C-MOVE
    destination: the one builder, ``dimse.contexts.storage_contexts``, over
    their (SOP class, stored syntax) pairs."""
    from .dimse.contexts import storage_contexts
    return storage_contexts((ref.sop_class_uid, ref.transfer_syntax) for ref in refs)
