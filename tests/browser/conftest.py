"""A real browser for the dashboard's tests: Debian's headless Chromium driven by
selenium through /usr/bin/chromedriver (scripts/ensure-browser installs both).

Without them the tests skip, saying what to install, unless
LLMSESSION_REQUIRE_SERVICES=1, where they fail: CI must not turn green by skipping.
Screenshots go to test-output/screenshots/ (git-ignored); the run's summary says where.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import services_required

CHROMIUM = Path(os.environ.get("LLMSESSION_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LLMSESSION_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"

_saved: list[Path] = []


def require_browser() -> None:
    """Skip (or, when services are required, fail) unless Chromium and its driver are here."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return
    message = (
        f"no {' and no '.join(missing)}: install Debian's chromium and chromium-driver "
        "(scripts/ensure-browser does, as root)"
    )
    if services_required():
        pytest.fail(f"{message}, and LLMSESSION_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a module's tests, its console log kept."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests may run as root (containers, CI)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver: Any, name: str) -> Path:
    """A PNG of the browser's page as test-output/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # The whole page, not only the window: set the window to the document's height.
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(700, min(int(height) + 40, 4000)))
    assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
    driver.set_window_size(1280, 1000)
    _saved.append(path)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _saved:
        terminalreporter.write_line(f"dashboard screenshots ({len(_saved)}): {SCREENSHOTS}")
