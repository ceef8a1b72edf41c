"""C-FIND SCP (PS3.4 C.4.1): the identifier becomes the node's one query
(``query.parse.query_from_identifier`` → ``QueryEngine.matches``), each
match a pending response.

On SQLite the responses are encoded and written from the event loop
(``_answer_here``); on PostgreSQL a worker thread runs the query and hands
the encoded responses to the loop through the association's outbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..errors import PacsnodeError
from ..events import Origin
from ..node import Node
from ..query.engine import MatchFields
from ..query.parse import query_from_identifier
from . import messages as m
from .handle import AssociationHandle, Operation
from .responses import final, identifier

log = logging.getLogger("pacsnode.dimse")

__all__ = ["c_find", "matches", "encode_match", "FIND_YIELD"]

#: Pending C-FIND responses answered from the loop between two turns of it.
FIND_YIELD = 16

#: (status, encoded identifier, error comment) of one response.
Answer = tuple[int, bytes | None, str | None]


async def c_find(assoc: AssociationHandle, op: Operation, data: bytes) -> None:
    try:
        ident = identifier(assoc, op, data)
    except Exception as exc:
        log.warning("C-FIND from %s: cannot decode identifier: %s", assoc.origin.describe(),
                    exc)
        await final(assoc, op, m.C_FIND_RSP, 0xC000, f"cannot decode identifier: {exc}")
        return
    syntax, command = assoc.syntax(op.context_id), op.command
    audit = assoc.server.gate.audit
    if audit is not None:
        audit.query(assoc.peer_aet, assoc.address, command.affected_sop_class, ident)
    responses = matches(assoc.node, ident, assoc.origin, op.cancel.is_set, syntax)

    pending: bytes | None = None

    def response(status: int, comment: str | None, encoded: bytes | None) -> bytes:
        # Every pending response with an identifier has the same command
        # set: encoded once per C-FIND.
        nonlocal pending
        if status == 0xFF00 and comment is None and encoded is not None:
            if pending is None:
                pending = m.response(m.C_FIND_RSP, command, status, dataset=True,
                                     affected_sop_class=command.affected_sop_class or None)
            return pending
        return m.response(m.C_FIND_RSP, command, status, dataset=encoded is not None,
                          error_comment=comment,
                          affected_sop_class=command.affected_sop_class or None)

    if assoc.server.on_loop:
        await _answer_here(assoc, op, responses, response)
        return
    outbox = assoc.outbox(op.context_id)

    def run() -> None:
        for status, encoded, comment in responses:
            if assoc.closed:  # aborted: nobody to answer (and the loop may be gone)
                return
            outbox.put(response(status, comment, encoded), encoded)
            if status != 0xFF00:
                break
        outbox.flushed()

    await assoc.server.pool.run(run)


async def _answer_here(assoc: AssociationHandle, op: Operation, responses: Iterator[Answer],
                       response: Callable[[int, str | None, bytes | None], bytes]) -> None:
    """A C-FIND on SQLite, answered from the loop: its queries read a
    page of rows at a time and never wait on a writer (WAL), and every
    match costs some 30 µs to encode, against the thread switches and
    GIL contention of a worker thread handing responses over.  Every
    FIND_YIELD responses the loop serves the other associations and
    this one's reader (a C-CANCEL is seen within that many matches).
    Those responses go out in one write: one send() and one wake-up of
    the peer for them all, not one each."""
    batch: list[bytes] = []
    for status, encoded, comment in responses:
        if assoc.closed:
            return
        batch.append(m.message(op.context_id, response(status, comment, encoded),
                               encoded, assoc.max_pdu))
        if status != 0xFF00:
            break
        if len(batch) == FIND_YIELD:
            await assoc.write(b"".join(batch))
            batch = []
            await asyncio.sleep(0)
    if batch:
        await assoc.write(b"".join(batch))


def matches(node: Node, ident: Dataset, origin: Origin, cancelled: Callable[[], bool],
            transfer_syntax: str) -> Iterator[Answer]:
    """(status, encoded identifier, error comment) for each response:
    pending 0xFF00 with a match in ``transfer_syntax``, then the final one."""
    try:
        query = query_from_identifier(ident)
    except PacsnodeError as exc:
        log.warning("C-FIND from %s refused: %s", origin.describe(), exc.reason)
        yield exc.dimse_status, None, exc.reason
        return
    except Exception as exc:
        log.warning("C-FIND from %s: cannot decode identifier: %s", origin.describe(), exc)
        yield 0xC000, None, f"cannot decode identifier: {exc}"
        return
    level = ident.QueryRetrieveLevel
    charset = ident.get("SpecificCharacterSet")
    count = 0
    try:
        for match in node.engine.matches(query):
            if cancelled():
                log.info("C-FIND from %s cancelled after %d matches", origin.describe(),
                         count)
                yield 0xFE00, None, None
                return
            try:
                encoded = encode_match(match, level, charset, transfer_syntax)
            except Exception as exc:
                log.warning("C-FIND from %s: cannot encode a match: %s", origin.describe(),
                            exc)
                yield 0xC000, None, f"cannot encode a match: {exc}"
                return
            count += 1
            yield 0xFF00, encoded, None
    except PacsnodeError as exc:
        log.warning("C-FIND from %s refused: %s", origin.describe(), exc.reason)
        yield exc.dimse_status, None, exc.reason
        return
    log.info("C-FIND %s from %s: %d matches", query.level.name, origin.describe(), count)
    yield 0x0000, None, None


def encode_match(match: MatchFields, level: Any, charset: Any, transfer_syntax: str) -> bytes:
    """A C-FIND match as the identifier of its pending response: its return
    keys, the Query/Retrieve Level and the Specific Character Set (ISO_IR
    192 when a value is not ASCII, else the request's).  Encoded by hand
    when every value came from an index column, through pydicom otherwise."""
    extra: list[tuple[int, str, Any, Any]] = [(0x00080052, "CS", str(level), None)]
    if match.non_ascii:
        extra.append((0x00080005, "CS", "ISO_IR 192", None))
    elif charset is not None:
        extra.append((0x00080005, "CS", list(charset) if isinstance(charset, MultiValue)
                      else charset, None))
    if match.plain:
        try:
            elements = sorted(match.fields + extra, key=lambda f: f[0])
            return m.encode_elements([(tag, vr, value) for tag, vr, value, _ in elements],
                                     transfer_syntax, utf8=match.non_ascii)
        except ValueError:
            pass
    ds = match.dataset()
    ds.QueryRetrieveLevel = level
    if charset is not None and "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = charset
    return m.encode_dataset(ds, transfer_syntax)
