"""Zero-copy file bodies for the HTTP server: the ASGI "Zero Copy Send" and
"Path Send" extensions (``http.response.zerocopysend``,
``http.response.pathsend``) on uvicorn's httptools protocol, written with
sendfile(2).

uvicorn offers neither extension, and without them every byte of a
WADO-RS body is read or mapped by the process and copied into the socket
from user space.  With sendfile the kernel hands the page cache to the
socket itself, at less CPU and a higher rate (the WADO rows of
bench/RESULTS.md).  Written here because no maintained ASGI server offers
zerocopysend; Starlette's FileResponse already uses pathsend when a server
offers it.

What this touches of uvicorn: ``HttpToolsProtocol`` (subclassed: each
request's cycle gets a ``send`` that handles the two messages, and only
then does its scope advertise them), and the cycle's response state
(``response_started``, ``response_complete``, ``chunked_encoding``,
``expected_content_length``, ``disconnected``, ``transport``).  Where any
of that is missing (another uvicorn), nothing is advertised and bodies go
the usual way, as they do where the body is not plain bytes on a plain
socket (chunked, HEAD, TLS): the file is read and sent as a body message.
pyproject.toml pins uvicorn to the versions tests/test_zerocopy.py passed
on, and that test fails where the zero-copy send is not active.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["PATHSEND", "ZEROCOPYSEND", "ZeroCopyHttpToolsProtocol", "http_config"]

ZEROCOPYSEND = "http.response.zerocopysend"
PATHSEND = "http.response.pathsend"

#: The cycle attributes the extension's send reads and writes.
_CYCLE_STATE = ("scope", "transport", "response_started", "response_complete",
                "chunked_encoding", "expected_content_length", "disconnected")

Send = Callable[[dict[str, Any]], Awaitable[None]]


#: Default seconds a request's head may take to arrive, and the longest
#: pause inside its body (``http_read_timeout``).
READ_TIMEOUT = 30.0

_TIMEOUT_TEXT = b"the request did not arrive in time: closed\n"
_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8"
                    b"\r\ncontent-length: " + str(len(_TIMEOUT_TEXT)).encode() +
                    b"\r\nconnection: close\r\n\r\n" + _TIMEOUT_TEXT)


class ZeroCopyHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with zerocopysend and pathsend, and
    read deadlines (DESIGN.md §8, Limits): a request's head must arrive
    within ``read_timeout`` seconds of the connection (or of the end of the
    previous response), and its body may not pause longer than that; else
    408 and the connection is closed.  (uvicorn has only the keep-alive
    timeout: a client that declared 1,000 bytes and sent 10 was held open
    for good.)"""

    read_timeout = READ_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    # (uvicorn narrows BaseProtocol's BaseTransport to Transport and ignores it too)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # the keep-alive timeout waits for the next request

    def _arm(self) -> None:
        self._disarm()
        if self.read_timeout > 0:
            self._deadline = self.loop.call_later(self.read_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        """The deadline passed: 408 when no answer has begun, then close."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete or not cycle.response_started:
            if cycle is not None and not cycle.response_complete:
                cycle.response_started = True  # the application's answer is not sent
            self.transport.write(_REQUEST_TIMEOUT)
        client = "%s:%s" % tuple(self.client) if self.client else "?"
        self.logger.info("%s: request not received in %.0f s: closed", client,
                         self.read_timeout)
        self.transport.close()

    def on_headers_complete(self) -> None:
        before = getattr(self, "cycle", None)
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        # A new cycle (not an upgrade, which makes none): its ASGI task has
        # not run yet (it starts on the loop's next turn), so the scope can
        # still say what its send can do.
        if cycle is None or cycle is before or not all(hasattr(cycle, a) for a in _CYCLE_STATE):
            return
        cycle.send = _extended_send(cycle, cycle.send)
        extensions = cycle.scope.setdefault("extensions", {})
        extensions[ZEROCOPYSEND] = {}
        extensions[PATHSEND] = {}


def _extended_send(cycle: RequestResponseCycle, send: Send) -> Send:
    """``send`` for one request's cycle, with file bodies.  From the first
    file body written by sendfile on, the body's other pieces (part heads)
    are written to the socket here too, in order, and uvicorn's transport
    only finishes the response: handing them to the transport meant
    waiting for its buffer to empty before each file (they often landed in
    it, the socket being full from the file before)."""
    writer: _SocketWriter | None = None

    async def extended(message: dict[str, Any]) -> None:
        nonlocal writer
        kind = message.get("type")
        if kind == PATHSEND:
            with open(message["path"], "rb") as fh:
                await extended({"type": ZEROCOPYSEND, "file": fh})
            return
        if kind == ZEROCOPYSEND:
            fh, more_body = message["file"], message.get("more_body", False)
            offset, count = message.get("offset"), message.get("count")
            if offset is None:
                offset = fh.tell()
            if count is None:
                count = max(0, os.fstat(fh.fileno()).st_size - offset)
            if writer is None:
                writer = await _SocketWriter.take(cycle)
            if writer is None:  # no body, chunks to frame, TLS: the usual way
                data = b"" if cycle.scope.get("method") == "HEAD" else \
                    os.pread(fh.fileno(), count, offset)
                await send({"type": "http.response.body", "body": data, "more_body": more_body})
                return
            await _piece(cycle, send, writer, count, more_body,
                         lambda: writer.sendfile(fh.fileno(), offset, count))
            return
        if writer is not None and kind == "http.response.body":
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            await _piece(cycle, send, writer, len(body), more_body,
                         lambda: writer.write(body, more_body))
            return
        await send(message)
    return extended


async def _piece(cycle: RequestResponseCycle, send: Send, writer: "_SocketWriter", count: int,
                 more_body: bool, write: Callable[[], Awaitable[None]]) -> None:
    """``count`` body bytes that ``write()`` puts on the socket, accounted
    for; the last piece completes the response through uvicorn (keep-alive,
    the next request)."""
    if cycle.disconnected or count > cycle.expected_content_length:
        writer.close()
        if cycle.disconnected:
            return
        raise RuntimeError("Response content longer than Content-Length")
    try:
        await write()
    except ConnectionError:  # reset, broken pipe, aborted
        writer.close()
        cycle.disconnected = True  # the client went away: later sends are dropped
        return
    cycle.expected_content_length -= count
    if not more_body:
        writer.close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _SocketWriter:
    """Writes to a response's socket straight, bytes or sendfile(2), waiting
    for room on the loop (on a duplicate of the descriptor: the original is
    the transport's, which asyncio lets nobody else watch)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        # A duplicate of the transport's descriptor: watched for room, and
        # closed with this writer (or when it is collected), never the
        # transport's own.
        self.sock = socket.socket(fileno=os.dup(fd))
        self.fd = self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    @classmethod
    async def take(cls, cycle: RequestResponseCycle) -> "_SocketWriter | None":
        """A writer for the cycle's body, once the transport has written all
        it holds; None where the body is not plain bytes on a plain socket."""
        transport = cycle.transport
        if (cycle.disconnected or not cycle.response_started or cycle.response_complete
                or cycle.chunked_encoding or cycle.scope.get("method") == "HEAD"
                or transport.get_extra_info("sslcontext") is not None):
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        while transport.get_write_buffer_size() and not transport.is_closing():
            await asyncio.sleep(0.001)  # the status line did not fit: rare
        return cls(asyncio.get_running_loop(), sock.fileno())

    async def _room(self) -> None:
        ready: asyncio.Future[None] = self.loop.create_future()

        def writable() -> None:
            if not ready.done():
                ready.set_result(None)

        self.loop.add_writer(self.fd, writable)
        try:
            await ready
        finally:
            self.loop.remove_writer(self.fd)

    async def write(self, data: bytes | memoryview, more: bool) -> None:
        """``more``: a file follows at once (the kernel holds a short piece
        back for it instead of sending it in a segment of its own)."""
        view = memoryview(data)
        flags = socket.MSG_MORE if more else 0
        while view:
            try:
                view = view[self.sock.send(view, flags):]
            except BlockingIOError:
                await self._room()

    async def sendfile(self, fd: int, offset: int, count: int) -> None:
        while count:
            try:
                sent = os.sendfile(self.fd, fd, offset, count)
            except BlockingIOError:
                await self._room()
                continue
            if not sent:
                raise OSError(f"file body: {count} bytes short (the file shrank)")
            offset += sent
            count -= sent


def http_config(app: Any, host: str, port: int, *, read_timeout: float = READ_TIMEOUT,
                **options: Any) -> uvicorn.Config:
    """uvicorn's settings for pacsnode's HTTP side: the zero-copy protocol
    with its read deadline, on asyncio's own loop (the one the tests run;
    small requests took no longer than on uvloop)."""
    protocol = type("PacsnodeHttpProtocol", (ZeroCopyHttpToolsProtocol,),
                    {"read_timeout": float(read_timeout)})
    return uvicorn.Config(app, host=host, port=port, loop="asyncio", http=protocol, **options)
