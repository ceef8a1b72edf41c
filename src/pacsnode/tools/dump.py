"""``pacsnode dump``: a file's meta header and data set in dcmdump's text
shape, or as the DICOM JSON model (PS3.18 F.2).

The text follows DCMTK 3.6.7's ``dcmdump`` column for column::

    (0010,0010) PN [DOE^JOHN]                               #   8, 1 PatientName

tag, VR, value (strings in brackets, UIDs with a name as ``=Name``, numbers
bare, binary data as hex), then after ``#`` the value length and the value
multiplicity and the attribute's name.  Values longer than a line are cut with
``...`` unless ``full`` (dcmdump ``+L``) is asked for; only full dumps can be
read back by ``pacsnode create`` / ``dump2dcm``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_is_retired, keyword_for_tag, private_dictionary_description
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from ..dicom.vr import LONG_LENGTH_VRS
from .common import ToolError, parse_tag, read_dicom, tag_text
from .textvalues import FLOAT_VRS, INT_VRS, OTHER_NUMBER_VRS, STRING_VRS, TEXT_VRS, values_of
from .uid_names import DCMTK_UID_NAMES, TRANSFER_SYNTAX_NAMES

__all__ = ["dump_dataset", "dump_file", "search_lines", "dataset_json", "element_name",
           "transfer_syntax_name", "LINE_LIMIT", "VALUE_WIDTH"]

#: dcmdump's DCM_OptPrintLineLength: longer values are cut with "...".
LINE_LIMIT = 70
#: dcmdump's DCM_OptPrintValueLength: the value column is padded to this.
VALUE_WIDTH = 40
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010


class _Encoding:
    """How the data set is encoded: needed for value lengths and OW words."""

    def __init__(self, implicit: bool, little: bool, encodings: list[str]) -> None:
        self.implicit = implicit
        self.little = little
        self.encodings = encodings


def transfer_syntax_name(uid: str) -> str:
    """The name dcmdump prints after ``# Used TransferSyntax:``."""
    if uid in TRANSFER_SYNTAX_NAMES:
        return TRANSFER_SYNTAX_NAMES[uid]
    name = UID(uid).name
    return name if name and name != uid else "Unknown Transfer Syntax"


def element_name(tag: int, ds: Dataset | None = None) -> str:
    """The last column: dcmdump's attribute name (the keyword, ``RETIRED_``
    for retired ones, the private dictionary's name for known private tags)."""
    t = int(tag)
    group, elem = t >> 16, t & 0xFFFF
    if group & 1:
        if elem == 0:
            return "PrivateGroupLength"
        if 0x0010 <= elem <= 0x00FF:
            return "PrivateCreator"
        creator = None
        if ds is not None:
            creator_elem = ds.get((group << 16) | (elem >> 8))
            creator = creator_elem.value if creator_elem is not None else None
        if isinstance(creator, str):
            try:
                desc = private_dictionary_description(t, creator)
            except KeyError:
                desc = ""
            words = "".join(c if c.isalnum() else " " for c in desc).split()
            if words:
                return "".join(w[:1].upper() + w[1:] for w in words)
        return "Unknown Tag & Data"
    if elem == 0 and group not in (0x0000, 0x0002):
        return "GenericGroupLength"
    keyword = keyword_for_tag(t)
    if not keyword:
        return "Unknown Tag & Data"
    try:
        retired = dictionary_is_retired(t)
    except KeyError:
        retired = False
    return f"RETIRED_{keyword}" if retired else keyword


def _line(level: int, tag: int, vr: str, value: str, length: int | None, vm: int,
          name: str) -> str:
    length_text = "u/l" if length is None else str(length)
    return (f"{'  ' * level}{tag_text(tag)} {vr} {value.ljust(VALUE_WIDTH)} "
            f"# {length_text:>3},{vm:>2} {name}")


def _join_limited(parts: Iterable[str], full: bool) -> str:
    """Values joined with ``\\``, cut with ``...`` like dcmdump when the text
    would pass the line limit."""
    items = list(parts)
    if full:
        return "\\".join(items)
    out = ""
    for i, part in enumerate(items):
        piece = part if i == 0 else "\\" + part
        new_length = len(out) + len(piece)
        last = i == len(items) - 1
        if new_length <= LINE_LIMIT and (last or new_length + 3 <= LINE_LIMIT):
            out += piece
        else:
            out += "..."
            break
    return out


