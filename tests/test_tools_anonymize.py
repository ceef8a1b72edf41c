"""pacsnode anonymize: every row of PS3.15 Table E.1-1 (from the table
module) is applied, UIDs stay consistent, private tags go, pixels stay;
patients keep apart under keyed pseudonyms, the same key repeats a run, the
map from new to original identifiers never lands in the output, and
duplicate inputs are counted as such."""

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
from pacsnode.tools.anonymize import Pseudonymizer, UIDMap, anonymize_dataset
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
    pseudonyms = Pseudonymizer("test key")
    pixels = ds.PixelData
    result = anonymize_dataset(ds, pseudonyms)
    uid_map = {original: new for new, original in pseudonyms.uids.items()}
    assert result.burned_in_annotation
    checked = 0
    for tag, original in originals.items():
        rule = rule_for(tag)
        assert rule is not None
        action = rule.action
        where = f"{rule.tag_text} {rule.name} ({rule.code})"
        if tag in (0x00100010, 0x00100020):  # Z in the table; a pseudonym instead
            assert ds[tag].value != original and str(ds[tag].value).startswith("ANON"), where
        elif action is Action.REMOVE:
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
    anonymize_dataset(ds, keep=["(0009,xxxx)", "(0011,1001)", "StudyDescription",
                                "PatientID"])
    assert ds[0x00090010].value == "ACME 1.1" and ds[0x00091001].value == "private secret"
    assert ds[0x00110010].value == "ACME 2.0" and ds[0x00111001].value == "keep me"
    assert 0x00111002 not in ds
    assert ds.StudyDescription == "Secret LO"
    assert ds.PatientID == SAMPLE["LO"]                      # kept: no pseudonym
    assert ds.PatientName.family_name == "ANON"              # not kept: pseudonym


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
    code, out, err = run([tmp_path / "in"], tmp_path / "out1", "--key", "k1")
    assert code == 0, err
    assert "wrote 3 file(s)" in out and "from 3 input(s)" in out
    assert "random" not in err
    first = uids_of(tmp_path / "out1")
    assert len(first) == 3
    assert len({r[0] for r in first}) == 1                  # one study
    assert len({r[1] for r in first}) == 2                  # two series
    assert len({r[2] for r in first}) == 3                  # three instances
    assert len({r[3] for r in first}) == 1
    source = pydicom.dcmread(originals[0])
    assert first[0][0] != source.StudyInstanceUID
    assert all(uid.startswith("2.25.") for row in first for uid in row)

    # the same key gives the same UIDs (and file names) ...
    code, _, err = run([tmp_path / "in"], tmp_path / "out2", "--key", "k1")
    assert code == 0, err
    assert uids_of(tmp_path / "out2") == first
    # ... another key or no key does not
    code, _, _ = run([tmp_path / "in"], tmp_path / "out3", "--key", "k2")
    assert {r[0] for r in uids_of(tmp_path / "out3")}.isdisjoint({first[0][0]})
    code, _, _ = run([tmp_path / "in"], tmp_path / "out4")
    assert {r[0] for r in uids_of(tmp_path / "out4")}.isdisjoint({first[0][0]})


def test_files_keep_pixels_and_pass_dciodvfy(tmp_path: Path) -> None:
    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = tmp_path / "anon.dcm"
    code, stdout, err = run([Path(get_testdata_file("CT_small.dcm"))], out)
    assert code == 0, err
    ds = pydicom.dcmread(out)
    assert ds.PixelData == original.PixelData
    assert ds.PatientID.startswith("ANON-") and ds.PatientID != original.PatientID
    assert ds.PatientName == "ANON^" + ds.PatientID[5:]
    assert "StudyDescription" not in ds
    assert not any(e.tag.is_private for e in ds.iterall())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anon.dcm"]   # no map beside it
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
    assert "wrote 2 file(s)" in out and "from 3 input(s)" in out and "1 skipped" in out
    written = list((tmp_path / "out").glob("*.dcm"))
    assert len(written) == 2
    assert any(pydicom.dcmread(p).PixelData == ds.PixelData for p in written)


