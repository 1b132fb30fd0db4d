"""The web UI's admin pages (/ui/admin/...) and the routes they added: ``GET /api/me``,
``POST /admin/peers/NAME/echo`` and ``PATCH /admin/peers/NAME``.

One ``dicomhub serve --auth`` for the module, with a stored CT study labelled
``cardio``, an administrator and a reader limited to that label. In chromium the
administrator registers the server itself as a peer and verifies it (C-ECHO and
QIDO-RS succeed; a peer nobody listens for fails), adds a user whose token then
works and stops working when revoked, starts a de-identification of the study
from the study page and watches it reach "done", then a migration from a
DICOMweb peer (the archive itself) started with the form, and finds the C-ECHO on the
association page; the reader sees no Admin menu and "not allowed" on an admin
page. The API tests (run on both back ends) check the new routes' refusals.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests import datagen
from tests.e2e.helpers import (
    DicomhubServer,
    ServerPool,
    add_user,
    bearer,
    free_port,
    stow,
    wait_until,
)
from tests.e2e.ui.conftest import screenshot

pytestmark = [pytest.mark.e2e]
# The browser side (like test_ui.py) runs once, on SQLite: the pages only call the routes.
browser_test = pytest.mark.backend_neutral

STUDY = "2.25.18189001"
SECRET = {"DICOMHUB_DEID_SECRET": "ui-operate-test-secret-0123456789"}


@dataclass
class Hub:
    server: DicomhubServer
    admin: str = ""
    reader: str = ""

    @property
    def url(self) -> str:
        return self.server.base_url

    def user(self, name: str, role: str, scope: str) -> str:
        return add_user(self.server, name, role, scope)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> Hub:
    h = Hub(module_servers.start(args=["--auth"], env=SECRET, aet="OPERATE"))
    h.admin = h.user("root", "admin", "archive")
    # The reader through POST /users (a CLI run costs seconds of interpreter start-up).
    r = httpx.post(
        f"{h.url}/users",
        json={"name": "cardiologist", "grants": [{"role": "reader", "scope": "label:cardio"}]},
        headers=bearer(h.admin),
    )
    assert r.status_code == 201, r.text
    h.reader = r.json()["token"]
    study = [
        datagen.make_dataset(
            modality="CT",
            patient_name="Doe^Jane",
            patient_id="P-OPERATE",
            study_uid=STUDY,
            series_uid=f"{STUDY}.1",
            sop_uid=f"{STUDY}.1.{i}",
            instance_number=i,
        )
        for i in (1, 2)
    ]
    stow(h.url, h.admin, study)
    r = httpx.put(f"{h.url}/dicomweb/studies/{STUDY}/labels/cardio", headers=bearer(h.admin))
    assert r.status_code == 201, r.text
    return h


def log_in(page: Page, hub: Hub, token: str, path: str) -> None:
    page.goto(hub.url + path)
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


# ---------------------------------------------------------------- API


def test_me_says_who_the_caller_is_and_whether_it_administers(hub: Hub) -> None:
    admin = httpx.get(f"{hub.url}/api/me", headers=bearer(hub.admin)).json()
    assert admin == {
        "name": "root",
        "unrestricted": False,
        "administer": True,
        "grants": [{"role": "admin", "scope": "archive"}],
    }
    reader = httpx.get(f"{hub.url}/api/me", headers=bearer(hub.reader)).json()
    assert (reader["name"], reader["administer"]) == ("cardiologist", False)
    assert reader["grants"] == [{"role": "reader", "scope": "label:cardio"}]
    assert httpx.get(f"{hub.url}/api/me").status_code == 401


def test_echo_verifies_a_peer_and_refuses_what_it_should(hub: Hub) -> None:
    srv = hub.server
    peer = {
        "ae_title": srv.aet,
        "host": "127.0.0.1",
        "port": srv.dimse_port,
        "dicomweb_url": f"{hub.url}/dicomweb",
        "auth": f"bearer:{hub.admin}",
    }
    r = httpx.put(f"{hub.url}/admin/peers/itself", json=peer, headers=bearer(hub.admin))
    assert r.status_code == 201, r.text
    url = f"{hub.url}/admin/peers/itself/echo"
    assert httpx.post(url, headers=bearer(hub.reader)).status_code == 403
    assert httpx.post(url).status_code == 401
    found = httpx.post(url, headers=bearer(hub.admin), timeout=30).json()
    assert found["ok"] is True, found
    assert (found["dimse"]["ok"], found["dimse"]["status"]) == (True, "0x0000")
    # The stored token went with the QIDO-RS: without it the archive would have answered 401.
    assert found["dicomweb"]["ok"] is True and found["dicomweb"]["status"] in ("200", "204")

    # PATCH changes only what it names: the credentials stay, and so the QIDO-RS still passes.
    r = httpx.patch(
        f"{hub.url}/admin/peers/itself", json={"description": "this archive"}, headers=bearer(hub.admin)
    )
    assert r.status_code == 200 and r.json()["auth"] == "bearer", r.text
    assert httpx.post(url, headers=bearer(hub.admin), timeout=30).json()["dicomweb"]["ok"] is True

    r = httpx.post(f"{hub.url}/admin/peers/nobody/echo", headers=bearer(hub.admin))
    assert r.status_code == 404 and "nobody" in r.json()["error"]
    # A peer with nothing to call: 400 with the reason, not a probe of nothing.
    httpx.put(f"{hub.url}/admin/peers/folderonly", json={"folder": "/srv/x"}, headers=bearer(hub.admin))
    r = httpx.post(f"{hub.url}/admin/peers/folderonly/echo", headers=bearer(hub.admin))
    assert r.status_code == 400 and "neither" in r.json()["error"]
    # Nobody listens: a failure with the reason, in the answer (200: the verification ran).
    dead = {"ae_title": "DEAD", "host": "127.0.0.1", "port": free_port()}
    httpx.put(f"{hub.url}/admin/peers/dead", json=dead, headers=bearer(hub.admin))
    found = httpx.post(f"{hub.url}/admin/peers/dead/echo", headers=bearer(hub.admin), timeout=30).json()
    assert found["ok"] is False and found["dimse"]["ok"] is False
    assert "refused or did not answer" in found["dimse"]["detail"]
    assert httpx.get(f"{hub.url}/healthz").status_code == 200


# ---------------------------------------------------------------- browser


@browser_test
def test_admin_adds_a_peer_and_verifies_it(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, "/ui/admin/peers")
    expect(page.get_by_role("link", name="Admin")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("archive-self")
    page.get_by_label("AE title").fill(hub.server.aet)
    page.get_by_label("Host").fill("127.0.0.1")
    page.get_by_label("Port").fill(str(hub.server.dimse_port))
    page.get_by_label("Description").fill("this archive, over DIMSE")
    page.get_by_role("button", name="Save peer").click()
    row = page.locator('tr[data-peer="archive-self"]')
    expect(row).to_contain_text("127.0.0.1")
    row.get_by_role("button", name="Verify archive-self").click()
    expect(row.locator("output")).to_contain_text("C-ECHO succeeded (0x0000)")
    # A peer nobody listens for: the failure and its reason.
    page.get_by_label("Name", exact=True).fill("gone")
    page.get_by_label("AE title").fill("GONE")
    page.get_by_label("Host").fill("127.0.0.1")
    page.get_by_label("Port").fill(str(free_port()))
    page.get_by_role("button", name="Save peer").click()
    gone = page.locator('tr[data-peer="gone"]')
    gone.get_by_role("button", name="Verify gone").click()
    expect(gone.locator("output")).to_contain_text("C-ECHO failed")
    expect(gone.locator("output")).to_have_class("error")
    # Edit keeps the fields the form does not show (PATCH); Remove takes the peer away.
    page.once("dialog", lambda dialog: dialog.accept())
    gone.get_by_role("button", name="Remove gone").click()
    expect(gone).to_have_count(0)
    # Ports change from run to run.
    screenshot(page, "admin-peers", mask=[page.locator("#peers td:nth-child(4), #peers td:nth-child(5)")])


@browser_test
def test_admin_adds_a_user_whose_token_works_until_revoked(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, "/ui/admin/users")
    page.get_by_label("User name").fill("analyst")
    page.get_by_label("Role", exact=True).select_option("reader")
    page.get_by_label("Scope", exact=True).fill("label:cardio")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#new-token")).to_be_visible()
    token = page.locator("#new-token-value").inner_text()
    row = page.locator('tr[data-user="analyst"]')
    expect(row).to_contain_text("reader on label:cardio")
    found = httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(token))
    assert found.status_code == 200 and [s["0020000D"]["Value"][0] for s in found.json()] == [STUDY]
    # A second grant through the form, then removed with its button.
    page.get_by_label("Grant to").fill("analyst")
    page.get_by_label("Grant role").select_option("curator")
    page.get_by_label("Grant scope").fill("label:cardio")
    page.get_by_role("button", name="Add grant").click()
    expect(row).to_contain_text("curator on label:cardio")
    grants = httpx.get(f"{hub.url}/grants?principal=analyst", headers=bearer(hub.admin)).json()
    assert sorted(g["role"] for g in grants) == ["curator", "reader"]
    screenshot(page, "admin-users", mask=[page.locator("#new-token-value")])
    row.get_by_role("button", name="Remove curator on label:cardio from analyst").click()
    expect(row).not_to_contain_text("curator")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke the tokens of analyst").click()
    expect(page.locator("#status")).to_have_text("Revoked 1 token(s) of analyst.")
    assert httpx.get(f"{hub.url}/dicomweb/studies", headers=bearer(token)).status_code == 401


@browser_test
def test_a_deidentification_from_the_study_page_and_a_migration_reach_done(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, f"/ui/studies/{STUDY}")
    page.get_by_role("link", name="De-identify this study…").click()
    expect(page.get_by_label("Study Instance UID")).to_have_value(STUDY)
    page.get_by_label("Project").fill("P-UI")
    page.get_by_label("Reason").fill("teaching file")
    page.get_by_role("button", name="Start de-identification").click()
    row = page.locator("#deid-jobs tbody tr").first
    # The page polls while the run is pending or running: "done" comes without a reload.
    expect(row.locator(".state")).to_have_text("done", timeout=30_000)
    expect(row).to_contain_text("2 / 2")
    run = httpx.get(f"{hub.url}/deid/jobs", headers=bearer(hub.admin)).json()[0]
    assert (run["status"], run["stored"], run["source_study_uid"]) == ("done", 2, STUDY)
    expect(row).to_contain_text(run["target_study_uid"])

    # A migration from a DICOMweb peer (this archive itself: everything is already here).
    mirror = {
        "dicomweb_url": f"{hub.url}/dicomweb",
        "auth": f"bearer:{hub.admin}",
        "roles": ["migration-source"],
    }
    r = httpx.put(f"{hub.url}/admin/peers/mirror", json=mirror, headers=bearer(hub.admin))
    assert r.status_code == 201, r.text
    page.reload()
    page.get_by_label("Direction").select_option("remote")
    page.get_by_label("Peer", exact=True).select_option("mirror")
    page.get_by_label("Studies since").fill("2000-01-01")
    page.get_by_role("button", name="Start migration").click()
    migration = page.locator("#migration-jobs tbody tr").first
    expect(migration.locator(".state")).to_have_text("done", timeout=30_000)
    (job,) = httpx.get(f"{hub.url}/migrations", headers=bearer(hub.admin)).json()
    assert (job["remote"], job["direction"], job["selection"]) == ("mirror", "pull", {"since": "20000101"})
    screenshot(page, "admin-jobs", mask=[page.locator("#deid-jobs td:nth-child(6)")])


@browser_test
def test_the_association_and_health_pages(page: Page, hub: Hub) -> None:
    r = httpx.put(
        f"{hub.url}/admin/peers/echo-target",
        json={"ae_title": hub.server.aet, "host": "127.0.0.1", "port": hub.server.dimse_port},
        headers=bearer(hub.admin),
    )
    assert r.status_code in (200, 201), r.text
    before = len(httpx.get(f"{hub.url}/admin/associations", headers=bearer(hub.admin)).json())
    assert httpx.post(f"{hub.url}/admin/peers/echo-target/echo", headers=bearer(hub.admin)).json()["ok"]

    def logged() -> bool:
        # The DIMSE process writes its association log about once a second.
        found = httpx.get(f"{hub.url}/admin/associations", headers=bearer(hub.admin)).json()
        return len(found) > before

    wait_until(logged, timeout=10, what="the C-ECHO's association in the log")
    log_in(page, hub, hub.admin, "/ui/admin/associations")
    # The archive called itself: calling and called AE are both its own; the C-ECHO is counted.
    row = page.locator("#associations tbody tr").first
    expect(row.locator("td").nth(1)).to_have_text(hub.server.aet)
    expect(row).to_contain_text("echo:success ×1")
    expect(page.locator("#counts")).to_contain_text("Outcome released")
    # Times and durations change from run to run.
    mask = page.locator("#associations td:nth-child(1), #associations td:nth-child(5)")
    screenshot(page, "admin-associations", mask=[mask])
    page.get_by_role("link", name="Health").click()
    expect(page.locator("#health")).to_contain_text("Status")
    expect(page.locator("#health dd").first).to_have_text("ok")
    # Two instances stored by the fixture, two more by the de-identification (if it ran first).
    expect(page.locator("#storage")).to_contain_text("Instances")
    expect(page.locator("#decode tbody")).to_contain_text("No decode failures.")
    screenshot(page, "admin-health")


@browser_test
def test_a_reader_sees_no_admin_menu_and_is_not_allowed(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.reader, "/")
    expect(page.locator("#who")).to_have_text("Logged in as cardiologist")
    expect(page.get_by_role("link", name="Admin")).to_be_hidden()
    page.goto(f"{hub.url}/ui/studies/{STUDY}")
    # The name shows when /api/me has answered, which also decides the admin-only parts.
    expect(page.locator("#who")).to_have_text("Logged in as cardiologist")
    expect(page.get_by_role("link", name="De-identify this study…")).to_be_hidden()
    page.goto(f"{hub.url}/ui/admin/users")
    expect(page.get_by_role("alert").filter(has_text="Not allowed")).to_contain_text(
        "cardiologist does not hold the administer grant"
    )
    expect(page.locator("#users")).to_be_hidden()
    # And the API under the page says the same.
    assert httpx.get(f"{hub.url}/users", headers=bearer(hub.reader)).status_code == 403
