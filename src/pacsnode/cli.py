"""The ``pacsnode`` command line: thin — parse, call a service, print."""

from __future__ import annotations

import logging
import warnings
from typing import TextIO

import click

from . import __version__

_warnings_log = logging.getLogger("pacsnode.warnings")


def _warning_to_log(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings (pydicom's UserWarning about a malformed value …) as one
    log line each, not Python's two-line source listing printed across a
    progress bar or a table: through logging, whose handler writes to the
    stderr of the moment (that a live progress display has redirected)."""
    _warnings_log.warning("%s: %s", category.__name__, message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pacsnode")
def main() -> None:
    """pacsnode — a DICOM node: archive (DIMSE + DICOMweb), gateway to other
    PACS, and the everyday DICOM tools."""
    warnings.showwarning = _warning_to_log


def _add_commands() -> None:
    # Each feature module exposes COMMANDS: a list of click commands.
    from .access.commands import token
    from .archive_commands import COMMANDS as archive_commands
    from .classify.commands import COMMANDS as classify_commands
    from .reindex import COMMANDS as reindex_commands
    from .remote.commands import COMMANDS as remote_commands
    from .tools.commands import COMMANDS as tool_commands
    for command in (*archive_commands, token, *remote_commands, *tool_commands,
                    *classify_commands, *reindex_commands):
        main.add_command(command)


_add_commands()
