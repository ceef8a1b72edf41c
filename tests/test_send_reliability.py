"""`pacsnode send` on the one requestor (``dimse.client``): 2,000 small
instances to DCMTK storescp, five times, every C-STORE acknowledged and every
file in storescp's folder with the bytes we sent; over several associations
(``--parallel``); and the CLI's exit status and summary."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dicomfiles import dataset_bytes, make_ct
from pydicom import dcmread

from pacsnode.remote import RemoteNode

COUNT = 2000
RUNS = 5


@pytest.fixture(scope="module")
def small_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2,000 small CT instances (8×8), two series, by SOP Instance UID."""
    folder = tmp_path_factory.mktemp("small")
    files: dict[str, Path] = {}
    for n in range(COUNT):
        path = folder / f"{n // 1000}" / f"{n:04d}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds = make_ct(path, instance=n + 1, size=8, patient_id=f"SEND{n // 1000}")
        files[str(ds.SOPInstanceUID)] = path
    return files


@pytest.fixture(scope="module")
def storescp(storescp_factory: Any) -> tuple[int, Path]:
    return storescp_factory("SENDSCP")


def _received(folder: Path) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
            for p in folder.iterdir() if p.is_file()}


def _empty(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _check_folder(folder: Path, files: dict[str, Path], seed: int) -> None:
    received = _received(folder)
    assert set(received) == set(files)
    for uid in random.Random(seed).sample(sorted(files), 25):
        assert dataset_bytes(received[uid]) == dataset_bytes(files[uid])


def test_send_2000_five_times_every_file_acknowledged(storescp: tuple[int, Path],
                                                      small_files: dict[str, Path]) -> None:
    port, out = storescp
    node = RemoteNode("SENDSCP", "127.0.0.1", port, calling_aet="RELIABLE", timeout=10)
    folder = next(iter(small_files.values())).parent.parent
    for run in range(RUNS):
        _empty(out)
        seen: list[str] = []
        results = node.send(folder, on_result=lambda r: seen.append(str(r.sop_instance_uid)))
        assert len(results) == COUNT, f"run {run}"
        assert [r.status for r in results] == [0x0000] * COUNT, f"run {run}"
        assert sorted(seen) == sorted(small_files), f"run {run}"
        assert [r.path for r in results] == sorted(small_files.values())
        assert [r.sop_instance_uid for r in results] == sorted(
            small_files, key=lambda uid: small_files[uid])
        _check_folder(out, small_files, run)


def test_send_parallel_associations(storescp: tuple[int, Path],
                                    small_files: dict[str, Path]) -> None:
    port, out = storescp
    _empty(out)
    node = RemoteNode("SENDSCP", "127.0.0.1", port, timeout=30)
    paths = list(small_files.values())[:400]
    results = node.send(paths, parallel=4)
    # One result per file, in the order given, whichever association sent it.
    assert [r.path for r in results] == paths
    assert all(r.ok and r.status == 0 for r in results)
    chosen = {uid: p for uid, p in small_files.items() if p in set(paths)}
    _check_folder(out, chosen, 99)


def test_cli_send_parallel_summary(storescp: tuple[int, Path],
                                   small_files: dict[str, Path]) -> None:
    port, out = storescp
    _empty(out)
    paths = [str(p) for p in list(small_files.values())[:100]]
    proc = subprocess.run([sys.executable, "-m", "pacsnode", "send", "--port", str(port),
                           "--aec", "SENDSCP", "--parallel", "3", *paths],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"sent 100 of 100 file(s) to SENDSCP@127.0.0.1:{port}" in proc.stderr
    assert len(_received(out)) == 100
