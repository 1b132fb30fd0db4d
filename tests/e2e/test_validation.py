"""IOD validation of incoming objects, per calling AE policy, end to end with storescu.

pydicom's CT_small.dcm is a valid CT Image; the broken copy lacks Type 1 and
Type 2 attributes of its IOD. ``record`` (default) stores both and records the
findings in the background; ``warn`` stores and answers 0xB007; ``reject``
refuses the broken one (0xA900) and keeps nothing.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from .helpers import DicomhubServer, ServerPool, ls_json, run_cli_split, store

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> DicomhubServer:
    return module_servers.start(args=["--validation-ae", "STRICT=reject", "--validation-ae", "NOISY=warn"])


def objects(tmp_path: Path, tag: str) -> tuple[Path, Path, pydicom.Dataset]:
    """A valid CT and a broken one (fresh UIDs each time, so every send is a new object)."""
    good = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for ds in (good,):
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.PatientID = f"VAL-{tag}"
    good_path = tmp_path / tag / "good" / "ct.dcm"
    good_path.parent.mkdir(parents=True)
    good.save_as(good_path)
    broken = pydicom.dcmread(good_path)
    broken.SOPInstanceUID = pydicom.uid.generate_uid()
    broken.file_meta.MediaStorageSOPInstanceUID = broken.SOPInstanceUID
    del broken.Modality  # Type 1, General Series
    del broken.PatientSex  # Type 2, Patient
    broken_path = tmp_path / tag / "broken" / "ct.dcm"
    broken_path.parent.mkdir(parents=True)
    broken.save_as(broken_path)
    return good_path, broken_path, broken


def validate_json(server: DicomhubServer, *args: str) -> dict[str, list[dict[str, object]]]:
    rc, out, err = run_cli_split("validate", "--data-dir", str(server.data_dir), "--json", *args)
    assert rc == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_reject_refuses_broken_objects_and_keeps_nothing(hub: DicomhubServer, tmp_path: Path) -> None:
    good, broken, broken_ds = objects(tmp_path, "strict")
    ok = store(hub, good, calling="STRICT")
    assert list(ok.statuses.values()) == [0x0000], ok.output[-2000:]
    refused = store(hub, broken, calling="STRICT")
    assert refused.statuses == {str(broken_ds.SOPInstanceUID): 0xA900}, refused.output[-2000:]
    held = {s["PatientID"] for s in ls_json(hub.data_dir)}
    assert "VAL-strict" in held
    # The broken copy shares the good one's series: that series holds only the good one.
    (series,) = [
        r for r in ls_json(hub.data_dir, "series") if r["SeriesInstanceUID"] == broken_ds.SeriesInstanceUID
    ]
    assert series["NumberOfSeriesRelatedInstances"] == 1
    findings = validate_json(hub, "--source", "STRICT")["findings"]
    mine = [f for f in findings if f["sop_instance_uid"] == str(broken_ds.SOPInstanceUID)]
    assert {f["attribute"] for f in mine} >= {"Modality", "PatientSex"}
    assert all(f["rejected"] for f in mine)


def test_warn_stores_and_answers_with_a_warning(hub: DicomhubServer, tmp_path: Path) -> None:
    _good, broken, broken_ds = objects(tmp_path, "noisy")
    res = store(hub, broken, calling="NOISY")
    assert res.statuses == {str(broken_ds.SOPInstanceUID): 0xB007}, res.output[-2000:]
    assert "VAL-noisy" in {s["PatientID"] for s in ls_json(hub.data_dir)}


def test_record_stores_and_the_background_check_reports_per_source(
    hub: DicomhubServer, tmp_path: Path
) -> None:
    good, broken, broken_ds = objects(tmp_path, "record")
    folder = tmp_path / "both"
    folder.mkdir()
    shutil.copy(good, folder / "a.dcm")
    shutil.copy(broken, folder / "b.dcm")
    res = store(hub, folder, calling="DEFAULTAE")
    assert sorted(res.statuses.values()) == [0, 0], res.output[-2000:]
    deadline = time.monotonic() + 30
    while True:
        report = validate_json(hub, "--source", "DEFAULTAE")
        if report["summary"] and report["summary"][0]["instances_checked"] >= 2:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.5)
    (summary,) = report["summary"]
    assert summary["instances_with_errors"] == 1 and summary["instances_rejected"] == 0
    assert {f["sop_instance_uid"] for f in report["findings"]} == {str(broken_ds.SOPInstanceUID)}
    rc, out, _ = run_cli_split("validate", "--data-dir", str(hub.data_dir))
    assert rc == 0 and "DEFAULTAE" in out


def test_stow_applies_the_default_policy(servers: ServerPool, tmp_path: Path) -> None:
    """STOW-RS has no calling AE: the server-wide policy applies (here reject, then warn)."""
    import httpx
    from dicomweb_client.api import DICOMwebClient

    for policy, expected in (("reject", 409), ("warn", 202)):
        server = servers.start(name=f"stow-{policy}", args=["--validation-policy", policy])
        good, broken, broken_ds = objects(tmp_path, f"stow-{policy}")
        client = DICOMwebClient(url=server.base_url + "/dicomweb")
        ok = client.store_instances([pydicom.dcmread(good)])
        assert "FailedSOPSequence" not in ok
        body = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + broken.read_bytes() + b"\r\n--B--\r\n"
        r = httpx.post(
            server.base_url + "/dicomweb/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B',
                     "Accept": "application/dicom+json"},
        )  # fmt: skip
        assert r.status_code == expected, r.text
        response = r.json()
        if policy == "reject":
            (failed,) = response["00081198"]["Value"]
            assert failed["00081197"]["Value"] == [0xA900]
            assert str(broken_ds.SeriesInstanceUID) in {
                s["SeriesInstanceUID"] for s in ls_json(server.data_dir, "series")
            }  # the good one's series, holding the good one only
            (series,) = [
                s
                for s in ls_json(server.data_dir, "series")
                if s["SeriesInstanceUID"] == broken_ds.SeriesInstanceUID
            ]
            assert series["NumberOfSeriesRelatedInstances"] == 1
        else:
            (stored,) = response["00081199"]["Value"]
            assert stored["00081196"]["Value"] == [0xB007]
