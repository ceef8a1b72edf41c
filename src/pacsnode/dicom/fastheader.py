"""A hand-written reader for the header of a Part 10 file, straight to DICOM
JSON.

Why hand-written: at ingest, pydicom's reader (``dcmread`` with
``stop_before_pixels``) plus ``Dataset.to_json_dict`` cost several times
the rest of the store of a small instance.  This walker reads the
common encodings (Implicit and Explicit VR Little Endian, and the
encapsulated syntaxes whose data set is Explicit VR Little Endian) with
``struct.unpack_from`` and builds the JSON directly, in a small fraction of
that time.  Its answer is exactly what ``header.read_header`` +
``to_json_dict(bulk_data_threshold=1024, suppress_invalid_tags=True)`` give;
for anything it does not reproduce exactly (other syntaxes and character
sets, values pydicom would reject, ambiguous VRs it cannot settle, malformed
or truncated input) it returns None and the caller takes pydicom's path.

What pydicom 3.0.2 does, and so this does too:

* Implicit VR: the VR comes from the public dictionary; (gggg,0000) is UL; a
  private creator is LO; another private element takes its VR from the
  private dictionary through its creator, else UN.  An explicit UN is
  replaced the same way, and one of undefined length is a sequence.
* The first element of the data set, and of each item of an explicit
  sequence, decides whether it is read as implicit or explicit VR.
* "US or SS" follows Pixel Representation; Overlay, Waveform and nested Pixel
  Data read in Implicit VR are OW.
* to_json_dict converts values under strict validation, and drops an element
  whose value fails it; here the whole answer is None instead.
"""

from __future__ import annotations

import re
from base64 import b64encode
from codecs import latin_1_decode, utf_8_decode
from dataclasses import dataclass
from struct import Struct, error as StructError, unpack
from typing import Any, Callable

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.filewriter import (_AMBIGUOUS_OB_OW_TAGS, _AMBIGUOUS_US_SS_TAGS,
                                _OVERLAY_DATA_TAGS)
from pydicom.tag import _LUT_DESCRIPTOR_TAGS
from pydicom.uid import PrivateTransferSyntaxes

from .header import BULK_DATA_THRESHOLD, BULK_URI_PREFIX
from .values import person_name_json
from .vr import LONG_LENGTH_VRS, VRS

__all__ = ["FastHeader", "parse_fast", "BULK_DATA_THRESHOLD", "BULK_URI_PREFIX"]

#: Binary values whose base64 form would exceed header.BULK_DATA_THRESHOLD
#: become BulkDataURI markers, as in header.header_json_dict.
_INLINE_MAX = BULK_DATA_THRESHOLD // 4 * 3

_IMPLICIT_LE = "1.2.840.10008.1.2"
#: Data sets that are not plain Little Endian: Big Endian, Deflated, JPIP
#: Referenced Deflate.
_OTHER_ENCODINGS = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
                              "1.2.840.10008.1.2.4.95"})

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_REPRESENTATION = "00280103"
#: pydicom's stop_before_pixels stops at any of the three pixel data elements.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_MAX_DEPTH = 32

_IMPLICIT_HEADER = Struct("<HHL").unpack_from
_EXPLICIT_HEADER = Struct("<HH2sH").unpack_from
_UL = Struct("<L").unpack_from

_META_KEYS = {0x0002: "MediaStorageSOPClassUID", 0x0003: "MediaStorageSOPInstanceUID",
              0x0010: "TransferSyntaxUID"}

#: Specific Character Set values read here, as pydicom decodes them: the
#: default repertoire is decoded as ISO 8859-1, like ISO_IR 100.
_LATIN_1, _UTF_8 = "latin-1", "utf-8"
_ENCODINGS = {"": _LATIN_1, "ISO_IR 6": _LATIN_1, "ISO_IR 100": _LATIN_1,
              "ISO_IR 192": _UTF_8}

