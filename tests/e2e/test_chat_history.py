"""How stored history reads: a long pasted message shows its start with Show more, and a reply cut
off by a crash says so."""

import pytest
from playwright.sync_api import expect

from tandem.app.store import Store

pytestmark = pytest.mark.e2e


def test_a_long_message_is_collapsed_and_a_cut_off_reply_is_marked(page, server, screenshot):
    store = Store(server.settings.db_path)  # a second connection to the same SQLite file
    conv = store.create_conversation("Long paste")
    long = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(80))
    user = store.add_message(conv["id"], "user", long)
    reply = store.begin_reply(conv["id"], user["id"], "smollm2-135m-instruct-q4_1")
    store.write_reply(reply["id"], "The text is about a fox and")
    store.mark_interrupted()  # as the next start does after a crash
    store.close()

    page.goto(f"/#/c/{conv['id']}")
    message = page.locator(".message.user")
    expect(message).to_have_class("message user collapsed")
    body = message.locator(".body")
    assert body.evaluate("b => b.scrollHeight > b.clientHeight + 100")
    expect(page.locator("#conversation-list .conversation.active")).to_contain_text("Long paste")
    screenshot(page, "long-message")
    message.locator(".show-more").click()
    expect(message).not_to_have_class("message user collapsed")
    assert body.evaluate("b => b.scrollHeight <= b.clientHeight + 1")
    expect(message.locator(".show-more")).to_have_text("Show less")

    cut = page.locator(".message.assistant")
    expect(cut.locator(".body")).to_contain_text("The text is about a fox and")
    expect(cut.locator(".badge", has_text="cut off")).to_be_visible()
