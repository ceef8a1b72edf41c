"""The HTTP listener's socket (bound by ``serve`` before anything starts)
must give connections with Nagle's algorithm off: asyncio sets TCP_NODELAY
only on sockets whose proto is IPPROTO_TCP, and with it off every response
with a body waited for the client's delayed ACK (~40 ms per request)."""

from __future__ import annotations

import asyncio
import socket

from pacsnode.serve import _http_socket


def test_accepted_http_connections_have_nagle_off() -> None:
    listener = _http_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    seen: list[int] = []

    async def main() -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=listener)
        async with server:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen and seen[0] != 0, "the accepted HTTP connection has Nagle's algorithm on"
