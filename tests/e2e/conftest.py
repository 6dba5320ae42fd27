"""Headless Chromium (Debian's, no browser download) driving the real UI on a real server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("TANDEM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        pytest.fail("Chromium is missing: run ./dev.sh test as root, or apt-get install chromium")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    # CSP bypassed so that tests can evaluate scripts; the renderer must be safe without CSP too.
    context = browser.new_context(base_url=server.url, bypass_csp=True)
    p = context.new_page()
    errors = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.goto("/")
    p.wait_for_selector("body[data-ready=true]")
    yield p
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


ARTIFACTS = Path(os.environ.get("TANDEM_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")


@pytest.fixture()
def screenshot():
    """screenshot(page, name): a PNG of the page under test-artifacts/screenshots/ (kept after the run)."""
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)

    def take(p, name: str, full_page: bool = True) -> Path:
        path = folder / f"{name}.png"
        p.screenshot(path=str(path), full_page=full_page)
        return path

    return take
