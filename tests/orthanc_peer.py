"""A real Orthanc for integration tests: own config, own folders, loopback
ports, started from ``/usr/sbin/Orthanc`` and stopped by its PID.

Usage (in a test module)::

    from orthanc_peer import Orthanc, start_orthanc

    @pytest.fixture(scope="module")
    def orthanc(tmp_path_factory):
        with start_orthanc(tmp_path_factory.mktemp("orthanc")) as peer:
            yield peer

``Orthanc.upload(paths)`` stores files through the REST API
(``POST /instances``); ``Orthanc.get(path)`` answers the REST API's JSON so
tests can compare our C-FIND answers with Orthanc's own view.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conftest import free_port, require_tool, stop_process, wait_port

__all__ = ["Orthanc", "start_orthanc", "ORTHANC_BINARY"]

ORTHANC_BINARY = "/usr/sbin/Orthanc"


@dataclass
class Orthanc:
    """Handle on a running Orthanc: its ports, AE title and REST client."""

    aet: str
    dicom_port: int
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    client: httpx.Client = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params or None)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any) -> Any:
        response = self.client.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def upload(self, paths: Iterable[Path | str]) -> list[str]:
        """Store files through ``POST /instances``; return Orthanc instance ids."""
        ids = []
        for path in paths:
            response = self.client.post("/instances", content=Path(path).read_bytes(),
                                        headers={"Content-Type": "application/dicom"})
            response.raise_for_status()
            ids.append(response.json()["ID"])
        return ids

    def clear(self) -> None:
        """Delete every patient (and so everything) Orthanc holds."""
        for patient in self.get("/patients"):
            self.client.delete(f"/patients/{patient}").raise_for_status()

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""


def write_config(workdir: Path, *, aet: str, dicom_port: int, http_port: int,
                 modalities: dict[str, list[Any]] | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write Orthanc's configuration JSON into ``workdir`` and return its path."""
    config: dict[str, Any] = {
        "Name": "pacsnode-test-peer",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        # Let any calling AE query and retrieve; destinations still have to
        # be declared in DicomModalities.
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": modalities or {},
        "Plugins": [],
        "HttpServerEnabled": True,
        "DicomScuTimeout": 10,
        "DicomScpTimeout": 30,
        # Close Orthanc's outgoing associations (C-MOVE) at once, not after 5 s,
        # so a destination can be stopped without waiting.
        "DicomAssociationCloseDelay": 0,
        "StableAge": 3600,
    }
    config.update(extra or {})
    path = workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@contextmanager
def start_orthanc(workdir: Path, *, aet: str = "ORTHANC",
                  modalities: dict[str, list[Any]] | None = None,
                  extra: dict[str, Any] | None = None,
                  timeout: float = 30.0) -> Iterator[Orthanc]:
    """Run Orthanc in ``workdir`` until the block ends.

    ``modalities`` becomes ``DicomModalities``, e.g.
    ``{"STORESCP": ["STORESCP", "127.0.0.1", 11113]}`` to declare a C-MOVE
    destination.  Skips the test when Orthanc is not installed (fails under
    ``CI=true``).
    """
    exe = ORTHANC_BINARY if Path(ORTHANC_BINARY).exists() else require_tool("Orthanc", "orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = write_config(workdir, aet=aet, dicom_port=dicom_port, http_port=http_port,
                          modalities=modalities, extra=extra)
    env = dict(os.environ, TCP_NODELAY="1")
    log = open(workdir / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(config)], cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30.0)
    try:
        wait_port(http_port, timeout=timeout, proc=proc)
        _wait_ready(client, proc, timeout)
        wait_port(dicom_port, timeout=timeout, proc=proc)
        yield Orthanc(aet=aet, dicom_port=dicom_port, http_port=http_port,
                      workdir=workdir, process=proc, client=client)
    finally:
        client.close()
        stop_process(proc)
        log.close()


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Orthanc opens its HTTP port a little before it answers; wait for /system."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}")
        try:
            if client.get("/system").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("Orthanc did not answer GET /system")
