"""SCU commands of the ``pacsnode`` CLI: echo, find, move, get, send.

Thin: parse options, call :mod:`pacsnode.remote.scu`, print.  ``send`` is
:mod:`.send_command` (listed here too), which starts without pydicom.  Results go to
stdout (tables, JSON); progress bars and summaries go to stderr.  Exit code
0 means everything asked for was done; 1 means the peer or a file failed
(the message says which and why); 2 is a usage error; 130 an interrupt.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
from pydicom.dataset import Dataset
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                           TimeElapsedColumn)
from rich.table import Table

from ..dicom.catalogue import UnknownAttribute
from . import scu
from .cli_common import failures, peer_from_options, peer_options, stderr_console
from .identifiers import Level, infer_level, key_name
from .receiver import storage_scp
from .send_command import send_command

__all__ = ["COMMANDS", "parse_keys"]

LEVELS = click.Choice(["PATIENT", "STUDY", "SERIES", "IMAGE"], case_sensitive=False)
MODELS = click.Choice(["study", "patient"], case_sensitive=False)

_KEYS_HELP = ("Matching or return key, repeatable: -k PatientID=123, -k StudyDate=20200101-, "
              "-k 'SeriesDescription=AX*', -k '(0010,0010)=Doe^*'; -k Key alone asks for "
              "Key to be returned.  Keywords or tags; a key given twice becomes a list "
              "(UID list matching).")


def parse_keys(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["PatientID=123", "StudyDate"]`` → ``{"PatientID": "123", "StudyDate": None}``.

    A key given more than once collects its values in a list."""
    keys: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            key_name(key)
        except (UnknownAttribute, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="-k") from None
        parsed: Any = value if sep else None
        if key in keys and keys[key] is not None and parsed is not None:
            previous = keys[key]
            keys[key] = [*(previous if isinstance(previous, list) else [previous]), parsed]
        elif key not in keys or parsed is not None:
            keys[key] = parsed
    return keys


@contextmanager
def _failures() -> Iterator[None]:
    """Network errors (see ``cli_common.failures``), and an unknown
    attribute as a usage error."""
    with failures():
        try:
            yield
        except UnknownAttribute as exc:
            raise click.UsageError(str(exc)) from None


def _level(level: str | None, keys: dict[str, Any]) -> Level:
    if level:
        return Level.parse(level)
    try:
        return infer_level(keys)
    except ValueError as exc:
        raise click.UsageError(f"{exc}; or give --level") from None


# ------------------------------------------------------------------------ echo

@click.command("echo")
@peer_options
def echo_command(host: str, port: int, aec: str, aet: str, timeout: float) -> None:
    """Check that a DICOM node answers (C-ECHO, the DICOM "ping").

    Prints the C-ECHO round trip; exits 1 when the node cannot be reached,
    rejects the association or answers with a failure status.

    Example: pacsnode echo --port 4242 --aec ORTHANC
    """
    peer = peer_from_options(host, port, aec, aet, timeout)
    with _failures():
        ms = scu.echo(peer)
    click.echo(f"{peer} answered C-ECHO in {ms:.1f} ms")


# ------------------------------------------------------------------------ find

def _cell(value: Any) -> str:
    if isinstance(value, list):
        return "\\".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return "" if value is None else str(value)


@click.command("find")
@peer_options
@click.option("--level", "-l", type=LEVELS, default="STUDY", show_default=True,
              help="Query/Retrieve level.")
@click.option("-k", "--key", "key_items", multiple=True, metavar="KEY[=VALUE]", help=_KEYS_HELP)
@click.option("--model", "-m", type=MODELS, default=None,
              help="Information model: study root or patient root "
                   "[default: patient at PATIENT level, else study].")
@click.option("--json", "as_json", is_flag=True, help="Print the matches as a JSON array.")
@click.option("--no-defaults", is_flag=True,
              help="Return only the given keys and the unique keys, not the usual "
                   "columns of the level.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Stop (C-CANCEL) after this many matches.")
