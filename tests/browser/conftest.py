"""The headless Chromium of the browser tests (Selenium, the Debian chromium-driver).

Selenium never downloads anything here: the driver path and the browser binary are given and
``SE_OFFLINE`` is set; the browser resolves no host but 127.0.0.1.
"""

from __future__ import annotations

import os

import pytest
from browser_helpers import CHROMEDRIVER, CHROMIUM, MISSING_BROWSER, browser_missing


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if browser_missing():
        pytest.skip(MISSING_BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not fetch anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1440,1800",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                     # nothing but the app: web fonts and the like fail at once, offline
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()
