"""dicomhub's web UI in a real browser (chromium through Playwright) against ``dicomhub serve --auth``.

One server for the module, with three studies loaded over STOW-RS by an admin:
a 12-slice CT phantom of Doe^Jane labelled ``cardio``, a 2-slice CT of Roe^Richard
and an MR of Doe^John. The tests log in with the archive's bearer tokens, search by
wildcard name, open the study page (series, thumbnails, labels, the tag tree),
draw CT slices in the viewer and compare the canvas with the server's own
/rendered image of the same frame and window, drag the window, and check that a
reader limited to the ``cardio`` label never sees another study. A second, open
server (no --auth) shows the UI without a log-in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from pydicom.dataset import Dataset

from tests import datagen
from tests.e2e.helpers import DicomhubServer, ServerPool, add_user, bearer, stow
from tests.e2e.ui.conftest import screenshot

# The pages read through the search, WADO-RS and access services, which the QIDO-RS, WADO-RS
# and access-control tests run on both back ends; what is tested here is the browser side,
# so the PostgreSQL + S3 run leaves these out (they are the slowest e2e module per test).
pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

CT_SLICES = 12
SIZE = 128


def phantom(z: int, rows: int = SIZE, cols: int = SIZE) -> np.ndarray:
    """Stored values (12 bits, Rescale Intercept -1024) of one slice of a body phantom:
    air, soft tissue, two lungs and a spine that moves with ``z``, plus noise."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, cx = rows / 2, cols / 2
    hu = np.full((rows, cols), -1000.0)
    body = ((yy - cy) / (rows * 0.42)) ** 2 + ((xx - cx) / (cols * 0.47)) ** 2 <= 1
    hu[body] = 40.0
    for side in (-1, 1):
        lung = ((yy - cy + 4) / (rows * 0.25)) ** 2 + (
            (xx - cx - side * cols * 0.2) / (cols * 0.14)
        ) ** 2 <= 1
        hu[lung] = -850.0
    spine = (yy - cy - rows * 0.25) ** 2 + (xx - cx - (z - CT_SLICES / 2)) ** 2 <= (rows * 0.07) ** 2
    hu[spine] = 900.0
    hu += np.random.default_rng(z).normal(0, 15, size=(rows, cols))
    return np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)


def fixed_uid(study: int, series: int = 0, instance: int = 0) -> str:
    """UIDs that are the same from run to run, so that the screenshots in docs/ui/ are too."""
    return f"2.25.1818{study:03d}{series:03d}{instance:04d}"


def ct_series(patient_name: str, patient_id: str, n: int, number: int, **kwargs: object) -> list[Dataset]:
    study, series = fixed_uid(number), fixed_uid(number, 1)
    out = []
    for i in range(1, n + 1):
        ds = datagen.make_dataset(
            modality="CT",
            patient_name=patient_name,
            patient_id=patient_id,
            study_uid=study,
            series_uid=series,
            sop_uid=fixed_uid(number, 1, i),
            instance_number=i,
            rows=SIZE,
            cols=SIZE,
            extra={"WindowCenter": "40", "WindowWidth": "400"},
            **kwargs,  # type: ignore[arg-type]
        )
        ds.PixelData = phantom(i).tobytes()
        out.append(ds)
    return out


@dataclass
class Hub:
    server: DicomhubServer
    admin: str = ""
    reader: str = ""
    jane: list[Dataset] = field(default_factory=list)
    richard: list[Dataset] = field(default_factory=list)
    john: list[Dataset] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.base_url

    def user(self, name: str, role: str, scope: str) -> str:
        return add_user(self.server, name, role, scope)


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool) -> Hub:
    h = Hub(module_servers.start(args=["--auth"]))
    h.admin = h.user("root", "admin", "archive")
    h.reader = h.user("cardiologist", "reader", "label:cardio")
    h.jane = ct_series("Doe^Jane", "P-JANE", CT_SLICES, 1, study_description="Chest CT")
    h.richard = ct_series("Roe^Richard", "P-RICHARD", 2, 2, study_description="Head CT", accession="ACC-R")
    h.john = [
        datagen.make_dataset(
            modality="MR",
            patient_name="Doe^John",
            patient_id="P-JOHN",
            study_uid=fixed_uid(3),
            series_uid=fixed_uid(3, 1),
            sop_uid=fixed_uid(3, 1, 1),
        )
    ]
    for series in (h.jane, h.richard, h.john):
        stow(h.url, h.admin, series)
    r = httpx.put(
        f"{h.url}/dicomweb/studies/{h.jane[0].StudyInstanceUID}/labels/cardio", headers=bearer(h.admin)
    )
    assert r.status_code == 201, r.text
    return h


