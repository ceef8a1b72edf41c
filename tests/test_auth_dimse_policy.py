"""The DIMSE policy decision (access/dimse.py), on its own: which AE may
do what, from where, and what a refusal looks like (DESIGN.md §8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsnode.access.dimse import (NOT_AUTHORIZED, REJECT_CALLED, REJECT_CALLING, build_policy,
                                   operation_of, refusal)
from pacsnode.config import NodeConfig, load_settings

ALL = frozenset({"echo", "store", "find", "get", "move"})
C_ECHO, C_STORE, C_FIND, C_GET, C_MOVE, N_ACTION = 0x30, 0x01, 0x20, 0x10, 0x21, 0x130


def _settings(tmp_path: Path, text: str):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return load_settings(path, environ={})


def test_defaults_let_every_ae_do_everything(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    policy = build_policy(settings, [])
    got = policy.admit("ANYONE", "WHATEVER", "192.0.2.7")
    assert got.rejection is None and got.allowed == ALL and not got.known


def test_a_node_gets_its_allow_list_only_from_its_host(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'dimse_unknown_ae = ["echo"]\n'
                         '[nodes.CT]\naet = "CT1"\nhost = "10.1.2.3"\nport = 104\n'
                         'allow = ["store", "echo"]\n'
                         '[nodes.WS]\naet = "WS"\nhost = "localhost"\nport = 104\n')
    policy = build_policy(settings, settings.nodes.values())
    ct = policy.admit("CT1", "PACSNODE", "10.1.2.3")
    assert ct.known and ct.allowed == {"store", "echo"}
    assert policy.admit("CT1", "PACSNODE", "::ffff:10.1.2.3").allowed == {"store", "echo"}
    spoofed = policy.admit("CT1", "PACSNODE", "10.1.2.4")  # the title, another address
    assert not spoofed.known and spoofed.allowed == {"echo"}
    ws = policy.admit("WS", "PACSNODE", "127.0.0.1")  # a host name, resolved
    assert ws.known and ws.allowed == ALL
    assert policy.admit("NOBODY", "PACSNODE", "127.0.0.1").allowed == {"echo"}


def test_nothing_allowed_is_a_rejection_naming_the_calling_ae(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'dimse_unknown_ae = []\n'
                         '[nodes.OFF]\naet = "OFF"\nhost = "127.0.0.1"\nport = 104\nallow = []\n')
    policy = build_policy(settings, settings.nodes.values())
    unknown = policy.admit("STRANGER", "PACSNODE", "127.0.0.1")
    assert unknown.rejection == REJECT_CALLING == (1, 1, 3)
    assert "STRANGER" in unknown.reason and "dimse_unknown_ae" in unknown.reason
    off = policy.admit("OFF", "PACSNODE", "127.0.0.1")
    assert off.known and off.rejection == REJECT_CALLING and "OFF" in off.reason


def test_check_called_ae(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 'check_called_ae = true\nae_title = "ME"\n'
                         'cluster_ae_title = "CLUSTER"\n')
    policy = build_policy(settings, [])
    assert policy.admit("X", "ME", "127.0.0.1").rejection is None
    assert policy.admit("X", "CLUSTER", "127.0.0.1").rejection is None
    other = policy.admit("X", "ANY-SCP", "127.0.0.1")
    assert other.rejection == REJECT_CALLED == (1, 1, 7) and "ANY-SCP" in other.reason
    assert build_policy(load_settings(environ={}), []).admit("X", "ANY-SCP",
                                                             "127.0.0.1").rejection is None


def test_refusal_of_each_operation() -> None:
    assert NOT_AUTHORIZED == 0x0124
    assert [operation_of(f) for f in (C_ECHO, C_STORE, C_FIND, C_GET, C_MOVE, N_ACTION)] == \
        ["echo", "store", "find", "get", "move", "store"]
    allowed = frozenset({"echo", "find"})
    assert refusal(allowed, C_ECHO) is None and refusal(allowed, C_FIND) is None
    for field, op in ((C_STORE, "store"), (C_GET, "get"), (C_MOVE, "move"), (N_ACTION, "store")):
        why = refusal(allowed, field)
        assert why is not None and why.startswith(op) and "echo, find" in why
    assert refusal(frozenset(), 0x0100) is None  # N-EVENT-REPORT: not a policy operation


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\[nodes.X\] allow: unknown DIMSE operation 'write'"):
        _settings(tmp_path, '[nodes.X]\naet = "X"\nport = 104\nallow = ["write"]\n')
    with pytest.raises(ValueError, match="dimse_unknown_ae: unknown DIMSE operation 'all'"):
        _settings(tmp_path, 'dimse_unknown_ae = ["all"]\n')
    with pytest.raises(ValueError, match="node_networks: 'ten' is not a network"):
        _settings(tmp_path, 'node_networks = ["ten"]\n')
    env = load_settings(environ={"PACSNODE_DIMSE_UNKNOWN_AE": "[]"})
    assert env.dimse_unknown_ae == []


def test_a_node_name_that_does_not_resolve_matches_no_address(tmp_path: Path) -> None:
    node = NodeConfig("GONE", "GONE", "no-such-host.invalid", 104, ("echo", "store"))
    settings = _settings(tmp_path, 'dimse_unknown_ae = ["echo"]\n')
    got = build_policy(settings, [node]).admit("GONE", "PACSNODE", "127.0.0.1")
    assert not got.known and got.allowed == {"echo"}
