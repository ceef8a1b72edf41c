"""Limits of the HTTP side (DESIGN.md §8): a request whose head or body
does not arrive in time gets 408 and is closed while the node keeps
serving; `node_networks` bounds where an operator may register nodes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from web_server import STOW_TYPE, WebServer


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket's timeout)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def slow_node(pacsnode_factory):
    return pacsnode_factory(extra_env={"PACSNODE_HTTP_READ_TIMEOUT": "2"})


def test_unfinished_body_head_and_silence_get_408(slow_node) -> None:
    node = slow_node
    head = (b"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            + STOW_TYPE.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=30) as body_cut, \
            socket.create_connection(("127.0.0.1", node.http_port), timeout=30) as head_cut, \
            socket.create_connection(("127.0.0.1", node.http_port), timeout=30) as silent:
        body_cut.sendall(head + b"0123456789")  # 10 of the 1,000 bytes declared
        head_cut.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no end
        # Meanwhile the node answers others.
        assert httpx.get(node.base_url + "/api/v1/health", timeout=10).status_code == 200
        for sock in (body_cut, head_cut, silent):
            answer = _answer(sock)  # the server closes: recv returns b"" well within 30 s
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
            assert answer.endswith(b"the request did not arrive in time: closed\n")
    assert httpx.get(node.base_url + "/api/v1/health", timeout=10).status_code == 200
    studies = httpx.get(node.base_url + "/dicomweb/studies", timeout=10)
    assert studies.status_code == 204 and not studies.content  # the cut STOW stored nothing


def test_a_slow_but_steady_body_is_served(slow_node, tmp_path: Path) -> None:
    """The deadline is for pauses: a body sent in pieces, each within it, arrives."""
    from dicomfiles import dataset_bytes, make_ct
    from web_server import multipart_body
    make_ct(tmp_path / "a.dcm")
    body = multipart_body([dataset_bytes(tmp_path / "a.dcm")])

    def pieces() -> Iterator[bytes]:
        import time
        for n in range(0, len(body), len(body) // 3 + 1):
            yield body[n:n + len(body) // 3 + 1]
            time.sleep(1)  # under the 2 s deadline each time; 3 s in all

    r = httpx.post(slow_node.base_url + "/dicomweb/studies", content=pieces(),
                   headers={"Content-Type": STOW_TYPE}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.fixture
def fenced(tmp_path: Path) -> Iterator[WebServer]:
    server = WebServer(tmp_path / "data", node_networks=["10.0.0.0/8", "fd00::/8"]).start()
    yield server
    server.stop()


def test_node_networks_bound_registration(fenced: WebServer) -> None:
    url = fenced.base_url + "/api/v1/nodes/"
    for name, host in (("LAN", "10.1.2.3"), ("V6", "fd00::5")):
        r = httpx.put(url + name, json={"aet": name, "host": host, "port": 104}, timeout=30)
        assert r.status_code == 201, r.text
    for name, host in (("LOOP", "127.0.0.1"), ("NAMED", "localhost"), ("WAN", "192.0.2.1"),
                       ("MAPPED", "::ffff:192.0.2.1")):
        r = httpx.put(url + name, json={"aet": name, "host": host, "port": 104}, timeout=30)
        assert r.status_code == 400, (host, r.text)
        assert "node_networks: 10.0.0.0/8, fd00::/8" in r.json()["error"]
        assert host in r.json()["error"]
        assert httpx.get(url + name, timeout=10).status_code == 404
    r = httpx.put(url + "META", json={"aet": "M", "host": "169.254.169.254", "port": 80},
                  timeout=30)
    assert r.status_code == 400 and "link-local" in r.json()["error"]
