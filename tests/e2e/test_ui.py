"""The chat page in headless Chromium: chat, stop, rename, delete, safe rendering."""

import re

import httpx
import pytest
from playwright.sync_api import expect

from tandem.app.store import Store

pytestmark = pytest.mark.e2e


def send(page, text):
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def replies_up_to(server, max_tokens):
    """The default reply length of new conversations (the Settings page's), live."""
    httpx.patch(f"{server.url}/api/settings", json={"max_tokens": max_tokens}).raise_for_status()


# Text of the reply being written, once tokens arrive ("Reading your message…" shows before).
WRITING = """(() => {
  const body = document.querySelector('.message.assistant.streaming .body');
  return !!body && !body.querySelector('.waiting') && body.textContent.length > 10;
})()"""


def test_chat_streams_a_reply_with_its_speed(page, server):
    replies_up_to(server, 48)
    expect(page.locator("#model-name")).to_have_text("SmolLM2 135M Instruct (Q4_1)")
    send(page, "What is the capital of France?")
    expect(page.locator(".message.user .body").last).to_have_text("What is the capital of France?")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".stats")).to_contain_text("tokens", timeout=30_000)
    expect(reply.locator(".body")).not_to_be_empty()
    expect(reply).not_to_have_class(re.compile("streaming"))
    expect(reply.locator(".stats")).to_contain_text(re.compile(r"started in \d+"))
    # the conversation appears in the list, titled by its first message
    expect(page.locator("#conversation-list .conversation.active .title")).to_have_text("What is the capital of France?")
    expect(page.locator("#send")).to_be_visible()


def test_stop_button_keeps_the_partial_reply(page, server):
    replies_up_to(server, 1024)
    send(page, "Count from 1 to 500, one number per line.")
    stop = page.locator("#stop")
    expect(stop).to_be_visible()
    page.wait_for_function(WRITING)
    stop.click()
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".badge.stopped")).to_be_visible(timeout=15_000)
    expect(page.locator("#send")).to_be_visible()
    shown = reply.locator(".body").inner_text()
    conv_id = page.locator("#conversation-list .conversation.active").get_attribute("data-id")
    stored = httpx.get(f"{server.url}/api/conversations/{conv_id}").json()["messages"][-1]
    assert stored["status"] == "stopped"
    # what the page shows (rendered markdown) is all in the stored partial reply
    assert stored["content"]
    assert all(line.strip() in stored["content"] for line in shown.splitlines())
    assert "500" not in stored["content"]


def test_rename_and_delete(page, server):
    replies_up_to(server, 32)
    send(page, "Hello there")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("tokens", timeout=30_000)
    item = page.locator("#conversation-list .conversation.active")
    item.locator(".more").click()
    page.locator("#conversation-menu .rename").click()
    page.fill(".rename-input", "Greetings")
    page.press(".rename-input", "Enter")
    expect(page.locator("#conversation-list .conversation.active .title")).to_have_text("Greetings")
    expect(page.locator("#chat-title")).to_have_text("Greetings")

    page.once("dialog", lambda d: d.accept())
    item = page.locator("#conversation-list .conversation.active")
    item.locator(".more").click()
    page.locator("#conversation-menu .delete").click()
    expect(page.locator("#conversation-list .conversation", has_text="Greetings")).to_have_count(0)
    expect(page.locator("#empty-state")).to_be_visible()


def test_model_output_is_rendered_as_text_never_as_html(page, server):
    store = Store(server.settings.db_path)  # a second connection to the same SQLite file
    conv = store.create_conversation("Hostile reply")
    hostile = (
        "Here is **bold** and `code`.\n\n"
        "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=2</script>\n\n"
        "[click](javascript:window.__pwned=3) [docs](https://example.org)\n\n"
        "```html\n<b>not bold</b>\n```"
    )
    store.add_message(conv["id"], "user", "show me")
    store.add_message(conv["id"], "assistant", hostile)
    store.close()
    page.reload()
    page.locator("#conversation-list .conversation", has_text="Hostile reply").locator(".title").click()
    body = page.locator(".message.assistant .body").last
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("p code")).to_have_text("code")
    expect(body.locator(".code-block code")).to_have_text("<b>not bold</b>")
    assert body.locator("img, script, b").count() == 0
    assert body.locator("a").count() == 1
    assert body.locator("a").get_attribute("href") == "https://example.org"
    assert body.locator("a").get_attribute("rel") == "noopener noreferrer nofollow"
    expect(body).to_contain_text('<img src=x onerror="window.__pwned=1">')
    assert page.evaluate("window.__pwned") is None


