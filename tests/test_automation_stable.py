"""Arrival automation against real `pacsnode serve` processes: stable-study and
stable-series commands, webhooks, restarts, and several processes on one
PostgreSQL.  Instances arrive by DCMTK storescu, as from a modality."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

import conftest
from conftest import PacsnodeServer
from dicomfiles import make_ct

SENDER = "MODALITY1"


# -- helpers -------------------------------------------------------------------

def write_config(tmp_path: Path, name: str = "pacsnode.toml", **settings: Any) -> str:
    """A TOML config file (strings, numbers, lists of strings)."""
    lines = ["fsync = false"]
    for key, value in settings.items():
        if isinstance(value, (list, str)):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {value}")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def recording_script(tmp_path: Path, name: str = "on_stable.sh") -> tuple[Path, Path]:
    """A script appending one tab-separated line per run: the event, the
    instance count (from the environment), then its arguments."""
    log = tmp_path / f"{name}.log"
    script = tmp_path / name
    script.write_text("#!/bin/sh\n"
                      'line=$(printf \'%s\\t\' "$PACSNODE_EVENT" "$PACSNODE_INSTANCES" "$@")\n'
                      f'echo "$line" >> "{log}"\n')
    script.chmod(0o755)
    return script, log


def runs(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [line.split("\t")[:-1] for line in log.read_text().splitlines() if line]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def storescu(server: PacsnodeServer, files: list[Path], aet: str = SENDER) -> None:
    conftest.storescu(server, files, aet)


def make_study(folder: Path, series_count: int = 2, per_series: int = 3,
               **kw: Any) -> tuple[str, dict[str, list[str]], list[Path]]:
    """A CT study: (study UID, {series UID: [SOP UIDs]}, files)."""
    study = generate_uid()
    layout: dict[str, list[str]] = {}
    files: list[Path] = []
    for _ in range(series_count):
        series_uid = generate_uid()
        layout[series_uid] = []
        for n in range(1, per_series + 1):
            sop = generate_uid()
            path = folder / study / f"{series_uid}-{n}.dcm"
            make_ct(path, study_uid=study, series_uid=series_uid, sop_uid=sop, instance=n,
                    size=8, **kw)
            layout[series_uid].append(sop)
            files.append(path)
    return study, layout, files


def study_files(study_path: Path) -> list[str]:
    return sorted(str(p.relative_to(study_path)) for p in study_path.rglob("*") if p.is_file())


def expected_files(layout: dict[str, list[str]]) -> list[str]:
    return sorted(f"{se}/{sop}.dcm" for se, sops in layout.items() for sop in sops)


# -- one trigger per stable study / series -------------------------------------

def test_one_trigger_per_study_under_concurrent_load(tmp_path: Path, pacsnode_factory) -> None:
    """Five modalities send at once; each study and each series fires once,
    with the right arguments.  One study carries shell metacharacters in its
    patient data and calling AE title: nothing may execute them."""
    marker = f"/tmp/pwned-{secrets.token_hex(4)}"
    evil_id = f"$(touch {marker});`touch {marker}`|&"
    assert len(evil_id) <= 64
    script, log = recording_script(tmp_path)
    # Placeholders alone, inside a larger argument, and inside quotes.
    config = write_config(
        tmp_path, stable_study_seconds=2, stable_series_seconds=1,
        on_stable_study=f"{script} {{study_uid}} {{path}} {{patient_id}} --id={{patient_id}} "
                        f"'{{patient_id}} x' \"{{calling_aet}}\"",
        on_stable_series=f"{script} {{study_uid}} {{series_uid}} {{path}} {{study_path}}")
    server = pacsnode_factory(config=config)
    patients = [evil_id] + [f"PAT{i}" for i in range(1, 5)]
    aets = ["A;B$(X)"] + [f"MOD{i}" for i in range(1, 5)]
    studies = [make_study(tmp_path / "in", patient_id=patients[0],
                          patient_name=f"Evil^`touch {marker}`;$(touch {marker})",
                          description=f"; touch {marker}")]
    studies += [make_study(tmp_path / "in", patient_id=p) for p in patients[1:]]
    with ThreadPoolExecutor(5) as pool:
        for f in [pool.submit(storescu, server, files, aet)
                  for aet, (_s, _l, files) in zip(aets, studies)]:
            f.result()

    def study_runs() -> list[list[str]]:
        return [r for r in runs(log) if r[0] == "stable_study"]
    wait_until(lambda: len(study_runs()) >= 5, 20, "five stable-study runs")
    time.sleep(1.5)  # a second trigger would have come by now
    by_study = {r[2]: r for r in study_runs()}
    assert len(study_runs()) == 5 and len(by_study) == 5, runs(log)
    root = (server.data_dir / "studies").resolve()
    for (study, layout, _files), patient_id, aet in zip(studies, patients, aets):
        assert by_study[study] == ["stable_study", "6", study, str(root / study), patient_id,
                                   f"--id={patient_id}", f"{patient_id} x", aet]
        assert study_files(root / study) == expected_files(layout)
    assert not os.path.exists(marker)
    series_runs = [r for r in runs(log) if r[0] == "stable_series"]
    expected_series = {(study, se) for study, layout, _ in studies for se in layout}
    assert sorted((r[2], r[3]) for r in series_runs) == sorted(expected_series)
    for _event, count, study, se, path, study_path in series_runs:
        assert count == "3"
        assert Path(path) == root / study / se and Path(study_path) == root / study
    assert "exit 0" in server.log()


def test_busy_study_waits_until_quiet_and_fires_again_after_late_instance(
        tmp_path: Path, pacsnode_factory) -> None:
    script, log = recording_script(tmp_path)
    config = write_config(tmp_path, stable_study_seconds=2,
                          on_stable_study=f"{script} {{study_uid}} {{path}}")
    server = pacsnode_factory(config=config)
    study, _layout, files = make_study(tmp_path / "in", series_count=1, per_series=7)
    # A trickle longer than the quiet period, each gap shorter than it.
    for f in files[:5]:
        storescu(server, [f])
        time.sleep(0.4)
        assert runs(log) == [], "fired while instances were still arriving"
    first = wait_until(lambda: runs(log), 10, "the first trigger")
    assert first == [["stable_study", "5", study, str((server.data_dir / "studies" / study)
                                                       .resolve())]]
    storescu(server, files[5:])  # late instances
    second = wait_until(lambda: runs(log)[1:], 10, "the second trigger")
    assert second[0][:3] == ["stable_study", "7", study]
    time.sleep(1.5)
    assert len(runs(log)) == 2, runs(log)


def test_imports_count_and_deleted_studies_do_not(tmp_path: Path, pacsnode_factory) -> None:
    """`pacsnode import` beside serve (same config) triggers; a study deleted
    before it is quiet does not."""
    script, log = recording_script(tmp_path)
    config = write_config(tmp_path, stable_study_seconds=2,
                          on_stable_study=f"{script} {{study_uid}} {{calling_aet}}")
    server = pacsnode_factory(config=config)
    doomed, _l, doomed_files = make_study(tmp_path / "doomed", series_count=1, per_series=2)
    imported, _l2, imported_files = make_study(tmp_path / "imported", series_count=1,
                                               per_series=3)
    storescu(server, doomed_files)
    r = httpx.delete(f"{server.base_url}/dicomweb/studies/{doomed}", timeout=10)
    assert r.status_code == 204, r.text
    result = subprocess.run([sys.executable, "-m", "pacsnode", "import",
                             str(imported_files[0].parent), "--config", config,
                             "--data-dir", str(server.data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: runs(log), 10, "the imported study's trigger")
    time.sleep(1.5)
    assert runs(log) == [["stable_study", "3", imported, ""]]


def test_pending_triggers_survive_kill_and_restart(tmp_path: Path, pacsnode_factory) -> None:
    script, log = recording_script(tmp_path)
    config = write_config(tmp_path, stable_study_seconds=2,
                          on_stable_study=f"{script} {{study_uid}} {{patient_id}}")
    data = tmp_path / "shared-data"
    killed, _l, files = make_study(tmp_path / "in", series_count=2, per_series=2,
                                   patient_id="KILLED")
    stopped, _l2, files2 = make_study(tmp_path / "in", series_count=1, per_series=2,
                                      patient_id="STOPPED")
    first = pacsnode_factory(config=config, data_dir=data)
    storescu(first, files)
    first.kill()  # kill -9 within the quiet period
    assert runs(log) == []
    second = pacsnode_factory(config=config, data_dir=data)
    wait_until(lambda: runs(log), 10, "the trigger after kill -9")
    storescu(second, files2)
    second.stop()  # SIGTERM within the quiet period
    assert runs(log) == [["stable_study", "4", killed, "KILLED"]]
    pacsnode_factory(config=config, data_dir=data)
    wait_until(lambda: runs(log)[1:], 10, "the trigger after SIGTERM")
    time.sleep(1)
    assert runs(log) == [["stable_study", "4", killed, "KILLED"],
                         ["stable_study", "2", stopped, "STOPPED"]]


# -- webhooks --------------------------------------------------------------------

class Receiver:
    """An HTTP endpoint answering the first `failures` POSTs with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts: list[dict] = []
        self.accepted: list[dict] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.attempts.append(body)
                    ok = len(outer.attempts) > outer.failures
                    if ok:
                        outer.accepted.append(body)
                self.send_response(204 if ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhooks_retry_and_deliver_each_event_once(tmp_path: Path, pacsnode_factory) -> None:
    receiver = Receiver(failures=2)
    try:
        dead = "http://127.0.0.1:9/unreachable"  # refused: must not hold up the other
        config = write_config(tmp_path, stable_study_seconds=2, stable_series_seconds=2,
                              webhooks=[receiver.url, dead])
        server = pacsnode_factory(config=config)
        made = [make_study(tmp_path / "in", series_count=2, per_series=2, patient_id=f"W{i}")
                for i in range(2)]
        for _s, _l, files in made:
            storescu(server, files, aet="HOOKED")
        wait_until(lambda: len(receiver.accepted) >= 6, 20, "2 study + 4 series events")
        time.sleep(1.5)
        studies = [e for e in receiver.accepted if e["event"] == "stable_study"]
        series = [e for e in receiver.accepted if e["event"] == "stable_series"]
        assert len(receiver.attempts) == 8 and len(receiver.accepted) == 6
        assert sorted(e["study_uid"] for e in studies) == sorted(s for s, _l, _f in made)
        root = (server.data_dir / "studies").resolve()
        for i, (study, layout, _files) in enumerate(made):
            event = next(e for e in studies if e["study_uid"] == study)
            assert event["patient_id"] == f"W{i}" and event["calling_aet"] == "HOOKED"
            assert event["instances"] == 4 and event["path"] == str(root / study)
            assert datetime.fromisoformat(event["at"]).tzinfo is not None
            assert sorted(e["series_uid"] for e in series if e["study_uid"] == study) == \
                sorted(layout)
        assert all(e["instances"] == 2 for e in series)
        assert len({e["id"] for e in receiver.accepted}) == 6
        assert "retrying" in server.log()
    finally:
        receiver.close()


# -- several serve processes on one PostgreSQL ------------------------------------
# -- several serve processes on one PostgreSQL ------------------------------------

def test_two_processes_on_postgres_fire_each_study_once(tmp_path: Path, pacsnode_factory,
                                                        postgres) -> None:
    url = postgres.new_database()
    script, log = recording_script(tmp_path)
    config = write_config(tmp_path, stable_study_seconds=2, stable_series_seconds=2,
                          on_stable_study=f"{script} study {{study_uid}}",
                          on_stable_series=f"{script} series {{series_uid}}")
    data = tmp_path / "shared-data"
    a = pacsnode_factory(config=config, data_dir=data, database_url=url)
    b = pacsnode_factory(config=config, data_dir=data, database_url=url)
    made = [make_study(tmp_path / "in", series_count=2, per_series=3) for _ in range(4)]
    jobs = []
    for _s, _l, files in made:  # every study and series arrives through both processes
        jobs += [(a, files[0::2]), (b, files[1::2])]
    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(storescu, server, files) for server, files in jobs]:
            f.result()
    wait_until(lambda: len(runs(log)) >= 12, 20, "4 study + 8 series triggers")
    time.sleep(1.5)
    got = runs(log)
    assert len(got) == 12, got
    assert sorted(r[3] for r in got if r[0] == "stable_study") == sorted(s for s, _l, _f in made)
    assert sorted(r[3] for r in got if r[0] == "stable_series") == \
        sorted(se for _s, layout, _f in made for se in layout)
    assert all(r[1] == "6" for r in got if r[0] == "stable_study")
    assert all(r[1] == "3" for r in got if r[0] == "stable_series")


