"""Fixtures of the dashboard tests: a populated store, worker processes, the UI, and a headless Chromium.

The browser tests (``test_ui_browser*.py``) need Chromium, chromedriver and
Selenium (``pip install -e '.[browser]'``; ``apt-get install chromium
chromium-driver``): they are collected only with ``LESSOR_BROWSER_TESTS=1``,
which ``make test-browser`` sets, so ``make test`` runs without a browser.
The HTTP-level page tests (``test_ui_pages.py``) need neither and always run.

Screenshots of the pages are written to ``$LESSOR_SCREENSHOTS`` when it is set
(``LESSOR_SCREENSHOTS=docs/screenshots make test-browser`` refreshes the
committed ones), else to the test's temp dir.
"""

from __future__ import annotations

import os
import shutil

import anyio
import pytest
import redis

from tests.browser.stack import UiThread, Workers, populate
from tests.conftest import TEST_MARK, make_backend

BROWSER_TESTS = os.environ.get("LESSOR_BROWSER_TESTS") == "1"
collect_ignore_glob = [] if BROWSER_TESTS else ["test_ui_browser*.py"]


@pytest.fixture(scope="module")
def stack(server_url):
    """The session's server, emptied, with two worker processes, the story's runs, and the UI on a free port.

    Yields (ui base URL, server URL, Story).
    """
    client = redis.Redis.from_url(server_url)
    client.flushall()
    client.set(TEST_MARK, 1)
    client.close()
    workers = Workers(server_url)
    workers.start("w-alpha")
    workers.start("w-beta")
    try:
        async def fill():
            backend = await make_backend(server_url)
            try:
                return await populate(backend)
            finally:
                await backend.redis.aclose()

        story = anyio.run(fill)
        with UiThread(server_url) as ui:
            yield ui.base, server_url, story
    finally:
        workers.stop()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system packages, driven by Selenium through the system chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: "
                    "apt-get update && apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    # An explicit chromedriver: Selenium Manager is never asked to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where screenshots go: $LESSOR_SCREENSHOTS, else a temp dir."""
    path = os.environ.get("LESSOR_SCREENSHOTS") or str(tmp_path_factory.mktemp("screenshots"))
    os.makedirs(path, exist_ok=True)
    return path
