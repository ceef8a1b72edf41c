"""pacsnode — a DICOM node in Python.

The public Python API: talk to another PACS (``RemoteNode``), turn a series
into a numpy volume (``load_volume``), and run the archive in-process
(``Node`` with ``load_settings``)."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Settings, load_settings
from .node import Node
from .remote import RemoteError, RemoteNode
from .volume import NotAVolume, Volume, load_volume

__all__ = ["__version__", "RemoteNode", "RemoteError", "load_volume", "Volume", "NotAVolume",
           "Node", "Settings", "load_settings"]