def _format_float(value: float, vr: str) -> str:
    return f"{value:.9g}" if vr in ("FL", "OF") else f"{value:.17g}"


def _string_text(elem: DataElement, full: bool) -> str:
    values = values_of(elem.value)
    if elem.VR in TEXT_VRS:
        text = str(elem.value)
    else:
        text = "\\".join("" if v is None else str(v) for v in values)
    if elem.VR == "UI" and len(values) == 1 and str(values[0]).strip() in DCMTK_UID_NAMES:
        return "=" + DCMTK_UID_NAMES[str(values[0]).strip()]
    if not full and len(text) + 2 > LINE_LIMIT:
        return "[" + text[:LINE_LIMIT - 4] + "..."
    return f"[{text}]"


def _binary_parts(data: bytes, vr: str, little: bool, limit: int | None) -> list[str]:
    """Hex bytes / hex words / numbers of an "other" VR, at most ``limit``."""
    order = "<" if little else ">"
    if vr in ("OB", "UN"):
        chunk = data if limit is None else data[:limit]
        return [f"{b:02x}" for b in chunk]
    if vr == "OW":
        count = len(data) // 2 if limit is None else min(len(data) // 2, limit)
        return [f"{w:04x}" for w in struct.unpack(f"{order}{count}H", data[:count * 2])]
    fmt = OTHER_NUMBER_VRS[vr]
    size = struct.calcsize(fmt)
    count = len(data) // size if limit is None else min(len(data) // size, limit)
    nums = struct.unpack(f"{order}{count}{fmt}", data[:count * size])
    if fmt in "fd":
        return [_format_float(n, vr) for n in nums]
    return [str(n) for n in nums]


def _value_text(elem: DataElement, enc: _Encoding, full: bool) -> str:
    vr = elem.VR
    if elem.value is None or elem.value == "" or elem.value == b"" or \
            (isinstance(elem.value, (list, tuple)) and not elem.value):
        return "(no value available)"
    if vr in STRING_VRS:
        return _string_text(elem, full)
    limit = None if full else 40
    # 40 values never fit in a line, so cutting the list there changes nothing.
    if vr in INT_VRS:
        return _join_limited((str(int(v)) for v in values_of(elem.value)[:limit]), full)
    if vr in FLOAT_VRS:
        return _join_limited((_format_float(float(v), vr)
                              for v in values_of(elem.value)[:limit]), full)
    if vr == "AT":
        return _join_limited((tag_text(int(v)) for v in values_of(elem.value)[:limit]), full)
    if isinstance(elem.value, (bytes, bytearray)):
        data = bytes(elem.value)
        if len(data) & 1:  # shown as written: padded to even length
            data += b"\x00"
        parts = _binary_parts(data, vr if vr in OTHER_NUMBER_VRS or vr in
                              ("OB", "OW", "UN") else "OB", enc.little, limit)
        return _join_limited(parts, full)
    return _join_limited((str(v) for v in values_of(elem.value)), full)


def _vm(elem: DataElement) -> int:
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"):
        return 1
    if elem.VR in TEXT_VRS:
        return 1 if elem.value not in (None, "") else 0
    return len(values_of(elem.value))


def _header_size(vr: str, enc: _Encoding) -> int:
    return 8 if enc.implicit or vr not in LONG_LENGTH_VRS else 12


def _value_length(elem: DataElement, enc: _Encoding) -> int:
    """The encoded value length, padded to even, as it would be written."""
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return len(value) + (len(value) & 1)
    if elem.VR == "SQ":
        return _sequence_length(elem.value, enc)
    fp = DicomBytesIO()
    fp.is_little_endian = enc.little
    fp.is_implicit_VR = enc.implicit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_data_element(fp, elem, enc.encodings)
    except Exception:  # an in-memory element pydicom cannot encode: estimate
        text = "\\".join(str(v) for v in values_of(value))
        return len(text) + (len(text) & 1)
    return len(fp.getvalue()) - _header_size(elem.VR, enc)


