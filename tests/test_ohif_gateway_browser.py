"""OHIF on a DIMSE-only PACS through the gateway (DESIGN §9, §11): a real
Orthanc holds a study pacsnode does not; pacsnode (``auth = "on"``, the
node registered with ``gateway_pull = "reader"``) serves OHIF, whose
app-config has a data source ``remote-ORTHANC`` on
``/dicomweb/remote/ORTHANC``.  In a real browser, with a reader's token in
the tab's sessionStorage as the built-in UI keeps it, OHIF lists the
Orthanc study through that data source and renders one of its images with
no failed request and none to another host; afterwards the instances are
in pacsnode's own archive (and OHIF's default data source lists the study).
The UI's Remote nodes page (an operator's) links each node to its OHIF
data source."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom import dcmread

from browser import browser, open_page, shot, write_series  # noqa: F401
from conftest import PacsnodeServer, cli_token
from ohif_package import ohif_dist, rendered_canvas  # noqa: F401
from orthanc_peer import start_orthanc
from pacsnode.web.ohif import TOKEN_KEY, remote_source_name
from web_server import parse_multipart

SLICES = 6
ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory,
        ohif_dist: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    work = tmp_path_factory.mktemp("ohif-gateway")
    (work / "data").mkdir()
    server = PacsnodeServer(work / "data", aet="PACSNODE",
                            extra_env={"PACSNODE_OHIF_DIR": str(ohif_dist)})
    modalities = {"PACSNODE": ["PACSNODE", "127.0.0.1", server.dicom_port]}
    with start_orthanc(work / "orthanc", modalities=modalities) as orthanc:
        study, series, files = write_series(work / "src", SLICES, patient_name="Only^Orthanc",
                                            patient_id="ORTHONLY", size=128,
                                            description="Held by Orthanc")
        orthanc.upload(files)
        config = work / "pacsnode.toml"
        config.write_text(
            'auth = "on"\nfsync = false\n'
            f'[nodes.ORTHANC]\naet = "ORTHANC"\nhost = "127.0.0.1"\n'
            f'port = {orthanc.dicom_port}\ngateway_pull = "reader"\n')
        server.config = str(config)
        reader = cli_token(server, "ohif-reader", "reader")
        operator = cli_token(server, "ohif-operator", "operator")
        server.start()
        shots = work / "ohif-gateway-shots"
        shots.mkdir()
        client = httpx.Client(base_url=server.base_url, timeout=60,
                              headers={"Authorization": f"Bearer {reader}"})
        try:
            yield {"server": server, "client": client, "reader": reader,
                   "operator": operator, "study": study,
                   "series": series, "files": files, "shots": shots}
        finally:
            client.close()
            server.stop()


def test_app_config_names_a_data_source_per_registered_node(env: dict[str, Any]) -> None:
    r = env["client"].get("/ohif/app-config.js")
    assert r.status_code == 200
    body = r.text
    base = env["server"].base_url
    assert '"defaultDataSourceName": "pacsnode"' in body
    assert f'"sourceName": "{remote_source_name("ORTHANC")}"' in body
    assert f'"qidoRoot": "{base}/dicomweb/remote/ORTHANC"' in body
    assert f'"wadoRoot": "{base}/dicomweb/remote/ORTHANC"' in body
    assert "getAuthorizationHeader" in body  # the token, to each data source


def test_ohif_lists_and_opens_a_study_that_only_orthanc_holds(
        browser: Any, env: dict[str, Any]) -> None:  # noqa: F811
    base, study, series = env["server"].base_url, env["study"], env["series"]
    client: httpx.Client = env["client"]
    assert client.get(f"/dicomweb/studies/{study}/instances").status_code == 404  # not here yet
    source = remote_source_name("ORTHANC")
    with open_page(browser, width=1400, timeout_ms=90_000,
                   init_script=f"sessionStorage.setItem('{TOKEN_KEY}', '{env['reader']}');"
                   ) as page:
        rec = page.recorder
        page.goto(f"{base}/ohif/?datasources={source}")
        page.locator("text=ORTHONLY").first.wait_for()  # the patient ID column
        listing = page.inner_text("body")
        assert "Only" in listing and "Held by Orthanc" in listing
        shot(page, env["shots"], "ohif-remote-list")
        searches = [u for _m, u, _b in rec.requests if "/dicomweb/" in u]
        assert searches and all("/dicomweb/remote/ORTHANC/studies" in u for u in searches)
        page.goto(f"{base}/ohif/viewer/{source}?StudyInstanceUIDs={study}")
        image = rendered_canvas(page)
        assert image.std() > 10
        shot(page, env["shots"], "ohif-remote-viewer")
        assert not rec.failures, rec.failures
        assert all(url.startswith(base) or url.startswith(("data:", "blob:"))
                   for _m, url, _b in rec.requests), \
            [u for _m, u, _b in rec.requests if not u.startswith(base)]
        dicomweb = [u for _m, u, _b in rec.requests if "/dicomweb/" in u]
        assert any(f"/dicomweb/remote/ORTHANC/studies/{study}/series" in u for u in dicomweb)
        assert not [u for u in dicomweb if "/dicomweb/remote/" not in u], dicomweb
        # Pulled: OHIF's default data source (this node's archive, the same
        # token) lists the study too.
        before = len(rec.requests)
        page.goto(f"{base}/ohif/")
        page.locator("text=ORTHONLY").first.wait_for()
        local = [u for _m, u, _b in rec.requests[before:] if "/dicomweb/" in u]
        assert local and all(u.startswith(f"{base}/dicomweb/studies") for u in local), local
        assert not rec.failures, rec.failures
    # The study is now in pacsnode's archive: every instance, same pixels.
    r = client.get(f"/dicomweb/studies/{study}/series/{series}/instances")
    assert r.status_code == 200, r.text
    held = {item["00080018"]["Value"][0] for item in r.json()}
    sent = {dcmread(f).SOPInstanceUID: f for f in env["files"]}
    assert held == set(sent)
    sop, path = next(iter(sent.items()))
    stored = client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
                        headers={"Accept": ACCEPT_DICOM})
    assert stored.status_code == 200, stored.text
    ((_headers, part),) = parse_multipart(stored)
    assert np.array_equal(dcmread(io.BytesIO(part)).pixel_array, dcmread(path).pixel_array)


def test_the_remote_nodes_page_opens_the_node_in_ohif(browser: Any,  # noqa: F811
                                                      env: dict[str, Any]) -> None:
    base, source = env["server"].base_url, remote_source_name("ORTHANC")
    with open_page(browser, width=1400, timeout_ms=90_000,
                   init_script=f"sessionStorage.setItem('{TOKEN_KEY}', '{env['operator']}');"
                   ) as page:
        rec = page.recorder
        page.goto(f"{base}/ui/#/remote")
        link = page.locator("tr.node-row[data-node='ORTHANC'] a.open-ohif")
        assert link.get_attribute("href") == f"/ohif/?datasources={source}"
        shot(page, env["shots"], "ui-remote-nodes")
        link.click()
        page.locator("text=ORTHONLY").first.wait_for()  # OHIF's list, from Orthanc
        assert page.url.startswith(f"{base}/ohif") and f"datasources={source}" in page.url
        assert not rec.failures, rec.failures
