"""Whether a Part 10 file or a data set is whole: it ends on an element
boundary and every length it declares fits (DESIGN.md §7, "Only whole
instances are stored").

The walk reads element headers only (tag, VR, length) with
``struct.unpack_from`` and jumps over values: nothing is decoded, pixel data
least of all.  It checks

* every element value, defined-length sequence and item within what
  encloses it (the file, the sequence, the item);
* undefined-length sequences and items closed by their delimiters;
* encapsulated pixel data: each fragment inside the file, the fragments
  closed by a sequence delimiter;
* the data set ending exactly at the end of the file, on an element
  boundary.

Anything else raises ``Incomplete``, which says where (byte offsets in the
buffer walked) and what.  The ingest turns it into its refusal.

``check_file`` walks a whole Part 10 file; ``check_rest`` only the top level
data set from a given element boundary (after the fast header reader has
already walked, and so checked, what comes before it: ingest's hot path
walks just the Pixel Data element and whatever follows it).
"""

from __future__ import annotations

import mmap
import zlib
from dataclasses import dataclass
from struct import Struct
from typing import Union

from pydicom.datadict import dictionary_VR

from .vr import LONG_LENGTH_CODES, SHORT_LENGTH_CODES

__all__ = ["Incomplete", "Layout", "check_file", "check_rest", "check_bare", "ends_file",
           "file_layout", "plausible_start"]

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_MAX_DEPTH = 64

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
#: Syntaxes whose data set (after the file meta) is a raw deflate stream.
_DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"})

#: VRs that may have an undefined length (PS3.5 7.1.1): SQ and UN hold
#: items; OB and OW encapsulated fragments.
_FRAGMENT_VRS = frozenset({b"OB", b"OW"})


