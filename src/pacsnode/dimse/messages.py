"""DIMSE messages on the wire (PS3.7 Chapter 9 and Annex E, PS3.8 9.3.5).

A message is a command set — always Implicit VR Little Endian, group 0000
only — optionally followed by a data set in the presentation context's
transfer syntax.  Both travel as fragments (PDVs) in P-DATA-TF PDUs; the
message control header of each PDV says command or data set, and last or
not.

The command set is small and flat, so it is encoded and decoded here by hand
(a dict of element number → raw value) instead of through pydicom: a C-STORE
costs one pass over ~200 bytes each way.  C-FIND matches, flat data sets
of short values, are encoded here too (``encode_elements``): through
pydicom one took ~0.45 ms.  Other data sets (identifiers received, N-ACTION
information, Failed SOP Instance UID lists) go through pydicom.

A stored file's data set goes out as it is on disk, a block at a time
(``file_message``), or read ahead whole while the peer answers the message
before (``file_dataset``): both sides of an association send such files
(our C-GET and C-MOVE sub-operations, ``pacsnode send``).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Generator, Iterator
from io import BytesIO
from typing import TYPE_CHECKING, Any

from ..dicom.filemeta import read_meta
from ..dicom.vr import LONG_LENGTH_VRS as _LONG_LENGTH
from .pdu import CHUNK

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["Command", "part10_header", "decode_command", "encode_command", "pdata",
           "pdata_header", "message", "decode_dataset", "encode_dataset", "encode_elements",
           "C_STORE_RQ", "C_STORE_RSP", "C_GET_RQ",
           "C_GET_RSP", "C_FIND_RQ", "C_FIND_RSP", "C_MOVE_RQ", "C_MOVE_RSP", "C_ECHO_RQ",
           "C_ECHO_RSP", "C_CANCEL_RQ", "N_EVENT_REPORT_RQ", "N_EVENT_REPORT_RSP",
           "N_ACTION_RQ", "N_ACTION_RSP", "NO_DATASET", "FRAGMENT", "file_message",
           "file_dataset"]

# Command Field values (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130

#: Command Data Set Type when no data set follows (PS3.7 E.1).
NO_DATASET = 0x0101

#: Data bytes per PDV when the peer sets no limit (max PDU length 0).
FRAGMENT = 1 << 20

# Element numbers of group 0000 and how their values are encoded.
AFFECTED_SOP_CLASS = 0x0002
REQUESTED_SOP_CLASS = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
RESPONDED_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
DATASET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
REQUESTED_SOP_INSTANCE = 0x1001
EVENT_TYPE = 0x1002
ACTION_TYPE = 0x1008
REMAINING = 0x1020
COMPLETED = 0x1021
FAILED = 0x1022
WARNING = 0x1023
MOVE_ORIGINATOR_AET = 0x1030
MOVE_ORIGINATOR_ID = 0x1031

_US = {COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO, PRIORITY, DATASET_TYPE, STATUS, EVENT_TYPE,
       ACTION_TYPE, REMAINING, COMPLETED, FAILED, WARNING, MOVE_ORIGINATOR_ID}
_UI = {AFFECTED_SOP_CLASS, REQUESTED_SOP_CLASS, AFFECTED_SOP_INSTANCE, REQUESTED_SOP_INSTANCE}
_TEXT = {MOVE_DESTINATION, ERROR_COMMENT, MOVE_ORIGINATOR_AET}  # AE, LO: space padded

#: What no UID (PS3.5 9.1) and no padding may hold: a byte outside printable
#: ASCII.  A command carrying one cannot be looked up nor echoed back.
_NOT_UID_BYTE = re.compile(rb"[^\x21-\x7e]")
_NOT_UID_CHAR = re.compile(r"[^\x21-\x7e]")
_UID_NAMES = {AFFECTED_SOP_CLASS: "Affected SOP Class UID",
              REQUESTED_SOP_CLASS: "Requested SOP Class UID",
              AFFECTED_SOP_INSTANCE: "Affected SOP Instance UID",
              REQUESTED_SOP_INSTANCE: "Requested SOP Instance UID"}

_ELEMENT = struct.Struct("<HHI")
_USHORT = struct.Struct("<H")
_PDATA = struct.Struct(">BBIIBB")


class Command:
    """A decoded command set: raw values by element number (group 0000)."""

    __slots__ = ("values",)

    def __init__(self, values: dict[int, bytes]) -> None:
        self.values = values

    def us(self, element: int, default: int = 0) -> int:
        raw = self.values.get(element)
        if raw is None or len(raw) < 2:
            return default
        return int(_USHORT.unpack_from(raw)[0])

    def text(self, element: int) -> str:
        raw = self.values.get(element, b"")
        return raw.decode("ascii", "replace").rstrip("\x00 ").lstrip(" ")

    @property
    def field(self) -> int:
        return self.us(COMMAND_FIELD)

    @property
    def message_id(self) -> int:
        return self.us(MESSAGE_ID)

    @property
    def responded_to(self) -> int:
        return self.us(RESPONDED_TO)

    @property
    def has_dataset(self) -> bool:
        return self.us(DATASET_TYPE, NO_DATASET) != NO_DATASET

    @property
    def status(self) -> int:
        return self.us(STATUS)

    @property
    def priority(self) -> int:
        return self.us(PRIORITY)

    @property
    def affected_sop_class(self) -> str:
        return self.text(AFFECTED_SOP_CLASS)

    @property
    def affected_sop_instance(self) -> str:
        return self.text(AFFECTED_SOP_INSTANCE)

    @property
    def requested_sop_class(self) -> str:
        return self.text(REQUESTED_SOP_CLASS)

    @property
    def requested_sop_instance(self) -> str:
        return self.text(REQUESTED_SOP_INSTANCE)

    @property
    def move_destination(self) -> str:
        return self.text(MOVE_DESTINATION)

    @property
    def action_type(self) -> int:
        return self.us(ACTION_TYPE)

    def unusable_uid(self) -> tuple[int, str] | None:
        """(failure status, reason) when a UID element of the command holds
        a byte no UID may hold (non-ASCII, a control character): the command
        cannot be answered normally, so it gets a failure status instead of
        an abort.  A SOP Class UID that is not one names no SOP class we
        support: 0x0122 "Refused: SOP Class not supported" (a general status
        of PS3.7 Annex C).  A SOP Instance UID that is not one: 0x0117
        "Invalid SOP Instance" (PS3.7 Annex C) for N- services, 0xC000 "Error:
        Cannot understand" for C-STORE (PS3.4 B.2.3).  None when all are
        usable; other UID rules (length, leading zeros) are judged later,
        where the UID is used, as before."""
        for element, name in _UID_NAMES.items():
            raw = self.values.get(element)
            if raw is None or not _NOT_UID_BYTE.search(raw.strip(b"\x00 ")):
                continue
            if element in (AFFECTED_SOP_CLASS, REQUESTED_SOP_CLASS):
                status = 0x0122
            else:
                status = 0xC000 if self.field == C_STORE_RQ else 0x0117
            return status, f"{name} holds bytes no UID may hold (not ASCII digits and dots)"
        return None

    def __repr__(self) -> str:
        return f"Command(0x{self.field:04X}, id={self.message_id})"


def decode_command(data: bytes) -> Command:
    """Parse an Implicit VR Little Endian command set.  Raises ValueError
    when it is not one (an element runs past the end, another group)."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ValueError("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ValueError(f"not a command set element: ({group:04X},{element:04X}) "
                             f"length {length}")
        values[element] = data[pos:pos + length]
        pos += length
    if COMMAND_FIELD not in values:
        raise ValueError("command set without Command Field")
    return Command(values)


