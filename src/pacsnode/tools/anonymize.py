"""``pacsnode anonymize``: the Basic Application Level Confidentiality
Profile of PS3.15 E.1.1, driven by the table in :mod:`.deid_profile`.

- every attribute of Table E.1-1 present (at any depth of sequences) is
  removed, emptied, given a dummy value valid for its VR, or has its UIDs
  replaced, as the table says;
- UIDs are replaced consistently: the same original UID always gets the same
  new UID, within a run and across runs that share a UID map file;
- private attributes are removed, except those kept on purpose (``keep``);
- Patient Identity Removed (0012,0062) = YES, De-identification Method and
  its code sequence (DCM 113100) are added;
- pixel data is never touched: an instance whose Burned In Annotation is YES
  is reported, because its pixels may still show identifying text.

``anonymize_dataset`` works on a data set in memory, for reuse by other
verbs (REST export); ``anonymize_paths`` does files and folders.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, generate_uid

from .common import (NotDicomError, TagMask, ToolError, file_meta_for, parse_tag_mask,
                     read_dicom, write_atomic)
from .deid_profile import Action, rule_for
from .textvalues import values_of

__all__ = ["UIDMap", "AnonymizationResult", "anonymize_dataset", "anonymize_paths",
           "AnonymizeSummary", "DUMMY_VALUES", "DEIDENTIFICATION_METHOD", "MAP_FILE_NAME"]

MAP_FILE_NAME = ".pacsnode-uidmap.json"
DEIDENTIFICATION_METHOD = "PS3.15 Basic Application Confidentiality Profile (pacsnode)"

#: Dummy values (action D) that are valid for their VR (PS3.5 6.2).
DUMMY_VALUES: dict[str, Any] = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED",
    "PN": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000",
    "UC": "ANONYMIZED", "UR": "ANONYMIZED", "UT": "ANONYMIZED",
    "FL": 0.0, "FD": 0.0, "SL": 0, "SS": 0, "SV": 0, "UL": 0, "US": 0, "UV": 0,
    "OB": b"\x00\x00", "OW": b"\x00\x00", "OF": b"\x00" * 4, "OD": b"\x00" * 8,
    "OL": b"\x00" * 4, "OV": b"\x00" * 8, "UN": b"\x00\x00", "AT": 0,
}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


class UIDMap(dict[str, str]):
    """Original UID → replacement UID, optionally kept in a JSON file so that
    later runs replace the same UIDs the same way.  The file links the new
    UIDs to the originals: keep it private."""

    def __init__(self, mapping: dict[str, str] | None = None, path: Path | None = None) -> None:
        super().__init__(mapping or {})
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UIDMap:
        p = Path(path)
        if not p.exists():
            return cls({}, p)
        try:
            data = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ToolError(f"{p}: cannot read the UID map: {exc}") from None
        uids = data.get("uids") if isinstance(data, dict) else None
        if not isinstance(uids, dict):
            raise ToolError(f"{p}: not a pacsnode UID map (no \"uids\" object)")
        return cls({str(k): str(v) for k, v in uids.items()}, p)

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        p = Path(path) if path is not None else self.path
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        body = {"format": "pacsnode-uidmap", "version": 1, "uids": dict(sorted(self.items()))}
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=1)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)


def replacement_uid(uid_map: MutableMapping[str, str], uid: str) -> str:
    """The replacement for ``uid``, made (a UUID-derived UID) on first use."""
    key = str(uid).strip().rstrip("\x00")
    if not key:
        return key
    new = uid_map.get(key)
    if new is None:
        new = str(generate_uid(prefix=None))
        uid_map[key] = new
    return new


@dataclass
class AnonymizationResult:
    """What ``anonymize_dataset`` did to one data set."""

    burned_in_annotation: bool = False
    actions: Counter[str] = field(default_factory=Counter)


def _keep_masks(keep: Iterable[str | int | TagMask]) -> list[TagMask]:
    masks = []
    for k in keep:
        if isinstance(k, TagMask):
            masks.append(k)
        elif isinstance(k, int):
            masks.append(TagMask(int(k)))
        else:
            masks.append(parse_tag_mask(k))
    return masks


class _Anonymizer:
    def __init__(self, uid_map: MutableMapping[str, str], keep: list[TagMask]) -> None:
        self.uid_map = uid_map
        self.keep = keep
        self.actions: Counter[str] = Counter()

    def kept(self, tag: int) -> bool:
        return any(m.matches(tag) for m in self.keep)

    def _kept_private_blocks(self, ds: Dataset) -> set[tuple[int, int]]:
        blocks = set()
        for tag in ds.keys():
            if tag.is_private and tag.element > 0x00FF and self.kept(tag):
                blocks.add((tag.group, tag.element >> 8))
        return blocks

    def dataset(self, ds: Dataset) -> None:
        kept_blocks = self._kept_private_blocks(ds)
        for tag in list(ds.keys()):
            t = Tag(tag)
            if t.element == 0 and t.group != 0x0002:
                del ds[t]  # group lengths would be stale
                continue
            if t.is_private:
                self._private(ds, t, kept_blocks)
                continue
            elem = ds[t]
            if self.kept(t):
                self.actions["K"] += 1
                continue
            rule = rule_for(int(t))
            if rule is None:
                if elem.VR == "SQ":
                    self._items(elem)
                continue
            self._apply(ds, elem, rule.action)

    def _private(self, ds: Dataset, tag: BaseTag, kept_blocks: set[tuple[int, int]]) -> None:
        group, element = tag.group, tag.element
        if 0x0010 <= element <= 0x00FF:
            keep = (group, element) in kept_blocks or self.kept(tag)
        else:
            keep = self.kept(tag)
        if keep:
            self.actions["K"] += 1
            return
        del ds[tag]
        self.actions["private"] += 1

    def _items(self, elem: DataElement) -> None:
        for item in elem.value or []:
            self.dataset(item)

    def _apply(self, ds: Dataset, elem: DataElement, action: Action) -> None:
        tag = elem.tag
        self.actions[action.value] += 1
        if action is Action.REMOVE:
            del ds[tag]
        elif action is Action.ZERO:
            if elem.VR == "SQ":
                elem.value = DicomSequence()
            else:
                elem.value = None
        elif action is Action.DUMMY:
            if elem.VR == "SQ":
                self._items(elem)  # keep the structure, clean what is inside
            elif elem.VR == "UI":
                elem.value = self._uids(elem.value) if values_of(elem.value) \
                    else generate_uid(prefix=None)
            else:
                ds[tag] = DataElement(tag, elem.VR, DUMMY_VALUES.get(elem.VR, "ANONYMIZED"))
        elif action is Action.UID:
            if elem.VR == "SQ":
                self._items(elem)
            elif elem.VR == "UI":
                elem.value = self._uids(elem.value)
            else:
                del ds[tag]  # a UID in an unexpected VR: take no chances
        elif action in (Action.KEEP, Action.CLEAN):
            if elem.VR == "SQ":
                self._items(elem)

    def _uids(self, value: Any) -> Any:
        values = [replacement_uid(self.uid_map, str(v)) for v in values_of(value)]
        if not values:
            return value
        return values[0] if len(values) == 1 else values


def anonymize_dataset(ds: Dataset, uid_map: MutableMapping[str, str], *,
                      keep: Iterable[str | int | TagMask] = ()) -> AnonymizationResult:
    """De-identify ``ds`` in place with the Basic Profile.  ``uid_map`` is
    read and extended (pass the same mapping for a whole study, or a
    :class:`UIDMap` loaded from a file, to keep UIDs consistent); ``keep``
    names attributes (keyword, ``(gggg,eeee)``, ``(0009,xxxx)`` patterns)
    that are left as they are, private ones included.  Pixel data is not
    changed."""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
    worker = _Anonymizer(uid_map, _keep_masks(keep))
    worker.dataset(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = DicomSequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = UID(
            str(ds.SOPInstanceUID) if "SOPInstanceUID" in ds
            else replacement_uid(uid_map, str(meta.MediaStorageSOPInstanceUID)))
    return AnonymizationResult(burned, worker.actions)


# -- files and folders --------------------------------------------------------

@dataclass
class AnonymizeSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    burned_in: list[Path] = field(default_factory=list)
    map_path: Path | None = None
    uid_count: int = 0


def _inputs(paths: Sequence[str | os.PathLike[str]], recursive: bool) -> Iterator[tuple[Path, bool]]:
    """(file, named explicitly) for every input."""
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            walker = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(walker):
                if f.is_file() and not f.name.startswith(".") and not f.name.endswith(".bak"):
                    yield f, False
        else:
            yield p, True


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return str(meta.TransferSyntaxUID)
    implicit, little = getattr(ds, "original_encoding", (False, True))
    if implicit:
        return "1.2.840.10008.1.2"
    return "1.2.840.10008.1.2.1" if little in (True, None) else "1.2.840.10008.1.2.2"


def anonymize_paths(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                    keep: Iterable[str] = (), map_path: str | os.PathLike[str] | None = None,
                    recursive: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    warn: Callable[[str], None] | None = None) -> AnonymizeSummary:
    """Anonymize files and folders into ``out``: a file when there is one
    input file and ``out`` is not a folder, otherwise a folder where each
    instance is written as ``<new SOPInstanceUID>.dcm``."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    keep_masks = _keep_masks(keep)
    files = list(_inputs(inputs, recursive))
    out_path = Path(out)
    single = len(inputs) == 1 and len(files) == 1 and files[0][1] and not out_path.is_dir() \
        and not str(out).endswith(os.sep)
    if not single:
        out_path.mkdir(parents=True, exist_ok=True)
    folder = out_path.parent if single else out_path
    uid_map = UIDMap.load(map_path if map_path is not None else folder / MAP_FILE_NAME)
    summary = AnonymizeSummary(map_path=uid_map.path)
    try:
        for n, (path, explicit) in enumerate(files, 1):
            if progress is not None:
                progress(n - 1, len(files))
            try:
                ds = read_dicom(path)
            except NotDicomError as exc:
                (summary.failed if explicit else summary.skipped).append((path, str(exc)))
                continue
            except ToolError as exc:
                summary.failed.append((path, str(exc)))
                continue
            meta = getattr(ds, "file_meta", None)
            if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
                summary.skipped.append((path, f"{path}: a DICOMDIR, not an instance"))
                continue
            try:
                ts = _transfer_syntax(ds)
                result = anonymize_dataset(ds, uid_map, keep=keep_masks)
                ds.file_meta = file_meta_for(ds, ts)
                target = out_path if single else out_path / f"{ds.SOPInstanceUID}.dcm"
                write_atomic(ds, target)
            except (ToolError, ValueError, TypeError, OverflowError, OSError) as exc:
                summary.failed.append((path, f"{path}: {exc}"))
                continue
            summary.written.append(target)
            if result.burned_in_annotation:
                summary.burned_in.append(path)
                warn(f"warning: {path}: BurnedInAnnotation is YES: the pixels may show "
                     "identifying text and were not changed")
        if progress is not None:
            progress(len(files), len(files))
    finally:
        uid_map.save()
        summary.uid_count = len(uid_map)
    return summary

