"""The ``pacsnode`` command line: thin — parse, call a service, print.

Each command lives in its feature's module (a ``COMMANDS`` list, or one
command); :data:`COMMANDS` says which module holds which, and a command's
module is imported only when that command runs (or ``pacsnode --help``
lists them all), so a client command such as ``pacsnode send`` does not
load the archive."""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import TextIO

import click

from . import __version__

__all__ = ["main", "COMMANDS"]

_warnings_log = logging.getLogger("pacsnode.warnings")

_ARCHIVE = "pacsnode.archive_commands"
_REMOTE = "pacsnode.remote.commands"
_TOOLS = "pacsnode.tools.commands"
_CLASSIFY = "pacsnode.classify.commands"

#: Command name → (module, attribute of that module: the command itself or a
#: list of commands holding it).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (_ARCHIVE, "COMMANDS"), "import": (_ARCHIVE, "COMMANDS"),
    "check": (_ARCHIVE, "COMMANDS"),
    "token": ("pacsnode.access.commands", "token"),
    "echo": (_REMOTE, "COMMANDS"), "find": (_REMOTE, "COMMANDS"),
    "move": (_REMOTE, "COMMANDS"), "get": (_REMOTE, "COMMANDS"),
    "send": ("pacsnode.remote.send_command", "COMMANDS"),
    "dump": (_TOOLS, "COMMANDS"), "modify": (_TOOLS, "COMMANDS"),
    "create": (_TOOLS, "COMMANDS"), "img2dcm": (_TOOLS, "COMMANDS"),
    "anonymize": (_TOOLS, "COMMANDS"),
    "classify": (_CLASSIFY, "COMMANDS"), "reclassify": (_CLASSIFY, "COMMANDS"),
    "reindex": ("pacsnode.reindex", "COMMANDS"),
}


def load_command(name: str) -> click.Command:
    """The command ``name`` of :data:`COMMANDS`, its module imported now.
    Raises LookupError when the module does not hold it (a stale table)."""
    module, attribute = COMMANDS[name]
    held = getattr(importlib.import_module(module), attribute)
    for command in held if isinstance(held, list) else [held]:
        if isinstance(command, click.Command) and command.name == name:
            return command
    raise LookupError(f"{module}.{attribute} holds no command {name!r}")


class _LazyGroup(click.Group):
    """A group whose commands are imported when asked for (click's
    documented way: ``list_commands`` and ``get_command`` overridden)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            return load_command(cmd_name)
        return super().get_command(ctx, cmd_name)


def _warning_to_log(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings (pydicom's UserWarning about a malformed value …) as one
    log line each, not Python's two-line source listing printed across a
    progress bar or a table: through logging, whose handler writes to the
    stderr of the moment (that a live progress display has redirected)."""
    _warnings_log.warning("%s: %s", category.__name__, message)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pacsnode")
def main() -> None:
    """pacsnode — a DICOM node: archive (DIMSE + DICOMweb), gateway to other
    PACS, and the everyday DICOM tools."""
    warnings.showwarning = _warning_to_log
