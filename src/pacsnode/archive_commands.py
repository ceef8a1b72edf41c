"""CLI commands of the archive: serve, import, check."""

from __future__ import annotations

import logging
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from .config import SETTINGS, Settings, load_settings

COMMANDS: list[click.Command] = []


def _settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One click option per setting (declared once in config.SETTINGS)."""
    for setting in reversed(SETTINGS):
        if not setting.cli:
            continue
        flag = "--" + setting.name.replace("_", "-")
        if setting.type is bool:
            func = click.option(flag + "/--no-" + setting.name.replace("_", "-"),
                                setting.name, default=None, help=setting.help)(func)
        else:
            ctype = {int: int, Path: click.Path(path_type=Path)}.get(setting.type, str)
            func = click.option(flag, setting.name, type=ctype, default=None,
                                help=f"{setting.help} [default: {setting.default}]")(func)
    return click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                        help="TOML configuration file (options and [nodes.NAME]).")(func)


def _load(config_file: str | None, options: dict[str, Any]) -> Settings:
    try:
        return load_settings(config_file, overrides=options)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("pynetdicom", "pylibjpeg", "openjpeg", "libjpeg", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.command("serve")
@_settings_options
def serve(config_file: str | None, **options: Any) -> None:
    """Run the node: DIMSE SCP (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, storage
    commitment) and HTTP (DICOMweb under /dicomweb, REST API under /api/v1).

    SIGTERM or Ctrl-C stops accepting new work, lets running associations
    finish (up to 10 s) and exits; an instance is acknowledged only once its
    file and index row are durable, so nothing half-written remains.

    At start, what a crashed process left in incoming/ is cleaned as `check
    --repair` does: whole instances stored, the rest removed (never
    indexed); files that another running process holds are left alone."""
    from . import cluster
    from .access.setup import check_exposure, describe_access
    from .dimse.scp import DimseServer
    from .node import Node
    from .web.app import create_app
    from .web.zerocopy import http_config

    settings = _load(config_file, options)
    try:
        check_exposure(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _setup_logging(settings.log_level)
    log = logging.getLogger("pacsnode")
    node = Node(settings)
    try:
        leave_cluster = cluster.join(node)
    except cluster.ConfigMismatch as exc:
        node.close()
        raise click.ClickException(str(exc))
    try:
        _check_arrival_settings(node)
    except ValueError as exc:
        leave_cluster()
        node.close()
        raise click.ClickException(str(exc)) from None
    node.db.refresh_statistics()  # an index filled while the node was down
    _clean_in_flight(node, log)
    dimse = DimseServer(node)
    try:
        dimse.start()
    except OSError as exc:
        leave_cluster()
        raise click.ClickException(f"cannot listen on DICOM port {settings.dicom_port}: {exc}")
    workers = _DimseWorkers(settings, dimse)
    extras = _start_services(node)
    app = create_app(node, ready=lambda: dimse.listening and workers.started())
    config = http_config(app, settings.host, settings.http_port,
                         log_level="warning", access_log=False, lifespan="off",
                         timeout_graceful_shutdown=10)
    server = _http_server(config)
    log.info("HTTP listening on http://%s:%s (DICOMweb /dicomweb, REST /api/v1)",
             settings.host, settings.http_port)
    log.info("%s", describe_access(settings))
    audit = app.state.audit
    audit.application("start", http=f"{settings.host}:{settings.http_port}",
                      dicom_port=settings.dicom_port, auth=settings.auth)
    try:
        server.run()
    finally:
        audit.application("stop")
        audit.close()
        log.info("shutting down: no new associations; waiting for running ones")
        workers.terminate()  # they drain alongside us
        for stop in extras:
            stop()
        dimse.stop(grace=10.0)
        workers.wait(timeout=15.0)
        leave_cluster()
        node.close()
        log.info("stopped")


def _check_arrival_settings(node: Any) -> None:
    """Refuse to start with a classification rule file or a route that
    cannot work (ValueError with a plain message)."""
    from .classes import RuleError, server_rules
    from .routes import check_routes
    try:
        server_rules(node.settings)
    except RuleError as exc:
        raise ValueError(f"classification_rules: {exc}") from None
    check_routes(node)


def _clean_in_flight(node: Any, log: logging.Logger) -> None:
    """What a crash left in ``incoming/`` by processes that are gone: whole
    instances stored, the rest removed (check.clean_in_flight); the files
    of live processes sharing the blob root are left to them."""
    from .check import clean_in_flight
    for name, result in clean_in_flight(node):
        if result.outcome.ok:
            log.info("in-flight file %s left by a stopped process: %s (instance %s)", name,
                     result.outcome.value, result.sop_instance_uid)
        else:
            log.warning("in-flight file %s left by a stopped process: %s, removed: %s", name,
                        result.outcome.value, result.reason)


class _DimseWorkers:
    """The extra DIMSE processes of ``serve`` (``dimse_processes`` > 1, see
    dimse/worker.py): started after the main process holds the port,
    restarted if one dies, sent SIGTERM and waited for at shutdown."""

    def __init__(self, settings: Settings, dimse: Any) -> None:
        import threading

        from .dimse.worker import spawn
        self._spawn = lambda slot: spawn(settings, slot, dimse.processes, dimse.limit_fd,
                                         dimse.listen_fd)
        self.procs = {slot: self._spawn(slot) for slot in range(1, dimse.processes)}
        self._limit = dimse.server.limit
        self._spawned = time.monotonic()
        self._all_started = not self.procs
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._log = logging.getLogger("pacsnode.dimse")
        if self.procs:
            self._log.info("DIMSE served by %d processes", dimse.processes)
            threading.Thread(target=self._watch, name="pacsnode-dimse-workers",
                             daemon=True).start()

    def _watch(self) -> None:
        started = {slot: time.monotonic() for slot in self.procs}
        delay = {slot: 1.0 for slot in self.procs}
        dead_since: dict[int, float] = {}
        # This thread lives until the workers are gone: a worker it restarted
        # gets PR_SET_PDEATHSIG for *this thread*'s exit.
        while not self._done.wait(1.0):
            for slot, proc in list(self.procs.items()):
                if proc.poll() is None or self._stopping.is_set():
                    continue
                now = time.monotonic()
                if slot not in dead_since:  # one that dies young again waits longer
                    dead_since[slot] = now
                    young = now - started[slot] < 60
                    delay[slot] = min(delay[slot] * 2, 120.0) if young else 1.0
                    self._log.error("DIMSE worker %d (pid %d) exited with %s: restarting it "
                                    "in %.0f s", slot, proc.pid, proc.returncode, delay[slot])
                if now - dead_since[slot] >= delay[slot]:
                    with self._lock:
                        if not self._stopping.is_set():
                            self.procs[slot] = self._spawn(slot)
                    started[slot] = now
                    del dead_since[slot]

    def started(self) -> bool:
        """Whether every worker has come up (accepts connections), exited,
        or had 30 s to: until then health says "starting", so that a client
        that waits for it finds every process taking associations."""
        if not self._all_started:
            self._all_started = time.monotonic() - self._spawned > 30 or all(
                self._limit.has_started(slot) or proc.poll() is not None
                for slot, proc in self.procs.items())
        return self._all_started

    def terminate(self) -> None:
        with self._lock:
            self._stopping.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()

    def wait(self, timeout: float) -> None:
        import subprocess
        deadline = time.monotonic() + timeout
        for slot, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._log.warning("DIMSE worker %d (pid %d) did not stop: killing it", slot,
                                  proc.pid)
                proc.kill()
                proc.wait(5)
        self._done.set()


def _http_server(config: Any) -> Any:
    """A uvicorn server that stops on SIGTERM/SIGINT without re-raising the
    signal afterwards (uvicorn does, which would kill the process before the
    DIMSE side has drained)."""
    import contextlib
    import signal
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def _start_services(node: Any) -> list[Callable[[], None]]:
    """Background services of `serve` that later features plug in (jobs,
    stable-study triggers).  Each returns a stop function."""
    stops: list[Callable[[], None]] = []
    try:
        from .automation import start as start_automation
    except ImportError:
        pass
    else:
        stops.append(start_automation(node))
    try:
        from .remote.jobs import start as start_jobs
    except ImportError:
        pass
    else:
        stops.append(start_jobs(node))
    from .routes import start as start_routes
    stops.append(start_routes(node))
    return stops


def _iter_sources(paths: tuple[str, ...]) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(label, opener) for every file under the given paths, zip members included."""
    for raw in paths:
        path = Path(raw)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as zf:
                    names = [n for n in zf.namelist() if not n.endswith("/")]
                for name in names:
                    yield f"{f}!{name}", (lambda f=f, name=name: _zip_member(f, name))
            else:
                yield str(f), (lambda f=f: open(f, "rb"))


