"""OHIF v3 served by the node (``ohif_dir``) in a real browser: the study
list shows what the node holds and the viewer renders an image, with no
failed request and none to another host.

OHIF is fetched once per machine with ``npm pack @ohif/app`` into a cache
outside the repository (``~/.cache/pacsnode-tests/ohif``, or
``$PACSNODE_TEST_CACHE/ohif``); later runs reuse it."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from browser import browser, record, shot, storescu, write_series  # noqa: F401
from conftest import PacsnodeServer, require_tool

OHIF_PACKAGE = "@ohif/app@3.12.10"
pytestmark = pytest.mark.timeout(300)


def ohif_cache() -> Path:
    root = os.environ.get("PACSNODE_TEST_CACHE") or Path.home() / ".cache" / "pacsnode-tests"
    return Path(root) / "ohif"


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    """The dist/ folder of @ohif/app, fetched by npm pack when not cached."""
    cache = ohif_cache()
    version = OHIF_PACKAGE.rsplit("@", 1)[1]
    dist = cache / version / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = require_tool("npm", "npm")
    cache.mkdir(parents=True, exist_ok=True)
    packed = subprocess.run([npm, "pack", OHIF_PACKAGE, "--pack-destination", str(cache)],
                            capture_output=True, text=True, timeout=900)
    assert packed.returncode == 0, packed.stderr[-2000:]
    tarball = cache / packed.stdout.strip().splitlines()[-1]
    staging = cache / f"{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(staging, filter="data")
    staging.rename(cache / version)
    tarball.unlink()
    return dist


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, ohif_dist: Path) -> Iterator[dict[str, Any]]:
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
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(90_000)
    page = context.new_page()
    rec = record(page)
    try:
        page.goto(base + "/ohif/")
        page.locator("text=OHIF1").first.wait_for()  # the patient ID column
        listing = page.inner_text("body")
        assert "Ohif" in listing and "OHIF CT" in listing  # name, study description
        shot(page, node["shots"], "ohif-list")
        page.goto(f"{base}/ohif/viewer?StudyInstanceUIDs={study}")
        canvas = page.locator("canvas.cornerstone-canvas").first
        canvas.wait_for()
        # Wait until the viewport shows the image: more than one grey level.
        image = None
        for _ in range(60):
            png = canvas.screenshot()
            image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
            if image.std() > 10:
                break
            page.wait_for_timeout(500)
        assert image is not None and image.std() > 10, "OHIF rendered no image"
        shot(page, node["shots"], "ohif-viewer")
        assert not rec.failures, rec.failures
        assert all(url.startswith(base) or url.startswith(("data:", "blob:"))
                   for _m, url, _b in rec.requests), \
            [u for _m, u, _b in rec.requests if not u.startswith(base)]
        assert any(f"/dicomweb/studies/{study}" in u for _m, u, _b in rec.requests)
    finally:
        context.close()
