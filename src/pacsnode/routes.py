"""Routes (DESIGN §10): rules that act on what arrives, as durable jobs.

A route is one ``[[routes]]`` table of the configuration::

    [[routes]]
    name = "t1-to-research"
    on = "stable_series"                 # or "stable_study"
    match = { classes = "T1", Modality = "MR", calling_aet = "SCANNER*" }
    send_to = ["RESEARCH"]               # registered nodes: C-STORE
    anonymize = true                     # PS3.15 Basic Profile before sending
    export_to = "/srv/exports/t1"        # under export_roots: <Study>/<Series>/<SOP>.dcm
    run = "/opt/pipeline/t1.sh {study_uid} {path}"

``match`` maps an attribute keyword, ``classes`` or ``calling_aet`` to a
DICOM wildcard pattern (``*``, ``?``); all must match.  An attribute matches
when any of its values does (case-sensitive, as DICOM matching is);
``classes`` when any class of the series does (case-insensitive).  On a
stable study each series is tested: the study's jobs cover the series that
match (all of them when ``match`` names study attributes only).

When a series or study becomes stable (``automation.py``), ``enqueue`` adds
one row to the ``jobs`` table per action of each matching route, ``kind =
"route"``, with an id derived from the route, action, target and the
trigger's generation: a trigger fired twice (a process died mid-way and
another took it over) adds nothing twice.  The job runner (``runner.py``) in
every ``serve`` claims due jobs (``leases.claim``: one process wins), renews
their lease while ``RouteWork`` carries one out, and on failure puts the job
back with a back-off delay (``route_backoff_seconds``, doubling) until
``route_attempts`` are spent.  A job left running by a process that died (its
pid is gone on this host, or its lease ran out) is put back to pending and
done again — so a route action runs at least once; sending the same
instances twice is harmless to a PACS.
``DELETE /api/v1/jobs/{id}`` cancels one (pending at once, running at the
next instance).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.datadict import tag_for_keyword
from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError

from .index.jobs_tables import jobs
from .placeholders import build_command, unknown_placeholders
from .runner import LEASE_SECONDS, Attempt, JobFailed, JobKind, Orphan, Outcome, Runner

if TYPE_CHECKING:
    from .config import Settings
    from .node import Node
    from .retrieve import InstanceRef

class Trigger(Protocol):
    """What a route needs of a stable study or series (automation.Trigger;
    named as a protocol because automation imports this module)."""

    @property
    def kind(self) -> str: ...

    @property
    def uid(self) -> str: ...

    @property
    def study_uid(self) -> str: ...

    @property
    def series_uid(self) -> str: ...

    @property
    def calling_aet(self) -> str: ...

    @property
    def generation(self) -> int: ...

    @property
    def instances(self) -> int: ...

    @property
    def event_name(self) -> str: ...

    def placeholders(self) -> dict[str, str]: ...


__all__ = ["Route", "RouteError", "configured_routes", "check_routes", "enqueue", "RouteWork",
           "start", "KIND", "LEASE_SECONDS"]

log = logging.getLogger("pacsnode.routes")

KIND = "route"
#: Instance counts of a running send are written at most this often.
COUNT_INTERVAL = 0.5
#: A route command still running after this long is killed (and retried).
COMMAND_TIMEOUT = 3600.0
#: The key that makes anonymized routes' pseudonyms, under the blob root
#: (shared by every serve of a cluster): the same patient and UIDs get the
#: same pseudonyms in every job, series and process.
KEY_FILE = ".pacsnode-route-anonymize.key"

_ROUTE_KEYS = {"name", "on", "match", "send_to", "anonymize", "export_to", "run"}
_ON = ("stable_study", "stable_series")


class RouteError(ValueError):
    """A route that cannot work; the message names the route and the fault."""


@dataclass(frozen=True)
class Route:
    name: str
    on: str
    match: tuple[tuple[str, str], ...] = ()
    send_to: tuple[str, ...] = ()
    anonymize: bool = False
    export_to: str = ""
    run: str = ""

    def actions(self) -> list[tuple[str, str]]:
        """(method, target) of each action: ("send", NODE), ("export", DIR), ("run", "")."""
        out = [("send", n) for n in self.send_to]
        if self.export_to:
            out.append(("export", self.export_to))
        if self.run:
            out.append(("run", ""))
        return out


def _route(raw: Any, index: int) -> Route:
    where = f"routes[{index}]"
    if not isinstance(raw, dict):
        raise RouteError(f"{where}: a route is a table ([[routes]]), not {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RouteError(f"{where}: every route needs a name")
    where = f"route {name!r}"
    unknown = sorted(set(raw) - _ROUTE_KEYS)
    if unknown:
        raise RouteError(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(_ROUTE_KEYS))})")
    on = raw.get("on", "stable_study")
    if on not in _ON:
        raise RouteError(f"{where}: on must be stable_study or stable_series, not {on!r}")
    match = raw.get("match", {})
    if not isinstance(match, dict):
        raise RouteError(f"{where}: match is a table of keyword = pattern")
    pairs = []
    for key, pattern in match.items():
        if not isinstance(pattern, str):
            raise RouteError(f"{where}: match.{key} must be a text pattern, not {pattern!r}")
        if key not in ("classes", "calling_aet") and tag_for_keyword(key) is None:
            raise RouteError(f"{where}: match.{key} is not a DICOM keyword (nor classes or "
                             "calling_aet)")
        pairs.append((key, pattern))
    send_to = raw.get("send_to", [])
    if isinstance(send_to, str):
        send_to = [send_to]
    if not isinstance(send_to, list) or not all(isinstance(n, str) and n for n in send_to):
        raise RouteError(f"{where}: send_to is a list of node names")
    export_to = raw.get("export_to", "")
    run = raw.get("run", "")
    anonymize = raw.get("anonymize", False)
    if not isinstance(export_to, str) or not isinstance(run, str):
        raise RouteError(f"{where}: export_to and run are text")
    if not isinstance(anonymize, bool):
        raise RouteError(f"{where}: anonymize is true or false")
    if run:
        try:
            shlex.split(run)
        except ValueError as exc:
            raise RouteError(f"{where}: run cannot be split into arguments ({exc})") from None
    route = Route(name.strip(), on, tuple(pairs), tuple(send_to), anonymize, export_to, run)
    if not route.actions():
        raise RouteError(f"{where}: no action (send_to, export_to or run)")
    return route


def configured_routes(settings: Settings) -> list[Route]:
    """The routes of the configuration; RouteError for one that is malformed."""
    routes = [_route(raw, i) for i, raw in enumerate(settings.routes)]
    names = [r.name for r in routes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RouteError(f"route name(s) used twice: {', '.join(twice)}")
    return routes


def check_routes(node: Node) -> list[Route]:
    """The routes of ``serve``, each checked against what it needs: its
    nodes registered, its export folder under ``export_roots``.  RouteError
    (refusing to start) for one that cannot work."""
    routes = configured_routes(node.settings)
    known = node.remote_nodes()
    for route in routes:
        bad = unknown_placeholders(route.run)
        if bad:
            log.warning("route %r: unknown placeholder(s) %s in run are left as written",
                        route.name, ", ".join("{%s}" % b for b in bad))
    roots = [os.path.realpath(r) for r in node.settings.export_roots]
    for route in routes:
        for name in route.send_to:
            if name not in known:
                raise RouteError(f"route {route.name!r}: send_to names node {name!r}, which is "
                                 f"not registered (known: {', '.join(sorted(known)) or 'none'})")
        if route.export_to:
            target = route.export_to
            real = os.path.realpath(target)
            if not os.path.isabs(target) or ".." in Path(target).parts or not any(
                    real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
                raise RouteError(f"route {route.name!r}: export_to {target!r} is not an "
                                 f"absolute folder under export_roots "
                                 f"({', '.join(roots) or 'none configured'})")
    return routes


# ------------------------------------------------------------------ matching

def _wildcard(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


@dataclass
class _Candidate:
    """One series as a route's ``match`` sees it."""

    series_uid: str
    header: dict[str, Any]
    classes: list[str]