class Incomplete(Exception):
    """A data set that is not whole.  ``end`` is where the bytes ran out when
    they did (a truncated file: ``truncated`` is True); ``offset`` is where
    the element (or item, or fragment) that does not fit starts."""

    def __init__(self, offset: int, what: str, *, truncated: bool, end: int,
                 elements: int = 0) -> None:
        super().__init__(what)
        self.offset, self.what, self.truncated, self.end = offset, what, truncated, end
        #: Top level elements walked whole before this one.
        self.elements = elements

    def describe(self, base: int = 0, of: str = "") -> str:
        """The reason in plain words, offsets counted from ``base`` (the
        start of what the sender sent) and ``of`` naming it ("of the data
        set")."""
        what = self.what.replace("{at}", f"byte {self.offset - base}")
        if self.truncated:
            return f"truncated at byte {self.end - base}{of}: {what}"
        return f"malformed at byte {self.offset - base}{of}: {what}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a Part 10 file's data set starts, and its transfer syntax (None
    when the file meta does not say)."""
    start: int
    transfer_syntax: str | None


class _Walk:
    __slots__ = ("data", "size", "big", "elements")

    def __init__(self, data: Buffer, big: bool) -> None:
        self.data = data
        self.size = len(data)
        self.big = big
        self.elements = 0


_HEADER_LE = Struct("<HH2sH").unpack_from
_HEADER_BE = Struct(">HH2sH").unpack_from
_TAG_LENGTH_LE = Struct("<HHL").unpack_from
_TAG_LENGTH_BE = Struct(">HHL").unpack_from
_UL_LE = Struct("<L").unpack_from
_UL_BE = Struct(">L").unpack_from


def file_layout(data: Buffer) -> Layout:
    """The data set's start and transfer syntax of the Part 10 file ``data``
    (preamble, "DICM", group 0002 in Explicit VR Little Endian up to the
    first element of another group, as pydicom reads it).  Raises
    Incomplete when the file meta is cut or malformed."""
    size = len(data)
    pos = 132
    syntax: str | None = None
    while True:
        if pos + 8 > size:
            if pos == size or (pos + 2 <= size and bytes(data[pos:pos + 2]) != b"\x02\x00"):
                return Layout(pos, syntax)  # the data set starts (cut short, maybe)
            raise Incomplete(pos, "a file meta element header at {at} is cut off",
                             truncated=True, end=size)
        group, elem, vr, length = _HEADER_LE(data, pos)
        if group != 2:
            return Layout(pos, syntax)
        start = pos
        if vr in LONG_LENGTH_CODES:
            if pos + 12 > size:
                raise Incomplete(pos, "a file meta element header at {at} is cut off",
                                 truncated=True, end=size)
            length = _UL_LE(data, pos + 8)[0]
            pos += 12
        elif vr in SHORT_LENGTH_CODES:
            pos += 8
        else:
            raise Incomplete(start, f"file meta element (0002,{elem:04X}) has no valid VR",
                             truncated=False, end=size)
        if length == _UNDEFINED or pos + length > size:
            raise Incomplete(start, f"file meta element (0002,{elem:04X}) at {{at}} declares "
                             f"{_bytes(length)}, {_follow(size - pos)}",
                             truncated=length != _UNDEFINED, end=size)
        if elem == 0x0010:
            syntax = bytes(data[pos:pos + length]).decode("latin-1").rstrip("\0 ").strip()
        pos += length


def check_file(data: Buffer) -> Layout:
    """Check the whole Part 10 file ``data``; its layout."""
    layout = file_layout(data)
    check_rest(data, layout.start, layout.start, layout.transfer_syntax)
    return layout


def check_rest(data: Buffer, start: int, pos: int, transfer_syntax: str | None) -> None:
    """Check the top level data set that starts at ``start`` in ``data``
    from its element boundary ``pos`` to the end of ``data``."""
    if transfer_syntax in _DEFLATED:
        _check_deflated(data, start)
        return
    big = transfer_syntax == _EXPLICIT_BE
    implicit = _first_is_implicit(data, start, transfer_syntax)
    walk = _Walk(data, big)
    _elements(walk, pos, walk.size, implicit, True, 0)


def check_bare(data: Buffer) -> None:
    """Check ``data`` as a data set without file meta (Little Endian, its
    first element saying whether implicit or explicit VR, as pydicom reads
    it) — or Explicit VR Big Endian when its first group reads as 1024 or
    more in Little Endian (pydicom's guess for such files)."""
    big = len(data) >= 6 and not _first_is_implicit(data, 0, None) \
        and _TAG_LENGTH_LE(data, 0)[0] >= 1024
    check_rest(data, 0, 0, _EXPLICIT_BE if big else None)


def _first_is_implicit(data: Buffer, start: int, transfer_syntax: str | None) -> bool:
    """pydicom's rule: the first element of the data set decides implicit or
    explicit VR, whatever the syntax says (Big Endian is always explicit)."""
    if transfer_syntax == _EXPLICIT_BE:
        return False
    if start + 6 > len(data):
        return transfer_syntax == _IMPLICIT_LE
    return not (0x40 < data[start + 4] < 0x5B and 0x40 < data[start + 5] < 0x5B)


def _check_deflated(data: Buffer, start: int) -> None:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(bytes(data[start:])) + inflater.flush()
    except zlib.error as exc:
        raise Incomplete(start, f"the deflated data set at {{at}} does not inflate ({exc})",
                         truncated=False, end=len(data)) from None
    if not inflater.eof:
        raise Incomplete(start, "the deflated data set starting at {at} ends before its "
                         "compressed stream does", truncated=True, end=len(data))
    try:
        check_rest(inflated, 0, 0, None)
    except Incomplete as exc:
        raise Incomplete(start, "the data set inflated from {at} is not whole: "
                         + exc.describe(of=" of the inflated data"),
                         truncated=False, end=len(data)) from None


def _bytes(length: int) -> str:
    return "an undefined length" if length == _UNDEFINED else f"{length} bytes"


def _follow(left: int) -> str:
    return f"only {left} follow" if left > 0 else "none follow"


def _tag(group: int, elem: int) -> str:
    return f"({group:04X},{elem:04X})"


#: Public VR of a tag, cached: is it a sequence (read in Implicit VR)?
_IS_SEQUENCE: dict[int, bool] = {}


def _is_sequence(tag: int) -> bool:
    known = _IS_SEQUENCE.get(tag)
    if known is None:
        try:
            known = dictionary_VR(tag) == "SQ"
        except KeyError:
            known = False
        if len(_IS_SEQUENCE) < 16384:
            _IS_SEQUENCE[tag] = known
    return known


def _elements(w: _Walk, pos: int, end: int, implicit: bool, top: bool, depth: int) -> int:
    """Walk the elements from ``pos``: to exactly ``end`` (the end of the
    data, or of an item of defined length), or, for an item of undefined
    length (``end`` negative: its limit is ``-end``), through its item
    delimiter.  Where the walk ends."""
    data, size = w.data, w.size
    delimited = end < 0
    limit = -end if delimited else end
    if w.big:
        header, tag_length, ul = _HEADER_BE, _TAG_LENGTH_BE, _UL_BE
    else:
        header, tag_length, ul = _HEADER_LE, _TAG_LENGTH_LE, _UL_LE
    long_vrs, short_vrs = LONG_LENGTH_CODES, SHORT_LENGTH_CODES
    while pos != end:
        if pos + 8 > limit:
            if pos > limit:  # cannot happen: each step is checked below
                raise AssertionError
            if delimited:
                raise Incomplete(pos, "an item of undefined length has no item delimiter "
                                 "(its elements run to {at})", truncated=limit == size,
                                 end=size, elements=w.elements)
            if limit == size:
                raise Incomplete(pos, f"the element header at {{at}} is cut off "
                                 f"({size - pos} of at least 8 bytes)", truncated=True,
                                 end=size, elements=w.elements)
            raise Incomplete(pos, f"an element at {{at}} runs past the end of its item "
                             f"({limit - pos} bytes left)", truncated=False, end=size,
                             elements=w.elements)
        start = pos
        if implicit:
            group, elem, length = tag_length(data, pos)
            vr = b""
            pos += 8
        else:
            group, elem, vr, length = header(data, pos)
            if group == 0xFFFE:  # delimiters and items have no VR
                length = ul(data, pos + 4)[0]
                pos += 8
            elif vr in long_vrs:
                if pos + 12 > limit:
                    raise Incomplete(start, f"the header of {_tag(group, elem)} at "
                                     "{at} is cut off", truncated=limit == size, end=size,
                                     elements=w.elements)
                length = ul(data, pos + 8)[0]
                pos += 12
            elif vr in short_vrs:
                pos += 8
            else:
                raise Incomplete(start, f"{_tag(group, elem)} at {{at}} has no valid "
                                 f"VR ({bytes(vr)!r})", truncated=False, end=size,
                                 elements=w.elements)
        if group == 0xFFFE:
            tag = group << 16 | elem
            if tag == _ITEM_END and delimited and not top:
                return pos
            raise Incomplete(start, f"{_tag(group, elem)} at {{at}} is an item or delimiter "
                             "outside any sequence", truncated=False, end=size,
                             elements=w.elements)
        if length == _UNDEFINED:
            if implicit:
                fragments = group == 0x7FE0 and elem == 0x0010
                items_implicit = True
            elif vr in _FRAGMENT_VRS:
                fragments, items_implicit = True, False
            elif vr == b"SQ":
                fragments, items_implicit = False, False
            elif vr == b"UN":  # PS3.5 6.2.2: its items are Implicit VR Little Endian
                fragments, items_implicit = False, True
            else:
                raise Incomplete(start, f"{_tag(group, elem)} at {{at}} has an "
                                 f"undefined length, which VR {vr.decode('latin-1')} cannot "
                                 "have", truncated=False, end=size, elements=w.elements)
            if fragments:
                pos = _fragments(w, pos, limit, start, group, elem)
            else:
                big = w.big
                if items_implicit and big:
                    w.big = False
                try:
                    pos = _items(w, pos, -1, limit, items_implicit, depth, start, group, elem)
                finally:
                    w.big = big
        else:
            if pos + length > limit:
                left = limit - pos
                if limit == size:
                    raise Incomplete(start, f"{_tag(group, elem)} at {{at}} declares "
                                     f"{length} bytes, {_follow(left)}", truncated=True,
                                     end=size, elements=w.elements)
                raise Incomplete(start, f"{_tag(group, elem)} at {{at}} declares "
                                 f"{length} bytes, {left} are left in its item",
                                 truncated=False, end=size, elements=w.elements)
            if vr == b"SQ" or (implicit and length and _is_sequence(group << 16 | elem)):
                _items(w, pos, pos + length, pos + length, implicit, depth, start, group,
                       elem)
            pos += length
        if top:
            w.elements += 1
    return pos


def _items(w: _Walk, pos: int, end: int, limit: int, implicit: bool, depth: int,
           owner: int, group: int, elem: int) -> int:
    """The items of the sequence (gggg,eeee) at ``owner``, from ``pos``: up
    to exactly ``end`` (defined length) or through its sequence delimiter
    (``end`` -1), none past ``limit``.  Where the sequence ends."""
    if depth >= _MAX_DEPTH:
        raise Incomplete(owner, f"sequence {_tag(group, elem)} at {{at}} is nested more than "
                         f"{_MAX_DEPTH} deep", truncated=False, end=w.size, elements=w.elements)
    data, size = w.data, w.size
    tag_length = _TAG_LENGTH_BE if w.big else _TAG_LENGTH_LE
    while pos != end:
        if pos + 8 > limit:
            if limit == size:
                what = ("has no sequence delimiter" if end < 0 else
                        "is cut off inside an item header")
                raise Incomplete(owner, f"sequence {_tag(group, elem)} at {{at}} {what}",
                                 truncated=True, end=size, elements=w.elements)
            raise Incomplete(pos, f"an item header of sequence {_tag(group, elem)} at {{at}} "
                             "runs past the end of the sequence", truncated=False, end=size,
                             elements=w.elements)
        item_group, item_elem, length = tag_length(data, pos)
        tag = item_group << 16 | item_elem
        start = pos
        pos += 8
        if tag == _SEQUENCE_END:
            return pos if end < 0 else end  # pydicom ignores what follows in a defined one
        if tag != _ITEM:
            raise Incomplete(start, f"sequence {_tag(group, elem)} holds "
                             f"{_tag(item_group, item_elem)} at {{at}} where an item belongs",
                             truncated=False, end=size, elements=w.elements)
        # The first element of an item of an explicit sequence decides (pydicom).
        item_implicit = implicit
        if not implicit and not w.big and pos + 6 <= size:
            item_implicit = not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)
        if length == _UNDEFINED:
            pos = _elements(w, pos, -limit, item_implicit, False, depth + 1)
        else:
            if pos + length > limit:
                truncated = limit == size
                raise Incomplete(start, f"an item of sequence {_tag(group, elem)} at {{at}} "
                                 f"declares {length} bytes, "
                                 + (_follow(limit - pos) if truncated else
                                    f"{limit - pos} are left in the sequence"),
                                 truncated=truncated, end=size, elements=w.elements)
            pos = _elements(w, pos, pos + length, item_implicit, False, depth + 1)
    return pos


