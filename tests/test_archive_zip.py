"""GET /api/v1/studies/{study}/archive: the study's files as a streamed ZIP
of <SeriesInstanceUID>/<SOPInstanceUID>.dcm, byte for byte as stored, in
memory that does not grow with the study."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from pathlib import Path

import httpx
import numpy as np

from pacsnode.events import Origin
from pacsnode.ingest import Outcome
from pacsnode.retrieve import locate
from web_server import WebServer, make_instance, uid, web  # noqa: F401


def test_zip_holds_every_file_as_stored(web: WebServer) -> None:
    s, se1, se2 = uid(), uid(), uid()
    files = {}
    for se, count in ((se1, 2), (se2, 1)):
        for n in range(count):
            sop = uid()
            files[f"{se}/{sop}.dcm"] = make_instance(s, se, sop, instance_number=n + 1)
    other = uid()
    assert web.stow(list(files.values()) + [make_instance(other, uid(), uid())]).status_code \
        == 200
    r = httpx.get(f"{web.base_url}/api/v1/studies/{s}/archive", timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == f'attachment; filename="{s}.zip"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == sorted(files)
        for ref in locate(web.node, s):
            name = f"{ref.series_uid}/{ref.sop_instance_uid}.dcm"
            assert archive.read(name) == ref.path.read_bytes()


def test_unknown_and_malformed_studies(web: WebServer) -> None:
    r = httpx.get(f"{web.base_url}/api/v1/studies/{uid()}/archive", timeout=30)
    assert r.status_code == 404 and "not in the archive" in r.json()["error"]
    r = httpx.get(f"{web.base_url}/api/v1/studies/1.2.abc/archive", timeout=30)
    assert r.status_code == 400 and "not a valid UID" in r.json()["error"]


#: Instances of the large study, and the size of each (bytes of pixel data).
LARGE_COUNT = 48
LARGE_PIXELS = 1024 * 1024 * 4  # 1024 x 2048 16-bit: ~4 MiB each, ~200 MiB in all


def _large_study(web: WebServer, tmp_path: Path) -> tuple[str, int]:
    s, se = uid(), uid()
    pixels = np.random.default_rng(7).integers(0, 4096, LARGE_PIXELS // 2, dtype=np.uint16)
    total = 0
    for n in range(LARGE_COUNT):
        path = tmp_path / "large.dcm"
        path.write_bytes(make_instance(s, se, uid(), instance_number=n + 1, rows=1024,
                                       columns=2048, pixels=pixels.tobytes()))
        result = web.node.ingestor.ingest_path(path, Origin("import"))
        assert result.outcome is Outcome.STORED, result
        total += path.stat().st_size
    return s, total


def test_large_study_streams_in_flat_memory(web: WebServer, tmp_path: Path) -> None:
    """~200 MB of study through the HTTP server in this process while
    tracemalloc watches every Python allocation (server and client): the
    peak stays a small constant, far below the size of the ZIP."""
    s, total = _large_study(web, tmp_path)
    received = 0
    out = tmp_path / "study.zip"
    tracemalloc.start()
    try:
        with httpx.stream("GET", f"{web.base_url}/api/v1/studies/{s}/archive",
                          timeout=120) as r, open(out, "wb") as fh:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += len(chunk)
                fh.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received > total  # every file, plus headers and the directory
    assert peak < 24 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a {received / 1e6:.0f} MB ZIP"
    assert peak * 8 < received
    refs = locate(web.node, s)
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == sorted(f"{r.series_uid}/{r.sop_instance_uid}.dcm"
                                                    for r in refs)
        for ref in (refs[0], refs[-1]):
            assert archive.read(f"{ref.series_uid}/{ref.sop_instance_uid}.dcm") == \
                ref.path.read_bytes()
