"""Branching conversations in the browser: regenerate keeps the first reply, an edit keeps the first
message, the ‹ n/m › arrows switch branches (and the choice survives a reload), fork opens a new
conversation, copy puts a message's text on the clipboard."""

import re

import pytest
from playwright.sync_api import expect

from tests.e2e import chat_steps as steps
from tests.e2e.chat_steps import send, settled, shown_conversation

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def short_replies(server):
    steps.short_replies(server)


def test_regenerate_writes_another_reply_and_keeps_the_first(page, server):
    send(page, "Name a color.")
    settled(page)
    first = page.locator(".message.assistant").last.get_attribute("data-id")
    reply = page.locator(".message.assistant").last
    reply.hover()
    reply.locator(".regenerate").click()
    settled(page)
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".siblings .position")).to_have_text("2/2")
    expect(page.locator(".message")).to_have_count(2)  # the new reply replaces the old one on screen
    stored = shown_conversation(server, page)["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[-1]["siblings"] == [int(first), stored[-1]["id"]]
    reply.locator(".prev").click()
    reply = page.locator(".message.assistant").last
    expect(reply).to_have_attribute("data-id", first)
    expect(reply.locator(".siblings .position")).to_have_text("1/2")
    expect(reply.locator(".prev")).to_be_disabled()


def test_edit_sends_a_new_version_and_the_arrows_switch_branches(page, server, screenshot):
    send(page, "Name a fruit.")
    settled(page)
    user = page.locator(".message.user").last
    user.hover()
    user.locator(".edit").click()
    # Cancel leaves the message as it was
    expect(page.locator(".edit-box")).to_have_value("Name a fruit.")
    page.click(".cancel-edit")
    expect(page.locator(".message.user .body")).to_have_text("Name a fruit.")
    user.hover()
    user.locator(".edit").click()
    page.fill(".edit-box", "Name a vegetable.")
    page.click(".save-edit")
    settled(page)
    user = page.locator(".message.user").last
    expect(user.locator(".body")).to_have_text("Name a vegetable.")
    expect(user.locator(".siblings .position")).to_have_text("2/2")
    expect(page.locator(".message")).to_have_count(2)
    page.locator(".message.assistant").last.hover()
    screenshot(page, "chat-branches")

    user.locator(".prev").click()
    user = page.locator(".message.user").last
    expect(user.locator(".body")).to_have_text("Name a fruit.")
    expect(user.locator(".siblings .position")).to_have_text("1/2")
    # the branch on screen is the conversation's: a reload shows the same one
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    user = page.locator(".message.user").last
    expect(user.locator(".body")).to_have_text("Name a fruit.")
    user.locator(".next").click()
    expect(page.locator(".message.user").last.locator(".body")).to_have_text("Name a vegetable.")
    stored = shown_conversation(server, page)["messages"]
    assert [m["content"] for m in stored if m["role"] == "user"] == ["Name a vegetable."]
    assert len(stored[0]["siblings"]) == 2


def test_fork_from_a_message_opens_a_new_conversation(page, server):
    send(page, "Say one word.")
    settled(page)
    send(page, "Say another word.")
    settled(page)
    original = page.evaluate("location.hash")
    title = page.locator("#chat-title").inner_text()
    first_reply = page.locator(".message.assistant").first
    first_reply.hover()
    first_reply.locator(".fork").click()
    expect(page.locator("#chat-title")).to_have_text(f"{title} (fork)")
    expect(page.locator(".message")).to_have_count(2)
    assert page.evaluate("location.hash") != original
    expect(page.locator("#conversation-list .conversation.active .title")).to_have_text(f"{title} (fork)")
    # Back returns to the conversation it came from, whole
    page.go_back()
    expect(page.locator("#chat-title")).to_have_text(title)
    expect(page.locator(".message")).to_have_count(4)
    assert page.evaluate("location.hash") == original


def test_copy_puts_the_message_text_on_the_clipboard(page, server):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    send(page, "Say hello.")
    settled(page)
    reply = page.locator(".message.assistant").last
    reply.hover()
    button = reply.locator(".copy-message")
    button.click()
    expect(button).to_have_text("Copied")
    stored = shown_conversation(server, page)["messages"][-1]["content"]
    assert page.evaluate("navigator.clipboard.readText()") == stored
    expect(button).to_have_text("Copy", timeout=5_000)
    assert re.search(r"\d+ tokens", reply.locator(".stats").inner_text())
