"""The public API and the command line load what they use, when they use it:
``from pacsnode import X`` works for every public name (each imported on
first use), and a client command (``pacsnode send``) starts without the
archive (the node, SQLAlchemy, the index, the web app)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import click
import pytest

import pacsnode
from pacsnode.cli import COMMANDS, load_command, main

#: Where each public name is defined.
PUBLIC = {"RemoteNode": "pacsnode.remote", "RemoteError": "pacsnode.dimse.errors",
          "load_volume": "pacsnode.volume", "Volume": "pacsnode.volume",
          "NotAVolume": "pacsnode.volume", "Node": "pacsnode.node",
          "Settings": "pacsnode.config", "load_settings": "pacsnode.config"}

#: What only the archive needs: none of it is loaded by a client command.
ARCHIVE_MODULES = ("sqlalchemy", "fastapi", "uvicorn", "pacsnode.node", "pacsnode.index", "pacsnode.web", "pacsnode.storage",
                   "pacsnode.ingest")


def _loaded_after(code: str) -> set[str]:
    """Modules loaded in a fresh interpreter after running ``code``."""
    script = (f"import sys, json\n{code}\n"
              "sys.stderr.write('\\nMODULES ' + json.dumps(sorted(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    marker = run.stderr.rfind("MODULES ")
    assert marker >= 0, run.stderr
    return set(json.loads(run.stderr[marker + len("MODULES "):]))


def _archive_loaded(modules: set[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == a or m.startswith(a + ".") for a in ARCHIVE_MODULES))


def test_every_public_name_imports_from_the_package() -> None:
    assert set(pacsnode.__all__) == {"__version__", *PUBLIC}
    for name, module in PUBLIC.items():
        value = getattr(pacsnode, name)
        assert value is getattr(importlib.import_module(module), name), name
        namespace: dict[str, object] = {}
        exec(f"from pacsnode import {name}", namespace)
        assert namespace[name] is value
    assert isinstance(pacsnode.__version__, str) and pacsnode.__version__
    assert set(PUBLIC) <= set(dir(pacsnode))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nodes'"):
        pacsnode.Nodes  # noqa: B018
    with pytest.raises(ImportError):
        exec("from pacsnode import Nodes", {})


def test_import_pacsnode_loads_no_archive_until_a_name_asks() -> None:
    assert _archive_loaded(_loaded_after("import pacsnode")) == []
    modules = _loaded_after("import pacsnode\nassert pacsnode.Node.__name__ == 'Node'")
    assert {"pacsnode.node", "sqlalchemy"} <= modules


@pytest.mark.parametrize("command", ["send", "echo", "dump"])
def test_a_client_command_loads_no_archive(command: str) -> None:
    code = ("from pacsnode.cli import main\n"
            f"try:\n    main(['{command}', '--help'])\nexcept SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code")
    modules = _loaded_after(code)
    assert "pacsnode.remote.commands" in modules or command != "echo"
    assert _archive_loaded(modules) == []


def test_send_starts_without_pydicom() -> None:
    """``pacsnode send`` (its whole path: reading the file meta, the
    association, the C-STOREs) loads neither pydicom, pynetdicom nor numpy:
    they were most of its start-up time."""
    code = ("from pacsnode.cli import main\n"
            "from pacsnode.remote import send\n"
            "from pacsnode.dimse import client\n"
            "try:\n    main(['send', '--help'])\nexcept SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code")
    modules = _loaded_after(code)
    assert "pacsnode.remote.send_command" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in ("pydicom", "pynetdicom", "numpy"))
    assert heavy == []


def test_pydicom_is_imported_without_requests() -> None:
    """pydicom's import (whoever makes it) does not load ``requests``; an
    import of ``requests`` of one's own still works."""
    modules = _loaded_after("import pacsnode\nimport pydicom\n"
                            "assert 'requests' not in sys.modules\n"
                            "import pydicom.data.download as d\nassert not d.HAVE_REQUESTS")
    assert "pydicom" in modules and "requests" not in modules
    assert "requests" in _loaded_after("import pacsnode\nimport pydicom\nimport requests")


def test_the_command_table_holds_every_command_of_every_module() -> None:
    """COMMANDS names each command where it is, and every command of the
    modules it names: a command added to a module's list but not to the
    table fails."""
    listed: set[str] = set()
    for module, attribute in set(COMMANDS.values()):
        value = getattr(importlib.import_module(module), attribute)
        for command in value if isinstance(value, list) else [value]:
            assert isinstance(command, click.Command)
            assert command.name is not None
            listed.add(command.name)
    assert listed == set(COMMANDS)
    for name in COMMANDS:
        assert load_command(name).name == name


def test_help_lists_every_command() -> None:
    from click.testing import CliRunner
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.startswith("  ") and line.split()]
    assert listed == sorted(COMMANDS)
    unknown = CliRunner().invoke(main, ["sned"])
    assert unknown.exit_code == 2 and "No such command 'sned'" in unknown.output


def test_every_name_of_pacsnode_remote_imports() -> None:
    """``pacsnode.remote`` imports its names on first use too (so that
    ``pacsnode send`` can import ``remote.send`` alone): each still imports."""
    import pacsnode.remote as remote
    from pacsnode.remote import scu, send
    for name in remote.__all__:
        namespace: dict[str, object] = {}
        exec(f"from pacsnode.remote import {name}", namespace)
        assert namespace[name] is getattr(remote, name)
    assert remote.SendResult is send.SendResult is scu.SendResult
    assert scu.send is send.send
    with pytest.raises(AttributeError):
        remote.Nothing  # noqa: B018
