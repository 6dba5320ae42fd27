"""The Settings page's "Machines that share the work": a real `tandem worker` added by its address,
shown with its device, free memory and the measured network, an address that does not answer
refused in words, and the worker removed again."""

import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.integration.test_pool import start_worker, stop

pytestmark = pytest.mark.e2e


def test_a_worker_is_added_measured_shown_and_removed(page, server, screenshot):
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

        # the next load plans with the worker: on one machine's loopback pooling would be slower,
        # and the plan view says so beside where the model runs
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        page.goto(f"/#/models/{reply.json()['model']}")
        why = page.locator(".plan-reasons li", has_text="Pooling is not used")
        expect(why).to_contain_text(re.compile(r"layers? on the workers \(\d+ on 127\.0\.0\.1:\d+\) would decode at"))
        expect(why.locator(".reason-topic")).to_have_text("Where it runs")
        screenshot(page, "model-plan-pool-refused")

        page.goto("/#/settings")
        row = page.locator(f"#pool .remote[data-name='{endpoint}']")
        row.locator("button:has-text('Remove')").click()
        expect(section.locator("#pool-list")).to_contain_text("None yet.")
    finally:
        stop(proc)
