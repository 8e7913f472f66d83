"""Headless Chromium for the dashboard tests: Debian's ``chromium`` + ``chromium-driver`` driven by Selenium.

Nothing is downloaded: the driver is given explicitly (Selenium Manager never runs) and the browser
starts with its network features off. ``missing()`` says why a machine cannot run these tests.
Selenium blocks: tests call into it with ``asyncio.to_thread`` so the facade keeps serving.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CHROMEDRIVER", "CHROMIUM", "chromium", "missing", "wait"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for name, path in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER)):
        if shutil.which(path) is None:
            return f"no headless browser: {path} not found (apt-get install chromium chromium-driver)"
    return None


@contextlib.contextmanager
def chromium(*, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile directory), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="facade-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={width},{height}")
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 15.0, message: str = "") -> Any:
    """Poll ``condition(driver)`` until it is truthy (WebDriverWait), with a deadline."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(condition, message)
