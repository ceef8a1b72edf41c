"""Series classes in the index, the REST routes that show them, the study
summary, `pacsnode reclassify` and the `{classes}` placeholder — against a
real `pacsnode serve` fed by DCMTK storescu, and in-process where only the
index matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import delete, select

from classify_data import instance_datasets, labelled_series
from conftest import dcmtk
from pacsnode.classes import classify_stored_series, find_series, reclassify_all
from pacsnode.classify import load_rules
from pacsnode.config import load_settings
from pacsnode.events import Origin
from pacsnode.index.classes_tables import series_classes, series_classification
from pacsnode.index.db import Database
from pacsnode.index.migrations import migrations_table
from pacsnode.node import Node
from test_automation_stable import recording_script, runs, wait_until, write_config

#: Labelled series (tests/data/classify_series.json) small enough to send quickly.
PICKS = {"sie-t1-se-1": ["T1"], "sie-t2-tse-2": ["T2"], "ge-flair-1": ["FLAIR"],
         "sie-loc-1": ["localizer"]}


def write_series(folder: Path, study_uid: str, picks: dict[str, list[str]] = PICKS,
                 patient_id: str = "CLASSIFY") -> dict[str, tuple[str, list[Path]]]:
    """Files of the picked labelled series in one study: id → (series UID, files)."""
    entries = {e["id"]: e for e in labelled_series()}
    out: dict[str, tuple[str, list[Path]]] = {}
    for number, entry_id in enumerate(picks, 1):
        entry = entries[entry_id]
        assert entry["classes"] == picks[entry_id], entry_id
        series_uid = generate_uid()
        files = []
        for i, ds in enumerate(instance_datasets(entry, study_uid, series_uid)):
            ds.SeriesNumber = number
            ds.PatientID = patient_id
            path = folder / entry_id / f"{i:03d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        out[entry_id] = (series_uid, files)
    return out


def storescu(port: int, aet: str, files: list[Path]) -> None:
    result = subprocess.run([dcmtk("storescu"), "-aet", "MODALITY1", "-aec", aet,
                             "127.0.0.1", str(port), *map(str, files)],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TCP_NODELAY="1"))
    assert result.returncode == 0, result.stderr


def pacsnode(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsnode", *args], capture_output=True,
                          text=True, timeout=120, **kw)


@pytest.fixture
def node(tmp_path: Path) -> Any:
    n = Node(load_settings(overrides={"data_dir": tmp_path / "data", "fsync": False},
                           environ={}))
    yield n
    n.close()


def ingest(node: Node, files: list[Path]) -> None:
    for path in files:
        assert node.ingestor.ingest_path(path, Origin("import", address=str(path))).outcome.ok


# -- in-process: the index ------------------------------------------------------

def test_classes_are_stored_found_case_insensitively_and_replaced(node, tmp_path) -> None:
    study = generate_uid()
    made = write_series(tmp_path / "in", study)
    for _uid, files in made.values():
        ingest(node, files)
    rules = load_rules(None)
    for entry_id, (uid, _files) in made.items():
        assert classify_stored_series(node.db, uid, rules) == PICKS[entry_id]
    t1 = made["sie-t1-se-1"][0]
    for spelling in ("T1", "t1"):
        hits = find_series(node.db, class_name=spelling)
        assert [(h.series_uid, h.classes, h.study_uid) for h in hits] == [(t1, ["T1"], study)]
    assert [h.series_uid for h in find_series(node.db, study_uid=study)] == \
        [uid for uid, _ in made.values()]  # SeriesNumber order
    assert find_series(node.db, class_name="T1", patient_id="SOMEONE-ELSE") == []
    assert find_series(node.db, class_name="DWI") == []
    # Classifying again replaces the rows (no duplicate class rows).
    assert classify_stored_series(node.db, t1, rules) == ["T1"]
    with node.db.read() as conn:
        assert conn.execute(select(series_classes.c.name)
                            .where(series_classes.c.series_uid == t1)).scalars().all() == ["T1"]
    # A series the archive does not hold is no series: None, and no rows.
    assert classify_stored_series(node.db, generate_uid(), rules) is None


def test_reclassify_applies_a_sites_rules_and_the_migration_fills_an_old_index(
        node, tmp_path) -> None:
    made = write_series(tmp_path / "in", generate_uid(), {"sie-t1-se-1": ["T1"]})
    ingest(node, made["sie-t1-se-1"][1])
    uid = made["sie-t1-se-1"][0]
    rule_file = tmp_path / "classifyRules.json"
    rule_file.write_text(json.dumps([{
        "type": "sagittal-T1", "id": "sagT1", "description": "a site's own class",
        "rules": [{"rule": "T1"}, {"tag": ["SeriesDescription"], "value": "sag"}]}]))
    counts = reclassify_all(node.db, load_rules(rule_file))
    assert counts == {"": 1, "T1": 1, "sagittal-T1": 1}
    assert [h.series_uid for h in find_series(node.db, class_name="SAGITTAL-t1")] == [uid]
    # An index from before classes: no rows, migration not recorded.
    with node.db.write() as conn:
        conn.execute(delete(series_classes))
        conn.execute(delete(series_classification))
        conn.execute(delete(migrations_table).where(migrations_table.c.name == "classify-series"))
    db = Database(node.settings.index_url)
    try:
        hits = find_series(db, class_name="T1")
        assert [h.series_uid for h in hits] == [uid]  # built-in rules only
        assert find_series(db, class_name="sagittal-T1") == []
    finally:
        db.dispose()


# -- a real serve ------------------------------------------------------------------

def test_stable_series_are_classified_summarised_and_shown(tmp_path: Path,
                                                           pacsnode_factory) -> None:
    script, log = recording_script(tmp_path)
    config = write_config(tmp_path, stable_series_seconds=1, stable_study_seconds=2,
                          write_summaries="true",
                          on_stable_series=f"{script} {{series_uid}} {{classes}}")
    server = pacsnode_factory(config=config)
    study = generate_uid()
    made = write_series(tmp_path / "in", study)
    storescu(server.dicom_port, server.aet, [f for _, files in made.values() for f in files])
    summary_file = server.data_dir / "studies" / study / "summary.json"
    wait_until(lambda: len(runs(log)) == len(made) and summary_file.exists(), 60,
               "every series classified and the study summarised")
    # {classes}: the command of each stable series got its classes.
    by_series = {r[2]: r[3] for r in runs(log)}
    for entry_id, (uid, _files) in made.items():
        assert by_series[uid] == ",".join(PICKS[entry_id])
    api = server.base_url + "/api/v1"
    t1 = made["sie-t1-se-1"][0]
    r = httpx.get(f"{api}/series/{t1}/classification")
    assert r.status_code == 200 and r.json() == {"series_uid": t1, "classes": ["T1"]}
    r = httpx.get(f"{api}/series", params={"class": "flair", "StudyInstanceUID": study})
    assert r.status_code == 200
    assert r.json() == {"results": [{
        "StudyInstanceUID": study, "SeriesInstanceUID": made["ge-flair-1"][0],
        "SeriesDescription": "AX T2 FLAIR", "Modality": "MR", "classes": ["FLAIR"]}]}
    r = httpx.get(f"{api}/series", params={"class": "T1", "PatientID": "CLASSIFY"})
    assert [h["SeriesInstanceUID"] for h in r.json()["results"]] == [t1]
    summary = httpx.get(f"{api}/studies/{study}/summary").json()
    assert summary["StudyInstanceUID"] == study and summary["PatientID"] == "CLASSIFY"
    assert summary["PatientName"] == "Classify^Test"
    assert [(s["SeriesInstanceUID"], s["SeriesNumber"], s["classes"], s["instances"])
            for s in summary["series"]] == [
        (uid, n, PICKS[entry_id], len(files))
        for n, (entry_id, (uid, files)) in enumerate(made.items(), 1)]
    wait_until(lambda: json.loads(summary_file.read_text()) == summary, 30,
               "summary.json to equal the API's summary")
    # Bad requests: plain reasons, the node keeps serving.
    r = httpx.get(f"{api}/series/not-a-uid/classification")
    assert r.status_code == 400 and "not a valid UID" in r.json()["error"]
    r = httpx.get(f"{api}/series/{generate_uid()}/classification")
    assert r.status_code == 404 and "not in the archive" in r.json()["error"]
    r = httpx.get(f"{api}/studies/{generate_uid()}/summary")
    assert r.status_code == 404
    r = httpx.get(f"{api}/series", params={"StudyInstanceUID": "1.2.x"})
    assert r.status_code == 400
    # Deleting the study takes its summary.json (and so its folder) along.
    r = httpx.delete(f"{server.base_url}/dicomweb/studies/{study}", timeout=60)
    assert r.status_code in (200, 202, 204), r.text
    wait_until(lambda: not summary_file.parent.exists(), 30, "the study folder to go")


def test_reclassify_command_and_a_bad_rule_file_refused_at_start(tmp_path: Path,
                                                                  pacsnode_factory) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "X", "rules": [{"tag": ["SeriesDescription"], "value": "("}]}]')
    config = write_config(tmp_path, classification_rules=str(bad))
    with pytest.raises(RuntimeError) as failed:
        pacsnode_factory(config=config)
    assert "classification_rules" in str(failed.value) and "bad.json" in str(failed.value)
    assert "Traceback" not in str(failed.value)
    # reclassify, with a good file, over an archive filled by import.
    data = tmp_path / "archive"
    made = write_series(tmp_path / "in", generate_uid(), {"sie-t1-se-1": ["T1"],
                                                          "sie-t2-tse-2": ["T2"]})
    imported = pacsnode("import", "--data-dir", str(data), "--no-fsync",
                        *(str(f) for _, files in made.values() for f in files))
    assert imported.returncode == 0, imported.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"type": "coronal", "id": "cor", "rules": [
        {"tag": ["SeriesDescription"], "value": "cor"}]}]))
    result = pacsnode("reclassify", "--data-dir", str(data), "--classification-rules",
                      str(good))
    assert result.returncode == 0, result.stderr
    assert "classified 2 series" in result.stdout
    lines = dict(line.strip().split("\t") for line in result.stdout.splitlines()[1:])
    assert lines == {"T1": "1", "T2": "1", "coronal": "1"}
    result = pacsnode("reclassify", "--data-dir", str(data), "--classification-rules", str(bad))
    assert result.returncode != 0 and "bad.json" in result.stderr
    assert "Traceback" not in result.stderr
