"""The OHIF viewer (npm's ``@ohif/app``, unmodified) served by ``dicomhub serve --auth`` at /ohif.

One server and one browser context for the module (OHIF is heavy to boot). The
viewer is installed with ``dicomhub ohif install --from-tarball`` from the
tarball scripts/install-test-deps.sh fetched, into the running server's data
directory. Stored: a CT phantom labelled ``cardio`` (explicit VR little endian)
and the same phantom as another patient's study in JPEG 2000 lossless. OHIF
gets dicomhub's token from the UI's log-in (sessionStorage): its study list
shows what the token may see, and its viewport draws the first slice, which
is compared with the archive's own /rendered image of that frame.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect
from pydicom.dataset import Dataset

from tests.e2e.codec_data import J2K_LOSSLESS, compressed
from tests.e2e.helpers import DicomhubServer, ServerPool, add_user, bearer, run_cli, stow
from tests.e2e.ui.conftest import LAPTOP
from tests.e2e.ui.test_ui import ct_series

pytestmark = [pytest.mark.e2e, pytest.mark.backend_neutral]

OHIF_VERSION = "3.13.2"
OHIF_TARBALL = (
    Path(os.environ.get("DICOMHUB_TEST_OHIF_DIR", str(Path.home() / ".cache" / "dicomhub-test" / "ohif")))
    / f"ohif-app-{OHIF_VERSION}.tgz"
)
SLICES = 4


@dataclass
class Hub:
    server: DicomhubServer
    admin: str = ""
    reader: str = ""
    ct: list[Dataset] = field(default_factory=list)
    j2k: list[Dataset] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.base_url

    def user(self, name: str, role: str, scope: str) -> str:
        return add_user(self.server, name, role, scope)


@pytest.fixture(scope="module")
def tab(browser: Browser) -> Iterator[Page]:
    """One context for the module: OHIF's boot (17 MB of script) is paid once. Unlike the
    UI's ``page`` fixture, OHIF's own uncaught errors (its optional services) are not failures."""
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def hub(module_servers: ServerPool, tab: Page) -> Hub:
    if not OHIF_TARBALL.is_file():
        pytest.fail(f"{OHIF_TARBALL} is missing: run scripts/install-test-deps.sh (npm pack @ohif/app)")
    h = Hub(module_servers.start(args=["--auth"]))
    # Before the install /ohif says how to get the viewer (and needs no token to say it).
    r = httpx.get(f"{h.url}/ohif/", timeout=10)
    assert r.status_code == 404 and "dicomhub ohif install" in r.text, r.text
    h.admin = h.user("root", "admin", "archive")
    h.reader = h.user("cardiologist", "reader", "label:cardio")
    h.ct = ct_series("Doe^Jane", "P-JANE", SLICES, 41, study_description="Chest CT")
    stow(h.url, h.admin, h.ct)
    # ... and the study page offers no OHIF link.
    log_in(tab, h, h.admin)
    with tab.expect_response("**/ohif/app-config.js") as asked:
        tab.goto(f"{h.url}/ui/studies/{h.ct[0].StudyInstanceUID}")
    assert asked.value.status == 404
    expect(tab.locator("#series li")).to_have_count(1)
    expect(tab.get_by_role("link", name="Open in OHIF")).to_be_hidden()
    rc, out = run_cli(
        "ohif",
        "install",
        "--from-tarball",
        str(OHIF_TARBALL),
        "--data-dir",
        str(h.server.data_dir),
        timeout=300,
    )
    assert rc == 0, out
    h.j2k = [
        compressed(ds, J2K_LOSSLESS)
        for ds in ct_series("Roe^Richard", "P-RICHARD", SLICES, 42, study_description="Chest CT J2K")
    ]
    stow(h.url, h.admin, h.j2k)
    r = httpx.put(
        f"{h.url}/dicomweb/studies/{h.ct[0].StudyInstanceUID}/labels/cardio", headers=bearer(h.admin)
    )
    assert r.status_code == 201, r.text
    return h


def log_in(page: Page, hub: Hub, token: str) -> None:
    """dicomhub's own log-in keeps the token in sessionStorage, where OHIF's config finds it."""
    page.goto(hub.url + "/")
    page.evaluate("t => sessionStorage.setItem('dicomhub.token', t)", token)


def viewport_image(page: Page) -> np.ndarray:
    """The first viewport's canvas as grey levels, once it shows more than one grey level."""
    canvas = page.locator("canvas.cornerstone-canvas").first
    expect(canvas).to_be_visible(timeout=60_000)
    deadline = time.monotonic() + 60
    while True:
        grey = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("L"), dtype=np.float64)
        # The middle half only: OHIF's overlay text in the corners is not the image.
        h, w = grey.shape
        if grey[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].std() > 10 or time.monotonic() > deadline:
            return grey
        time.sleep(0.5)