def test_recursive_and_errors(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "a.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "sub" / "b.dcm")
    code, out, _ = run([folder], tmp_path / "flat")
    assert code == 0 and "wrote 1 file(s)" in out
    code, out, _ = run([folder], tmp_path / "deep", "--recursive")
    assert code == 0 and "wrote 2 file(s)" in out
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


# -- pseudonyms, keys, the private map, duplicates (DESIGN §7) ---------------

def two_patients(folder: Path) -> dict[str, list[Path]]:
    """Two instances of patient P-ONE, one of P-TWO (and a name only one)."""
    folder.mkdir()
    files: dict[str, list[Path]] = {}
    for n, (pid, name, study) in enumerate([("P-ONE", "Doe^John", 1),
                                            ("P-ONE", "Doe^John", 1),
                                            ("P-TWO", "Roe^Jane", 2)]):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName = pid, name
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.2.1143.7.{study}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.2.1143.8.{n}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{n}.dcm"
        ds.save_as(path)
        files.setdefault(pid, []).append(path)
    return files


def patients_of(folder: Path) -> dict[str, tuple[str, str]]:
    """SOPInstanceUID → (PatientID, PatientName) of the written files."""
    out = {}
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = (str(ds.PatientID), str(ds.PatientName))
    return out


def test_patients_get_distinct_keyed_pseudonyms(tmp_path: Path) -> None:
    two_patients(tmp_path / "in")
    code, _, err = run([tmp_path / "in"], tmp_path / "a", "--key", "secret")
    assert code == 0, err
    pseudonyms = set(patients_of(tmp_path / "a").values())
    assert len(pseudonyms) == 2                                   # two patients, not one blank
    for pid, name in pseudonyms:
        assert pid.startswith("ANON-") and len(pid) == 5 + 12
        assert name == "ANON^" + pid[5:]
        assert "P-ONE" not in pid + name and "Doe" not in name
    # one patient, one study: the two instances of P-ONE agree
    studies = {}
    for path in (tmp_path / "a").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        studies.setdefault(ds.PatientID, set()).add(ds.StudyInstanceUID)
    assert sorted(len(v) for v in studies.values()) == [1, 1]

    # the same key again: identical pseudonyms, UIDs and bytes
    code, _, err = run([tmp_path / "in"], tmp_path / "b", "--key", "secret")
    assert code == 0, err
    assert patients_of(tmp_path / "b") == patients_of(tmp_path / "a")
    for path in (tmp_path / "a").glob("*.dcm"):
        assert (tmp_path / "b" / path.name).read_bytes() == path.read_bytes()
    # the key from a file is the same key
    key_file = tmp_path / "key.txt"
    key_file.write_text("secret\n")
    code, _, err = run([tmp_path / "in"], tmp_path / "c", "--key-file", str(key_file))
    assert code == 0, err
    assert patients_of(tmp_path / "c") == patients_of(tmp_path / "a")
    # another key: other pseudonyms
    code, _, _ = run([tmp_path / "in"], tmp_path / "d", "--key", "other")
    assert set(patients_of(tmp_path / "d").values()).isdisjoint(pseudonyms)
    code, _, err = run([tmp_path / "in"], tmp_path / "e", "--key", "x", "--key-file",
                       str(key_file))
    assert code == 2 and "not both" in err


def test_without_a_key_pseudonyms_are_random_and_said_so(tmp_path: Path) -> None:
    two_patients(tmp_path / "in")
    code, out, err = run([tmp_path / "in"], tmp_path / "a")
    assert code == 0, err
    assert "no --key given" in err and "random for this run" in err and "--key" in err
    code, _, _ = run([tmp_path / "in"], tmp_path / "b")
    assert set(patients_of(tmp_path / "a").values()).isdisjoint(
        patients_of(tmp_path / "b").values())
    assert len(set(patients_of(tmp_path / "a").values())) == 2   # still apart within a run


def every_file(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_no_map_anywhere_unless_asked_and_then_private(tmp_path: Path) -> None:
    files = two_patients(tmp_path / "in")
    before = every_file(tmp_path / "in")
    code, out, err = run([tmp_path / "in"], tmp_path / "out", "--key", "k")
    assert code == 0, err
    written = every_file(tmp_path / "out")
    assert len(written) == 3 and all(name.endswith(".dcm") for name in written)
    assert every_file(tmp_path / "in") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert "UID map" not in out

    private = tmp_path / "private" / "map.json"
    code, out, err = run([tmp_path / "in"], tmp_path / "out2", "--key", "k",
                         "--uid-map", str(private))
    assert code == 0, err
    assert f"UID map: {private}" in out and "2 patient(s)" in out
    assert (private.stat().st_mode & 0o777) == 0o600
    assert every_file(tmp_path / "out2") == written               # same key, same names
    body = json.loads(private.read_text())
    assert body["format"] == "pacsnode-uidmap" and body["version"] == 2
    originals = {str(o.SOPInstanceUID): o for o in
                 (pydicom.dcmread(p) for ps in files.values() for p in ps)}
    for path in (tmp_path / "out2").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        original = originals[body["uids"][str(ds.SOPInstanceUID)]]     # new → original
        assert body["uids"][str(ds.StudyInstanceUID)] == original.StudyInstanceUID
        assert body["uids"][str(ds.SeriesInstanceUID)] == original.SeriesInstanceUID
        assert body["patients"][str(ds.PatientID)] == original.PatientID
    assert sorted(body["patients"].values()) == ["P-ONE", "P-TWO"]
    assert UIDMap.load(private).patients == body["patients"]

    # a second run into the same map keeps what is there, still 0600
    private.chmod(0o644)
    (tmp_path / "single").mkdir()
    code, _, err = run([files["P-ONE"][0]], tmp_path / "single" / "one.dcm", "--key", "other",
                       "--uid-map", str(private))
    assert code == 0, err
    assert (private.stat().st_mode & 0o777) == 0o600
    merged = json.loads(private.read_text())
    assert set(body["uids"]) < set(merged["uids"]) and len(merged["patients"]) == 3


def test_uid_map_inside_the_output_is_refused(tmp_path: Path) -> None:
    files = two_patients(tmp_path / "in")
    cases = [
        ([tmp_path / "in"], tmp_path / "out", tmp_path / "out" / "map.json"),
        ([tmp_path / "in"], tmp_path / "out", tmp_path / "out" / "sub" / "map.json"),
        ([files["P-TWO"][0]], tmp_path / "single" / "anon.dcm",
         tmp_path / "single" / "map.json"),                  # beside a single output file
    ]
    (tmp_path / "single").mkdir()
    link = tmp_path / "innocent"
    link.symlink_to(tmp_path / "out")                        # a symlink into the output
    cases.append(([tmp_path / "in"], tmp_path / "out", link / "map.json"))
    for inputs, out, map_path in cases:
        code, stdout, err = run(inputs, out, "--key", "k", "--uid-map", str(map_path))
        assert code == 1, (map_path, stdout, err)
        assert "inside the output folder" in err and str(map_path) in err
        assert not map_path.exists()
        assert not out.exists(), out                         # nothing written
    assert every_file(tmp_path / "single") == []


def test_duplicates_are_counted_honestly(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    paths = ct_study(folder)                                 # three instances
    shutil.copy(paths[0], folder / "copy_of_0.dcm")          # same SOP UID, same data set
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    mr.save_as(folder / "mr.dcm")                            # a fifth, distinct
    code, out, err = run([folder], tmp_path / "out", "--key", "k")
    assert code == 0, err
    assert "wrote 4 file(s)" in out and "from 5 input(s)" in out
    assert "1 duplicate(s) of an earlier input skipped" in out
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 4

    # the same SOP UID with other data: not written, said so, exit status 1
    other = pydicom.dcmread(paths[1])
    other.StudyDescription = "a different data set"
    other.save_as(folder / "zz_changed_1.dcm")
    code, out, err = run([folder], tmp_path / "out2", "--key", "k")
    assert code == 1
    assert "wrote 4 file(s)" in out and "from 6 input(s)" in out
    assert "1 not written: same SOPInstanceUID as an earlier input but a different data set" \
        in out
    assert "zz_changed_1.dcm" in err and "different data set" in err
    assert len(list((tmp_path / "out2").glob("*.dcm"))) == 4


def test_the_same_file_meta_aside_is_a_duplicate(tmp_path: Path) -> None:
    """Identity is the data set (§7): another sender's file meta does not
    make a different instance."""
    folder = tmp_path / "in"
    folder.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(folder / "a.dcm")
    ds.file_meta.ImplementationClassUID = "1.2.3.4"
    ds.file_meta.ImplementationVersionName = "OTHER"
    ds.save_as(folder / "b.dcm")
    assert (folder / "a.dcm").read_bytes() != (folder / "b.dcm").read_bytes()
    code, out, err = run([folder], tmp_path / "out", "--key", "k")
    assert code == 0, err
    assert "wrote 1 file(s)" in out and "1 duplicate(s)" in out


def test_library_pseudonymizer_is_consistent_across_a_study() -> None:
    """Routes anonymize instance by instance: one key, one patient, one study."""
    a = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    b = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    b.SOPInstanceUID = "1.2.826.0.1.3680043.2.1143.99"
    original_study = a.StudyInstanceUID
    anonymize_dataset(a, Pseudonymizer(b"route key"))
    anonymize_dataset(b, Pseudonymizer(b"route key"))          # another object, same key
    assert (a.PatientID, a.PatientName, a.StudyInstanceUID) == \
        (b.PatientID, b.PatientName, b.StudyInstanceUID)
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.StudyInstanceUID != original_study
    # the older call form (a plain dict, as the REST export uses) still holds
    legacy: dict[str, str] = {}
    c = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    d = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    anonymize_dataset(c, legacy)
    anonymize_dataset(d, legacy)
    assert c.StudyInstanceUID == d.StudyInstanceUID == legacy[original_study]
    assert c.PatientID == d.PatientID and c.PatientID.startswith("ANON-")
    with pytest.raises(Exception, match="empty"):
        Pseudonymizer("")
