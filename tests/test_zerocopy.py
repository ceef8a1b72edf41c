"""Zero-copy file bodies (``pacsnode.web.zerocopy``): WADO-RS parts and
single files go by sendfile(2) on the server ``pacsnode serve`` runs, with
the same bytes as the usual path, and a client that leaves mid-body costs
the server nothing but that response."""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydicom import dcmread

from conftest import free_port
from pacsnode.web import zerocopy
from web_server import WebServer, make_instance, parse_multipart, uid, web  # noqa: F401

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def sent_files(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts of the file bodies that went by sendfile (or began
    to: not those of a response whose client had gone)."""
    counts: list[int] = []
    real = zerocopy._SocketWriter.sendfile

    async def spy(self: Any, fd: int, offset: int, count: int) -> None:
        counts.append(count)
        await real(self, fd, offset, count)

    monkeypatch.setattr(zerocopy._SocketWriter, "sendfile", spy)
    return counts


def _series(web: WebServer, count: int, rows: int = 256) -> tuple[str, str, list[bytes]]:
    study, series = uid(), uid()
    parts = [make_instance(study, series, uid(), instance_number=n + 1, rows=rows, columns=256)
             for n in range(count)]
    assert web.stow(parts).status_code == 200
    stored = sorted(web.node.store.root.glob(f"studies/{study}/{series}/*.dcm"),
                    key=lambda p: dcmread(p, stop_before_pixels=True).InstanceNumber)
    return study, series, [p.read_bytes() for p in stored]


def test_series_parts_go_by_sendfile_with_the_same_bytes(web: WebServer,
                                                         sent_files: list[int]) -> None:
    study, series, stored = _series(web, 5)
    url = f"/studies/{study}/series/{series}"
    r = web.client().get(url, headers={"Accept": AS_STORED})
    assert r.status_code == 200
    assert len(r.content) == int(r.headers["content-length"])
    assert [body for _, body in parse_multipart(r)] == stored
    assert sent_files == [len(b) for b in stored]  # every file, and only the files
    # The same request to a server that offers no file bodies (uvicorn as it
    # comes): the same body, through the memory-mapped blocks.
    sent_files.clear()
    port = free_port()
    with _serving(uvicorn.Config(web.app, host="127.0.0.1", port=port, log_level="warning",
                                 lifespan="off")):
        plain = httpx.get(f"http://127.0.0.1:{port}/dicomweb{url}", headers={"Accept": AS_STORED},
                          timeout=60)
    assert sent_files == []
    assert plain.status_code == 200
    assert [body for _, body in parse_multipart(plain)] == stored
    assert plain.content.replace(_boundary(plain), b"B") == r.content.replace(_boundary(r), b"B")


def _boundary(r: httpx.Response) -> bytes:
    return r.headers["content-type"].split("boundary=")[1].encode()


def test_single_instance_goes_by_pathsend(web: WebServer, sent_files: list[int]) -> None:
    study, series, stored = _series(web, 1)
    sop = dcmread(io.BytesIO(stored[0]), stop_before_pixels=True).SOPInstanceUID
    r = web.client().get(f"/studies/{study}/series/{series}/instances/{sop}",
                         headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert r.status_code == 200
    assert r.content == stored[0]
    assert sent_files == [len(stored[0])]


def test_a_client_leaving_mid_body_costs_only_its_response(web: WebServer,
                                                          sent_files: list[int],
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    study, series, stored = _series(web, 40, rows=1024)  # 20 MB: more than socket buffers hold
    errors = logging.getLogger("uvicorn.error")
    errors.addHandler(caplog.handler)
    path = f"/dicomweb/studies/{study}/series/{series}"
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", web.port)) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {AS_STORED}\r\n\r\n"
                         .encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        # closed with a reset while the server is still sending
    time.sleep(0.2)
    errors.removeHandler(caplog.handler)
    assert len(sent_files) < 3 * len(stored)  # each left before its body was out
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING], caplog.text
    r = web.client().get(f"/studies/{study}/series/{series}", headers={"Accept": AS_STORED})
    assert r.status_code == 200
    assert [body for _, body in parse_multipart(r)] == stored


class _App:
    """A bare ASGI app sending a file as zero-copy pieces, with or without a
    Content-Length, to test what the extension does with each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.extensions: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.extensions.append(dict(scope.get("extensions") or {}))
        size = self.path.stat().st_size
        headers = [] if scope["path"] == "/chunked" else [(b"content-length",
                                                             str(size + 2).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(self.path, "rb") as fh:
            half = size // 2
            await send({"type": zerocopy.ZEROCOPYSEND, "file": fh, "offset": 0, "count": half,
                        "more_body": True})
            await send({"type": "http.response.body", "body": b"<>", "more_body": True})
            fh.seek(half)  # no offset: from the file's position
            await send({"type": zerocopy.ZEROCOPYSEND, "file": fh, "more_body": False})


@contextmanager
def _serving(config: uvicorn.Config) -> Iterator[None]:
    """A uvicorn server on a thread, for the block's duration."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[tuple[_App, str, bytes]]:
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    app = _App(tmp_path / "blob")
    port = free_port()
    with _serving(zerocopy.http_config(app, "127.0.0.1", port, log_level="warning",
                                       lifespan="off")):
        yield app, f"http://127.0.0.1:{port}", data


def test_pieces_keep_their_order_with_or_without_a_content_length(bare) -> None:
    app, base, data = bare
    half = len(data) // 2
    expected = data[:half] + b"<>" + data[half:]
    with httpx.Client(base_url=base, timeout=30) as client:
        fixed = client.get("/fixed")
        chunked = client.get("/chunked")  # framed as chunks: read and sent as bodies
    assert fixed.headers["content-length"] == str(len(expected))
    assert fixed.content == expected
    assert chunked.headers["transfer-encoding"] == "chunked"
    assert chunked.content == expected
    assert all(zerocopy.ZEROCOPYSEND in e and zerocopy.PATHSEND in e for e in app.extensions)


def test_the_installed_uvicorn_runs_the_zero_copy_send(bare, sent_files: list[int]) -> None:
    """web/zerocopy.py reaches into uvicorn's httptools protocol and its
    request cycle.  On a uvicorn where those changed it advertises nothing
    and bodies quietly go the slow way (read and copied by the process);
    this fails then, naming the version.  pyproject.toml pins uvicorn to the
    versions this passed on: widen the pin only with this test green."""
    app, base, data = bare
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.get("/fixed")
    half = len(data) // 2
    assert r.content == data[:half] + b"<>" + data[half:]
    where = f"uvicorn {uvicorn.__version__}"
    assert app.extensions and all(zerocopy.ZEROCOPYSEND in e and zerocopy.PATHSEND in e
                                  for e in app.extensions), \
        f"{where}: the zero-copy send is not advertised (web/zerocopy.py no longer fits it)"
    assert sent_files == [half, len(data) - half], \
        f"{where}: the file pieces did not go by sendfile(2): {sent_files}"
