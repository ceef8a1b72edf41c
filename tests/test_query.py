"""The query engine on its own, on SQLite and PostgreSQL: each matching type
must match what it should and nothing else; the SQL never scans in Python."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicomfiles import make_ct
from pacsnode.config import load_settings
from pacsnode.dicom.catalogue import Level
from pacsnode.errors import BadQuery
from pacsnode.events import Origin
from pacsnode.node import Node
from pacsnode.query.parse import query_from_identifier, query_from_qido
from pacsnode.query.sql import like_pattern


@pytest.fixture
def node(tmp_path, database_url):
    n = Node(load_settings(overrides={"data_dir": tmp_path / "data", "fsync": False,
                                      "database_url": database_url}, environ={}))
    yield n
    n.close()


def store(node, tmp_path, name, **kw):
    ds = make_ct(tmp_path / f"{name}.dcm", **kw)
    assert node.ingestor.ingest_path(tmp_path / f"{name}.dcm", Origin("test")).outcome.ok
    return ds


def find(node, level, **keys):
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    return node.engine.search(query_from_identifier(ident))


def test_matching_types(node, tmp_path):
    a = store(node, tmp_path, "a", patient_id="A", patient_name="Doe^John",
              study_date="20200102", study_time="101500", accession="X_1%",
              ImageType=["ORIGINAL", "PRIMARY", "AXIAL"])
    store(node, tmp_path, "b", patient_id="B", patient_name="Иванов^Иван",
          study_date="20210315", study_time="143000", accession="X21", charset="ISO_IR 144",
          ImageType=["DERIVED", "SECONDARY"])
    store(node, tmp_path, "c", patient_id="C", patient_name="José^Núñez",
          study_date="20190701", study_time="080000", accession="Y3", charset="ISO_IR 100")
    ids = lambda rs: sorted(str(r.PatientID) for r in rs)  # noqa: E731
    assert ids(find(node, "STUDY", PatientID="")) == ["A", "B", "C"]
    # LIKE metacharacters in the data are literal, not wildcards
    assert ids(find(node, "STUDY", PatientID="", AccessionNumber="X_1%")) == ["A"]
    assert ids(find(node, "STUDY", PatientID="", AccessionNumber="X_*")) == ["A"]
    assert ids(find(node, "STUDY", PatientID="", AccessionNumber="X?1*")) == ["A", "B"]
    # Cyrillic name, decoded from ISO_IR 144 and matched case-insensitively
    assert ids(find(node, "STUDY", PatientID="", PatientName="иванов*")) == ["B"]
    # multi-valued attribute: any value matches
    assert ids(find(node, "IMAGE", PatientID="", ImageType="AXIAL")) == ["A"]
    assert ids(find(node, "IMAGE", PatientID="", ImageType="SECOND*")) == ["B"]
    # datetime-ish ranges and single time values of lower precision
    assert ids(find(node, "STUDY", PatientID="", StudyTime="10")) == ["A"]
    assert ids(find(node, "STUDY", PatientID="", StudyTime="-0900")) == ["C"]
    # QIDO fuzzy matching: accent- and case-insensitive prefix of any component
    fuzzy = lambda v: ids(node.engine.search(query_from_qido(  # noqa: E731
        Level.STUDY, [("PatientName", v), ("fuzzymatching", "true")])))
    assert fuzzy("jo") == ["A", "C"]
    assert fuzzy("do") == ["A"]
    assert fuzzy("nunez") == ["C"]
    assert fuzzy("ohn") == []
    # UID list at SERIES level, relational (no study key needed)
    rs = find(node, "SERIES", SeriesInstanceUID=f"{a.SeriesInstanceUID}\\1.2.3")
    assert [r.SeriesInstanceUID for r in rs] == [a.SeriesInstanceUID]


def test_sequence_matching(node, tmp_path):
    item = Dataset()
    item.RequestedProcedureID = "RP77"
    item.ScheduledProcedureStepID = "SPS1"
    other = Dataset()
    other.RequestedProcedureID = "RP88"
    other.ScheduledProcedureStepID = "SPS2"
    store(node, tmp_path, "s", patient_id="S", RequestAttributesSequence=[item, other])
    store(node, tmp_path, "t", patient_id="T")
    q = Dataset()
    q.RequestedProcedureID = "RP77"
    assert [str(r.PatientID) for r in find(node, "IMAGE", PatientID="",
                                           RequestAttributesSequence=[q])] == ["S"]
    # both keys must hold in the same item
    q.ScheduledProcedureStepID = "SPS2"
    assert find(node, "IMAGE", PatientID="", RequestAttributesSequence=[q]) == []
    q.ScheduledProcedureStepID = "SPS1"
    assert len(find(node, "STUDY", PatientID="", RequestAttributesSequence=[q])) == 1


def test_bad_values_raise_bad_query(node):
    with pytest.raises(BadQuery):
        find(node, "STUDY", StudyDate="2020-13-45")
    with pytest.raises(BadQuery):
        find(node, "STUDY", StudyDate="20201231-20200101")
    with pytest.raises(BadQuery):
        find(node, "STUDY", StudyInstanceUID="1.2.x")
    with pytest.raises(BadQuery):
        query_from_qido(Level.STUDY, [("NoSuchAttribute", "1")])
    with pytest.raises(BadQuery):
        query_from_qido(Level.STUDY, [("limit", "-1")])


def test_like_pattern_escapes():
    assert like_pattern("A%B_C*D?") == ("A\\%B\\_C%D_", "A%B_C")


def test_computed_attributes(node, tmp_path):
    """Every computed attribute (PS3.4 C.3.4, C.6.1.1) has its value for
    each match, whether the page holds one match or all of them: its
    statements are built once and run for each page's ids."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.uid import CTImageStorage, generate_uid

    s1, s2, s3 = (generate_uid() for _ in range(3))
    c1, m1, c2, c3 = (generate_uid() for _ in range(4))
    layout = [("A", s1, c1, "CT"), ("A", s1, c1, "CT"), ("A", s1, m1, "MR"),
              ("A", s2, c2, "CT"), ("B", s3, c3, "CT")]
    for n, (patient, study, series_uid, modality) in enumerate(layout):
        store(node, tmp_path, f"i{n}", patient_id=patient, study_uid=study,
              series_uid=series_uid, modality=modality, instance=n + 1)

    def computed(level, unique, keys, **match):
        ident = Dataset()
        ident.QueryRetrieveLevel = level.name
        for k, v in match.items():
            setattr(ident, k, v)
        for k in [unique, *keys]:
            ident.add_new(tag_for_keyword(k), dictionary_VR(k), None)
        query = query_from_identifier(ident)
        pages = []
        for batch in (1, 500):
            pages.append({str(ds[unique].value): tuple(ds[k].value for k in keys)
                          for ds in (m.dataset() for m in node.engine.matches(query, batch))})
        assert pages[0] == pages[1]
        return pages[0]

    assert computed(Level.PATIENT, "PatientID",
                    ["NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                     "NumberOfPatientRelatedInstances"]) == {"A": (2, 3, 4), "B": (1, 1, 1)}
    studies = computed(Level.STUDY, "StudyInstanceUID",
                       ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                        "ModalitiesInStudy", "SOPClassesInStudy"])
    assert {uid: (ns, ni, [mods] if isinstance(mods, str) else list(mods), str(sops))
            for uid, (ns, ni, mods, sops) in studies.items()} == {
        s1: (2, 3, ["CT", "MR"], CTImageStorage),
        s2: (1, 1, ["CT"], CTImageStorage),
        s3: (1, 1, ["CT"], CTImageStorage)}
    assert computed(Level.SERIES, "SeriesInstanceUID", ["NumberOfSeriesRelatedInstances"],
                    PatientID="A") == {c1: (2,), m1: (1,), c2: (1,)}


def test_json_projection_equals_the_datasets_json(node, tmp_path):
    """QIDO-RS renders matches straight from the rows (search_json); it must
    say exactly what the Datasets C-FIND sends would say in DICOM JSON."""
    store(node, tmp_path, "a", patient_id="A", patient_name="Doe^John=ドウ^ジョン=どう^じょん",
          study_date="20200102", study_time="101500.25", accession="X_1%",
          charset="ISO_IR 192", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], PatientWeight="70.5",
          PatientAge="042Y", SliceThickness="1.25", OtherPatientIDs=["O1", "O2"])
    store(node, tmp_path, "b", patient_id="B", patient_name="Иванов^Иван",
          study_date="20210315", study_time="1430", accession="", charset="ISO_IR 144",
          ImageType=["DERIVED", "SECONDARY"], ReferringPhysicianName="Who^Doctor",
          InstitutionName="Клиника")
    store(node, tmp_path, "c", patient_id="C", patient_name="", modality="MR",
          study_date="", charset="ISO_IR 100", StudyComments="ünïcode")
    cases = [(level, []) for level in Level]
    cases += [(Level.STUDY, [("includefield", "all")]),
              (Level.SERIES, [("includefield", "all")]),
              (Level.IMAGE, [("includefield", "all")]),
              (Level.STUDY, [("includefield", "StudyComments"), ("includefield", "00081030"),
                             ("includefield", "ModalitiesInStudy"),
                             ("includefield", "NumberOfStudyRelatedInstances"),
                             ("includefield", "SOPClassesInStudy")]),
              (Level.SERIES, [("includefield", "SliceThickness"),
                              ("includefield", "RequestAttributesSequence")]),
              (Level.IMAGE, [("includefield", "SliceThickness"), ("includefield", "PixelData"),
                             ("PatientName", "doe*")])]
    compared = 0
    for level, params in cases:
        query = query_from_qido(level, params)
        datasets = [ds.to_json_dict() for ds in node.engine.search(query)]
        assert datasets, (level, params)
        assert node.engine.search_json(query) == datasets, (level, params)
        compared += len(datasets)
    assert compared == 28  # matches over all the cases: each compared, none left out