#: Explicit VR code → (VR, whether its length takes 4 bytes after 2 reserved).
_VR_CODES = {vr.encode(): (vr, vr in LONG_LENGTH_VRS) for vr in VRS}
_NO_VR = (None, False)

# pydicom's validation regexes (valuerep.VR_REGEXES), anchored at the very
# end: pydicom's "$" also matches before a final newline, which it rejects
# separately.  IS and UI are decoded as ISO 8859-1, where \d is [0-9].
_IS_MATCH = re.compile(r" *[+\-]?[0-9]+ *").fullmatch
_DS_CHARS = "0123456789.+-eE"
_UI_MATCH = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*").fullmatch


class _Fallback(Exception):
    """The walk met something it does not reproduce exactly."""


@dataclass(slots=True)
class FastHeader:
    transfer_syntax: str
    meta: dict[str, str]
    body: dict[str, Any]
    stop: int
    #: Where the data set starts (the end of the file meta).
    start: int = 0


# Caches of what is looked up per element; bounded, since tags and private
# creators come from the input.
_CACHE_LIMIT = 16384
_KEYS: dict[int, str] = {}
_PUBLIC_VRS: dict[int, str | None] = {}
_PRIVATE_VRS: dict[tuple[int, str], str] = {}


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < _CACHE_LIMIT:
            _KEYS[tag] = key
    return key


def _public_vr(tag: int) -> str | None:
    try:
        return _PUBLIC_VRS[tag]
    except KeyError:
        pass
    try:
        vr: str | None = str(dictionary_VR(tag))
    except KeyError:
        vr = None
    if len(_PUBLIC_VRS) < _CACHE_LIMIT:
        _PUBLIC_VRS[tag] = vr
    return vr


def _private_vr(tag: int, creators: dict[int, str | None]) -> str:
    """pydicom's VR for a private element it has no explicit VR for."""
    elem = tag & 0xFFFF
    if 0x10 <= elem < 0x100:
        return "LO"
    block = (tag & 0xFFFF0000) | (elem >> 8)
    if elem < 0x100 or block not in creators:
        return "UN"
    creator = creators[block]
    if creator is None:
        raise _Fallback
    vr = _PRIVATE_VRS.get((tag, creator))
    if vr is None:
        try:
            vr = str(private_dictionary_VR(tag, creator))
        except KeyError:
            vr = "UN"
        if len(_PRIVATE_VRS) < _CACHE_LIMIT:
            _PRIVATE_VRS[(tag, creator)] = vr
    return vr


def _ambiguous_vr(tag: int, vr: str, top: bool) -> str:
    """pydicom's correction of an ambiguous VR read in Implicit VR (its
    filewriter.correct_ambiguous_vr_element).  "US or SS" is kept for the
    end of the walk, and only at the top level, where it depends on Pixel
    Representation alone."""
    if vr == "OB or OW" and (tag in _OVERLAY_DATA_TAGS or tag in _AMBIGUOUS_OB_OW_TAGS
                             or tag == 0x7FE00010):
        return "OW"
    if vr == "US or SS" and top and tag in _AMBIGUOUS_US_SS_TAGS:
        return vr
    raise _Fallback


class _Walk:
    __slots__ = ("data", "size", "complete", "decode", "seen_sequence", "us_or_ss")

    def __init__(self, data: bytes | memoryview, complete: bool) -> None:
        self.data = data
        self.size = len(data)
        self.complete = complete
        #: text in the data set's character set
        self.decode: Callable[[bytes | memoryview], str] = _latin_1
        self.seen_sequence = False
        #: top level "US or SS" elements: (key, value offset, length, tag)
        self.us_or_ss: list[tuple[str, int, int, int]] = []


def _latin_1(raw: bytes | memoryview) -> str:
    return latin_1_decode(raw)[0]


def _utf_8(raw: bytes | memoryview) -> str:
    return utf_8_decode(raw, "strict", True)[0]


