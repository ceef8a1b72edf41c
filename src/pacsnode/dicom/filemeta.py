"""The File Meta Information of a Part 10 file (PS3.10 7.1), walked with
struct from the file's first bytes: where the data set starts and the UIDs
a sender needs (SOP class, SOP instance, transfer syntax), without pydicom.
Used wherever a file's data set goes out as stored (``retrieve``, the
requestor's C-STORE in ``dimse.client``, ``pacsnode send``)."""

from __future__ import annotations

import struct
from pathlib import Path

__all__ = ["read_meta", "MEDIA_SOP_CLASS", "MEDIA_SOP_INSTANCE", "TRANSFER_SYNTAX"]

#: Element numbers (group 0002) of the values ``read_meta`` returns.
MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE, TRANSFER_SYNTAX = 0x0002, 0x0003, 0x0010
_WANTED = (MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE, TRANSFER_SYNTAX)
#: VRs with a 4-byte length (and 2 reserved bytes) in Explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_TAG = struct.Struct("<HH")
_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<I")


def read_meta(head: bytes | memoryview, path: Path | str = "") -> tuple[int, dict[int, str]]:
    """Where the data set starts (after the File Meta Information, which is
    always Explicit VR Little Endian; the group length is not trusted) and
    the UI values of the meta by element number (``MEDIA_SOP_CLASS``,
    ``MEDIA_SOP_INSTANCE``, ``TRANSFER_SYNTAX``; those present), from the
    file's first bytes.  Raises ValueError when there is no "DICM" prefix or
    the meta runs past ``head``."""
    head = bytes(head[:65536])
    if head[128:132] != b"DICM":
        raise ValueError(f"{path} is not a Part 10 file")
    pos, values = 132, {}
    while pos + 8 <= len(head):
        group, element = _TAG.unpack_from(head, pos)
        if group != 0x0002:
            break
        if head[pos + 4:pos + 6] in _LONG_VRS:
            length, start = _LONG.unpack_from(head, pos + 8)[0], pos + 12
        else:
            length, start = _SHORT.unpack_from(head, pos + 6)[0], pos + 8
        if element in _WANTED:
            values[element] = head[start:start + length].decode("ascii", "replace") \
                .rstrip("\x00 ")
        pos = start + length
    if pos > len(head):
        raise ValueError(f"{path}: its file meta information runs past its first block")
    return pos, values
