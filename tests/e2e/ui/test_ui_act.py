"""The UI's actions in a real browser (chromium through Playwright) on ``dicomhub serve --auth``:

* an admin uploads a folder (the ``webkitdirectory`` input): its DICOM files are stored
  (checked over QIDO-RS) and a file that is not DICOM is reported, not sent;
* an admin sends a study to a DCMTK storescp peer from the study page and sees it sent,
  then deletes it through the confirmation dialog (a wrong patient ID deletes nothing);
* a reader limited to one label is offered no upload, send or delete, downloads its
  study's ZIP, and gets 404 for another study's ZIP in the same browser context.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests import datagen
from tests.e2e.helpers import HOST, DicomhubServer, ServerPool, StoreSCP, add_user, read_dir

# Browser side only (the routes are tested on both back ends by test_study_actions.py).
pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]


@dataclass
class Hub:
    server: DicomhubServer
    scp: StoreSCP
    admin: str = ""
    reader: str = ""
    labelled: str = ""  # a study labelled "team", the reader's
    other: str = ""  # a study the reader may not see

    @property
    def url(self) -> str:
        return self.server.base_url

    def user(self, name: str, role: str, scope: str) -> str:
        """A user's token: the first (the admin) by the CLI, the others over HTTP (faster)."""
        return add_user(self.server, name, role, scope, self.admin)

    def instances(self, study: str) -> set[str]:
        r = httpx.get(
            f"{self.url}/dicomweb/studies/{study}/instances",
            headers={"Authorization": f"Bearer {self.admin}", "Accept": "application/dicom+json"},
        )
        assert r.status_code in (200, 204, 404), r.text
        return {i["00080018"]["Value"][0] for i in r.json()} if r.status_code == 200 else set()


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    root = tmp_path_factory.mktemp("act")
    scp = StoreSCP(root / "scp", root / "scp.log", aet="UISCP").start()
    config = root / "dicomhub.toml"
    config.write_text(f'[[peer]]\nname = "pacs"\nae_title = "UISCP"\nhost = "{HOST}"\nport = {scp.port}\n')
    h = Hub(module_servers.start(args=["--auth", "--config", str(config)]), scp)
    h.admin = h.user("root", "admin", "archive")
    h.reader = h.user("teammate", "reader", "label:team")
    yield h
    scp.stop()


def log_in(page: Page, hub: Hub, token: str, path: str = "/") -> None:
    page.goto(hub.url + path)
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def test_an_uploaded_folder_is_stored_file_by_file(page: Page, hub: Hub, tmp_path: Path) -> None:
    folder = tmp_path / "exam"
    study, other = datagen.uid(), datagen.uid()
    made = [
        datagen.write_instance(folder / f"im{i}.dcm", study_uid=study, patient_id="P-UP", instance_number=i)
        for i in (1, 2)
    ]
    made.append(datagen.write_instance(folder / "sub" / "x.dcm", study_uid=other, patient_id="P-OTHER"))
    (folder / "notes.txt").write_text("not a DICOM file\n" * 20)
    log_in(page, hub, hub.admin)
    expect(page.get_by_role("heading", name="Upload")).to_be_visible()
    page.locator("#upload-folder").set_input_files(folder)
    expect(page.locator("#upload-status")).to_have_text("4 of 4 files done")
    results = page.locator("#upload-results tbody tr")
    expect(results).to_have_count(4)
    names = results.locator("td:first-child").all_inner_texts()
    by_file = dict(zip(names, results.locator("td:nth-child(2)").all_inner_texts(), strict=True))
    assert {Path(k).name: v for k, v in by_file.items()} == {
        "im1.dcm": "stored", "im2.dcm": "stored", "x.dcm": "stored", "notes.txt": "not DICOM"
    }  # fmt: skip
    assert hub.instances(study) == {str(ds.SOPInstanceUID) for ds in made[:2]}
    assert hub.instances(other) == {str(made[2].SOPInstanceUID)}
    # Label them for the reader's test: "study" is the reader's, "other" is not.
    r = httpx.put(
        f"{hub.url}/dicomweb/studies/{study}/labels/team", headers={"Authorization": f"Bearer {hub.admin}"}
    )
    assert r.status_code == 201, r.text
    hub.labelled, hub.other = study, other


def test_a_reader_downloads_its_study_and_never_another(page: Page, hub: Hub) -> None:
    assert hub.labelled, "runs after the upload test"
    log_in(page, hub, hub.reader)
    # No upload for a reader (the rights are fetched before the section would show).
    expect(page.locator("#studies tbody tr")).to_have_count(1)
    expect(page.locator("#upload")).to_have_attribute("data-checked", "true")
    expect(page.locator("#upload")).to_be_hidden()
    page.goto(f"{hub.url}/ui/studies/{hub.labelled}")
    expect(page.locator("#actions")).to_have_attribute("data-ready", "true")
    expect(page.get_by_role("button", name="Download ZIP", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Delete study…")).to_be_hidden()
    expect(page.locator("#send-form")).to_be_hidden()
    with page.expect_download() as info:
        page.get_by_role("button", name="Download ZIP", exact=True).click()
    with zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes())) as zf:
        assert len(zf.namelist()) == 2 and zf.testzip() is None
    # The other study's ZIP, asked for with the reader's token in this browser context.
    status = page.evaluate(
        """async (uid) => (await fetch(`/api/studies/${uid}/archive.zip`,
             {headers: {Authorization: `Bearer ${sessionStorage.getItem("dicomhub.token")}`}})).status""",
        hub.other,
    )
    assert status == 404
    page.goto(f"{hub.url}/ui/studies/{hub.other}")
    expect(page.locator("#status")).to_have_text("No such study, or you may not see it.")
    expect(page.locator("#actions")).to_be_hidden()


def test_an_admin_sends_a_study_then_deletes_it_after_confirming(page: Page, hub: Hub) -> None:
    assert hub.other, "runs after the upload test"
    log_in(page, hub, hub.admin, f"/ui/studies/{hub.other}")
    expect(page.get_by_label("Send to")).to_have_value("pacs")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("#send-status")).to_have_text("pacs: 1 sent")
    assert set(read_dir(hub.scp.out_dir)) == hub.instances(hub.other)

    page.get_by_role("button", name="Delete study…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("It goes to the trash")
    dialog.get_by_label("Type the patient ID (P-OTHER) to confirm").fill("P-UP")
    dialog.get_by_role("button", name="Delete").click()
    expect(dialog.get_by_role("alert")).to_have_text("That is not it: nothing was deleted.")
    assert hub.instances(hub.other)
    dialog.get_by_label("Type the patient ID (P-OTHER) to confirm").fill("P-OTHER")
    dialog.get_by_role("button", name="Delete").click()
    expect(page.locator("#action-status")).to_have_text("Deleted (moved to the trash).")
    assert hub.instances(hub.other) == set()
    page.wait_for_url(f"{hub.url}/")
