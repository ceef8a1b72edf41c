"""The built-in UI in a real browser (Debian's Chromium through Playwright)
against a real ``pacsnode serve``: studies arrive over DIMSE (DCMTK
storescu) and from an Orthanc peer (C-MOVE); the page is driven as a user
would and checked against what the archive holds.  Screenshots of each page
go to the module's tmp folder (``ui-shots``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from browser import (browser, canvas_grey, page, script_errors, shot,  # noqa: F401
                     storescu, write_series, zip_of)
from conftest import PacsnodeServer
from dicomfiles import make_ct
from orthanc_peer import start_orthanc
from web_server import STOW_TYPE, multipart_body

SLICES = 300
SIZE = 64
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("ui-browser")
    (work / "data").mkdir()
    server = PacsnodeServer(work / "data", aet="PACSNODE")
    modalities = {"PACSNODE": ["PACSNODE", "127.0.0.1", server.dicom_port]}
    with start_orthanc(work / "orthanc", modalities=modalities) as orthanc:
        config = work / "pacsnode.toml"
        config.write_text("fsync = false\n[nodes.ORTHANC]\naet = \"ORTHANC\"\n"
                          f"host = \"127.0.0.1\"\nport = {orthanc.dicom_port}\n")
        server.config = str(config)
        server.start()
        ct = write_series(work / "ct", SLICES, patient_name="Ui^Ct", patient_id="UICT",
                          size=SIZE, description="Chest CT", accession="ACC-CT",
                          study_date="20240105")
        mr = write_series(work / "mr", 3, patient_name="Ui^Mr", patient_id="UIMR",
                          modality="MR", description="Knee MR", accession="ACC-MR",
                          study_date="20230610", series_description="SAG PD")
        storescu(server, ct[2] + mr[2])
        remote = write_series(work / "remote", 5, patient_name="Remote^Peer",
                              patient_id="REMOTE1", description="From Orthanc")
        orthanc.upload(remote[2])
        shots = work / "ui-shots"
        shots.mkdir()
        client = httpx.Client(base_url=server.base_url, timeout=60)
        try:
            yield {"server": server, "orthanc": orthanc, "client": client, "work": work,
                   "ct": ct, "mr": mr, "remote": remote, "shots": shots}
        finally:
            client.close()
            server.stop()


def study_rows(page: Any) -> list[str]:
    page.wait_for_selector("table.studies")
    return page.locator("tr.study-row td.patient-name").all_inner_texts()


def qido_count(client: httpx.Client, **params: str) -> int:
    r = client.get("/dicomweb/studies", params=params)
    return 0 if r.status_code == 204 else len(r.json())


def test_study_list_shows_what_came_over_dimse(page: Any, env: dict[str, Any]) -> None:
    page.goto("/")
    assert page.url.endswith("/ui/")
    page.wait_for_selector("tr.study-row")
    rows = {r.get_attribute("data-study"): r.inner_text()
            for r in page.locator("tr.study-row").all()}
    ct_row, mr_row = rows[env["ct"][0]], rows[env["mr"][0]]
    assert "Ui^Ct" in ct_row and "UICT" in ct_row and "2024-01-05" in ct_row
    assert "ACC-CT" in ct_row and "Chest CT" in ct_row and str(SLICES) in ct_row
    assert "Ui^Mr" in mr_row and "MR" in mr_row and "Knee MR" in mr_row
    shot(page, env["shots"], "study-list")
    assert not script_errors(page.recorder)


def test_search_narrows_the_list(page: Any, env: dict[str, Any]) -> None:
    page.goto("/ui/")
    page.wait_for_selector("tr.study-row")
    page.fill("input[name=patientName]", "mr")
    page.click("form.search button[type=submit]")
    page.wait_for_function("document.querySelectorAll('tr.study-row').length === 1")
    assert study_rows(page) == ["Ui^Mr"]
    page.fill("input[name=patientName]", "")
    page.fill("input[name=modality]", "CT")
    page.fill("input[name=dateFrom]", "2024-01-01")
    page.click("form.search button[type=submit]")
    page.wait_for_function("[...document.querySelectorAll('tr.study-row td.patient-name')]"
                           ".every(td => td.textContent !== 'Ui^Mr')")
    assert "Ui^Ct" in study_rows(page) and "Ui^Mr" not in study_rows(page)
    page.fill("input[name=accession]", "no-such-accession")
    page.click("form.search button[type=submit]")
    page.wait_for_selector("p.empty")
    assert study_rows(page) == []
    shot(page, env["shots"], "search")
    page.click("text=Clear")


def expected_grey(path: Path, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear window of the file's modality values."""
    ds = dcmread(path)
    values = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) \
        + float(ds.get("RescaleIntercept", 0))
    grey = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(grey, 0, 255).ravel()