def test_identifier_encoding_equals_pydicoms(node, tmp_path):
    """C-FIND encodes matches by hand (messages.encode_elements); in both
    syntaxes a match's identifier must be byte for byte what pydicom writes
    for the same Dataset, and a match that has header JSON values, or a
    value the hand encoder does not take, goes through pydicom."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from pacsnode.dimse import messages as m
    from pacsnode.dimse.find import encode_match as _encode_match
    store(node, tmp_path, "a", patient_id="A", patient_name="Doe^John=ドウ^ジョン=どう^じょん",
          study_date="20200102", study_time="101500.25", accession="X_1%",
          charset="ISO_IR 192", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], PatientWeight="70.5",
          PatientAge="042Y", OtherPatientIDs=["O1", "O2"])
    store(node, tmp_path, "b", patient_id="B", patient_name="Иванов^Иван",
          study_date="20210315", study_time="1430", accession="", charset="ISO_IR 144",
          ImageType=["DERIVED", "SECONDARY"], InstitutionName="Клиника")
    store(node, tmp_path, "c", patient_id="C", patient_name="", modality="MR", study_date="")
    every = {Level.PATIENT: ["PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs",
                             "NumberOfPatientRelatedStudies"],
             Level.STUDY: ["StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
                           "PatientWeight", "PatientAge", "ModalitiesInStudy",
                           "SOPClassesInStudy", "NumberOfStudyRelatedInstances",
                           "InstitutionName"],
             Level.SERIES: ["SeriesInstanceUID", "Modality", "SeriesNumber",
                            "RequestAttributesSequence", "NumberOfSeriesRelatedInstances"],
             Level.IMAGE: ["SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ImageType",
                           "Rows", "Columns"]}
    from_header = {Level.STUDY: ["StudyComments"], Level.IMAGE: ["SliceThickness"]}
    plain = header = non_ascii = 0
    for level in Level:
        for extra in ([], from_header.get(level, [])):
            ident = Dataset()
            ident.QueryRetrieveLevel = level.name
            for k in [k for lvl in Level if lvl <= level for k in every[lvl]] + extra:
                ident.add_new(tag_for_keyword(k), dictionary_VR(k), None)
            for charset in (None, "ISO_IR 100"):
                if charset:
                    ident.SpecificCharacterSet = charset
                for match in node.engine.matches(query_from_identifier(ident)):
                    expected = match.dataset()
                    expected.QueryRetrieveLevel = level.name
                    if charset and "SpecificCharacterSet" not in expected:
                        expected.SpecificCharacterSet = charset
                    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
                        got = _encode_match(match, level.name,
                                            ident.get("SpecificCharacterSet"), syntax)
                        assert got == m.encode_dataset(expected, syntax), (level, match.fields)
                    non_ascii += match.non_ascii
                    if match.plain:
                        plain += 1
                    else:
                        header += 1
    # Both paths were taken: the StudyComments and SliceThickness keys come
    # from the header JSON.
    assert plain > 0 and header > 0, (plain, header)
    assert non_ascii > 0


def test_encode_elements_refuses_what_it_cannot_write():
    from pacsnode.dimse import messages as m
    explicit = "1.2.840.10008.1.2.1"
    with pytest.raises(ValueError):
        m.encode_elements([(0x00100010, "PN", "Müller")], explicit)  # not ASCII, no utf8
    with pytest.raises(ValueError):
        m.encode_elements([(0x00280106, "US or SS", None)], explicit)
    with pytest.raises(ValueError):
        m.encode_elements([(0x00081115, "SQ", ["item"])], explicit)
    with pytest.raises(ValueError):
        m.encode_elements([(0x00100010, "PN", "A")], "1.2.840.10008.1.2.2")  # big endian
    assert m.encode_elements([(0x00100010, "PN", "Müller")], explicit, utf8=True) == \
        b"\x10\x00\x10\x00PN\x08\x00M\xc3\xbcller "
