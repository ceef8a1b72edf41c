"""Element values as text and back, one rule per VR.

The text forms are the ones ``dcmdump`` prints and ``dump2dcm`` reads: strings
as they are, multiple values separated by ``\\``, binary numbers in decimal,
OB/UN as hex bytes (``00\\01``), OW as hex words, AT as ``(gggg,eeee)``.
``modify`` and ``create`` both turn command-line or dump text into values
here, and check them against the VR (PS3.5 6.2)."""

from __future__ import annotations

import math
import struct
import warnings
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, encode_string
from pydicom.datadict import dictionary_VM, dictionary_VR
from pydicom.multival import MultiValue
from pydicom.valuerep import validate_value

from .common import ToolError, parse_tag, tag_text

__all__ = ["STRING_VRS", "TEXT_VRS", "INT_VRS", "FLOAT_VRS", "OTHER_NUMBER_VRS",
           "BYTE_VRS", "ALL_VRS", "parse_text", "check_value", "dictionary_vr",
           "values_of", "check_vm", "check_charset"]

STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH",
                        "ST", "TM", "UC", "UI", "UR", "UT"})
#: String VRs that hold one value: a backslash is part of the text.
TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
INT_VRS = frozenset({"US", "SS", "UL", "SL", "SV", "UV"})
FLOAT_VRS = frozenset({"FL", "FD"})
#: Binary "other" VRs holding numbers: struct format and size.
OTHER_NUMBER_VRS: dict[str, str] = {"OF": "f", "OD": "d", "OL": "L", "OV": "Q"}
BYTE_VRS = frozenset({"OB", "UN"})
ALL_VRS = STRING_VRS | INT_VRS | FLOAT_VRS | BYTE_VRS | frozenset(OTHER_NUMBER_VRS) | \
    frozenset({"OW", "AT", "SQ"})

_INT_RANGES = {"US": (0, 0xFFFF), "SS": (-0x8000, 0x7FFF), "UL": (0, 0xFFFFFFFF),
               "SL": (-0x80000000, 0x7FFFFFFF), "UV": (0, 2**64 - 1),
               "SV": (-(2**63), 2**63 - 1)}


def dictionary_vr(tag: int) -> str | None:
    """The dictionary VR of a tag, first choice of an ambiguous one
    (``US or SS`` → ``US``); None when the dictionary does not know it."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr.split(" or ")[0].strip()


def _split(text: str) -> list[str]:
    return text.split("\\")


def _int(text: str, vr: str, what: str) -> int:
    try:
        value = int(text.strip(), 0) if text.strip().lower().startswith("0x") else int(text)
    except ValueError:
        raise ToolError(f"{what}: {text!r} is not an integer (VR {vr})") from None
    low, high = _INT_RANGES.get(vr, (-(2**63), 2**64 - 1))
    if not low <= value <= high:
        raise ToolError(f"{what}: {value} is out of range for VR {vr} ({low}..{high})")
    return value


def _float(text: str, vr: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ToolError(f"{what}: {text!r} is not a number (VR {vr})") from None


def parse_text(vr: str, text: str, *, little_endian: bool = True,
               what: str = "value") -> Any:
    """The pydicom value for ``text`` given in ``vr``: ``None`` for an empty
    value, a list for several values.  Raises :class:`ToolError` when the
    text cannot be a value of that VR at all."""
    if vr == "SQ":
        if text.strip():
            raise ToolError(f"{what}: a sequence takes no text value")
        return None
    if text == "":
        return None
    if vr in TEXT_VRS:
        return text
    if vr in STRING_VRS:
        parts = _split(text)
        return parts[0] if len(parts) == 1 else parts
    if vr in INT_VRS or vr in FLOAT_VRS:
        conv = _int if vr in INT_VRS else _float
        nums = [conv(p.strip(), vr, what) for p in _split(text)]
        return nums[0] if len(nums) == 1 else nums
    if vr == "AT":
        tags = []
        for part in _split(text):
            try:
                tags.append(int(parse_tag(part)))
            except ToolError:
                raise ToolError(f"{what}: {part!r} is not a tag (VR AT)") from None
        return tags[0] if len(tags) == 1 else tags
    if vr in BYTE_VRS or vr == "OW":
        digits = 2 if vr != "OW" else 4
        out = bytearray()
        for part in _split(text):
            p = part.strip()
            if not p or len(p) > digits or any(c not in "0123456789abcdefABCDEF" for c in p):
                unit, example = ("byte", "00\\ff") if digits == 2 else ("word", "0000\\ffff")
                raise ToolError(f"{what}: {part!r} is not a hex {unit} (VR {vr}, e.g. {example})")
            n = int(p, 16)
            if digits == 2:
                out.append(n)
            else:
                out += struct.pack("<H" if little_endian else ">H", n)
        return bytes(out)
    if vr in OTHER_NUMBER_VRS:
        fmt = OTHER_NUMBER_VRS[vr]
        conv2 = _float if fmt in "fd" else _int
        nums2 = [conv2(p.strip(), "UL" if fmt == "L" else ("UV" if fmt == "Q" else vr), what)
                 for p in _split(text)]
        order = "<" if little_endian else ">"
        return struct.pack(f"{order}{len(nums2)}{fmt}", *nums2)
    raise ToolError(f"{what}: unsupported VR {vr!r}")


def values_of(value: Any) -> list[Any]:
    """An element value as a list of its values (empty for no value)."""
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def check_value(vr: str, value: Any, what: str = "value") -> None:
    """Raise :class:`ToolError` when ``value`` breaks the rules of ``vr``
    (format, length, characters, range) — pydicom's validators, plus a check
    that floats are finite."""
    if vr in ("SQ", "AT"):
        return
    for v in values_of(value):
        if vr in FLOAT_VRS and isinstance(v, float) and not math.isfinite(v):
            raise ToolError(f"{what}: {v} is not a finite number")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                validate_value(vr, v, pydicom.config.RAISE)
        except (ValueError, TypeError, OverflowError) as exc:
            reason = str(exc).split(" Please see")[0].rstrip(".")
            raise ToolError(f"{what}: {reason}") from None


def check_vm(tag: int, value: Any, what: str) -> None:
    """Refuse several values for an attribute whose VM is 1."""
    try:
        vm = dictionary_VM(tag)
    except KeyError:
        return
    if vm == "1" and len(values_of(value)) > 1 and not isinstance(value, (bytes, str)):
        raise ToolError(f"{what}: {tag_text(tag)} takes a single value, got "
                        f"{len(values_of(value))}")


def check_charset(value: Any, charset: Any, what: str) -> None:
    """Refuse text that the data set's Specific Character Set cannot encode."""
    names = [c for c in values_of(charset) if c] if charset else []
    default_only = not names or names == ["ISO_IR 6"]
    encodings = convert_encodings(names or None)
    for v in values_of(value):
        if not isinstance(v, str) or v.isascii():
            continue
        if default_only:  # the default repertoire is ASCII (PS3.5 6.1.2.1)
            raise ToolError(f"{what}: {v!r} is not ASCII and the data set has no "
                            "SpecificCharacterSet; set it first, e.g. -i "
                            "\"SpecificCharacterSet=ISO_IR 192\"")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                encode_string(v, encodings)
            except (UnicodeError, LookupError, UserWarning, ValueError):
                shown = "\\".join(names)
                raise ToolError(f"{what}: {v!r} cannot be written in SpecificCharacterSet "
                                f"{shown}; set it first, e.g. -i "
                                "\"SpecificCharacterSet=ISO_IR 192\"") from None
