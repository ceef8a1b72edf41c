"""OHIF v3 for the browser tests: the ``ohif_dist`` fixture is the ``dist/``
folder of the npm package ``@ohif/app``, fetched once per machine with
``npm pack`` into a cache outside the repository
(``~/.cache/pacsnode-tests/ohif``, or ``$PACSNODE_TEST_CACHE/ohif``); later
runs reuse it.  ``rendered_canvas`` waits until OHIF's viewport shows an
image."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import require_tool

__all__ = ["OHIF_PACKAGE", "ohif_cache", "ohif_dist", "rendered_canvas"]

OHIF_PACKAGE = "@ohif/app@3.12.10"


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


def rendered_canvas(page: Any, tries: int = 60) -> np.ndarray:
    """The grey levels of OHIF's first viewport once it shows an image (more
    than one grey level); fails when it never does."""
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for()
    image = None
    for _ in range(tries):
        image = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"))
        if image.std() > 10:
            return image
        page.wait_for_timeout(500)
    raise AssertionError("OHIF rendered no image")
