"""The find page's label filter and server-side sort, and the study page's checks and
access log, in a real browser (chromium through Playwright) against ``serve --auth``.

One server for the module: four single-image studies stored over STOW-RS by an admin,
out of date order, two labelled ``teaching``; one holds an object lacking Patient's
Sex (a validation finding once the background check has run).
"""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import ServerPool, wait_until
from tests.e2e.ui.test_ui import Hub, bearer, fixed_uid, listed_studies, log_in, stow

# Browser side only: the APIs underneath run on both back ends in test_qido_extensions.py.
pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

# (date, patient) of each study, stored in this order.
STUDIES = [
    ("20200301", "Adams^Ann"),
    ("20230101", "Baker^Bob"),
    ("20190505", "Clark^Cy"),
    ("20210202", "Dunn^Di"),
]


def study_uid(i: int) -> str:
    return fixed_uid(40 + i)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> Hub:
    h = Hub(module_servers.start(args=["--auth"]))
    h.admin = h.user("root", "admin", "archive")
    datasets: list[Dataset] = []
    for i, (date, name) in enumerate(STUDIES):
        datasets.append(
            datagen.make_dataset(
                patient_name=name,
                patient_id=f"P-{i}",
                study_uid=study_uid(i),
                series_uid=fixed_uid(40 + i, 1),
                sop_uid=fixed_uid(40 + i, 1, 1),
                study_date=date,
                accession=f"ACC-{i}",
                study_description=f"Study {i}",
            )
        )
    del datasets[0].PatientSex  # Type 2 of the Patient module: a validation finding
    stow(h.url, h.admin, datasets)
    for i in (0, 2):
        r = httpx.put(f"{h.url}/dicomweb/studies/{study_uid(i)}/labels/teaching", headers=bearer(h.admin))
        assert r.status_code == 201, r.text
    return h


def test_label_filter_and_date_sort_across_pages(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, "/?limit=2")
    expect(page.get_by_role("status")).to_have_text("Studies 1–2 of 4")
    # Newest first on the server: the first page holds the two newest of all four.
    page.get_by_role("button", name="Date").click()
    page.get_by_role("button", name="Date").click()
    expect(page.locator('th[data-key="StudyDate"]')).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#studies tbody tr td:nth-child(3)")).to_have_text(["2023-01-01", "2021-02-02"])
    page.get_by_role("button", name="Next page").click()
    expect(page.locator("#studies tbody tr td:nth-child(3)")).to_have_text(["2020-03-01", "2019-05-05"])
    expect(page.get_by_role("status")).to_have_text("Studies 3–4 of 4")
    # The label menu narrows the search (and keeps the order).
    page.get_by_label("Label").select_option("teaching")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_have_text("Studies 1–2 of 2")
    assert listed_studies(page) == {study_uid(0), study_uid(2)}
    expect(page.locator("#studies tbody tr td:nth-child(3)")).to_have_text(["2020-03-01", "2019-05-05"])
    assert "label=teaching" in page.url and "orderby=-StudyDate" in page.url


def test_study_page_shows_findings_and_who_accessed_it(page: Page, hub: Hub) -> None:
    study = study_uid(0)

    def finding() -> bool:
        r = httpx.get(f"{hub.url}/api/studies/{study}/findings", headers=bearer(hub.admin))
        return any(f["attribute"] == "PatientSex" for f in r.json()["validation"])

    wait_until(finding, timeout=60, what="the validation finding")
    log_in(page, hub, hub.admin, f"/ui/studies/{study}")
    checks = page.locator("#checks")
    expect(checks.locator("caption")).to_have_text("Validation findings")
    expect(checks.locator("tbody tr", has_text="PatientSex")).to_have_count(1)
    # The admin's own store and searches of this study are in its audit log.
    access = page.locator("#access-section")
    expect(access).to_be_visible()
    expect(access.locator("tbody tr", has_text="root").first).to_be_visible()
    # A reader of the teaching label sees the checks but not the audit log (403: hidden).
    reader = hub.user("student", "reader", "label:teaching")
    page.get_by_role("button", name="Log out").click()
    log_in(page, hub, reader, f"/ui/studies/{study}")
    expect(checks.locator("tbody tr", has_text="PatientSex")).to_have_count(1)
    expect(page.locator("#header-instance option")).to_have_count(1)
    expect(access).to_be_hidden()
