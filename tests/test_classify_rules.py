"""The rule engine: data-transfer-station's classifyRules.json format read
as it is, the operators on multi-valued attributes, references, errors,
how a rule file overrides the built-ins, and the facts of a series."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from pacsnode.classify import (RuleError, class_matches, classify_series, load_rules,
                               parse_rules, series_facts)
from pacsnode.classify.facts import orientation_of
from pacsnode.classify.rules import RuleSet
from pacsnode.dicom.header import header_json_dict

DTS_RULES = Path(__file__).parent / "data" / "dts_classifyRules.json"
MR = "1.2.840.10008.5.1.4.1.1.4"


def header(**attributes: Any) -> dict[str, Any]:
    """DICOM JSON of a header given by keyword; private elements as
    tag_XXXXXXXX=(VR, value)."""
    ds = Dataset()
    for key, value in attributes.items():
        if key.startswith("tag_"):
            vr, raw = value
            ds.add_new(int(key[4:], 16), vr, raw)
        else:
            setattr(ds, key, value)
    return header_json_dict(ds, has_pixel_data=True)


def rules_from(entries: list[dict[str, Any]], builtins: bool = False) -> RuleSet:
    parsed = parse_rules(entries, "test rules")
    return RuleSet(parsed) if not builtins else load_rules()


def classes(h: dict[str, Any], rules: RuleSet, *more: dict[str, Any]) -> list[str]:
    return classify_series(h, series_facts([h, *more]), rules)


# ------------------------------------------------ data-transfer-station's format

SIEMENS_T1 = dict(Modality="MR", SOPClassUID=MR, Manufacturer="SIEMENS",
                  ImageType=["ORIGINAL", "PRIMARY", "M", "ND"], Rows=256, Columns=256,
                  SequenceName="*tfl3d1_16ns", ScanningSequence=["GR", "IR"],
                  SequenceVariant=["SK", "SP", "MP"], ScanOptions="IR", MRAcquisitionType="3D",
                  RepetitionTime=2300, EchoTime=2.98, InversionTime=900, FlipAngle=9,
                  SeriesDescription="t1_mprage_sag_p2_iso",
                  ImageOrientationPatient=[0, 1, 0, 0, 0, -1],
                  tag_00510010=("LO", "SIEMENS MR HEADER"), tag_0051100F=("LO", "HEA;HEP"))


def test_dts_rule_file_loaded_as_it_is_and_applied() -> None:
    rules = load_rules(DTS_RULES)
    t1 = header(**SIEMENS_T1)
    assert classes(t1, rules) == ["T1", "SIEMENS", "original", "STUDY-T1"]

    norm = header(**{**SIEMENS_T1, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]})
    assert classes(norm, rules) == ["T1", "SIEMENS", "original", "STUDY-T1-NORM"]

    # the coil element without the head coil: "Coil Error" (negated contains)
    no_coil = header(**{**SIEMENS_T1, "tag_0051100F": ("LO", "BO1;BO2")})
    assert "Coil Error" in classes(no_coil, rules)

    bold = header(Modality="MR", SOPClassUID=MR, Manufacturer="SIEMENS",
                  ImageType=["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"],
                  SequenceName="*epfid2d1_90", ScanningSequence="EP", SequenceVariant="SK",
                  RepetitionTime=800, EchoTime=30, AcquisitionMatrix=[90, 0, 0, 90],
                  SeriesDescription="rfMRI_REST_AP", ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                  ImagePositionPatient=[0, 0, 0])
    volumes = [header(**{"ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
                         "ImagePositionPatient": [0, 0, 0]})] * 59
    got = classify_series(bold, series_facts([bold, *volumes]), rules)
    assert got == ["BOLD", "SIEMENS", "original", "mosaic", "STUDY-rsfMRI",
                   "axial-acquisition", "Coil Error"]
    # the same run as QA: the negated description test keeps it out
    qa = header(**{**{k: v for k, v in SIEMENS_T1.items() if k.startswith("tag_")},
                   "Modality": "MR", "Manufacturer": "SIEMENS",
                   "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"],
                   "RepetitionTime": 800, "EchoTime": 30, "AcquisitionMatrix": [90, 0, 0, 90],
                   "SeriesDescription": "rfMRI_QA"})
    assert "STUDY-rsfMRI" not in classes(qa, rules)
    assert "mosaic" in classes(qa, rules)

    # two entries with one id are alternatives; private tags as ["0x19","0x109c"]
    ge = dict(Modality="MR", SOPClassUID=MR, Manufacturer="GE MEDICAL SYSTEMS",
              ImageType=["ORIGINAL", "PRIMARY", "OTHER"],
              tag_00190010=("LO", "GEMS_ACQU_01"),
              tag_0019109C=("LO", "research/ABCD/muxepi2"))
    assert "STUDY-DTI" in classes(header(**ge, ImagesInAcquisition=8424), rules)
    assert "STUDY-DTI" in classes(header(**ge, ImagesInAcquisition=2916), rules)
    assert "STUDY-DTI" not in classes(header(**ge, ImagesInAcquisition=81), rules)

    # approx: ImageOrientationPatient within 0.01 of axial, element by element
    tilted = header(**{**SIEMENS_T1, "ImageOrientationPatient": [1, 0, 0, 0, 0.995, -0.0998]})
    assert "axial-acquisition" not in classes(tilted, rules)
    nearly = header(**{**SIEMENS_T1, "ImageOrientationPatient": [1, 0, 0, 0, 0.99995, -0.005]})
    assert "axial-acquisition" in classes(nearly, rules)


def test_dts_rule_file_keeps_the_builtin_classes_it_does_not_name() -> None:
    rules = load_rules(DTS_RULES)
    assert rules.classes[:14] == ["T1", "T2", "FLAIR", "PD", "DWI", "ADC", "DTI", "SWI", "BOLD",
                                  "fieldmap", "localizer", "axial", "derived",
                                  "secondary-capture"]
    assert "STUDY-T1" in rules.classes and "Coil Error" in rules.classes


# ------------------------------------------------ operators and multi-valued attributes

def one(test: dict[str, Any]) -> RuleSet:
    return rules_from([{"type": "hit", "rules": [test]}])


def hit(test: dict[str, Any], h: dict[str, Any]) -> bool:
    return classes(h, one(test)) == ["hit"]


def test_regex_searches_the_backslash_joined_values() -> None:
    se_ir = header(ScanningSequence=["SE", "IR"], AcquisitionMatrix=[0, 256, 256, 0])
    assert hit({"tag": ["ScanningSequence"], "value": "SE"}, se_ir)
    assert hit({"tag": ["ScanningSequence"], "value": r"^SE\\IR$"}, se_ir)
    assert not hit({"tag": ["ScanningSequence"], "value": "^SE$"}, se_ir)
    assert hit({"tag": ["ScanningSequence"], "value": "^SE$"}, header(ScanningSequence="SE"))
    assert hit({"tag": ["ScanningSequence"], "value": r"(^|\\)IR(\\|$)"}, se_ir)
    # data-transfer-station wrote multi-valued numbers joined with ", "
    assert hit({"tag": ["AcquisitionMatrix"], "value": "0, 256, 256, 0"}, se_ir)
    # numbers are matched as DICOM writes them
    assert hit({"tag": ["0x0018", "0x0080"], "value": "^2300$"}, header(RepetitionTime=2300))
    assert hit({"tag": ["EchoTime"], "value": r"^2\.98$"}, header(EchoTime="2.98"))


def test_contains_looks_inside_each_value() -> None:
    image_type = header(ImageType=["ORIGINAL", "PRIMARY", "M", "DIS2D", "MOSAIC"])
    assert hit({"tag": ["ImageType"], "operator": "contains", "value": "MOSAIC"}, image_type)
    assert hit({"tag": ["ImageType"], "operator": "contains", "value": "DIS"}, image_type)
    assert not hit({"tag": ["ImageType"], "operator": "contains", "value": "NORM"}, image_type)
    assert hit({"tag": ["ImageType"], "operator": "contains", "value": "NORM",
                "negate": "yes"}, image_type)
    # a value of several words, and the values never run into each other
    assert not hit({"tag": ["ImageType"], "operator": "contains", "value": "M\\DIS"},
                   image_type)


def test_numeric_operators_compare_any_value() -> None:
    h = header(EchoTime=4.92, RepetitionTime=488, ImageType=["ORIGINAL"])
    assert hit({"tag": ["EchoTime"], "operator": "<", "value": "5"}, h)
    assert not hit({"tag": ["EchoTime"], "operator": ">", "value": "5"}, h)
    assert hit({"tag": ["RepetitionTime"], "operator": "==", "value": "488"}, h)
    assert hit({"tag": ["RepetitionTime"], "operator": "==", "value": 488.0}, h)
    assert hit({"tag": ["RepetitionTime"], "operator": "!=", "value": "500"}, h)
    assert hit({"tag": ["ImageType"], "operator": "==", "value": "ORIGINAL"}, h)
    # a value that is not a number never compares
    assert not hit({"tag": ["ImageType"], "operator": ">", "value": "1"}, h)
    # the value can be another attribute, as data-transfer-station allows
    assert hit({"tag": ["EchoTime"], "operator": "<", "value": ["RepetitionTime"]}, h)
    assert not hit({"tag": ["RepetitionTime"], "operator": "<", "value": ["EchoTime"]}, h)
    # a third tag number picks one value
    iop = header(ImageOrientationPatient=[1, 0, 0, 0, 0.9, -0.43])
    assert hit({"tag": ["0x0020", "0x0037", "4"], "operator": ">", "value": "0.8"}, iop)
    assert not hit({"tag": ["0x0020", "0x0037", "5"], "operator": ">", "value": "0"}, iop)


def test_absent_attributes_fail_unless_negated() -> None:
    empty = header(Modality="MR")
    for operator, value in (("regexp", "."), ("contains", "x"), ("==", "1"), ("<", "1"),
                            (">", "1"), ("approx", "1"), ("exist", "")):
        test = {"tag": ["EchoTime"], "operator": operator, "value": value}
        assert not hit(test, empty), operator
        assert hit({**test, "negate": "yes"}, empty), operator
    assert hit({"tag": ["EchoTime"], "operator": "notexist"}, empty)
    assert hit({"tag": ["Modality"], "operator": "exist"}, empty)
    # a name that is neither a keyword nor a fact (a CSA-derived name of
    # data-transfer-station) is absent, not an error
    assert not hit({"tag": ["PhaseEncodingDirectionPositive"], "value": "1"}, empty)


def test_private_elements_read_without_their_vr() -> None:
    """An implicit VR file's unknown private element is "UN" in the JSON
    model, as InlineBinary: its text is matched."""
    h = {"00080060": {"vr": "CS", "Value": ["MR"]},
         "00190010": {"vr": "LO", "Value": ["GEMS_ACQU_01"]},
         "0019109C": {"vr": "UN", "InlineBinary": base64.b64encode(b"efgre3d ").decode()},
         "00430010": {"vr": "LO", "Value": ["GEMS_PARM_01"]},
         "00431039": {"vr": "UN", "InlineBinary": base64.b64encode(b"1000\\8\\0\\0 ").decode()}}
    assert hit({"tag": ["0x0019", "0x109C"], "value": "^efgre3d$"}, h)
    assert hit({"tag": ["PulseSequenceName"], "value": "efgre3d"}, h)
    assert series_facts([h]).b_values == (1000.0,)


def test_references_negation_and_notrule() -> None:
    rules = rules_from([
        {"id": "SIEMENS", "rules": [{"tag": ["Manufacturer"], "value": "^SIEMENS"}]},
        {"type": "siemens-mr", "rules": [{"rule": "SIEMENS"}, {"tag": ["Modality"],
                                                              "value": "MR"}]},
        {"type": "not-siemens", "rules": [{"rule": "SIEMENS", "negate": "yes"}]},
        {"type": "not-siemens-too", "rules": [{"notrule": "SIEMENS"}]},
    ])
    assert classes(header(Manufacturer="SIEMENS", Modality="MR"), rules) == ["siemens-mr"]
    assert classes(header(Manufacturer="GE", Modality="MR"), rules) == \
        ["not-siemens", "not-siemens-too"]


def test_classify_type_sees_the_classes_given_before() -> None:
    rules = rules_from([
        {"type": "gradient-echo", "rules": [{"tag": ["ScanningSequence"], "value": "GR"}]},
        {"type": "Gradient-Echo", "rules": [{"tag": ["Modality"], "value": "MR"}]},
        {"type": "fast", "rules": [{"tag": ["ClassifyType"], "operator": "contains",
                                    "value": "gradient-echo"},
                                   {"tag": ["RepetitionTime"], "operator": "<", "value": "10"}]},
    ])
    # a class is given once, compared case-insensitively (first spelling wins)
    assert classes(header(Modality="MR", ScanningSequence="GR", RepetitionTime=8), rules) == \
        ["gradient-echo", "fast"]
    assert classes(header(Modality="MR", ScanningSequence="SE", RepetitionTime=8), rules) == \
        ["Gradient-Echo"]
    assert class_matches(["T1", "derived"], "t1") and class_matches(["DWI"], "dwi")
    assert not class_matches(["T1"], "T2")


# ------------------------------------------------ errors

@pytest.mark.parametrize("entries, message", [
    ([{"type": "a", "id": "A", "rules": [{"rule": "B"}]},
      {"type": "b", "id": "B", "rules": [{"rule": "C"}]},
      {"type": "c", "id": "C", "rules": [{"rule": "A"}]}],
     "rules refer to each other in a cycle: A -> B -> C -> A"),
    ([{"type": "a", "id": "A", "rules": [{"rule": "A"}]}], "cycle: A -> A"),
    ([{"type": "a", "rules": [{"rule": "NOPE"}]}], "refers to rule id 'NOPE', which no rule has"),
    ([{"type": "a", "rules": [{"tag": ["EchoTime"], "value": "(unclosed"}]}],
     "entry 1 (type 'a'), test 1: 'value' '(unclosed' is not a valid regular expression"),
    ([{"type": "a", "rules": [{"tag": ["EchoTime"], "operator": "~", "value": "1"}]}],
     "unknown operator '~'"),
    ([{"type": "a", "rules": [{"tag": ["EchoTime"], "operator": "<", "value": "short"}]}],
     "operator '<' needs a number"),
    ([{"type": "a", "rules": [{"tag": ["0x0018"], "value": "1"}]}], "neither a DICOM keyword"),
    ([{"type": "a", "rules": [{"tag": ["0xZZ", "0x10"], "value": "1"}]}],
     "is not a pair of numbers"),
    ([{"type": "a", "rules": [{"value": "1"}]}], "a test needs 'tag'"),
    ([{"type": "a"}], "'rules' must be a list"),
    ([{"rules": []}], "give a 'type'"),
    ({"type": "a"}, "a rule file is a JSON list"),
])
def test_unusable_rules_are_refused_with_a_plain_message(tmp_path: Path, entries: Any,
                                                         message: str) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(entries))
    if "neither a DICOM keyword" in message:  # only a warning: the file is usable
        load_rules(path)
        return
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_unreadable_rule_files(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read the rule file"):
        load_rules(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"type": "a", "rules": [}]')
    with pytest.raises(RuleError, match=r"not valid JSON: .* at line 1 column"):
        load_rules(bad)


# ------------------------------------------------ overriding the built-ins

def test_a_rule_file_overrides_a_builtin_class_and_can_extend_it(tmp_path: Path) -> None:
    mprage = header(**SIEMENS_T1)
    renamed = header(**{**SIEMENS_T1, "SeriesDescription": "anat"})
    assert "T1" in classes(mprage, load_rules()) and "T1" in classes(renamed, load_rules())

    replace = tmp_path / "replace.json"
    replace.write_text(json.dumps([{"type": "t1", "rules": [
        {"tag": ["SeriesDescription"], "value": "(?i)t1"}]}]))
    rules = load_rules(replace)
    assert classes(mprage, rules)[-1] == "t1"
    assert "t1" not in classes(renamed, rules) and "T1" not in classes(renamed, rules)

    extend = tmp_path / "extend.json"
    extend.write_text(json.dumps([
        {"type": "T1", "rules": [{"rule": "builtin:T1"}]},
        {"type": "T1", "rules": [{"tag": ["SeriesDescription"], "value": "^site-anat$"}]}]))
    rules = load_rules(extend)
    assert "T1" in classes(renamed, rules)
    site = header(Modality="MR", SeriesDescription="site-anat")
    assert classes(site, rules) == ["T1"]
    assert classes(site, load_rules()) == []

    # a helper replaced by id changes the classes that use it
    helper = tmp_path / "helper.json"
    helper.write_text(json.dumps([{"id": "mr-image", "rules": [
        {"tag": ["Modality"], "value": "^NEVER$"}]}]))
    assert "T1" not in classes(mprage, load_rules(helper))


def test_the_builtins_alone_and_without_builtins(tmp_path: Path) -> None:
    assert load_rules("").classes == load_rules(None).classes
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"type": "x", "rules": []}]))
    assert load_rules(path, builtins=False).classes == ["x"]


# ------------------------------------------------ facts

def test_orientation_is_the_dominant_axis_of_the_slice_normal() -> None:
    assert orientation_of([1, 0, 0, 0, 1, 0]) == "axial"
    assert orientation_of([1, 0, 0, 0, 0, -1]) == "coronal"
    assert orientation_of([0, 1, 0, 0, 0, -1]) == "sagittal"
    assert orientation_of([1, 0, 0, 0, 0.8, -0.6]) == "axial"     # 37 degrees tilt
    assert orientation_of([1, 0, 0, 0, 0.6, -0.8]) == "coronal"
    assert orientation_of([0, 0, 0, 0, 0, 0]) is None


def test_facts_of_a_series() -> None:
    ax, sag = [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1]
    dwi = [header(ImageOrientationPatient=ax, ImagePositionPatient=[0, 0, z % 3 * 5.0],
                  DiffusionBValue=0 if z < 3 else 1000, EchoTime=80) for z in range(6)]
    facts = series_facts(dwi)
    assert (facts.instances, facts.slices, facts.volumes) == (6, 3, 2)
    assert facts.b_values == (0.0, 1000.0) and facts.echo_times == (80.0,)
    assert facts.orientation == "axial" and facts.orientations == ("axial",)
    three = [header(ImageOrientationPatient=o, ImagePositionPatient=[0, 0, 0])
             for o in (sag, ax, ax)]
    facts = series_facts(three)
    assert facts.orientation == "axial" and facts.orientations == ("sagittal", "axial")
    # GE adds 10^9 to the b-value in some versions; Siemens names it in the sequence
    ge = header(tag_00430010=("LO", "GEMS_PARM_01"), tag_00431039=("IS", [1000001000, 8, 0, 0]))
    siemens = header(SequenceName="*ep_b1500#3")
    assert series_facts([ge, siemens]).b_values == (1000.0, 1500.0)
    # another vendor's block at (0043,10xx) is not GE's b-value
    other = header(tag_00430010=("LO", "OTHER"), tag_00431039=("IS", [7, 8, 0, 0]))
    assert series_facts([other]).b_values == ()
    # no positions: every instance counts as a slice
    assert series_facts([header(Modality="OT")] * 4).volumes == 1


def test_a_file_defining_a_class_the_builtins_refer_to(tmp_path: Path) -> None:
    """data-transfer-station's own localizer entry (no id, built on per-image
    orientation types) replaces the built-in localizer; the built-in T1 rules
    that say "not a localizer" then use it."""
    path = tmp_path / "classifyRules.json"
    path.write_text(json.dumps([
        {"type": "localizer",
         "description": "A localizer scan, has been classified before as axial, "
                        "sagittal and coronal",
         "rules": [{"tag": ["ClassifyType"], "value": "axial", "operator": "contains"},
                   {"tag": ["ClassifyType"], "value": "coronal", "operator": "contains"},
                   {"tag": ["ClassifyType"], "value": "sagittal", "operator": "contains"}]},
        {"type": "scout-by-name", "rules": [{"rule": "localizer"}]}]))
    rules = load_rules(path)
    three_plane = [header(Modality="MR", SOPClassUID=MR, ScanningSequence="GR",
                          SequenceVariant="SP", RepetitionTime=8.6, EchoTime=4, FlipAngle=20,
                          SeriesDescription="localizer", ImageOrientationPatient=o,
                          ImagePositionPatient=[0, 0, 0])
                   for o in ([0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1], [1, 0, 0, 0, 1, 0])]
    facts = series_facts(three_plane)
    assert "localizer" in classify_series(three_plane[0], facts, load_rules())
    # the file's localizer never matches here, so the fast GRE counts as T1
    assert classify_series(three_plane[0], facts, rules) == ["T1"]
