"""Talking to other DICOM nodes: the Python API.

```python
from pacsnode import RemoteNode, load_volume
pacs = RemoteNode(aet="ORTHANC", host="127.0.0.1", port=4242, calling_aet="ME")
hits = pacs.find("SERIES", PatientID="99999", StudyDate="20111206",
                 SeriesDescription="AX*")
datasets = pacs.get_series(hits[0]["StudyInstanceUID"], hits[0]["SeriesInstanceUID"])
vol = load_volume(datasets)
```

:class:`RemoteNode` is a thin, friendly face over :mod:`pacsnode.remote.scu`,
which the CLI and the REST API use too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .errors import (AssociationAborted, AssociationRejected, ConnectionFailed,
                         NoAcceptedContext, RemoteError)
    from .identifiers import Level
    from .peer import Peer
    from .remote_node import RemoteNode
    from .scu import GetResult, Progress, SendResult

#: Each name → the module (under ``pacsnode.remote``) that defines it,
#: imported on first use (PEP 562): ``pacsnode send`` imports
#: ``remote.send`` without the C-FIND/C-MOVE/C-GET side and pydicom.
_NAMES = {"RemoteNode": "remote_node", "Peer": "peer", "Progress": "scu",
          "GetResult": "scu", "SendResult": "send", "Level": "identifiers",
          "RemoteError": "errors", "ConnectionFailed": "errors",
          "AssociationRejected": "errors", "AssociationAborted": "errors",
          "NoAcceptedContext": "errors"}

__all__ = ["RemoteNode", "Peer", "Progress", "GetResult", "SendResult", "Level",
           "RemoteError", "ConnectionFailed", "AssociationRejected", "AssociationAborted",
           "NoAcceptedContext"]


__getattr__, __dir__ = lazy_names(globals(), _NAMES)
