"""pacsnode anonymize: every row of PS3.15 Table E.1-1 (from the table
module) is applied, UIDs stay consistent, private tags go, pixels stay."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from conftest import require_tool
from pacsnode.cli import main
from pacsnode.tools.anonymize import UIDMap, anonymize_dataset
from pacsnode.tools.deid_profile import RULES, Action, ProfileRule, resolve, rule_for
from pacsnode.tools.textvalues import check_value, values_of

ENV = {**os.environ, "TCP_NODELAY": "1"}

SAMPLE: dict[str, Any] = {
    "AE": "STATION1", "AS": "045Y", "CS": "SECRET", "DA": "19700101", "DS": "1.5",
    "DT": "19700101120000", "IS": "7", "LO": "Secret LO", "LT": "secret text",
    "PN": "Secret^Person", "SH": "SECRET", "ST": "secret st", "TM": "120000",
    "UC": "secret uc", "UR": "http://example.org/secret", "UT": "secret ut",
    "FL": 1.5, "FD": 2.5, "SL": -5, "SS": -5, "UL": 5, "US": 5, "SV": 5, "UV": 5,
    "OB": b"\x01\x02", "OW": b"\x01\x02", "OF": b"\x00\x00\x80?", "OD": b"\x00" * 7 + b"\x01",
    "OL": b"\x01\x00\x00\x00", "OV": b"\x01" + b"\x00" * 7, "UN": b"\x01\x02", "AT": 0x00100010,
}


def pacsnode(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def secret_item(n: int) -> Dataset:
    item = Dataset()
    item.CodeValue = f"C{n}"                 # not in the table: kept
    item.PatientName = "Nested^Secret"        # Z inside any sequence
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.9.{n}"   # U
    return item


def concrete_tags(rule: ProfileRule) -> list[int]:
    if rule.mask.mask == 0xFFFFFFFF:
        return [rule.mask.value]
    if rule.name == "Curve Data":
        return [0x50000005, 0x50003000]
    return [rule.mask.value, rule.mask.value | 0x00020000]  # 6000 and 6002


def rich_dataset() -> tuple[Dataset, dict[int, Any]]:
    """A data set with every attribute of Table E.1-1 set (groups 0000 and
    0002 aside), values valid for their VR, plus private tags and pixels."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    originals: dict[int, Any] = {}
    for rule in RULES:
        for tag in concrete_tags(rule):
            if tag >> 16 in (0x0000, 0x0002):
                continue
            vr = dictionary_VR(tag).split(" or ")[0]
            if vr == "SQ":
                value: Any = Sequence([secret_item(len(originals))])
            elif vr == "UI":
                value = f"1.2.826.0.1.3680043.2.1143.{tag}"
            else:
                value = SAMPLE[vr]
            ds.add_new(tag, vr, value)
            originals[tag] = copy.deepcopy(value)
    ds.Manufacturer = "ACME"                  # not in the table: kept
    ds.BurnedInAnnotation = "YES"
    ds.ReferencedSeriesSequence = Sequence([Dataset()])
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = ds.SeriesInstanceUID
    ds.ReferencedSeriesSequence[0].StudyDate = "19700101"
    block = ds.private_block(0x0009, "ACME 1.1", create=True)
    block.add_new(0x01, "LO", "private secret")
    block11 = ds.private_block(0x0011, "ACME 2.0", create=True)
    block11.add_new(0x01, "LO", "keep me")
    block11.add_new(0x02, "LO", "drop me")
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 2, 8
    ds.PixelData = b"\x01\x02\x03\x04"
    return ds, originals


def empty(value: Any) -> bool:
    return value is None or value == "" or value == b"" or (
        isinstance(value, (list, Sequence)) and len(value) == 0)


