"""RemoteNode: a remote DICOM node as a Python object, a thin, friendly
face over :mod:`pacsnode.remote.scu` (see :mod:`pacsnode.remote`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from . import scu
from .errors import RemoteError
from .identifiers import Level, infer_level
from .peer import Peer
from .receiver import storage_scp
from .scu import GetResult, Progress, SendResult

__all__ = ["RemoteNode"]


class RemoteNode:
    """A remote DICOM node (PACS, modality, workstation) we act as SCU for.

    Each call opens and releases its own association.  Errors raise
    :class:`RemoteError` (or a subclass) whose message names the node.
    """

    def __init__(self, aet: str, host: str, port: int, calling_aet: str = "PACSNODE", *,
                 timeout: float = 30.0, dimse_timeout: float | None = 600.0) -> None:
        self.peer = Peer(aet=aet, host=host, port=int(port), calling_aet=calling_aet,
                         timeout=timeout, dimse_timeout=dimse_timeout)

    @property
    def aet(self) -> str:
        return self.peer.aet

    @property
    def host(self) -> str:
        return self.peer.host

    @property
    def port(self) -> int:
        return self.peer.port

    @property
    def calling_aet(self) -> str:
        return self.peer.calling_aet

    def __repr__(self) -> str:
        return (f"RemoteNode(aet={self.aet!r}, host={self.host!r}, port={self.port}, "
                f"calling_aet={self.calling_aet!r})")

    def echo(self) -> float:
        """C-ECHO; the round trip in milliseconds."""
        return scu.echo(self.peer)

    def find(self, level: str | Level = "STUDY", *, fields: Iterable[str] = (),
             model: str | None = None, defaults: bool = True, limit: int | None = None,
             **keys: Any) -> list[dict[str, Any]]:
        """C-FIND at ``level`` with matching keys as keyword arguments::

            node.find("SERIES", PatientID="99999", StudyDate="20111206",
                      SeriesDescription="AX*")

        Values: ``"AX*"``/``"?"`` wildcards, ``"20200101-"`` ranges, a list
        for a UID list, ``None``/``""`` to just return the attribute.
        ``fields`` adds return keys.  Answers are flat dicts keyword → value
        (see :mod:`pacsnode.remote.identifiers` for the value types).
        """
        return scu.find(self.peer, level, keys, fields=fields, model=model,
                        defaults=defaults, limit=limit)

    def _retrieve_keys(self, level: str | Level | None, patient_id: str | None,
                       study_uid: str | None, series_uid: str | None,
                       sop_uid: str | None,
                       keys: dict[str, Any] | None) -> tuple[Level, dict[str, Any]]:
        merged = dict(keys or {})
        for keyword, value in (("PatientID", patient_id), ("StudyInstanceUID", study_uid),
                               ("SeriesInstanceUID", series_uid),
                               ("SOPInstanceUID", sop_uid)):
            if value is not None:
                merged[keyword] = value
        lv = Level.parse(level) if isinstance(level, str) else (level or infer_level(merged))
        return lv, merged

    def move(self, study_uid: str | None = None, series_uid: str | None = None,
             sop_uid: str | None = None, *, destination: str,
             level: str | Level | None = None, patient_id: str | None = None,
             keys: dict[str, Any] | None = None, model: str | None = None,
             on_progress: Callable[[Progress], None] | None = None,
             cancel: threading.Event | None = None, listen_port: int | None = None,
             listen_host: str = "0.0.0.0",
             on_store: Callable[[Dataset], int | None] | None = None) -> Progress:
        """C-MOVE a study, series or instance (the level follows from the
        most specific UID given, unless ``level`` says) to ``destination``,
        an AE title the remote node knows (us, or a third node).  Returns
        the final :class:`Progress`; ``on_progress`` sees every response and
        setting ``cancel`` sends a C-CANCEL.

        With ``listen_port``, a temporary Storage SCP titled ``destination``
        listens on ``listen_host:listen_port`` during the move and hands each
        instance to ``on_store`` (the remote node must map ``destination`` to
        that address).  Without it, whoever ``destination`` is receives.
        """
        lv, merged = self._retrieve_keys(level, patient_id, study_uid, series_uid, sop_uid,
                                         keys)
        if listen_port is None:
            return scu.move(self.peer, lv, merged, destination, model=model, cancel=cancel,
                            on_progress=on_progress)
        if on_store is None:
            raise ValueError("listen_port needs on_store, to say where instances go")
        with storage_scp(destination, listen_port, on_store, host=listen_host):
            return scu.move(self.peer, lv, merged, destination, model=model, cancel=cancel,
                            on_progress=on_progress)

    def get(self, study_uid: str | None = None, series_uid: str | None = None,
            sop_uid: str | None = None, *, level: str | Level | None = None,
            patient_id: str | None = None, keys: dict[str, Any] | None = None,
            model: str | None = None,
            on_store: Callable[[Dataset], int | None] | None = None,
            on_progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | None = None) -> GetResult:
        """C-GET into memory (``GetResult.datasets``) or into ``on_store``
        (called with each received Dataset, e.g. to put it in an archive)."""
        lv, merged = self._retrieve_keys(level, patient_id, study_uid, series_uid, sop_uid,
                                         keys)
        return scu.get(self.peer, lv, merged, model=model, on_store=on_store,
                       on_progress=on_progress, cancel=cancel)

    def get_series(self, study_uid: str, series_uid: str, *,
                   on_progress: Callable[[Progress], None] | None = None,
                   cancel: threading.Event | None = None) -> list[Dataset]:
        """C-GET one series into memory: its instances as pydicom Datasets
        (with ``file_meta``), in the order received.

        Raises :class:`RemoteError` when any instance failed to arrive or the
        retrieve was cancelled: a partial series is not returned as if whole.
        """
        result = self.get(study_uid, series_uid, level=Level.SERIES,
                          on_progress=on_progress, cancel=cancel)
        progress = result.progress
        if progress.cancelled or progress.failed or result.store_errors:
            what = "cancelled" if progress.cancelled else (
                f"{progress.failed} of {progress.total} instances failed")
            raise RemoteError(self.peer, f"C-GET of series {series_uid} {what}",
                              status=progress.status, result=result)
        return result.datasets

    def send(self, paths: Iterable[str | Path] | str | Path, *,
             on_result: Callable[[SendResult], None] | None = None,
             cancel: threading.Event | None = None, parallel: int = 1) -> list[SendResult]:
        """C-STORE files and folders (recursively); one result per file.
        ``parallel``: over that many associations at once."""
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        return scu.send(self.peer, items, on_result=on_result, cancel=cancel,
                        parallel=parallel)
