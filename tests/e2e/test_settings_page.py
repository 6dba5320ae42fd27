"""The Settings page (#/settings): defaults for new conversations, the theme (applied at once and
before the first paint after a reload), where data lives, the port; restart notes and refusals."""

import re

import httpx
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


def setting(page, name):
    return page.locator(f"#settings-view .setting[data-name={name}]")


def test_settings_persist_across_a_reload_and_the_theme_applies(page, server, screenshot):
    page.click("#show-settings")
    expect(page).to_have_url(re.compile(r"#/settings$"))
    expect(page.locator("#chat-title")).to_have_text("Settings")
    view = page.locator("#settings-view")
    expect(view.locator(".settings-section h3")).to_have_text(
        ["New conversations", "Appearance", "Storage", "Server", "Other servers", "Machines that share the work"])
    # what waits for the next start says so; live settings do not
    for name in ("port", "data_dir", "context_cache_mb"):
        expect(setting(page, name).locator(".restart-note")).to_contain_text("takes effect at next start")
    for name in ("temperature", "system_prompt", "theme"):
        expect(setting(page, name).locator(".restart-note")).to_have_count(0)

    page.fill("#set-system_prompt", "Answer in one sentence.")
    page.fill("#set-temperature", "0.2")
    page.fill("#set-max_tokens", "12")
    page.locator("#set-max_tokens").press("Tab")
    expect(setting(page, "max_tokens").locator(".saved")).to_have_text("Saved")
    page.locator("#set-context_policy").select_option("drop_turns")
    page.click(".theme-option:has-text('Dark')")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.fill("#set-context_cache_mb", "512")
    page.locator("#set-context_cache_mb").press("Tab")
    expect(setting(page, "context_cache_mb").locator(".restart-note")).to_contain_text("takes effect at next start (now 2048)")
    screenshot(page, "settings")

    values = httpx.get(f"{server.url}/api/settings").json()["values"]
    assert values["system_prompt"] == "Answer in one sentence."
    assert (values["temperature"], values["max_tokens"], values["context_policy"]) == (0.2, 12, "drop_turns")
    assert (values["theme"], values["context_cache_mb"]) == ("dark", 512)

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    # the theme is there from the first paint: the remembered one, before the settings load
    assert page.evaluate("localStorage.getItem('tandem.theme')") == "dark"
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(page.locator("#set-system_prompt")).to_have_value("Answer in one sentence.")
    expect(page.locator("#set-temperature")).to_have_value("0.2")
    expect(page.locator("#set-max_tokens")).to_have_value("12")
    expect(page.locator("#set-context_policy")).to_have_value("drop_turns")
    expect(page.locator("input[name=theme][value=dark]")).to_be_checked()

    # a new conversation starts with these defaults (shown as such in its settings)
    page.click("#new-chat")
    page.click("#conv-settings-button")
    expect(page.locator("#conv-max-tokens")).to_have_attribute("placeholder", "12")
    expect(page.locator("#system-prompt")).to_have_attribute("placeholder", "Default from Settings: Answer in one sentence.")

    # back to the system's theme: the attribute goes, the page follows the system
    page.click("#show-settings")
    page.click(".theme-option:has-text('Match the system')")
    expect(page.locator("html")).not_to_have_attribute("data-theme", re.compile("."))
    assert page.evaluate("localStorage.getItem('tandem.theme')") == "system"
    httpx.patch(f"{server.url}/api/settings", json={"context_cache_mb": 2048, "system_prompt": None}).raise_for_status()


def test_a_refused_value_shows_the_server_message(page, server):
    page.goto(f"{server.url}/#/settings")
    page.wait_for_selector("#set-port")
    page.fill("#set-port", "70000")
    page.locator("#set-port").press("Tab")
    error = setting(page, "port").locator(".field-error")
    expect(error).to_contain_text("70000")
    expect(setting(page, "port")).to_have_class(re.compile(r"\binvalid\b"))
    assert httpx.get(f"{server.url}/api/settings").json()["values"]["port"] != 70000
    page.fill("#set-temperature", "")
    page.locator("#set-temperature").press("Tab")
    expect(setting(page, "temperature").locator(".field-error")).to_have_text("Enter a number.")


def test_network_access_shows_its_key_once_and_waits_for_the_next_start(page, server, screenshot):
    page.click("#show-settings")
    row = setting(page, "lan_access")
    expect(row.locator(".restart-note")).to_contain_text("takes effect at next start")
    key = row.locator(".api-key input")
    expect(row.locator(".api-key")).to_be_hidden()
    row.locator("#set-lan-toggle").check()
    expect(row.locator(".saved")).to_have_text("Saved")
    expect(key).to_be_visible()
    first = key.input_value()
    values = httpx.get(f"{server.url}/api/settings").json()["values"]
    assert first.startswith("tdm-") and first not in str(values) and values["api_key_hint"] == first[:8] + "…"
    expect(row.locator(".key-hint")).to_have_text("Copy it now: it is shown only this once.")
    expect(row.locator(".restart-note")).to_contain_text("now off")
    screenshot(page, "settings-network")
    row.locator("button", has_text="New key").click()
    expect(key).not_to_have_value(first)
    second = key.input_value()
    page.reload()  # shown once: after a reload only its hint is left
    page.wait_for_selector("body[data-ready=true]")
    page.click("#show-settings")
    row = setting(page, "lan_access")
    expect(row.locator(".api-key input")).to_be_hidden()
    expect(row.locator(".key-hint")).to_contain_text(f"Key {second[:8]}… is set")
    row.locator("#set-lan-toggle").uncheck()
    expect(row.locator(".api-key")).to_be_hidden()
    assert httpx.get(f"{server.url}/api/settings").json()["values"]["lan_access"] is False
