"""Getting around the chat: addresses (reload, Back and Forward), keyboard shortcuts (Esc stops,
Ctrl+Shift+O), the title after the first message, reading progress, the stats line in plain
words, the server status dot, and the narrow layout's menu button."""

import re

import httpx
import pytest
from playwright.sync_api import expect

from tandem.app.store import Store

from tests.e2e import chat_steps as steps
from tests.e2e.chat_steps import send, settled

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct-q4_1"


@pytest.fixture(scope="module", autouse=True)
def short_replies(server):
    steps.short_replies(server)


def test_reload_keeps_the_conversation_and_back_forward_work(page, server, screenshot):
    expect(page).to_have_url(re.compile(r"/(#/)?$"))
    send(page, "Say yes.")
    settled(page)
    # the new chat became a conversation with its own address, and its title is the first message
    expect(page).to_have_url(re.compile(r"#/c/[0-9a-f]+$"))
    expect(page.locator("#chat-title")).to_have_text("Say yes.")
    expect(page.locator("#conversation-list .conversation.active .title")).to_have_text("Say yes.")
    first = page.evaluate("location.hash")
    screenshot(page, "chat")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".message.user .body")).to_have_text("Say yes.")
    expect(page.locator("#chat-title")).to_have_text("Say yes.")

    page.keyboard.press("Control+Shift+O")  # a new chat
    expect(page).to_have_url(re.compile(r"#/$"))
    expect(page.locator("#empty-state")).to_be_visible()
    send(page, "Say no.")
    settled(page)
    second = page.evaluate("location.hash")
    assert second != first
    page.click("#show-settings")
    expect(page).to_have_url(re.compile(r"#/settings$"))
    expect(page.locator("#settings-view")).to_be_visible()

    page.go_back()  # the second conversation; the empty "new chat" it started as is not a stop
    expect(page.locator(".message.user .body")).to_have_text("Say no.")
    assert page.evaluate("location.hash") == second
    page.go_back()
    expect(page.locator(".message.user .body")).to_have_text("Say yes.")
    assert page.evaluate("location.hash") == first
    page.go_forward()
    expect(page.locator(".message.user .body")).to_have_text("Say no.")
    page.go_forward()
    expect(page.locator("#settings-view")).to_be_visible()
    expect(page.locator("#composer")).to_be_hidden()
    # an address typed or bookmarked opens its page
    page.goto(f"{server.url}/{first}")
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".message.user .body")).to_have_text("Say yes.")


def test_escape_stops_the_reply(page, server):
    httpx.patch(f"{server.url}/api/settings", json={"max_tokens": 1024}).raise_for_status()
    try:
        send(page, "Count from 1 to 500, one number per line.")
        page.wait_for_function("""(() => {
          const body = document.querySelector('.message.assistant.streaming .body');
          return !!body && !body.querySelector('.waiting') && body.textContent.length > 10;
        })()""")
        expect(page.locator("#prompt")).to_be_editable()  # one can write meanwhile
        page.keyboard.press("Escape")
        reply = page.locator(".message.assistant").last
        expect(reply.locator(".badge.stopped")).to_be_visible(timeout=15_000)
        expect(page.locator("#send")).to_be_visible()
    finally:
        httpx.patch(f"{server.url}/api/settings", json={"max_tokens": 16}).raise_for_status()


