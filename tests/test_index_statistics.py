"""The query planner's statistics (a sampled ANALYZE on SQLite): taken when
the index has grown, skipped while another writer holds it, and what makes
a name query go through the name's index instead of scanning every series."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import another_writer
from dicomfiles import make_ct
from pacsnode.config import load_settings
from pacsnode.events import Origin
from pacsnode.index import db as dbmod
from pacsnode.ingest import Outcome
from pacsnode.node import Node

SERIES_BY_NAME = (
    "EXPLAIN QUERY PLAN SELECT series.id FROM series "
    "JOIN studies ON series.study_fk = studies.id "
    "JOIN patients ON studies.patient_fk = patients.id "
    "WHERE patients.patientname_ci >= 'DOE' AND patients.patientname_ci < 'DOF' "
    "ORDER BY series.id")


@pytest.fixture
def node(tmp_path: Path):
    n = Node(load_settings(overrides={"data_dir": tmp_path / "data", "fsync": False},
                           environ={}))
    yield n
    n.close()


def _store(node: Node, tmp_path: Path, first: int, count: int) -> None:
    for n in range(first, first + count):
        path = tmp_path / f"{n}.dcm"
        study = f"1.2.826.0.1.3680043.8.498.{n}"
        # One patient per study, most of them not DOE: the name is selective.
        make_ct(path, patient_id=f"P{n}", patient_name="Doe^John" if n == 0 else f"Roe^{n}",
                study_uid=study, series_uid=f"{study}.1", instance=1, size=8)
        result = node.ingestor.ingest_path(path, Origin(protocol="import"))
        assert result.outcome is Outcome.STORED, result


def _sql(node: Node, text: str) -> list[tuple]:
    raw = node.db.engine.raw_connection()
    try:
        return raw.cursor().execute(text).fetchall()
    finally:
        raw.close()


def _plan(node: Node) -> str:
    return " | ".join(str(r[3]) for r in _sql(node, SERIES_BY_NAME))


def _stat_tables(node: Node) -> set[str]:
    return {r[0] for r in _sql(node, "SELECT tbl FROM sqlite_stat1")}


def test_statistics_are_taken_as_the_index_grows(node, tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, "STATS_MIN_ROWS", 20)
    _store(node, tmp_path, 0, 10)
    assert node.db.refresh_statistics() is False  # below the minimum: nothing to learn
    _store(node, tmp_path, 10, 30)
    assert "SCAN series" in _plan(node)  # no statistics: every series walked
    assert node.db.refresh_statistics() is True
    assert {"instances", "series", "studies", "patients"} <= _stat_tables(node)
    assert "ix_patients_patientname_ci" in _plan(node)
    assert "SCAN series" not in _plan(node)
    # Taken again only once the archive has doubled (40 -> 80 instances).
    _store(node, tmp_path, 40, 20)
    assert node.db.refresh_statistics() is False
    _store(node, tmp_path, 60, 20)
    assert node.db.refresh_statistics() is True


def test_statistics_wait_for_no_writer(node, tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, "STATS_MIN_ROWS", 5)
    _store(node, tmp_path, 0, 10)
    with another_writer(node.db):
        assert node.db.refresh_statistics() is False  # skipped, not waited for
    assert node.db.refresh_statistics() is True
