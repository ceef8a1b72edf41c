"""pacsnode — a DICOM node in Python.

The public Python API: talk to another PACS (``RemoteNode``), turn a series
into a numpy volume (``load_volume``), and run the archive in-process
(``Node`` with ``load_settings``).

The names are imported when first used (PEP 562): ``import pacsnode`` and
the client commands of the CLI (``pacsnode send``, ``dump`` …) do not load
the archive (the node, SQLAlchemy, the index, the web app, numpy)."""

from __future__ import annotations

__version__ = "0.1.0"

import sys as _sys
from typing import TYPE_CHECKING

from .lazy import lazy_names

if TYPE_CHECKING:
    import types
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec


class _RequestsHeldFromPydicom:
    """Makes ``import requests`` fail while pydicom is being imported, and
    only then.

    pydicom imports ``requests`` (and with it urllib3, charset_normalizer,
    idna, certifi) at import time only to download its own test files
    (``pydicom.data.download``), and falls back to urllib when it is missing.
    pacsnode never downloads them, and each server process would pay some
    MiB of memory for it.  pydicom is imported by whichever module needs it
    first (a client command such as ``pacsnode send`` never does), so the
    hold is a finder (PEP 451: ``find_spec``) asked before the others:
    ``import requests`` anywhere else, before or after, works as usual."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        if fullname == "requests":
            pydicom = _sys.modules.get("pydicom")
            spec = getattr(pydicom, "__spec__", None)
            if getattr(spec, "_initializing", False):  # pydicom's import is running
                raise ModuleNotFoundError("held out of pydicom's import", name=fullname)
        return None


if "pydicom" not in _sys.modules and "requests" not in _sys.modules and not any(
        isinstance(finder, _RequestsHeldFromPydicom) for finder in _sys.meta_path):
    _sys.meta_path.insert(0, _RequestsHeldFromPydicom())

if TYPE_CHECKING:
    from .config import Settings, load_settings
    from .node import Node
    from .remote import RemoteError, RemoteNode
    from .volume import NotAVolume, Volume, load_volume

#: Each public name → the module (under ``pacsnode``) that defines it.
_PUBLIC = {"RemoteNode": "remote", "RemoteError": "remote", "load_volume": "volume",
           "Volume": "volume", "NotAVolume": "volume", "Node": "node", "Settings": "config",
           "load_settings": "config"}

__all__ = ["__version__", "RemoteNode", "RemoteError", "load_volume", "Volume", "NotAVolume",
           "Node", "Settings", "load_settings"]


__getattr__, __dir__ = lazy_names(globals(), _PUBLIC)
