"""Shared test plumbing: free ports, real peers, and the rule that a missing
peer skips a test locally but fails it under CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Debian's DCMTK 3.6.7 leaves Nagle on unless told otherwise.
os.environ.setdefault("TCP_NODELAY", "1")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str, package: str) -> str:
    """Path of an external program, or skip (fail under CI) naming the package."""
    path = shutil.which(name) or next(
        (str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if p.exists()), None)
    if path:
        return path
    message = f"{name} not found: install the Debian package '{package}' (make test does, as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a server we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def dcmtk(tool: str) -> str:
    return require_tool(tool, "dcmtk")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def storescp_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Start DCMTK storescp instances writing into fresh folders."""
    procs: list[subprocess.Popen] = []

    def start(aet: str = "STORESCP") -> tuple[int, Path]:
        exe = dcmtk("storescp")
        out = tmp_path_factory.mktemp("storescp")
        port = free_port()
        proc = subprocess.Popen([exe, "--aetitle", aet, "--output-directory", str(out),
                                 "--accept-all", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_port(port, proc=proc)
        return port, out

    yield start
    for p in procs:
        stop_process(p)
