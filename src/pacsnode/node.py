"""The core of a node, built from Settings: index, blob store, event bus,
the one ingest path and the one query engine — what every protocol adapter
(DIMSE, DICOMweb, REST, the commands) is given.  The running ``serve``
process (DIMSE server, HTTP server, background services) is assembled on
top of it in ``serve.py``, which the adapters never import."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .config import NodeConfig, Settings, stored_allow
from .dicom import extra_tags
from .events import EventBus
from .index.db import Database
from .ingest import Ingestor
from .query.engine import QueryEngine
from .storage import FileStore

__all__ = ["Node"]

log = logging.getLogger("pacsnode")


@dataclass
class Node:
    """Everything a protocol adapter needs: settings, index, blob store,
    the one ingest path and the one query engine."""

    settings: Settings
    db: Database = field(init=False)
    store: FileStore = field(init=False)
    bus: EventBus = field(init=False)
    ingestor: Ingestor = field(init=False)
    engine: QueryEngine = field(init=False)

    def __post_init__(self) -> None:
        data_dir = Path(self.settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = FileStore(data_dir, fsync=self.settings.fsync)
        self.db = Database(self.settings.index_url)
        self.bus = EventBus()
        self.ingestor = Ingestor(self.db, self.store, self.bus, self.settings.duplicate_policy)
        self.engine = QueryEngine(self.db)
        extra_tags.configure(extra_tags.parse_extra_tags(self.settings.extra_query_tags))

    def remote_nodes(self) -> dict[str, NodeConfig]:
        """Configured remote nodes: the TOML's, overlaid by those added at run
        time (persisted in the index database)."""
        from sqlalchemy import select

        from .index.schema import nodes
        out = dict(self.settings.nodes)
        with self.db.read() as conn:
            for row in conn.execute(select(nodes)).all():
                out[row.name] = NodeConfig(row.name, row.aet, row.host, int(row.port),
                                           stored_allow(row.allow), bool(row.tls))
        return out

    def node_by_aet(self, aet: str) -> NodeConfig | None:
        for node in self.remote_nodes().values():
            if node.aet == aet:
                return node
        return None

    def close(self) -> None:
        self.db.dispose()
