"""Browser fixtures: Playwright for Python driving Debian's chromium (one browser per module).

Playwright's own browser download is not used: the tests launch the system
``chromium`` that scripts/install-test-deps.sh installs. Screenshots of the main
pages go to docs/ui/ (see docs/ui.md), so that the pictures there stay current.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, sync_playwright

CHROMIUM = os.environ.get("DICOMHUB_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[3] / "docs" / "ui"
# A laptop screen; the tablet width is checked by the tests that need it.
LAPTOP = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-test-deps.sh (Debian's chromium)")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no token in sessionStorage) per test."""
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"{exc}: {exc.stack}"))
    yield tab
    context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


def screenshot(page: Page, name: str, mask: Sequence[Locator] = ()) -> None:
    """``mask``: what differs from run to run (ports, new UIDs, times), covered by boxes."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # The top of the page, with nothing focused: the same picture from run to run.
    page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    taken = page.screenshot(mask=list(mask))
    path = SCREENSHOTS / f"{name}.png"
    # Chromium's rasteriser varies by a few anti-aliased pixels from run to run: the file is
    # rewritten only when the page looks different, so that a test run leaves git clean.
    if path.exists() and _alike(path.read_bytes(), taken):
        return
    path.write_bytes(taken)


def _alike(old: bytes, new: bytes) -> bool:
    a = np.asarray(Image.open(io.BytesIO(old)).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(new)).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return False
    changed = np.count_nonzero(np.abs(a - b).max(axis=2) > 8)
    return changed <= a.shape[0] * a.shape[1] // 10_000