def _value(element: int, value: Any) -> bytes:
    if element in _US:
        return _USHORT.pack(int(value))
    if element in _UI:
        raw = str(value).encode("ascii")
        return raw + b"\x00" if len(raw) % 2 else raw
    if element in _TEXT:
        raw = str(value).encode("ascii", "replace")
        return raw + b" " if len(raw) % 2 else raw
    if element == OFFENDING_ELEMENT:
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in value)
    raise KeyError(f"no encoding for command element (0000,{element:04X})")


def encode_command(**fields: Any) -> bytes:
    """Encode a command set from keyword arguments (see ``_NAMES``); values
    that are None are left out.  The group length comes first."""
    body = []
    for element, value in sorted((_NAMES[name], value) for name, value in fields.items()
                                 if value is not None):
        raw = _value(element, value)
        body.append(_ELEMENT.pack(0, element, len(raw)) + raw)
    data = b"".join(body)
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(data)) + data


_NAMES = {
    "affected_sop_class": AFFECTED_SOP_CLASS, "requested_sop_class": REQUESTED_SOP_CLASS,
    "field": COMMAND_FIELD, "message_id": MESSAGE_ID, "responded_to": RESPONDED_TO,
    "move_destination": MOVE_DESTINATION, "priority": PRIORITY,
    "dataset_type": DATASET_TYPE, "status": STATUS, "offending_element": OFFENDING_ELEMENT,
    "error_comment": ERROR_COMMENT, "affected_sop_instance": AFFECTED_SOP_INSTANCE,
    "requested_sop_instance": REQUESTED_SOP_INSTANCE, "event_type": EVENT_TYPE,
    "action_type": ACTION_TYPE, "remaining": REMAINING, "completed": COMPLETED,
    "failed": FAILED, "warning": WARNING, "move_originator_aet": MOVE_ORIGINATOR_AET,
    "move_originator_id": MOVE_ORIGINATOR_ID,
}