def test_table_is_complete_and_resolves() -> None:
    assert len(RULES) > 400
    assert rule_for(0x00100010).action is Action.ZERO            # Patient's Name Z
    assert rule_for(0x00080018).action is Action.UID             # SOP Instance UID U
    assert rule_for(0x00081030).action is Action.REMOVE          # Study Description X
    assert rule_for(0x0040A075).action is Action.DUMMY           # Verifying Observer Name D
    assert rule_for(0x00080023).code == "Z/D"                    # Content Date
    assert rule_for(0x60023000).name == "Overlay Data"
    assert rule_for(0x50101234).name == "Curve Data"
    assert rule_for(0x00090010) is None and rule_for(0x00080060) is None
    assert {resolve(c) for c in ("X/Z", "X/D", "X/Z/D", "X/Z/U*")} == {Action.REMOVE}
    assert resolve("Z/D") is Action.ZERO


def test_every_table_attribute_is_handled_by_its_action() -> None:
    ds, originals = rich_dataset()
    uid_map: dict[str, str] = {}
    pixels = ds.PixelData
    result = anonymize_dataset(ds, uid_map)
    assert result.burned_in_annotation
    checked = 0
    for tag, original in originals.items():
        rule = rule_for(tag)
        assert rule is not None
        action = rule.action
        where = f"{rule.tag_text} {rule.name} ({rule.code})"
        if action is Action.REMOVE:
            assert tag not in ds, where
        elif action is Action.ZERO:
            assert tag in ds and empty(ds[tag].value), where
        elif action is Action.DUMMY:
            elem = ds[tag]
            if elem.VR == "SQ":   # structure kept, content cleaned
                item = elem.value[0]
                assert item.CodeValue.startswith("C") and empty(item.PatientName), where
                assert item.ReferencedSOPInstanceUID == \
                    uid_map[original[0].ReferencedSOPInstanceUID], where
            else:
                assert not empty(elem.value) and elem.value != original, where
                check_value(elem.VR, elem.value, where)
        elif action is Action.UID:
            new = ds[tag].value
            assert new != original and new == uid_map[original], where
            check_value("UI", new, where)
        else:  # pragma: no cover - the basic profile has no other actions
            raise AssertionError(where)
        checked += 1
    assert checked > 400
    # nothing of the originals' text survives anywhere
    text = str(ds)
    for secret in ("Secret LO", "Secret^Person", "secret text", "Nested^Secret", "SECRET",
                   "private secret", "keep me"):
        assert secret not in text, secret
    assert ds.Manufacturer == "ACME" and ds.PixelData == pixels
    assert not any(e.tag.is_private for e in ds)
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert ds.DeidentificationMethod
    # UIDs nested in sequences outside the table are mapped the same way
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
    assert empty(ds.ReferencedSeriesSequence[0].StudyDate)


def test_private_tags_kept_on_request() -> None:
    ds, _ = rich_dataset()
    anonymize_dataset(ds, {}, keep=["(0009,xxxx)", "(0011,1001)", "StudyDescription"])
    assert ds[0x00090010].value == "ACME 1.1" and ds[0x00091001].value == "private secret"
    assert ds[0x00110010].value == "ACME 2.0" and ds[0x00111001].value == "keep me"
    assert 0x00111002 not in ds
    assert ds.StudyDescription == "Secret LO"


def ct_study(folder: Path) -> list[Path]:
    """Three instances of one study, two series."""
    folder.mkdir()
    paths = []
    for n in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.1.{n}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if n == 2:
            ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1143.2"
        path = folder / f"DOE_JOHN_{n}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def run(inputs: list[Path], out: Path, *extra: str) -> tuple[int, str, str]:
    return pacsnode("anonymize", *map(str, inputs), str(out), *extra)