def test_a_long_message_shows_reading_progress(page):
    # every text the reply shows before its first token
    page.evaluate("""() => {
      window.__reading = [];
      new MutationObserver(() => {
        const wait = document.querySelector('.message.streaming .reading');
        if (wait && window.__reading.at(-1) !== wait.textContent) window.__reading.push(wait.textContent);
      }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    long_text = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(120))
    send(page, long_text + "\nHow many lines were there?")
    settled(page)
    seen = page.evaluate("window.__reading")
    # "Reading your message…" from the reply's start; the share read once the server counts it
    assert seen and all(re.fullmatch(r"Reading your message…( \d+%)?", s) for s in seen), seen
    assert any(s.endswith("%") for s in seen), seen


def test_the_stats_line_says_it_in_plain_words(page, server):
    store = Store(server.settings.db_path)
    conv = store.create_conversation("Speed")
    store.add_message(conv["id"], "user", "Copy this code.")
    store.add_message(conv["id"], "assistant", "Here it is.", model_id=MODEL, status="complete", finish_reason="stop",
                      prompt_tokens=120, completion_tokens=200, ttft_s=0.25, decode_tps=93.2, predicted_tps=77.5,
                      spec_source="prompt_lookup", drafted_tokens=52, accepted_tokens=40)
    store.add_message(conv["id"], "user", "Again, slower.")
    store.add_message(conv["id"], "assistant", "Fine.", model_id=MODEL, status="complete", finish_reason="length",
                      completion_tokens=16, ttft_s=1.5, decode_tps=50.4, predicted_tps=77.5,
                      spec_source=f"draft:{MODEL}", drafted_tokens=10, accepted_tokens=2)
    store.close()
    page.goto(f"{server.url}/#/c/{conv['id']}")
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator(".message.assistant .stats")).to_have_count(2)
    fast, slow = page.locator(".message.assistant .stats").all()
    expect(fast).to_have_text(
        "93 tok/s · 1.2× faster than predicted · 40 of 52 guessed tokens accepted · 200 tokens · started in 250 ms")
    # the models' names may arrive after the messages: the line is named again then
    expect(fast).to_have_attribute("title", re.compile(r"Written by SmolLM2 135M Instruct \(Q4_1\)"))
    help = fast.get_attribute("title")
    assert "the decode speed the plan predicts for this model on this machine" in help
    assert "Guessed tokens (speculative decoding): prompt lookup" in help
    assert "checked them in one go" in help
    assert "Written by SmolLM2 135M Instruct (Q4_1)" in help
    expect(slow).to_have_text(
        "50 tok/s · 35% slower than predicted · 2 of 10 guessed tokens accepted · 16 tokens · started in 1.5 s"
        " · cut at the length limit")
    assert "a small draft model (SmolLM2 135M Instruct (Q4_1))" in slow.get_attribute("title")
    assert "plan" not in fast.inner_text() and "drafted" not in fast.inner_text()


def test_the_status_dot_turns_red_while_the_server_does_not_answer(page):
    dot = page.locator("#model-dot")
    expect(dot).to_have_class(re.compile(r"\bok\b"))
    page.route("**/api/health", lambda route: route.abort())
    expect(dot).to_have_class(re.compile(r"\bdown\b"), timeout=15_000)
    expect(page.locator("#model-name")).to_have_text("Server not reachable")
    page.unroute("**/api/health")
    expect(dot).to_have_class(re.compile(r"\bok\b"), timeout=15_000)
    expect(page.locator("#model-name")).to_have_text("SmolLM2 135M Instruct (Q4_1)")


def test_narrow_windows_keep_the_sidebar_behind_a_menu_button(page, server, screenshot):
    send(page, "Say hi.")
    settled(page)
    first = page.evaluate("location.hash")
    page.click("#new-chat")
    send(page, "Say bye.")
    settled(page)
    page.set_viewport_size({"width": 600, "height": 800})
    sidebar = page.locator("#sidebar")
    expect(sidebar).to_be_hidden()
    menu = page.locator("#menu-button")
    expect(menu).to_be_visible()
    screenshot(page, "narrow")
    menu.click()
    expect(sidebar).to_be_visible()
    expect(sidebar).to_be_in_viewport(ratio=1)
    expect(menu).to_have_attribute("aria-expanded", "true")
    screenshot(page, "narrow-sidebar")
    # choosing a conversation opens it and closes the sidebar
    page.click(f"#conversation-list .conversation .title[href='{first}']")
    expect(page.locator(".message.user .body")).to_have_text("Say hi.")
    expect(sidebar).to_be_hidden()
    # Ctrl+K opens it at the search box; the backdrop closes it
    page.keyboard.press("Control+k")
    expect(page.locator("#search")).to_be_focused()
    page.mouse.click(580, 400)
    expect(sidebar).to_be_hidden()
    page.set_viewport_size({"width": 1280, "height": 720})
    expect(sidebar).to_be_visible()
    expect(menu).to_be_hidden()
