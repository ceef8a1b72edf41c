"""Shared test plumbing: free ports, real peers, and the rule that a missing
peer skips a test locally but fails it under CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Debian's DCMTK 3.6.7 leaves Nagle on unless told otherwise.
os.environ.setdefault("TCP_NODELAY", "1")


@contextmanager
def another_writer(db: object) -> Iterator[None]:
    """Another thread of this process holds ``db``'s write lock (an index
    ``Database``) for the block."""
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with db.write_lock():  # type: ignore[attr-defined]
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert held.wait(10)
        yield
    finally:
        release.set()
        thread.join()


#: Ports free_port gave out in this session.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not given out before in this session:
    the kernel may hand the same port to two binds in a row, and a server
    given two equal ports (DICOM and HTTP) fails to listen on the second."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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


def storescu(server: "PacsnodeServer", files: list[Path],
             aet: str = "MODALITY") -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sends ``files`` to ``server`` as ``aet`` (Nagle
    off) and must succeed; its output, for a test to look at."""
    result = subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", server.aet,
                             "127.0.0.1", str(server.dicom_port), *map(str, files)],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TCP_NODELAY="1"))
    assert result.returncode == 0, result.stderr
    return result


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


class PacsnodeServer:
    """A `pacsnode serve` subprocess on free loopback ports."""

    def __init__(self, data_dir: Path, aet: str = "PACSNODE", database_url: str = "",
                 config: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.aet = aet
        self.database_url = database_url
        self.config = config
        self.extra_env = extra_env or {}
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"serve-{self.dicom_port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> "PacsnodeServer":
        import sys
        import httpx
        cmd = [sys.executable, "-m", "pacsnode", "serve", "--data-dir", str(self.data_dir),
               "--ae-title", self.aet, "--dicom-port", str(self.dicom_port),
               "--http-port", str(self.http_port), "--host", "127.0.0.1"]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        if self.config:
            cmd += ["--config", self.config]
        env = dict(os.environ, **self.extra_env)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pacsnode serve exited {self.proc.returncode}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                r = httpx.get(self.base_url + "/api/v1/health", timeout=1)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("pacsnode serve did not become healthy:\n"
                           + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def cli_token(server: PacsnodeServer, name: str, role: str) -> str:
    """A new API token of ``role`` for ``server``'s data folder, made by
    ``pacsnode token create`` (before the server starts, or while it runs)."""
    import re
    import sys
    proc = subprocess.run([sys.executable, "-m", "pacsnode", "token", "create", name,
                           "--role", role, "--data-dir", str(server.data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (token,) = re.findall(r"pn_\S+", proc.stdout)
    return token


@pytest.fixture
def pacsnode_factory(tmp_path: Path) -> Iterator:
    """Start `pacsnode serve` processes; all are stopped after the test."""
    servers: list[PacsnodeServer] = []

    def start(**kw) -> PacsnodeServer:
        data = kw.pop("data_dir", None) or tmp_path / f"data{len(servers)}"
        data.mkdir(exist_ok=True)
        server = PacsnodeServer(data, **kw).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture
def pacsnode_server(pacsnode_factory) -> "PacsnodeServer":
    """One running node on SQLite in a fresh data dir."""
    return pacsnode_factory()


class PostgresCluster:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a free port,
    run as the `postgres` user when we are root (PostgreSQL refuses root)."""

    def __init__(self, base: Path) -> None:
        self.initdb = require_tool("initdb", "postgresql")
        self.pg_ctl = require_tool("pg_ctl", "postgresql")
        self.base = base
        self.port = free_port()
        self.datadir = base / "pgdata"
        self.sockdir = base / "sock"
        self._dbs = 0

    def _run(self, *cmd: str) -> None:
        if os.geteuid() == 0:
            cmd = ("runuser", "-u", "postgres", "--") + cmd
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> "PostgresCluster":
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            shutil.chown(self.sockdir, "postgres")
            self.base.chmod(0o755)
            for parent in list(self.base.parents)[:-1]:
                try:
                    parent.chmod(parent.stat().st_mode | 0o011)
                except PermissionError:
                    pass
        self._run(self.initdb, "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")
        self._run(self.pg_ctl, "-D", str(self.datadir), "-w", "-l", str(self.base / "pg.log"),
                  "-o", f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=200", "start")
        return self

    def new_database(self) -> str:
        import psycopg
        self._dbs += 1
        name = f"pacsnode_{self._dbs}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    # Not under pytest's tmp_path: a pytest session started beside this one
    # (as root) takes group and other access off /tmp/pytest-of-root, and the
    # server, running as `postgres`, then loses its data directory.
    base = Path(tempfile.mkdtemp(prefix="pacsnode-pg-"))
    try:
        cluster = PostgresCluster(base / "pg").start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Index URL on each supported database: the tests using it run twice."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    cluster = request.getfixturevalue("postgres")
    return cluster.new_database()
