"""What the file tools share: reading a file that may not be DICOM, naming an
attribute on the command line, and writing a file atomically."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from ..dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["ToolError", "NotDicomError", "read_dicom", "parse_tag", "TagMask",
           "parse_tag_mask", "write_atomic", "tag_text", "IMPLEMENTATION_CLASS_UID",
           "IMPLEMENTATION_VERSION_NAME", "UNKNOWN_SOP_CLASS_UID", "file_meta_for"]

#: Written as MediaStorageSOPClassUID when a data set names no SOP Class
#: (DCMTK's dump2dcm does the same with its own private UID).
UNKNOWN_SOP_CLASS_UID = IMPLEMENTATION_CLASS_UID + ".1.1"


class ToolError(Exception):
    """A problem to report to the user in one sentence; nothing was written."""


class NotDicomError(ToolError):
    """The file is not a DICOM file (or data set) at all."""


def _plausible(ds: Dataset) -> bool:
    """A data set read with ``force=True`` from a file without the ``DICM``
    prefix: do its first elements look like DICOM, not like text or JPEG?
    Real data sets start with a low group (0002, 0008 …) and their first
    elements are in the dictionary."""
    tags = list(ds.keys())[:5]
    if not tags or tags[0].group > 0x0028:
        return False
    known = 0
    for tag in tags:
        if tag.element == 0 or tag.is_private:
            continue
        if tag.group == 0x0002 or dictionary_has_tag(tag) or keyword_for_tag(tag):
            known += 1
            continue
        return False
    return known > 0


def read_dicom(path: str | os.PathLike[str], *, stop_before_pixels: bool = False) -> FileDataset:
    """Read a Part 10 file, or a bare data set without preamble or meta header.

    Raises :class:`NotDicomError` naming what is wrong when the file is not
    DICOM, and :class:`ToolError` when it cannot be read at all."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ToolError(f"{p}: no such file") from None
    except OSError as exc:
        raise ToolError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if p.is_dir():
        raise ToolError(f"{p}: is a folder, not a file")
    if size == 0:
        raise NotDicomError(f"{p}: not a DICOM file: the file is empty")
    with p.open("rb") as fh:
        head = fh.read(132)
    has_prefix = len(head) >= 132 and head[128:132] == b"DICM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(p, force=True, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError,
            NotImplementedError, OverflowError, IndexError) as exc:
        if not has_prefix:
            raise NotDicomError(f"{p}: not a DICOM file (no 'DICM' prefix and the content "
                                f"does not parse as a data set: {exc})") from None
        raise ToolError(f"{p}: damaged DICOM file: {exc}") from None
    except Exception as exc:  # pydicom raises a wide range on garbage input
        if not has_prefix:
            raise NotDicomError(f"{p}: not a DICOM file (no 'DICM' prefix and the content "
                                f"does not parse as a data set)") from None
        raise ToolError(f"{p}: damaged DICOM file: {exc}") from None
    if not has_prefix and not _plausible(ds):
        raise NotDicomError(f"{p}: not a DICOM file (no 'DICM' prefix, and the first bytes "
                            "are not DICOM data elements)")
    return ds


_TAG_RE = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_HEX8_RE = re.compile(r"^(?:0x)?([0-9A-Fa-f]{8})$")


def parse_tag(key: str) -> BaseTag:
    """A tag from a keyword (``PatientName``), ``(gggg,eeee)``, ``gggg,eeee``
    or ``ggggeeee``."""
    text = key.strip()
    m = _TAG_RE.match(text)
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    m = _HEX8_RE.match(text)
    if m:
        return Tag(int(m.group(1), 16))
    tag = tag_for_keyword(text)
    if tag is None:
        raise ToolError(f"unknown attribute {key!r}: give a DICOM keyword "
                        "(e.g. PatientName) or a tag as (gggg,eeee)")
    return Tag(tag)


@dataclass(frozen=True)
class TagMask:
    """A tag pattern: ``value`` where the bits of ``mask`` are set.  ``(60xx,3000)``
    has mask ``0xFF00FFFF``."""

    value: int
    mask: int = 0xFFFFFFFF

    def matches(self, tag: int) -> bool:
        return (int(tag) & self.mask) == self.value


_MASK_RE = re.compile(r"^\(?\s*([0-9A-Fa-fXx]{4})\s*,\s*([0-9A-Fa-fXx]{4})\s*\)?$")


def parse_tag_mask(key: str) -> TagMask:
    """Like :func:`parse_tag`, and ``x`` digits match anything: ``(0009,xxxx)``."""
    m = _MASK_RE.match(key.strip())
    if m and "x" in (m.group(1) + m.group(2)).lower():
        digits = (m.group(1) + m.group(2)).lower()
        value = int(digits.replace("x", "0"), 16)
        mask = int("".join("0" if c == "x" else "f" for c in digits), 16)
        return TagMask(value, mask)
    return TagMask(int(parse_tag(key)))


def tag_text(tag: int) -> str:
    """``(gggg,eeee)`` in lower case, as dcmdump prints it."""
    t = int(tag)
    return f"({t >> 16:04x},{t & 0xFFFF:04x})"


def file_meta_for(ds: Dataset, transfer_syntax: str,
                  base: FileMetaDataset | None = None) -> FileMetaDataset:
    """A complete File Meta Information group (PS3.10 7.1) for ``ds``.

    MediaStorageSOPClass/InstanceUID come from the data set when it has them,
    else from ``base``, else the "unknown SOP class" UID and a new UID."""
    meta = FileMetaDataset()
    if base is not None:
        for elem in base:
            if elem.tag != 0x00020000:
                meta.add(elem)
    meta.FileMetaInformationVersion = b"\x00\x01"
    sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") \
        or UNKNOWN_SOP_CLASS_UID
    sop_instance = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") \
        or pydicom.uid.generate_uid(prefix=None)
    meta.MediaStorageSOPClassUID = UID(str(sop_class))
    meta.MediaStorageSOPInstanceUID = UID(str(sop_instance))
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(ds: Dataset, path: str | os.PathLike[str], *, backup: bool = False,
                 enforce_file_format: bool = True) -> None:
    """Write ``ds`` to ``path`` through a temporary file in the same folder,
    flushed to disk and renamed over the target; with ``backup`` the old file
    is kept as ``path.bak`` first."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=enforce_file_format)
            fh.flush()
            os.fsync(fh.fileno())
        if backup and target.exists():
            shutil.copy2(target, target.with_name(target.name + ".bak"))
        if target.exists():
            shutil.copymode(target, tmp_name)
        else:
            os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
