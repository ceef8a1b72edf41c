"""pacsnode — a DICOM node in Python.

The public Python API: talk to another PACS (``RemoteNode``), turn a series
into a numpy volume (``load_volume``), and run the archive in-process
(``Node`` with ``load_settings``)."""

from __future__ import annotations

__version__ = "0.1.0"

import sys as _sys


def _import_pydicom_without_requests() -> None:
    """Import pydicom with ``requests`` held out of that one import.

    pydicom imports ``requests`` (and with it urllib3, charset_normalizer,
    idna, certifi) at import time only to download its own test files
    (``pydicom.data.download``), and falls back to urllib when it is missing.
    pacsnode never downloads them, and each server process would pay some
    MiB of memory for it.  The hold ends with the import: ``import
    requests`` later, here or in the user's code, works as usual."""
    if "pydicom" in _sys.modules or "requests" in _sys.modules:
        return
    _sys.modules["requests"] = None  # type: ignore[assignment]  # makes its import fail
    try:
        import pydicom  # noqa: F401
    finally:
        del _sys.modules["requests"]


_import_pydicom_without_requests()

from .config import Settings, load_settings
from .node import Node
from .remote import RemoteError, RemoteNode
from .volume import NotAVolume, Volume, load_volume

__all__ = ["__version__", "RemoteNode", "RemoteError", "load_volume", "Volume", "NotAVolume",
           "Node", "Settings", "load_settings"]
