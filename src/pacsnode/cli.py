"""The ``pacsnode`` command line: thin — parse, call a service, print."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pacsnode")
def main() -> None:
    """pacsnode — a DICOM node: archive (DIMSE + DICOMweb), gateway to other
    PACS, and the everyday DICOM tools."""


def _add_commands() -> None:
    # Each feature module exposes COMMANDS: a list of click commands.
    from .archive_commands import COMMANDS as archive_commands
    from .classify.commands import COMMANDS as classify_commands
    from .reindex import COMMANDS as reindex_commands
    from .remote.commands import COMMANDS as remote_commands
    from .tools.commands import COMMANDS as tool_commands
    for command in (*archive_commands, *remote_commands, *tool_commands,
                    *classify_commands, *reindex_commands):
        main.add_command(command)


_add_commands()
