"""Starting and stopping the servers under test, on free loopback ports.

Every server gets its own folder under the run's temp root and is stopped by
its PID (SIGTERM, then SIGKILL).  ``Fleet`` remembers what it started so a
``with Fleet(...)`` block stops everything even when a measurement fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["Server", "Fleet", "free_port", "dcmtk_env", "ORTHANC", "ORTHANC_DICOMWEB",
           "BENCH_AET", "tool_version"]

ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: Our calling AE title in every DCMTK tool.
BENCH_AET = "BENCH"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: Debian's 3.6.7 leaves Nagle on otherwise."""
    return dict(os.environ, TCP_NODELAY="1")


def spread_folders(root: Path) -> None:
    """Have ext4 place each folder made under ``root`` in a block group of
    its own (the Orlov allocator's "top directory" flag, ``chattr +T``).

    Without it every server's files get inodes from the same groups as the
    previous run's, which was just deleted, and on a journal-less ext4 (this
    VM's root) each new file then scans the recently deleted inodes before
    taking one (``recently_deleted()`` in ``find_inode_bit``): creating a
    file cost 0.2-0.8 ms of kernel CPU instead of 0.04 ms, growing with what
    the previous run deleted -- a cost of the harness, not of a server, and
    one that differed with the order the servers ran in.  Best effort: other
    filesystems have no such flag."""
    try:
        subprocess.run(["chattr", "+T", str(root)], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pass


def tool_version(cmd: list[str]) -> str:
    """First line of a program's version output, or '' when it cannot run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _listening(port: int) -> bool:
    """Whether some socket listens on ``port`` (read from /proc/net/tcp*, so
    no probe connection reaches the server: an empty one can hold a DICOM
    server's shutdown until its association timeout)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        if _listening(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


@dataclass
class Server:
    """One running server process and how to reach it."""

    name: str  # "pacsnode", "before" (pacsnode at --before), "orthanc" or "storescp"
    aet: str
    dicom_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    http_port: int | None = None
    #: Base URL of its DICOMweb service (no trailing slash).
    dicomweb: str = ""
    #: Where storescp writes what it receives.
    output: Path | None = None
    #: pacsnode's --data-dir (its index.sqlite is there).
    data_dir: Path | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def peak_rss_mib(self) -> float:
        """High-water marks of the resident set (VmHWM) since start, summed over
        the server and the processes it started (pacsnode's DIMSE workers):
        an upper bound, since pages they share (the interpreter, libraries)
        count once per process."""
        return sum(_status_kib(pid, "VmHWM") for pid in _process_tree(self.pid)) / 1024

    def rss_mib(self) -> float:
        return sum(_status_kib(pid, "VmRSS") for pid in _process_tree(self.pid)) / 1024

    def cpu_seconds(self) -> float:
        """User and system CPU time the server has used since start (every
        thread, dead ones included), summed over its process tree.  Kernel
        work done on its behalf elsewhere (writeback and AIO fsync workers,
        softirqs) is not in it.  A process gone meanwhile (a server that
        failed, a worker that exited) counts nothing rather than raising,
        so a failed run still reports storescu's error."""
        return sum(_cpu_seconds(pid) for pid in _process_tree(self.pid))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, read from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                pass
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc/<pid>/stat (fields 14 and 15);
    0 when it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/{pid}/status")


class Fleet:
    """Starts servers in folders under ``root``; stops all of them on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[Server] = []

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()

    def _workdir(self, name: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))

    def stop(self, server: Server, *, remove: bool = True) -> None:
        """Stop one server and (by default) delete its folder."""
        server.stop()
        if server in self.servers:
            self.servers.remove(server)
        if remove:
            shutil.rmtree(server.workdir, ignore_errors=True)

    def stop_all(self) -> None:
        for server in list(self.servers):
            try:
                self.stop(server)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop {server.name} (pid {server.pid}): {exc}",
                      file=sys.stderr)

    def _spawn(self, name: str, cmd: list[str], workdir: Path,
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path, Any]:
        # Every server starts on a quiet disk: storescp does not fsync, and
        # the ~1 GB of CT it leaves dirty is written back when it expires
        # (30 s later here), during whichever server's run is then under
        # way. (Right after a storescp run, pacsnode's CT ×1 was the same
        # with and without this sync, 6 paired rounds: the writeback had
        # not begun yet; the sync keeps it out of every later run too.)
        os.sync()
        log_path = workdir / f"{name}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(cmd, cwd=workdir, env=env or dict(os.environ),
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        return proc, log_path, log

    def _started(self, server: Server, ready: Callable[[], None]) -> Server:
        self.servers.append(server)
        try:
            ready()
        except Exception as exc:
            raise RuntimeError(f"{server.name} did not start: {exc}\n{server.log_tail()}") \
                from exc
        return server

    # -- the three kinds of server

    def pacsnode(self, *, data_dir: Path | None = None,
                 nodes: dict[str, tuple[str, int]] | None = None,
                 aet: str = "PACSNODE", database_url: str = "",
                 config: str = "", source: Path | None = None) -> Server:
        """``python -m pacsnode serve`` with default settings; ``nodes`` name
        → (AE title, port) become ``[nodes.NAME]`` tables of a TOML config;
        ``database_url`` puts the index elsewhere than SQLite in ``data_dir``;
        ``config``: TOML lines of settings (``auth = "on"``), written before
        the nodes; ``source``: the ``src`` folder of another revision's
        code (``--before``), served by the same Python under the name
        "before"."""
        name = "pacsnode" if source is None else "before"
        workdir = self._workdir(name)
        data = data_dir or workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        dicom_port, http_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "pacsnode", "serve", "--data-dir", str(data),
               "--dicom-port", str(dicom_port), "--http-port", str(http_port),
               "--ae-title", aet, "--host", "127.0.0.1"]
        if database_url:
            cmd += ["--database-url", database_url]
        if nodes or config:  # config: more TOML (settings before any [nodes.X])
            path = workdir / "pacsnode.toml"
            path.write_text(config + "".join(
                f'[nodes.{name}]\naet = "{node_aet}"\nhost = "127.0.0.1"\nport = {port}\n\n'
                for name, (node_aet, port) in (nodes or {}).items()))
            cmd += ["--config", str(path)]
        env = None
        if source is not None:
            env = dict(os.environ, PYTHONPATH=str(source))
        proc, log_path, log = self._spawn(name, cmd, workdir, env)
        server = Server(name, aet, dicom_port, workdir, proc, log_path, http_port,
                        f"http://127.0.0.1:{http_port}/dicomweb", data_dir=data, _log=log)
        # Health answers 200 only once the DIMSE listener accepts too.  (No
        # bare TCP probe of the DICOM port: an empty connection would hold
        # pacsnode's shutdown for its whole grace period.)
        return self._started(server, lambda: _wait_http(server.http + "/api/v1/health",
                                                        proc, 60.0))

    def orthanc(self, *, modalities: dict[str, tuple[str, int]] | None = None,
                aet: str = "ORTHANC") -> Server:
        """Debian's Orthanc with the DICOMweb plugin and its default SQLite
        index; ``modalities`` become ``DicomModalities`` (C-MOVE targets)."""
        if not Path(ORTHANC).exists():
            raise RuntimeError(f"{ORTHANC} not found: install the Debian packages "
                               "'orthanc' and 'orthanc-dicomweb' (make system-deps)")
        workdir = self._workdir("orthanc")
        dicom_port, http_port = free_port(), free_port()
        config: dict[str, Any] = {
            "Name": "pacsnode-bench",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": http_port,
            "DicomPort": dicom_port,
            "DicomAet": aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {name: [m_aet, "127.0.0.1", port]
                                for name, (m_aet, port) in (modalities or {}).items()},
            "DicomAssociationCloseDelay": 0,
            "Plugins": [ORTHANC_DICOMWEB] if Path(ORTHANC_DICOMWEB).exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 3600,
        }
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        proc, log_path, log = self._spawn("orthanc", [ORTHANC, str(config_path)], workdir,
                                          dcmtk_env())
        server = Server("orthanc", aet, dicom_port, workdir, proc, log_path, http_port,
                        f"http://127.0.0.1:{http_port}/dicom-web", _log=log)

        def ready() -> None:
            _wait_http(server.http + "/system", proc, 60.0)
            _wait_port(dicom_port, proc, 30.0)

        return self._started(server, ready)

    def storescp(self, *, aet: str = "STORESCP") -> Server:
        """DCMTK's storescp writing into a fresh folder (one process, no fork)."""
        exe = shutil.which("storescp")
        if exe is None:
            raise RuntimeError("storescp not found: install the Debian package 'dcmtk'")
        workdir = self._workdir("storescp")
        output = workdir / "received"
        output.mkdir()
        port = free_port()
        cmd = [exe, "--aetitle", aet, "--output-directory", str(output), "--accept-all",
               str(port)]
        proc, log_path, log = self._spawn("storescp", cmd, workdir, dcmtk_env())
        server = Server("storescp", aet, port, workdir, proc, log_path, output=output, _log=log)
        return self._started(server, lambda: _wait_port(port, proc, 30.0))