def response(field: int, request: Command, status: int, *, dataset: bool = False,
             error_comment: str | None = None, **fields: Any) -> bytes:
    """A response command set to ``request`` (PS3.7 9.3 / 10.3).  A UID
    field that cannot be encoded (the request's, echoed, held bytes no UID
    may hold: see ``Command.unusable_uid``) is left out."""
    for name in ("affected_sop_class", "affected_sop_instance", "requested_sop_class",
                 "requested_sop_instance"):
        value = fields.get(name)
        if isinstance(value, str) and _NOT_UID_CHAR.search(value):
            fields[name] = None
    if error_comment is not None:
        # LO: at most 64 characters, no backslash or control characters.
        error_comment = "".join(c if " " <= c <= "~" and c != "\\" else " "
                                for c in error_comment)[:64]
    return encode_command(field=field, responded_to=request.message_id,
                          dataset_type=0x0000 if dataset else NO_DATASET, status=status,
                          error_comment=error_comment, **fields)


def pdata_header(context_id: int, size: int, is_command: bool, last: bool) -> bytes:
    """Header of a P-DATA-TF PDU carrying one PDV of ``size`` bytes."""
    return _PDATA.pack(0x04, 0, size + 6, size + 2, context_id,
                       (1 if is_command else 0) | (2 if last else 0))


def fragment_size(max_pdu: int) -> int:
    """Data bytes per PDV for a peer whose Maximum Length Received is
    ``max_pdu`` (the P-DATA-TF variable field: PDV item length 4 + context 1
    + control header 1 + data; 0 means no limit)."""
    return max(1, max_pdu - 6) if max_pdu else FRAGMENT


def pdata(context_id: int, payload: bytes | memoryview, is_command: bool, max_pdu: int,
          last: bool = True) -> Iterator[bytes | memoryview]:
    """P-DATA-TF PDUs (header and data, alternately) carrying ``payload``,
    split so that no PDU exceeds the peer's maximum.  ``last`` False leaves
    the final fragment's last bit clear (more of the data set follows).
    Data fragments are views of ``payload``: join them (one copy) to send."""
    size = fragment_size(max_pdu)
    view = memoryview(payload)
    total = len(view)
    if total == 0:
        yield pdata_header(context_id, 0, is_command, last)
        return
    for start in range(0, total, size):
        chunk = view[start:start + size]
        yield pdata_header(context_id, len(chunk), is_command,
                           last and start + size >= total)
        yield chunk


def message(context_id: int, command: bytes, dataset: bytes | memoryview | None,
            max_pdu: int) -> bytes:
    """One DIMSE message, command set and data set, as P-DATA-TF PDUs ready
    to write."""
    pdus = list(pdata(context_id, command, True, max_pdu))
    if dataset is not None:
        pdus += pdata(context_id, dataset, False, max_pdu)
    return b"".join(pdus)


