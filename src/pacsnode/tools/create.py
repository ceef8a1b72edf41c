"""``pacsnode create``: a Part 10 file from a text dump (what DCMTK's
``dump2dcm`` does).

The dump format is the one ``pacsnode dump`` and ``dcmdump`` print, one
element per line::

    (0010,0010) PN [DOE^JOHN]          # anything after '#' is a comment
    (0008,0016) UI =CTImageStorage
    (0028,0010) US 512
    (0008,1115) SQ (Sequence with explicit length #=1)
      (fffe,e000) na (Item with explicit length #=1)
        (0020,000e) UI [1.2.3]
      (fffe,e00d) na (ItemDelimitationItem)
    (fffe,e0dd) na (SequenceDelimitationItem)

Strings go in brackets (the value ends at the last ``]`` of the line), UIDs
may be given by name (``=Name``, DCMTK's names or pydicom's keywords), numbers
and hex bytes bare, ``\\`` separates values, ``(no value available)`` is an
empty value.  Lines of group 0002 make the meta header; what they leave out is
completed (PS3.10 7.1).  As dump2dcm, values are written as given: a value
that breaks its VR's rules only gives a warning.  A VR that is no VR at all
(a typo like ``LN``) is replaced by the dictionary's, with a warning.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID
# (pydicom imports it into pydicom.uid without declaring it exported)
from pydicom.uid import UID_dictionary  # type: ignore[attr-defined]

from .common import ToolError, file_meta_for, parse_tag, tag_text, write_atomic
from .textvalues import ALL_VRS, check_value, check_vm, dictionary_vr, parse_text, values_of
from .uid_names import DCMTK_UID_NAMES

__all__ = ["ParsedDump", "parse_dump", "dataset_from_dump", "create_from_dump", "uid_for_name"]

_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_TS_TAG = 0x00020010
#: DCMTK's internal VRs as dcmdump prints them, and what they stand for.
_PSEUDO_VRS = {"na": None, "pi": "OB", "ox": "OB", "xs": "US", "lt": "OW", "up": "UL",
               "??": "UN"}
_TAG_RE = re.compile(r"^\s*\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)")
_KEYWORD_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?=\s|$)")
_VR_RE = re.compile(r"^\s+([A-Za-z?]{2})(?=\s|$)")
_TS_LINE_RE = re.compile(r"^\s*\(\s*0002\s*,\s*0010\s*\)\s*(?:UI\s+)?(\S+)")


def _uid_names() -> dict[str, str]:
    names = {name: uid for uid, name in DCMTK_UID_NAMES.items()}
    for uid, info in UID_dictionary.items():
        keyword = info[4]
        if keyword:
            names.setdefault(keyword, uid)
    return names


_UID_BY_NAME = _uid_names()


def uid_for_name(name: str) -> str:
    """The UID a ``=Name`` stands for (DCMTK's names and pydicom's keywords)."""
    try:
        return _UID_BY_NAME[name]
    except KeyError:
        raise ToolError(f"unknown UID name {name!r}") from None


@dataclass
class ParsedDump:
    """What a dump says: the data set, the meta header lines, and the
    warnings collected while reading it."""

    dataset: Dataset
    meta: FileMetaDataset
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Frame:
    kind: str                      # "root" | "seq" | "item" | "pixels"
    dataset: Dataset | None = None
    sequence: Sequence | None = None
    fragments: list[bytes] | None = None
    element: DataElement | None = None


class _Parser:
    def __init__(self, text: str, base_dir: Path) -> None:
        self.lines = text.split("\n")  # not splitlines: a text value may hold "\r"
        self.base_dir = base_dir
        self.root = Dataset()
        self.meta = FileMetaDataset()
        self.warnings: list[str] = []
        self.stack: list[_Frame] = [_Frame("root", dataset=self.root)]
        self.little_endian = self._little_endian()

    # -- helpers ---------------------------------------------------------
    def _little_endian(self) -> bool:
        for line in self.lines:
            m = _TS_LINE_RE.match(line)
            if m:
                token = m.group(1)
                uid = token[1:].split("]")[0] if token.startswith("[") else token
                if token.startswith("="):
                    uid = _UID_BY_NAME.get(token[1:], "")
                return uid.strip() != "1.2.840.10008.1.2.2"
        return True

    def warn(self, lineno: int, message: str) -> None:
        self.warnings.append(f"line {lineno}: {message}")

    def fail(self, lineno: int, message: str) -> ToolError:
        return ToolError(f"line {lineno}: {message}")

    @property
    def top(self) -> _Frame:
        return self.stack[-1]

    def current_dataset(self, lineno: int) -> Dataset:
        frame = self.top
        if frame.kind in ("root", "item") and frame.dataset is not None:
            return frame.dataset
        if frame.kind == "seq":
            raise self.fail(lineno, "an element inside a sequence must be inside an item "
                                    "((fffe,e000) line missing)")
        raise self.fail(lineno, "only items (fffe,e000) may appear inside pixel data")

    # -- values ----------------------------------------------------------
    def _bracket_value(self, index: int, rest: str) -> tuple[str, int]:
        """Text between '[' and the last ']' of the line; a value that goes on
        over several lines (text with line breaks) is joined."""
        end = rest.rfind("]")
        if end != -1:
            return rest[1:end], index
        lineno = index + 1
        body = rest.split("#")[0].rstrip() if "#" in rest else rest.rstrip()
        if body.endswith("..."):
            raise self.fail(lineno, "the value was shortened by the dump ('...'); dump the "
                                    "file with full values: `pacsnode dump --full` or "
                                    "`dcmdump +L`")
        collected = [rest[1:]]
        for j in range(index + 1, len(self.lines)):
            nxt = self.lines[j]
            if _TAG_RE.match(nxt):
                break
            close = nxt.rfind("]")
            if close != -1:
                collected.append(nxt[:close])
                return "\n".join(collected), j
            collected.append(nxt)
        raise self.fail(lineno, "missing ']' at the end of the value")

    @staticmethod
    def _bare(rest: str) -> str:
        return rest.split("#", 1)[0].strip()

    def _value(self, lineno: int, vr: str, text: str) -> Any:
        try:
            return parse_text(vr, text, little_endian=self.little_endian)
        except ToolError as exc:
            raise self.fail(lineno, str(exc)) from None

    # -- the grammar -------------------------------------------------------
    def parse(self) -> ParsedDump:
        index = 0
        while index < len(self.lines):
            index = self._line(index) + 1
        if len(self.stack) > 1:
            self.warn(len(self.lines), "the dump ends inside a sequence; closing it")
            while len(self.stack) > 1:
                self._close_top()
        return ParsedDump(self.root, self.meta, self.warnings)

    def _tag_and_rest(self, lineno: int, line: str) -> tuple[int, str]:
        m = _TAG_RE.match(line)
        if m:
            return (int(m.group(1), 16) << 16) | int(m.group(2), 16), line[m.end():]
        m = _KEYWORD_RE.match(line)
        if m:
            try:
                return int(parse_tag(m.group(1))), line[m.end():]
            except ToolError:
                pass
        raise self.fail(lineno, f"cannot read this line: {line.strip()[:60]!r} "
                                "(expected '(gggg,eeee) VR value')")

    def _line(self, index: int) -> int:
        line = self.lines[index]
        lineno = index + 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            return index
        tag, rest = self._tag_and_rest(lineno, line)
        vr_token: str | None = None
        m = _VR_RE.match(rest)
        if m:
            token = m.group(1)
            after = rest[m.end():]
            known = dictionary_vr(tag)
            if token in ALL_VRS and not self._bare(after) and known not in (None, token) \
                    and tag >> 16 != 0xFFFE:
                pass  # "(0008,0060) US": no VR, the value is "US"
            elif token in ALL_VRS or token in _PSEUDO_VRS:
                vr_token, rest = token, after
            elif token.isalpha() and token.isupper() and self._bare(after):
                if known is None:
                    raise self.fail(lineno, f"{token!r} is not a VR, and {tag_text(tag)} is "
                                            "not in the dictionary")
                self.warn(lineno, f"{token!r} is not a VR; {tag_text(tag)} "
                                  f"{keyword_for_tag(tag) or ''} written with the "
                                  f"dictionary's VR {known}")
                rest = after
        value_text = rest.lstrip()

        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            return self._delimiter(index, tag, vr_token, value_text)
        if value_text.startswith("(Sequence") or vr_token == "SQ":
            self._start_sequence(lineno, tag, value_text)
            return index
        if tag == _PIXEL_DATA and value_text.startswith("(PixelSequence"):
            self._start_pixels(lineno)
            return index

        vr = _PSEUDO_VRS.get(vr_token, vr_token) if vr_token else dictionary_vr(tag)
        if vr is None:
            raise self.fail(lineno, f"{tag_text(tag)}: no VR given and the dictionary does "
                                    "not know this tag")
        self._check_vr_choice(lineno, tag, vr)
        value, index = self._parse_value(index, tag, vr, value_text)
        self._add(lineno, tag, vr, value)
        return index

    def _parse_value(self, index: int, tag: int, vr: str, text: str) -> tuple[Any, int]:
        lineno = index + 1
        if text.startswith("["):
            body, index = self._bracket_value(index, text)
            return self._value(lineno, vr, body), index
        if text.startswith("(no value available)") or not text or text.startswith("#"):
            return None, index
        if text.startswith("="):
            token = text[1:].split()[0] if text[1:].split() else ""
            if vr == "UI":
                try:
                    return uid_for_name(token), index
                except ToolError as exc:
                    raise self.fail(lineno, str(exc)) from None
            if vr in ("OB", "OW", "UN"):
                path = Path(token)
                path = path if path.is_absolute() else self.base_dir / path
                try:
                    return path.read_bytes(), index
                except OSError as exc:
                    raise self.fail(lineno, f"cannot read {path}: {exc.strerror}") from None
            raise self.fail(lineno, f"'=' values are for UIDs (UI) and OB/OW files, not {vr}")
        bare = self._bare(text)
        if bare.endswith("..."):
            raise self.fail(lineno, "the value was shortened by the dump ('...'); dump the "
                                    "file with full values: `pacsnode dump --full` or "
                                    "`dcmdump +L`")
        if text.startswith("(") and vr != "AT":
            raise self.fail(lineno, f"cannot read the value {bare[:40]!r}")
        return self._value(lineno, vr, bare), index

    def _check_vr_choice(self, lineno: int, tag: int, vr: str) -> None:
        try:
            known = dictionary_VR(tag)
        except KeyError:
            return
        choices = {c.strip() for c in known.split(" or ")}
        if vr not in choices and vr != "UN" and (tag >> 16) & 1 == 0:
            self.warn(lineno, f"{tag_text(tag)} {keyword_for_tag(tag)} written as {vr}; "
                              f"the dictionary says {known}")

    def _add(self, lineno: int, tag: int, vr: str, value: Any) -> None:
        what = f"{tag_text(tag)} {keyword_for_tag(tag) or ''}".rstrip()
        try:
            check_value(vr, value, what)
            check_vm(tag, value, what)
        except ToolError as exc:
            self.warn(lineno, f"{exc} (written as given)")
        elem = DataElement(tag, vr, value)
        if tag >> 16 == 0x0002:
            if len(self.stack) > 1:
                raise self.fail(lineno, "meta header elements (0002,xxxx) cannot be nested")
            if tag != 0x00020000:
                self.meta.add(elem)
            return
        ds = self.current_dataset(lineno)
        if tag in ds:
            self.warn(lineno, f"{what} given twice; the last value wins")
        ds.add(elem)

    # -- sequences ---------------------------------------------------------
    def _start_sequence(self, lineno: int, tag: int, text: str) -> None:
        ds = self.current_dataset(lineno)
        if tag >> 16 == 0x0002:
            raise self.fail(lineno, "the meta header holds no sequences")
        seq = Sequence()
        elem = DataElement(tag, "SQ", seq)
        elem.is_undefined_length = "undefined length" in text
        ds.add(elem)
        if text.startswith("(no value available)"):
            return
        self.stack.append(_Frame("seq", sequence=seq, element=elem))

    def _start_pixels(self, lineno: int) -> None:
        ds = self.current_dataset(lineno)
        elem = DataElement(_PIXEL_DATA, "OB", b"")
        elem.is_undefined_length = True
        ds.add(elem)
        self.stack.append(_Frame("pixels", fragments=[], element=elem))

    def _close_top(self) -> None:
        frame = self.stack.pop()
        if frame.kind == "pixels" and frame.element is not None:
            frame.element.value = b"".join(
                b"\xfe\xff\x00\xe0" + len(f).to_bytes(4, "little") + f
                for f in frame.fragments or [])

    def _delimiter(self, index: int, tag: int, vr_token: str | None, text: str) -> int:
        lineno = index + 1
        frame = self.top
        if tag == _ITEM:
            if frame.kind == "pixels":
                if text.startswith("(no value available)") or not self._bare(text):
                    data = b""
                else:
                    data = self._value(lineno, "OB", self._bare(text)) or b""
                    if self._bare(text).endswith("..."):
                        raise self.fail(lineno, "the pixel data was shortened by the dump "
                                                "('...'); dump with full values")
                assert frame.fragments is not None
                frame.fragments.append(data)
                return index
            if frame.kind == "item":
                self.stack.pop()
                frame = self.top
            if frame.kind != "seq" or frame.sequence is None:
                raise self.fail(lineno, "an item (fffe,e000) outside of a sequence")
            item = Dataset()
            item.is_undefined_length_sequence_item = "undefined length" in text
            frame.sequence.append(item)
            self.stack.append(_Frame("item", dataset=item))
            return index
        if tag == _ITEM_END:
            if frame.kind != "item":
                raise self.fail(lineno, "an item end (fffe,e00d) without an item")
            self.stack.pop()
            return index
        # sequence end
        if frame.kind == "item":
            self.stack.pop()
            frame = self.top
        if frame.kind not in ("seq", "pixels"):
            raise self.fail(lineno, "a sequence end (fffe,e0dd) without a sequence")
        self._close_top()
        return index


def parse_dump(text: str, *, base_dir: str | os.PathLike[str] = ".") -> ParsedDump:
    """Read dump text into a data set and meta header elements."""
    return _Parser(text, Path(base_dir)).parse()


@contextlib.contextmanager
def _lenient_values() -> Iterator[None]:
    """Let pydicom hold values that break their VR's rules (we warn instead)."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before


