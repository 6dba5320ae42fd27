"""The Settings page's "Machines that share the work": a real `tandem worker` added by its address,
shown with its device, free memory and the measured network, an address that does not answer
refused in words, and the worker removed again."""

import re

import pytest
from playwright.sync_api import expect

from tests.integration.test_pool import start_worker, stop

pytestmark = pytest.mark.e2e


def test_a_worker_is_added_measured_shown_and_removed(page, screenshot):
    proc, endpoint = start_worker()
    try:
        page.goto("/#/settings")
        section = page.locator("#pool")
        expect(section.locator("h3")).to_have_text("Machines that share the work")
        expect(section.locator("#pool-list")).to_contain_text("None yet.")
        page.fill("#pool-endpoint", "127.0.0.1:1")
        page.click("#pool-add")
        expect(section.locator(".field-error[role=alert]")).to_contain_text("does not answer")
        page.fill("#pool-endpoint", endpoint)
        page.click("#pool-add")
        row = section.locator(f".remote[data-name='{endpoint}']")
        expect(row).to_contain_text(re.compile(r"CPU \(.+\) [\d.]+ GiB free · round trip [\d.]+ ms · [\d.]+ Mbit/s"))
        expect(row.locator(".dot.ok")).to_have_count(1)
        section.scroll_into_view_if_needed()
        screenshot(page, "settings-pool")
        row.locator("button:has-text('Remove')").click()
        expect(section.locator("#pool-list")).to_contain_text("None yet.")
    finally:
        stop(proc)
