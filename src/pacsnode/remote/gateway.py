"""DICOMweb in front of a DIMSE-only node (DESIGN.md §11): the logic behind
``/dicomweb/remote/{node}/…`` (the HTTP adapter is ``pacsnode.web.gateway``).

Searching: QIDO-RS parameters are parsed by the one query parser
(``query_from_qido``, so a bad query is refused here exactly as on
``/dicomweb``); the typed constraints become a C-FIND identifier on the
node (``cfind_keys``); fuzzy person-name matching, which C-FIND does not
have, is sent as universal matching and applied to the answers here;
``offset``/``limit`` are applied to what the node answered.  A node's
answer is kept ``gateway_cache_seconds`` (``FindCache``), so a viewer
repeating its study-list request does not ask the node each time.

Retrieving: ``ensure_local`` makes sure the archive holds what a WADO-RS
request names — when it does not, it asks the node (C-FIND, cached) whether
the node has it (404 when neither does), then pulls the study or series
through a retrieve job (``pacsnode.remote.jobs``; C-MOVE to ourselves or
C-GET, per ``[nodes.X] retrieve_method``).  Concurrent requests for one
study or series share one pull: within a process by one awaited task,
across the processes of a cluster by waiting on the job another process
already made.

Failures, as ``PacsnodeError`` types the app maps to HTTP: an unknown node
404 (``UnknownNode``), a node that does not answer 504 (``NodeSilent``), a
node that answers with a failure or a pull that fails 502 (``NodeFailed``,
the remote status in the reason), a pull the caller's role may not cause
403 (``PullRefused``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from starlette.concurrency import run_in_threadpool

from ..access.roles import Role, role_named
from ..access.tls import peer_tls
from ..config import NodeConfig
from ..dicom.catalogue import Level, attributes_at
from ..dicom.values import fuzzy_prefix, fuzzy_tokens
from ..errors import NotFound, PacsnodeError
from ..index.schema import instances
from ..node import Node
from ..query.model import (Constraint, Fuzzy, ListOfUID, Query, Range, Sequence,
                           SingleValue, Wildcard)
from ..retrieve import select_instances
from . import jobs, scu
from .errors import AssociationAborted, ConnectionFailed, RemoteError
from .peer import Peer

__all__ = ["UnknownNode", "NodeSilent", "NodeFailed", "PullRefused", "FindCache",
           "gateway_node", "cfind_keys", "remote_search", "to_dicom_json", "ensure_local",
           "CONNECT_SECONDS", "FIND_SECONDS", "PULL_WAIT_SECONDS", "MAX_LOCAL_FILTERED"]

#: Seconds to wait for the node to accept an association.
CONNECT_SECONDS = 10.0
#: Longest wait for one C-FIND response.
FIND_SECONDS = 60.0
#: Longest a WADO-RS request waits for the pull it caused (or joined).
PULL_WAIT_SECONDS = 600.0
#: Answers asked of the node when some matching is done here (fuzzy names),
#: so that ``limit`` cannot be sent to the node.
MAX_LOCAL_FILTERED = 10_000
#: How often a waiting request looks at its job.
POLL_SECONDS = 0.1


class UnknownNode(PacsnodeError):
    http_status = 404


class NodeSilent(PacsnodeError):
    """The node did not answer (connection refused, timed out, aborted)."""

    http_status = 504


class NodeFailed(PacsnodeError):
    """The node answered with a failure, or a pull from it failed."""

    http_status = 502


class PullRefused(PacsnodeError):
    http_status = 403


# ------------------------------------------------------------------ the node

def gateway_node(node: Node, name: str) -> NodeConfig:
    """The registered node ``name`` (runtime entries over TOML ones; a
    runtime entry keeps the gateway keys of the TOML node it overrides)."""
    found = node.remote_nodes().get(name)
    if found is None:
        raise UnknownNode(f"node {name!r} is not registered (see [nodes.{name[:64]}] in "
                          "the configuration, or PUT /api/v1/nodes/{name})")
    configured = node.settings.nodes.get(name)
    if configured is not None and found is not configured:
        found = dataclasses.replace(found, retrieve_method=configured.retrieve_method,
                                    gateway_pull=configured.gateway_pull)
    return found


def _peer(node: Node, cfg: NodeConfig) -> Peer:
    return Peer(aet=cfg.aet, host=cfg.host, port=cfg.port, calling_aet=node.settings.ae_title,
                timeout=CONNECT_SECONDS, dimse_timeout=FIND_SECONDS,
                tls=peer_tls(node.settings, cfg.tls))


def _remote_failure(cfg: NodeConfig, exc: RemoteError) -> PacsnodeError:
    if isinstance(exc, (ConnectionFailed, AssociationAborted)):
        return NodeSilent(f"node {cfg.name} does not answer: {exc}")
    return NodeFailed(f"node {cfg.name} failed the query: {exc}")


# ------------------------------------------------------------------ C-FIND

class FindCache:
    """C-FIND answers per (node address, level, identifier), kept for a few
    seconds; at most ``size`` entries (the oldest go first)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: dict[Any, tuple[float, list[dict[str, Any]]]] = {}

    def get(self, key: Any) -> list[dict[str, Any]] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: Any, answers: list[dict[str, Any]], seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (time.monotonic() + seconds, answers)