def _zip_member(archive: Path, name: str) -> Any:
    zf = zipfile.ZipFile(archive)
    return zf.open(name)


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@_settings_options
def import_(paths: tuple[str, ...], config_file: str | None, **options: Any) -> None:
    """Ingest DICOM files, folders (recursively) and zip files into the archive,
    through the same path as C-STORE and STOW-RS.  Safe while `serve` runs on
    the same --data-dir / --database-url."""
    from rich.progress import Progress

    from .events import Origin
    from .ingest import Outcome
    from .node import Node

    settings = _load(config_file, options)
    _setup_logging("WARNING")
    node = Node(settings)
    try:  # stable-study triggers for what we import (serve fires them)
        from .automation import record_arrivals
    except ImportError:
        pass
    else:
        record_arrivals(node)
    sources = list(_iter_sources(paths))
    counts: dict[Outcome, int] = {o: 0 for o in Outcome}
    problems: list[tuple[str, str]] = []
    with Progress(transient=False) as progress:
        task = progress.add_task("importing", total=len(sources))
        for label, opener in sources:
            with opener() as fh:
                result = node.ingestor.ingest_chunks(iter(lambda: fh.read(1 << 20), b""),
                                                     Origin("import", address=label))
            counts[result.outcome] += 1
            if not result.outcome.ok:
                problems.append((label, f"{result.outcome.value}: {result.reason}"))
            progress.advance(task)
    node.close()
    click.echo(f"stored {counts[Outcome.STORED]}, replaced {counts[Outcome.REPLACED]}, "
               f"already stored {counts[Outcome.ALREADY_STORED]}, "
               f"refused {counts[Outcome.REFUSED]}, failed {counts[Outcome.FAILED]}")
    for label, reason in problems[:50]:
        click.echo(f"  {label}: {reason}", err=True)
    if len(problems) > 50:
        click.echo(f"  … and {len(problems) - 50} more", err=True)
    if counts[Outcome.FAILED]:
        sys.exit(1)


@click.command("check")
@click.option("--repair", is_flag=True, help="Index files that have no index row, drop "
              "index rows whose file is gone, and ingest the stale temp files (whole "
              "instances are stored, the rest removed; files of running processes are "
              "left alone).")
@_settings_options
def check(repair: bool, config_file: str | None, **options: Any) -> None:
    """Reconcile the blob store and the index.  Exit 0 when consistent, 1 when
    a problem was found (after --repair: 0 if everything was mended).

    Stale temp files in incoming/ (left by a process that died while
    receiving) are listed but are no inconsistency: nothing acknowledged
    depends on them.  --repair, or the next `serve` start, stores those that
    are whole instances and removes the rest; files that a running process
    is writing are never touched."""
    from .check import reconcile
    from .node import Node

    settings = _load(config_file, options)
    _setup_logging("WARNING")
    node = Node(settings)
    report = reconcile(node, repair=repair)
    node.close()
    for line in report.lines():
        click.echo(line)
    sys.exit(0 if report.ok(after_repair=repair) else 1)


COMMANDS.extend([serve, import_, check])


def _add_token_command() -> None:
    from .access.commands import token
    COMMANDS.append(token)


_add_token_command()

