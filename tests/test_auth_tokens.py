"""API tokens end to end: `pacsnode token create|list|revoke` on the index of
two running `serve` processes with `auth = "on"`; revocation and expiry
count from the next request on, in both.  And the secure defaults of
`serve` (refuse to open an unauthenticated node to the network; say at
start-up what is open to whom)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from dicomfiles import make_ct

AUTH_ON = {"PACSNODE_AUTH": "on"}


def pacsnode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsnode", *args], capture_output=True,
                          text=True, timeout=120)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_create_list_revoke(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = pacsnode("token", "create", "alice", "--role", "reader", "--data-dir", str(data))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pn_") and len(token) >= 43
    assert "shown only this once" in made.stderr
    expiring = pacsnode("token", "create", "bob", "--role", "admin", "--expires-days", "30",
                        "--data-dir", str(data))
    assert expiring.returncode == 0
    # Only the hash is stored: the token's text is nowhere in the index.
    index = b"".join(p.read_bytes() for p in data.glob("index.sqlite*"))
    assert token.encode() not in index
    import hashlib
    assert hashlib.sha256(token.encode()).hexdigest().encode() in index

    listing = pacsnode("token", "list", "--data-dir", str(data)).stdout.splitlines()
    assert listing[0].split() == ["NAME", "ROLE", "CREATED", "EXPIRES", "STATE"]
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"][1] == "reader" and rows["alice"][-1] == "active"
    assert rows["alice"][4] == "-"  # never expires
    assert rows["bob"][1] == "admin" and rows["bob"][4] != "-"

    again = pacsnode("token", "create", "alice", "--role", "writer", "--data-dir", str(data))
    assert again.returncode == 1 and "exists already" in again.stderr
    bad_role = pacsnode("token", "create", "carol", "--role", "root", "--data-dir", str(data))
    assert bad_role.returncode == 2 and "root" in bad_role.stderr

    revoked = pacsnode("token", "revoke", "alice", "--data-dir", str(data))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    listing = pacsnode("token", "list", "--data-dir", str(data)).stdout
    assert "revoked" in next(line for line in listing.splitlines() if line.startswith("alice"))
    twice = pacsnode("token", "revoke", "alice", "--data-dir", str(data))
    assert twice.returncode == 1 and "no active token" in twice.stderr


def test_revocation_counts_at_once_in_two_running_serves(tmp_path: Path,
                                                          pacsnode_factory) -> None:
    data = tmp_path / "shared"
    data.mkdir()
    ds = make_ct(tmp_path / "in" / "ct.dcm")
    assert pacsnode("import", str(tmp_path / "in"), "--data-dir", str(data)).returncode == 0
    token = pacsnode("token", "create", "viewer", "--role", "reader",
                     "--data-dir", str(data)).stdout.strip()
    writer = pacsnode("token", "create", "uploader", "--role", "writer",
                      "--data-dir", str(data)).stdout.strip()
    first = pacsnode_factory(data_dir=data, extra_env=AUTH_ON)
    second = pacsnode_factory(data_dir=data, extra_env=AUTH_ON)
    for server in (first, second):
        r = httpx.get(server.base_url + "/dicomweb/studies", headers=_bearer(token), timeout=10)
        assert r.status_code == 200
        assert r.json()[0]["0020000D"]["Value"] == [ds.StudyInstanceUID]
        assert httpx.get(server.base_url + "/dicomweb/studies", timeout=10).status_code == 401
        assert "HTTP: auth on (API tokens)" in server.log()

    assert pacsnode("token", "revoke", "viewer", "--data-dir", str(data)).returncode == 0
    for server in (first, second):
        r = httpx.get(server.base_url + "/dicomweb/studies", headers=_bearer(token), timeout=10)
        assert r.status_code == 401
        assert r.json() == {"error": "token 'viewer' was revoked"}
        assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        # Other tokens are untouched.
        r = httpx.get(server.base_url + "/dicomweb/studies", headers=_bearer(writer), timeout=10)
        assert r.status_code == 200


def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    from pacsnode.access.tokens import create_token
    from web_server import WebServer
    web = WebServer(tmp_path / "d", auth="on").start()
    try:
        short = create_token(web.node.db, "brief", "reader", expires_days=1 / 86400)  # 1 s
        long = create_token(web.node.db, "lasting", "reader", expires_days=1)
        url = web.base_url + "/dicomweb/studies"
        assert httpx.get(url, headers=_bearer(short), timeout=10).status_code == 204
        time.sleep(1.2)
        r = httpx.get(url, headers=_bearer(short), timeout=10)
        assert r.status_code == 401 and r.json() == {"error": "token 'brief' expired"}
        assert httpx.get(url, headers=_bearer(long), timeout=10).status_code == 204
        for junk in ("pn_" + "A" * 43, "Basic dXNlcjpwYXNz", "Bearer", "Bearer a.b.c"):
            header = junk if " " in junk or junk == "Bearer" else f"Bearer {junk}"
            r = httpx.get(url, headers={"Authorization": header}, timeout=10)
            assert r.status_code == 401, junk
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert set(r.json()) == {"error"}
    finally:
        web.stop()


def test_serve_refuses_an_open_node_on_the_network(tmp_path: Path) -> None:
    out = pacsnode("serve", "--data-dir", str(tmp_path / "d"), "--host", "0.0.0.0",
                   "--http-port", "1", "--dicom-port", "1")
    assert out.returncode == 1
    assert "allow_insecure" in out.stderr and "auth" in out.stderr
    out = pacsnode("serve", "--data-dir", str(tmp_path / "d"), "--auth", "on",
                   "--oidc-issuer", "http://idp.example.org/realms/x",
                   "--http-port", "1", "--dicom-port", "1")
    assert out.returncode == 1 and "oidc_issuer" in out.stderr and "https" in out.stderr


def test_serve_says_what_is_open_to_whom(pacsnode_factory) -> None:
    server = pacsnode_factory()
    assert "HTTP: auth off, loopback only" in server.log()
    # DNS rebinding: a page served as evil.example that re-points its name
    # at 127.0.0.1 sends "Host: evil.example".
    r = httpx.get(server.base_url + "/dicomweb/studies", headers={"Host": "evil.example:80"},
                  timeout=10)
    assert r.status_code == 421 and "allowed_hosts" in r.json()["error"]
    for host in (f"127.0.0.1:{server.http_port}", f"localhost:{server.http_port}", "localhost"):
        r = httpx.get(server.base_url + "/dicomweb/studies", headers={"Host": host}, timeout=10)
        assert r.status_code == 204, host


def test_tokens_on_each_database(tmp_path: Path, database_url: str) -> None:
    """The per-request lookup on SQLite and on PostgreSQL (run off the event
    loop there); a revocation through another connection counts at once."""
    from pacsnode.access.tokens import create_token, revoke_token
    from pacsnode.index.db import Database
    from web_server import WebServer
    web = WebServer(tmp_path / "d", auth="on", database_url=database_url).start()
    other = Database(database_url)  # as `pacsnode token` in another process
    try:
        token = create_token(other, "db-reader", "reader")
        url = web.base_url + "/api/v1/me"
        r = httpx.get(url, headers=_bearer(token), timeout=10)
        assert r.status_code == 200 and r.json()["user"] == "db-reader"
        assert revoke_token(other, "db-reader")
        r = httpx.get(url, headers=_bearer(token), timeout=10)
        assert r.status_code == 401 and "revoked" in r.json()["error"]
    finally:
        other.dispose()
        web.stop()
