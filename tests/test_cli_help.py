"""The newcomer's first hour on the command line: each command lists only
its own options, choices are choices, a busy HTTP port stops `serve` with a
clear error before it claims to listen, and pydicom's warnings are log
lines rather than source listings across a progress bar."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import free_port
from pacsnode.cli import main

SERVE_ONLY = ("--http-port", "--dicom-port", "--on-stable-study", "--ae-title", "--auth",
              "--max-associations", "--log-level")


@pytest.mark.parametrize("command", ["import", "check"])
def test_import_and_check_list_only_their_options(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--data-dir", "--database-url", "--config", "--duplicate-policy"):
        assert option in result.output
    for option in SERVE_ONLY:
        assert option not in result.output, option
    serve = CliRunner().invoke(main, ["serve", "--help"]).output
    for option in SERVE_ONLY:
        assert option in serve


@pytest.mark.parametrize("option, value", [("--log-level", "LOUD"),
                                           ("--duplicate-policy", "overwrite")])
def test_choices_are_checked(option: str, value: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), option, value])
    assert result.exit_code == 2
    assert "Invalid value" in result.output and value in result.output
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "[replace|keep|reject]" in help_text


def test_serve_on_a_busy_http_port_says_so_and_exits(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "pacsnode", "serve", "--data-dir", str(tmp_path / "data"),
             "--http-port", str(port), "--dicom-port", str(free_port()),
             "--host", "127.0.0.1"],
            capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode != 0
    assert f"cannot listen on HTTP port {port}" in proc.stderr
    assert "HTTP listening" not in proc.stderr + proc.stdout
    assert "DIMSE listening" not in proc.stderr + proc.stdout  # nothing started
    assert "Traceback" not in proc.stderr


def test_pydicom_warnings_are_one_log_line(tmp_path: Path) -> None:
    """`pacsnode dump --json` of a file whose UI value is invalid: pydicom
    warns when it reads the value; the warning is one line on stderr (no
    source listing), stdout is the JSON."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.add_new(0x00081155, "UI", "1.2.abc")  # not a UID: pydicom warns when it reads it
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run([sys.executable, "-m", "pacsnode", "dump", "--json", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "1.2.abc" in proc.stdout
    warning_lines = [line for line in proc.stderr.splitlines() if "UserWarning" in line]
    assert warning_lines, proc.stderr
    assert all(line.startswith("UserWarning: Invalid value for VR UI: '1.2.abc'")
               for line in warning_lines), proc.stderr
    assert proc.stderr.strip().splitlines() == warning_lines  # nothing else: no source lines
    assert "warn_and_log(" not in proc.stderr


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command of the CLI, as the words that name it."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the lazy group imports each one here
        command = group.get_command(ctx, name)
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def test_help_shows_a_default_only_where_there_is_one() -> None:
    """A setting whose default is empty (its help says what empty means)
    shows no ``[default: ]``; the others show their default."""
    seen = 0
    for words in _commands(main):
        result = CliRunner().invoke(main, [*words, "--help"])
        assert result.exit_code == 0, (words, result.output)
        text = " ".join(result.output.split())  # click wraps the help text
        assert not re.search(r"\[default:\s*\]", text), (words, text)
        seen += "--data-dir" in text
    assert seen >= 3  # serve, import, check … list the settings' options
    serve = " ".join(CliRunner().invoke(main, ["serve", "--help"]).output.split())
    assert "[default: PACSNODE]" in serve and "[default: 11112]" in serve
    url = serve[serve.index("--database-url"):serve.index("--ae-title")]
    assert "empty means SQLite" in url and "[default:" not in url
