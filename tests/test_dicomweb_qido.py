"""QIDO-RS: matching per attribute type, fuzzy names, includefield, paging."""

from __future__ import annotations

import random
from pathlib import Path

import httpx
import pytest

from web_server import WebServer, make_instance, uid, web  # noqa: F401


def _v(item: dict, tag: str) -> list:
    return item.get(tag, {}).get("Value", [])


def _uids(r: httpx.Response, tag: str = "0020000D") -> list[str]:
    if r.status_code == 204:
        return []
    assert r.status_code == 200, r.text
    return [_v(i, tag)[0] for i in r.json()]


STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


@pytest.fixture
def archive(web: WebServer) -> dict:
    """Five studies with known attributes."""
    s = {name: uid() for name in ("doe", "roe", "jose", "mr", "old")}
    parts = [
        make_instance(s["doe"], uid(), uid(), patient_name="Doe^John", patient_id="P1",
                      study_date="20200110", StudyDescription="Brain",
                      InstitutionName="General Hospital"),
        make_instance(s["roe"], uid(), uid(), patient_name="Roe^Jane", patient_id="P2",
                      study_date="20200125", StudyDescription="brain"),
        make_instance(s["jose"], uid(), uid(), patient_name="García^José", patient_id="P3",
                      study_date="20200201", StudyDescription="Chest"),
        make_instance(s["mr"], uid(), uid(), patient_name="Smith^Anna", patient_id="P4",
                      study_date="20210301", modality="MR", StudyDescription="Knee"),
        make_instance(s["old"], uid(), uid(), patient_name="Doe^Jonathan", patient_id="P5",
                      study_date="19991231", StudyDescription="Hand"),
    ]
    r = web.stow(parts)
    assert r.status_code == 200, r.text
    # A second series of another modality in the "mr" study.
    assert web.stow([make_instance(s["mr"], uid(), uid(), patient_name="Smith^Anna",
                                   patient_id="P4", modality="SR")]).status_code == 200
    return s


def test_person_name_is_case_insensitive_and_wildcards(web: WebServer, archive: dict) -> None:
    c = web.client()
    assert _uids(c.get("/studies", params={"PatientName": "doe^john"})) == [archive["doe"]]
    assert _uids(c.get("/studies", params={"PatientName": "DOE^JOHN"})) == [archive["doe"]]
    assert _uids(c.get("/studies", params={"PatientName": "doe*"})) == [archive["doe"],
                                                                        archive["old"]]
    assert _uids(c.get("/studies", params={"PatientName": "?oe^*"})) == [
        archive["doe"], archive["roe"], archive["old"]]
    # An underscore or percent is literal, not a SQL wildcard.
    assert c.get("/studies", params={"PatientName": "D_e*"}).status_code == 204
    assert c.get("/studies", params={"PatientName": "%"}).status_code == 204


def test_other_text_is_case_sensitive(web: WebServer, archive: dict) -> None:
    c = web.client()
    assert _uids(c.get("/studies", params={"StudyDescription": "Brain"})) == [archive["doe"]]
    assert _uids(c.get("/studies", params={"StudyDescription": "brain"})) == [archive["roe"]]
    assert _uids(c.get("/studies", params={"StudyDescription": "B*"})) == [archive["doe"]]
    assert _uids(c.get("/studies", params={"PatientID": "P3"})) == [archive["jose"]]
    assert c.get("/studies", params={"PatientID": "p3"}).status_code == 204


def test_date_ranges(web: WebServer, archive: dict) -> None:
    c = web.client()
    assert _uids(c.get("/studies", params={"StudyDate": "20200101-20200131"})) == [
        archive["doe"], archive["roe"]]
    assert _uids(c.get("/studies", params={"StudyDate": "-20191231"})) == [archive["old"]]
    assert _uids(c.get("/studies", params={"StudyDate": "20210101-"})) == [archive["mr"]]
    assert _uids(c.get("/studies", params={"StudyDate": "20200201"})) == [archive["jose"]]
    assert c.get("/studies", params={"StudyDate": "20300101-"}).status_code == 204


def test_uid_lists(web: WebServer, archive: dict) -> None:
    c = web.client()
    wanted = [archive["roe"], archive["mr"]]
    assert _uids(c.get("/studies", params={"StudyInstanceUID": "\\".join(wanted)})) == wanted
    # PS3.18 8.3.4.1 also allows commas.
    assert _uids(c.get("/studies", params={"StudyInstanceUID": ",".join(wanted)})) == wanted
    assert _uids(c.get("/studies", params={"StudyInstanceUID": archive["doe"]})) == [
        archive["doe"]]


