"""The association PDUs of the requestor (``client.py``), written and read
with struct (PS3.8 9.3.2-9.3.4): the A-ASSOCIATE-RQ we send, and the
A-ASSOCIATE-AC or -RJ that answers it, with the presentation contexts the
peer accepted (PS3.8 9.3.3.2) and the roles it granted (PS3.7 D.3.3.4).

No pydicom or pynetdicom here: a client command (``pacsnode send``) opens
its associations without loading either.  The server reads the requests it
gets with pynetdicom (``negotiation.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from .pdu import APPLICATION_CONTEXT

__all__ = ["ProposedContext", "Context", "AssociateAnswer", "Rejection", "MAX_CONTEXTS",
           "proposal", "a_associate_rq", "read_answer", "read_rejection", "REJECT_RESULTS", "REJECT_SOURCES",
           "REJECT_REASONS"]

#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255.
MAX_CONTEXTS = 128

_ITEM = struct.Struct(">BBH")
_HEAD = struct.Struct(">BBI")
_MAX_LENGTH = struct.Struct(">BBHI")
#: Bytes of an A-ASSOCIATE-AC/-RQ body before its items: protocol version,
#: reserved, called and calling AE titles, 32 reserved (PS3.8 Table 9-11).
_FIXED = 68

#: A-ASSOCIATE-RJ texts (PS3.8 Table 9-21), worded as pynetdicom words them.
REJECT_RESULTS = {1: "Rejected Permanent", 2: "Rejected Transient"}
REJECT_SOURCES = {1: "Service User", 2: "Service Provider (ACSE)",
                  3: "Service Provider (Presentation)"}
REJECT_REASONS = {
    1: {1: "No reason given", 2: "Application context name not supported",
        3: "Calling AE title not recognised", 7: "Called AE title not recognised"},
    2: {1: "No reason given", 2: "Protocol version not supported"},
    3: {1: "Temporary congestion", 2: "Local limit exceeded"},
}


class ProposedContext(Protocol):
    """What a context to propose needs (pynetdicom's ``PresentationContext``
    is one, :class:`Context` another)."""

    @property
    def abstract_syntax(self) -> str | None: ...
    @property
    def transfer_syntax(self) -> Sequence[str]: ...


@dataclass
class Context:
    """A presentation context: proposed (its syntaxes in our order) or
    accepted (the one syntax the peer chose), with the roles we take on it."""

    context_id: int | None
    abstract_syntax: str
    transfer_syntax: list[str] = field(default_factory=list)
    scu_role: bool = True
    scp_role: bool = False

    @property
    def as_scu(self) -> bool:
        return self.scu_role

    @property
    def as_scp(self) -> bool:
        return self.scp_role


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ, in words."""

    result: str
    source: str
    reason: str


@dataclass(frozen=True)
class AssociateAnswer:
    """An A-ASSOCIATE-AC: the accepted contexts by id, and the peer's
    Maximum Length Received (0: no limit)."""

    accepted: dict[int, Context]
    max_pdu: int


def proposal(contexts: Sequence[ProposedContext], scp_roles: Sequence[str]) -> list[Context]:
    """The contexts numbered 1, 3, 5 …, with us as SCP only on those whose
    abstract syntax is in ``scp_roles`` (PS3.7 D.3.3.4)."""
    if not contexts:
        raise ValueError("at least one presentation context is needed")
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts; at most {MAX_CONTEXTS}")
    wanted = {str(uid) for uid in scp_roles}
    proposed = []
    for n, cx in enumerate(contexts):
        uid = str(cx.abstract_syntax)
        scp = uid in wanted
        proposed.append(Context(2 * n + 1, uid, [str(ts) for ts in cx.transfer_syntax],
                                scu_role=not scp, scp_role=scp))
    return proposed


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16)