def test_error_is_shown_and_the_message_is_given_back(page, server):
    replies_up_to(server, 32)
    # a conversation deleted behind the page's back: the server answers 404 with a message
    send(page, "First message")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("tokens", timeout=30_000)
    conv_id = page.locator("#conversation-list .conversation.active").get_attribute("data-id")
    httpx.delete(f"{server.url}/api/conversations/{conv_id}")
    send(page, "Second message")
    expect(page.locator("#error-banner")).to_contain_text("No conversation with id")
    expect(page.locator("#prompt")).to_have_value("Second message")


def test_messages_left_out_of_the_context_are_shown(browser, tmp_path):
    from tandem.app.server import ServerThread
    from tests.conftest import make_settings

    with ServerThread(make_settings(tmp_path, n_ctx=256, max_tokens=40)) as server:
        context = browser.new_context(base_url=server.url)
        page = context.new_page()
        page.goto("/")
        page.wait_for_selector("body[data-ready=true]")
        for i in range(8):
            send(page, f"Question {i}: tell me one fact about the number {i}.")
            expect(page.locator("#send")).to_be_visible(timeout=30_000)
            if page.locator(".badge.evicted").count():
                break
        expect(page.locator(".badge.evicted").last).to_contain_text("oldest message")
        expect(page.locator(".badge.evicted").last).to_contain_text("tokens")
        expect(page.locator(".message.evicted").first).to_be_visible()
        n_evicted = page.locator(".message.evicted").count()
        # after a reload the conversation still shows what the model no longer sees
        conv_id = page.locator("#conversation-list .conversation.active").get_attribute("data-id")
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        page.locator(f'#conversation-list .conversation[data-id="{conv_id}"] .title').click()
        expect(page.locator(".message.evicted")).to_have_count(n_evicted)
        context.close()


def test_context_policy_is_chosen_per_conversation(page, server):
    replies_up_to(server, 32)
    page.click("#conv-settings-button")  # it lives in the conversation's settings
    select = page.locator("#context-policy")
    expect(select).to_be_visible(timeout=30_000)  # a new chat shows what it will get
    expect(select.locator("option").first).to_have_text("Automatic: keep the start, slide the rest")
    send(page, "Hello")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("tokens", timeout=30_000)
    expect(select).to_be_enabled()
    conv_id = page.locator("#conversation-list .conversation.active").get_attribute("data-id")
    select.select_option("stop")
    expect(page.locator("#error-banner")).to_be_hidden()
    for _ in range(100):
        if httpx.get(f"{server.url}/api/conversations/{conv_id}").json()["context_policy"] == "stop":
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError("choosing a policy in the page did not store it")
    page.locator("#new-chat").click()
    expect(select).to_have_value("")
    page.locator(f'#conversation-list .conversation[data-id="{conv_id}"] .title').click()
    expect(select).to_have_value("stop")


def test_speculative_decoding_is_shown_under_the_reply(page, server):
    replies_up_to(server, 256)
    from tandem.app.bench_spec import TASKS

    send(page, TASKS["copy"])  # a reply that copies a code block: prompt lookup drafts it
    stats = page.locator(".message.assistant .stats").last
    expect(stats).to_contain_text("tokens", timeout=180_000)  # 256 tokens: slow on a busy machine
    expect(stats).to_contain_text(re.compile(r"(faster than|slower than|as fast as) predicted"))
    expect(stats).to_contain_text(re.compile(r"\d+ of \d+ guessed tokens accepted"))
    assert "prompt lookup" in stats.get_attribute("title")


def test_the_page_stays_usable_while_a_reply_streams_and_shows_a_wait(page, server, tmp_path):
    replies_up_to(server, 1024)
    send(page, "Count from 1 to 1000, one number per line.")
    page.wait_for_function(WRITING)
    first = page.locator("#conversation-list .conversation.active").get_attribute("data-id")
    expect(page.locator("#prompt")).to_be_enabled()  # one can write the next message meanwhile
    page.click("#new-chat")  # and open another conversation while the reply goes on
    send(page, "Say hello.")
    waiting = page.locator(".message.assistant.queued .waiting")
    expect(waiting).to_have_text("Waiting for another reply to finish…")
    page.screenshot(path=str(tmp_path / "waiting.png"))
    page.keyboard.press("Escape")  # stops the reply of the open conversation: the waiting one
    expect(waiting).to_have_count(0, timeout=10_000)
    expect(page.locator("#prompt")).to_have_value("Say hello.")  # nothing stored, nothing lost
    expect(page.locator("#send")).to_be_visible()
    # back to the first conversation: its reply is still being written, and shows so
    page.click(f"#conversation-list .conversation[data-id='{first}'] .title")
    expect(page.locator(".message.assistant.streaming")).to_have_count(1)
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    expect(page.locator(".message.assistant").last.locator(".badge.stopped")).to_be_visible(timeout=15_000)
