"""What ``GET /metrics`` reports (Prometheus text, through ``prometheus-client``).

Two kinds of numbers:

* counted as they happen, in the process that serves them: operations
  (store, query, retrieve, delete, echo …) by protocol and outcome, their
  latencies, and DIMSE associations.  Counting is a lock and an addition
  (``operation`` costs about two microseconds), nothing per byte;
* read from the index when scraped, so the same in every process of a
  cluster: patients, studies, series, instances, stored bytes, free disk,
  and jobs by state (``IndexCollector``).

Counts live in this process's memory.  With ``dimse_processes`` > 1 the
DIMSE worker processes count for themselves: to have their counts in
``/metrics`` too, point the environment variable ``PROMETHEUS_MULTIPROC_DIR``
at an empty folder before ``pacsnode serve`` starts (prometheus-client's
multi-process mode; the workers inherit it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .node import Node

__all__ = ["OPERATIONS", "LATENCY", "ASSOCIATIONS", "ACTIVE_ASSOCIATIONS", "operation",
           "registry_for", "IndexCollector", "statistics"]

#: Seconds; from a small C-STORE (~2 ms) to a large study's retrieve.
_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0)

OPERATIONS = Counter("pacsnode_operations", "Operations answered, by protocol "
                     "(dimse, dicomweb, rest), operation and outcome (ok, refused, failed)",
                     ["protocol", "operation", "outcome"])
LATENCY = Histogram("pacsnode_operation_seconds", "Time from request to final answer",
                    ["protocol", "operation"], buckets=_BUCKETS)
ASSOCIATIONS = Counter("pacsnode_dimse_associations", "DIMSE associations accepted")
ACTIVE_ASSOCIATIONS = Gauge("pacsnode_dimse_associations_active",
                            "DIMSE associations open now", multiprocess_mode="livesum")


#: The labelled children by (protocol, operation, outcome), found once.
_CHILDREN: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}


def operation(protocol: str, name: str, outcome: str, seconds: float) -> None:
    """One answered operation (a dict lookup, an increment and a bucket)."""
    key = (protocol, name, outcome)
    children = _CHILDREN.get(key)
    if children is None:
        children = _CHILDREN[key] = (OPERATIONS.labels(*key), LATENCY.labels(protocol, name))
    children[0].inc()
    children[1].observe(seconds)


def statistics(node: Node) -> dict[str, int]:
    """``{"patients", "studies", "series", "instances", "bytes", "disk_free"}``
    of the archive: counts and summed sizes from the index (one query),
    free space of the blob store's file system."""
    from sqlalchemy import func, select

    from .index.schema import instances, patients, series, studies
    counts = select(
        select(func.count()).select_from(patients).scalar_subquery(),
        select(func.count()).select_from(studies).scalar_subquery(),
        select(func.count()).select_from(series).scalar_subquery(),
        select(func.count()).select_from(instances).scalar_subquery(),
        select(func.coalesce(func.sum(instances.c.size), 0)).scalar_subquery())
    with node.db.read() as conn:
        row = conn.execute(counts).one()
    return {"patients": int(row[0]), "studies": int(row[1]), "series": int(row[2]),
            "instances": int(row[3]), "bytes": int(row[4]),
            "disk_free": int(shutil.disk_usage(node.store.root).free)}


class IndexCollector(Collector):
    """The archive's sizes and the jobs by state, read from the index at
    each scrape (what every process of a cluster sees alike)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from .index.jobs_tables import JOB_STATES, jobs
        stats = statistics(self.node)
        for key in ("patients", "studies", "series", "instances"):
            yield GaugeMetricFamily(f"pacsnode_{key}", f"{key.capitalize()} in the archive",
                                    value=stats[key])
        yield GaugeMetricFamily("pacsnode_stored_bytes", "Bytes of the stored instances",
                                value=stats["bytes"])
        yield GaugeMetricFamily("pacsnode_disk_free_bytes",
                                "Free space on the blob store's file system",
                                value=stats["disk_free"])
        with self.node.db.read() as conn:
            by_state: dict[str, int] = dict(conn.execute(select(jobs.c.state, func.count())
                                         .group_by(jobs.c.state)).all())
        family = GaugeMetricFamily("pacsnode_jobs", "Jobs by state", labels=["state"])
        for state in JOB_STATES:
            family.add_metric([state], int(by_state.get(state, 0)))
        yield family


def registry_for(node: Node) -> CollectorRegistry:
    """The registry ``/metrics`` answers from: this process's counts (or,
    with ``PROMETHEUS_MULTIPROC_DIR``, those of every process of this
    serve) and the index's numbers."""
    from prometheus_client import REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector
        # (prometheus_client leaves this constructor unannotated)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Ours(REGISTRY))
    registry.register(IndexCollector(node))
    return registry


class _Ours(Collector):
    """The default registry's metrics: ours (made there) and
    prometheus-client's process ones (memory, CPU, open files)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