def shown(page: Any) -> tuple[int, float, float, np.ndarray]:
    canvas = page.locator("canvas.image")
    slice_ = int(canvas.get_attribute("data-slice"))
    center = float(canvas.get_attribute("data-center"))
    width = float(canvas.get_attribute("data-width"))
    return slice_, center, width, np.array(canvas_grey(page), dtype=np.float64)


def test_viewer_windows_a_ct_slice_and_scrolls(page: Any, env: dict[str, Any]) -> None:
    study, series, files = env["ct"]
    page.goto(f"/ui/#/study/{study}")
    card = page.locator(f"a.series-card[data-series='{series}']")
    card.wait_for()
    assert f"{SLICES} instances" in card.inner_text()
    page.wait_for_function("[...document.querySelectorAll('img.thumb')].length > 0")
    shot(page, env["shots"], "study")
    card.click()
    page.wait_for_selector("canvas.image[data-slice]")
    index, center, width, grey = shown(page)
    width_attr = page.locator("canvas.image").get_attribute("data-width")
    assert index == SLICES // 2  # opens in the middle; slices ordered by position
    assert grey.size == SIZE * SIZE
    assert np.abs(grey - expected_grey(files[index], center, width)).max() <= 1.0
    # Window/level by dragging.
    box = page.locator("canvas.image").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 - 120, box["y"] + box["height"] / 2 + 60,
                    steps=5)
    page.mouse.up()
    page.wait_for_function("w => document.querySelector('canvas.image').dataset.width !== w",
                           arg=width_attr)
    _, center2, width2, grey2 = shown(page)
    assert (center2, width2) != (center, width)
    assert np.abs(grey2 - grey).max() > 10  # the pixels changed …
    assert np.abs(grey2 - expected_grey(files[index], center2, width2)).max() <= 1.0  # … rightly
    # A preset.
    page.click("button:text('Bone')")
    page.wait_for_function("document.querySelector('canvas.image').dataset.center === '400'")
    assert np.abs(shown(page)[3] - expected_grey(files[index], 400, 1800)).max() <= 1.0
    # The value under the cursor: modality value (stored × slope + intercept).
    x, y = 10, 20
    page.mouse.move(box["x"] + (x + 0.5) * box["width"] / SIZE,
                    box["y"] + (y + 0.5) * box["height"] / SIZE)
    ds = dcmread(files[index])
    want = int(ds.pixel_array[y, x]) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    page.wait_for_selector(".pixel-value")
    assert page.inner_text(".probe").startswith(f"x {x}, y {y}:")
    assert page.inner_text(".pixel-value") == str(want)
    shot(page, env["shots"], "viewer")
    # Scrolling: the wheel moves one slice; every slice gets prefetched.
    page.mouse.wheel(0, 120)
    page.wait_for_function(f"document.querySelector('canvas.image').dataset.slice === "
                           f"'{index + 1}'")
    assert np.abs(shown(page)[3] - expected_grey(files[index + 1], 400, 1800)).max() <= 1.0
    page.wait_for_function(f"document.querySelector('.viewer-tools .muted').textContent === "
                           f"'loaded {SLICES}'", timeout=60_000)
    for _ in range(30):  # from the cache: no wait on the network
        page.keyboard.press("ArrowDown")
    page.wait_for_function(f"document.querySelector('canvas.image').dataset.slice === "
                           f"'{index + 31}'")
    assert np.abs(shown(page)[3] - expected_grey(files[index + 31], 400, 1800)).max() <= 1.0
    frames = [u for m, u, _ in page.recorder.requests if "/frames/1" in u]
    assert len(frames) == SLICES and len(set(frames)) == SLICES  # each slice fetched once
    assert not script_errors(page.recorder)