def _matches(route: Route, candidate: _Candidate, calling_aet: str) -> bool:
    from .classify.facts import element_values
    for key, pattern in route.match:
        if key == "classes":
            rx = _wildcard(pattern, ignore_case=True)
            if not any(rx.match(c) for c in candidate.classes):
                return False
        elif key == "calling_aet":
            if not _wildcard(pattern).match(calling_aet):
                return False
        else:
            values = element_values(candidate.header, f"{tag_for_keyword(key):08X}")
            rx = _wildcard(pattern)
            texts = [str(v) for v in values or ()] or ([""] if values is not None else [])
            if not any(rx.match(t) for t in texts):
                return False
    return True


def _candidates(node: Node, study_uid: str, series_uid: str) -> list[_Candidate]:
    """The series of the trigger (one, or each of the study) with the header
    of its first instance and its stored classes."""
    from .classes import find_series
    from .index.schema import instances, series
    rows = find_series(node.db, study_uid=study_uid, limit=100000)
    if series_uid:
        rows = [r for r in rows if r.series_uid == series_uid]
    out = []
    with node.db.read() as conn:
        for row in rows:
            meta = conn.execute(
                select(instances.c.meta_json)
                .join(series, series.c.id == instances.c.series_fk)
                .where(series.c.seriesinstanceuid == row.series_uid)
                .order_by(instances.c.instancenumber.is_(None), instances.c.instancenumber,
                          instances.c.id).limit(1)).scalar()
            if meta is not None:
                out.append(_Candidate(row.series_uid, json.loads(meta), row.classes))
    return out


