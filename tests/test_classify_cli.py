"""``pacsnode classify`` on a folder and a zip of files written with pydicom
from the labelled series: one line (or JSON object) per series with the
labelled classes; non-DICOM files skipped and counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from classify_data import instance_datasets, labelled_series

EXE = str(Path(sys.executable).parent / "pacsnode")
ENV = {**os.environ, "COLUMNS": "200"}
DTS_RULES = Path(__file__).parent / "data" / "dts_classifyRules.json"

#: labelled series small enough to write as files, one of each kind
PICKED = ["sie-loc-1", "sie-t1-tse-1", "ge-dwi-1", "sie-fmap-pha-1", "ge-ct-scout-1",
          "sie-ct-head-1", "sc-mf-gray-1", "ph-survey-1"]


def pacsnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=ENV, timeout=120)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """A folder with the picked series (one of them implicit VR, in a
    sub-folder), a text file and an empty file; series UID → labelled entry."""
    folder = tmp_path_factory.mktemp("classify") / "in"
    entries = {e["id"]: e for e in labelled_series()}
    study = generate_uid()
    expected = {}
    for name in PICKED:
        entry = entries[name]
        uid = generate_uid()
        expected[uid] = entry
        target = folder / name
        target.mkdir(parents=True)
        syntax = ImplicitVRLittleEndian if name == "ge-dwi-1" else None
        for i, ds in enumerate(instance_datasets(entry, study, uid,
                                                 *([syntax] if syntax else []))):
            ds.SeriesNumber = PICKED.index(name) + 1
            ds.save_as(target / f"{i:04d}.dcm", enforce_file_format=True)
    (folder / "notes.txt").write_text("not DICOM at all\n")
    (folder / "empty.dcm").write_bytes(b"")
    return folder, expected


def test_folder_one_line_per_series(written: tuple[Path, dict[str, dict]]) -> None:
    folder, expected = written
    proc = pacsnode("classify", str(folder))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(PICKED)
    got = {}
    for line in lines:
        uid, classes, description = line.split("\t")
        got[uid] = (sorted(classes.split(",")) if classes else [], description)
    assert got == {uid: (e["classes"], e["header"].get("SeriesDescription", ""))
                   for uid, e in expected.items()}
    # in SeriesNumber order
    assert [line.split("\t")[2] for line in lines] == \
        [expected[u]["header"]["SeriesDescription"] for u in
         sorted(expected, key=lambda u: PICKED.index(expected[u]["id"]))]
    assert "skipped 2 file(s) that are not DICOM" in proc.stderr
    assert "notes.txt" in proc.stderr or "empty.dcm" in proc.stderr


def test_zip_as_json(written: tuple[Path, dict[str, dict]], tmp_path: Path) -> None:
    folder, expected = written
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
        zf.writestr("DICOMDIR-notes/readme.txt", "hello")
    proc = pacsnode("classify", str(archive), "--json")
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert {item["SeriesInstanceUID"] for item in body} == set(expected)
    for item in body:
        entry = expected[item["SeriesInstanceUID"]]
        assert set(item) == {"SeriesInstanceUID", "classes", "SeriesDescription", "instances"}
        assert sorted(item["classes"]) == entry["classes"]
        assert item["instances"] == entry["instances"]
        assert item["SeriesDescription"] == entry["header"]["SeriesDescription"]
    assert "skipped 3 file(s) that are not DICOM" in proc.stderr
    assert "study.zip!" in proc.stderr


def test_rules_file_adds_classes(written: tuple[Path, dict[str, dict]]) -> None:
    folder, expected = written
    proc = pacsnode("classify", str(folder / "ge-dwi-1"), str(folder / "sie-t1-tse-1"),
                    "--rules", str(DTS_RULES), "--json")
    assert proc.returncode == 0, proc.stderr
    by_description = {item["SeriesDescription"]: item["classes"]
                      for item in json.loads(proc.stdout)}
    assert by_description == {
        "Ax DWI b1000": ["DWI", "GE", "original", "axial-acquisition"],
        "t1_tse_tra": ["T1", "SIEMENS", "original", "Coil Error"],  # tilted: not axial-acquisition
    }


def test_bad_input_is_reported_in_plain_words(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    proc = pacsnode("classify", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "skipped 1 file(s) that are not DICOM" in proc.stderr
    assert "no DICOM series found" in proc.stderr
    assert "Traceback" not in proc.stderr

    rules = tmp_path / "rules.json"
    rules.write_text('[{"type": "x", "id": "X", "rules": [{"rule": "X"}]}]')
    proc = pacsnode("classify", str(tmp_path), "--rules", str(rules))
    assert proc.returncode == 2
    assert f"pacsnode classify: {rules}: rules refer to each other in a cycle: X -> X" in \
        proc.stderr
    assert "Traceback" not in proc.stderr

    proc = pacsnode("classify", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
