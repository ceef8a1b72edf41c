"""The job runner (``runner.py``) with a kind of its own, on a real index and
real threads: a failed attempt retried after its back-off and given up after
the last, counts recorded, a cancel requested through the table (as another
process would), a job interrupted by shutdown (back to pending or failed, as
its kind says), the job of a dead process taken back, and a bug inside a job
that neither ends the worker nor reaches the job's error."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Row, select, update

from pacsnode.config import load_settings
from pacsnode.index.jobs_tables import jobs
from pacsnode.leases import HOST
from pacsnode.node import Node
from pacsnode.runner import Attempt, JobFailed, JobKind, Outcome, Runner, Work

KIND = "test"
log = logging.getLogger("pacsnode.test-runner")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    node = Node(load_settings(overrides={"data_dir": tmp_path / "d", "fsync": False},
                              environ={}))
    yield node
    node.close()


def kind(**policy: Any) -> JobKind:
    return JobKind(KIND, log, lambda job: f"job {job.id}", lambda attempt: None,
                   lambda attempt, outcome: None,
                   lambda orphan: f"taken back from {orphan.job.owner}", **policy)


def add(node: Node, **values: Any) -> str:
    now = time.time()
    job_id = uuid.uuid4().hex
    row = dict(id=job_id, kind=KIND, node="", level="STUDY", method="run", state="pending",
               created=now, updated=now, next_try=now, attempts=0)
    row.update(values)
    with node.db.write() as conn:
        conn.execute(jobs.insert().values(**row))
    return job_id


def job(node: Node, job_id: str) -> Row[Any]:
    with node.db.read() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    assert row is not None
    return row


def set_job(node: Node, job_id: str, **values: Any) -> None:
    with node.db.write() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))


def wait_for(node: Node, job_id: str, test: Callable[[Row[Any]], bool], what: str) -> Row[Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = job(node, job_id)
        if test(row):
            return row
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {job(node, job_id)._mapping}")


def running(node: Node, policy: JobKind, work: Work) -> Runner:
    runner = Runner(node, policy, work)
    runner.start()
    return runner


def test_a_failed_attempt_waits_its_back_off_and_the_last_gives_up(node: Node) -> None:
    numbers: list[int] = []

    def work(attempt: Attempt) -> Outcome:
        numbers.append(attempt.number)
        raise JobFailed("the peer is down")

    job_id = add(node)
    runner = running(node, kind(attempts=2, backoff=3600.0), work)
    try:
        row = wait_for(node, job_id, lambda r: r.attempts == 1, "the first attempt")
        assert (row.state, row.owner, row.error) == ("pending", "", "the peer is down")
        assert row.next_try >= row.updated + 3599  # not before its back-off
        assert numbers == [1]
        set_job(node, job_id, next_try=time.time())  # as if the hour had passed
        runner.wake()
        row = wait_for(node, job_id, lambda r: r.state != "pending", "the last attempt")
        row = wait_for(node, job_id, lambda r: r.state != "running", "the job to end")
    finally:
        runner.stop()
    assert numbers == [1, 2]
    assert (row.state, row.attempts, row.next_try) == ("failed", 2, None)
    assert row.error == "the peer is down (gave up after 2 attempts)"
    assert row.finished is not None and row.lease_until is None


def test_counts_recorded_by_an_attempt_stay_with_the_job(node: Node) -> None:
    def work(attempt: Attempt) -> Outcome:
        if attempt.number == 1:
            attempt.record(completed=1, failed=0, remaining=4)
            raise JobFailed("lost the association")
        attempt.record(completed=3, failed=1, remaining=1)
        attempt.note(completed=5, failed=0)
        return Outcome("succeeded")

    job_id = add(node)
    runner = running(node, kind(attempts=3, backoff=0.0), work)
    try:
        row = wait_for(node, job_id, lambda r: r.state == "succeeded", "the second attempt")
    finally:
        runner.stop()
    assert (row.attempts, row.completed, row.failed, row.remaining, row.error) == \
        (2, 5, 0, 0, "")


def test_a_cancel_requested_in_the_table_reaches_the_running_attempt(node: Node) -> None:
    started = threading.Event()

    def work(attempt: Attempt) -> Outcome:
        started.set()
        if attempt.cancel.wait(60):
            return Outcome("canceled", "stopped after a cancel request")
        return Outcome("succeeded")

    job_id = add(node)
    runner = running(node, kind(), work)
    try:
        assert started.wait(60)
        set_job(node, job_id, cancel_requested=True)  # what any process's DELETE does
        row = wait_for(node, job_id, lambda r: r.state != "running", "the cancel")
    finally:
        runner.stop()
    assert (row.state, row.error) == ("canceled", "stopped after a cancel request")


@pytest.mark.parametrize("resume", [True, False])
def test_a_job_interrupted_by_shutdown_is_resumed_or_failed(node: Node, resume: bool) -> None:
    started = threading.Event()

    def work(attempt: Attempt) -> Outcome:
        started.set()
        attempt.cancel.wait(60)
        return Outcome("canceled" if attempt.cancel.is_set() else "succeeded")

    job_id = add(node)
    runner = running(node, kind(resume=resume), work)
    assert started.wait(60)
    assert job(node, job_id).state == "running"
    runner.stop()
    row = job(node, job_id)
    assert row.error == "interrupted by shutdown"
    if resume:
        assert (row.state, row.owner, row.lease_until) == ("pending", "", None)
    else:
        assert row.state == "failed" and row.finished is not None


@pytest.mark.parametrize("resume", [True, False])
def test_the_job_of_a_dead_process_is_taken_back(node: Node, resume: bool) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = f"{HOST}:{dead.pid}:gone"
    job_id = add(node, state="running", owner=owner, lease_until=time.time() + 3600)
    runs: list[str] = []

    def work(attempt: Attempt) -> Outcome:
        runs.append(attempt.id)
        return Outcome("succeeded")

    runner = running(node, kind(resume=resume), work)
    try:
        row = wait_for(node, job_id, lambda r: r.state in ("succeeded", "failed"), "a rescue")
    finally:
        runner.stop()
    if resume:
        assert row.state == "succeeded" and runs == [job_id]
    else:
        assert (row.state, row.error) == ("failed", f"taken back from {owner}")
        assert runs == []


def test_a_bug_in_a_job_fails_it_in_plain_words_and_the_worker_goes_on(node: Node) -> None:
    def work(attempt: Attempt) -> Outcome:
        if attempt.job.method == "crash":
            raise KeyError("/srv/secret/internal/path")
        return Outcome("succeeded")

    broken = add(node, method="crash")
    runner = running(node, kind(workers=1), work)
    try:
        row = wait_for(node, broken, lambda r: r.state == "failed", "the broken job")
        fine = add(node)
        runner.wake()
        after = wait_for(node, fine, lambda r: r.state == "succeeded", "the next job")
    finally:
        runner.stop()
    assert row.error == "internal error: KeyError"
    assert after.attempts == 1


def test_a_job_put_back_between_the_look_and_the_claim_is_not_claimed(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker may run a due job and put it back for its back-off
    between ``claim_due``'s look and its claim: the claim must then miss."""
    import pacsnode.runner as runner_module
    job_id = add(node)
    real_claim = runner_module.claim

    def claim_after_another_worker(*args: Any, **kwargs: Any) -> bool:
        set_job(node, job_id, attempts=1, next_try=time.time() + 3600)  # its back-off
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(runner_module, "claim", claim_after_another_worker)
    assert runner_module.claim_due(node.db, KIND, "me") is None
    row = job(node, job_id)
    assert (row.state, row.attempts, row.owner or "") == ("pending", 1, "")