def _fragments(w: _Walk, pos: int, limit: int, owner: int, group: int, elem: int) -> int:
    """Encapsulated pixel data (PS3.5 A.4) from ``pos``: items of defined
    length, each inside ``limit``, through the sequence delimiter."""
    data, size = w.data, w.size
    tag_length = _TAG_LENGTH_BE if w.big else _TAG_LENGTH_LE
    what = f"encapsulated {_tag(group, elem)} at {{at}}"
    while True:
        if pos + 8 > limit:
            raise Incomplete(owner, what + " has no sequence delimiter after its last fragment",
                             truncated=limit == size, end=size, elements=w.elements)
        item_group, item_elem, length = tag_length(data, pos)
        tag = item_group << 16 | item_elem
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM or length == _UNDEFINED:
            raise Incomplete(pos, f"{_tag(item_group, item_elem)} of {_bytes(length)} at {{at}} "
                             f"inside encapsulated {_tag(group, elem)}, where a fragment "
                             "belongs", truncated=False, end=size, elements=w.elements)
        if pos + 8 + length > limit:
            raise Incomplete(pos, f"a fragment of {_tag(group, elem)} at {{at}} declares "
                             f"{length} bytes, {_follow(limit - pos - 8)}",
                             truncated=limit == size, end=size, elements=w.elements)
        pos += 8 + length


