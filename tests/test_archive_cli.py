"""`pacsnode import` and `pacsnode check`, and settings precedence."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from pydicom import dcmread

from dicomfiles import dataset_bytes, make_ct
from pacsnode.config import SETTINGS, load_settings


def pacsnode(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacsnode", *args], capture_output=True,
                          text=True, timeout=120)


def test_import_files_folders_zips_and_report(tmp_path):
    src = tmp_path / "src"
    a = make_ct(src / "a.dcm", patient_id="IMP1")
    b = make_ct(src / "sub" / "b.dcm", patient_id="IMP2")
    c = make_ct(tmp_path / "c.dcm", patient_id="IMP3")
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.write(tmp_path / "c.dcm", "inside/c.dcm")
        zf.writestr("readme.txt", "not dicom")
    (src / "junk.bin").write_bytes(b"\x00" * 300)
    data = tmp_path / "data"
    proc = pacsnode("import", str(src), str(tmp_path / "z.zip"), "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert "stored 3," in proc.stdout and "refused 2" in proc.stdout
    assert "junk.bin" in proc.stderr and "readme.txt" in proc.stderr
    for ds, path in ((a, src / "a.dcm"), (b, src / "sub" / "b.dcm"), (c, tmp_path / "c.dcm")):
        blob = data / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
            f"{ds.SOPInstanceUID}.dcm"
        assert dataset_bytes(blob) == dataset_bytes(path)
    again = pacsnode("import", str(src), "--data-dir", str(data))
    assert "already stored 2" in again.stdout
    ok = pacsnode("check", "--data-dir", str(data))
    assert ok.returncode == 0 and ok.stdout.startswith("3 instances indexed"), ok.stdout


def test_check_finds_and_repairs(tmp_path):
    data = tmp_path / "data"
    ds = [make_ct(tmp_path / f"{i}.dcm", patient_id=f"CHK{i}") for i in range(3)]
    assert pacsnode("import", str(tmp_path), "--data-dir", str(data)).returncode == 0
    blob = lambda d: data / "studies" / d.StudyInstanceUID / d.SeriesInstanceUID / \
        f"{d.SOPInstanceUID}.dcm"  # noqa: E731
    # A row whose file is gone, a file with no row, a stale temp file.
    blob(ds[0]).unlink()
    orphan = make_ct(tmp_path / "orphan.dcm", patient_id="ORPH")
    target = blob(orphan)
    target.parent.mkdir(parents=True)
    target.write_bytes((tmp_path / "orphan.dcm").read_bytes())
    (data / "incoming" / "in-stale.part").write_bytes(b"half")
    bad = pacsnode("check", "--data-dir", str(data))
    assert bad.returncode == 1
    assert f"index row without file: study {ds[0].StudyInstanceUID}" in bad.stdout
    assert f"file without index row: studies/{orphan.StudyInstanceUID}" in bad.stdout
    assert "stale temp file" in bad.stdout
    fixed = pacsnode("check", "--repair", "--data-dir", str(data))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    after = pacsnode("check", "--data-dir", str(data))
    assert after.returncode == 0 and after.stdout.startswith("3 instances indexed"), after.stdout
    assert dcmread(target).PatientID == "ORPH"


def test_settings_precedence_defaults_toml_env_cli(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('ae_title = "FROMTOML"\ndicom_port = 2000\nhttp_port = 3000\n'
                   'export_roots = ["/srv/x"]\n[nodes.ORTHANC]\naet = "ORTHANC"\n'
                   'host = "127.0.0.1"\nport = 4242\n')
    s = load_settings(cfg, overrides={"http_port": 4000},
                      environ={"PACSNODE_DICOM_PORT": "2500", "PACSNODE_FSYNC": "false"})
    assert (s.ae_title, s.dicom_port, s.http_port, s.fsync) == ("FROMTOML", 2500, 4000, False)
    assert s.export_roots == ["/srv/x"]
    assert s.nodes["ORTHANC"].port == 4242
    d = load_settings(environ={})
    assert (d.ae_title, d.dicom_port, d.http_port, d.host) == ("PACSNODE", 11112, 8080,
                                                               "127.0.0.1")
    bad = tmp_path / "bad.toml"
    bad.write_text('no_such_setting = 1\n')
    try:
        load_settings(bad, environ={})
    except ValueError as exc:
        assert "no_such_setting" in str(exc)
    else:
        raise AssertionError("unknown setting accepted")


def test_every_setting_is_documented_in_readme_and_serve_help():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    help_text = pacsnode("serve", "--help").stdout
    for setting in SETTINGS:
        assert f"`{setting.name}`" in readme, setting.name
        if setting.cli:
            assert "--" + setting.name.replace("_", "-") in help_text, setting.name


def test_check_removes_files_of_committed_deletes(tmp_path):
    """A DELETE that committed but died before unlinking leaves a file the
    change feed says is deleted: repair removes it rather than re-indexing."""
    from pacsnode.delete import delete_entities
    from pacsnode.events import Origin
    from pacsnode.node import Node

    data = tmp_path / "data"
    ds = make_ct(tmp_path / "in" / "a.dcm")
    assert pacsnode("import", str(tmp_path / "in"), "--data-dir", str(data)).returncode == 0
    blob = data / "studies" / ds.StudyInstanceUID / ds.SeriesInstanceUID / \
        f"{ds.SOPInstanceUID}.dcm"
    saved = blob.read_bytes()
    node = Node(load_settings(overrides={"data_dir": data}, environ={}))
    delete_entities(node, ds.StudyInstanceUID, origin=Origin("test"))
    node.close()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(saved)  # as if the unlink never happened
    assert pacsnode("check", "--repair", "--data-dir", str(data)).returncode == 0
    assert not blob.exists()
    after = pacsnode("check", "--data-dir", str(data))
    assert after.returncode == 0 and after.stdout.startswith("0 instances indexed")