def _item_length(item: Dataset, enc: _Encoding) -> int:
    total = 0
    for elem in item:
        total += _header_size(elem.VR, enc)
        if elem.VR == "SQ":
            total += _sequence_length(elem.value, enc)
            if elem.is_undefined_length:
                total += 8
        else:
            total += _value_length(elem, enc)
    return total


def _sequence_length(seq: DicomSequence | None, enc: _Encoding) -> int:
    total = 0
    for item in seq or []:
        total += 8 + _item_length(item, enc)
        if getattr(item, "is_undefined_length_sequence_item", False):
            total += 8
    return total


def _pixel_items(data: bytes) -> list[bytes]:
    """The items of an encapsulated Pixel Data value (Basic Offset Table first)."""
    items: list[bytes] = []
    pos = 0
    while pos + 8 <= len(data):
        tag_group, tag_elem, length = struct.unpack("<HHL", data[pos:pos + 8])
        tag = (tag_group << 16) | tag_elem
        pos += 8
        if tag == _SEQ_END:
            break
        if tag != _ITEM:
            break
        items.append(data[pos:pos + length])
        pos += length
    return items


def _element_lines(elem: DataElement, ds: Dataset, level: int, enc: _Encoding,
                   full: bool, length: int | None = None) -> Iterator[str]:
    tag = int(elem.tag)
    name = element_name(tag, ds)
    if elem.VR == "SQ":
        seq = elem.value if elem.value is not None else DicomSequence()
        undefined = bool(elem.is_undefined_length)
        kind = "undefined" if undefined else "explicit"
        if not undefined and length is None:
            length = _sequence_length(seq, enc)
        yield _line(level, tag, "SQ", f"(Sequence with {kind} length #={len(seq)})",
                    None if undefined else length, 1, name)
        for item in seq:
            item_undefined = bool(getattr(item, "is_undefined_length_sequence_item", False))
            ikind = "undefined" if item_undefined else "explicit"
            yield _line(level + 1, _ITEM, "na", f"(Item with {ikind} length #={len(item)})",
                        None if item_undefined else _item_length(item, enc), 1, "Item")
            yield from _dataset_lines(item, level + 2, enc, full)
            yield _line(level + 1, _ITEM_END, "na", "(ItemDelimitationItem)" if item_undefined
                        else "(ItemDelimitationItem for re-encoding)", 0, 0,
                        "ItemDelimitationItem")
        yield _line(level, _SEQ_END, "na", "(SequenceDelimitationItem)" if undefined
                    else "(SequenceDelimitationItem for re-encod.)", 0, 0,
                    "SequenceDelimitationItem")
        return
    if tag == _PIXEL_DATA and elem.is_undefined_length and \
            isinstance(elem.value, (bytes, bytearray)):
        items = _pixel_items(bytes(elem.value))
        yield _line(level, tag, "OB", f"(PixelSequence #={len(items)})", None, 1, name)
        for item in items:
            text = "(no value available)" if not item else \
                _join_limited(_binary_parts(item, "OB", True, None if full else 40), full)
            yield _line(level + 1, _ITEM, "pi", text, len(item), 1, "Item")
        yield _line(level, _SEQ_END, "na", "(SequenceDelimitationItem)", 0, 0,
                    "SequenceDelimitationItem")
        return
    if length is None:
        length = _value_length(elem, enc)
    yield _line(level, tag, elem.VR, _value_text(elem, enc, full), length, _vm(elem), name)


def _raw_length(ds: Dataset, tag: int) -> int | None:
    """The value length as read from the file, while pydicom still holds the
    element undecoded (it strips padding when it decodes)."""
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF:
        return int(raw.length) + (int(raw.length) & 1)  # written padded to even
    return None


def _dataset_lines(ds: Dataset, level: int, enc: _Encoding, full: bool) -> Iterator[str]:
    for tag in list(ds.keys()):
        length = _raw_length(ds, tag)
        yield from _element_lines(ds[tag], ds, level, enc, full, length)


def _encoding_of(ds: Dataset) -> tuple[_Encoding, str]:
    """The data set's encoding and the name of its transfer syntax."""
    encodings = convert_encodings(ds.get("SpecificCharacterSet"))
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        uid = UID(str(ts))
        if uid.is_transfer_syntax:
            return _Encoding(uid.is_implicit_VR, uid.is_little_endian, encodings), \
                transfer_syntax_name(str(uid))
        return _Encoding(False, True, encodings), transfer_syntax_name(str(uid))
    implicit, little = getattr(ds, "original_encoding", (None, None))
    implicit = bool(implicit) if implicit is not None else False
    little = bool(little) if little is not None else True
    name = ("Little Endian " + ("Implicit" if implicit else "Explicit")) if little \
        else "Big Endian Explicit"
    return _Encoding(implicit, little, encodings), name


