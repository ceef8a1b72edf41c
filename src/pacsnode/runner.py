"""The job runner: worker threads that carry out the rows of the ``jobs``
table (``index/jobs_tables.py``) of one kind, in every ``serve`` that shares
the database (§12).

The runner owns all of a job but what it does:

- claiming: a worker looks for due pending jobs of its kind every
  ``POLL_SECONDS`` (at once after ``wake``: a job posted in this process) and
  claims one with ``leases.claim`` — one process wins;
- the lease: while jobs run, their owner renews ``lease_until`` every
  ``HEARTBEAT_SECONDS`` and turns a ``cancel_requested`` set by any process
  into the attempt's cancel flag;
- the end: the ``Outcome`` of an attempt is written with the counts it
  recorded; a failed attempt of a kind that retries goes back to pending
  after a back-off (doubling) until its attempts are spent;
- a process that is gone (a pid of this host that no longer runs, or a
  lease that ran out elsewhere): its running jobs are taken back at start
  and every ``RESCUE_TICKS`` heartbeats — back to pending when the kind
  resumes its jobs, failed when it does not;
- shutdown: ``stop`` cancels the running attempts and marks them
  ``shutdown``; their jobs go back to pending or fail "interrupted by
  shutdown", as the kind says.

What a kind supplies is a ``JobKind`` (its policy, and its words in the
log) and a ``Work``: what one attempt does.  The kinds: retrieve jobs
(``remote/jobs.py``) and route jobs (``routes.py``).  The stable-study
triggers (``automation.py``) are rows of their own table, claimed once per
generation with the same ``leases.claim``, and fan out to commands and
webhooks; they have no attempts, states or cancel, so they keep their poller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import Row, or_, select, update

from .index.jobs_tables import jobs
from .leases import claim, owner_id, owner_is_dead

if TYPE_CHECKING:
    from .index.db import Database
    from .node import Node

__all__ = ["JobKind", "Work", "Attempt", "Outcome", "JobFailed", "Orphan", "Runner",
           "claim_due", "orphans", "take_back", "rescue", "runner_for", "wake", "cancel_local",
           "WORKERS", "LEASE_SECONDS", "POLL_SECONDS", "HEARTBEAT_SECONDS", "RESCUE_TICKS"]

#: Worker threads of one kind per ``serve`` (jobs run in parallel up to this).
WORKERS = 2
#: How long a claim holds without renewal; the owner renews every heartbeat.
LEASE_SECONDS = 30.0
#: How often idle workers look for pending jobs (``wake`` makes them look at once).
POLL_SECONDS = 0.5
#: Lease renewal and cancel requests of the running jobs.
HEARTBEAT_SECONDS = 1.0
#: Jobs of processes that are gone are looked for every this many heartbeats.
RESCUE_TICKS = 5


@dataclass(frozen=True)
class JobKind:
    """How the runner treats the jobs of one ``kind``, and how it names
    them in the log."""

    #: The ``jobs.kind`` it runs; its threads are ``pacsnode-<name>-N``.
    name: str
    log: logging.Logger
    #: How the log names a job ("job ID", "route NAME: job ID").
    label: Callable[[Row[Any]], str]
    #: Log lines of the start of an attempt, and of the end of a job.
    started: Callable[[Attempt], None]
    ended: Callable[[Attempt, Outcome], None]
    #: The ``error`` of a job taken back from a process that is gone.
    orphaned: Callable[[Orphan], str]
    workers: int = WORKERS
    #: None: a failed attempt is final.  N: a job is tried N times, the
    #: next attempt ``backoff`` seconds later (doubling), then it fails
    #: "… (gave up after N attempts)".
    attempts: int | None = None
    backoff: float = 0.0
    #: What becomes of a job interrupted by shutdown or by the death of its
    #: process: True puts it back to pending (it runs again), False fails it.
    resume: bool = False


class JobFailed(Exception):
    """An attempt failed; the message says why in plain words (it becomes
    the job's ``error``)."""


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ``succeeded``, ``failed`` or ``canceled``."""

    state: str
    error: str = ""


@dataclass
class Attempt:
    """One run of a claimed job: its row as claimed, which attempt it is,
    and the flags the runner sets (cancel requested; shutdown)."""

    job: Row[Any]
    number: int
    _write: Callable[[Attempt, dict[str, Any]], None] = field(repr=False)
    cancel: threading.Event = field(default_factory=threading.Event)
    shutdown: bool = False
    #: Columns recorded during the attempt (its counts), written again at its end.
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.job.id)

    def note(self, **values: Any) -> None:
        """Remember columns for the end of the attempt, without writing now."""
        self.values.update(values)

    def record(self, **values: Any) -> None:
        """Write columns of the running job now (its counts, what it
        learned), renewing its lease; they are written again at its end."""
        self.note(**values)
        self._write(self, values)

    def interrupt(self) -> None:
        self.shutdown = True
        self.cancel.set()


#: What one job does: one attempt, ending in an Outcome or JobFailed (with a
#: reason).  ``attempt.cancel`` is set when a cancel was requested or the
#: process stops (``attempt.shutdown``).
Work: TypeAlias = Callable[[Attempt], Outcome]


@dataclass(frozen=True)
class Orphan:
    """A running job whose process is gone: ``dead`` when its owner was a
    process of this host that no longer runs, ``expired`` when its lease
    ran out (either, or both)."""

    job: Row[Any]
    dead: bool
    expired: bool


# ------------------------------------------------------------ the table

def claim_due(db: Database, kind: str, owner: str,
              lease: float = LEASE_SECONDS) -> Row[Any] | None:
    """Claim the pending job of ``kind`` that is due first (``next_try``,
    then the oldest) for ``owner``; its row, or None when none is due.  The
    conditional UPDATE (``leases.claim``) makes the claim atomic across
    processes."""
    now = time.time()
    with db.read() as conn:
        ids = conn.execute(
            select(jobs.c.id).where(jobs.c.kind == kind, jobs.c.state == "pending",
                                    or_(jobs.c.next_try.is_(None), jobs.c.next_try <= now))
            .order_by(jobs.c.next_try, jobs.c.created, jobs.c.id).limit(16)).scalars().all()
    for job_id in ids:
        now = time.time()
        # Still pending *and still due*: between the look and the claim, a
        # worker (here or in another process) may have run it and put it back
        # for its back-off.
        if claim(db, jobs, [jobs.c.id == job_id, jobs.c.state == "pending",
                            or_(jobs.c.next_try.is_(None), jobs.c.next_try <= now)],
                 dict(state="running", owner=owner, lease_until=now + lease, started=now,
                      updated=now)):
            with db.read() as conn:
                return conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    return None


def orphans(db: Database, kind: str, me: str | None) -> list[Orphan]:
    """The running jobs of ``kind`` whose process is gone, seen by the
    claimant ``me`` (None: owners are judged by their lease only)."""
    now = time.time()
    with db.read() as conn:
        rows = conn.execute(select(jobs).where(jobs.c.kind == kind,
                                               jobs.c.state == "running")).all()
    found: list[Orphan] = []
    for row in rows:
        dead = me is not None and owner_is_dead(row.owner, me)
        expired = row.lease_until is not None and row.lease_until < now
        if dead or expired:
            found.append(Orphan(row, dead, expired))
    return found


def take_back(db: Database, orphan: Orphan, reason: str, *, resume: bool) -> bool:
    """Take a job from the process that left it running: back to pending
    (``resume``) or failed, with ``reason``.  False when another process
    took it first."""
    now = time.time()
    values: dict[str, Any] = dict(owner="", state="pending", next_try=now) if resume else \
        dict(state="failed", finished=now)
    values.update(error=reason, updated=now, lease_until=None)
    row = orphan.job
    return claim(db, jobs, [jobs.c.id == row.id, jobs.c.state == "running",
                            jobs.c.owner == row.owner], values)


def rescue(db: Database, kind: JobKind, found: list[Orphan]) -> int:
    """Take back the jobs ``found`` (``orphans``) as ``kind`` says, each
    with a warning; returns how many (another process may be first)."""
    count = 0
    for orphan in found:
        if take_back(db, orphan, kind.orphaned(orphan), resume=kind.resume):
            kind.log.warning("%s was left running by a stopped process: %s",
                             kind.label(orphan.job), "resumed" if kind.resume else "failed")
            count += 1
    return count


# ------------------------------------------------------------ the runners

_RUNNERS: dict[tuple[int, str], Runner] = {}
_RUNNERS_LOCK = threading.Lock()


def runner_for(node: Node, kind: str) -> Runner | None:
    """The runner of ``kind`` working for ``node`` in this process, if any."""
    with _RUNNERS_LOCK:
        return _RUNNERS.get((id(node), kind))


def wake(node: Node, kind: str) -> None:
    """A job of ``kind`` was posted: this process's idle workers look now."""
    runner = runner_for(node, kind)
    if runner is not None:
        runner.wake()


def cancel_local(node: Node, job_id: str) -> bool:
    """Cancel ``job_id`` at once if a runner of this process is running it
    (other processes notice ``cancel_requested`` at their next heartbeat)."""
    with _RUNNERS_LOCK:
        runners = [r for (node_id, _kind), r in _RUNNERS.items() if node_id == id(node)]
    return any(r.cancel(job_id) for r in runners)


class Runner:
    """Worker threads that claim and run the jobs of one kind for one Node."""

    def __init__(self, node: Node, kind: JobKind, work: Work) -> None:
        self.node = node
        self.kind = kind
        self.work = work
        self.log = kind.log
        self.owner = owner_id()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, Attempt] = {}
        self._threads: list[threading.Thread] = []

    # -- lifecycle

    def start(self) -> None:
        self.rescue()
        with _RUNNERS_LOCK:
            _RUNNERS[(id(self.node), self.kind.name)] = self
        name = f"pacsnode-{self.kind.name}"
        for i in range(self.kind.workers):
            self._spawn(self._work, f"{name}-{i}")
        self._spawn(self._housekeep, f"{name}-lease")
        self.log.info("%s jobs: %d workers as %s", self.kind.name, self.kind.workers,
                      self.owner)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, interrupt the running attempts and wait for the
        workers.  A job still running after ``timeout`` fails "interrupted by
        shutdown" when its kind does not resume jobs; one that resumes keeps
        its claim until its lease lapses (put back to pending now, another
        process could run it while this one still does)."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            for attempt in self._active.values():
                attempt.interrupt()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._active.values())
        if not self.kind.resume:
            now = time.time()
            for attempt in left:
                self._update(attempt, dict(state="failed", error="interrupted by shutdown",
                                           updated=now, finished=now, lease_until=None))
        with _RUNNERS_LOCK:
            if _RUNNERS.get((id(self.node), self.kind.name)) is self:
                del _RUNNERS[(id(self.node), self.kind.name)]

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> bool:
        """Set the cancel flag of a job this runner is running."""
        with self._lock:
            attempt = self._active.get(job_id)
        if attempt is None:
            return False
        attempt.cancel.set()
        return True

    def rescue(self) -> int:
        """Take back the jobs of this kind left running by processes that
        are gone; returns how many."""
        return rescue(self.node.db, self.kind, orphans(self.node.db, self.kind.name, self.owner))

    # -- threads

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                row = claim_due(self.node.db, self.kind.name, self.owner)
            except Exception:  # noqa: BLE001 - a database hiccup must not end the worker
                self.log.exception("could not look for pending %s jobs", self.kind.name)
                row = None
            if row is None:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                continue
            self._run(row)

    def _housekeep(self) -> None:
        tick = 0
        while not self._stop.wait(HEARTBEAT_SECONDS):
            tick += 1
            try:
                self._heartbeat()
                if tick % RESCUE_TICKS == 0:
                    self.rescue()
            except Exception:  # noqa: BLE001
                self.log.exception("%s job housekeeping failed", self.kind.name)

    def _heartbeat(self) -> None:
        """Renew the lease of the running jobs; pass on cancel requests."""
        with self._lock:
            active = dict(self._active)
        if not active:
            return
        now = time.time()
        with self.node.db.write() as conn:
            conn.execute(update(jobs).where(jobs.c.owner == self.owner,
                                            jobs.c.state == "running")
                         .values(lease_until=now + LEASE_SECONDS))
        with self.node.db.read() as conn:
            wanted = conn.execute(select(jobs.c.id).where(
                jobs.c.id.in_(list(active)), jobs.c.cancel_requested.is_(True))).scalars().all()
        for job_id in wanted:
            attempt = active.get(job_id)
            if attempt is not None and not attempt.cancel.is_set():
                self.log.info("%s: cancel requested", self.kind.label(attempt.job))
                attempt.cancel.set()

    # -- one attempt

    def _run(self, row: Row[Any]) -> None:
        attempt = Attempt(row, int(row.attempts or 0) + 1, self._record)
        with self._lock:
            self._active[attempt.id] = attempt
            if self._stop.is_set():
                attempt.interrupt()
        try:
            self.kind.started(attempt)
            try:
                outcome = self.work(attempt)
            except JobFailed as exc:
                outcome = Outcome("failed", str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug must not kill the worker
                self.log.exception("%s failed", self.kind.label(row))
                outcome = Outcome("failed", f"internal error: {type(exc).__name__}")
            self._settle(attempt, outcome)
        finally:
            with self._lock:
                self._active.pop(attempt.id, None)

    def _settle(self, attempt: Attempt, outcome: Outcome) -> None:
        """Write how the attempt ended: the job's end, or its next try."""
        if attempt.shutdown and outcome.state != "succeeded":
            if self.kind.resume:
                self._again(attempt, "interrupted by shutdown", 0.0)
                return
            outcome = Outcome("failed", "interrupted by shutdown")
        attempts, number = self.kind.attempts, attempt.number
        if outcome.state == "failed" and attempts is not None:
            label = self.kind.label(attempt.job)
            if number < attempts:
                delay = self.kind.backoff * (2 ** (number - 1))
                self.log.warning("%s attempt %d failed (%s); again in %.0f s", label, number,
                                 outcome.error, delay)
                self._again(attempt, outcome.error, delay, attempts=number)
                return
            self.log.error("%s failed after %d attempt(s): %s", label, number, outcome.error)
            outcome = Outcome("failed", f"{outcome.error} (gave up after {number} attempts)")
        self._end(attempt, outcome)

    def _again(self, attempt: Attempt, error: str, delay: float, **values: Any) -> None:
        """Put the job back to pending, due in ``delay`` seconds."""
        now = time.time()
        self._update(attempt, dict(values, state="pending", owner="", lease_until=None,
                                   next_try=now + delay, error=error, updated=now))

    def _end(self, attempt: Attempt, outcome: Outcome) -> None:
        now = time.time()
        values = dict(attempt.values, state=outcome.state, error=outcome.error,
                      attempts=attempt.number, updated=now, finished=now, lease_until=None,
                      next_try=None)
        if outcome.state == "succeeded":
            values["remaining"] = 0
        self._update(attempt, values)
        self.kind.ended(attempt, outcome)

    def _update(self, attempt: Attempt, values: dict[str, Any]) -> None:
        """Write the row of a job this runner holds (no longer once it was
        taken back by another process)."""
        with self.node.db.write() as conn:
            conn.execute(update(jobs).where(jobs.c.id == attempt.id, jobs.c.owner == self.owner,
                                            jobs.c.state == "running").values(**values))

    def _record(self, attempt: Attempt, values: dict[str, Any]) -> None:
        now = time.time()
        self._update(attempt, dict(values, updated=now, lease_until=now + LEASE_SECONDS))