def test_upload_a_zip_then_delete_the_study(page: Any, env: dict[str, Any],
                                             tmp_path: Path) -> None:
    study, _series, files = write_series(tmp_path / "src", 3, patient_name="Zip^Upload",
                                         patient_id="ZIPUP")
    archive = zip_of(tmp_path / "upload.zip", files)
    page.goto("/ui/#/upload")
    page.set_input_files("input[data-upload=files]", str(archive))
    page.wait_for_selector(".upload-result:has-text('Done')")
    assert page.inner_text(".upload-result") == "Done: 3 stored of 3 files."
    shot(page, env["shots"], "upload")
    client = env["client"]
    stored = client.get(f"/dicomweb/studies/{study}/instances").json()
    assert len(stored) == 3
    page.goto("/ui/#/")
    page.fill("input[name=patientID]", "ZIPUP")
    page.click("form.search button[type=submit]")
    page.wait_for_function("document.querySelectorAll('tr.study-row').length === 1")
    assert study_rows(page) == ["Zip^Upload"]
    page.click("tr.study-row")
    page.wait_for_selector("h2.study-title")
    zip_link = page.locator("a:text('Download ZIP')")
    assert zip_link.get_attribute("href") == f"/api/v1/studies/{study}/archive"
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.accept()))
    page.click("button:text('Delete study')")
    page.wait_for_function("location.hash === '#/'")
    assert asked and "Zip^Upload" in asked[0]
    assert qido_count(client, StudyInstanceUID=study) == 0
    page.wait_for_selector("p.empty")  # the list keeps its search: patient ID ZIPUP
    assert study_rows(page) == []


def test_a_declined_delete_keeps_the_study(page: Any, env: dict[str, Any]) -> None:
    study = env["mr"][0]
    page.goto(f"/ui/#/study/{study}")
    page.wait_for_selector("h2.study-title")
    page.once("dialog", lambda d: d.dismiss())
    page.click("button:text('Delete study')")
    page.wait_for_timeout(300)
    assert qido_count(env["client"], StudyInstanceUID=study) == 1
    assert not any(m == "DELETE" for m, _u, _b in page.recorder.requests)


def test_retrieve_from_orthanc_shows_progress_to_completion(page: Any,
                                                            env: dict[str, Any]) -> None:
    study = env["remote"][0]
    page.goto("/ui/#/remote")
    row = page.locator("tr.node-row[data-node=ORTHANC]")
    row.wait_for()
    row.locator("button:text('Echo')").click()
    page.wait_for_selector("tr.node-row[data-node=ORTHANC] .echo-result:has-text('ok')")
    page.fill("form.remote-query input[name=PatientID]", "REMOTE1")
    page.click("form.remote-query button[type=submit]")
    result = page.locator(f"tr.remote-row[data-study='{study}']")
    result.wait_for()
    assert "Remote^Peer" in result.inner_text() and page.locator("tr.remote-row").count() == 1
    result.locator("button.retrieve").click()
    done = page.locator("tr.job-row[data-state=succeeded]")
    done.wait_for(timeout=60_000)
    assert done.locator(".job-count").inner_text() == "5 / 5"
    assert done.locator("progress").get_attribute("value") == "5"
    shot(page, env["shots"], "remote")
    assert len(env["client"].get(f"/dicomweb/studies/{study}/instances").json()) == 5


def test_inspect_reads_a_local_zip_and_sends_nothing(page: Any, env: dict[str, Any],
                                                      tmp_path: Path) -> None:
    _study, _series, files = write_series(tmp_path / "local", 2, patient_name="Inspect^Only",
                                          patient_id="LOCAL1", size=32)
    archive = zip_of(tmp_path / "local.zip", files)
    page.goto("/ui/inspect")
    page.set_input_files("input[data-inspect=files]", str(archive))
    name = page.locator("tr.tag-row[data-keyword=PatientName] td.tag-value").first
    name.wait_for()
    assert name.inner_text() == "Inspect^Only"
    assert page.locator(".file-list li").count() == 2
    assert page.locator("tr.tag-row[data-keyword=SOPInstanceUID] td.tag-value").first \
        .inner_text() == str(dcmread(files[0]).SOPInstanceUID)
    assert page.locator(".preview canvas").is_visible()
    assert max(canvas_grey(page, ".preview canvas")) > 0
    page.fill("input.inspect-search", "patient")
    page.wait_for_function("document.querySelectorAll('tr.tag-row').length < 10")
    keywords = page.locator("tr.tag-row").evaluate_all("rs => rs.map(r => r.dataset.keyword)")
    assert "PatientName" in keywords and "PatientID" in keywords and "Rows" not in keywords
    shot(page, env["shots"], "inspect")
    base = env["server"].base_url
    assert page.recorder.requests
    for method, url, has_body in page.recorder.requests:
        assert method == "GET" and not has_body, (method, url)
        assert url.startswith(base), url
    assert qido_count(env["client"], PatientID="LOCAL1") == 0