_META_ENCODING = _Encoding(False, True, ["iso8859"])


def dump_dataset(ds: Dataset, *, full: bool = False) -> str:
    """The whole dump: the meta header (if any), then the data set."""
    enc, ts_name = _encoding_of(ds)
    meta = getattr(ds, "file_meta", None)
    lines = ["", "# Dicom-File-Format", "", "# Dicom-Meta-Information-Header"]
    if meta is not None and len(meta):
        lines.append("# Used TransferSyntax: Little Endian Explicit")
        for elem in meta:
            lines.extend(_element_lines(elem, meta, 0, _META_ENCODING, full))
    else:
        lines.append("# Used TransferSyntax: Unknown Transfer Syntax")
    lines += ["", "# Dicom-Data-Set", f"# Used TransferSyntax: {ts_name}"]
    lines.extend(_dataset_lines(ds, 0, enc, full))
    return "\n".join(lines) + "\n"


def _search(ds: Dataset, tags: set[int], enc: _Encoding, full: bool) -> Iterator[str]:
    for elem in ds:
        if int(elem.tag) in tags:
            yield from _element_lines(elem, ds, 0, enc, full)
        if elem.VR == "SQ" and elem.value:
            for item in elem.value:
                yield from _search(item, tags, enc, full)


def search_lines(ds: Dataset, keys: Sequence[str], *, full: bool = False) -> list[str]:
    """dcmdump ``+P``: every occurrence of the given attributes, in the meta
    header and at any depth of the data set, one per line, unindented."""
    enc, _ = _encoding_of(ds)
    lines: list[str] = []
    meta = getattr(ds, "file_meta", None)
    for key in keys:  # dcmdump answers one search key after the other
        tags = {int(parse_tag(key))}
        if meta is not None:
            lines.extend(_search(meta, tags, _META_ENCODING, full))
        lines.extend(_search(ds, tags, enc, full))
    return lines


@contextlib.contextmanager
def as_written() -> Iterator[None]:
    """Show elements with the VR they have in the file: pydicom would
    otherwise replace a UN VR with the dictionary's while decoding."""
    before = pydicom.config.replace_un_with_known_vr
    pydicom.config.replace_un_with_known_vr = False
    try:
        yield
    finally:
        pydicom.config.replace_un_with_known_vr = before


def dump_file(path: str | os.PathLike[str], *, full: bool = False,
              tags: Sequence[str] = ()) -> str:
    """Read ``path`` and dump it; with ``tags`` only those attributes."""
    with as_written(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = read_dicom(path)
        try:
            if tags:
                lines = search_lines(ds, tags, full=full)
                return "".join(line + "\n" for line in lines)
            return dump_dataset(ds, full=full)
        except ToolError:
            raise
        except Exception as exc:  # a damaged element that pydicom cannot decode
            raise ToolError(f"{path}: damaged DICOM file: {exc}") from None


def dataset_json(ds: Dataset, source: str | os.PathLike[str] | None = None,
                 bulk_data_threshold: int = 1024) -> dict[str, Any]:
    """The DICOM JSON model of the data set.  Binary values longer than
    ``bulk_data_threshold`` are not included: their ``BulkDataURI`` names the
    file and tag they are in (``file:///…/x.dcm#7FE00010``), a note rather
    than a retrievable resource."""
    base = Path(source).resolve().as_uri() if source is not None else "urn:pacsnode:omitted"

    def note(elem: DataElement) -> str:
        return f"{base}#{int(elem.tag):08X}"

    try:
        return ds.to_json_dict(bulk_data_threshold, note)
    except Exception as exc:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = ds.to_json_dict(bulk_data_threshold, note, suppress_invalid_tags=True)
        except Exception:
            raise ToolError(f"{source}: cannot express as DICOM JSON: {exc}") from None
        warnings.warn(f"{source}: some elements left out of the JSON: {exc}", stacklevel=2)
        return result
