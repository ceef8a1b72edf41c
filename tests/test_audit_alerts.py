"""Security Alerts of refused associations are bounded (docs/SECURITY.md):
the first of each (address, AE, request, reason) at once, then at most one
per window with the count of those it stands for; an address that changes
its AE title on every try is folded into one group.  Against DCMTK's
echoscu: 200 refused associations make a few audit rows whose counts add
up to 200, and the node serves meanwhile.  The windows themselves with a
clock the test turns (AlertThrottle alone)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from conftest import dcmtk
from pacsnode.access.alerts import GROUPS_PER_ADDRESS, AlertThrottle
from pacsnode.audit import AuditEvent
from test_auth_dimse import _events
from test_dimse import run


def _alert(user: str, address: str = "10.0.0.1", reason: str = "not allowed",
           at: float = 1000.0) -> AuditEvent:
    return AuditEvent("Security Alert", 4, user, address, time=at,
                      detail={"request": "A-ASSOCIATE-RQ to US", "reason": reason,
                              "protocol": "DIMSE"})


def test_first_at_once_then_one_per_window_with_a_count() -> None:
    now = [0.0]
    recorded: list[AuditEvent] = []
    throttle = AlertThrottle(recorded.append, window=60.0, clock=lambda: now[0],
                             background=False)
    throttle.alert(_alert("X", at=1000.0))
    assert [e.detail["count"] for e in recorded] == [1]
    for n in range(9):  # within the window: counted, not recorded
        now[0] = 1.0 + n
        throttle.alert(_alert("X", at=1001.0 + n))
    throttle.alert(_alert("Y"))  # another AE: its own group, at once
    assert [(e.user, e.detail["count"]) for e in recorded] == [("X", 1), ("Y", 1)]
    assert throttle.tick() == 60.0 - 9.0  # nothing ended; X's window ends first
    assert len(recorded) == 2
    now[0] = 61.0  # X's window ends: one event for the nine, timed as the first of them
    throttle.tick()
    assert [(e.user, e.detail["count"], e.time, e.detail["until"][:19])
            for e in recorded[2:]] == [("X", 9, 1001.0, "1970-01-01T00:16:49")]
    now[0] = 130.0  # a quiet window: the groups are forgotten, the next is at once
    throttle.tick()
    assert len(recorded) == 3
    throttle.alert(_alert("X"))
    assert recorded[-1].detail["count"] == 1 and len(recorded) == 4
    throttle.close()
    assert len(recorded) == 4  # nothing was being counted


def test_an_address_changing_its_ae_is_folded() -> None:
    recorded: list[AuditEvent] = []
    throttle = AlertThrottle(recorded.append, window=60.0, clock=lambda: 0.0,
                             background=False)
    for n in range(100):
        throttle.alert(_alert(f"AE{n:03d}"))
    throttle.alert(_alert("OTHER", address="10.0.0.2"))
    throttle.close()  # what is counted is recorded at shutdown
    assert len(recorded) == GROUPS_PER_ADDRESS + 1 + 1 + 1
    assert sum(e.detail["count"] for e in recorded) == 101
    folded = [e for e in recorded if e.user == ""]
    assert [e.detail["count"] for e in folded] == [1, 100 - GROUPS_PER_ADDRESS - 1]
    assert all(e.address == "10.0.0.1" and "further refusals" in e.detail["reason"]
               for e in folded)


def _refuse(node: Any, aets: list[str]) -> None:
    """One echoscu per AE title, eight at a time; each must be rejected."""
    port = str(node.dicom_port)
    for start in range(0, len(aets), 8):
        procs = [subprocess.Popen([dcmtk("echoscu"), "-aet", aet, "-aec", node.aet,
                                   "127.0.0.1", port], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, encoding="latin-1")
                 for aet in aets[start:start + 8]]
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode != 0 and "Calling AE Title Not Recognized" in out, out


def test_a_flood_of_refused_associations_is_counted_not_copied(pacsnode_factory,
                                                                tmp_path: Path) -> None:
    config = tmp_path / "closed.toml"
    config.write_text('dimse_unknown_ae = []\n'
                      '[nodes.FRIEND]\naet = "FRIEND"\nhost = "127.0.0.1"\nport = 104\n')
    node = pacsnode_factory(config=str(config), extra_env={"PACSNODE_DIMSE_PROCESSES": "1"})
    # 150 tries as one AE title, and 50 with a new title each time.
    _refuse(node, ["INTRUDER"] * 75 + [f"SCAN{n:02d}" for n in range(50)] + ["INTRUDER"] * 75)
    ok = run(dcmtk("echoscu"), "-v", "-aet", "FRIEND", "-aec", node.aet, "127.0.0.1",
             str(node.dicom_port))
    assert "Received Echo Response (Success)" in ok.stdout + ok.stderr
    assert node.log().count("refused by the DIMSE policy") == 200  # every one logged
    node.stop()  # the counted alerts are recorded at shutdown
    alerts = [e for e in _events(node, 1) if e["event"] == "Security Alert"]
    assert sum(e["detail"]["count"] for e in alerts) == 200
    assert len(alerts) <= 2 * (GROUPS_PER_ADDRESS + 1)
    intruder = [e["detail"]["count"] for e in alerts if e["user"] == "INTRUDER"]
    assert intruder[0] == 1 and sum(intruder) == 150
    assert all(e["address"] == "127.0.0.1" and e["outcome"] == 4 for e in alerts)
