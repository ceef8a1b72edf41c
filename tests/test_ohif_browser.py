"""OHIF v3 served by the node (``ohif_dir``) in a real browser: the study
list shows what the node holds and the viewer renders an image, with no
failed request and none to another host.

OHIF comes from ``ohif_package`` (fetched once per machine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import browser, open_page, shot, storescu, write_series  # noqa: F401
from conftest import PacsnodeServer
from ohif_package import ohif_dist, rendered_canvas  # noqa: F401

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory,
         ohif_dist: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    work = tmp_path_factory.mktemp("ohif")
    (work / "data").mkdir()
    server = PacsnodeServer(work / "data", extra_env={"PACSNODE_OHIF_DIR": str(ohif_dist),
                                                      "PACSNODE_FSYNC": "false"}).start()
    try:
        ct = write_series(work / "ct", 12, patient_name="Ohif^Ct", patient_id="OHIF1",
                          size=128, description="OHIF CT")
        storescu(server, ct[2])
        shots = work / "ohif-shots"
        shots.mkdir()
        yield {"server": server, "ct": ct, "shots": shots}
    finally:
        server.stop()


def test_ohif_lists_the_studies_and_renders_an_image(browser: Any,  # noqa: F811
                                                     node: dict[str, Any]) -> None:
    base = node["server"].base_url
    study = node["ct"][0]
    with open_page(browser, width=1400, timeout_ms=90_000) as page:
        rec = page.recorder
        page.goto(base + "/ohif/")
        page.locator("text=OHIF1").first.wait_for()  # the patient ID column
        listing = page.inner_text("body")
        assert "Ohif" in listing and "OHIF CT" in listing  # name, study description
        shot(page, node["shots"], "ohif-list")
        page.goto(f"{base}/ohif/viewer?StudyInstanceUIDs={study}")
        rendered_canvas(page)
        shot(page, node["shots"], "ohif-viewer")
        assert not rec.failures, rec.failures
        assert all(url.startswith(base) or url.startswith(("data:", "blob:"))
                   for _m, url, _b in rec.requests), \
            [u for _m, u, _b in rec.requests if not u.startswith(base)]
        assert any(f"/dicomweb/studies/{study}" in u for _m, u, _b in rec.requests)
