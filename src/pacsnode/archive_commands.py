"""CLI commands of the archive: serve, import, check."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
