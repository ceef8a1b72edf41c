"""The route walk (DESIGN.md §8): every route the app mounts — the OpenAPI
ones and the rest (docs, UPS fall-backs, static files) — is covered by the
one policy table, and with ``auth = "on"`` answers 401 without credentials,
403 to a token one role too low, and neither to a token of its role.

A route added without a line in access/policy.py fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount, Route

from pacsnode.access.policy import rule_for
from pacsnode.access.roles import Role
from pacsnode.access.tokens import create_token
from web_server import WebServer

UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    web = WebServer(tmp_path_factory.mktemp("auth-routes"), auth="on").start()
    yield web
    web.stop()


@pytest.fixture(scope="module")
def tokens(server: WebServer) -> dict[Role, str]:
    return {role: create_token(server.node.db, f"walk-{role.label}", role.label)
            for role in Role}


def _routes(routes: list) -> Iterator[tuple[str, str]]:
    """(method, path template) of every mounted route, included routers and
    mounts walked through."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        if inner is not None:
            yield from _routes(inner.routes)
        elif isinstance(route, Mount):
            yield from ((m, route.path + p) for m, p in _routes(route.routes))
        elif isinstance(route, (APIRoute, Route)):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    yield method, route.path
        else:
            raise AssertionError(f"route of an unknown kind: {route!r}")


def _concrete(template: str) -> str:
    path = re.sub(r"\{[^}:]+:path\}", "a/b", template)
    return re.sub(r"\{[^}]+\}", UID, path)


def _all_routes(server: WebServer) -> list[tuple[str, str]]:
    mounted = set(_routes(server.app.routes))
    schema = server.app.openapi()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert documented <= mounted, documented - mounted
    assert len(mounted) > len(documented)  # the walk sees more than the schema
    return sorted(mounted)


def _status(server: WebServer, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        # Streamed and closed unread: /api/v1/changes/stream never ends.
        with client.stream(method, path, headers=headers, content=b"") as response:
            return response


def test_every_mounted_route_has_a_policy(server: WebServer) -> None:
    missing = [f"{m} {p}" for m, p in _all_routes(server) if rule_for(m, _concrete(p)) is None]
    assert not missing, "routes without a line in access/policy.py: " + ", ".join(missing)


def test_every_route_asks_for_its_role(server: WebServer, tokens: dict[Role, str]) -> None:
    checked = 0
    for method, template in _all_routes(server):
        path = _concrete(template)
        rule = rule_for(method, path)
        assert rule is not None, f"{method} {template}"
        where = f"{method} {template} ({rule.permission})"
        anonymous = _status(server, method, path, None)
        if rule.public:
            assert anonymous.status_code not in (401, 403), where
            continue
        assert anonymous.status_code == 401, where
        assert anonymous.headers["www-authenticate"].startswith("Bearer"), where
        needed = rule.role
        assert needed is not None
        if needed > Role.READER:
            low = _status(server, method, path, tokens[Role(needed - 1)])
            assert low.status_code == 403, f"{where}: {Role(needed - 1).label} got " \
                                           f"{low.status_code}"
        right = _status(server, method, path, tokens[needed])
        assert right.status_code not in (401, 403), f"{where}: {needed.label} got " \
                                                    f"{right.status_code}"
        higher = _status(server, method, path, tokens[Role.ADMIN])
        assert higher.status_code not in (401, 403), where
        checked += 1
    assert checked > 50


def test_the_role_table_of_the_design(server: WebServer) -> None:
    """Spot checks against DESIGN.md §8's role list."""
    expect = {("GET", "/dicomweb/studies"): Role.READER,
              ("GET", f"/dicomweb/studies/{UID}/series/{UID}/instances/{UID}/frames/1"):
                  Role.READER,
              ("GET", f"/api/v1/series/{UID}/tags"): Role.READER,
              ("GET", "/dicomweb/workitems"): Role.READER,
              ("POST", "/dicomweb/studies"): Role.WRITER,
              ("POST", "/dicomweb/workitems"): Role.WRITER,
              ("PUT", f"/dicomweb/workitems/{UID}/state"): Role.WRITER,
              ("DELETE", f"/dicomweb/studies/{UID}"): Role.EDITOR,
              ("PUT", "/api/v1/nodes/x"): Role.OPERATOR,
              ("POST", "/api/v1/nodes/x/echo"): Role.OPERATOR,
              ("GET", "/api/v1/jobs"): Role.OPERATOR,
              ("POST", f"/api/v1/series/{UID}/export"): Role.OPERATOR,
              ("POST", "/api/v1/cmd"): Role.OPERATOR,
              ("GET", "/api/v1/audit"): Role.ADMIN}
    for (method, path), role in expect.items():
        rule = rule_for(method, path)
        assert rule is not None and rule.role is role, (method, path)
    for path in ("/api/v1/health", "/api/v1/openapi.json", "/api/v1/docs", "/ui/app.js"):
        rule = rule_for("GET", path)
        assert rule is not None and rule.public, path


def test_a_route_without_a_policy_is_refused(tmp_path: Path) -> None:
    web = WebServer(tmp_path / "d", auth="on")
    web.app.add_api_route("/api/v1/unlisted", lambda: {"secret": 42}, methods=["GET"])
    web.start()
    try:
        admin = create_token(web.node.db, "root", "admin")
        r = httpx.get(web.base_url + "/api/v1/unlisted",
                      headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert r.status_code == 403
        assert "no access policy" in r.json()["error"]
        assert "secret" not in r.text
        assert httpx.get(web.base_url + "/api/v1/unlisted", timeout=10).status_code == 401
        # A path the app has no route for: still 401 to a stranger, 404 to a user.
        assert httpx.get(web.base_url + "/nothing/here", timeout=10).status_code == 401
        r = httpx.get(web.base_url + "/nothing/here",
                      headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert r.status_code == 404
    finally:
        web.stop()


def test_rules_of_long_paths_are_not_remembered() -> None:
    """rule_for remembers the rule of short paths only, so a client sending
    thousands of distinct long paths cannot make it hold megabytes; the
    answer is the same either way."""
    from pacsnode.access import policy
    uid = "1.2.3." + "4" * 58
    short = f"/dicomweb/studies/{uid}/metadata"
    long = "/dicomweb/studies/" + "9" * 2000 + "/metadata"
    assert rule_for("GET", short) is rule_for("GET", "/dicomweb/studies/1.2/metadata")
    before = policy._remembered_rule.cache_info().currsize
    rule = rule_for("GET", long)
    assert rule is not None and rule.permission == rule_for("GET", short).permission
    assert policy._remembered_rule.cache_info().currsize == before
    assert rule_for("HEAD", short) is rule_for("GET", short)