def parse_fast(buf: bytes | bytearray | memoryview, complete: bool) -> FastHeader | None:
    """The header of the Part 10 file starting ``buf`` as DICOM JSON, or None
    when pydicom must read it.  ``complete``: ``buf`` is the whole file."""
    try:
        data = buf if isinstance(buf, bytes) else memoryview(buf).cast("B")
        return _parse(_Walk(data, complete))
    except (_Fallback, StructError, ValueError, IndexError, KeyError, TypeError,
            OverflowError, RecursionError):
        return None


def _parse(w: _Walk) -> FastHeader | None:
    data, size = w.data, w.size
    if size < 132 or bytes(data[128:132]) != b"DICM":
        return None
    meta, pos = _read_meta(w, 132)
    ts = meta.get("TransferSyntaxUID")
    if ts is None or not _UI_MATCH(ts) or ts in _OTHER_ENCODINGS \
            or ts in PrivateTransferSyntaxes:
        return None
    implicit = ts == _IMPLICIT_LE
    if pos + 6 <= size:
        if data[pos] == 0 and data[pos + 1] == 0:
            return None  # a command group: pydicom reads it apart
        # pydicom lets the first element decide, whatever the syntax says.
        implicit = not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)
    body, stop = _read_dataset(w, pos, -1, size, implicit, True, 0)
    if w.us_or_ss:
        _resolve_us_or_ss(w, body)
    return FastHeader(ts, meta, body, stop, pos)


def _read_meta(w: _Walk, pos: int) -> tuple[dict[str, str], int]:
    """The file meta UIDs, as pydicom reads group 0002 (Explicit VR LE, up to
    the first element of another group), and where the data set starts."""
    data, size = w.data, w.size
    meta: dict[str, str] = {}
    while True:
        if pos + 8 > size:
            if pos == size and w.complete:
                return meta, pos
            raise _Fallback
        group, elem, code, length = _EXPLICIT_HEADER(data, pos)
        if group != 2:
            return meta, pos
        vr, long = _VR_CODES.get(code, _NO_VR)
        if vr is None:
            raise _Fallback
        pos += 8
        if long:
            if pos + 4 > size:
                raise _Fallback
            length = _UL(data, pos)[0]
            pos += 4
        if length == _UNDEFINED or pos + length > size:
            raise _Fallback
        name = _META_KEYS.get(elem)
        if name is not None:
            if vr != "UI":
                raise _Fallback
            value = _latin_1(data[pos:pos + length]).rstrip("\0 ")
            if "\\" in value:
                raise _Fallback
            meta[name] = value.strip()
        pos += length


