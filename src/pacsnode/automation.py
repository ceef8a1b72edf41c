"""Arrival automation: act once a study (or series) has stopped receiving.

A study is *stable* when none of its instances has arrived for
``stable_study_seconds`` (a series: ``stable_series_seconds``).  Each stable
study then gets, once, the ``on_stable_study`` command and a POST to every
URL in ``webhooks``; more instances arriving later make it pending again, and
it fires again once quiet.  This replaces storescp ``--exec-on-reception``
plus a "touch a file per study, find the ones older than 16 s" script.

Before its command and webhooks, the node itself acts on a stable series or
study (§10, ``_arrived``): a series is classified (``pacsnode.classes``; so
every series is tracked, whatever the commands), a study's summary.json is
written (``write_summaries``), and the jobs of the matching routes are
queued (``pacsnode.routes``) — all on the poller's side, off the ingest path.

How it works (see docs/AUTOMATION.md):

* ``start(node)`` subscribes to the event bus.  Every "stored"/"replaced"
  event upserts the study's (and series') row in ``automation_pending``:
  ``last_arrival = now``, ``generation + 1``, ``fired = false``.  The row is
  written after the instance's commit and before the C-STORE/STOW answer, so
  an acknowledged instance is never lost to a restart.  Writes for the same
  study are coalesced to one per ``_throttle`` seconds (the poller waits that
  much longer, so a study never fires early).
* A poller thread finds rows quiet for long enough and claims each with
  ``UPDATE … WHERE kind, uid, generation = ?, fired = false``; only the
  process whose UPDATE changed the row fires it, so several ``serve``
  processes on one PostgreSQL fire each trigger exactly once.
* The command is split with ``shlex`` first and the placeholders are then
  replaced inside each argument; it runs without a shell, so no DICOM value is
  ever interpreted by one.  Webhooks are retried with exponential backoff.
  Both run on their own threads and never hold up ingest.
* A claim is renewed while its actions run; a claim whose process died is
  taken over after ``LEASE_SECONDS`` (at-least-once after a crash mid-run).
* Deleting a study (or series) leaves its pending rows alone: when one comes
  due, the poller counts the instances it stands for and drops it, unfired,
  if there are none.  So no process keeps state a delete must clear: an
  arrival whose write was coalesced away (within ``_throttle`` of the last
  one) always finds the row it relies on still there, whichever process
  deleted and re-sent the study in between (§12).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import BindParameter, Row, bindparam, delete, func, select, update

from .events import Event
from .index.automation_tables import automation_pending as pending
from .index.db import Database, RawStatement
from .index.schema import instances, series, studies
from .leases import claim, owner_id
from .placeholders import PLACEHOLDERS, build_command, unknown_placeholders

if TYPE_CHECKING:
    import httpx

    from .classify import RuleSet
    from .node import Node

__all__ = ["start", "record_arrivals", "Automation", "Trigger", "build_command", "PLACEHOLDERS",
           "LEASE_SECONDS", "WEBHOOK_ATTEMPTS"]

log = logging.getLogger("pacsnode.automation")

#: A claim not renewed for this long belongs to a dead process: take it over.
LEASE_SECONDS = 60.0
#: Webhook delivery: attempts, first back-off delay (doubling), request timeout.
WEBHOOK_ATTEMPTS = 5
WEBHOOK_FIRST_DELAY = 0.5
WEBHOOK_TIMEOUT = 10.0
#: A command still running after this long is killed.
COMMAND_TIMEOUT = 3600.0
#: Most commands / webhook deliveries running at once in one process.
MAX_COMMANDS = 4
MAX_DELIVERIES = 8
#: Most stable series/studies classified, summarised and routed at once.
MAX_ARRIVALS = 2
#: How long shutdown waits for running actions before leaving them to the lease.
STOP_GRACE = 10.0
#: Rows done for this long are pruned (a new arrival recreates them).
DONE_RETENTION = 7 * 86400.0
_TAIL = 2000


def _checked(kind: str, template: str) -> str:
    """The template, or "" (disabled, with an error logged) when it cannot be
    split into arguments; unknown placeholders are only warned about."""
    template = template.strip()
    if not template:
        return ""
    try:
        shlex.split(template)
    except ValueError as exc:
        log.error("on_stable_%s %r cannot be split into arguments (%s): command disabled",
                  kind, template, exc)
        return ""
    bad = unknown_placeholders(template)
    if bad:
        log.warning("on_stable_%s: unknown placeholder(s) %s left as written (known: %s)",
                    kind, ", ".join("{%s}" % b for b in bad),
                    ", ".join("{%s}" % p for p in PLACEHOLDERS))
    return template


@dataclass(frozen=True)
class Trigger:
    """A claimed stable study or series: what its command and webhook get."""

    kind: str  # "study" | "series"
    uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    calling_aet: str
    generation: int
    path: str
    study_path: str
    instances: int
    at: float
    #: The series' classes (a study: those of its series), comma-separated.
    classes: str = ""

    @property
    def event_name(self) -> str:
        return f"stable_{self.kind}"

    def placeholders(self) -> dict[str, str]:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid,
                "path": self.path, "study_path": self.study_path,
                "patient_id": self.patient_id, "calling_aet": self.calling_aet,
                "classes": self.classes}

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event": self.event_name,
            "id": f"{self.kind}:{self.uid}:{self.generation}",
            "study_uid": self.study_uid,
        }
        if self.kind == "series":
            body["series_uid"] = self.series_uid
        body.update(patient_id=self.patient_id, path=self.path,
                    calling_aet=self.calling_aet, instances=self.instances,
                    classes=[c for c in self.classes.split(",") if c],
                    at=datetime.fromtimestamp(self.at, timezone.utc).isoformat())
        return body


@dataclass(frozen=True)
class _Kind:
    name: str  # "study" | "series"
    seconds: float
    command: str

    @property
    def throttle(self) -> float:
        """Coalescing window for arrival writes; the poller waits this much
        longer than ``seconds`` so a skipped write never makes it fire early."""
        return min(0.5, self.seconds / 4)


class Automation:
    """The stable-study/series tracker and its poller for one ``serve`` process."""

    def __init__(self, node: Node) -> None:
        self.node = node
        s = node.settings
        self.webhooks = [str(u) for u in s.webhooks if str(u).strip()]
        kinds = [_Kind("study", float(s.stable_study_seconds),
                       _checked("study", s.on_stable_study)),
                 _Kind("series", float(s.stable_series_seconds),
                       _checked("series", s.on_stable_series))]
        # Every series is classified once stable (§10), so the series kind
        # always runs; a study's only when something acts on it.
        self.write_summaries = bool(s.write_summaries)
        from .routes import configured_routes
        self.routes = configured_routes(s)
        wanted = {"series": True,
                  "study": bool(self.write_summaries or any(r.on == "stable_study"
                                                           for r in self.routes))}
        self.kinds = {k.name: k for k in kinds if k.command or self.webhooks or wanted[k.name]}
        self.me = owner_id()
        self.poll_interval = max(0.05, min([1.0] + [k.seconds / 4 for k in self.kinds.values()]))
        self._stop = threading.Event()
        self._written: dict[tuple[str, str], float] = {}  # (kind, uid) -> monotonic time
        self._written_lock = threading.Lock()
        self._upsert: RawStatement | None = None  # compiled on the first arrival
        self._emptied: set[str] = set()  # studies with a delete since the last poll
        self._inflight: dict[tuple[str, str, int], threading.Event] = {}
        self._inflight_lock = threading.Lock()
        self._commands = threading.BoundedSemaphore(MAX_COMMANDS)
        self._deliveries = threading.BoundedSemaphore(MAX_DELIVERIES)
        self._arrivals = threading.BoundedSemaphore(MAX_ARRIVALS)
        self._http: httpx.Client | None = None
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._last_prune = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.kinds)

    # -- lifecycle

    def start(self) -> None:
        if not self.enabled:
            return
        if self.webhooks:
            import httpx
            self._http = httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False)
        self.node.bus.subscribe(self.on_event, blocking=True,  # writes arrivals
                                wants=self.wants)
        self._thread = threading.Thread(target=self._run, name="pacsnode-automation",
                                        daemon=True)
        self._thread.start()
        log.info("arrival automation: %s; polling every %.2fs",
                 ", ".join(f"{k.name} stable after {k.seconds:g}s" for k in self.kinds.values()),
                 self.poll_interval)

    def stop(self) -> None:
        """Stop polling; give running commands/webhooks ``STOP_GRACE`` seconds.
        Those still running keep their claim, which lapses after the lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        deadline = time.monotonic() + STOP_GRACE
        with self._inflight_lock:
            waiting = list(self._inflight.values())
        for done in waiting:
            done.wait(max(0.0, deadline - time.monotonic()))
        if self._http is not None:
            self._http.close()

    # -- arrivals and deletions (event bus, the ingesting thread)

    def on_event(self, event: Event) -> None:
        if event.level != "instance":  # e.g. UPS workitems
            return
        if event.action in ("stored", "replaced"):
            self.record_arrival(event)
        elif event.action == "deleted" and self.write_summaries:
            with self._written_lock:  # the poller drops the summary of a study now empty
                self._emptied.add(event.study_uid)

    def wants(self, event: Event) -> bool:
        """Whether ``on_event`` would write for ``event`` (for the bus: an
        arrival the throttle lets by needs no thread that may wait)."""
        if event.level == "instance" and event.action in ("stored", "replaced"):
            return bool(self._due(event, time.monotonic()))
        return True

    def _due(self, event: Event, now_mono: float) -> list[tuple[_Kind, str]]:
        """The (kind, UID) rows of an arrival not written within the throttle."""
        keys: list[tuple[_Kind, str]] = []
        if "study" in self.kinds:
            keys.append((self.kinds["study"], event.study_uid))
        if "series" in self.kinds and event.series_uid:
            keys.append((self.kinds["series"], event.series_uid))
        with self._written_lock:
            return [(k, uid) for k, uid in keys
                    if now_mono - self._written.get((k.name, uid), -1e18) >= k.throttle]

    def record_arrival(self, event: Event) -> None:
        now_mono = time.monotonic()
        due = self._due(event, now_mono)
        if not due:
            return
        calling_aet = event.origin.peer_aet if event.origin is not None else ""
        now = time.time()
        upsert = self._upsert
        if upsert is None:
            upsert = self._upsert = _arrival_upsert(self.node.db)
        with self.node.db.raw_write() as cur:
            for kind, uid in due:
                upsert.execute(cur, dict(kind=kind.name, uid=uid, study_uid=event.study_uid,
                                         patient_id=event.patient_id or "",
                                         calling_aet=calling_aet, now=now))
        with self._written_lock:
            for kind, uid in due:
                self._written[(kind.name, uid)] = now_mono
            if len(self._written) > 10000:
                horizon = now_mono - 5.0
                self._written = {k: t for k, t in self._written.items() if t > horizon}

    # -- the poller

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll_once()
            except Exception:  # the database may be away for a moment: try again
                log.exception("automation poll failed")

    def poll_once(self) -> int:
        """Claim and fire every trigger that is due; returns how many fired."""
        now = time.time()
        fired = 0
        with self.node.db.read() as conn:
            due: list[Row[Any]] = []
            for kind in self.kinds.values():
                cutoff = now - kind.seconds - kind.throttle
                due += conn.execute(
                    select(pending).where(pending.c.kind == kind.name,
                                          pending.c.fired.is_(False),
                                          pending.c.last_arrival <= cutoff)
                    .order_by(pending.c.last_arrival).limit(100)).all()
            stale = conn.execute(
                select(pending).where(pending.c.kind.in_(list(self.kinds)),
                                      pending.c.fired.is_(True), pending.c.done.is_(False),
                                      pending.c.claimed_at < now - LEASE_SECONDS)
                .limit(100)).all()
        for row in due:
            if self._stop.is_set():
                break
            if self._claim(row, now, takeover=False):
                fired += self._fire(row)
        for row in stale:
            if self._stop.is_set():
                break
            if self._claim(row, now, takeover=True):
                log.warning("taking over the stable %s trigger of %s from %s (claim lapsed)",
                            row.kind, row.uid, row.claimed_by)
                fired += self._fire(row)
        self._housekeeping(now)
        self._drop_summaries()
        return fired

    def _claim(self, row: Row[Any], now: float, *, takeover: bool) -> bool:
        where = [pending.c.kind == row.kind, pending.c.uid == row.uid,
                 pending.c.generation == row.generation]
        if takeover:
            where += [pending.c.fired.is_(True), pending.c.done.is_(False),
                      pending.c.claimed_at == row.claimed_at]
        else:
            where += [pending.c.fired.is_(False)]
        return claim(self.node.db, pending, where,
                     dict(fired=True, claimed_by=self.me, claimed_at=now))

    def _drop_summaries(self) -> None:
        """Remove the summary.json of studies deleted through this process
        (the study folder would otherwise stay, holding only it)."""
        with self._written_lock:
            studies, self._emptied = self._emptied, set()
        if not studies:
            return
        from .summary import remove_summary
        for study_uid in studies:
            if self._count_instances("study", study_uid) == 0:
                remove_summary(self.node, study_uid)

    def _housekeeping(self, now: float) -> None:
        with self._inflight_lock:
            mine = list(self._inflight)
        if mine and now - self._last_heartbeat >= LEASE_SECONDS / 4:
            self._last_heartbeat = now
            with self.node.db.write() as conn:
                for kind, uid, generation in mine:
                    conn.execute(update(pending).where(
                        pending.c.kind == kind, pending.c.uid == uid,
                        pending.c.generation == generation, pending.c.claimed_by == self.me)
                        .values(claimed_at=now))
        if now - self._last_prune >= 3600:
            self._last_prune = now
            with self.node.db.write() as conn:
                conn.execute(delete(pending).where(pending.c.done.is_(True),
                                                   pending.c.last_arrival < now - DONE_RETENTION))

    # -- firing

    def _fire(self, row: Row[Any]) -> int:
        root = self.node.store.root / "studies"
        study_path = root / row.study_uid
        if row.kind == "study":
            series_uid, path = "", study_path
        else:
            series_uid, path = row.uid, study_path / row.uid
        count = self._count_instances(row.kind, row.uid)
        if count == 0:  # deleted meanwhile (perhaps by another process)
            with self.node.db.write() as conn:
                conn.execute(delete(pending).where(pending.c.kind == row.kind,
                                                   pending.c.uid == row.uid,
                                                   pending.c.generation == row.generation))
            return 0
        trigger = Trigger(row.kind, row.uid, row.study_uid, series_uid, row.patient_id or "",
                          row.calling_aet or "", int(row.generation), str(path),
                          str(study_path), count, time.time())
        log.info("%s %s is stable (%d instance(s), quiet for %.1fs)", trigger.kind, trigger.uid,
                 count, trigger.at - row.last_arrival)
        key = (trigger.kind, trigger.uid, trigger.generation)
        finished = threading.Event()
        with self._inflight_lock:
            self._inflight[key] = finished
        threading.Thread(target=self._stable, args=(trigger, finished), daemon=True,
                         name=f"pacsnode-stable-{trigger.kind}").start()
        return 1

    def _arrived(self, trigger: Trigger) -> Trigger:
        """What the node itself does with a stable series or study, before
        its command and webhooks: classify the series (so ``{classes}`` is
        current), write the study's summary, queue the route jobs."""
        from . import classes as classmod
        from .routes import enqueue
        if trigger.kind == "series":
            found = classmod.classify_stored_series(
                self.node.db, trigger.uid, classmod.server_rules(self.node.settings)) or []
        else:
            found = _study_classes(self.node, trigger.study_uid,
                                   classmod.server_rules(self.node.settings))
            if self.write_summaries:
                from .summary import write_summary
                write_summary(self.node, trigger.study_uid)
        trigger = replace(trigger, classes=",".join(found))
        if self.routes and enqueue(self.node, self.routes, trigger):
            from .routes import KIND as ROUTE
            from .runner import wake
            wake(self.node, ROUTE)
        return trigger

    def _stable(self, trigger: Trigger, finished: threading.Event) -> None:
        try:
            with self._arrivals:
                trigger = self._arrived(trigger)
        except Exception:  # the command and webhooks still run
            log.exception("stable %s %s: classification, summary or routes failed",
                          trigger.kind, trigger.uid)
        actions: list[Callable[[], None]] = []
        command = self.kinds[trigger.kind].command
        if command:
            actions.append(partial(self._run_command, command, trigger))
        for url in self.webhooks:
            actions.append(partial(self._deliver, url, trigger))
        key = (trigger.kind, trigger.uid, trigger.generation)
        remaining = [len(actions)]
        lock = threading.Lock()

        def one(action: Callable[[], None]) -> None:
            try:
                action()
            except Exception:
                log.exception("stable %s action for %s failed", trigger.kind, trigger.uid)
            finally:
                with lock:
                    remaining[0] -= 1
                    last = remaining[0] == 0
                if last:
                    self._mark_done(trigger)
                    with self._inflight_lock:
                        self._inflight.pop(key, None)
                    finished.set()

        if not actions:
            self._mark_done(trigger)
            with self._inflight_lock:
                self._inflight.pop(key, None)
            finished.set()
        for action in actions:
            threading.Thread(target=one, args=(action,), daemon=True,
                             name=f"pacsnode-stable-{trigger.kind}").start()

    def _count_instances(self, kind: str, uid: str) -> int:
        with self.node.db.read() as conn:
            if kind == "study":
                stmt = (select(func.count()).select_from(instances)
                        .join(studies, studies.c.id == instances.c.study_fk)
                        .where(studies.c.studyinstanceuid == uid))
            else:
                stmt = (select(func.count()).select_from(instances)
                        .join(series, series.c.id == instances.c.series_fk)
                        .where(series.c.seriesinstanceuid == uid))
            return int(conn.execute(stmt).scalar_one())

    def _mark_done(self, trigger: Trigger) -> None:
        try:
            with self.node.db.write() as conn:
                conn.execute(update(pending).where(
                    pending.c.kind == trigger.kind, pending.c.uid == trigger.uid,
                    pending.c.generation == trigger.generation,
                    pending.c.claimed_by == self.me).values(done=True, claimed_at=time.time()))
        except Exception:  # the claim lapses and another process repeats it
            log.exception("could not record the stable %s trigger of %s as done",
                          trigger.kind, trigger.uid)

    def _run_command(self, template: str, trigger: Trigger) -> None:
        argv = build_command(template, trigger.placeholders())
        env = dict(os.environ)
        env.update({f"PACSNODE_{k.upper()}": v for k, v in trigger.placeholders().items()})
        env["PACSNODE_EVENT"] = trigger.event_name
        env["PACSNODE_INSTANCES"] = str(trigger.instances)
        label = f"on_stable_{trigger.kind} for {trigger.kind} {trigger.uid}"
        if not argv:
            log.error("%s: the command is empty", label)
            return
        log.debug("%s: running %r", label, argv)
        with self._commands, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            started = time.monotonic()
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      env=env, timeout=COMMAND_TIMEOUT, check=False)
                code: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                code = f"killed after {COMMAND_TIMEOUT:g}s"
            except (OSError, ValueError) as exc:  # not found, not executable, empty …
                log.error("%s: cannot run %r: %s", label, argv[0] if argv else "", exc)
                return
            elapsed = time.monotonic() - started
            stderr_tail = _tail(err)
            stdout_tail = _tail(out)
        if code == 0:
            log.info("%s: exit 0 in %.1fs%s", label, elapsed,
                     f"; stderr: {stderr_tail}" if stderr_tail else "")
        else:
            log.warning("%s: exit %s in %.1fs; stderr: %s", label, code, elapsed,
                        stderr_tail or "(empty)")
        if stdout_tail:
            log.debug("%s: stdout: %s", label, stdout_tail)

    def _deliver(self, url: str, trigger: Trigger) -> None:
        """POST the event, retrying transport errors, 408, 429 and 5xx with
        exponential back-off; other answers are final."""
        import httpx
        http = self._http
        if http is None:  # the client is made by start()
            log.error("webhook %s: automation is not started, event not sent", url)
            return
        body = trigger.payload()
        delay = WEBHOOK_FIRST_DELAY
        with self._deliveries:
            for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
                try:
                    response = http.post(url, json=body)
                except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: closed at stop
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if 200 <= response.status_code < 300:
                        log.info("webhook %s: %s %s delivered (attempt %d)", url,
                                 trigger.event_name, trigger.uid, attempt)
                        return
                    problem = f"HTTP {response.status_code}"
                    if response.status_code not in (408, 429) and response.status_code < 500:
                        log.error("webhook %s refused %s %s: %s (not retried)", url,
                                  trigger.event_name, trigger.uid, problem)
                        return
                if attempt == WEBHOOK_ATTEMPTS:
                    break
                log.warning("webhook %s: %s %s attempt %d failed (%s); retrying %s", url,
                            trigger.event_name, trigger.uid, attempt, problem,
                            "now (shutting down)" if self._stop.is_set() else f"in {delay:g}s")
                self._stop.wait(delay)  # shutting down: no more waiting, still bounded
                delay *= 2
        log.error("webhook %s: giving up on %s %s after %d attempt(s): %s", url,
                  trigger.event_name, trigger.uid, attempt, problem)


