"""``pacsnode anonymize``: the Basic Application Level Confidentiality
Profile of PS3.15 E.1.1, driven by the table in :mod:`.deid_profile`.

- every attribute of Table E.1-1 present (at any depth of sequences) is
  removed, emptied, given a dummy value valid for its VR, or has its UIDs
  replaced, as the table says;
- Patient ID and Patient's Name get a pseudonym made from the original
  Patient ID, so that patients stay apart (``ANON-<12 hex>``,
  ``ANON^<12 hex>``);
- pseudonyms and new UIDs come from a keyed hash (HMAC-SHA256) of the
  original value: the same key gives the same replacements on every run, a
  run without a key gets a random one;
- private attributes are removed, except those kept on purpose (``keep``);
- Patient Identity Removed (0012,0062) = YES, De-identification Method and
  its code sequence (DCM 113100) are added;
- pixel data is never touched: an instance whose Burned In Annotation is YES
  is reported, because its pixels may still show identifying text.

The link from new identifiers to the original ones is never written next to
the output: only to the file the caller names (``--uid-map``), readable by
its owner alone.

``anonymize_dataset`` works on a data set in memory, for reuse by other
verbs (REST export, routes: pass one :class:`Pseudonymizer` for a whole
study, or the same key, to get the same pseudonyms); ``anonymize_paths``
does files and folders.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
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
from pydicom.uid import UID

from ..dicom.vr import LONG_LENGTH_CODES
from .common import (NotDicomError, TagMask, ToolError, file_meta_for, parse_tag_mask,
                     read_dicom, write_atomic)
from .deid_profile import Action, rule_for
from .textvalues import values_of

__all__ = ["Pseudonymizer", "UIDMap", "AnonymizationResult", "anonymize_dataset",
           "anonymize_paths", "AnonymizeSummary", "DUMMY_VALUES", "DEIDENTIFICATION_METHOD",
           "PSEUDONYM_PREFIX", "read_key_file", "check_map_path"]

DEIDENTIFICATION_METHOD = "PS3.15 Basic Application Confidentiality Profile (pacsnode)"
#: Pseudonyms read PatientID ``ANON-<12 hex>`` and PatientName ``ANON^<12 hex>``.
PSEUDONYM_PREFIX = "ANON"
_PSEUDONYM_HEX = 12
_KEY_BYTES = 32

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


class Pseudonymizer:
    """Replacement identifiers derived from the original ones by HMAC-SHA256
    under a secret key: the same key gives the same replacements on every run
    and in every process, different originals give different replacements,
    and without the key nobody can go back or confirm a guess.

    - a UID becomes ``2.25.<n>``, ``n`` a version-8 UUID (RFC 9562) made of
      the digest;
    - a Patient ID becomes ``ANON-<12 hex>`` and the patient's name
      ``ANON^<same 12 hex>``.

    Without a key one is made at random (:attr:`random_key` is then true):
    replacements hold within the object's life only.  What was replaced is
    remembered (:attr:`uids`, :attr:`patients`: new → original) for a
    private map file.
    """

    def __init__(self, key: str | bytes | None = None) -> None:
        if isinstance(key, str):
            key = key.encode("utf-8")
        if key is not None and not key:
            raise ToolError("the key is empty; give at least one character")
        self.random_key = key is None
        self._key = key if key is not None else secrets.token_bytes(_KEY_BYTES)
        self.uids: dict[str, str] = {}
        self.patients: dict[str, str] = {}

    def _digest(self, kind: bytes, value: str) -> bytes:
        message = kind + b"\x00" + value.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement for a UID (an empty one stays empty)."""
        key = str(original).strip().rstrip("\x00")
        if not key:
            return key
        n = int.from_bytes(self._digest(b"uid", key)[:16], "big")
        n = (n & ~(0xF << 76)) | (0x8 << 76)   # UUID version 8 ...
        n = (n & ~(0x3 << 62)) | (0x2 << 62)   # ... RFC 9562 variant
        new = f"2.25.{n}"
        self.uids[new] = key
        return new

    def _patient_hex(self, patient_id: str, patient_name: str) -> str | None:
        if patient_id:
            digest = self._digest(b"patient-id", patient_id)
        elif patient_name:  # no ID: the name is all that tells patients apart
            digest = self._digest(b"patient-name", patient_name)
        else:
            return None
        return digest.hex()[:_PSEUDONYM_HEX].upper()

    def patient(self, patient_id: str, patient_name: str = "") -> tuple[str, str] | None:
        """(PatientID, PatientName) pseudonyms for a patient, from the original
        Patient ID (or the name when there is no ID); None when both are
        empty."""
        code = self._patient_hex(patient_id.strip(), patient_name.strip())
        if code is None:
            return None
        pseudonym = f"{PSEUDONYM_PREFIX}-{code}"
        self.patients[pseudonym] = patient_id.strip() or patient_name.strip()
        return pseudonym, f"{PSEUDONYM_PREFIX}^{code}"


#: Behind calls of :func:`anonymize_dataset` that pass a plain mapping: its
#: key is made at random once per process.
_PROCESS_PSEUDONYMIZER: Pseudonymizer | None = None