def test_arrivals_update_live(page: Any, env: dict[str, Any], tmp_path: Path) -> None:
    page.goto("/ui/#/arrivals")
    page.wait_for_selector("table.arrivals")
    study, _series, files = write_series(tmp_path / "live", 4, patient_name="Live^Arrival",
                                         patient_id="LIVE1")
    storescu(env["server"], files)
    row = page.locator(f"tr.arrival-row[data-study='{study}']")
    row.wait_for()
    page.wait_for_function(f"document.querySelector(\"tr.arrival-row[data-study='{study}'] "
                           f".arrival-stored\").textContent === '4'")
    page.wait_for_selector(f"tr.arrival-row[data-study='{study}'] td:has-text('Live^Arrival')")
    shot(page, env["shots"], "arrivals")
    # Pushed over one event stream (GET /api/v1/changes/stream), not polled.
    feed = [u for _m, u, _b in page.recorder.requests if "/api/v1/changes" in u]
    streams = [u for u in feed if "/api/v1/changes/stream?since=" in u]
    assert len(streams) == 1 and feed == [env["server"].base_url + "/api/v1/changes/latest",
                                          *streams], feed


def test_system_page(page: Any, env: dict[str, Any]) -> None:
    from pacsnode import __version__
    page.goto("/ui/#/system")
    page.wait_for_selector("table.system td:has-text('ok')")
    assert __version__ in page.inner_text("table.system")
    page.wait_for_selector("h3:text('Jobs')")
    shot(page, env["shots"], "system")


def test_viewer_shows_a_compressed_series_decoded_by_the_node(page: Any,
                                                              env: dict[str, Any]) -> None:
    """JPEG 2000 lossless: the node sends the frame natively, the page windows it."""
    source = Path(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds = dcmread(source)
    r = env["client"].post("/dicomweb/studies", content=multipart_body([source.read_bytes()]),
                           headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 200, r.text
    page.goto(f"/ui/#/view/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}")
    page.wait_for_selector("canvas.image[data-slice]")
    _, center, width, grey = shown(page)
    assert grey.size == ds.Rows * ds.Columns
    assert np.abs(grey - expected_grey(source, center, width)).max() <= 1.0


def test_inspect_shows_a_baseline_jpeg_image(page: Any, env: dict[str, Any]) -> None:
    source = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds = dcmread(source)
    page.goto("/ui/inspect")
    page.set_input_files("input[data-inspect=files]", str(source))
    page.locator("tr.tag-row[data-keyword=TransferSyntaxUID] td.tag-value").wait_for()
    page.wait_for_function("document.querySelector('.preview canvas').width === "
                           f"{ds.Columns}")
    rgba = np.array(page.evaluate(
        """() => { const c = document.querySelector('.preview canvas');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             return Array.from(d); }"""),
        dtype=np.float64).reshape(ds.Rows, ds.Columns, 4)[..., :3]
    want = ds.pixel_array  # pydicom 3 answers YBR JPEG as RGB
    # Two JPEG decoders: the same picture up to rounding.
    assert np.abs(rgba - want.astype(np.float64)).mean() < 3


def test_paging_walks_through_every_match_once(page: Any, env: dict[str, Any],
                                               tmp_path: Path) -> None:
    parts = []
    for i in range(27):
        path = tmp_path / f"page{i}.dcm"
        make_ct(path, patient_id=f"PAGE{i:02d}", patient_name=f"Page^{i:02d}", size=8)
        parts.append(path.read_bytes())
    r = env["client"].post("/dicomweb/studies", content=multipart_body(parts),
                           headers={"Content-Type": STOW_TYPE})
    assert r.status_code == 200, r.text
    page.goto("/ui/")
    page.fill("input[name=patientID]", "PAGE")
    page.click("form.search button[type=submit]")
    # The unfiltered list (more than 25 studies) is on the page until the search answers.
    page.wait_for_function("[...document.querySelectorAll('tr.study-row td.patient-name')]"
                           ".filter(td => td.textContent.startsWith('Page^')).length === 25")
    first = study_rows(page)
    assert page.locator("button:text('Previous')").is_disabled()
    assert page.inner_text(".pager span") == "1–25"
    page.click("button:text('Next')")
    page.wait_for_function("document.querySelectorAll('tr.study-row').length === 2")
    second = study_rows(page)
    assert page.inner_text(".pager span") == "26–27"
    assert page.locator("button:text('Next')").is_disabled()
    assert sorted(first + second) == [f"Page^{i:02d}" for i in range(27)]
    page.click("button:text('Previous')")
    page.wait_for_function("document.querySelectorAll('tr.study-row').length === 25")
    assert study_rows(page) == first
