"""The one access policy of the HTTP side: every (method, route template)
of the app → the permission it needs (:data:`pacsnode.access.roles.PERMISSIONS`
says which role holds it), or ``public``.

Applied in one place, the ASGI middleware of :mod:`pacsnode.access.http`;
no handler checks anything itself.  A request that matches no entry is
refused (fail closed), and ``tests/test_auth_routes.py`` walks every route
the app mounts, so a route added without a line here fails the suite.

Templates are written as Starlette writes them (``{name}``,
``{name:path}``); a GET entry also covers HEAD.  Where several templates
match a path, the most specific (most literal characters) wins, as a
literal segment (``/changes/latest``) must beat a parameter (``/changes/{x}``).
Lines for routes that other features mount (the UI, WADO-URI, statistics,
classification …) are here already: an entry without a route costs nothing.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from starlette.routing import compile_path

from .roles import PERMISSIONS, PUBLIC, Role

__all__ = ["ROUTE_POLICY", "Rule", "rule_for", "required_role"]

_S = "/studies/{study}"
_SE = _S + "/series/{series}"
_I = _SE + "/instances/{instance}"

#: (methods, template, permission).  Read top to bottom by feature.
ROUTE_POLICY: tuple[tuple[str, str, str], ...] = (
    # --- open to anyone: liveness, API description, static files of the UI
    ("GET", "/api/v1/health", PUBLIC),
    ("GET", "/api/v1/openapi.json", PUBLIC),
    ("GET", "/api/v1/docs", PUBLIC),
    ("GET", "/api/v1/docs/{asset:path}", PUBLIC),
    ("GET", "/docs/oauth2-redirect", PUBLIC),
    ("GET", "/", PUBLIC),                       # redirect to /ui/
    ("GET", "/ui", PUBLIC),
    ("GET", "/ui/{asset:path}", PUBLIC),        # static: the data comes by the API below
    ("GET", "/ohif", PUBLIC),
    ("GET", "/ohif/{asset:path}", PUBLIC),      # OHIF's prebuilt files
    # --- who am I (the UI offers what the role allows)
    ("GET", "/api/v1/me", "query"),
    # --- DICOMweb: STOW-RS
    ("POST", "/dicomweb/studies", "store"),
    ("POST", "/dicomweb" + _S, "store"),
    # --- QIDO-RS
    ("GET", "/dicomweb/studies", "query"),
    ("GET", "/dicomweb/series", "query"),
    ("GET", "/dicomweb/instances", "query"),
    ("GET", "/dicomweb" + _S + "/series", "query"),
    ("GET", "/dicomweb" + _S + "/instances", "query"),
    ("GET", "/dicomweb" + _SE + "/instances", "query"),
    # --- WADO-RS (instances, metadata, frames, bulk data, rendered, thumbnails)
    ("GET", "/dicomweb" + _S, "retrieve"),
    ("GET", "/dicomweb" + _SE, "retrieve"),
    ("GET", "/dicomweb" + _I, "retrieve"),
    ("GET", "/dicomweb" + _S + "/metadata", "retrieve"),
    ("GET", "/dicomweb" + _SE + "/metadata", "retrieve"),
    ("GET", "/dicomweb" + _I + "/metadata", "retrieve"),
    ("GET", "/dicomweb" + _I + "/frames/{frames}", "retrieve"),
    ("GET", "/dicomweb" + _I + "/bulkdata/{tag}", "retrieve"),
    ("GET", "/dicomweb" + _I + "/bulkdata/{tag:path}", "retrieve"),
    ("GET", "/dicomweb" + _S + "/rendered", "retrieve"),
    ("GET", "/dicomweb" + _SE + "/rendered", "retrieve"),
    ("GET", "/dicomweb" + _I + "/rendered", "retrieve"),
    ("GET", "/dicomweb" + _I + "/frames/{frames}/rendered", "retrieve"),
    ("GET", "/dicomweb" + _S + "/thumbnail", "retrieve"),
    ("GET", "/dicomweb" + _SE + "/thumbnail", "retrieve"),
    ("GET", "/dicomweb" + _I + "/thumbnail", "retrieve"),
    ("GET", "/dicomweb" + _I + "/frames/{frames}/thumbnail", "retrieve"),
    # --- WADO-URI (PS3.18 9), at /wado and at the DICOMweb base
    ("GET", "/wado", "retrieve"),
    ("GET", "/dicomweb", "retrieve"),
    # --- DELETE
    ("DELETE", "/dicomweb" + _S, "delete"),
    ("DELETE", "/dicomweb" + _SE, "delete"),
    ("DELETE", "/dicomweb" + _I, "delete"),
    # --- UPS-RS: search and retrieve for readers, changes for writers
    ("GET", "/dicomweb/workitems", "query"),
    ("GET", "/dicomweb/workitems/{uid}", "query"),
    ("POST", "/dicomweb/workitems", "worklist"),
    ("POST", "/dicomweb/workitems/{uid}", "worklist"),
    ("PUT", "/dicomweb/workitems/{uid}/state", "worklist"),
    ("POST", "/dicomweb/workitems/{uid}/cancelrequest", "worklist"),
    ("POST,DELETE", "/dicomweb/workitems/{uid}/subscribers/{aet}", "worklist"),
    ("POST", "/dicomweb/workitems/{uid}/subscribers/{aet}/suspend", "worklist"),
    # methods UPS-RS does not define: answered 405 with a reason
    ("PUT,PATCH,DELETE", "/dicomweb/workitems", "query"),
    ("PUT,PATCH,DELETE", "/dicomweb/workitems/{uid}", "query"),
    ("GET,POST,PUT,PATCH,DELETE", "/dicomweb/workitems/{uid}/{rest:path}", "query"),
    # --- DICOMweb in front of a remote DIMSE node (§11, docs/GATEWAY.md):
    # searching there and reading what the archive holds is a reader's; a
    # read that must first pull into the archive needs [nodes.X] gateway_pull
    # (default operator), checked by the gateway itself.
    ("GET", "/dicomweb/remote/{node}/studies", "query"),
    ("GET", "/dicomweb/remote/{node}/series", "query"),
    ("GET", "/dicomweb/remote/{node}/instances", "query"),
    ("GET", "/dicomweb/remote/{node}" + _S + "/series", "query"),
    ("GET", "/dicomweb/remote/{node}" + _S + "/instances", "query"),
    ("GET", "/dicomweb/remote/{node}" + _SE + "/instances", "query"),
    ("GET", "/dicomweb/remote/{node}" + _S, "retrieve"),
    ("GET", "/dicomweb/remote/{node}" + _S + "/{rest:path}", "retrieve"),
    # --- REST: the archive
    ("GET", "/api/v1/series/{series}/tags", "retrieve"),
    ("GET", "/api/v1/studies/{study}/archive", "retrieve"),
    ("GET", "/api/v1/series", "query"),
    ("GET", "/api/v1/studies", "query"),
    ("GET", "/api/v1/series/{series}/classification", "ui"),
    ("GET", "/api/v1/studies/{study}/summary", "ui"),
    ("GET", "/api/v1/statistics", "query"),
    ("GET", "/metrics", "query"),
    ("GET", "/api/v1/changes", "query"),
    ("GET", "/api/v1/changes/latest", "query"),
    ("GET", "/api/v1/changes/stream", "query"),
    ("POST", "/api/v1/upload", "store"),
    ("POST", "/api/v1/studies/{study}/modify", "modify"),
    ("POST", "/api/v1/series/{series}/modify", "modify"),
    ("POST", "/api/v1/studies/{study}/anonymize", "modify"),
    ("POST", "/api/v1/series/{series}/anonymize", "modify"),
    # --- REST: remote nodes, jobs, export, routes, pfdcm
    ("GET", "/api/v1/nodes", "remote"),
    ("GET,PUT,DELETE", "/api/v1/nodes/{name}", "remote"),
    ("POST", "/api/v1/nodes/{name}/echo", "remote"),
    ("POST", "/api/v1/nodes/{name}/find", "remote"),
    ("POST", "/api/v1/nodes/{name}/retrieve", "remote"),
    ("GET", "/api/v1/jobs", "jobs"),
    ("GET,DELETE", "/api/v1/jobs/{job}", "jobs"),
    ("POST", "/api/v1/series/{series}/export", "export"),
    ("GET", "/api/v1/routes", "routes"),
    ("GET", "/api/v1/routes/{name}", "routes"),
    ("POST", "/api/v1/cmd", "cmd"),
    # --- REST: administration
    ("GET", "/api/v1/audit", "audit"),
    ("GET", "/api/v1/tokens", "tokens"),
)


@dataclass(frozen=True)
class Rule:
    method: str
    template: str
    permission: str
    regex: re.Pattern[str]
    #: The template up to its first parameter: a cheap first test.
    prefix: str
    #: Literal characters of the template: the most specific match wins.
    specificity: int

    @property
    def public(self) -> bool:
        return self.permission == PUBLIC

    @property
    def role(self) -> Role | None:
        """The least role that may call the route (None: public)."""
        return None if self.public else PERMISSIONS[self.permission]


def _specificity(template: str) -> int:
    return len(re.sub(r"\{[^}]*\}", "", template))


def _build() -> dict[str, list[Rule]]:
    by_method: dict[str, list[Rule]] = {}
    for methods, template, permission in ROUTE_POLICY:
        if permission != PUBLIC and permission not in PERMISSIONS:
            raise ValueError(f"policy of {template}: unknown permission {permission!r}")
        regex = compile_path(template)[0]
        for method in methods.split(","):
            by_method.setdefault(method, []).append(
                Rule(method, template, permission, regex, template.split("{", 1)[0],
                     _specificity(template)))
    for rules in by_method.values():
        rules.sort(key=lambda r: -r.specificity)
    return by_method


_RULES = _build()


#: Longest path whose rule is remembered (``rule_for``): the memory a
#: client can fill with paths of its choosing stays ~4096 × this.
_REMEMBERED_PATH = 512


def rule_for(method: str, path: str) -> Rule | None:
    """The rule that governs ``method path``; None when no rule does (the
    request is refused).  HEAD is governed as GET.  Remembered for paths
    up to _REMEMBERED_PATH long: most requests repeat a path (the query
    string is not part of it), and the walk over the table cost ~10 µs a
    request."""
    if len(path) <= _REMEMBERED_PATH:
        return _remembered_rule(method, path)
    return _rule(method, path)


def _rule(method: str, path: str) -> Rule | None:
    if method == "HEAD":
        method = "GET"
    for rule in _RULES.get(method, ()):
        if path.startswith(rule.prefix) and rule.regex.match(path):
            return rule
    return None


_remembered_rule = functools.lru_cache(maxsize=4096)(_rule)


def required_role(method: str, path: str) -> Role | None | bool:
    """The least role for ``method path``: a Role, None when public, False
    when no rule covers it."""
    rule = rule_for(method, path)
    if rule is None:
        return False
    return rule.role
