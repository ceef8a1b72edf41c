"""``pacsnode send``: the command line of :mod:`pacsnode.remote.send`.
Thin: parse, send, print the summary.  Imported by itself when the command
runs (``pacsnode.cli``): nothing here loads pydicom or the archive."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn)

from . import send as sender
from .cli_common import failures, peer_from_options, peer_options, stderr_console
from .errors import RemoteError

__all__ = ["COMMANDS", "send_command"]


class _Throttled:
    """A progress callback that counts every result but moves the bar at
    most every BAR_PERIOD seconds: a bar update per file cost about as much
    as a small file's C-STORE."""

    def __init__(self, bar: Bar, task: Any) -> None:
        self.bar, self.task = bar, task
        self.done = 0
        self.shown = 0
        self.next_update = 0.0

    def __call__(self, result: sender.SendResult) -> None:
        self.done += 1
        now = time.monotonic()
        if now >= self.next_update:
            self.next_update = now + BAR_PERIOD
            self.flush()

    def flush(self) -> None:
        if self.done != self.shown:
            self.bar.update(self.task, completed=self.done)
            self.shown = self.done


#: Seconds between two updates of ``pacsnode send``'s progress bar.
BAR_PERIOD = 0.1


@click.command("send")
@peer_options
@click.option("--parallel", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Send over this many associations at once.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def send_command(host: str, port: int, aec: str, aet: str, timeout: float, parallel: int,
                 paths: tuple[Path, ...]) -> None:
    """Send DICOM files to a node (C-STORE); folders are searched recursively.

    \b
    Example:
      pacsnode send --port 4242 --aec ORTHANC study/ extra.dcm

    Each file goes in its own transfer syntax.  --parallel N splits the
    files over N associations at once.  A summary lists every file that
    failed and why; exits 1 if any did (or nothing was found to send).
    """
    peer = peer_from_options(host, port, aec, aet, timeout)
    files, missing = sender.collect_files(paths)
    console = stderr_console()
    results: list[sender.SendResult] = []
    # No bar (and no thread drawing it) where it would not show: stderr not a terminal.
    bar = Bar(TextColumn("C-STORE to {task.fields[peer]}"), BarColumn(), MofNCompleteColumn(),
              TaskProgressColumn(), TimeElapsedColumn(), console=console, transient=True,
              disable=not console.is_terminal)
    with failures(), bar:
        task = bar.add_task("send", total=len(files) + len(missing), peer=str(peer))
        advance = _Throttled(bar, task)
        try:
            results = sender.send(peer, [*files, *(m.path for m in missing)], on_result=advance,
                               parallel=parallel)
        except RemoteError as exc:
            sent = [r for r in (exc.result or []) if r.ok]
            raise click.ClickException(f"{exc} ({len(sent)} file(s) sent before)") from None
        finally:
            advance.flush()
    failed = [r for r in results if not r.ok]
    console.print(f"sent {len(results) - len(failed)} of {len(results)} file(s) to {peer}"
                  + (f", {len(failed)} failed:" if failed else ""))
    for result in failed:
        console.print(f"  [red]failed[/red] {result.path}: {result.reason}", highlight=False)
    warned = [r for r in results if r.ok and r.reason]
    for result in warned:
        console.print(f"  [yellow]warning[/yellow] {result.path}: {result.reason}",
                      highlight=False)
    if not results:
        raise click.ClickException("no files to send")
    if failed:
        sys.exit(1)


COMMANDS: list[click.Command] = [send_command]