def _read_dataset(w: _Walk, pos: int, end: int, limit: int, implicit: bool, top: bool,
                  depth: int) -> tuple[dict[str, Any], int]:
    """The elements from ``pos`` as DICOM JSON, and where they end: at
    ``end`` for an item of defined length, after the item delimiter for one
    of undefined length (``end`` -1), at Pixel Data or the end of the file for
    the top level data set.  No element may cross ``limit``."""
    data = w.data
    body: dict[str, Any] = {}
    creators: dict[int, str | None] = {}
    previous = -1
    implicit_header, explicit_header, vr_codes = _IMPLICIT_HEADER, _EXPLICIT_HEADER, _VR_CODES
    keys, converters = _KEYS, _CONVERTERS
    while pos != end:
        if pos + 8 > limit:
            if top and pos == w.size and w.complete:
                break
            raise _Fallback
        if implicit:
            group, elem, length = implicit_header(data, pos)
            vr: str | None = None
            long = False
            pos += 8
        else:
            group, elem, code, length = explicit_header(data, pos)
            vr, long = vr_codes.get(code, _NO_VR)
            if long:
                if pos + 12 > limit:
                    raise _Fallback
                length = _UL(data, pos + 8)[0]
                pos += 12
            else:
                pos += 8
        tag = group << 16 | elem
        if tag >= 0x7FE00008:
            if tag == _ITEM_END and end == -1 and not top and not length and not long:
                return body, pos
            if top and tag in _PIXEL_TAGS:
                return body, pos - (12 if long else 8)
            if group == 0xFFFE:
                raise _Fallback
        if tag <= previous:
            raise _Fallback
        previous = tag
        key = keys.get(tag) or _key(tag)

        if length == _UNDEFINED:
            if implicit:
                vr = _public_vr(tag)
                if vr is None and pos + 4 <= limit and _UL(data, pos)[0] == 0xE000FFFE:
                    vr = "SQ"  # pydicom looks ahead for an item
            elif vr == "UN":
                vr = "SQ"
            if vr != "SQ":
                raise _Fallback
            items, pos = _read_sequence(w, pos, _UNDEFINED, limit, implicit, depth)
            body[key] = {"vr": "SQ", "Value": items}
            w.seen_sequence = True
            continue
        if pos + length > limit:
            raise _Fallback

        if implicit:
            vr = _PUBLIC_VRS.get(tag) or _public_vr(tag)
            if vr is None:
                if group & 1:
                    vr = _private_vr(tag, creators)
                elif elem == 0:
                    vr = "UL"
                else:
                    raise _Fallback  # pydicom drops it under strict reading
            elif " or " in vr:
                vr = _ambiguous_vr(tag, vr, top)
                if vr == "US or SS":
                    w.us_or_ss.append((key, pos, length, tag))
                    body[key] = None
                    pos += length
                    continue
        elif vr is None:
            raise _Fallback
        elif vr == "UN":
            if group & 1:
                vr = _private_vr(tag, creators)
            elif length < 0xFFFF:
                vr = _public_vr(tag) or "UN"

        if vr == "SQ":
            items, pos = _read_sequence(w, pos, length, pos + length, implicit, depth)
            body[key] = {"vr": "SQ", "Value": items}
            w.seen_sequence = True
            continue
        convert = converters.get(vr)
        if convert is None:
            raise _Fallback
        if tag == 0x00080005:
            _set_encoding(w, data[pos:pos + length], top)
        element = convert(w, data[pos:pos + length], tag, vr)
        body[key] = element
        if group & 1 and 0x10 <= elem < 0x100:
            creators[tag] = _creator(element)
        pos += length
    return body, pos


def _read_sequence(w: _Walk, pos: int, length: int, limit: int, implicit: bool,
                   depth: int) -> tuple[list[dict[str, Any]], int]:
    """The items of a sequence value at ``pos`` and where the value ends."""
    if depth >= _MAX_DEPTH:
        raise _Fallback
    data = w.data
    items: list[dict[str, Any]] = []
    end = -1 if length == _UNDEFINED else pos + length
    while pos != end:
        if pos + 8 > limit:
            raise _Fallback
        group, elem, item_length = _IMPLICIT_HEADER(data, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQUENCE_END:
            # pydicom reads a defined length sequence from its own bytes, so
            # whatever follows a delimiter in it is ignored.
            return items, (pos if end == -1 else end)
        if tag != _ITEM:
            raise _Fallback
        item_implicit = implicit
        if not implicit and pos + 6 <= w.size:
            # The first element of an item of an explicit sequence decides.
            item_implicit = not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)
        if item_length == _UNDEFINED:
            item, pos = _read_dataset(w, pos, -1, limit, item_implicit, False, depth + 1)
        else:
            item_end = pos + item_length
            if item_end > limit:
                raise _Fallback
            item, pos = _read_dataset(w, pos, item_end, item_end, item_implicit, False,
                                      depth + 1)
        items.append(item)
    return items, pos


