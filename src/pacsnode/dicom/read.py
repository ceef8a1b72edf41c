"""Reading a received or imported instance's header, once: the fast reader
(``fastheader.py``) on the first HEAD_BYTES when it can, pydicom's
(``header.read_header``) otherwise, with the file checked whole
(``wholeness.py``) either way.  ``Ingestor`` calls ``read_instance`` and
validates what it returns."""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from ..errors import InvalidInstance, NotDicom, NotWhole, PacsnodeError
from .fastheader import parse_fast
from .header import (ParsedHeader, describe, describe_json, pixel_data_marker, read_header,
                     sequence_items)
from .uids import file_meta
from .wholeness import Incomplete, check_bare, check_rest, ends_file, file_layout, plausible_start

__all__ = ["read_instance", "NeedsPydicom", "HEAD_BYTES"]

#: Bytes of a file read for the fast header walk (a receiver keeps them as
#: written); a header longer than this (rare) takes pydicom's path.
HEAD_BYTES = 128 * 1024
_ZERO_PREAMBLE_DICM = b"\x00" * 128 + b"DICM"
#: JSON keys of SOP Class, SOP Instance, Study and Series Instance UID.
_UID_KEYS = ("00080016", "00080018", "0020000D", "0020000E")


class NeedsPydicom(Exception):
    """The header needs pydicom's reader (``read_instance(fast_only=True)``)."""


def read_instance(temp: Path, fast_only: bool = False, head: bytes | None = None,
                  size: int = 0, data_set: bool = False) -> tuple[ParsedHeader, int]:
    """The header, read once, and the file's size, once the file is
    known to be whole (``_check_whole``).  ``fast_only``: raise NeedsPydicom
    rather than read it with pydicom.  ``head``: the file's first bytes
    (up to HEAD_BYTES) and ``size`` its length, as the caller wrote
    them — a Part 10 file with a zero preamble is then not read again.
    ``data_set``: the file is a received data set behind a file meta
    header of ours (C-STORE), so a refusal counts bytes from the data
    set's start."""
    if head is not None and head[:132] == _ZERO_PREAMBLE_DICM:
        parsed = _walked(temp, head[:HEAD_BYTES], size, data_set)
        if parsed is not None:
            return parsed, size
    with open(temp, "r+b") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(min(size, HEAD_BYTES))
        is_part10 = len(head) >= 132 and head[128:132] == b"DICM"
        if is_part10 and head[:128] != b"\x00" * 128:
            # The preamble is not trusted (PS3.10 7.5): zero it.
            fh.seek(0)
            fh.write(b"\x00" * 128)
            head = b"\x00" * 128 + head[128:]
        parsed = _walked(temp, head, size, data_set) if is_part10 else None
        if parsed is not None:
            return parsed, size
        if fast_only:
            raise NeedsPydicom()
        _check_whole(fh, size, is_part10, data_set)
        fh.seek(0)
        try:
            ds = read_header(fh)
        except Exception as exc:
            raise InvalidInstance(f"cannot understand the data: {exc}") from exc
        # stop_before_pixels leaves the file position at Pixel Data.
        has_pixels = fh.tell() < size
    if getattr(ds, "file_meta", {}).get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99":
        # Deflated: the position is the end of the compressed stream.
        has_pixels = "PixelData" in dcmread(temp, force=True, specific_tags=["PixelData"])
    if not is_part10 or "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds = _rewrite_as_part10(temp)
        size = temp.stat().st_size
        has_pixels = "PixelData" in dcmread(temp, force=True, specific_tags=["PixelData"])
    if "SOPInstanceUID" not in ds:
        raise InvalidInstance("cannot understand the data: SOP Instance UID is missing")
    try:
        return describe(ds, has_pixels), size
    except Exception as exc:
        raise InvalidInstance(f"cannot understand the data: {exc}") from exc