def _has_non_ascii(ds: Dataset) -> bool:
    for elem in ds.iterall():
        for v in values_of(elem.value):
            if isinstance(v, str) and not v.isascii():
                return True
            if type(v).__name__ == "PersonName" and not str(v).isascii():
                return True
    return False


def dataset_from_dump(text: str, *, base_dir: str | os.PathLike[str] = ".",
                      ) -> tuple[Dataset, list[str]]:
    """The data set (with a complete ``file_meta``) a dump describes, and
    the warnings."""
    with _lenient_values():
        parsed = parse_dump(text, base_dir=base_dir)
        ds, notes = parsed.dataset, parsed.warnings
        ts_text = str(parsed.meta.get("TransferSyntaxUID") or pydicom.uid.ExplicitVRLittleEndian)
        ts = UID(ts_text)
        if not ts.is_transfer_syntax:
            raise ToolError(f"(0002,0010) TransferSyntaxUID {ts_text!r} is not a transfer "
                            "syntax pacsnode can write")
        pixels = ds.get(_PIXEL_DATA)
        if pixels is not None:
            encapsulated = bool(pixels.is_undefined_length)
            if encapsulated and not ts.is_encapsulated:
                raise ToolError(f"the pixel data is encapsulated (PixelSequence) but the "
                                f"transfer syntax {ts.name} is not a compressed one")
            if ts.is_encapsulated and not encapsulated and pixels.value:
                raise ToolError(f"the transfer syntax {ts.name} needs encapsulated pixel data "
                                "(a PixelSequence)")
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"),
                              ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            given, in_ds = parsed.meta.get(meta_key), ds.get(key)
            if given and in_ds and str(given) != str(in_ds):
                notes.append(f"meta header {meta_key} {given} differs from the data set's "
                             f"{key} {in_ds}; the data set's is written")
        if "SpecificCharacterSet" not in ds and _has_non_ascii(ds):
            ds.SpecificCharacterSet = "ISO_IR 192"
            notes.append("non-ASCII text and no SpecificCharacterSet: "
                         "added SpecificCharacterSet ISO_IR 192 (UTF-8)")
        ds.file_meta = file_meta_for(ds, str(ts), parsed.meta)
    return ds, notes


def _read_text(path: Path) -> str:
    data = path.read_bytes() if str(path) != "-" else sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # dcmdump prints ISO_IR 100 text as raw bytes


def create_from_dump(out: str | os.PathLike[str], dump: str | os.PathLike[str]) -> list[str]:
    """Write the Part 10 file ``out`` described by the dump file ``dump``
    (``-`` for standard input); returns the warnings."""
    src = Path(dump)
    try:
        text = _read_text(src)
    except OSError as exc:
        raise ToolError(f"{src}: cannot read: {exc.strerror or exc}") from None
    try:
        ds, notes = dataset_from_dump(text, base_dir=src.parent if str(src) != "-" else ".")
    except ToolError as exc:
        raise ToolError(f"{src}: {exc}") from None
    with _lenient_values():
        try:
            write_atomic(ds, out)
        except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
            raise ToolError(f"{out}: cannot write: {exc}") from None
    return notes