def test_modalities_in_study(web: WebServer, archive: dict) -> None:
    c = web.client()
    assert _uids(c.get("/studies", params={"ModalitiesInStudy": "MR"})) == [archive["mr"]]
    assert _uids(c.get("/studies", params={"ModalitiesInStudy": "SR"})) == [archive["mr"]]
    r = c.get("/studies", params={"StudyInstanceUID": archive["mr"]})
    assert _v(r.json()[0], "00080061") == ["MR", "SR"]
    assert _v(r.json()[0], "00201206") == [2]  # NumberOfStudyRelatedSeries
    assert _v(r.json()[0], "00201208") == [2]  # NumberOfStudyRelatedInstances
    assert len(_uids(c.get("/studies", params={"ModalitiesInStudy": "CT"}))) == 4


def test_fuzzy_person_names(web: WebServer, archive: dict) -> None:
    c = web.client()

    def fuzzy(name: str) -> list[str]:
        return _uids(c.get("/studies", params={"PatientName": name,
                                               "fuzzymatching": "true"}))
    assert fuzzy("jo") == [archive["doe"], archive["jose"], archive["old"]]
    assert fuzzy("do") == [archive["doe"], archive["old"]]
    assert fuzzy("jose") == [archive["jose"]]
    assert fuzzy("JOSÉ") == [archive["jose"]]
    assert fuzzy("garc") == [archive["jose"]]
    assert fuzzy("anna") == [archive["mr"]]
    # Without fuzzy matching "jose" is an exact (case-insensitive) name.
    assert c.get("/studies", params={"PatientName": "jose"}).status_code == 204
    r = c.get("/studies", params={"PatientName": "jose", "fuzzymatching": "true"})
    assert _v(r.json()[0], "00100010") == [{"Alphabetic": "García^José"}]


def test_includefield(web: WebServer, archive: dict) -> None:
    c = web.client()
    r = c.get("/studies", params={"StudyInstanceUID": archive["doe"]})
    assert "00080080" not in r.json()[0]  # InstitutionName is not a default
    for field in ("InstitutionName", "00080080"):
        r = c.get("/studies", params={"StudyInstanceUID": archive["doe"], "includefield": field})
        assert _v(r.json()[0], "00080080") == ["General Hospital"]
    r = c.get("/studies", params={"StudyInstanceUID": archive["doe"],
                                  "includefield": "InstitutionName,PatientComments"})
    assert "00104000" in r.json()[0] and _v(r.json()[0], "00080080") == ["General Hospital"]
    r = c.get("/studies", params=[("StudyInstanceUID", archive["doe"]),
                                  ("includefield", "InstitutionName"),
                                  ("includefield", "PatientComments")])
    assert "00104000" in r.json()[0] and "00080080" in r.json()[0]
    r = c.get("/studies", params={"StudyInstanceUID": archive["doe"], "includefield": "all"})
    item = r.json()[0]
    assert _v(item, "00080080") == ["General Hospital"]
    assert "00104000" in item  # PatientComments: a catalogue attribute, empty
    # includefield=all at instance level brings the header's other attributes.
    r = c.get(f"/studies/{archive['doe']}/instances", params={"includefield": "all"})
    item = r.json()[0]
    assert _v(item, "00280010") == [4]  # Rows
    assert _v(item, "00280004") == ["MONOCHROME2"]  # not in the catalogue: from the header
    assert _v(item, "00080060") == ["CT"]


def test_levels_and_scopes(web: WebServer, archive: dict) -> None:
    c = web.client()
    series = c.get(f"/studies/{archive['mr']}/series")
    assert sorted(_v(i, "00080060")[0] for i in series.json()) == ["MR", "SR"]
    for item in series.json():
        assert _v(item, "00081190") == [
            f"{web.dicomweb}/studies/{archive['mr']}/series/{_v(item, SERIES)[0]}"]
    mr_series = [i for i in series.json() if _v(i, "00080060") == ["MR"]][0]
    assert _v(mr_series, "00201209") == [1]  # NumberOfSeriesRelatedInstances
    r = c.get("/series", params={"Modality": "MR"})
    assert _uids(r, SERIES) == [_v(mr_series, SERIES)[0]]
    assert _uids(r) == [archive["mr"]]  # the study UID comes with top-level /series
    r = c.get("/series", params={"PatientName": "smith*"})
    assert sorted(_uids(r, SERIES)) == sorted(_v(i, SERIES)[0] for i in series.json())
    insts = c.get(f"/studies/{archive['mr']}/instances")
    assert len(insts.json()) == 2
    se = _v(mr_series, SERIES)[0]
    one = c.get(f"/studies/{archive['mr']}/series/{se}/instances")
    assert len(one.json()) == 1
    sop = _v(one.json()[0], SOP)[0]
    assert _v(one.json()[0], "00081190") == [
        f"{web.dicomweb}/studies/{archive['mr']}/series/{se}/instances/{sop}"]
    assert _uids(c.get("/instances", params={"SOPInstanceUID": sop}), SOP) == [sop]
    assert len(_uids(c.get("/instances", params={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}),
                     SOP)) == 6


def test_instances_come_in_instance_number_order(web: WebServer) -> None:
    study, series = uid(), uid()
    numbers = list(range(1, 21))
    random.Random(7).shuffle(numbers)
    parts = [make_instance(study, series, uid(), instance_number=n) for n in numbers]
    assert web.stow(parts).status_code == 200
    r = web.client().get(f"/studies/{study}/series/{series}/instances")
    assert [_v(i, "00200013")[0] for i in r.json()] == list(range(1, 21))


