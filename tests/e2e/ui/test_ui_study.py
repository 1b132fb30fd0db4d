"""The find page's label filter and server-side sort, and the study page's checks and
access log, in a real browser (chromium through Playwright) against ``serve --auth``.

One server for the module: four single-image studies stored over STOW-RS by an admin,
out of date order, two labelled ``teaching``; one holds an object lacking Patient's
Sex (a validation finding once the background check has run). Two older studies
are for the study viewer: a CT + MR study (two series) and a multi-frame object
(Recommended Display Frame Rate 20) that plays as cine.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from playwright.sync_api import Page, expect
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import ServerPool, wait_until
from tests.e2e.ui.conftest import screenshot
from tests.e2e.ui.test_ui import Hub, bearer, fixed_uid, listed_studies, log_in, stow

FRAMES = 6
MULTI_FRAME_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture

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
    for number, (modality, images) in enumerate([("CT", 3), ("MR", 2)], start=1):
        for i in range(1, images + 1):
            datasets.append(
                datagen.make_dataset(
                    modality=modality,
                    patient_name="Evans^Eve",
                    patient_id="P-E",
                    study_uid=fixed_uid(50),
                    series_uid=fixed_uid(50, number),
                    sop_uid=fixed_uid(50, number, i),
                    series_number=number,
                    instance_number=i,
                    study_date="20180101",
                    rows=64,
                    cols=64,
                )
            )
    datasets.append(multi_frame())
    stow(h.url, h.admin, datasets)
    for i in (0, 2):
        r = httpx.put(f"{h.url}/dicomweb/studies/{study_uid(i)}/labels/teaching", headers=bearer(h.admin))
        assert r.status_code == 201, r.text
    return h


def multi_frame() -> Dataset:
    ds = datagen.make_dataset(
        modality="CT",
        patient_name="Frame^Fay",
        patient_id="P-F",
        study_uid=fixed_uid(60),
        series_uid=fixed_uid(60, 1),
        sop_uid=fixed_uid(60, 1, 1),
        study_date="20170101",
    )
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MULTI_FRAME_SC
    ds.Modality = "OT"
    ds.NumberOfFrames = FRAMES
    ds.FrameIncrementPointer = 0x00181063
    ds.RecommendedDisplayFrameRate = 20
    # Frame f: a ramp shifted by f, so that each frame is an image of its own.
    ramp = np.arange(ds.Rows * ds.Columns, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    ds.PixelData = np.concatenate([np.roll(ramp, 16 * f) for f in range(FRAMES)]).tobytes()
    return ds


def test_label_filter_and_date_sort_across_pages(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, "/?limit=2")
    expect(page.get_by_role("status")).to_have_text("Studies 1–2 of 6")
    # Newest first on the server: the first page holds the two newest of all four.
    page.get_by_role("button", name="Date").click()
    page.get_by_role("button", name="Date").click()
    expect(page.locator('th[data-key="StudyDate"]')).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#studies tbody tr td:nth-child(3)")).to_have_text(["2023-01-01", "2021-02-02"])
    page.get_by_role("button", name="Next page").click()
    expect(page.locator("#studies tbody tr td:nth-child(3)")).to_have_text(["2020-03-01", "2019-05-05"])
    expect(page.get_by_role("status")).to_have_text("Studies 3–4 of 6")
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


def test_study_viewer_hangs_a_ct_mr_study_and_plays_cine(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, f"/ui/studies/{fixed_uid(50)}/viewer")
    grid = page.locator("#grid")
    # The built-in CT protocol: the largest series, then the next, side by side.
    expect(grid).to_have_attribute("data-protocol", "ct")
    expect(grid.locator(".vp")).to_have_count(2)
    expect(grid.locator(".vp").nth(0)).to_have_attribute("data-series", fixed_uid(50, 1))
    expect(grid.locator(".vp").nth(1)).to_have_attribute("data-series", fixed_uid(50, 2))
    for cell in range(2):
        expect(grid.locator(".vp canvas").nth(cell)).to_have_attribute("data-index", "0")
    assert page.evaluate("performance.getEntriesByName('dicomhub:first-image').length") == 1
    screenshot(page, "study-viewer")
    # Cine: the multi-frame object plays at its Recommended Display Frame Rate.
    page.goto(f"{hub.url}/ui/studies/{fixed_uid(60)}/viewer")
    canvas = page.locator("#grid .vp canvas")
    expect(canvas).to_have_attribute("data-frame", "1")
    expect(page.get_by_label("Frames per second")).to_have_value("20")
    page.get_by_role("button", name="Play").click()
    seen = set()
    for _ in range(40):
        seen.add(canvas.get_attribute("data-frame"))
        if len(seen) >= 3:
            break
        page.wait_for_timeout(50)
    assert len(seen) >= 3, f"cine showed frames {seen}"
    page.get_by_role("button", name="Pause").click()
    still = canvas.get_attribute("data-frame")
    page.wait_for_timeout(300)
    assert canvas.get_attribute("data-frame") == still
    # The series viewer plays it too; a single image shows no cine controls.
    page.goto(f"{hub.url}/ui/studies/{fixed_uid(60)}/series/{fixed_uid(60, 1)}/viewer")
    image = page.locator("#image")
    expect(image).to_have_attribute("data-frame", "1")
    expect(page.get_by_label("Frames/s")).to_have_value("20")
    page.get_by_role("button", name="Play").click()
    expect(image).not_to_have_attribute("data-frame", "1")
    page.get_by_role("button", name="Pause").click()
    page.goto(f"{hub.url}/ui/studies/{study_uid(1)}/series/{fixed_uid(41, 1)}/viewer")
    expect(page.locator("#image")).to_have_attribute("data-draws", "1")
    expect(page.get_by_role("button", name="Play")).to_be_hidden()


def test_patients_page_and_window_level_zoom_pan_in_the_study_viewer(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, "/ui/patients")
    expect(page.get_by_role("status")).to_have_text("Patients 1–6 of 6")
    # A name wildcard finds the patient; the count is its studies; its name opens them.
    page.get_by_label("Patient name").fill("ev*")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).to_have_text("Patients 1–1 of 1")
    row = page.locator("#patients tbody tr")
    expect(row).to_have_attribute("data-patient", "P-E")
    expect(row.locator("td").nth(4)).to_have_text("1")
    screenshot(page, "patients")
    row.get_by_role("link", name="Evans^Eve").click()
    expect(page.get_by_role("status")).to_have_text("Studies 1–1 of 1")
    assert listed_studies(page) == {fixed_uid(50)}
    assert "PatientID=P-E" in page.url
    # A reader of the teaching label finds only the patients of the teaching studies.
    pupil = hub.user("pupil", "reader", "label:teaching")
    page.get_by_role("button", name="Log out").click()
    log_in(page, hub, pupil, "/ui/patients")
    expect(page.locator("#patients tbody tr td:nth-child(2)")).to_have_text(["P-0", "P-2"])

    # The study viewer: a drag changes the window of the viewport dragged in, only.
    page.get_by_role("button", name="Log out").click()
    log_in(page, hub, hub.admin, f"/ui/studies/{fixed_uid(50)}/viewer")
    canvases = page.locator("#grid .vp canvas")
    for cell in range(2):
        expect(canvases.nth(cell)).to_have_attribute("data-index", "0")
    info = page.locator("#grid .vp .vp-info")
    before = [info.nth(0).text_content(), info.nth(1).text_content()]
    draws = canvases.nth(0).get_attribute("data-draws")
    box = page.locator("#grid .vp-stage").nth(0).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 40, y + 30, steps=4)
    page.mouse.up()
    expect(info.nth(0)).not_to_have_text(before[0] or "")
    expect(info.nth(0)).to_contain_text("W ")
    assert canvases.nth(0).get_attribute("data-draws") != draws
    expect(info.nth(1)).to_have_text(before[1] or "")
    # "+" zooms the focused viewport, shift-drag pans it (the canvas moves, no repaint).
    page.keyboard.press("+")
    expect(info.nth(0)).to_contain_text("Zoom 125%")
    page.keyboard.down("Shift")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 20, y + 10, steps=2)
    page.mouse.up()
    page.keyboard.up("Shift")
    expect(canvases.nth(0)).to_have_attribute("style", "transform: translate(20px, 10px) scale(1.25);")