def log_in(page: Page, hub: Hub, token: str, path: str = "/") -> None:
    page.goto(hub.url + path)
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def listed_studies(page: Page) -> set[str]:
    return set(page.locator("#studies tbody tr").evaluate_all("rows => rows.map(r => r.dataset.study)"))


def search(page: Page, **fields: str) -> None:
    for label, value in fields.items():
        page.get_by_label(label.replace("_", " "), exact=True).fill(value)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("status")).not_to_have_text("Searching…")


# ---------------------------------------------------------------- find


def test_search_finds_a_study_by_wildcard_name(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin)
    expect(page.locator("#studies tbody tr")).to_have_count(3)
    search(page, Patient_name="doe^j*")
    jane, john = hub.jane[0].StudyInstanceUID, hub.john[0].StudyInstanceUID
    expect(page.locator("#studies tbody tr")).to_have_count(2)
    assert listed_studies(page) == {jane, john}
    row = page.locator(f'tr[data-study="{jane}"]')
    # Patient ID, date, modality, accession, description, then the series and instance counts.
    expect(row.locator("td")).to_have_text(
        ["Doe^Jane", "P-JANE", "2020-01-15", "CT", "ACC0001", "Chest CT", "1", str(CT_SLICES)]
    )
    # Sorting by a column header orders the rows and says so to assistive technology.
    page.get_by_role("button", name="Patient name").click()
    page.get_by_role("button", name="Patient name").click()
    expect(page.locator("#studies tbody tr td:first-child")).to_have_text(["Doe^John", "Doe^Jane"])
    expect(page.locator('th[data-key="PatientName"]')).to_have_attribute("aria-sort", "descending")
    # The search is in the URL: a reload runs it again.
    page.reload()
    expect(page.locator("#studies tbody tr")).to_have_count(2)
    search(page, Patient_name="", Study_date_from="2020-01-01", Modality="CT")
    assert listed_studies(page) == {jane, hub.richard[0].StudyInstanceUID}
    screenshot(page, "find")


def test_paging_walks_the_results(page: Page, hub: Hub) -> None:
    log_in(page, hub, hub.admin, "/?limit=1")
    seen: set[str] = set()
    for number in (1, 2, 3):
        expect(page.locator("#page-info")).to_have_text(f"Page {number}")
        expect(page.locator("#studies tbody tr")).to_have_count(1)
        seen |= listed_studies(page)
        if number < 3:
            page.get_by_role("button", name="Next page").click()
    expect(page.get_by_role("button", name="Next page")).to_be_disabled()
    assert len(seen) == 3
    page.go_back()
    expect(page.locator("#page-info")).to_have_text("Page 2")


# ---------------------------------------------------------------- study page


def test_study_page_shows_series_thumbnails_labels_and_the_header(page: Page, hub: Hub) -> None:
    study = hub.jane[0].StudyInstanceUID
    log_in(page, hub, hub.admin, f"/ui/studies/{study}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Doe^Jane: Chest CT")
    series = page.locator("#series li")
    expect(series).to_have_count(1)
    expect(series.first).to_have_attribute("data-series", hub.jane[0].SeriesInstanceUID)
    expect(series.first).to_contain_text(f"{CT_SLICES} instances")
    thumb = series.first.locator("img")
    expect(thumb).to_have_attribute("alt", "Thumbnail of series 1")
    assert thumb.evaluate("img => img.complete && img.naturalWidth") > 0
    # Labels: the one given at load, one added and removed through the page.
    expect(page.locator("#labels li")).to_have_text(["cardio×"])
    page.get_by_label("New label").fill("teaching")
    page.get_by_role("button", name="Add label").click()
    expect(page.locator("#labels li span")).to_have_text(["cardio", "teaching"])
    labels = httpx.get(f"{hub.url}/dicomweb/studies/{study}/labels", headers=bearer(hub.admin)).json()
    assert sorted(labels) == ["cardio", "teaching"]
    page.get_by_role("button", name="Remove label teaching").click()
    expect(page.locator("#labels li span")).to_have_text(["cardio"])
    # The header: every instance of the series to choose from, a filter that keeps what matches.
    expect(page.locator("#header-instance option")).to_have_count(CT_SLICES)
    expect(page.locator("#header")).to_contain_text("(0010,0010) PatientName PN Doe^Jane")
    page.get_by_label("Filter tags").fill("0028,1052")
    visible = page.locator("#header li:visible")
    expect(visible).to_have_count(1)
    expect(visible).to_have_text("(0028,1052) RescaleIntercept DS -1024")
    page.get_by_label("Filter tags").fill("requestedprocedureid")
    # The sequence stays visible around its matching item.
    expect(page.locator("#header li:visible summary").first).to_contain_text("RequestAttributesSequence")
    page.get_by_label("Filter tags").fill("")
    screenshot(page, "study")


