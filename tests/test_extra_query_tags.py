"""Extra query tags (§11): a public attribute the index does not hold
(SequenceName, 0018,0024) and a private one (GEMS_ACQU_01 0019,xx9C, its
block at 0x10 in some files and 0x11 in others) made searchable, queried by
DCMTK findscu and QIDO-RS against a running ``pacsnode serve`` — for
instances stored before the tags were declared (found only after ``pacsnode
reindex``) and after (found at once)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from conftest import PacsnodeServer, dcmtk
from dicomfiles import make_ct

CREATOR = "GEMS_ACQU_01"
TAGS_TOML = ('extra_query_tags = [{tag = "0018,0024", level = "SERIES"}, '
             f'{{tag = "0019,109C", creator = "{CREATOR}", level = "SERIES"}}]\n')


def write_series(folder: Path, n: int, *, sequence: str, private: str, block: int,
                 patient_id: str) -> tuple[str, str, list[Path]]:
    """A series whose instances carry SequenceName and GEMS_ACQU_01 (0019,xx9C)
    with the private block at ``block`` (0x11: another creator holds 0x10)."""
    study, series_uid = generate_uid(), generate_uid()
    paths = []
    for i in range(1, n + 1):
        path = folder / series_uid / f"{i}.dcm"
        make_ct(path, patient_id=patient_id, study_uid=study, series_uid=series_uid,
                instance=i, size=8, SequenceName=sequence)
        ds = dcmread(path)
        if block == 0x11:
            ds.private_block(0x0019, "OTHER_VENDOR", create=True).add_new(0x01, "LO", "x")
        blk = ds.private_block(0x0019, CREATOR, create=True)
        assert blk.block_start >> 8 == block
        blk.add_new(0x9C, "LO", private)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, series_uid, paths


def run(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "pacsnode", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("extra")
    data = work / "data"
    data.mkdir()
    plain = work / "plain.toml"
    plain.write_text("fsync = false\n")
    tagged = work / "tagged.toml"
    tagged.write_text("fsync = false\n" + TAGS_TOML)
    old_a = write_series(work / "src", 2, sequence="*tse2d1_7", private="PROTO-A", block=0x10,
                         patient_id="XTAG1")
    old_b = write_series(work / "src", 2, sequence="*fl3d1", private="PROTO-B", block=0x11,
                         patient_id="XTAG2")
    # stored before the tags are declared
    run("import", str(work / "src"), "--data-dir", str(data), "--config", str(plain))
    server = PacsnodeServer(data, config=str(tagged)).start()
    client = httpx.Client(base_url=server.base_url, timeout=60)
    try:
        yield {"server": server, "client": client, "work": work, "data": data,
               "tagged": tagged, "old_a": old_a, "old_b": old_b}
    finally:
        client.close()
        server.stop()


def qido(env: dict[str, Any], **params: str) -> list[str]:
    r = env["client"].get("/dicomweb/series", params=params)
    assert r.status_code in (200, 204), r.text
    return sorted(s["0020000E"]["Value"][0] for s in r.json()) if r.status_code == 200 else []


def findscu(env: dict[str, Any], *keys: str) -> list[dict[str, str]]:
    """findscu at SERIES level; each answer's (gggg,eeee) → value text."""
    server: PacsnodeServer = env["server"]
    args = [dcmtk("findscu"), "-S", "-aec", server.aet, "-k", "QueryRetrieveLevel=SERIES",
            "-k", "SeriesInstanceUID"]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run([*args, "127.0.0.1", str(server.dicom_port)], capture_output=True,
                          encoding="latin-1", timeout=60)
    assert proc.returncode == 0, proc.stderr
    answers: list[dict[str, str]] = []
    for line in (proc.stdout + proc.stderr).splitlines():
        text = line.removeprefix("I: ").strip()
        if "Find Response:" in text:
            answers.append({})
        elif answers and text.startswith("(") and "[" in text:
            answers[-1][text[:11].lower()] = text[text.index("[") + 1:text.rindex("]")] \
                .rstrip(" \x00")
    return answers


