"""A browser on another device signs in with the API key once, then uses the app as here."""

import pytest
from playwright.sync_api import expect

from tandem.app.server import ServerThread
from tests.conftest import make_settings
from tests.integration.test_security_api import lan_address

KEY = "tdm-a-long-enough-secret-key"


@pytest.mark.skipif(lan_address() is None, reason="this machine has no network address besides loopback")
def test_a_page_from_another_device_asks_for_the_key_then_works(browser, tmp_path, screenshot):
    with ServerThread(make_settings(tmp_path, host="0.0.0.0", api_key=KEY)) as srv:
        context = browser.new_context(base_url=f"http://{lan_address()}:{srv.port}")
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto("/")
        dialog = page.locator("#sign-in")
        expect(dialog).to_be_visible()
        screenshot(page, "sign-in")
        page.fill("#sign-in-key", "tdm-not-the-key-at-all")
        page.click("#sign-in button")
        expect(dialog.locator(".field-error")).to_contain_text("not this Tandem's API key")
        page.fill("#sign-in-key", KEY)
        page.click("#sign-in button")
        page.wait_for_selector("body[data-ready=true]")
        expect(page.locator("#sign-in")).to_have_count(0)
        expect(page.locator("#model-name")).to_have_text("SmolLM2 135M Instruct (Q4_1)", timeout=30_000)
        page.fill("#prompt", "Say hi.")
        page.keyboard.press("Enter")
        reply = page.locator(".message.assistant").last
        expect(reply.locator(".stats")).to_contain_text("tokens", timeout=60_000)
        expect(reply.locator(".body")).not_to_be_empty()
        screenshot(page, "signed-in")
        context.close()
        assert errors == [], errors
