"""Debian's Chromium driven by Playwright for Python, for the UI's browser
tests.  Playwright's own browser download cannot work here (and is never
called): the browser is ``/usr/bin/chromium`` from the Debian package,
launched headless with ``--no-sandbox`` (tests run as root).

Use the ``browser`` fixture (import it into a test module): one browser per
module; ``open_page`` opens a page in a fresh context of it (and the ``page``
fixture one on the node of the module's ``env`` fixture), whose
``recorder`` (a ``Recorder``) keeps the page's requests and failures;
``shot()`` saves a screenshot under the test's tmp folder.  Studies for the
pages: ``write_series`` (CT files), ``storescu`` (over DIMSE), ``zip_of``."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from conftest import require_tool, storescu
from dicomfiles import make_ct

__all__ = ["browser", "open_page", "page", "Recorder", "record", "script_errors", "shot",
           "canvas_grey", "write_series", "storescu", "zip_of"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium", "chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage",
                                     "--use-gl=angle", "--use-angle=swiftshader",
                                     "--enable-unsafe-swiftshader"])
        yield b
        b.close()


@dataclass
class Recorder:
    """What a page asked for: (method, url, has a body), and what failed
    (a network error or an HTTP status of 400 or more)."""

    requests: list[tuple[str, str, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


def record(page: Any) -> Recorder:
    rec = Recorder()

    def on_request(request: Any) -> None:
        body = request.post_data_buffer
        rec.requests.append((request.method, request.url, bool(body)))

    def on_response(response: Any) -> None:
        if response.status >= 400:
            rec.failures.append(f"{response.status} {response.request.method} {response.url}")

    page.on("request", on_request)
    page.on("response", on_response)
    page.on("requestfailed",
            lambda r: rec.failures.append(f"failed {r.method} {r.url}: {r.failure}"))
    page.on("console", lambda m: m.type == "error" and rec.console_errors.append(m.text))
    page.on("pageerror", lambda e: rec.console_errors.append(f"page error: {e}"))
    return rec


@contextmanager
def open_page(browser: Any, base_url: str | None = None, *, width: int = 1280,
              height: int = 900, timeout_ms: int = 30_000,
              init_script: str | None = None) -> Iterator[Any]:
    """A page in a new browser context (storage of its own), its requests
    and failures recorded in ``page.recorder``; ``init_script`` runs in
    the page before its own scripts.  The context is closed after."""
    options: dict[str, Any] = {"viewport": {"width": width, "height": height}}
    if base_url is not None:
        options["base_url"] = base_url
    context = browser.new_context(**options)
    try:
        if init_script is not None:
            context.add_init_script(init_script)
        context.set_default_timeout(timeout_ms)
        p = context.new_page()
        p.recorder = record(p)
        yield p
    finally:
        context.close()


@pytest.fixture
def page(browser: Any, env: dict[str, Any]) -> Iterator[Any]:  # noqa: F811
    """A page on the node of the module's ``env`` fixture (its "server")."""
    with open_page(browser, env["server"].base_url) as p:
        yield p


def script_errors(rec: Recorder) -> list[str]:
    """Errors of the page's scripts (not the console's notes on HTTP errors,
    which the tests look at in ``rec.failures``)."""
    return [e for e in rec.console_errors if "Failed to load resource" not in e]


def shot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def canvas_grey(page: Any, selector: str = "canvas.image") -> list[int]:
    """The red channel (the grey level) of every pixel of a canvas."""
    return page.evaluate(
        """(sel) => { const c = document.querySelector(sel);
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             const out = new Array(d.length / 4);
             for (let i = 0; i < out.length; i++) out[i] = d[4 * i];
             return out; }""", selector)


def write_series(folder: Path, n: int, **kw: Any) -> tuple[str, str, list[Path]]:
    study, series = kw.pop("study_uid", None) or generate_uid(), generate_uid()
    paths = []
    for i in range(1, n + 1):
        path = folder / series / f"{i:04d}.dcm"
        make_ct(path, study_uid=study, series_uid=series, instance=i, **kw)
        paths.append(path)
    return study, series, paths


def zip_of(path: Path, files: list[Path]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for f in files:
            z.write(f, f"dicom/{f.parent.name}/{f.name}")
    return path
