"""Python plugins on a real ``dicomhub serve --auth``, with the example plugin of
examples/plugins/dicomhub-example-plugin (installed into the test venv by
``make test-deps``) enabled: its receive hook refuses objects by calling AE title
(DCMTK storescu gets the plugin's status) and by attribute value (STOW-RS reports
the status and the reason), and stamps InstitutionName on what it accepts; its
event hooks write stored and stable-study events to a file; a ``[[route]]`` to
``plugin:example:FOLDER`` delivers each stored instance; ``GET
/plugins/example/summary`` answers with what the caller may see.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import HOST, DicomhubServer, ServerPool, run_cli, store

pytestmark = pytest.mark.e2e

STAMP = "Stamped by example"
REFUSED_CALLING_AE = 0xA7F0
REFUSED_ATTRIBUTE = 0xC0F1


@dataclass
class Hub:
    server: DicomhubServer
    root: Path
    admin: str
    alpha: str  # a reader of the studies labelled alpha only

    @property
    def url(self) -> str:
        return self.server.base_url

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def routed(self) -> Path:
        return self.root / "routed"


def _cli(server: DicomhubServer, *args: str) -> str:
    rc, out = run_cli(*args, "--data-dir", str(server.data_dir))
    assert rc == 0, out
    return out


def _token(server: DicomhubServer, name: str, role: str, scope: str, *kind: str) -> str:
    out = _cli(server, "user", "add", name, *kind, "--role", role, "--scope", scope)
    return out.strip().splitlines()[-1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("plugins")
    config = root / "dicomhub.toml"
    config.write_text(
        "[dicomhub]\nstable_age = 2\n\n"
        "[plugins]\n"
        'enabled = ["example"]\n\n'
        "[plugins.example]\n"
        'reject_calling_ae = ["BADMOD"]\n'
        'reject_when = { BodyPartExamined = "FOOT" }\n'
        f'stamp = {{ InstitutionName = "{STAMP}" }}\n'
        f'events_file = "{root / "events.jsonl"}"\n\n'
        "[[route]]\n"
        'name = "to-plugin"\n'
        f'to = ["plugin:example:{root / "routed"}"]\n'
    )
    server = module_servers.start(args=["--config", str(config), "--auth"])
    admin = _token(server, "root", "admin", "archive")
    alpha = _token(server, "alpha-reader", "reader", "label:alpha")
    # Both AEs may store anywhere: only the plugin tells them apart.
    _token(server, "modality-svc", "uploader", "archive", "--kind", "service")
    for title in ("MODALITY", "BADMOD"):
        _cli(server, "ae", "add", title, "--host", HOST, "--principal", "modality-svc")
    yield Hub(server, root, admin, alpha)


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def stow(hub: Hub, ds: Dataset) -> httpx.Response:
    boundary = "plugin-test-boundary"
    body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _part10(ds)
    body += f"\r\n--{boundary}--\r\n".encode()
    return httpx.post(
        f"{hub.url}/dicomweb/studies",
        content=body,
        headers={
            **bearer(hub.admin),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )


def held(hub: Hub, study_uid: str) -> bool:
    r = httpx.get(
        f"{hub.url}/dicomweb/studies", params={"StudyInstanceUID": study_uid}, headers=bearer(hub.admin)
    )
    assert r.status_code in (200, 204), r.text
    return r.status_code == 200 and bool(r.json())


def wait_until(what: str, ready: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def events(hub: Hub) -> list[dict[str, object]]:
    if not hub.events.exists():
        return []
    return [json.loads(line) for line in hub.events.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def accepted(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """One CT object stored by C-STORE from MODALITY (accepted and stamped)."""
    path = tmp_path_factory.mktemp("accepted") / "ct.dcm"
    ds = datagen.write_instance(path, patient_id="PLUG1", modality="CT", rows=8, cols=8)
    result = store(hub.server, path, calling="MODALITY")
    assert result.statuses == {str(ds.SOPInstanceUID): 0}, result.output
    return ds


def test_c_store_from_a_refused_calling_ae_gets_the_plugins_status_and_nothing_is_stored(
    hub: Hub, tmp_path: Path
) -> None:
    ds = datagen.write_instance(tmp_path / "bad.dcm", patient_id="PLUGBAD", rows=8, cols=8)
    result = store(hub.server, tmp_path / "bad.dcm", calling="BADMOD")
    assert result.statuses == {str(ds.SOPInstanceUID): REFUSED_CALLING_AE}, result.output
    assert not held(hub, str(ds.StudyInstanceUID))
    assert hub.server.is_running()


def test_an_accepted_object_is_stored_with_the_stamped_attribute(hub: Hub, accepted: Dataset) -> None:
    study, series, sop = accepted.StudyInstanceUID, accepted.SeriesInstanceUID, accepted.SOPInstanceUID
    r = httpx.get(
        f"{hub.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={**bearer(hub.admin), "Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    part = r.content.split(b"\r\n\r\n", 1)[1]
    stored = pydicom.dcmread(io.BytesIO(part))
    assert stored.InstitutionName == STAMP
    assert stored.SOPInstanceUID == sop
    assert stored.PixelData == accepted.PixelData  # only the stamp changed


def test_stow_rs_refusal_carries_the_plugins_status_and_reason(hub: Hub) -> None:
    ds = datagen.make_dataset(patient_id="PLUGFOOT", body_part="FOOT", rows=8, cols=8)
    r = stow(hub, ds)
    assert r.status_code == 409, r.text
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [REFUSED_ATTRIBUTE]
    assert "BodyPartExamined FOOT is not accepted here" in r.headers.get("warning", "")
    assert not held(hub, str(ds.StudyInstanceUID))


def test_stored_and_stable_study_hooks_fire(hub: Hub, accepted: Dataset) -> None:
    wanted = {("stored", str(accepted.SOPInstanceUID)), ("stable_study", str(accepted.StudyInstanceUID))}
    wait_until(
        "stored and stable_study events", lambda: wanted <= {(e["event"], e["uid"]) for e in events(hub)}
    )


def test_a_route_to_the_plugin_destination_delivers(hub: Hub, accepted: Dataset) -> None:
    delivered = hub.routed / f"{accepted.SOPInstanceUID}.dcm"
    wait_until("the routed copy", delivered.exists)
    assert pydicom.dcmread(delivered).InstitutionName == STAMP


def test_the_plugin_route_answers_with_the_callers_view(hub: Hub, accepted: Dataset) -> None:
    other = datagen.make_dataset(patient_id="PLUG2", modality="CT", rows=8, cols=8)
    assert stow(hub, other).status_code == 200
    labelled = str(accepted.StudyInstanceUID)
    r = httpx.put(f"{hub.url}/dicomweb/studies/{labelled}/labels/alpha", headers=bearer(hub.admin))
    assert r.status_code == 201, r.text
    url = f"{hub.url}/plugins/example/summary"
    assert httpx.get(url).status_code == 401
    everything = httpx.get(url, headers=bearer(hub.admin))
    assert everything.status_code == 200, everything.text
    assert {labelled, str(other.StudyInstanceUID)} <= set(everything.json()["studies"])
    mine = httpx.get(url, headers=bearer(hub.alpha))
    assert mine.status_code == 200, mine.text
    assert mine.json()["studies"] == [labelled]
    assert mine.json()["caller"] == "alpha-reader"


def test_config_check_names_a_plugin_that_is_not_installed(tmp_path: Path) -> None:
    config = tmp_path / "dicomhub.toml"
    config.write_text('[plugins]\nenabled = ["nosuchplugin"]\n')
    rc, out = run_cli("config", "check", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert rc == 2, out
    assert "plugin 'nosuchplugin' is enabled but not installed" in out


def test_import_reports_the_plugins_refusal_and_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "dicomhub.toml"
    config.write_text(
        '[plugins]\nenabled = ["example"]\n\n[plugins.example]\nreject_when = { BodyPartExamined = "FOOT" }\n'
    )
    datagen.write_instance(
        tmp_path / "in" / "foot.dcm", patient_id="PLUGIMP", body_part="FOOT", rows=8, cols=8
    )
    rc, out = run_cli(
        "import", str(tmp_path / "in"), "--config", str(config), "--data-dir", str(tmp_path / "data")
    )
    assert rc == 1, out
    assert "refused by plugin example: BodyPartExamined FOOT is not accepted here" in out
