"""Request hygiene of the HTTP side (DESIGN.md §8, Limits): a remote node
registered over HTTP may not be a link-local, unspecified or multicast
address; echo/find do not tell a closed port from a silent or non-DICOM one;
the Host header is checked (DNS rebinding)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port
from web_server import WebServer


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    server = WebServer(tmp_path / "data").start()
    yield server
    server.stop()


@pytest.mark.parametrize("host, why", [
    ("169.254.169.254", "link-local"),       # a cloud's metadata service
    ("fe80::1", "link-local"),
    ("::ffff:169.254.169.254", "link-local"),  # the same, IPv4-mapped
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("nosuchhost.invalid", "does not resolve"),
])
def test_node_registration_refuses_addresses_that_are_no_peer(web: WebServer, host: str,
                                                                why: str) -> None:
    r = httpx.put(web.base_url + "/api/v1/nodes/X", json={"aet": "X", "host": host,
                                                          "port": 104}, timeout=30)
    assert r.status_code == 400
    assert why in r.json()["error"] and host in r.json()["error"]
    assert httpx.get(web.base_url + "/api/v1/nodes/X", timeout=10).status_code == 404


def test_node_registration_accepts_real_peers(web: WebServer) -> None:
    for name, host in (("LOOP", "127.0.0.1"), ("NAMED", "localhost"), ("LAN", "10.1.2.3"),
                       ("V6", "::1")):
        r = httpx.put(web.base_url + f"/api/v1/nodes/{name}",
                      json={"aet": name, "host": host, "port": 104}, timeout=30)
        assert r.status_code == 201, (host, r.text)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts and then closes without a word (not DICOM)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.recv(1024)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(2)
    sock.close()


def test_echo_and_find_do_not_tell_closed_from_open_ports(web: WebServer,
                                                          silent_listener: int) -> None:
    closed = free_port()
    texts = {}
    for name, port in (("CLOSED", closed), ("OPEN", silent_listener)):
        assert httpx.put(web.base_url + f"/api/v1/nodes/{name}",
                         json={"aet": "X", "host": "127.0.0.1", "port": port},
                         timeout=10).status_code == 201
        echo = httpx.post(web.base_url + f"/api/v1/nodes/{name}/echo", timeout=60).json()
        assert echo["ok"] is False
        find = httpx.post(web.base_url + f"/api/v1/nodes/{name}/find",
                          json={"level": "STUDY"}, timeout=60)
        assert find.status_code == 502
        texts[name] = (echo["error"].replace(str(port), "PORT"),
                       find.json()["error"].replace(str(port), "PORT"))
    assert texts["CLOSED"] == texts["OPEN"]
    assert "cannot connect, or no answer to the association request" in texts["OPEN"][0]


def test_host_header_names(tmp_path: Path) -> None:
    web = WebServer(tmp_path / "d", allowed_hosts=["pacs.example.org", "10.0.0.5:8042"])
    web.start()
    try:
        url = web.base_url + "/api/v1/health"
        for host, status in (("pacs.example.org", 200), ("PACS.example.org:443", 200),
                             ("10.0.0.5:8042", 200), ("10.0.0.5:8043", 421),
                             ("127.0.0.1", 421), ("evil.example", 421)):
            assert httpx.get(url, headers={"Host": host}, timeout=10).status_code == status, host
    finally:
        web.stop()
    web = WebServer(tmp_path / "e", allowed_hosts=["*"]).start()
    try:
        r = httpx.get(web.base_url + "/api/v1/health", headers={"Host": "any.example"},
                      timeout=10)
        assert r.status_code == 200
    finally:
        web.stop()