def _set_encoding(w: _Walk, raw: bytes | memoryview, top: bool) -> None:
    """Specific Character Set: read only at the top level and ahead of any
    sequence (pydicom decodes a sequence read before it with the default)."""
    if not top or w.seen_sequence:
        raise _Fallback
    encoding = _ENCODINGS.get(_latin_1(raw).rstrip(" \x00"))
    if encoding is None:
        raise _Fallback
    w.decode = _utf_8 if encoding == _UTF_8 else _latin_1


def _resolve_us_or_ss(w: _Walk, body: dict[str, Any]) -> None:
    """US when Pixel Representation is 0 or absent, SS otherwise; the first
    value of a LUT descriptor must then still fit US."""
    pixel_representation = body.get(_PIXEL_REPRESENTATION)
    if pixel_representation is None:
        vr = "US"
    else:
        value = pixel_representation.get("Value")
        if value is None or len(value) != 1:
            raise _Fallback
        vr = "US" if value[0] == 0 else "SS"
    for key, pos, length, tag in w.us_or_ss:
        element = _numbers(w, w.data[pos:pos + length], 0, vr)
        if tag in _LUT_DESCRIPTOR_TAGS and element.get("Value", [0])[0] < 0:
            raise _Fallback
        body[key] = element


def _creator(element: dict[str, Any]) -> str | None:
    """The value pydicom looks private VRs up with; None (fall back) if it is
    not one string."""
    value = element.get("Value")
    if value is None:
        return None if len(element) > 1 else ""
    if len(value) == 1 and isinstance(value[0], str):
        return value[0]
    return None


# Value converters: (walk, value bytes, tag, VR) → the element's DICOM JSON,
# as pydicom's values.convert_* and DataElement.to_json_dict produce it.
# String VRs: a single empty value has no "Value".

_Converter = Callable[[_Walk, "bytes | memoryview", int, str], dict[str, Any]]