def a_associate_rq(called: str, calling: str, contexts: Sequence[Context],
                   scp_roles: Sequence[str], max_pdu: int) -> bytes:
    """The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) proposing ``contexts``; a role
    selection item (we SCP, not SCU) for each of ``scp_roles``."""
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for cx in contexts:
        assert cx.context_id is not None
        sub = _item(0x30, cx.abstract_syntax.encode()) + b"".join(
            _item(0x40, str(ts).encode()) for ts in cx.transfer_syntax)
        items.append(_item(0x20, bytes((cx.context_id, 0, 0, 0)) + sub))
    user = [_MAX_LENGTH.pack(0x51, 0, 4, max_pdu),
            _item(0x52, str(IMPLEMENTATION_CLASS_UID).encode())]
    for uid in dict.fromkeys(str(uid) for uid in scp_roles):
        raw = uid.encode()
        user.append(_item(0x54, struct.pack(">H", len(raw)) + raw + b"\x00\x01"))
    user.append(_item(0x55, IMPLEMENTATION_VERSION_NAME.encode()))
    items.append(_item(0x50, b"".join(user)))
    body = (struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
            + b"".join(items))
    return _HEAD.pack(0x01, 0, len(body)) + body


def read_rejection(body: bytes) -> Rejection:
    """The words of an A-ASSOCIATE-RJ's body (result, source, reason)."""
    if len(body) < 4:
        return Rejection("?", "?", "?")
    result, source, reason = body[1], body[2], body[3]
    return Rejection(REJECT_RESULTS.get(result, "(no value available)"),
                     REJECT_SOURCES.get(source, "(no value available)"),
                     REJECT_REASONS.get(source, {}).get(reason, "(no value available)"))


def _items(data: bytes, start: int) -> list[tuple[int, bytes]]:
    """The (type, value) items from ``start`` on; ValueError when one runs
    past the end."""
    out = []
    pos = start
    while pos + 4 <= len(data):
        kind, _, length = _ITEM.unpack_from(data, pos)
        end = pos + 4 + length
        if end > len(data):
            raise ValueError(f"item 0x{kind:02X} runs past the end of the PDU")
        out.append((kind, data[pos + 4:end]))
        pos = end
    return out


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ")


def read_answer(body: bytes, proposed: Sequence[Context]) -> AssociateAnswer:
    """The accepted contexts and max PDU of an A-ASSOCIATE-AC body (after
    its 6-byte header).  Raises ValueError for a malformed one."""
    if len(body) < _FIXED:
        raise ValueError(f"A-ASSOCIATE-AC of {len(body)} bytes")
    ours = {cx.context_id: cx for cx in proposed}
    results: list[tuple[int, int, str]] = []
    roles: dict[str, tuple[bool, bool]] = {}
    max_pdu = 0
    for kind, value in _items(body, _FIXED):
        if kind == 0x21:
            if len(value) < 4:
                raise ValueError("presentation context item too short")
            syntaxes = [_text(v) for k, v in _items(value, 4) if k == 0x40]
            results.append((value[0], value[2], syntaxes[0] if syntaxes else ""))
        elif kind == 0x50:
            for sub, raw in _items(value, 0):
                if sub == 0x51 and len(raw) == 4:
                    max_pdu = struct.unpack(">I", raw)[0]
                elif sub == 0x54 and len(raw) >= 2:
                    size = struct.unpack_from(">H", raw)[0]
                    if len(raw) >= 2 + size + 2:
                        roles[_text(raw[2:2 + size])] = (bool(raw[2 + size]),
                                                         bool(raw[3 + size]))
    accepted = {}
    for context_id, result, syntax in results:
        mine = ours.get(context_id)
        if mine is None or result != 0x00 or not syntax:
            continue
        scu, scp = True, False
        granted = roles.get(mine.abstract_syntax)
        if granted is not None:  # PS3.7 Table D.3-11: the acceptor may only refuse a role
            scu, scp = mine.scu_role and granted[0], mine.scp_role and granted[1]
        accepted[context_id] = Context(context_id, mine.abstract_syntax, [syntax],
                                       scu_role=scu, scp_role=scp)
    return AssociateAnswer(accepted, max_pdu)
