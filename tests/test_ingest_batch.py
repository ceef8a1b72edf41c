"""The ingest's group commit: a batch whose transaction fails is rolled back
and each instance tried again alone — with its blob, which the failed
transaction had already moved into place."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicomfiles import dataset_bytes, make_ct
from pacsnode.config import load_settings
from pacsnode.events import Origin
from pacsnode.index.schema import instances
from pacsnode.ingest import Ingestor, Outcome
from pacsnode.node import Node


@pytest.fixture
def node(tmp_path: Path, database_url: str):
    n = Node(load_settings(overrides={"data_dir": tmp_path / "data", "fsync": True,
                                      "database_url": database_url}, environ={}))
    yield n
    n.close()


def test_failed_batch_is_retried_one_by_one_and_keeps_every_blob(node, tmp_path, monkeypatch):
    study = "1.2.826.0.1.3680043.8.498.1"
    sources = [tmp_path / f"{n}.dcm" for n in range(5)]
    for n, path in enumerate(sources):
        make_ct(path, study_uid=study, series_uid=f"{study}.{n % 2}", instance=n + 1, size=8)
    temps = []
    for path in sources:
        fh, temp = node.store.new_temp()
        with fh:
            fh.write(path.read_bytes())
        temps.append(temp)
    failing = {"left": 1}
    write_one = Ingestor._write_one

    def flaky(self, cur, item, earlier):
        if item.temp == temps[3] and failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("the database went away for a moment")
        return write_one(self, cur, item, earlier)

    monkeypatch.setattr(Ingestor, "_write_one", flaky)
    results = node.ingestor.ingest_temps(temps, Origin("test"))
    assert failing["left"] == 0  # the batch did fail once, after three renames
    assert [r.outcome for r in results] == [Outcome.STORED] * 5
    for path, result in zip(sources, results):
        blob = node.store.path(f"studies/{result.study_uid}/{result.series_uid}/"
                               f"{result.sop_instance_uid}.dcm")
        assert dataset_bytes(blob) == dataset_bytes(path)
    with node.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(instances)).scalar_one() == 5
    assert list(node.store.incoming.iterdir()) == []


def test_stage_then_commit_without_waiting(node, tmp_path):
    """The steps the DIMSE loop takes (durability.IngestScheduler): ``check``
    (header read with the fast reader only), ``staged`` (with its fsync
    under way) and ``commit_now``, which on SQLite gives up at once, with
    nothing done, while another writer holds the index — and succeeds
    afterwards; on PostgreSQL it never writes (the loop must not wait on
    the network) and the waiting commit does."""
    from conftest import another_writer
    from pacsnode.ingest import Staged
    path = tmp_path / "a.dcm"
    make_ct(path, size=8)
    fh, temp = node.store.new_temp()
    with fh:
        fh.write(path.read_bytes())
    checked = node.ingestor.check(temp, Origin("test"), fast_only=True)
    assert isinstance(checked, tuple)
    staged = node.ingestor.staged(temp, Origin("test"), *checked, node.store.sync_temp(temp))
    assert isinstance(staged, Staged)
    staged.wait()
    if node.db.is_sqlite:
        with another_writer(node.db):
            assert node.ingestor.commit_now([staged]) is None
            assert temp.exists()  # nothing consumed
        results = node.ingestor.commit_now([staged])
    else:
        assert node.ingestor.commit_now([staged]) is None
        results = node.ingestor.commit([staged])
    assert results is not None and results[0].outcome is Outcome.STORED
    assert not temp.exists()
    with node.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(instances)).scalar_one() == 1


def test_write_lock_is_reentrant_and_can_refuse_to_wait(tmp_path):
    """Nested write_lock() in one thread takes the lock once; wait=False from
    another thread, or from another process's flock, raises WriteBusy."""
    import fcntl
    import os
    import subprocess
    import sys
    import threading

    from pacsnode.index.db import Database, WriteBusy
    db = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        with db.write_lock():
            with db.write_lock(wait=False):  # re-entrant
                refused: list[bool] = []

                def other() -> None:
                    try:
                        with db.write_lock(wait=False):
                            refused.append(False)
                    except WriteBusy:
                        refused.append(True)

                t = threading.Thread(target=other)
                t.start()
                t.join()
                assert refused == [True]
        with db.write_lock(wait=False):  # free again
            pass
        # Another process's lock (the file lock every writer takes).
        fd = os.open(str(tmp_path / "index.sqlite.writelock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            probe = ("import sys\n"
                     "from pacsnode.index.db import Database, WriteBusy\n"
                     "db = Database(sys.argv[1])\n"
                     "try:\n"
                     "    with db.write_lock(wait=False):\n"
                     "        sys.exit(1)\n"
                     "except WriteBusy:\n"
                     "    sys.exit(0)\n")
            child = subprocess.run([sys.executable, "-c", probe,
                                    f"sqlite:///{tmp_path / 'index.sqlite'}"], timeout=60)
            assert child.returncode == 0
        finally:
            os.close(fd)
    finally:
        db.dispose()
