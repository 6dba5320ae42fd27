"""Steps the chat's browser tests share: send a message, wait for the reply, read what was stored."""

import httpx
from playwright.sync_api import expect


def short_replies(server) -> None:
    """Short, greedy replies by default, so tests stay quick on a busy machine."""
    httpx.patch(f"{server.url}/api/settings", json={"max_tokens": 16, "temperature": 0}).raise_for_status()


def send(page, text):
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def settled(page):
    expect(page.locator(".message.assistant").last.locator(".stats")).to_contain_text("tokens", timeout=60_000)
    expect(page.locator(".message.streaming")).to_have_count(0)


def shown_conversation(server, page) -> dict:
    """The conversation open in the page, as the server stored it."""
    conv_id = page.evaluate("location.hash").removeprefix("#/c/")
    return httpx.get(f"{server.url}/api/conversations/{conv_id}").json()