# ---------------------------------------------------------------- viewer


def viewer_url(ds: Dataset) -> str:
    return f"/ui/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/viewer"


def canvas_grey(page: Page) -> np.ndarray:
    """The viewer canvas's pixels (its own resolution, one value per pixel: R = G = B)."""
    rgba = page.locator("#image").evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
    )
    size = int(np.sqrt(len(rgba) // 4))
    pixels = np.array(rgba, dtype=np.uint8).reshape(size, size, 4)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 3] == 255).all()
    return pixels[..., 0]


def server_rendering(hub: Hub, ds: Dataset, center: float, width: float) -> np.ndarray:
    """The archive's own /rendered PNG (lossless) of frame 1 of ``ds`` in the window."""
    url = (
        f"{hub.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1/rendered"
    )
    r = httpx.get(
        url, params={"window": f"{center:g},{width:g}"}, headers={**bearer(hub.admin), "Accept": "image/png"}
    )
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("L"))


def assert_matches(canvas: np.ndarray, rendered: np.ndarray) -> None:
    assert canvas.shape == rendered.shape
    diff = np.abs(canvas.astype(np.int16) - rendered.astype(np.int16))
    # Rounding half-way values (JS Math.round vs numpy's rint) may differ by one.
    assert diff.max() <= 1, f"{np.count_nonzero(diff > 1)} pixels differ by more than 1"
    assert np.unique(canvas).size > 3, "a blank or binary picture proves nothing"


def shown(page: Page, ds: Dataset, center: float, width: float) -> None:
    """Wait until the canvas shows ``ds`` in the window (the viewer marks what it drew)."""
    canvas = page.locator("#image")
    expect(canvas).to_have_attribute("data-instance", ds.SOPInstanceUID)
    expect(canvas).to_have_attribute("data-window-center", f"{center:g}")
    expect(canvas).to_have_attribute("data-window-width", f"{width:g}")


def window_of(page: Page) -> tuple[float, float]:
    canvas = page.locator("#image")
    return float(canvas.get_attribute("data-window-center") or "nan"), float(
        canvas.get_attribute("data-window-width") or "nan"
    )


def test_viewer_draws_ct_slices_as_the_server_renders_them(page: Page, hub: Hub) -> None:
    first = hub.jane[0]
    log_in(
        page, hub, hub.admin, f"/ui/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/viewer"
    )
    # The header's window (40/400) first.
    shown(page, first, 40, 400)
    assert_matches(canvas_grey(page), server_rendering(hub, first, 40, 400))
    expect(page.locator("#overlay-bl")).to_have_text(f"Image 1/{CT_SLICES} (instance 1)")
    expect(page.locator("#overlay-tl")).to_contain_text("Doe^Jane")
    # Keys and the wheel scroll: three down, one back up, then a preset.
    viewport = page.get_by_role("application")
    viewport.focus()
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    viewport.hover()
    page.mouse.wheel(0, -100)
    third = hub.jane[2]
    shown(page, third, 40, 400)
    page.get_by_role("button", name="Lung").click()
    shown(page, third, -600, 1500)
    assert_matches(canvas_grey(page), server_rendering(hub, third, -600, 1500))
    expect(page.locator("#overlay-br")).to_contain_text("W 1500 L -600")