_CACHES: dict[int, FindCache] = {}
_CACHES_LOCK = threading.Lock()


def _cache(node: Node) -> FindCache:
    with _CACHES_LOCK:
        return _CACHES.setdefault(id(node), FindCache())


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def cached_find(node: Node, cfg: NodeConfig, level: Level, keys: Mapping[str, Any],
                fields: list[str], limit: int | None) -> list[dict[str, Any]]:
    """C-FIND on the node (or its answer of the last few seconds)."""
    key = (cfg.aet, cfg.host, cfg.port, level.name, _frozen(keys), tuple(fields), limit)
    cache = _cache(node)
    answers = cache.get(key)
    if answers is not None:
        return answers
    try:
        answers = scu.find(_peer(node, cfg), level.name, dict(keys), fields=fields,
                           defaults=False, limit=limit)
    except RemoteError as exc:
        raise _remote_failure(cfg, exc) from None
    cache.put(key, answers, node.settings.gateway_cache_seconds)
    return answers


def _range_text(c: Range) -> str:
    return f"{c.low or ''}-{c.high or ''}"


def _key_value(c: Constraint) -> Any:
    """A constraint as the matching value of a C-FIND identifier."""
    if isinstance(c, SingleValue):
        return c.value
    if isinstance(c, ListOfUID):
        return list(c.uids)
    if isinstance(c, Wildcard):
        return c.pattern
    if isinstance(c, Range):
        return _range_text(c)
    if isinstance(c, Sequence):
        return {item.keyword: _key_value(item) for item in c.items}
    raise TypeError(f"no C-FIND form for {c!r}")


def cfind_keys(query: Query) -> tuple[dict[str, Any], list[str], list[Fuzzy]]:
    """(matching keys, return keys, constraints left to match here) of the
    C-FIND that answers ``query``.  A single-value time (TM/DT) the parser
    turned into the range it covers is sent as that range."""
    keys: dict[str, Any] = {}
    local: list[Fuzzy] = []
    for c in query.constraints:
        if isinstance(c, Fuzzy):
            local.append(c)
            keys.setdefault(c.keyword, "")
        else:
            keys[c.keyword] = _key_value(c)
    fields = [rk.keyword for rk in query.return_keys if rk.keyword and rk.keyword not in keys]
    if query.include_all:
        fields += [a.keyword for lvl in Level if Level.STUDY <= lvl <= query.level
                   for a in attributes_at(lvl) if a.keyword not in keys]
    return keys, list(dict.fromkeys(fields)), local


def _fuzzy_match(answer: Mapping[str, Any], c: Fuzzy) -> bool:
    value = answer.get(c.keyword)
    names = value if isinstance(value, list) else [value]
    wanted = " " + fuzzy_prefix(c.value)
    return any(isinstance(n, str) and wanted in fuzzy_tokens(n) for n in names)


