"""A conversation's own settings: the model picker (with a second installed model, Gemma 270M), the
settings drawer (system prompt and its presets, temperature, top p, max tokens, reset), and a new
chat that keeps its choices until its first message creates it."""

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e import chat_steps as steps
from tests.e2e.chat_steps import send, settled, shown_conversation

pytestmark = pytest.mark.e2e
SMOL = "smollm2-135m-instruct-q4_1"
PIRATE = "You are a pirate. Answer like one."


@pytest.fixture(scope="module", autouse=True)
def short_replies(server):
    steps.short_replies(server)


def eventually(page, check, what):
    for _ in range(100):
        if check():
            return
        page.wait_for_timeout(100)
    raise AssertionError(what)


def test_the_picker_switches_the_model(page, server, gemma_path):
    registered = httpx.post(f"{server.url}/api/hub/import", json={"path": str(gemma_path)}, timeout=120).json()
    gemma = registered["registered"][0]
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    picker = page.locator("#model-picker")
    expect(picker.locator(f"option[value='{gemma['id']}']")).to_have_count(1)
    picker.select_option(gemma["id"])
    expect(page.locator("#model-name")).to_have_text(gemma["name"])
    send(page, "Say hello.")
    settled(page)
    expect(page.locator(".message.assistant").last).to_have_attribute("data-model", gemma["id"])
    assert shown_conversation(server, page)["model_id"] == gemma["id"]
    assert page.locator(".message.assistant .stats").last.get_attribute("title").startswith(f"Written by {gemma['name']}")

    # the drawer's model field is the same choice; back to the default for the next reply
    page.click("#conv-settings-button")
    expect(page.locator("#conv-model")).to_have_value(gemma["id"])
    page.locator("#conv-model").select_option("")
    expect(picker).to_have_value("")
    eventually(page, lambda: shown_conversation(server, page)["model_id"] is None, "the model choice was not saved")
    send(page, "Say bye.")
    settled(page)
    replies = page.locator(".message.assistant")
    expect(replies.last).to_have_attribute("data-model", SMOL)
    expect(replies.first).to_have_attribute("data-model", gemma["id"])


def test_the_conversation_settings_drawer(page, server, screenshot):
    send(page, "Hello.")
    settled(page)
    page.click("#conv-settings-button")
    drawer = page.locator("#conv-settings")
    expect(drawer).to_be_visible()
    expect(page.locator("#conv-settings-button")).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#conv-temperature")).to_have_attribute("placeholder", "0")

    page.fill("#system-prompt", PIRATE)
    page.fill("#conv-temperature", "0.3")  # leaving the prompt box saves it
    page.fill("#conv-top-p", "0.8")
    page.fill("#conv-max-tokens", "8")
    page.locator("#conv-max-tokens").press("Tab")
    eventually(page, lambda: {k: shown_conversation(server, page)[k] for k in ("system_prompt", "temperature", "top_p", "max_tokens")}
               == {"system_prompt": PIRATE, "temperature": 0.3, "top_p": 0.8, "max_tokens": 8}, "the settings were not saved")

    page.click("#preset-save")
    page.fill("#preset-name", "Pirate")
    page.click("#preset-confirm")
    expect(page.locator("#preset-picker option:checked")).to_have_text("Pirate")
    expect(page.locator("#preset-delete")).to_be_enabled()
    screenshot(page, "conversation-settings")

    # the next reply follows them
    send(page, "Tell me a long story about the sea.")
    settled(page)
    assert shown_conversation(server, page)["messages"][-1]["completion_tokens"] <= 8

    # a new chat: what is chosen before its first message goes with it
    page.click("#new-chat")
    expect(drawer).to_be_visible()
    expect(page.locator("#system-prompt")).to_have_value("")
    expect(page.locator("#conv-temperature")).to_have_value("")
    page.locator("#preset-picker").select_option(label="Pirate")
    expect(page.locator("#system-prompt")).to_have_value(PIRATE)
    send(page, "Hi.")
    settled(page)
    assert shown_conversation(server, page)["system_prompt"] == PIRATE

    page.once("dialog", lambda d: d.accept())
    page.click("#preset-delete")
    expect(page.locator("#preset-picker option", has_text="Pirate")).to_have_count(0)
    assert all(p["name"] != "Pirate" for p in httpx.get(f"{server.url}/api/presets").json())

    page.click("#conv-reset")
    eventually(page, lambda: shown_conversation(server, page)["system_prompt"] is None, "reset did not clear the system prompt")
    expect(page.locator("#system-prompt")).to_have_value("")
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()
