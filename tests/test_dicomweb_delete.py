"""DELETE at study, series and instance level, through the one deletion path."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from pacsnode.delete import delete_entities
from pacsnode.events import Event, Origin
from pacsnode.index.schema import changes, instances, patients, series, studies
from web_server import WebServer, make_instance, uid, web  # noqa: F401

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _count(server: WebServer, table) -> int:
    with server.node.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _layout(server: WebServer) -> dict:
    """Patient P1: study A (series A1: 2 instances, A2: 1), study B (1 instance)."""
    ids = {k: uid() for k in ("A", "A1", "A2", "B", "B1", "a1", "a2", "a3", "b1")}
    parts = [make_instance(ids["A"], ids["A1"], ids["a1"], instance_number=1),
             make_instance(ids["A"], ids["A1"], ids["a2"], instance_number=2),
             make_instance(ids["A"], ids["A2"], ids["a3"], modality="MR"),
             make_instance(ids["B"], ids["B1"], ids["b1"])]
    assert server.stow(parts).status_code == 200
    return ids


def _sops(server: WebServer) -> set[str]:
    r = httpx.get(server.dicomweb + "/instances")
    return set() if r.status_code == 204 else {i["00080018"]["Value"][0] for i in r.json()}


def test_delete_instance_series_study(web: WebServer) -> None:
    ids = _layout(web)
    events: list[Event] = []
    web.node.bus.subscribe(events.append)
    c = web.client()
    a1_file = next(web.node.store.root.glob(f"studies/*/*/{ids['a1']}.dcm"))

    r = c.delete(f"/studies/{ids['A']}/series/{ids['A1']}/instances/{ids['a1']}")
    assert r.status_code == 204
    assert not a1_file.exists()
    assert _sops(web) == {ids["a2"], ids["a3"], ids["b1"]}
    r = c.get(f"/studies/{ids['A']}/series/{ids['A1']}/instances/{ids['a1']}",
              headers={"Accept": AS_STORED})
    assert r.status_code == 404
    assert c.get(f"/studies/{ids['A']}/series/{ids['A1']}/instances/{ids['a1']}/metadata"
                 ).status_code == 404
    assert [(e.action, e.instance_uid) for e in events] == [("deleted", ids["a1"])]

    r = c.delete(f"/studies/{ids['A']}/series/{ids['A1']}")
    assert r.status_code == 204
    assert _sops(web) == {ids["a3"], ids["b1"]}
    assert c.get(f"/studies/{ids['A']}/series/{ids['A1']}").status_code == 404
    r = c.get("/studies", params={"StudyInstanceUID": ids["A"]})
    assert r.json()[0]["00201208"]["Value"] == [1]  # one instance left in study A
    assert not a1_file.parent.exists()  # empty series folder tidied

    r = c.delete(f"/studies/{ids['A']}")
    assert r.status_code == 204
    assert c.get("/studies", params={"StudyInstanceUID": ids["A"]}).status_code == 204
    assert _sops(web) == {ids["b1"]}
    assert _count(web, studies) == 1 and _count(web, series) == 1
    assert _count(web, patients) == 1  # still has study B
    assert [e.instance_uid for e in events] == [ids["a1"], ids["a2"], ids["a3"]]

    r = c.delete(f"/studies/{ids['B']}")
    assert r.status_code == 204
    assert _count(web, patients) == 0 and _count(web, instances) == 0
    assert c.get("/studies").status_code == 204
    with web.node.db.read() as conn:
        deleted = conn.execute(select(changes.c.instance_uid).where(
            changes.c.action == "deleted").order_by(changes.c.seq)).scalars().all()
    assert deleted == [ids["a1"], ids["a2"], ids["a3"], ids["b1"]]
    # The instance can be stored again afterwards.
    assert web.stow([make_instance(ids["B"], ids["B1"], ids["b1"])]).status_code == 200
    assert _sops(web) == {ids["b1"]}


def test_delete_unknown_is_404_and_bad_uid_400(web: WebServer) -> None:
    ids = _layout(web)
    c = web.client()
    for url in (f"/studies/{uid()}", f"/studies/{ids['A']}/series/{uid()}",
                f"/studies/{ids['A']}/series/{ids['A1']}/instances/{uid()}",
                # A series of another study is not found under this one.
                f"/studies/{ids['A']}/series/{ids['B1']}"):
        r = c.delete(url)
        assert r.status_code == 404, url
        assert r.json()["error"]
    r = c.delete("/studies/1.2.3x")
    assert r.status_code == 400 and "not a valid UID" in r.json()["error"]
    assert len(_sops(web)) == 4


def test_delete_entities_directly_and_with_dicomweb_client(web: WebServer) -> None:
    ids = _layout(web)
    assert delete_entities(web.node, ids["A"], ids["A2"], origin=Origin("api")) == 1
    assert delete_entities(web.node, ids["A"], ids["A2"]) == 0
    client = web.dicomweb_client()
    client.delete_study(ids["A"])
    assert _sops(web) == {ids["b1"]}
    assert not list(web.node.store.root.glob(f"studies/{ids['A']}"))