def enqueue(node: Node, routes: list[Route], trigger: Trigger) -> int:
    """Add the jobs of every route matching a stable series/study; returns
    how many were added (a repeated trigger adds none)."""
    wanted = [r for r in routes if r.on == trigger.event_name]
    if not wanted:
        return 0
    candidates = _candidates(node, trigger.study_uid,
                             trigger.series_uid if trigger.kind == "series" else "")
    added = 0
    for route in wanted:
        hits = [c.series_uid for c in candidates if _matches(route, c, trigger.calling_aet)]
        if not hits:
            continue
        whole = trigger.kind == "study" and len(hits) == len(candidates)
        for method, target in route.actions():
            added += _insert(node, route, method, target, trigger,
                             [] if whole else hits)
    return added


def _job_id(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:32]


def _insert(node: Node, route: Route, method: str, target: str, trigger: Trigger,
            series_uids: list[str]) -> int:
    level = "SERIES" if trigger.kind == "series" else "STUDY"
    job_id = _job_id(route.name, method, target, trigger.kind, trigger.uid,
                     str(trigger.generation))
    peer = node.remote_nodes().get(target) if method == "send" else None
    payload = {"series": series_uids, "anonymize": route.anonymize, "export_to": route.export_to,
               "run": route.run, "placeholders": trigger.placeholders(),
               "event": trigger.event_name, "instances": trigger.instances}
    now = time.time()
    try:
        with node.db.write() as conn:
            conn.execute(jobs.insert().values(
                id=job_id, kind=KIND, route=route.name, node=target if method == "send" else "",
                level=level, study_uid=trigger.study_uid,
                series_uid=trigger.series_uid if trigger.kind == "series" else "",
                method=method, state="pending", completed=0, failed=0, warning=0,
                remaining=None, error="", created=now, updated=now, owner="",
                cancel_requested=False, requested_by=f"route {route.name}",
                peer_aet=peer.aet if peer else "", peer_host=peer.host if peer else "",
                peer_port=peer.port if peer else 0, destination=node.settings.ae_title,
                payload=json.dumps(payload), attempts=0, next_try=now))
    except IntegrityError:
        return 0  # this trigger's job exists already (a takeover fired it again)
    log.info("route %s: job %s (%s%s) for %s %s", route.name, job_id, method,
             f" {target}" if target else "", trigger.kind, trigger.uid)
    return 1