def file_message(path: str | os.PathLike[str], context_id: int, command: bytes,
                 max_pdu: int, offset: int = -1) -> Generator[bytes, None, None]:
    """A message whose data set is a stored Part 10 file's bytes from
    ``offset`` on (-1: after its File Meta Information, found in the file's
    first block), as P-DATA-TF PDUs in the pieces to write one after the
    other: the command with the data set's first block, then a block
    (``pdu.CHUNK`` bytes of the file) each — one write per block, where
    writing each fragment made a send() per fragment (16 KiB for DCMTK's
    tools).  The file is opened, and its start read, before the first piece
    comes: OSError (or ValueError, not Part 10) then means nothing was
    sent; OSError later, that the file shrank or failed while being sent."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        block: bytes | memoryview = b""
        if offset < 0:
            head = fh.read(min(size, CHUNK))
            offset = read_meta(head, os.fspath(path))[0]
            block = memoryview(head)[offset:]
        else:
            fh.seek(offset)
        left = size - offset
        parts = list(pdata(context_id, command, True, max_pdu))
        if left <= 0:
            yield b"".join([*parts, *pdata(context_id, b"", False, max_pdu)])
            return
        while left > 0:
            if not block:
                block = fh.read(min(left, CHUNK))
                if not block:
                    raise OSError(f"{path} shrank while being sent")
            left -= len(block)
            parts += pdata(context_id, block, False, max_pdu, last=left <= 0)
            yield b"".join(parts)
            parts, block = [], b""


def file_dataset(path: str | os.PathLike[str], context_id: int, max_pdu: int,
                 limit: int) -> bytes | None:
    """The data set of the stored Part 10 file at ``path`` as P-DATA-TF
    PDUs, read and cut now (while the peer answers the message before):
    None for a file of more than ``limit`` bytes, or one that cannot be
    read — the send itself meets and reports that."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > limit:
                return None
            data = fh.read(limit + 1)
        offset = read_meta(data, os.fspath(path))[0]
    except (OSError, ValueError):
        return None
    if len(data) > limit:  # grew since the fstat
        return None
    return b"".join(pdata(context_id, memoryview(data)[offset:], False, max_pdu))


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _padded(uid: str, pad: bytes = b"\x00") -> bytes:
    raw = uid.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and File Meta Information (PS3.10 7.1) for a received
    data set: byte for byte what pydicom's ``write_file_meta_info`` writes for
    ``pacsnode.dicom.uids.file_meta(...)``, without building a Dataset for
    each C-STORE.  Raises UnicodeEncodeError for a UID that is not ASCII."""
    from ..dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _padded(sop_class)),
        _meta_element(0x0003, b"UI", _padded(sop_instance)),
        _meta_element(0x0010, b"UI", _padded(transfer_syntax)),
        _meta_element(0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID)),
        _meta_element(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
    ))
    return (b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body)))
            + body)


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """A data set (identifier, event information) in a context's syntax.
    (pydicom is imported here, not with the module: a C-STORE SCU such as
    ``pacsnode send`` never needs it.)"""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import UID
    ts = UID(transfer_syntax)
    fp = DicomBytesIO()
    fp.is_little_endian = ts.is_little_endian
    fp.is_implicit_VR = ts.is_implicit_VR
    write_dataset(fp, ds)
    data = fp.getvalue()
    if ts.is_deflated:
        import zlib
        deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflate.compress(data) + deflate.flush()
    return data


def decode_dataset(data: bytes, transfer_syntax: str) -> Dataset:
    from pydicom.filereader import read_dataset
    from pydicom.uid import UID
    ts = UID(transfer_syntax)
    if ts.is_deflated:
        import zlib
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(BytesIO(data), ts.is_implicit_VR, ts.is_little_endian)


#: VRs whose text may use the data set's character set (PS3.5 6.1.2.3).
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: Text VRs written as they are (ASCII).
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
_BINARY = {"US": struct.Struct("<H"), "SS": struct.Struct("<h"), "UL": struct.Struct("<I"),
           "SL": struct.Struct("<i")}
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xI")


def encode_elements(elements: Iterator[tuple[int, str, Any]] | list[tuple[int, str, Any]],
                    transfer_syntax: str, *, utf8: bool = False) -> bytes:
    """A flat data set of simple values, (tag, VR, value) in tag order, in
    Implicit or Explicit VR Little Endian — byte for byte what pydicom's
    ``write_dataset`` makes of the same elements.  A value is None (empty),
    a string, a list of strings or an int (IS, US, SS, UL, SL); the only
    sequence is an empty one.  ``utf8``: text in ISO_IR 192.

    Raises ValueError for anything else (another VR, a value that is not
    ASCII where it must be): the caller takes pydicom's path."""
    if transfer_syntax == "1.2.840.10008.1.2":
        implicit = True
    elif transfer_syntax == "1.2.840.10008.1.2.1":
        implicit = False
    else:
        raise ValueError(f"transfer syntax {transfer_syntax} is not encoded here")
    out: list[bytes] = []
    for tag, vr, value in elements:
        if len(vr) != 2:  # an ambiguous VR ("US or SS"): pydicom resolves it
            raise ValueError(f"VR {vr} is not encoded here")
        if value is None or value == "" or value == []:
            data = b""
        elif vr in _BINARY:
            values = value if isinstance(value, list) else [value]
            data = b"".join(_BINARY[vr].pack(int(v)) for v in values)
        elif vr in _CHARSET_VRS or vr in _ASCII_VRS:
            values = value if isinstance(value, list) else [value]
            text = "\\".join(str(v) for v in values)
            if vr in _CHARSET_VRS and utf8:
                data = text.encode("utf-8")
            elif text.isascii():
                data = text.encode("ascii")
            else:
                raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr}: not ASCII")
            if len(data) & 1:
                data += b"\x00" if vr == "UI" else b" "
        elif vr == "SQ" or vr == "UN":
            raise ValueError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {vr} with a value")
        else:
            raise ValueError(f"VR {vr} is not encoded here")
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            out.append(_ELEMENT.pack(group, element, len(data)))
        elif vr in _LONG_LENGTH:
            out.append(_EXPLICIT_LONG.pack(group, element, vr.encode(), len(data)))
        else:
            if len(data) > 0xFFFF:
                raise ValueError(f"({group:04X},{element:04X}) {vr}: value too long")
            out.append(_EXPLICIT_SHORT.pack(group, element, vr.encode(), len(data)))
        out.append(data)
    return b"".join(out)
