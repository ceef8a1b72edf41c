"""``pacsnode modify``: change, insert and erase attributes in place (what
DCMTK's ``dcmodify`` does).

An attribute is named by keyword or tag, and attributes inside sequence
items by a path: ``ReferencedSeriesSequence[0].SeriesInstanceUID`` or
``(0008,1115)[0].(0020,000e)``; ``[*]`` stands for every item.

- ``modify`` (``-m``) changes an attribute that is there, and fails if it is not;
- ``insert`` (``-i``) sets it whether it is there or not, creating the
  sequences and items on the way;
- ``erase`` (``-e``) removes it, and fails if it is not there.

Every value is checked against the attribute's VR before anything is
written; one bad value leaves the file untouched.  The file is written
through a temporary file in the same folder and renamed over the original,
in the transfer syntax it had, after copying the original to ``FILE.bak``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from .common import ToolError, parse_tag, read_dicom, tag_text, write_atomic
from .textvalues import check_charset, check_value, check_vm, dictionary_vr, parse_text

__all__ = ["Operation", "Change", "Step", "parse_change", "parse_path", "apply_changes",
           "modify_file"]


class Operation(str, Enum):
    MODIFY = "modify"
    INSERT = "insert"
    ERASE = "erase"


@dataclass(frozen=True)
class Step:
    """One step of a path: a tag, and for a sequence an item index (``None``
    for the last step, ``"*"`` for all items)."""

    tag: int
    index: int | str | None = None


@dataclass(frozen=True)
class Change:
    operation: Operation
    path: tuple[Step, ...]
    value: str | None = None
    spec: str = ""


_STEP_RE = re.compile(r"^\s*(\([^)]*\)|[^\[\]]+?)\s*(?:\[\s*(\d+|\*)\s*\])?\s*$")


def parse_path(text: str) -> tuple[Step, ...]:
    """``Seq[0].Keyword`` → steps; every step but the last needs an index."""
    parts = [p for p in re.split(r"\.(?![^(]*\))", text.strip())]
    steps: list[Step] = []
    for n, part in enumerate(parts):
        m = _STEP_RE.match(part)
        if not m or not m.group(1).strip():
            raise ToolError(f"cannot read the attribute path {text!r}")
        tag = int(parse_tag(m.group(1)))
        raw_index = m.group(2)
        index: int | str | None = None if raw_index is None else \
            ("*" if raw_index == "*" else int(raw_index))
        last = n == len(parts) - 1
        if not last and index is None:
            raise ToolError(f"{text!r}: say which item of {m.group(1).strip()} is meant, "
                            f"e.g. {m.group(1).strip()}[0]")
        if last and index is not None:
            raise ToolError(f"{text!r}: the path must end at an attribute, not at an item")
        steps.append(Step(tag, index))
    return tuple(steps)


def parse_change(operation: Operation | str, spec: str) -> Change:
    """``KEY=VALUE`` (``KEY`` alone for erase, or for inserting an empty value)."""
    op = Operation(operation)
    if op is Operation.ERASE:
        return Change(op, parse_path(spec), None, spec)
    if "=" in spec:
        key, value = spec.split("=", 1)
    elif op is Operation.INSERT:
        key, value = spec, ""
    else:
        raise ToolError(f"-m {spec!r}: give a value as KEY=VALUE")
    return Change(op, parse_path(key), value, spec)


def _name(tag: int) -> str:
    keyword = keyword_for_tag(tag)
    return f"{keyword} {tag_text(tag)}" if keyword else tag_text(tag)


def _items(ds: Dataset, step: Step, create: bool, spec: str) -> list[Dataset]:
    elem = ds.get(step.tag)
    if elem is None:
        if not create:
            raise ToolError(f"{spec}: {_name(step.tag)} is not present")
        if step.index == "*":
            raise ToolError(f"{spec}: {_name(step.tag)} is not present, so [*] has no items")
        elem = DataElement(step.tag, "SQ", DicomSequence())
        ds.add(elem)
    if elem.VR != "SQ":
        raise ToolError(f"{spec}: {_name(step.tag)} is not a sequence (VR {elem.VR})")
    seq = elem.value
    if step.index == "*":
        return list(seq)
    assert isinstance(step.index, int)
    if step.index >= len(seq):
        if not create:
            raise ToolError(f"{spec}: {_name(step.tag)} has no item {step.index} "
                            f"(it has {len(seq)})")
        while len(seq) <= step.index:
            seq.append(Dataset())
    return [seq[step.index]]


def _targets(ds: Dataset, change: Change) -> list[Dataset]:
    """The data sets in which the last step of the path is to be changed."""
    current = [ds]
    create = change.operation is Operation.INSERT
    for step in change.path[:-1]:
        nxt: list[Dataset] = []
        for d in current:
            nxt.extend(_items(d, step, create, change.spec))
        current = nxt
    return current


def _value_for(root: Dataset, target: Dataset, tag: int, text: str, spec: str,
               little_endian: bool) -> DataElement:
    existing = target.get(tag)
    vr = existing.VR if existing is not None else dictionary_vr(tag)
    if vr is None:
        raise ToolError(f"{spec}: the dictionary does not know {tag_text(tag)}, so its VR "
                        "is unknown")
    if (tag >> 16) & 1 and 0x10 <= (tag & 0xFFFF) >> 8 and existing is None:
        creator = ((tag >> 16) << 16) | ((tag & 0xFFFF) >> 8)
        if creator not in target:
            raise ToolError(f"{spec}: private tag {tag_text(tag)} needs its private creator "
                            f"{tag_text(creator)}; insert that first")
    if vr == "SQ":
        if text:
            raise ToolError(f"{spec}: {_name(tag)} is a sequence; it takes no value "
                            "(insert it empty, or set attributes of its items)")
        return DataElement(tag, "SQ", existing.value if existing is not None
                           else DicomSequence())
    what = f"{spec}: {_name(tag)}"
    value = parse_text(vr, text, little_endian=little_endian, what=what)
    check_value(vr, value, what)
    check_vm(tag, value, what)
    check_charset(value, root.get("SpecificCharacterSet"), what)
    return DataElement(tag, vr, value)


def apply_changes(ds: Dataset, changes: Iterable[Change], *,
                  ignore_missing: bool = False, little_endian: bool = True) -> None:
    """Apply ``changes`` in order to ``ds`` (in memory).  Raises
    :class:`ToolError` on the first one that cannot be made."""
    for change in changes:
        tag = change.path[-1].tag
        try:
            targets = _targets(ds, change)
        except ToolError:
            if ignore_missing and change.operation is not Operation.INSERT:
                continue
            raise
        for target in targets:
            present = tag in target
            if change.operation is Operation.ERASE:
                if not present:
                    if ignore_missing:
                        continue
                    raise ToolError(f"-e {change.spec}: {_name(tag)} is not present")
                del target[tag]
                continue
            if change.operation is Operation.MODIFY and not present:
                if ignore_missing:
                    continue
                raise ToolError(f"-m {change.spec}: {_name(tag)} is not present "
                                "(use -i to insert it)")
            elem = _value_for(ds, target, tag, change.value or "", change.spec, little_endian)
            if elem.VR == "SQ" and present:
                continue
            target[tag] = elem
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def modify_file(path: str | os.PathLike[str], changes: Sequence[Change], *,
                backup: bool = True, ignore_missing: bool = False) -> None:
    """Apply ``changes`` to the file at ``path`` atomically; nothing is
    written when any change fails."""
    p = Path(path)
    ds = read_dicom(p)
    meta = getattr(ds, "file_meta", None)
    has_meta = meta is not None and "TransferSyntaxUID" in meta
    little = True
    if meta is not None and has_meta:
        little = meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
    else:
        little = bool(getattr(ds, "original_encoding", (False, True))[1])
    try:
        apply_changes(ds, changes, ignore_missing=ignore_missing, little_endian=little)
    except ToolError as exc:
        raise ToolError(f"{p}: {exc}; file left unchanged") from None
    try:
        write_atomic(ds, p, backup=backup, enforce_file_format=has_meta)
    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise ToolError(f"{p}: cannot write: {exc}; file left unchanged") from None
    except OSError as exc:
        raise ToolError(f"{p}: cannot write: {exc.strerror or exc}; file left unchanged") \
            from None
