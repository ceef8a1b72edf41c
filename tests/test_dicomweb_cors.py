"""CORS: browsers on configured origins may call DICOMweb; others get no grant."""

from __future__ import annotations

from pathlib import Path

import httpx

from web_server import WebServer, make_instance, uid


def test_cors_for_configured_origins(tmp_path: Path) -> None:
    server = WebServer(tmp_path / "data", cors_origins=["http://viewer.example"]).start()
    try:
        assert server.stow([make_instance(uid(), uid(), uid())]).status_code == 200
        pre = httpx.options(server.dicomweb + "/studies", headers={
            "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "accept"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://viewer.example"
        assert "GET" in pre.headers["access-control-allow-methods"]
        r = httpx.get(server.dicomweb + "/studies", headers={"Origin": "http://viewer.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "http://viewer.example"
        assert "warning" in r.headers["access-control-expose-headers"].lower()
        other = httpx.get(server.dicomweb + "/studies", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        bad = httpx.options(server.dicomweb + "/studies", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"})
        assert bad.status_code == 400
    finally:
        server.stop()


def test_no_cors_by_default(tmp_path: Path) -> None:
    server = WebServer(tmp_path / "data").start()
    try:
        r = httpx.get(server.dicomweb + "/studies", headers={"Origin": "http://viewer.example"})
        assert "access-control-allow-origin" not in r.headers
    finally:
        server.stop()