def test_pagination_neither_repeats_nor_skips(web: WebServer) -> None:
    studies = [uid() for _ in range(25)]
    assert web.stow([make_instance(s, uid(), uid()) for s in studies]).status_code == 200
    c = web.client()
    pages = [_uids(c.get("/studies", params={"limit": "10", "offset": str(o)}))
             for o in (0, 10, 20)]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert pages[0] + pages[1] + pages[2] == studies
    assert c.get("/studies", params={"limit": "10", "offset": "30"}).status_code == 204
    # New studies arrive between pages: earlier ones neither repeat nor vanish.
    seen: list[str] = []
    offset = 0
    added: list[str] = []
    while True:
        page = _uids(c.get("/studies", params={"limit": "7", "offset": str(offset)}))
        if not page:
            break
        seen += page
        offset += len(page)
        if len(added) < 6:
            new = [uid(), uid()]
            assert web.stow([make_instance(s, uid(), uid()) for s in new]).status_code == 200
            added += new
    assert len(seen) == len(set(seen))
    assert seen == studies + added


def test_max_limit_cuts_with_a_warning(tmp_path: Path) -> None:
    server = WebServer(tmp_path / "data", qido_max_limit=5).start()
    try:
        studies = [uid() for _ in range(8)]
        assert server.stow([make_instance(s, uid(), uid()) for s in studies]).status_code == 200
        c = server.client()
        r = c.get("/studies")
        assert _uids(r) == studies[:5]
        assert r.headers["warning"].startswith("299 pacsnode ")
        assert "additional results" in r.headers["warning"]
        r = c.get("/studies", params={"limit": "100", "offset": "5"})
        assert _uids(r) == studies[5:]
        assert "warning" not in r.headers
        r = c.get("/studies", params={"limit": "3"})
        assert _uids(r) == studies[:3] and "warning" not in r.headers
    finally:
        server.stop()


@pytest.mark.parametrize("params, words", [
    ({"NoSuchAttribute": "x"}, "unknown attribute"),
    ({"StudyDate": "2020ab"}, "StudyDate"),
    ({"StudyDate": "20200301-20200101"}, "StudyDate"),
    ({"limit": "abc"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"StudyInstanceUID": "1.2.x"}, "valid UID"),
    ({"includefield": "Nonsense"}, "unknown attribute"),
])
def test_bad_queries_are_400_with_a_reason(web: WebServer, params: dict, words: str) -> None:
    r = web.client().get("/studies", params=params)
    assert r.status_code == 400
    assert words in r.json()["error"]


def test_unknown_and_malformed_scope(web: WebServer, archive: dict) -> None:
    c = web.client()
    r = c.get(f"/studies/{uid()}/series")
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = c.get(f"/studies/{archive['doe']}/series/{uid()}/instances")
    assert r.status_code == 404 and "series" in r.json()["error"]
    r = c.get("/studies/1.2.3.abc/series")
    assert r.status_code == 400 and "not a valid UID" in r.json()["error"]
    assert c.get("/studies", params={"PatientID": "nobody"}).status_code == 204


def test_not_acceptable_media_type(web: WebServer, archive: dict) -> None:
    r = web.client().get("/studies", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406
    r = web.client().get("/studies", headers={"Accept": "application/json"})
    assert r.status_code == 200


def test_dicomweb_client_search(web: WebServer, archive: dict) -> None:
    client = web.dicomweb_client()
    found = client.search_for_studies(search_filters={"PatientName": "doe*"})
    assert [f[STUDY]["Value"][0] for f in found] == [archive["doe"], archive["old"]]
    found = client.search_for_studies(search_filters={"PatientName": "jose"},
                                      fuzzymatching=True)
    assert [f[STUDY]["Value"][0] for f in found] == [archive["jose"]]
    series = client.search_for_series(archive["mr"])
    assert len(series) == 2
    assert client.search_for_studies(search_filters={"PatientID": "none"}) == []


def test_dicom_json_bodies_fall_back_for_what_orjson_refuses() -> None:
    """QIDO and STOW bodies are written by orjson; an integer beyond 64 bits
    (an IS or a US/UL value can be any size in JSON) is written by json
    instead of failing the request."""
    import json

    from pacsnode.web.dicomweb import DicomJSONResponse
    body = [{"00200013": {"vr": "IS", "Value": [2 ** 70]}},
            {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Иванов^Иван"}]},
             "00281050": {"vr": "DS", "Value": [40.5]}}]
    response = DicomJSONResponse(body)
    assert response.media_type == "application/dicom+json"
    assert json.loads(response.body) == body
    assert b"1180591620717411303424" in response.body
    plain = DicomJSONResponse(body[1:])
    assert plain.body == json.dumps(body[1:], ensure_ascii=False,
                                    separators=(",", ":")).encode("utf-8")