def _string(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    """AS CS DA DT TM: ISO 8859-1, trailing spaces and NULs off the whole
    value."""
    text = latin_1_decode(raw)[0].rstrip(" \x00")
    if "\\" in text:
        return {"vr": vr, "Value": text.split("\\")}
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


def _ae(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    values = [v.strip() for v in latin_1_decode(raw)[0].split("\\")]
    return {"vr": vr, "Value": values} if len(values) > 1 or values[0] else {"vr": vr}


def _ui(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    text = latin_1_decode(raw)[0].rstrip("\0 ")
    if not text:
        return {"vr": vr}
    values = text.split("\\")
    for value in values:
        if value and (len(value) > 64 or not _UI_MATCH(value)):
            raise _Fallback
    return {"vr": vr, "Value": values}


def _ur(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    text = latin_1_decode(raw)[0].rstrip()
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


_MAX_LENGTH = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}


def _decode(w: _Walk, raw: bytes | memoryview) -> str:
    """A value in the data set's character set (a decoding error raises, as
    under strict reading); escape sequences are left to pydicom."""
    text = w.decode(raw)
    if "\x1b" in text:
        raise _Fallback
    return text


def _text(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    """SH LO UC: each value checked for length before its trailing spaces
    and NULs go."""
    values = _decode(w, raw).split("\\")
    limit = _MAX_LENGTH.get(vr)
    if len(values) == 1:
        text = values[0]
        if limit is not None and len(text) > limit:
            raise _Fallback
        text = text.rstrip("\0 ")
        return {"vr": vr, "Value": [text]} if text else {"vr": vr}
    if limit is not None and any(len(v) > limit for v in values):
        raise _Fallback
    return {"vr": vr, "Value": [v.rstrip("\0 ") for v in values]}


def _long_text(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    """ST LT UT: one value, backslashes included."""
    text = _decode(w, raw)
    limit = _MAX_LENGTH.get(vr)
    if limit is not None and len(text) > limit:
        raise _Fallback
    text = text.rstrip("\0 ")
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


def _pn(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    """Each name as its Alphabetic, Ideographic and Phonetic groups, empty
    trailing groups dropped; a name with no group among several makes pydicom
    fail the element."""
    names = []
    for value in _decode(w, raw).rstrip("\x00 ").split("\\"):
        groups = value.split("=")
        if len(groups) > 3 or len(value) > 64 and any(len(g) > 64 for g in groups):
            raise _Fallback
        while groups and not groups[-1]:
            groups.pop()
        names.append(groups)
    if len(names) == 1 and not names[0]:
        return {"vr": vr}
    out = []
    for groups in names:
        if not groups:
            raise _Fallback
        out.append(person_name_json(groups))
    return {"vr": vr, "Value": out}


def _is(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    """Each value as pydicom's IS checks it: unstripped, at most 12
    characters, within 32 bits."""
    text = latin_1_decode(raw)[0].rstrip(" \x00")
    if not text:
        return {"vr": vr}
    out = []
    for value in text.split("\\"):
        if len(value) > 12 or not (value.isdecimal() or _IS_MATCH(value)):
            raise _Fallback
        number = int(value)
        if not -2**31 <= number < 2**31:
            raise _Fallback
        out.append(number)
    return {"vr": vr, "Value": out}


def _ds(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    """Each value as pydicom's DSfloat checks it: stripped, at most 16
    characters."""
    text = latin_1_decode(raw)[0].strip().rstrip(" \x00")
    if not text:
        return {"vr": vr}
    out = []
    for value in text.split("\\"):
        value = value.strip()
        # Python's float() grammar, without underscores, inf and nan (which
        # these characters exclude), is the DS regex's.
        if len(value) > 16 or value.strip(_DS_CHARS):
            raise _Fallback
        out.append(float(value))
    return {"vr": vr, "Value": out}


def _at(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    if not raw:
        return {"vr": vr}
    if len(raw) % 4:
        raise _Fallback
    words = unpack(f"<{len(raw) // 2}H", raw)
    return {"vr": vr, "Value": [f"{words[i]:04X}{words[i + 1]:04X}"
                                for i in range(0, len(words), 2)]}


#: VR → (struct code, size, unpack of one value)
_NUMBERS = {vr: (code, Struct(f"<{code}").size, Struct(f"<{code}").unpack) for vr, code in (
    ("US", "H"), ("SS", "h"), ("UL", "L"), ("SL", "l"), ("UV", "Q"), ("SV", "q"),
    ("FL", "f"), ("FD", "d"))}


def _numbers(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    if not raw:
        return {"vr": vr}
    code, size, single = _NUMBERS[vr]
    if len(raw) == size:
        return {"vr": vr, "Value": list(single(raw))}
    count, rest = divmod(len(raw), size)
    if rest:
        raise _Fallback
    values = list(unpack(f"<{count}{code}", raw))
    if count > 1 and vr == "SS" and tag in _LUT_DESCRIPTOR_TAGS and values[0] < 0:
        values[0] += 65536  # pydicom reads a LUT descriptor's first value as US
    return {"vr": vr, "Value": values}


def _binary(w: _Walk, raw: bytes | memoryview, tag: int, vr: str) -> dict[str, Any]:
    if not raw:
        return {"vr": vr}
    if len(raw) > _INLINE_MAX:
        return {"vr": vr, "BulkDataURI": f"{BULK_URI_PREFIX}{tag:08X}"}
    return {"vr": vr, "InlineBinary": b64encode(raw).decode("ascii")}


_CONVERTERS: dict[str | None, _Converter] = {
    **dict.fromkeys(("AS", "CS", "DA", "DT", "TM"), _string),
    "AE": _ae, "UI": _ui, "UR": _ur, "PN": _pn, "IS": _is, "DS": _ds, "AT": _at,
    **dict.fromkeys(("SH", "LO", "UC"), _text),
    **dict.fromkeys(("ST", "LT", "UT"), _long_text),
    **dict.fromkeys(_NUMBERS, _numbers),
    **dict.fromkeys(("OB", "OD", "OF", "OL", "OV", "OW", "UN"), _binary),
}