def uids_of(folder: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        rows.append((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                     ds.FrameOfReferenceUID))
    return rows


def test_uids_consistent_within_a_study_and_across_runs(tmp_path: Path) -> None:
    originals = ct_study(tmp_path / "in")
    code, out, err = run([tmp_path / "in"], tmp_path / "out1")
    assert code == 0, err
    assert "anonymized 3 file(s)" in out
    first = uids_of(tmp_path / "out1")
    assert len(first) == 3
    assert len({r[0] for r in first}) == 1                  # one study
    assert len({r[1] for r in first}) == 2                  # two series
    assert len({r[2] for r in first}) == 3                  # three instances
    assert len({r[3] for r in first}) == 1
    source = pydicom.dcmread(originals[0])
    assert first[0][0] != source.StudyInstanceUID
    map_file = tmp_path / "out1" / ".pacsnode-uidmap.json"
    stored = json.loads(map_file.read_text())["uids"]
    assert stored[source.StudyInstanceUID] == first[0][0]

    # a second run with the same map gives the same UIDs (and file names)
    code, _, err = run([tmp_path / "in"], tmp_path / "out2", "--map", str(map_file))
    assert code == 0, err
    assert uids_of(tmp_path / "out2") == first
    # a run with a fresh map does not
    code, _, _ = run([tmp_path / "in"], tmp_path / "out3")
    assert {r[0] for r in uids_of(tmp_path / "out3")}.isdisjoint({first[0][0]})

    # the map reloads as the library type
    assert UIDMap.load(map_file)[source.StudyInstanceUID] == first[0][0]


def test_files_keep_pixels_and_pass_dciodvfy(tmp_path: Path) -> None:
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = tmp_path / "anon.dcm"
    code, stdout, err = run([Path(get_testdata_file("CT_small.dcm"))], out)
    assert code == 0, err
    ds = pydicom.dcmread(out)
    assert ds.PixelData == original.PixelData
    assert ds.PatientName == "" and ds.PatientID == "" and "StudyDescription" not in ds
    assert not any(e.tag.is_private for e in ds.iterall())
    assert (tmp_path / ".pacsnode-uidmap.json").exists()
    exe = require_tool("dciodvfy", "dicom3tools")
    proc = subprocess.run([exe, str(out)], capture_output=True, text=True, env=ENV)
    errors = [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("Error")]
    assert errors == []
    dump = subprocess.run([require_tool("dcmdump", "dcmtk"), str(out)], capture_output=True,
                          env=ENV)
    assert dump.returncode == 0 and b"(0012,0062) CS [YES]" in dump.stdout


def test_burned_in_annotation_is_flagged(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BurnedInAnnotation = "YES"
    flagged = folder / "flagged.dcm"
    ds.save_as(flagged)
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "plain.dcm")
    (folder / "readme.txt").write_text("not an image")
    code, out, err = run([folder], tmp_path / "out")
    assert code == 0, err
    assert str(flagged) in err and "BurnedInAnnotation" in err
    assert "BurnedInAnnotation=YES" in out and str(flagged) in out
    assert "plain.dcm" not in out
    assert "anonymized 2 file(s)" in out and "1 skipped" in out
    written = list((tmp_path / "out").glob("*.dcm"))
    assert len(written) == 2
    assert any(pydicom.dcmread(p).PixelData == ds.PixelData for p in written)


def test_recursive_and_errors(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "a.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "sub" / "b.dcm")
    code, out, _ = run([folder], tmp_path / "flat")
    assert code == 0 and "anonymized 1 file(s)" in out
    code, out, _ = run([folder], tmp_path / "deep", "--recursive")
    assert code == 0 and "anonymized 2 file(s)" in out
    bad = tmp_path / "bad.dcm"
    bad.write_text("nope")
    code, _, err = run([bad, folder / "a.dcm"], tmp_path / "mixed")
    assert code == 1 and str(bad) in err and "not a DICOM file" in err
    code, _, err = pacsnode("anonymize", str(folder))
    assert code == 2 and "IN... OUT" in err


@pytest.mark.parametrize("vr", sorted(SAMPLE))
def test_dummy_values_are_valid_for_their_vr(vr: str) -> None:
    from pacsnode.tools.anonymize import DUMMY_VALUES
    assert not empty(DUMMY_VALUES[vr]) or vr == "AT"
    check_value(vr, DUMMY_VALUES[vr], vr)
    assert values_of(DUMMY_VALUES[vr]) != values_of(SAMPLE[vr])
