"""Browser tests: Debian's Chromium (``/usr/bin/chromium``, ``apt-get install chromium``; .ci/run
installs it) driven by Playwright, which never downloads a browser here. One browser and one
page for a module. Without Chromium (or Playwright) the tests skip, except under ``$CI``, where
they fail.

Screenshots of each page go to ``$TGMUX_SCREENSHOTS`` or ``tests/browser/screenshots/``
(git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

CHROMIUM = Path(os.environ.get("TGMUX_TEST_CHROMIUM", "/usr/bin/chromium"))
#: As root the sandbox must be off; without the networking flags Chromium reaches for Google's
#: hosts at every start (tests reach only 127.0.0.1).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def need_chromium(why: str) -> None:
    """Fail under $CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"Chromium (through Playwright) is required in CI: {why}", pytrace=False)
    pytest.skip(f"no browser: {why}")


@pytest.fixture(scope="module")
def chromium() -> Path:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        need_chromium(f"the playwright package is not installed ({exc}): pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        need_chromium(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: Path) -> AsyncIterator[Any]:
    from playwright.async_api import Error, async_playwright

    async with async_playwright() as playwright:
        try:
            browser = await playwright.chromium.launch(executable_path=str(chromium),
                                                       args=CHROMIUM_ARGS, timeout=60_000)
        except Error as exc:
            need_chromium(f"{chromium} does not start: {str(exc).splitlines()[0]}")
            raise
        try:
            yield browser
        finally:
            await browser.close()