def remote_search(node: Node, name: str, query: Query) -> list[dict[str, Any]]:
    """The matches of ``query`` on node ``name``, as DICOM JSON objects in
    the node's order, ``offset``/``limit`` applied to its answer."""
    cfg = gateway_node(node, name)
    keys, fields, local = cfind_keys(query)
    upto = None if query.limit is None else query.offset + query.limit
    ask = MAX_LOCAL_FILTERED if local else upto
    answers = cached_find(node, cfg, query.level, keys, fields, ask)
    if local:
        answers = [a for a in answers if all(_fuzzy_match(a, c) for c in local)]
    page = answers[query.offset:upto]
    return [to_dicom_json(a) for a in page]


# ------------------------------------------------------------- DICOM JSON

_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _json_value(value: Any, vr: str) -> Any:
    if vr == "PN":
        return {g: part for g, part in zip(_PN_GROUPS, str(value).split("="), strict=False)
                if part}
    if vr == "SQ":
        return to_dicom_json(value)
    return value


def to_dicom_json(answer: Mapping[str, Any]) -> dict[str, Any]:
    """A flat C-FIND answer (``pacsnode.remote.identifiers``) as a DICOM JSON
    object (PS3.18 F.2), attributes in tag order.  Private and unknown tags,
    whose VR the answer does not carry, are left out."""
    out: dict[int, dict[str, Any]] = {}
    for keyword, value in answer.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        entry: dict[str, Any] = {"vr": vr}
        values = value if isinstance(value, list) else [value]
        values = [v for v in values if v is not None and v != "" and v != {}]
        if vr == "SQ" and isinstance(value, list):
            values = list(value)
        if values:
            entry["Value"] = [_json_value(v, vr) for v in values]
        out[tag] = entry
    return {f"{tag:08X}": out[tag] for tag in sorted(out)}


# ------------------------------------------------------------------ pulls

@dataclass(frozen=True)
class Wanted:
    """What a WADO-RS request names: a study, a series, or an instance."""

    study: str
    series: str | None = None
    sop: str | None = None

    @property
    def level(self) -> str:
        """The level pulled for it: an instance comes with its series."""
        return "SERIES" if self.series else "STUDY"

    @property
    def pulled(self) -> "Wanted":
        """What is pulled for it: the series, or the study."""
        return Wanted(self.study, self.series)

    def describe(self) -> str:
        if self.sop:
            return f"instance {self.sop} of series {self.series}"
        if self.series:
            return f"series {self.series} of study {self.study}"
        return f"study {self.study}"


def held(node: Node, cfg: NodeConfig, wanted: Wanted) -> bool:
    """Whether the archive holds what ``wanted`` names: the instance; or an
    instance of the series / study, unless a pull of it from this node is
    under way (it may be partial yet) or the last one failed (pull again)."""
    stmt = select_instances(instances.c.id, study_uid=wanted.study, series_uid=wanted.series,
                            sop_uid=wanted.sop).limit(1)
    with node.db.read() as conn:
        if conn.execute(stmt).first() is None:
            return False
    if wanted.sop:
        return True
    if wanted.series:
        last = jobs.latest_for_series(node.db, wanted.series, cfg.name)
        return last is None or last.state == "succeeded"
    return _active_job(node, cfg, wanted) is None


def may_pull(cfg: NodeConfig, role: Role | None, authenticated: bool) -> None:
    """PullRefused unless the caller's role may cause a pull from ``cfg``
    (anyone may when access control is off)."""
    if not authenticated:
        return
    needed = role_named(cfg.gateway_pull) or Role.OPERATOR
    if role is None or role < needed:
        raise PullRefused(
            f"the archive does not hold it yet, and pulling it from node {cfg.name} needs "
            f"the role {needed.label} (or higher); a node may let readers cause pulls with "
            f'[nodes.{cfg.name}] gateway_pull = "reader"')


def _node_has(node: Node, cfg: NodeConfig, wanted: Wanted) -> bool:
    """Whether the node has the study or series pulled for ``wanted`` (asked
    at that level, so the requests for many instances of one series share one
    cached C-FIND)."""
    level = Level.SERIES if wanted.series else Level.STUDY
    keys: dict[str, Any] = {"StudyInstanceUID": wanted.study}
    if wanted.series:
        keys["SeriesInstanceUID"] = wanted.series
    return bool(cached_find(node, cfg, level, keys, [], 1))


