"""The sidebar as a library: search across conversations (Ctrl+K, highlighted snippets, a result opens
its conversation at the message, on its branch), pins, export as Markdown and JSON, and import."""

import json
import re

import httpx
import pytest
from playwright.sync_api import expect

from tandem.app.store import Store

from tests.e2e import chat_steps as steps

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def short_replies(server):
    steps.short_replies(server)


def stored_conversation(server, title, turns, branch_from=None):
    """A conversation written straight into the store: [(role, content), ...] in order."""
    store = Store(server.settings.db_path)
    conv = store.create_conversation(title)
    ids = [store.add_message(conv["id"], role, content)["id"] for role, content in turns]
    if branch_from is not None:  # a second version of one message, which becomes the active branch
        index, content = branch_from
        parent = store.get_message(conv["id"], ids[index])["parent_id"]
        store.add_message(conv["id"], "user", content, parent_id=parent)
    store.close()
    return conv["id"], ids


def test_search_opens_the_conversation_at_the_message(page, server, screenshot):
    # enough turns after the match that it has to be scrolled to
    filler = [turn for i in range(12) for turn in
              (("user", f"Question {i} about the weather."), ("assistant", f"Answer {i}: it is mild."))]
    conv_id, ids = stored_conversation(
        server, "Trip planning",
        [("user", "Where should we go?"), ("assistant", "Somewhere with a lighthouse and a harbour.")]
        + filler,
        branch_from=(0, "Where should we go in winter?"),  # the lighthouse is on the other branch now
    )
    stored_conversation(server, "Groceries", [("user", "Apples, bread, lighthouse-shaped pasta.")])
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.keyboard.press("Control+k")
    expect(page.locator("#search")).to_be_focused()
    page.keyboard.type("lighthouse")
    results = page.locator("#search-results .search-result")
    expect(results).to_have_count(2)
    expect(page.locator("#conversation-list")).to_be_hidden()
    hit = page.locator(f"#search-results .search-result[data-message='{ids[1]}']")
    expect(hit.locator(".result-title")).to_have_text("Trip planning")
    expect(hit.locator("mark")).to_have_text("lighthouse")
    expect(hit.locator(".snippet")).to_contain_text("Somewhere with a lighthouse")
    screenshot(page, "search")

    hit.click()
    expect(page).to_have_url(f"{server.url}/#/c/{conv_id}")
    message = page.locator(f".message[data-id='{ids[1]}']")
    expect(message).to_be_in_viewport()
    expect(message).to_have_class(re.compile(r"\bflash\b"))  # it is pointed out for a moment
    expect(page.locator(".message.user").first.locator(".body")).to_have_text("Where should we go?")
    # Escape in the box clears the search: the list comes back
    page.locator("#search").press("Escape")
    expect(page.locator("#search")).to_have_value("")
    expect(page.locator("#conversation-list")).to_be_visible()


def test_pinned_conversations_come_first(page, server):
    first, _ = stored_conversation(server, "Older notes", [("user", "Remember this.")])
    stored_conversation(server, "Newer notes", [("user", "And this.")])
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    rows = page.locator("#conversation-list .conversation")
    expect(rows.first).to_contain_text("Newer notes")
    row = page.locator(f"#conversation-list .conversation[data-id='{first}']")
    row.locator(".more").click()
    expect(page.locator("#conversation-menu .pin")).to_have_text("Pin")
    page.click("#conversation-menu .pin")
    expect(page.locator("#conversation-list .list-heading").first).to_have_text("Pinned")
    expect(rows.first).to_have_attribute("data-id", first)
    expect(rows.first).to_have_class("conversation pinned")
    assert httpx.get(f"{server.url}/api/conversations/{first}").json()["pinned"] is True
    rows.first.locator(".more").click()
    expect(page.locator("#conversation-menu .pin")).to_have_text("Unpin")
    page.click("#conversation-menu .pin")
    expect(page.locator("#conversation-list .list-heading")).to_have_count(0)
    expect(rows.first).to_contain_text("Newer notes")


def test_export_markdown_and_json_then_import_the_json(page, server, tmp_path):
    page.fill("#prompt", "Write a haiku about tea.")
    page.press("#prompt", "Enter")
    expect(page.locator(".message.assistant .stats").last).to_contain_text("tokens", timeout=60_000)
    row = page.locator("#conversation-list .conversation.active")
    title = row.locator(".title").inner_text()

    row.locator(".more").click()
    with page.expect_download() as download:
        page.click("#conversation-menu .export-md")
    markdown = download.value
    assert markdown.suggested_filename.endswith(".md")
    markdown.save_as(tmp_path / "chat.md")
    assert "Write a haiku about tea." in (tmp_path / "chat.md").read_text()

    row.locator(".more").click()
    with page.expect_download() as download:
        page.click("#conversation-menu .export-json")
    exported = download.value
    assert exported.suggested_filename.endswith(".json")
    exported.save_as(tmp_path / "chat.json")
    data = json.loads((tmp_path / "chat.json").read_text())
    assert data["conversation"]["title"] == title

    before = page.evaluate("location.hash")
    page.set_input_files("#import-file", str(tmp_path / "chat.json"))
    expect(page).not_to_have_url(f"{server.url}/{before}")
    expect(page.locator("#chat-title")).to_contain_text(title)
    expect(page.locator(".message.user .body")).to_have_text("Write a haiku about tea.")
    expect(page.locator("#conversation-list .conversation", has_text=title)).to_have_count(2)

    # a file that is not an export: the server's reason is shown
    (tmp_path / "bad.json").write_text('{"hello": "world"}')
    page.set_input_files("#import-file", str(tmp_path / "bad.json"))
    banner = page.locator("#error-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Could not import bad.json:")
    reason = httpx.post(f"{server.url}/api/conversations/import", content=b'{"hello": "world"}',
                        headers={"Content-Type": "application/json"}).json()["error"]["message"]
    expect(banner).to_contain_text(reason)
