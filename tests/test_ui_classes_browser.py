"""Series classes in the built-in UI (DESIGN §9, §10), in a real browser:
labelled MR series of tests/data/classify_series.json (a Siemens T1 spin
echo, a T2 turbo spin echo) sent over DIMSE to a running ``pacsnode
serve``; the study's page shows each series' class on its card, as
``GET /api/v1/series/{uid}/classification`` answers it.  Screenshots go to
the module's tmp folder (``classes-shots``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from browser import browser, record, script_errors, shot, storescu  # noqa: F401
from conftest import PacsnodeServer
from test_series_classes import write_series

PICKS = {"sie-t1-se-1": ["T1"], "sie-t2-tse-2": ["T2"]}
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("ui-classes")
    (work / "data").mkdir()
    server = PacsnodeServer(work / "data", extra_env={"PACSNODE_FSYNC": "false"}).start()
    try:
        study = generate_uid()
        made = write_series(work / "in", study, PICKS, patient_id="UICLASS")
        storescu(server, [f for _uid, files in made.values() for f in files])
        shots = work / "classes-shots"
        shots.mkdir()
        yield {"server": server, "study": study, "made": made, "shots": shots}
    finally:
        server.stop()


@pytest.fixture
def page(browser: Any, env: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  base_url=env["server"].base_url)
    context.set_default_timeout(30_000)
    p = context.new_page()
    p.recorder = record(p)
    yield p
    context.close()


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