def _active_job(node: Node, cfg: NodeConfig, wanted: Wanted) -> jobs.Job | None:
    """A pending or running job (of any process) pulling the same thing."""
    for state in ("running", "pending"):
        for job in jobs.list_jobs(node.db, limit=50, state=state, node_name=cfg.name,
                                  series_uid=wanted.series or None):
            if job.level != wanted.level:
                continue
            if (job.series_uid == wanted.series if wanted.series
                    else job.study_uid == wanted.study):
                return job
    return None


async def _wait(node: Node, job_id: str) -> jobs.Job:
    deadline = time.monotonic() + PULL_WAIT_SECONDS
    while True:
        job = await run_in_threadpool(jobs.get_job, node.db, job_id)
        if job is None:
            raise NodeFailed(f"the retrieve job {job_id} disappeared")
        if job.done:
            return job
        if time.monotonic() > deadline:
            raise NodeSilent(f"the retrieve job {job_id} is still running after "
                             f"{PULL_WAIT_SECONDS:g} s; ask again later (GET /api/v1/jobs/"
                             f"{job_id})")
        await asyncio.sleep(POLL_SECONDS)


async def _pull(node: Node, cfg: NodeConfig, wanted: Wanted, requested_by: str) -> None:
    if await run_in_threadpool(held, node, cfg, wanted.pulled):
        return  # a pull that ended while this request looked
    job = await run_in_threadpool(_active_job, node, cfg, wanted)
    if job is None:
        job = await run_in_threadpool(
            lambda: jobs.submit(node, node_name=cfg.name, level=wanted.level,
                                study_uid=wanted.study, series_uid=wanted.series or "",
                                method=cfg.retrieve_method, requested_by=requested_by))
    job = await _wait(node, job.id)
    if job.state != "succeeded":
        scope = f"series {wanted.series}" if wanted.series else f"study {wanted.study}"
        raise NodeFailed(f"pulling {scope} from node {cfg.name} by C-"
                         f"{job.method.upper()} failed (job {job.id}): "
                         f"{job.error or job.state}")


_PULLS: dict[tuple[int, str, str, str, str], asyncio.Task[None]] = {}


async def _shared(key: tuple[int, str, str, str, str],
                  start: Callable[[], Awaitable[None]]) -> None:
    """Await the pull of ``key``: the one already under way in this
    process, or a new one."""
    task = _PULLS.get(key)
    if task is None or task.done():
        task = asyncio.ensure_future(start())
        _PULLS[key] = task
        task.add_done_callback(lambda t: _PULLS.pop(key, None) if _PULLS.get(key) is t
                               else None)
    await asyncio.shield(task)


async def ensure_local(node: Node, name: str, wanted: Wanted, *, role: Role | None,
                       authenticated: bool, requested_by: str) -> bool:
    """Make the archive hold what ``wanted`` names; False when it already
    did, True when it was pulled now.  Raises UnknownNode, PullRefused,
    NotFound (neither the archive nor the node holds it), NodeSilent or
    NodeFailed."""
    cfg = await run_in_threadpool(gateway_node, node, name)
    if await run_in_threadpool(held, node, cfg, wanted):
        return False
    if wanted.sop:
        if await run_in_threadpool(held, node, cfg, wanted.pulled):
            raise NotFound(f"instance {wanted.sop} is not in series {wanted.series} as this "
                           f"archive holds it (pulled from node {cfg.name} or stored here)")
    may_pull(cfg, role, authenticated)
    key = (id(node), cfg.name, wanted.level, wanted.study, wanted.series or "")
    under_way = _PULLS.get(key)
    if under_way is None or under_way.done():
        if not await run_in_threadpool(_node_has, node, cfg, wanted):
            raise NotFound(f"neither this archive nor node {cfg.name} holds "
                           f"{wanted.describe()}")
    await _shared(key, lambda: _pull(node, cfg, wanted, requested_by))
    return True