def ends_file(head: Buffer, start: int, pos: int, size: int,
              transfer_syntax: str | None) -> bool:
    """Whether the top level element at ``pos``, whose header is in ``head``
    (the first bytes of a file of ``size`` bytes whose data set starts at
    ``start``), has a defined length that ends it exactly at the end of the
    file: the common case of native Pixel Data, checked without reading
    further.  False means "walk the rest" (``check_rest``), not "refuse"."""
    if transfer_syntax in _DEFLATED or transfer_syntax == _EXPLICIT_BE \
            or pos + 12 > len(head):
        return False
    length: int  # (struct's unpack_from gives Any)
    if _first_is_implicit(head, start, transfer_syntax):
        length = _TAG_LENGTH_LE(head, pos)[2]
        end = pos + 8 + length
    else:
        vr = bytes(head[pos + 4:pos + 6])
        if vr in LONG_LENGTH_CODES:
            length = _UL_LE(head, pos + 8)[0]
            end = pos + 12 + length
        else:
            length = _HEADER_LE(head, pos)[3]
            end = pos + 8 + length
    return length != _UNDEFINED and end == size


def plausible_start(data: Buffer, start: int) -> bool:
    """Whether the first element of the data set at ``start`` looks like a
    DICOM element as far as it goes (a known explicit VR; a tag of the
    public dictionary, or a private or group length tag; a group number
    that exists): telling a data set cut in its first element from bytes
    that are not DICOM at all."""
    left = len(data) - start
    if left < 4:
        return left < 2 or 0x0008 <= _GROUP_LE(data, start)[0] <= 0x7FE0
    group: int
    elem: int
    group, elem = _TAG_LE(data, start)
    if left >= 6 and not _first_is_implicit(data, start, None):
        return bytes(data[start + 4:start + 6]) in LONG_LENGTH_CODES | SHORT_LENGTH_CODES
    if group & 1 or elem == 0:
        return 0x0008 <= group < 0xFFFE
    try:
        dictionary_VR(group << 16 | elem)
    except KeyError:
        return False
    return True


_GROUP_LE = Struct("<H").unpack_from
_TAG_LE = Struct("<HH").unpack_from