# ------------------------------------------------------------------ running

def _anonymize_key(node: Node) -> bytes:
    """The deployment's pseudonym key, made once under the blob root."""
    path = node.store.root / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be writing it right now
            data = path.read_bytes()
            if len(data) >= 32:
                return data
            time.sleep(0.02)
        raise RuntimeError(f"{path} holds no usable key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_bytes()


def _label(job: Row[Any]) -> str:
    return f"route {job.route}: job {job.id}"


def _started(attempt: Attempt) -> None:
    job = attempt.job
    log.info("route %s: job %s attempt %d (%s%s)", job.route, job.id, attempt.number,
             job.method, f" to {job.node}" if job.node else "")


def _ended(attempt: Attempt, outcome: Outcome) -> None:
    log.info("route %s: job %s %s%s", attempt.job.route, attempt.job.id, outcome.state,
             f" ({outcome.error})" if outcome.error else "")


def _orphaned(orphan: Orphan) -> str:
    return f"resumed: the process running it ({orphan.job.owner}) stopped"


class RouteWork:
    """What one route job does (``runner.Work``): send, export or run."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def __call__(self, attempt: Attempt) -> Outcome:
        """One attempt; a cancel request ends the job canceled, whether the
        action stopped early or failed on the way."""
        try:
            self._act(attempt)
        except JobFailed as exc:
            if attempt.cancel.is_set():
                return Outcome("canceled", f"canceled while running ({exc})")
            raise
        if attempt.cancel.is_set():
            return Outcome("canceled", "canceled while running")
        return Outcome("succeeded")

    def _act(self, attempt: Attempt) -> None:
        row = attempt.job
        payload = json.loads(row.payload or "{}")
        if row.method == "run":
            self._run_command(row, payload, attempt)
            return
        refs = self._instances(row, payload)
        if not refs:
            raise JobFailed("the archive holds none of its instances any more")
        if row.method == "send":
            self._send(row, payload, refs, attempt)
        elif row.method == "export":
            self._export(row, payload, refs, attempt)
        else:
            raise JobFailed(f"unknown route action {row.method!r}")

    def _instances(self, row: Row[Any], payload: dict[str, Any]) -> list[InstanceRef]:
        from .retrieve import locate
        if row.series_uid:
            return locate(self.node, series_uid=row.series_uid)
        refs = locate(self.node, study_uid=row.study_uid)
        wanted = set(payload.get("series") or ())
        return [r for r in refs if not wanted or r.series_uid in wanted]

    def _send(self, row: Row[Any], payload: dict[str, Any], refs: list[InstanceRef],
              attempt: Attempt) -> None:
        from .access.tls import peer_tls
        from .remote import scu
        from .remote.errors import RemoteError
        from .remote.peer import Peer
        cfg = self.node.remote_nodes().get(row.node)  # its tls as the registry says now
        if not (row.peer_aet and row.peer_host and row.peer_port):
            if cfg is None:
                raise JobFailed(f"node {row.node!r} is not registered any more")
            aet, host, port = cfg.aet, cfg.host, cfg.port
        else:
            aet, host, port = row.peer_aet, row.peer_host, int(row.peer_port)
        peer = Peer(aet=aet, host=host, port=port,
                    calling_aet=row.destination or self.node.settings.ae_title,
                    timeout=10.0, dimse_timeout=120.0,
                    tls=peer_tls(self.node.settings, cfg is not None and cfg.tls))
        done = {"ok": 0, "failed": 0}
        total = len(refs)
        reasons: list[str] = []
        last = [0.0]

        def on_result(result: scu.SendResult) -> None:
            if result.ok:
                done["ok"] += 1
            else:
                done["failed"] += 1
                if result.reason and len(reasons) < 3:
                    reasons.append(result.reason)
            left = total - done["ok"] - done["failed"]
            now = time.monotonic()
            if left == 0 or now - last[0] >= COUNT_INTERVAL:  # one write per interval
                last[0] = now
                attempt.record(completed=done["ok"], failed=done["failed"], remaining=left)

        with tempfile.TemporaryDirectory(prefix="pacsnode-route-") as scratch:
            paths = [r.path for r in refs]
            if payload.get("anonymize"):
                paths = self._anonymized(refs, Path(scratch))
            try:
                scu.send(peer, paths, on_result=on_result, cancel=attempt.cancel)
            except RemoteError as exc:
                raise JobFailed(f"{peer}: {exc}") from None
        if attempt.cancel.is_set():
            return
        if done["failed"]:
            raise JobFailed(f"{done['failed']} of {total} instances were not stored by {peer}"
                            + (f" ({'; '.join(reasons)})" if reasons else ""))

    def _anonymized(self, refs: list[InstanceRef], folder: Path) -> list[Path]:
        """De-identified copies (Basic Profile) with the deployment's key, so
        that a patient and a UID get the same pseudonyms in every job."""
        from pydicom import dcmread

        from .tools.anonymize import Pseudonymizer, anonymize_dataset
        pseudonyms = Pseudonymizer(_anonymize_key(self.node))
        out = []
        for i, ref in enumerate(refs):
            ds = dcmread(ref.path)
            anonymize_dataset(ds, pseudonyms)
            path = folder / f"{i:06d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            out.append(path)
        return out

    def _export(self, row: Row[Any], payload: dict[str, Any], refs: list[InstanceRef],
                attempt: Attempt) -> None:
        from .errors import PacsnodeError
        from .web.api import export_series
        series_uids = list(dict.fromkeys(r.series_uid for r in refs))
        written = 0
        for uid in series_uids:
            target = os.path.join(payload["export_to"], row.study_uid, uid)
            try:
                written += export_series(self.node, uid, target, create_dir=True).count
            except PacsnodeError as exc:
                raise JobFailed(f"export to {target}: {exc.reason}") from None
            except OSError as exc:
                raise JobFailed(f"export to {target}: {exc.strerror or exc}") from None
            attempt.record(completed=written, failed=0, remaining=max(0, len(refs) - written))

    def _run_command(self, row: Row[Any], payload: dict[str, Any], attempt: Attempt) -> None:
        values = {k: str(v) for k, v in (payload.get("placeholders") or {}).items()}
        argv = build_command(payload.get("run", ""), values)
        if not argv:
            raise JobFailed("the run command is empty")
        env = dict(os.environ)
        env.update({f"PACSNODE_{k.upper()}": v for k, v in values.items()})
        env["PACSNODE_EVENT"] = str(payload.get("event", ""))
        env["PACSNODE_ROUTE"] = row.route
        env["PACSNODE_INSTANCES"] = str(payload.get("instances", ""))
        with tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err, env=env)
            except OSError as exc:
                raise JobFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
            deadline = time.monotonic() + COMMAND_TIMEOUT
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if attempt.cancel.is_set() or time.monotonic() > deadline:
                    _end_process(proc)
                    why = "canceled" if attempt.cancel.is_set() else \
                        f"killed after {COMMAND_TIMEOUT:g} s"
                    raise JobFailed(f"{argv[0]} (pid {proc.pid}) {why}")
            if code != 0:
                err.seek(0)
                tail = err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
                raise JobFailed(f"{argv[0]} exited {code}"
                                + (f": {' | '.join(tail)}" if tail else ""))


def _end_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start(node: Node) -> Callable[[], None]:
    """Start the route workers of ``serve`` (route jobs of an earlier
    configuration may remain, so they start whatever is configured);
    returns the stop function."""
    kind = JobKind(KIND, log, _label, _started, _ended, _orphaned,
                   attempts=max(1, int(node.settings.route_attempts)),
                   backoff=max(0.0, float(node.settings.route_backoff_seconds)), resume=True)
    runner = Runner(node, kind, RouteWork(node))
    runner.start()
    return runner.stop