def test_a_window_level_drag_changes_the_picture_with_no_round_trip(page: Page, hub: Hub) -> None:
    first = hub.jane[0]
    log_in(
        page, hub, hub.admin, f"/ui/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/viewer"
    )
    shown(page, first, 40, 400)
    before = canvas_grey(page)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    box = page.locator("#viewport").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y - 40, steps=6)
    page.mouse.up()
    center, width = window_of(page)
    # Right widens, up lowers the level: 400 / 256 per screen pixel.
    assert width > 400 and center < 40, (center, width)
    after = canvas_grey(page)
    assert np.count_nonzero(after != before) > before.size // 10
    assert_matches(after, server_rendering(hub, first, center, width))
    assert [url for url in requests if "/dicomweb/" in url] == [], "the drag asked the server"
    # Zoom and pan move the picture on the screen, not its pixels.
    page.get_by_role("button", name="Zoom in").click()
    expect(page.locator("#overlay-br")).to_contain_text("Zoom 125%")
    page.keyboard.down("Shift")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 50, y + 20, steps=3)
    page.mouse.up()
    page.keyboard.up("Shift")
    assert "translate(50px, 20px)" in (page.locator("#image").get_attribute("style") or "")
    assert window_of(page) == (center, width)
    screenshot(page, "viewer")


# ---------------------------------------------------------------- access


def test_a_reader_limited_to_one_label_never_sees_another_study(page: Page, hub: Hub) -> None:
    jane, richard = hub.jane[0], hub.richard[0]
    log_in(page, hub, hub.reader)
    expect(page.get_by_role("status")).to_have_text("Studies 1–1 of 1")
    assert listed_studies(page) == {jane.StudyInstanceUID}
    search(page, Patient_name="roe*")
    expect(page.get_by_role("status")).to_have_text("No study matches.")
    expect(page.locator("#studies tbody tr")).to_have_count(0)
    # Another study's pages, opened by URL, show nothing of it.
    page.goto(f"{hub.url}/ui/studies/{richard.StudyInstanceUID}")
    expect(page.get_by_role("status")).to_have_text("No such study, or you may not see it.")
    expect(page.locator("#attributes dd")).to_have_count(0)
    expect(page.locator("#series li")).to_have_count(0)
    page.goto(hub.url + viewer_url(richard))
    expect(page.get_by_role("status")).to_have_text("No such series, or you may not see it.")
    assert page.locator("#image").get_attribute("data-draws") is None
    assert "Roe" not in page.locator("body").inner_text()
    # Its own study opens and draws.
    page.goto(hub.url + viewer_url(jane))
    shown(page, jane, 40, 400)


def test_pages_are_public_shells_that_refuse_malformed_uids(hub: Hub) -> None:
    page = httpx.get(hub.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "Doe" not in page.text  # the shell holds no archive data: its script asks for it
    assert httpx.get(hub.url + "/dicomweb/studies").status_code == 401
    bad = httpx.get(hub.url + "/ui/studies/1.2.3%22%3E%3Cb%20onclick%3Dalert(1)%3E")
    assert bad.status_code == 400 and "UID" in bad.json()["error"]
    bad = httpx.get(f"{hub.url}/ui/studies/{hub.jane[0].StudyInstanceUID}/series/x.1/viewer")
    assert bad.status_code == 400
    assert httpx.get(hub.url + "/ui/static/no-such.js").status_code == 404


def test_without_access_control_the_ui_needs_no_log_in(page: Page, module_servers: ServerPool) -> None:
    server = module_servers.start(name="open")
    ds = datagen.make_dataset(
        modality="MR",
        patient_name="Open^Access",
        study_uid=fixed_uid(4),
        series_uid=fixed_uid(4, 1),
        sop_uid=fixed_uid(4, 1, 1),
    )
    stow(server.base_url, "", [ds])
    # A tablet held upright: the page fits its width (the results table scrolls on its own).
    page.set_viewport_size({"width": 768, "height": 1024})
    page.goto(server.base_url + "/")
    expect(page.locator("#studies tbody tr")).to_have_count(1)
    expect(page.locator("#login")).to_be_hidden()
    expect(page.get_by_role("button", name="Log out")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.get_by_role("link", name="Open^Access").click()
    expect(page.locator("#series li")).to_have_count(1)
    # The page is complete (the header of its one instance shown) before its picture is taken.
    expect(page.locator("#header")).to_contain_text("Open^Access")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "study-tablet")
