"""Series classes in the built-in UI (DESIGN §9, §10), in a real browser:
labelled MR series of tests/data/classify_series.json (a Siemens T1 spin
echo, a T2 turbo spin echo) sent over DIMSE to a running ``pacsnode
serve``; the study's page shows each series' class on its card, as
``GET /api/v1/series/{uid}/classification`` answers it, and the study list
shows each study's classes, asked in one request per page.  Screenshots go to
the module's tmp folder (``classes-shots``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from browser import browser, page, script_errors, shot, storescu  # noqa: F401
from conftest import PacsnodeServer
from test_automation_stable import wait_until
from test_series_classes import write_series

PICKS = {"sie-t1-se-1": ["T1"], "sie-t2-tse-2": ["T2"]}
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("ui-classes")
    (work / "data").mkdir()
    server = PacsnodeServer(work / "data", extra_env={
        "PACSNODE_FSYNC": "false", "PACSNODE_STABLE_SERIES_SECONDS": "1"}).start()
    try:
        study = generate_uid()
        made = write_series(work / "in", study, PICKS, patient_id="UICLASS")
        storescu(server, [f for _uid, files in made.values() for f in files])
        other = write_series(work / "other", generate_uid(), {"ge-flair-1": ["FLAIR"]},
                             patient_id="UICLASS2")
        storescu(server, [f for _uid, files in other.values() for f in files])
        shots = work / "classes-shots"
        shots.mkdir()
        yield {"server": server, "study": study, "made": made, "other": other,
               "shots": shots}
    finally:
        server.stop()


def _card_classes(page: Any, series_uid: str) -> list[str]:
    card = page.locator(f"a.series-card[data-series='{series_uid}']")
    card.locator(".classes .tag").first.wait_for()
    return card.locator(".classes .tag").all_inner_texts()


def test_study_page_shows_each_series_class(page: Any, env: dict[str, Any]) -> None:
    page.goto(f"/ui/#/study/{env['study']}")
    for entry_id, classes in PICKS.items():
        series_uid = env["made"][entry_id][0]
        assert _card_classes(page, series_uid) == classes
        answer = httpx.get(f"{env['server'].base_url}/api/v1/series/{series_uid}/classification",
                           timeout=30).json()
        assert answer["classes"] == classes  # the page shows what the node answers
    shot(page, env["shots"], "study-classes")
    assert not page.recorder.failures, page.recorder.failures
    assert not script_errors(page.recorder)


def test_study_list_shows_each_studys_classes_in_one_request(page: Any,
                                                             env: dict[str, Any]) -> None:
    api = f"{env['server'].base_url}/api/v1/series"
    other_study = dcmread(env["other"]["ge-flair-1"][1][0]).StudyInstanceUID
    # Series are classified once stable (stable_series_seconds = 1).
    both = "\\".join((env["study"], other_study))

    def classified() -> bool:
        hits = httpx.get(api, params={"StudyInstanceUID": both}, timeout=30).json()["results"]
        return len(hits) == 3 and all(h["classes"] for h in hits)
    wait_until(classified, 60, "the three series to be classified")
    page.goto("/ui/")
    rows = {env["study"]: ["T1", "T2"], other_study: ["FLAIR"]}
    for study, classes in rows.items():
        cell = page.locator(f"tr.study-row[data-study='{study}'] td.classes")
        cell.locator(".tag").first.wait_for()
        assert cell.locator(".tag").all_inner_texts() == classes
    shot(page, env["shots"], "list-classes")
    asked = [u for _m, u, _b in page.recorder.requests if "/api/v1/series" in u]
    assert len(asked) == 1, asked  # the whole page at once, not a request per row
    assert not page.recorder.failures, page.recorder.failures
    assert not script_errors(page.recorder)


def test_series_of_several_studies_and_a_bad_list(env: dict[str, Any]) -> None:
    api = f"{env['server'].base_url}/api/v1/series"
    other_study = dcmread(env["other"]["ge-flair-1"][1][0]).StudyInstanceUID
    r = httpx.get(api, params={"StudyInstanceUID": f"{env['study']}\\{other_study}"},
                  timeout=30)
    assert r.status_code == 200
    got = {(h["StudyInstanceUID"], h["SeriesInstanceUID"]) for h in r.json()["results"]}
    want = {(env["study"], uid) for uid, _files in env["made"].values()}
    want |= {(other_study, env["other"]["ge-flair-1"][0])}
    assert got == want
    bad = httpx.get(api, params={"StudyInstanceUID": f"{env['study']}\\1.2.x"}, timeout=30)
    assert bad.status_code == 400 and "1.2.x" in bad.json()["error"]
    many = "\\".join(["1.2.3"] * 201)
    too_many = httpx.get(api, params={"StudyInstanceUID": many}, timeout=30)
    assert too_many.status_code == 400 and "at most 200" in too_many.json()["error"]
