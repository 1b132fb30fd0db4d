"""C-STORE (storescu), STOW-RS (httpx) and ``dicomhub import`` reach the one ingest path.

Under ``--validation-policy warn`` three copies of a broken CT (Modality
removed; they differ only in SOP Instance UID) are stored one per source: each
is stored with a warning and gets the same findings. Then each copy is sent
again through every other source (already present) and a copy with other
content under one copy's UID is refused by every source, kept in quarantine.
Runs on both back ends (``DICOMHUB_TEST_BACKEND``).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from .helpers import DicomhubServer, ServerPool, index_rows, run_cli, run_cli_split, store

pytestmark = pytest.mark.e2e

SOURCES = ("c-store", "stow-rs", "import")
WARN_ARGS = ["--validation-policy", "warn"]


def broken_copies(folder: Path) -> list[Path]:
    """Three copies of one broken CT, in one study and series, with their own SOP Instance UIDs."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.PatientID = "ONE-PATH"
    del ds.Modality  # Type 1, General Series
    paths = []
    for source in SOURCES:
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / source / "ct.dcm"
        path.parent.mkdir(parents=True)
        ds.save_as(path)
        paths.append(path)
    return paths


def send(server: DicomhubServer, source: str, path: Path) -> str:
    """Send one file through ``source``; return what the source answered, in its words."""
    if source == "c-store":
        res = store(server, path, calling="MODALITY")
        (status,) = res.statuses.values()
        return {0x0000: "stored", 0xB007: "stored with warning", 0xC401: "refused duplicate"}.get(
            status, f"0x{status:04X}"
        )
    if source == "stow-rs":
        body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--B--\r\n"
        r = httpx.post(
            server.base_url + "/dicomweb/studies",
            content=body,
            headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
                "Accept": "application/dicom+json",
            },
            timeout=60,
        )
        response = r.json()
        if "00081198" in response:
            (failed,) = response["00081198"]["Value"]
            reason = failed["00081197"]["Value"][0]
            # 0x0111: Duplicate SOP Instance, STOW-RS's reason for the duplicate policy.
            return "refused duplicate" if reason == 0x0111 else f"0x{reason:04X}"
        (stored,) = response["00081199"]["Value"]
        warned = stored.get("00081196", {}).get("Value") == [0xB007]
        return "stored with warning" if warned else "stored"
    # The import process reads its own settings: the same policy as the server's.
    rc, out = run_cli(
        "import", str(path), "--data-dir", str(server.data_dir), env={"DICOMHUB_VALIDATION_POLICY": "warn"}
    )
    if rc == 0:
        return "stored"  # or already present: the import summary does not report warnings
    if "already stored with other content" in out:
        return "refused duplicate"
    return f"import failed: {out[-500:]}"


def findings_of(server: DicomhubServer, sop_instance_uid: str) -> set[tuple[str, str, str]]:
    rc, out, err = run_cli_split("validate", "--data-dir", str(server.data_dir), "--json")
    assert rc == 0, err
    return {
        (f["severity"], f["attribute"], f["message"])
        for f in json.loads(out)["findings"]
        if f["sop_instance_uid"] == sop_instance_uid
    }


def test_every_source_gets_the_same_decisions_and_findings(servers: ServerPool, tmp_path: Path) -> None:
    server = servers.start(args=WARN_ARGS)
    paths = broken_copies(tmp_path)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]
    first = {source: send(server, source, path) for source, path in zip(SOURCES, paths, strict=True)}
    assert first["c-store"] == first["stow-rs"] == "stored with warning", first
    assert first["import"] == "stored", first
    findings = [findings_of(server, uid) for uid in uids]
    assert findings[0] and any(attribute == "Modality" for _s, attribute, _m in findings[0])
    assert findings[0] == findings[1] == findings[2]

    # Each copy again through every other source: already present, nothing added.
    for source in SOURCES:
        for path in paths:
            assert send(server, source, path).startswith("stored"), (source, path)
    rows = index_rows(server.data_dir, "SELECT COUNT(*) FROM instance")
    assert rows == [(3,)]

    # Other content under the first copy's UID: refused by every source, each copy kept apart.
    changed = pydicom.dcmread(paths[0])
    changed.PatientName = "Other^Content"
    for source in SOURCES:
        path = tmp_path / "changed" / source / "ct.dcm"
        path.parent.mkdir(parents=True)
        changed.save_as(path)
        assert send(server, source, path) == "refused duplicate", source
    assert index_rows(server.data_dir, "SELECT COUNT(*) FROM instance") == [(3,)]
    assert index_rows(server.data_dir, "SELECT COUNT(*) FROM conflict") == [(3,)]