def find_command(host: str, port: int, aec: str, aet: str, timeout: float, level: str,
                 key_items: tuple[str, ...], model: str | None, as_json: bool,
                 no_defaults: bool, limit: int | None) -> None:
    """Query a DICOM node (C-FIND) and print the matches.

    \b
    Examples:
      pacsnode find --port 4242 -k PatientID=123 -k StudyDate=20200101-
      pacsnode find --port 4242 --level SERIES -k StudyInstanceUID=1.2.3 --json
      pacsnode find --port 4242 --level SERIES -k 'SeriesDescription=AX*' -k BodyPartExamined

    Values follow DICOM matching: '*' and '?' wildcards, date/time ranges
    (20200101-20201231, -20200101), '\\'-separated UID lists.  Exits 0 also
    when nothing matched (an empty table, or [] with --json).
    """
    keys = parse_keys(key_items)
    peer = peer_from_options(host, port, aec, aet, timeout)
    with _failures():
        try:
            hits = scu.find(peer, level, keys, model=model, defaults=not no_defaults,
                            limit=limit)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(hits, indent=2, ensure_ascii=False))
        return
    columns = list(dict.fromkeys(k for hit in hits for k in hit if k != "RetrieveAETitle"))
    table = Table(title=f"{len(hits)} {level.upper()} match{'es' if len(hits) != 1 else ''}"
                        f" at {peer}")
    for column in columns:
        table.add_column(column, overflow="fold")
    for hit in hits:
        table.add_row(*(_cell(hit.get(c)) for c in columns))
    # Piped output gets wide rows rather than every cell folded to 80 columns.
    Console(width=None if sys.stdout.isatty() else 400).print(table)


# -------------------------------------------------------------------- retrieve

def _retrieve_bar(console: Console) -> Bar:
    return Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}"), TimeElapsedColumn(),
               console=console, transient=True)


def _track(bar: Bar, task: Any) -> Callable[[scu.Progress], None]:
    def update(progress: scu.Progress) -> None:
        total = progress.total or None
        bar.update(task, completed=progress.completed + progress.warning, total=total,
                   failed=progress.failed)
    return update


def _summary(verb: str, progress: scu.Progress, where: str) -> None:
    console = stderr_console()
    done = progress.completed + progress.warning
    text = f"{verb} {done} instance{'s' if done != 1 else ''} {where}"
    if progress.warning:
        text += f" ({progress.warning} with warnings)"
    console.print(text)
    if progress.cancelled:
        raise click.ClickException(f"cancelled after {done} instances")
    if progress.failed:
        uids = ", ".join(progress.failed_sop_instance_uids)
        raise click.ClickException(f"{progress.failed} instance(s) failed"
                                   f"{': ' + uids if uids else ''}")


@click.command("move")
@peer_options
@click.option("--dest", metavar="AET", default=None,
              help="Move destination: an AE title the remote node knows (this node, "
                   "or a third one) [default with --listen-port: the --aet].")
@click.option("-k", "--key", "key_items", multiple=True, metavar="KEY=VALUE",
              help=_KEYS_HELP)
@click.option("--level", "-l", type=LEVELS, default=None,
              help="Retrieve level [default: from the most specific UID key given].")
@click.option("--model", "-m", type=MODELS, default=None,
              help="Information model [default: patient at PATIENT level, else study].")
@click.option("--listen-port", type=click.IntRange(1, 65535), default=None,
              help="Receive the instances ourselves: listen on this port as the "
                   "destination AE during the move (like movescu --port); needs --out.")
@click.option("--listen-host", default="0.0.0.0", show_default=True,
              help="Address to listen on with --listen-port.")
@click.option("--out", "-o", "out", default=None,
              type=click.Path(file_okay=False, path_type=Path),
              help="With --listen-port: folder for the received <SOPInstanceUID>.dcm files.")