def test_before_reindex_old_instances_are_not_found(env: dict[str, Any]) -> None:
    assert qido(env, SequenceName="*tse2d1_7") == []
    assert qido(env, **{"0019109C": "PROTO-A"}) == []
    assert findscu(env, "SequenceName=*tse2d1_7") == []
    assert findscu(env, f"(0019,0010)={CREATOR}", "(0019,109c)=PROTO-A") == []
    # an unknown private attribute is still refused
    r = env["client"].get("/dicomweb/series", params={"00191099": "x"})
    assert r.status_code == 400


def test_instances_stored_after_declaring_are_found_at_once(env: dict[str, Any]) -> None:
    study, series_uid, paths = write_series(env["work"] / "new", 1, sequence="*tse2d1_7",
                                            private="PROTO-A", block=0x11, patient_id="XTAG3")
    proc = subprocess.run([dcmtk("storescu"), "-aec", env["server"].aet, "127.0.0.1",
                           str(env["server"].dicom_port), *map(str, paths)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    env["new"] = (study, series_uid)
    assert qido(env, SequenceName="*tse2d1_7") == [series_uid]
    assert qido(env, **{"0019109C": "PROTO-A"}) == [series_uid]


def test_after_reindex_qido_and_findscu_find_them(env: dict[str, Any]) -> None:
    out = run("reindex", "--data-dir", str(env["data"]), "--config", str(env["tagged"]))
    assert "read 5 instance(s)" in out.stdout
    a, b, new = env["old_a"][1], env["old_b"][1], env["new"][1]
    # public, by keyword and by tag; wildcard and single value
    assert qido(env, SequenceName="*tse2d1_7") == sorted([a, new])
    assert qido(env, **{"00180024": "*fl3d1"}) == [b]
    assert qido(env, SequenceName="*fl3?1") == [b]
    assert qido(env, SequenceName="*tse2d1_8") == []
    # private, found by creator whatever the block (0x10 in a, 0x11 in b)
    assert qido(env, **{"0019109C": "PROTO-A"}) == sorted([a, new])
    assert qido(env, **{"0019109C": "PROTO-B"}) == [b]
    assert qido(env, **{"0019109C": "PROTO-?"}) == sorted([a, b, new])
    # return keys: the values come back in the answer
    r = env["client"].get("/dicomweb/series", params={"SeriesInstanceUID": b,
                                                      "includefield": "SequenceName,0019109C"})
    (item,) = r.json()
    assert item["00180024"]["Value"] == ["*fl3d1"]
    assert item["0019109C"]["Value"] == ["PROTO-B"]
    assert item["00190010"]["Value"] == [CREATOR]
    # at a level above the tag's: studies having such a series
    r = env["client"].get("/dicomweb/studies", params={"SequenceName": "*fl3d1"})
    assert [s["0020000D"]["Value"][0] for s in r.json()] == [env["old_b"][0]]
    # C-FIND (DCMTK findscu), public and private
    found = findscu(env, "SequenceName=*tse2d1_7")
    assert sorted(f["(0020,000e)"] for f in found) == sorted([a, new])
    assert all(f["(0018,0024)"] == "*tse2d1_7" for f in found)
    found = findscu(env, f"(0019,0010)={CREATOR}", "(0019,109c)=PROTO-B")
    assert [f["(0020,000e)"] for f in found] == [b]
    assert found[0]["(0019,109c)"] == "PROTO-B"


def test_reindex_resumes_and_needs_declared_tags(env: dict[str, Any]) -> None:
    again = run("reindex", "--data-dir", str(env["data"]), "--config", str(env["tagged"]))
    assert "read 0 instance(s)" in again.stdout          # nothing left since the last run
    full = run("reindex", "--restart", "--data-dir", str(env["data"]), "--config",
               str(env["tagged"]))
    assert "read 5 instance(s)" in full.stdout
    assert qido(env, **{"0019109C": "PROTO-B"}) == [env["old_b"][1]]   # recorded once
    plain = subprocess.run([sys.executable, "-m", "pacsnode", "reindex", "--data-dir",
                            str(env["data"])], capture_output=True, text=True, timeout=120)
    assert plain.returncode != 0 and "no extra_query_tags" in plain.stderr


def test_bad_declarations_are_refused_with_a_reason(tmp_path: Path) -> None:
    from pacsnode.config import load_settings
    for body, words in (('extra_query_tags = [{tag = "0019,109C", level = "SERIES"}]',
                         "name its creator"),
                        ('extra_query_tags = [{tag = "0010,0020", level = "PATIENT"}]',
                         "level"),
                        ('extra_query_tags = [{tag = "0020,000D", level = "STUDY"}]',
                         "indexed already"),
                        ('extra_query_tags = [{tag = "zz", level = "STUDY"}]', "not a tag")):
        path = tmp_path / "bad.toml"
        path.write_text(body + "\n")
        with pytest.raises(ValueError, match=words):
            load_settings(path, environ={})


def test_ingest_reindex_and_matching_on_each_database(tmp_path: Path, database_url: str) -> None:
    """In process, on SQLite and PostgreSQL: the ingest's one call, reindex
    (resumed, then restarted) and matching at the tag's level and above."""
    from pacsnode.config import load_settings
    from pacsnode.dicom import extra_tags
    from pacsnode.dicom.catalogue import Level
    from pacsnode.events import Origin
    from pacsnode.index.extra_index import reindex
    from pacsnode.node import Node
    from pacsnode.query.parse import query_from_qido

    before = write_series(tmp_path / "a", 2, sequence="*ep2d", private="P-OLD", block=0x11,
                          patient_id="XDB1")
    after = write_series(tmp_path / "b", 2, sequence="*ep2d", private="P-NEW", block=0x10,
                         patient_id="XDB2")
    plain = Node(load_settings(overrides={"data_dir": str(tmp_path / "d"), "fsync": False,
                                          "database_url": database_url}, environ={}))
    for path in before[2]:
        assert plain.ingestor.ingest_path(path, Origin("import")).outcome.ok
    plain.close()
    config = tmp_path / "t.toml"
    config.write_text(TAGS_TOML)
    node = Node(load_settings(config, overrides={"data_dir": str(tmp_path / "d"),
                                                 "fsync": False,
                                                 "database_url": database_url}, environ={}))
    try:
        for path in after[2]:
            assert node.ingestor.ingest_path(path, Origin("import")).outcome.ok

        def series_for(**params: str) -> list[str]:
            query = query_from_qido(Level.SERIES, list(params.items()))
            return sorted(m["0020000E"]["Value"][0] for m in node.engine.search_json(query))

        assert series_for(SequenceName="*ep2d") == [after[1]]
        assert reindex(node.db, extra_tags.active(), batch=1) == 4  # every stored instance
        assert series_for(SequenceName="*ep2d") == sorted([before[1], after[1]])
        assert series_for(**{"0019109C": "P-OLD"}) == [before[1]]
        assert reindex(node.db, extra_tags.active()) == 0
        assert reindex(node.db, extra_tags.active(), restart=True) == 4
        assert series_for(**{"0019109C": "P-*"}) == sorted([before[1], after[1]])
        studies = node.engine.search_json(query_from_qido(Level.STUDY,
                                                          [("0019109C", "P-NEW")]))
        assert [s["0020000D"]["Value"][0] for s in studies] == [after[0]]
        instances = node.engine.search_json(query_from_qido(
            Level.IMAGE, [("SequenceName", "*ep2d"), ("includefield", "SequenceName")]))
        assert len(instances) == 4
        assert all(i["00180024"]["Value"] == ["*ep2d"] for i in instances)
    finally:
        node.close()
        extra_tags.configure(())