def dismiss_notices(page: Page) -> None:
    """OHIF's first-visit tour and its "investigational use" banner lie over the viewport;
    once dismissed, OHIF remembers it in this browser context."""
    page.wait_for_timeout(1000)  # they appear just after the first image
    for button in ("Skip all", "Confirm and hide"):
        found = page.get_by_text(button, exact=True)
        if found.count() and found.first.is_visible():
            found.first.click()
            expect(found).to_have_count(0)


def rendered(hub: Hub, ds: Dataset) -> np.ndarray:
    r = httpx.get(
        f"{hub.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered",
        headers={**bearer(hub.admin), "Accept": "image/png"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("L"), dtype=np.float64)


def image_in_viewport(grey: np.ndarray, size: int) -> np.ndarray:
    """The square image OHIF fits into the viewport (centred, the shorter side), at ``size``."""
    h, w = grey.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(grey[top : top + side, left : left + side].astype(np.uint8))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)


def assert_draws(page: Page, hub: Hub, series: list[Dataset]) -> None:
    """Open the study from dicomhub's study page in OHIF; its first viewport shows a stored slice."""
    page.goto(f"{hub.url}/ui/studies/{series[0].StudyInstanceUID}")
    page.get_by_role("link", name="Open in OHIF").click()
    grey = viewport_image(page)
    dismiss_notices(page)
    grey = viewport_image(page)
    h, w = grey.shape
    assert grey[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].std() > 10, "the viewport stayed blank"
    drawn = image_in_viewport(grey, int(series[0].Rows))
    # Both sides use the file's window (40/400), so the grey levels are alike; overlays
    # (OHIF's corner text) and interpolation differ, hence a correlation, not equality.
    corr = [float(np.corrcoef(drawn.ravel(), rendered(hub, ds).ravel())[0, 1]) for ds in series]
    # OHIF orders the stack itself (by position) and says which instance it shows.
    shown = page.get_by_text(re.compile(r"^I:\s*\d+")).first.inner_text()
    number = int(re.findall(r"\d+", shown)[0])
    index = [int(ds.InstanceNumber) for ds in series].index(number)
    assert int(np.argmax(corr)) == index, (shown, corr)
    assert corr[index] > 0.95, (shown, corr)


def test_study_list_shows_what_the_token_may_see(tab: Page, hub: Hub) -> None:
    log_in(tab, hub, hub.admin)
    tab.goto(hub.url + "/ohif/")
    expect(tab.get_by_text("Doe^Jane").or_(tab.get_by_text("Doe, Jane")).first).to_be_visible(timeout=60_000)
    expect(tab.get_by_text("Roe^Richard").or_(tab.get_by_text("Roe, Richard")).first).to_be_visible()
    # The label-limited reader: OHIF's list is QIDO-RS with their token.
    log_in(tab, hub, hub.reader)
    tab.goto(hub.url + "/ohif/")
    expect(tab.get_by_text("Doe^Jane").or_(tab.get_by_text("Doe, Jane")).first).to_be_visible(timeout=60_000)
    expect(tab.get_by_text("Roe^Richard").or_(tab.get_by_text("Roe, Richard"))).to_have_count(0)


def test_ct_study_is_drawn(tab: Page, hub: Hub) -> None:
    log_in(tab, hub, hub.admin)
    assert_draws(tab, hub, hub.ct)


def test_jpeg2000_study_is_drawn(tab: Page, hub: Hub) -> None:
    log_in(tab, hub, hub.admin)
    assert_draws(tab, hub, hub.j2k)