def _walked(temp: Path, head: bytes, size: int, data_set: bool) -> ParsedHeader | None:
    """The header read by the fast reader from the first bytes of a Part
    10 file of ``size`` bytes, the rest of the file checked whole; None
    when it takes pydicom's path (a UID the JSON model left out, invalid
    or missing, is named by pydicom's)."""
    fast = parse_fast(head, complete=len(head) == size)
    if fast is None or not all(key in fast.body for key in _UID_KEYS):
        return None
    has_pixels = fast.stop < size
    if has_pixels and not ends_file(head, fast.start, fast.stop, size,
                                    fast.transfer_syntax):
        # What the fast reader walked is whole; the rest (encapsulated
        # Pixel Data, elements after it, a length that does not fit)
        # is walked here.
        _check_rest(temp, head, size, fast.start, fast.stop, fast.transfer_syntax,
                    data_set)
    body = fast.body
    if has_pixels:
        body["7FE00010"] = pixel_data_marker(body)
    try:
        return describe_json(body, fast.meta, has_pixels,
                             lambda: sequence_items(read_header(temp)))
    except Exception as exc:
        raise InvalidInstance(f"cannot understand the data: {exc}") from exc

def _rewrite_as_part10(temp: Path) -> Dataset:
    """A data set without file meta (e.g. a raw ACR-NEMA style file): read
    it whole and write it back as Part 10, Explicit VR Little Endian."""
    try:
        ds = dcmread(temp, force=True)
    except Exception as exc:
        raise NotDicom(detail=_plain(exc)) from exc
    for name in ("SOPClassUID", "SOPInstanceUID"):
        if name not in ds:
            label = "SOP Class UID" if name == "SOPClassUID" else "SOP Instance UID"
            raise InvalidInstance(f"cannot understand the data: {label} is missing")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID,
                              ts or ExplicitVRLittleEndian)
    dcmwrite(temp, ds, enforce_file_format=True)
    return read_header(temp)


def _plain(exc: BaseException) -> str:
    """An exception's message without Python's internals (its class, a
    repr): for a reason that a sender reads."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text[:200]


def _refusal(exc: Incomplete, data: Any, start: int, is_part10: bool,
             data_set: bool) -> PacsnodeError:
    """A walk's failure as the sender's reason: NotDicom when even the first
    element does not read as one (the one place for those words), else
    NotWhole naming the byte (of the data set, for a C-STORE)."""
    if exc.elements == 0 and exc.offset == start and not plausible_start(data, start):
        return NotDicom(NotDicom.DATA_SET if is_part10 or data_set else NotDicom.FILE)
    if data_set:
        return NotWhole(exc.describe(start, " of the data set"))
    return NotWhole(exc.describe())


def _check_whole(fh: BinaryIO, size: int, is_part10: bool, data_set: bool) -> None:
    """Walk a whole file (the path of headers the fast reader leaves to
    pydicom): refuse it unless every declared length fits and it ends on an
    element boundary."""
    if size == 0:
        raise NotDicom(detail="the file is empty")
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = 0
        try:
            if is_part10:
                layout = file_layout(data)
                start = layout.start
                if start == size:
                    raise NotDicom(NotDicom.EMPTY)
                check_rest(data, start, start, layout.transfer_syntax)
            else:
                check_bare(data)
        except Incomplete as exc:
            raise _refusal(exc, data, start, is_part10, data_set) from None


def _check_rest(temp: Path, head: bytes, size: int, start: int, pos: int,
                transfer_syntax: str | None, data_set: bool) -> None:
    """Walk a Part 10 file's top level data set from the element boundary
    ``pos`` (its first bytes ``head``; the rest mapped when the file is
    longer)."""
    try:
        if len(head) == size:
            check_rest(head, start, pos, transfer_syntax)
            return
        with open(temp, "rb") as fh, \
                mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            check_rest(data, start, pos, transfer_syntax)
    except Incomplete as exc:
        raise _refusal(exc, head, start, True, data_set) from None
