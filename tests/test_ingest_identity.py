"""Same data set, same instance (DESIGN.md §7): an instance stored by
C-STORE (DCMTK storescu: pacsnode writes its own file meta), STOW-RS and
`pacsnode import` (each with the sender's file meta, here each a different
one) in every order counts as stored once and then "already stored" —
under every duplicate policy, on SQLite and PostgreSQL: one instance, the
first copy's file kept, one change-feed row, nothing replaced or refused.
A data set that does differ is still told apart."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

import conftest
from conftest import PacsnodeServer
from dicomfiles import dataset_bytes, make_ct

PATHS = ("cstore", "stow", "import")
ORDERS = list(itertools.permutations(PATHS))
BOUNDARY = "identity-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
FAILED, FAILURE, REFERENCED = "00081198", "00081197", "00081199"


@pytest.fixture(scope="module", params=[(db, policy) for db in ("sqlite", "postgresql")
                                        for policy in ("replace", "keep", "reject")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsnodeServer]:
    db, policy = request.param
    base = tmp_path_factory.mktemp(f"identity-{db}-{policy}")
    url = f"sqlite:///{base / 'index.sqlite'}"
    if db == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
    (base / "data").mkdir()
    node = PacsnodeServer(base / "data", database_url=url,
                          extra_env={"PACSNODE_DUPLICATE_POLICY": policy}).start()
    node.policy = policy  # type: ignore[attr-defined]
    yield node
    node.stop()


def with_meta(source: Path, target: Path, *, source_aet: str, implementation: str) -> None:
    """``source``'s data set bytes behind another file meta."""
    ds = dcmread(source, stop_before_pixels=True)
    meta = FileMetaDataset(ds.file_meta)
    meta.ImplementationClassUID = implementation
    meta.ImplementationVersionName = source_aet[:16]
    meta.SourceApplicationEntityTitle = source_aet
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    target.write_bytes(buf.getvalue() + dataset_bytes(source))


def storescu(server: PacsnodeServer, files: list[Path]) -> None:
    proc = conftest.storescu(server, files, "IDENTITY")
    assert "E:" not in proc.stderr, proc.stderr


def stow(server: PacsnodeServer, files: list[Path]) -> httpx.Response:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + f.read_bytes() + b"\r\n" for f in files) + f"--{BOUNDARY}--\r\n".encode()
    return httpx.post(server.base_url + "/dicomweb/studies", content=body,
                      headers={"Content-Type": STOW_TYPE}, timeout=60)


def import_(server: PacsnodeServer, files: list[Path], folder: Path) -> str:
    folder.mkdir()
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pacsnode", "import", str(folder),
                           "--data-dir", str(server.data_dir), "--database-url",
                           server.database_url], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def changes(server: PacsnodeServer) -> list[tuple[str, str]]:
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(text(
                "SELECT instance_uid, action FROM changes WHERE level = 'instance' "
                "ORDER BY seq"))]
    finally:
        engine.dispose()


def test_same_data_set_by_every_path_in_every_order(server: PacsnodeServer,
                                                    tmp_path: Path) -> None:
    # One instance per order; each path gets its own copy of the file: the
    # same data set bytes behind different file meta.
    copies: list[dict[str, Path]] = []
    for k in range(len(ORDERS)):
        original = tmp_path / f"original{k}.dcm"
        make_ct(original, patient_id=f"IDENT{k}", size=32)
        copy = {"cstore": original}
        for path, aet, impl in (("stow", "STOWER", "1.2.3.4.100"),
                                ("import", "IMPORTER", "1.2.3.4.200")):
            copy[path] = tmp_path / f"{path}{k}.dcm"
            with_meta(original, copy[path], source_aet=aet, implementation=impl)
            assert dataset_bytes(copy[path]) == dataset_bytes(original)
            assert copy[path].read_bytes() != original.read_bytes()
        copies.append(copy)
    sops = [dcmread(c["cstore"], stop_before_pixels=True).SOPInstanceUID for c in copies]

    for step in range(len(PATHS)):
        due = {path: [copies[k][path] for k, order in enumerate(ORDERS) if order[step] == path]
               for path in PATHS}
        expected = "stored" if step == 0 else "already stored"
        storescu(server, due["cstore"])
        r = stow(server, due["stow"])
        assert r.status_code == 200 and "warning" not in r.headers, (step, r.text)
        assert len(r.json()[REFERENCED]["Value"]) == len(due["stow"])
        out = import_(server, due["import"], tmp_path / f"import{step}")
        stored, again = (len(due["import"]), 0) if step == 0 else (0, len(due["import"]))
        assert f"stored {stored}, replaced 0, already stored {again}, refused 0, failed 0" \
            in out, (expected, out)

    # One instance each, its first copy's file kept (the file meta says who
    # stored it first), one change-feed row each.
    for k, (order, sop) in enumerate(zip(ORDERS, sops)):
        blob = next((server.data_dir / "studies").rglob(f"{sop}.dcm"))
        assert dataset_bytes(blob) == dataset_bytes(copies[k]["cstore"])
        implementation = dcmread(blob, stop_before_pixels=True).file_meta.ImplementationClassUID
        first = dcmread(copies[k][order[0]], stop_before_pixels=True).file_meta
        if order[0] == "cstore":
            assert implementation not in ("1.2.3.4.100", "1.2.3.4.200")
        else:
            assert implementation == first.ImplementationClassUID
    feed = [c for c in changes(server) if c[0] in sops]
    assert sorted(feed) == sorted((sop, "stored") for sop in sops)
    r = httpx.get(server.base_url + "/dicomweb/instances",
                  params={"PatientID": "IDENT*", "limit": "100"})
    assert sorted(i["00080018"]["Value"][0] for i in r.json()) == sorted(sops)
    assert "replaced instance" not in server.log()


def test_a_different_data_set_is_still_told_apart(server: PacsnodeServer,
                                                  tmp_path: Path) -> None:
    """The policy applies when the data set does differ (here one byte of
    the patient's name)."""
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    ds = make_ct(first, patient_id="DIFF1", patient_name="Doe^Jane")
    ds.PatientName = "Doe^Jano"
    ds.save_as(second, enforce_file_format=True)
    assert stow(server, [first]).status_code == 200
    r = stow(server, [second])
    policy = server.policy  # type: ignore[attr-defined]
    if policy == "replace":
        assert r.status_code == 200
        expected = [(ds.SOPInstanceUID, "stored"), (ds.SOPInstanceUID, "replaced")]
        kept = "Doe^Jano"
    elif policy == "keep":
        assert r.status_code == 202 and "was kept" in r.headers["warning"]
        expected, kept = [(ds.SOPInstanceUID, "stored")], "Doe^Jane"
    else:
        assert r.status_code == 409
        assert r.json()[FAILED]["Value"][0][FAILURE]["Value"] == [45070]
        expected, kept = [(ds.SOPInstanceUID, "stored")], "Doe^Jane"
    assert [c for c in changes(server) if c[0] == ds.SOPInstanceUID] == expected
    blob = next((server.data_dir / "studies").rglob(f"{ds.SOPInstanceUID}.dcm"))
    assert str(dcmread(blob).PatientName) == kept
