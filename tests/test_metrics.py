"""GET /api/v1/statistics (what the archive holds) and GET /metrics
(Prometheus text: operations by protocol with latencies, associations, jobs
by state, the archive's sizes), over HTTP and DIMSE with DCMTK."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import dcmtk
from web_server import WebServer, make_instance, uid, web  # noqa: F401


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_statistics_counts_what_is_stored(web: WebServer) -> None:
    empty = httpx.get(f"{web.base_url}/api/v1/statistics", timeout=30).json()
    assert {k: empty[k] for k in ("patients", "studies", "series", "instances", "bytes")} == \
        dict(patients=0, studies=0, series=0, instances=0, bytes=0)
    # Free space of the blob store's file system (other tests write to it too).
    assert 0 < empty["disk_free"] <= shutil.disk_usage(web.node.store.root).total
    s1, s2 = uid(), uid()
    parts = [make_instance(s1, se, uid(), patient_id="P1") for se in (uid(), uid())]
    parts.append(make_instance(s2, uid(), uid(), patient_id="P2"))
    assert web.stow(parts).status_code == 200
    stats = httpx.get(f"{web.base_url}/api/v1/statistics", timeout=30).json()
    stored = sum(p.stat().st_size for p in (web.node.store.root / "studies").rglob("*.dcm"))
    assert stats["patients"] == 2 and stats["studies"] == 2 and stats["series"] == 3
    assert stats["instances"] == 3 and stats["bytes"] == stored
    assert stats["disk_free"] > 0
    assert set(stats) == {"patients", "studies", "series", "instances", "bytes", "disk_free"}


def test_metrics_count_http_operations_and_read_the_index(web: WebServer) -> None:
    before = _samples(httpx.get(f"{web.base_url}/metrics", timeout=30).text)
    s, se, i = uid(), uid(), uid()
    assert web.stow([make_instance(s, se, i)]).status_code == 200
    c = web.client()
    assert c.get("/studies", params={"PatientID": "P1"}).status_code == 200
    assert c.get(f"/studies/{s}/series/{se}/instances/{i}/rendered").status_code == 200
    assert c.get("/studies", params={"bogus": "1"}).status_code == 400
    r = httpx.get(f"{web.base_url}/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    after = _samples(r.text)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("pacsnode_operations_total", protocol="dicomweb", operation="store",
                 outcome="ok") == 1
    assert delta("pacsnode_operations_total", protocol="dicomweb", operation="query",
                 outcome="ok") == 1
    assert delta("pacsnode_operations_total", protocol="dicomweb", operation="query",
                 outcome="refused") == 1
    assert delta("pacsnode_operations_total", protocol="dicomweb", operation="retrieve",
                 outcome="ok") == 1
    assert delta("pacsnode_operation_seconds_count", protocol="dicomweb",
                 operation="query") == 2
    assert _value(after, "pacsnode_instances") == 1
    assert _value(after, "pacsnode_studies") == 1
    assert _value(after, "pacsnode_stored_bytes") > 0
    for state in ("pending", "running", "succeeded", "failed", "canceled"):
        assert ("pacsnode_jobs", (("state", state),)) in after


def test_metrics_of_dimse_across_processes(pacsnode_factory, tmp_path: Path) -> None:
    """C-STOREs with DCMTK's storescu to a serve of two DIMSE processes
    (prometheus-client's multi-process mode, PROMETHEUS_MULTIPROC_DIR):
    whichever process took each association, /metrics counts them all."""
    storescu = dcmtk("storescu")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    node = pacsnode_factory(extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                                       "PACSNODE_DIMSE_PROCESSES": "2"})
    files = []
    s = uid()
    for n in range(3):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(make_instance(s, uid(), uid(), instance_number=n + 1))
        files.append(path)
    env = dict(os.environ, TCP_NODELAY="1")
    for path in files:  # one association each
        subprocess.run([storescu, "-aec", node.aet, "127.0.0.1", str(node.dicom_port),
                        str(path)], check=True, env=env, timeout=60)
    text = httpx.get(node.base_url + "/metrics", timeout=30).text
    samples = _samples(text)
    assert _value(samples, "pacsnode_operations_total", protocol="dimse", operation="store",
                  outcome="ok") == 3
    assert _value(samples, "pacsnode_dimse_associations_total") == 3
    assert _value(samples, "pacsnode_operation_seconds_count", protocol="dimse",
                  operation="store") == 3
    assert _value(samples, "pacsnode_instances") == 3
