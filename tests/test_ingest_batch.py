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

    def flaky(self, cur, item):
        if item.temp == temps[3] and failing["left"]:
            failing["left"] -= 1
            raise RuntimeError("the database went away for a moment")
        return write_one(self, cur, item)

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
