"""``dicomhub deid`` on a folder, as a user runs it (a real process, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import datagen
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage

from dicomhub.model.identifiers import is_valid_uid

from .helpers import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

SECRET = {"DICOMHUB_DEID_SECRET": "e2e-secret-0123456789abcdef"}


def build(root: Path) -> tuple[list[Dataset], Path, Path]:
    tag = datagen.uid()[-6:]
    images = datagen.write_ct_series(root / "ct", 3, rows=16, cols=16, patient_id="DEID" + tag)
    images.append(datagen.write_instance(root / "mr" / "one.dcm", modality="MR", rows=16, cols=16,
                                         patient_id="DEID" + tag, implicit=True,
                                         study_uid=images[0].StudyInstanceUID))  # fmt: skip
    capture = root / "sc" / "capture.dcm"
    datagen.write_instance(capture, rows=16, cols=16, extra={"SOPClassUID": SecondaryCaptureImageStorage})
    garbage = datagen.write_garbage(root / "junk.dcm")
    return images, capture, garbage


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_deid_a_folder(tmp_path: Path) -> None:
    images, capture, garbage = build(tmp_path / "in")
    out = tmp_path / "out"

    rc, text = run_cli("deid", str(tmp_path / "in"), "--out", str(out), "--project", "trial")
    assert rc == 2 and "DICOMHUB_DEID_SECRET" in text, text
    assert not out.exists()

    rc, text = run_cli("deid", str(tmp_path / "in"), "--out", str(out), "--project", "trial", env=SECRET)
    assert rc == 1, f"a refused capture and a garbage file must make the run fail:\n{text}"
    assert f"refused: {capture}" in text and "burned-in" in text
    assert f"failed: {garbage}" in text
    written = outputs(out)
    assert len(written) == len(images)
    originals = {ds.SOPInstanceUID for ds in images} | {ds.StudyInstanceUID for ds in images}
    for name, data in written.items():
        study, series, leaf = Path(name).parts
        ds = dcmread(out / name)
        assert (study, series) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert leaf == ds.SOPInstanceUID + ".dcm"
        assert all(is_valid_uid(u) and u.startswith("2.25.") for u in (study, series, ds.SOPInstanceUID))
        assert ds.PatientIdentityRemoved == "YES"
        assert b"Doe^John" not in data and images[0].PatientID.encode() not in data
        assert not any(u.encode() in data for u in originals)
    assert len({Path(n).parts[0] for n in written}) == 1, "one study in, one study out"

    again = tmp_path / "again"
    rc, _ = run_cli("deid", str(tmp_path / "in" / "ct"), str(tmp_path / "in" / "mr"), "--out", str(again),
                    "--project", "trial", "--jobs", "2", env=SECRET)  # fmt: skip
    assert rc == 0
    assert outputs(again) == written, "same secret and project: the same files, byte for byte"

    other = tmp_path / "other"
    rc, _ = run_cli("deid", str(tmp_path / "in" / "ct"), "--out", str(other), "--project", "other-trial",
                    env=SECRET)  # fmt: skip
    assert rc == 0
    assert not set(outputs(other)) & set(written), "another project: unrelated UIDs"


def test_deid_dry_run_reports_and_writes_nothing(tmp_path: Path) -> None:
    datagen.write_ct_series(tmp_path / "in", 2, rows=16, cols=16)
    key_file = tmp_path / "deid.key"
    key_file.write_text("a-key-file-secret-0123456789\n", encoding="utf-8")
    config = tmp_path / "dicomhub.toml"
    config.write_text(f'deid_key_file = "{key_file}"\n', encoding="utf-8")
    out = tmp_path / "out"
    rc, text = run_cli("deid", str(tmp_path / "in"), "--out", str(out), "--project", "p", "--config",
                       str(config), "--dry-run", "--json", "--option", "retain-device-identity")  # fmt: skip
    assert rc == 0, text
    report = json.loads(text)
    assert report["counts"] == {"would write": 2}
    actions = {(a["path"], a["action"]) for a in report["files"][0]["actions"]}
    assert ("PatientName", "Z") in actions and ("SOPInstanceUID", "U") in actions
    assert not out.exists()
    rc, text = run_cli("deid", str(tmp_path / "in"), "--out", str(out), "--project", "p", "--config",
                       str(config), "--dry-run")  # fmt: skip
    assert rc == 0 and "Patient's Name" in text and "would write" in text

    rc, text = run_cli("deid", str(tmp_path / "in"), "--out", str(out), "--project", "p", "--option",
                       "retain-everything", env=SECRET)  # fmt: skip
    assert rc == 1 and "unknown de-identification option 'retain-everything'" in text
