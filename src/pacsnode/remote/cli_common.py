"""What the SCU commands of the CLI (:mod:`pacsnode.remote.commands`,
:mod:`pacsnode.remote.send_command`) share: the peer options, the stderr
console, and network failures turned into a message and an exit code.
Light on purpose: ``pacsnode send`` starts with this and no pydicom."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console

from .errors import RemoteError
from .peer import Peer

__all__ = ["stderr_console", "peer_options", "peer_from_options", "failures"]


def stderr_console() -> Console:
    # soft_wrap: a long path or reason stays on one line, for grep and logs.
    return Console(stderr=True, soft_wrap=True)


def peer_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--host/--port/--aec/--aet/--timeout, shared by every SCU command."""
    options = [
        click.option("--host", default="127.0.0.1", show_default=True,
                     help="Host name or address of the remote node."),
        click.option("--port", type=click.IntRange(1, 65535), required=True,
                     help="DICOM port of the remote node."),
        click.option("--aec", default="ANY-SCP", show_default=True,
                     help="Called AE title: the remote node's AE title."),
        click.option("--aet", default="PACSNODE", show_default=True,
                     help="Calling AE title: how we introduce ourselves."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0,
                     show_default=True,
                     help="Seconds to wait for the connection and association."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def peer_from_options(host: str, port: int, aec: str, aet: str, timeout: float) -> Peer:
    return Peer(aet=aec, host=host, port=port, calling_aet=aet, timeout=timeout)


@contextmanager
def failures() -> Iterator[None]:
    """Turn network errors into a clear message and exit code 1, Ctrl-C
    into exit code 130."""
    try:
        yield
    except RemoteError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        stderr_console().print("[red]interrupted[/red]: association aborted")
        sys.exit(130)