def move_command(host: str, port: int, aec: str, aet: str, timeout: float, dest: str | None,
                 key_items: tuple[str, ...], level: str | None, model: str | None,
                 listen_port: int | None, listen_host: str, out: Path | None) -> None:
    """Ask a DICOM node to send instances to a destination (C-MOVE).

    \b
    Examples:
      pacsnode move --port 4242 --dest PACSNODE -k StudyInstanceUID=1.2.3
      pacsnode move --port 4242 --dest WS1 -k StudyInstanceUID=1.2.3 -k SeriesInstanceUID=1.2.3.4
      pacsnode move --port 4242 --aet ME --listen-port 11113 --out ./study -k StudyInstanceUID=1.2.3

    The remote node must know the destination AE title's address.  Shows the
    node's progress; exits 1 when the move failed or any instance did not
    reach the destination.  Ctrl-C aborts the association.
    """
    if (listen_port is None) != (out is None):
        raise click.UsageError("--listen-port and --out go together")
    if dest is None:
        if listen_port is None:
            raise click.UsageError("give --dest (or --listen-port and --out to receive here)")
        dest = aet
    keys = parse_keys(key_items)
    lv = _level(level, keys)
    peer = peer_from_options(host, port, aec, aet, timeout)
    console = stderr_console()
    with ExitStack() as stack:
        errors: list[str] = []
        if listen_port is not None and out is not None:
            out.mkdir(parents=True, exist_ok=True)
            folder = out

            def store(ds: Dataset) -> None:
                write_dataset(ds, folder)

            try:
                errors = stack.enter_context(storage_scp(dest, listen_port, store,
                                                         host=listen_host))
            except OSError as exc:
                raise click.ClickException(str(exc)) from None
        with _failures(), _retrieve_bar(console) as bar:
            task = bar.add_task(f"C-MOVE to {dest}", total=None, failed=0)
            try:
                progress = scu.move(peer, lv, keys, dest, model=model,
                                    on_progress=_track(bar, task))
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
    for error in errors:
        console.print(f"[red]not written[/red] {error}")
    where = f"from {peer} to {dest}" + (f" into {out}" if out is not None else "")
    _summary("moved", progress, where)


def _safe_name(uid: str) -> str:
    if uid and all(c.isdigit() or c == "." for c in uid) and len(uid) <= 64:
        return uid
    raise ValueError(f"refusing to use {uid!r} as a file name: not a DICOM UID")


def write_dataset(ds: Dataset, folder: Path) -> Path:
    """Write ``ds`` as ``folder/<SOPInstanceUID>.dcm`` (Part 10), atomically."""
    path = folder / f"{_safe_name(str(ds.SOPInstanceUID))}.dcm"
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            ds.save_as(handle, enforce_file_format=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@click.command("get")
@peer_options
@click.option("-k", "--key", "key_items", multiple=True, metavar="KEY=VALUE",
              help=_KEYS_HELP)
@click.option("--out", "-o", "out", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write <SOPInstanceUID>.dcm files into (created if needed).")
@click.option("--level", "-l", type=LEVELS, default=None,
              help="Retrieve level [default: from the most specific UID key given].")
@click.option("--model", "-m", type=MODELS, default=None,
              help="Information model [default: patient at PATIENT level, else study].")
def get_command(host: str, port: int, aec: str, aet: str, timeout: float,
                key_items: tuple[str, ...], out: Path, level: str | None,
                model: str | None) -> None:
    """Fetch instances from a DICOM node over the same association (C-GET)
    and write them as OUT/<SOPInstanceUID>.dcm.

    \b
    Example:
      pacsnode get --port 4242 -k StudyInstanceUID=1.2.3 -k SeriesInstanceUID=1.2.3.4 --out ./series

    Instances arrive in the transfer syntax the node stores them in when it
    can send it.  Exits 1 when the retrieve failed or any instance did not
    arrive or could not be written.
    """
    keys = parse_keys(key_items)
    lv = _level(level, keys)
    peer = peer_from_options(host, port, aec, aet, timeout)
    out.mkdir(parents=True, exist_ok=True)
    console = stderr_console()

    def store(ds: Dataset) -> None:
        write_dataset(ds, out)

    with _failures(), _retrieve_bar(console) as bar:
        task = bar.add_task("C-GET", total=None, failed=0)
        try:
            result = scu.get(peer, lv, keys, model=model, on_store=store,
                             on_progress=_track(bar, task))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    for error in result.store_errors:
        console.print(f"[red]not written[/red] {error}")
    _summary("got", result.progress, f"from {peer} into {out}")


# ------------------------------------------------------------------------ send

COMMANDS: list[click.Command] = [echo_command, find_command, move_command, get_command,
                                 send_command]