def _process_pseudonymizer() -> Pseudonymizer:
    global _PROCESS_PSEUDONYMIZER
    if _PROCESS_PSEUDONYMIZER is None:
        _PROCESS_PSEUDONYMIZER = Pseudonymizer()
    return _PROCESS_PSEUDONYMIZER


class _MappingPseudonymizer(Pseudonymizer):
    """The older call form: a plain mapping that receives original → new UIDs
    (and keeps them consistent); pseudonyms from the per-process key."""

    def __init__(self, mapping: MutableMapping[str, str]) -> None:
        base = _process_pseudonymizer()
        super().__init__(base._key)
        self.random_key = True
        self.mapping = mapping

    def uid(self, original: str) -> str:
        key = str(original).strip().rstrip("\x00")
        if not key:
            return key
        new = self.mapping.get(key)
        if new is None:
            new = super().uid(key)
            self.mapping[key] = new
        return new


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key held in a file (its bytes, a final line break left out)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ToolError(f"{p}: cannot read the key file: {exc.strerror or exc}") from None
    data = data.rstrip(b"\r\n")
    if not data:
        raise ToolError(f"{p}: the key file is empty")
    return data


class UIDMap:
    """The private map file: new UID → original UID and pseudonym → original
    Patient ID, as JSON.  It is created readable by its owner only (mode
    0600) and replaced atomically; entries already in the file are kept."""

    FORMAT = "pacsnode-uidmap"
    VERSION = 2

    def __init__(self, uids: dict[str, str] | None = None,
                 patients: dict[str, str] | None = None) -> None:
        self.uids = dict(uids or {})
        self.patients = dict(patients or {})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UIDMap:
        """The map in ``path`` (an empty map when there is no file)."""
        p = Path(path)
        if not p.exists():
            return cls()
        try:
            data = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ToolError(f"{p}: cannot read the UID map: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != cls.FORMAT \
                or not isinstance(data.get("uids"), dict):
            raise ToolError(f"{p}: exists and is not a pacsnode UID map; "
                            "give another --uid-map file")
        uids = {str(k): str(v) for k, v in data["uids"].items()}
        if data.get("version") == 1:  # version 1 held original → new
            uids = {new: old for old, new in uids.items()}
        patients = data.get("patients")
        if not isinstance(patients, dict):
            patients = {}
        return cls(uids, {str(k): str(v) for k, v in patients.items()})

    def update(self, pseudonyms: Pseudonymizer) -> None:
        self.uids.update(pseudonyms.uids)
        self.patients.update(pseudonyms.patients)

    def save(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        body = {"format": self.FORMAT, "version": self.VERSION,
                "note": "new identifier -> original: keep this file private",
                "uids": dict(sorted(self.uids.items())),
                "patients": dict(sorted(self.patients.items()))}
        text = json.dumps(body, indent=1) + "\n"
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


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
    def __init__(self, pseudonyms: Pseudonymizer, keep: list[TagMask]) -> None:
        self.pseudonyms = pseudonyms
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
                    else self.pseudonyms.uid(f"(no value) {tag}")
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
        values = [self.pseudonyms.uid(str(v)) for v in values_of(value)]
        if not values:
            return value
        return values[0] if len(values) == 1 else values


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip()


def anonymize_dataset(ds: Dataset,
                      pseudonyms: Pseudonymizer | MutableMapping[str, str] | None = None, *,
                      keep: Iterable[str | int | TagMask] = ()) -> AnonymizationResult:
    """De-identify ``ds`` in place with the Basic Profile.

    ``pseudonyms`` makes the replacement UIDs and the patient pseudonyms:
    pass one :class:`Pseudonymizer` (or ones made with the same key) for
    every instance of a study to keep them consistent.  ``None`` makes one
    with a random key for this call alone.  A plain mapping (the older form)
    receives original → new UIDs and uses a key made at random once per
    process.  ``keep`` names attributes (keyword, ``(gggg,eeee)``,
    ``(0009,xxxx)`` patterns) that are left as they are, private ones
    included.  Pixel data is not changed."""
    if pseudonyms is None:
        pseudonyms = Pseudonymizer()
    elif not isinstance(pseudonyms, Pseudonymizer):
        pseudonyms = _MappingPseudonymizer(pseudonyms)
    burned = _text(ds, "BurnedInAnnotation").upper() == "YES"
    masks = _keep_masks(keep)
    replaced = [k for k, tag in (("PatientID", 0x00100020), ("PatientName", 0x00100010))
                if k in ds and not any(m.matches(tag) for m in masks)]
    patient = pseudonyms.patient(_text(ds, "PatientID"), _text(ds, "PatientName")) \
        if replaced else None
    worker = _Anonymizer(pseudonyms, masks)
    worker.dataset(ds)
    if patient is not None:
        values = dict(zip(("PatientID", "PatientName"), patient))
        for keyword in replaced:
            setattr(ds, keyword, values[keyword])
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
            else pseudonyms.uid(str(meta.MediaStorageSOPInstanceUID)))
    return AnonymizationResult(burned, worker.actions)


# -- files and folders --------------------------------------------------------

@dataclass
class AnonymizeSummary:
    """What ``anonymize_paths`` did.  ``duplicates``: inputs skipped because
    an earlier input had the same SOP Instance UID and the same data set
    (input, earlier input); ``conflicts``: the same SOP Instance UID with a
    different data set, not written either."""

    inputs: int = 0
    written: list[Path] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)
    conflicts: list[tuple[Path, Path]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    burned_in: list[Path] = field(default_factory=list)
    random_key: bool = False
    map_path: Path | None = None
    uid_count: int = 0
    patient_count: int = 0


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


def _data_set_digest(path: Path) -> bytes:
    """SHA-256 of the data set bytes of a file: everything after the File
    Meta Information, which only says how the file was written (§7: the
    data set is the instance)."""
    raw = path.read_bytes()
    start = 0
    if raw[128:132] == b"DICM":
        start = 132
        while start + 8 <= len(raw) and raw[start:start + 2] == b"\x02\x00":
            if raw[start + 4:start + 6] in LONG_LENGTH_CODES:
                start += 12 + int.from_bytes(raw[start + 8:start + 12], "little")
            else:
                start += 8 + int.from_bytes(raw[start + 6:start + 8], "little")
    return hashlib.sha256(raw[start:]).digest()


def _same_data(a: Path, b: Path) -> bool:
    try:
        return _data_set_digest(a) == _data_set_digest(b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_map_path(map_path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """The map file's path, refused when it lies in the output folder (after
    resolving symlinks): whatever is in that folder gets shipped."""
    resolved = Path(map_path).resolve()
    out = Path(folder).resolve()
    if _inside(resolved, out):
        raise ToolError(f"--uid-map {map_path}: is inside the output folder {folder}; the map "
                        "links the new identifiers to the original ones and must not travel "
                        "with the data: give a path outside it")
    if resolved.is_dir():
        raise ToolError(f"--uid-map {map_path}: is a folder; give a file name")
    return resolved


def anonymize_paths(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                    key: str | bytes | None = None, keep: Iterable[str] = (),
                    uid_map: str | os.PathLike[str] | None = None,
                    recursive: bool = False,
                    progress: Callable[[int, int], None] | None = None,
                    warn: Callable[[str], None] | None = None) -> AnonymizeSummary:
    """Anonymize files and folders into ``out``: a file when there is one
    input file and ``out`` is not a folder, otherwise a folder where each
    instance is written as ``<new SOPInstanceUID>.dcm``.

    ``key`` makes the replacements repeatable (a random one otherwise).  The
    link from new identifiers to the originals is written only to
    ``uid_map`` (mode 0600, refused inside the output folder).  An input
    whose SOP Instance UID an earlier input already had is not written:
    counted as a duplicate, or as a conflict when its data set differs."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    keep_masks = _keep_masks(keep)
    files = list(_inputs(inputs, recursive))
    out_path = Path(out)
    single = len(inputs) == 1 and len(files) == 1 and files[0][1] and not out_path.is_dir() \
        and not str(out).endswith(os.sep)
    folder = out_path.parent if single else out_path
    map_file = check_map_path(uid_map, folder) if uid_map is not None else None
    stored_map = UIDMap.load(map_file) if map_file is not None else None
    pseudonyms = Pseudonymizer(key)
    if not single:
        out_path.mkdir(parents=True, exist_ok=True)
    summary = AnonymizeSummary(inputs=len(files), random_key=pseudonyms.random_key,
                               map_path=map_file)
    seen: dict[str, Path] = {}  # original SOPInstanceUID → the input written for it
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
            sop_uid = _text(ds, "SOPInstanceUID")
            earlier = seen.get(sop_uid) if sop_uid else None
            if earlier is not None:
                if _same_data(earlier, path):
                    summary.duplicates.append((path, earlier))
                else:
                    summary.conflicts.append((path, earlier))
                    warn(f"{path}: same SOPInstanceUID as {earlier} but a different data set; "
                         f"kept {earlier}, {path} not written")
                continue
            try:
                ts = _transfer_syntax(ds)
                result = anonymize_dataset(ds, pseudonyms, keep=keep_masks)
                ds.file_meta = file_meta_for(ds, ts)
                target = out_path if single else out_path / f"{ds.SOPInstanceUID}.dcm"
                write_atomic(ds, target)
            except (ToolError, ValueError, TypeError, OverflowError, OSError) as exc:
                summary.failed.append((path, f"{path}: {exc}"))
                continue
            if sop_uid:
                seen[sop_uid] = path
            summary.written.append(target)
            if result.burned_in_annotation:
                summary.burned_in.append(path)
                warn(f"warning: {path}: BurnedInAnnotation is YES: the pixels may show "
                     "identifying text and were not changed")
        if progress is not None:
            progress(len(files), len(files))
    finally:
        if stored_map is not None and map_file is not None:
            stored_map.update(pseudonyms)
            stored_map.save(map_file)
            summary.uid_count = len(stored_map.uids)
            summary.patient_count = len(stored_map.patients)
    return summary
