"""The SCU commands (echo, find, move, get, send) against Orthanc and DCMTK
storescp, through click's CliRunner and one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from conftest import ROOT, free_port
from orthanc_peer import Orthanc, start_orthanc
from pydicom import dcmread
from pydicom.dataset import Dataset
from test_volume import make_ct_series, pydicom_file, write_series

from pacsnode.remote import RemoteNode
from pacsnode.remote.commands import COMMANDS


@click.group()
def cli() -> None:
    """The remote commands alone, as pacsnode.cli registers them."""


for _command in COMMANDS:
    cli.add_command(_command)


def run(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def storescp(storescp_factory: Any) -> tuple[int, Path]:
    return storescp_factory("STORESCP")


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    return make_ct_series(6, seed=21, patient_id="CLI-1", series_description="AX CLI")


@pytest.fixture(scope="module")
def our_port() -> int:
    """Where `move --listen-port` listens, as AE "PYTEST"."""
    return free_port()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, storescp: tuple[int, Path],
            our_port: int, series: list[Dataset]) -> Iterator[Orthanc]:
    work = tmp_path_factory.mktemp("orthanc-cli")
    modalities = {"STORESCP": ["STORESCP", "127.0.0.1", storescp[0]],
                  "PYTEST": ["PYTEST", "127.0.0.1", our_port]}
    with start_orthanc(work / "peer", modalities=modalities) as peer:
        peer.upload([*write_series(series, work / "series"), pydicom_file("CT_small.dcm")])
        yield peer


def peer_args(orthanc: Orthanc) -> list[str]:
    return ["--port", str(orthanc.dicom_port), "--aec", orthanc.aet, "--aet", "PYTEST"]


def uids(datasets: list[Dataset]) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets}


def folder_uids(folder: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir()}


def clear(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()


def test_help_texts() -> None:
    for name in ("echo", "find", "move", "get", "send"):
        result = run(name, "--help")
        assert result.exit_code == 0
        assert "--port" in result.output and "--aec" in result.output
        assert "Example" in result.output


def test_echo(orthanc: Orthanc) -> None:
    result = run("echo", *peer_args(orthanc))
    assert result.exit_code == 0, result.output
    assert f"ORTHANC@127.0.0.1:{orthanc.dicom_port} answered C-ECHO in" in result.stdout


def test_echo_failure_exit_code() -> None:
    port = free_port()
    result = run("echo", "--port", port, "--aec", "GONE", "--timeout", "5")
    assert result.exit_code == 1
    assert f"GONE@127.0.0.1:{port}" in result.stderr and "cannot connect" in result.stderr


def test_find_json(orthanc: Orthanc, series: list[Dataset]) -> None:
    result = run("find", *peer_args(orthanc), "--level", "series", "-k", "PatientID=CLI-1",
                 "-k", "SeriesDescription=AX*", "-k", "BodyPartExamined", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 1
    hit = hits[0]
    assert hit["SeriesInstanceUID"] == series[0].SeriesInstanceUID
    assert hit["PatientID"] == "CLI-1" and hit["BodyPartExamined"] == ""
    assert hit["NumberOfSeriesRelatedInstances"] == 6
    node = RemoteNode(orthanc.aet, "127.0.0.1", orthanc.dicom_port)
    assert hits == node.find("SERIES", PatientID="CLI-1", SeriesDescription="AX*",
                             fields=["BodyPartExamined"])


def test_find_images_uid_list_and_no_match(orthanc: Orthanc, series: list[Dataset]) -> None:
    wanted = sorted(uids(series[:2]))
    result = run("find", *peer_args(orthanc), "-l", "IMAGE", "--no-defaults",
                 "-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}",
                 "-k", f"SOPInstanceUID={wanted[0]}", "-k", f"SOPInstanceUID={wanted[1]}",
                 "--json")
    assert result.exit_code == 0, result.output
    assert sorted(h["SOPInstanceUID"] for h in json.loads(result.stdout)) == wanted
    empty = run("find", *peer_args(orthanc), "-k", "PatientID=NOBODY", "--json")
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []


def test_find_table(orthanc: Orthanc) -> None:
    result = run("find", *peer_args(orthanc), "-k", "PatientID=CLI-1")
    assert result.exit_code == 0, result.output
    assert "1 STUDY match at ORTHANC" in result.stdout
    assert "CLI-1" in result.stdout and "StudyDate" in result.stdout


def test_find_bad_key_is_a_usage_error(orthanc: Orthanc) -> None:
    result = run("find", *peer_args(orthanc), "-k", "NoSuchKeyword=1")
    assert result.exit_code == 2
    assert "unknown attribute 'NoSuchKeyword'" in result.stderr
    result = run("find", *peer_args(orthanc), "--level", "PATIENT", "--model", "study")
    assert result.exit_code == 2 and "no PATIENT level" in result.stderr


def test_send_folder_to_storescp(storescp: tuple[int, Path], tmp_path: Path) -> None:
    port, outdir = storescp
    clear(outdir)
    datasets = make_ct_series(4, seed=22)
    write_series(datasets[:2], tmp_path / "in")
    write_series(datasets[2:], tmp_path / "in" / "deeper")
    result = run("send", "--port", port, "--aec", "STORESCP", tmp_path / "in")
    assert result.exit_code == 0, result.output
    assert "sent 4 of 4 file(s) to STORESCP@127.0.0.1" in result.stderr
    assert folder_uids(outdir) == uids(datasets)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for path in outdir.iterdir():
        got = dcmread(path)
        assert got.PixelData == by_uid[str(got.SOPInstanceUID)].PixelData
        assert got.PatientName == by_uid[str(got.SOPInstanceUID)].PatientName


def test_send_reports_failures(storescp: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = storescp
    path = write_series(make_ct_series(1, seed=23), tmp_path)[0]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 300)
    result = run("send", "--port", port, "--aec", "STORESCP", path, junk, tmp_path / "nope")
    assert result.exit_code == 1
    assert "sent 1 of 3 file(s)" in result.stderr and "2 failed" in result.stderr
    assert "junk.dcm: not a readable DICOM file" in result.stderr
    assert "nope: no such file or folder" in result.stderr


def test_move_to_storescp(orthanc: Orthanc, storescp: tuple[int, Path],
                          series: list[Dataset]) -> None:
    _, outdir = storescp
    clear(outdir)
    result = run("move", *peer_args(orthanc), "--dest", "STORESCP",
                 "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}",
                 "-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}")
    assert result.exit_code == 0, result.output
    assert "moved 6 instances" in result.stderr
    assert folder_uids(outdir) == uids(series)


def test_move_to_ourselves(orthanc: Orthanc, our_port: int, series: list[Dataset],
                           tmp_path: Path) -> None:
    out = tmp_path / "moved"
    result = run("move", *peer_args(orthanc), "--listen-port", our_port,
                 "--listen-host", "127.0.0.1", "--out", out,
                 "-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "-l", "SERIES")
    assert result.exit_code == 0, result.output
    assert "moved 6 instances" in result.stderr and f"to PYTEST into {out}" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{u}.dcm" for u in uids(series))
    assert folder_uids(out) == uids(series)


def test_move_failures(orthanc: Orthanc, series: list[Dataset]) -> None:
    result = run("move", *peer_args(orthanc), "--dest", "NOWHERE",
                 "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}")
    assert result.exit_code == 1
    assert "C-MOVE failed with status" in result.stderr and "ORTHANC@" in result.stderr
    result = run("move", *peer_args(orthanc), "--dest", "STORESCP", "-k", "PatientName=X")
    assert result.exit_code == 2 and "cannot tell the level" in result.stderr
    result = run("move", *peer_args(orthanc), "-k", "PatientID=X")
    assert result.exit_code == 2 and "give --dest" in result.stderr


def test_get_to_folder(orthanc: Orthanc, series: list[Dataset], tmp_path: Path) -> None:
    out = tmp_path / "got"
    result = run("get", *peer_args(orthanc), "--out", out,
                 "-k", f"StudyInstanceUID={series[0].StudyInstanceUID}",
                 "-k", f"SeriesInstanceUID={series[0].SeriesInstanceUID}")
    assert result.exit_code == 0, result.output
    assert "got 6 instances" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{u}.dcm" for u in uids(series))
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    for path in out.iterdir():
        got = dcmread(path)
        assert got.preamble is not None and got.file_meta.TransferSyntaxUID
        assert got.PixelData == by_uid[path.stem].PixelData


def test_get_study_of_test_file_by_level(orthanc: Orthanc, tmp_path: Path) -> None:
    ct = dcmread(pydicom_file("CT_small.dcm"))
    result = run("get", *peer_args(orthanc), "--out", tmp_path, "--level", "PATIENT",
                 "-k", f"PatientID={ct.PatientID}")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [f"{ct.SOPInstanceUID}.dcm"]


def test_registered_in_pacsnode_cli(orthanc: Orthanc) -> None:
    """The real entry point, in a subprocess: `python -m pacsnode echo`."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", "from pacsnode.cli import main; main()",
                           "echo", *peer_args(orthanc)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "answered C-ECHO" in proc.stdout