def _study_classes(node: Node, study_uid: str, rules: RuleSet) -> list[str]:
    """The classes of a study's series, each once, in series order; a
    series not classified yet (its own quiet period longer than the
    study's) is classified now."""
    from .classes import classify_stored_series, find_series, stored_classes
    seen: dict[str, str] = {}
    for row in find_series(node.db, study_uid=study_uid, limit=100000):
        names = row.classes
        if stored_classes(node.db, row.series_uid) is None:
            names = classify_stored_series(node.db, row.series_uid, rules) or []
        for name in names:
            seen.setdefault(name.casefold(), name)
    return list(seen.values())


def _arrival_upsert(db: Database) -> RawStatement:
    """The upsert of an arrival's pending row, compiled once: built through
    SQLAlchemy each time, it cost ~1.5 ms, more than the write."""
    if db.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert
    else:
        # (each dialect's insert has its own class; both build this statement)
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    now: BindParameter[float] = bindparam("now")
    stmt = insert(pending).values(kind=bindparam("kind"), uid=bindparam("uid"),
                                  study_uid=bindparam("study_uid"),
                                  patient_id=bindparam("patient_id"),
                                  calling_aet=bindparam("calling_aet"),
                                  first_arrival=now, last_arrival=now, generation=1,
                                  fired=False, done=False, claimed_by=None, claimed_at=None)
    stmt = stmt.on_conflict_do_update(
        index_elements=[pending.c.kind, pending.c.uid],
        set_=dict(last_arrival=stmt.excluded.last_arrival, study_uid=stmt.excluded.study_uid,
                  patient_id=stmt.excluded.patient_id, calling_aet=stmt.excluded.calling_aet,
                  generation=pending.c.generation + 1, fired=False, done=False,
                  claimed_by=None, claimed_at=None))
    return RawStatement(stmt, db.engine)


def _tail(fh: IO[bytes]) -> str:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - _TAIL))
    text = fh.read().decode("utf-8", "replace").strip()
    return ("…" if size > _TAIL else "") + " | ".join(text.splitlines())


def start(node: Node) -> Callable[[], None]:
    """Start the automation of a ``serve`` process; returns its stop function.
    Series are always tracked (each is classified once stable); studies when
    a command, webhook, route on stable_study or write_summaries acts on them."""
    automation = Automation(node)
    automation.start()
    return automation.stop


def record_arrivals(node: Node) -> None:
    """Record arrivals without polling, for a process that ingests but does
    not serve (``pacsnode import`` beside a running ``serve``): the ``serve``
    processes on the same index fire the triggers.  Give it the same
    ``--config`` as ``serve``, so that it records the same kinds."""
    automation = Automation(node)
    if automation.enabled:
        node.bus.subscribe(automation.on_event, blocking=True, wants=automation.wants)
