"""CLI commands of the archive: serve, import, check."""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

import click

from .logs import setup_logging
from .options import command_settings, settings_options

COMMANDS: list[click.Command] = []

#: What ``import`` and ``check`` use: where the archive is and how it stores.
_ARCHIVE_SETTINGS = ("data_dir", "database_url", "duplicate_policy", "fsync")


@click.command("serve")
@settings_options()
def serve(config_file: str | None, **options: Any) -> None:
    """Run the node: DIMSE SCP (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, storage
    commitment) and HTTP (DICOMweb under /dicomweb, REST API under /api/v1).

    SIGTERM or Ctrl-C stops accepting new work, lets running associations
    finish (up to 10 s) and exits; an instance is acknowledged only once its
    file and index row are durable, so nothing half-written remains.

    At start, what a crashed process left in incoming/ is cleaned as `check
    --repair` does: whole instances stored, the rest removed (never
    indexed); files that another running process holds are left alone."""
    from .serve import StartError, run

    settings = command_settings(config_file, options)
    setup_logging(settings.log_level)
    try:
        run(settings)
    except StartError as exc:
        raise click.ClickException(str(exc)) from None


def _iter_sources(paths: tuple[str, ...]) -> Iterator[tuple[str, Callable[[], IO[bytes]]]]:
    """(label, opener) for every file under the given paths, zip members included."""
    for raw in paths:
        path = Path(raw)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if zipfile.is_zipfile(f):
                with zipfile.ZipFile(f) as zf:
                    names = [n for n in zf.namelist() if not n.endswith("/")]
                for name in names:
                    yield f"{f}!{name}", partial(_zip_member, f, name)
            else:
                yield str(f), partial(_open_file, f)


def _open_file(path: Path) -> IO[bytes]:
    return open(path, "rb")


def _zip_member(archive: Path, name: str) -> IO[bytes]:
    zf = zipfile.ZipFile(archive)
    return zf.open(name)


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@settings_options(*_ARCHIVE_SETTINGS)
def import_(paths: tuple[str, ...], config_file: str | None, **options: Any) -> None:
    """Ingest DICOM files, folders (recursively) and zip files into the archive,
    through the same path as C-STORE and STOW-RS.  Safe while `serve` runs on
    the same --data-dir / --database-url."""
    from rich.progress import Progress

    from .automation import record_arrivals
    from .events import Origin
    from .ingest import Outcome
    from .node import Node

    settings = command_settings(config_file, options)
    setup_logging("WARNING")
    node = Node(settings)
    record_arrivals(node)  # stable-study triggers for what we import (serve fires them)
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
@settings_options(*_ARCHIVE_SETTINGS)
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

    settings = command_settings(config_file, options)
    setup_logging("WARNING")
    node = Node(settings)
    report = reconcile(node, repair=repair)
    node.close()
    for line in report.lines():
        click.echo(line)
    sys.exit(0 if report.ok(after_repair=repair) else 1)


COMMANDS.extend([serve, import_, check])

