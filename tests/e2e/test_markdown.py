"""Model replies rendered as Markdown (ui/markdown.js over the vendored markdown-it and highlight.js):
what renders, what hostile output cannot do, and streaming that keeps finished blocks."""

import re

import pytest
from playwright.sync_api import expect

from tandem.app.store import Store

pytestmark = pytest.mark.e2e

# innerHTML of renderMarkdown(text), rendered in the real page.
RENDER = """async (t) => {
  const m = await import('/markdown.js');
  const d = document.createElement('div');
  d.append(m.renderMarkdown(t));
  return d.innerHTML;
}"""

# How long rendering took and what came out; the bound in the tests only catches hangs.
TIMED = """async (t) => {
  const m = await import('/markdown.js');
  const d = document.createElement('div');
  const t0 = performance.now();
  d.append(m.renderMarkdown(t));
  const ms = performance.now() - t0;
  let depth = 0;
  for (let q = d.querySelector('blockquote'); q; q = q.querySelector(':scope > blockquote')) depth++;
  return {ms, depth, text: d.textContent, code: d.querySelector('.code-block code')?.textContent ?? null,
          elements: [...new Set([...d.querySelectorAll('*')].map((e) => e.localName))]};
}"""

SAMPLE = """## Results

The run **passed** with *one* ~~failure~~ warning, see `report.txt`.

| Model | Tokens/s | Notes |
|:------|---------:|:-----:|
| SmolLM2 135M | 212.4 | fast |
| Gemma 3 270M | 140.9 | `sliding window` |

1. Install
   - with `pip`
   - or from source
2. Run

> Measured on the CPU only.
> Numbers vary between runs.

```python
def speed(tokens: int, seconds: float) -> float:
    # tokens per second
    return tokens / seconds if seconds else 0.0
```

---

Docs at https://example.org and [the guide](https://example.org/guide).
"""


def render(page, text: str) -> str:
    return page.evaluate(RENDER, text)


def show(page, text: str):
    """The text as a stored assistant message would appear: an article in #messages."""
    page.evaluate(
        """async (t) => {
          const m = await import('/markdown.js');
          document.getElementById('empty-state')?.remove();
          const node = document.createElement('article');
          node.className = 'message assistant';
          node.id = 'sample';
          const body = document.createElement('div');
          body.className = 'body';
          body.append(m.renderMarkdown(t));
          node.append(body);
          document.getElementById('messages').append(node);
        }""",
        text,
    )
    return page.locator("#sample .body")


def test_a_reply_renders_as_markdown_with_highlighted_code(page, screenshot):
    body = show(page, SAMPLE)
    expect(body.locator("h2")).to_have_text("Results")
    expect(body.locator("p strong")).to_have_text("passed")
    expect(body.locator("p em")).to_have_text("one")
    expect(body.locator("p s")).to_have_text("failure")
    expect(body.locator("p code").first).to_have_text("report.txt")
    table = body.locator("table")
    expect(table.locator("th")).to_have_text(["Model", "Tokens/s", "Notes"])
    expect(table.locator("tbody tr")).to_have_count(2)
    # column alignment arrives as classes: the page's CSP refuses style attributes
    assert table.locator("td").nth(1).get_attribute("class") == "align-right"
    assert table.locator("[style]").count() == 0
    expect(body.locator("ol > li > ul > li")).to_have_text(["with pip", "or from source"])
    expect(body.locator("blockquote")).to_contain_text("Measured on the CPU only.")
    expect(body.locator("hr")).to_have_count(1)

    block = body.locator(".code-block")
    expect(block.locator(".code-lang")).to_have_text("python")
    expect(block.locator("button.copy")).to_have_text("Copy")
    expect(block.locator("code.hljs.language-python")).to_have_count(1)
    expect(block.locator(".hljs-keyword").first).to_have_text("def")
    expect(block.locator(".hljs-comment")).to_have_text("# tokens per second")
    assert block.locator("code").inner_text().startswith("def speed(tokens: int, seconds: float) -> float:")

    links = body.locator("a")
    assert [links.nth(i).get_attribute("href") for i in range(links.count())] == [
        "https://example.org",  # linkified
        "https://example.org/guide",
    ]
    for i in range(links.count()):
        assert links.nth(i).get_attribute("target") == "_blank"
        assert "noopener" in links.nth(i).get_attribute("rel") and "noreferrer" in links.nth(i).get_attribute("rel")
    body.scroll_into_view_if_needed()
    screenshot(page, "markdown")


def test_code_highlighting_follows_the_theme(page, screenshot):
    body = show(page, SAMPLE)
    keyword = body.locator(".hljs-keyword").first

    def colours():
        return keyword.evaluate("k => getComputedStyle(k).color"), body.locator(".code-block").evaluate("b => getComputedStyle(b).backgroundColor")

    page.emulate_media(color_scheme="light")
    light = colours()
    page.evaluate("document.documentElement.dataset.theme = 'dark'")
    dark = colours()
    assert dark[0] != light[0] and dark[1] != light[1]
    # no data-theme: the system's preference decides; data-theme=light wins over a dark system
    page.evaluate("delete document.documentElement.dataset.theme")
    page.emulate_media(color_scheme="dark")
    assert colours() == dark
    page.evaluate("document.documentElement.dataset.theme = 'light'")
    assert colours() == light
    page.evaluate("document.documentElement.dataset.theme = 'dark'")
    body.scroll_into_view_if_needed()
    screenshot(page, "markdown-dark")


def test_copy_button_copies_the_code(page):
    body = show(page, "```js\nconst a = '<b>';\n```")
    copy = body.locator("button.copy")
    page.evaluate("""() => {
      window.__copied = [];
      Object.defineProperty(navigator, 'clipboard', {configurable: true,
        value: {writeText: async (t) => { window.__copied.push(t); }}});
    }""")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("window.__copied") == ["const a = '<b>';"]
    expect(copy).to_have_text("Copy", timeout=5000)

    # no async clipboard (an embedding webview): a selected hidden textarea and execCommand
    page.evaluate("""() => {
      window.__copied = [];
      Object.defineProperty(navigator, 'clipboard', {configurable: true, value: undefined});
      document.execCommand = (cmd) => {
        const area = document.activeElement;
        window.__copied.push([cmd, area.value.slice(area.selectionStart, area.selectionEnd)]);
        return true;
      };
    }""")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("window.__copied") == [["copy", "const a = '<b>';"]]
    assert page.locator("textarea.md-copy-buffer").count() == 0


@pytest.mark.parametrize(
    "text",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](&#106;avascript:alert(1))",
        "[x](&#x6A;avascript&#58;alert(1))",
        "[x]( javascript:alert(1))",
        "[x](<javascript:alert(1)>)",
        "[x](java\nscript:alert(1))",
        "[x](java&#9;script:alert(1))",
        "<javascript:alert(1)>",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "[x](file:///etc/passwd)",
        "[x](/api/conversations)",
        "[x][r]\n\n[r]: javascript:alert(1)",
        "![x](javascript:alert(1))",
        "![x](data:image/png;base64,iVBORw0KGgo=)",
    ],
)
def test_links_other_than_web_and_mail_stay_text(page, text):
    html = render(page, text)
    assert "<a" not in html, html
    assert "<img" not in html, html


def test_web_and_mail_links_open_safely(page):
    html = render(page, "[a](https://a.example/x?y=1) [b](HTTP://b.example) <mailto:me@c.example> www.d.org e@f.org")
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs == ["https://a.example/x?y=1", "HTTP://b.example", "mailto:me@c.example", "http://www.d.org", "mailto:e@f.org"]
    assert html.count('target="_blank"') == 5
    assert html.count('rel="noopener noreferrer nofollow"') == 5


def test_images_are_links_never_loaded(page):
    body = show(page, "![a chart](https://example.org/chart.png) and ![](https://example.org/x.png)")
    assert body.locator("img").count() == 0
    links = body.locator("a.image-link")
    expect(links).to_have_text(["a chart", "image"])
    assert links.first.get_attribute("href") == "https://example.org/chart.png"


def test_raw_html_is_shown_as_text(page):
    hostile = (
        "<script>window.__pwned = 1</script>\n\n"
        "<img src=x onerror=\"window.__pwned = 2\">\n\n"
        "<iframe src=\"javascript:window.parent.__pwned = 3\"></iframe>\n\n"
        "Inline <b onmouseover=\"window.__pwned = 4\">b</b> and <svg onload=\"window.__pwned = 5\"></svg>\n\n"
        "<style>body { display: none }</style>\n\n"
        "| <img src=x onerror=window.__pwned=6> |\n|---|\n| <script>window.__pwned=7</script> |\n\n"
        "```html\n<script>window.__pwned = 8</script>\n```"
    )
    body = show(page, hostile)
    assert body.locator("script, img, iframe, b, svg, style").count() == 0
    expect(body).to_contain_text("<script>window.__pwned = 1</script>")
    expect(body).to_contain_text('<img src=x onerror="window.__pwned = 2">')
    expect(body).to_contain_text("<iframe src=")
    expect(body.locator("td")).to_have_text("<script>window.__pwned=7</script>")
    assert body.evaluate("b => [...b.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name))").count("onerror") == 0
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None


def test_hostile_sizes_render_without_hanging(page):
    deep = page.evaluate(TIMED, "> " * 10_000 + "deep")
    assert deep["ms"] < 10_000
    assert 0 < deep["depth"] <= 100  # markdown-it's maxNesting stops the descent

    brackets = page.evaluate(TIMED, "[" * 100_000)
    assert brackets["ms"] < 10_000
    assert brackets["text"] == "[" * 100_000

    lines = "".join(f"value_{i} = compute({i}, 'x' * {i % 7})  # step {i}\n" for i in range(5000))
    assert len(lines) > 200_000
    for fence in ("```python\n", "```\n"):  # known language, and too big to guess one
        big = page.evaluate(TIMED, fence + lines + "```")
        assert big["ms"] < 10_000
        assert big["code"] == lines.rstrip("\n")

    nested = page.evaluate(TIMED, "- " * 5000 + "x\n\n" + "*a **b " * 20_000 + "\n\n" + "[a](" * 30_000)
    assert nested["ms"] < 10_000
    assert set(nested["elements"]) <= {"ul", "li", "p", "em", "strong", "br"}


# Feeds growing prefixes to a MarkdownStream; after each, compares the DOM with a full render of the
# same prefix (code blocks by their text: the block being written is not auto-highlighted until done).
STREAM_CHECK = """async ([doc, step]) => {
  const m = await import('/markdown.js');
  const shape = (d) => {
    const c = d.cloneNode(true);
    for (const x of c.querySelectorAll('.code-block code')) { x.textContent = x.textContent; x.removeAttribute('class'); }
    for (const x of c.querySelectorAll('.code-lang')) x.textContent = '';
    return c.innerHTML;
  };
  const full = (t) => { const d = document.createElement('div'); d.append(m.renderMarkdown(t)); return d; };
  const box = document.createElement('div');
  const stream = new m.MarkdownStream(box);
  const mismatches = [];
  for (let i = 1; i < doc.length; i += step) {
    const t = doc.slice(0, i);
    stream.update(t);
    if (shape(box) !== shape(full(t))) mismatches.push({at: i, got: shape(box), want: shape(full(t))});
  }
  stream.update(doc);
  stream.finish(doc);
  return {mismatches: mismatches.slice(0, 3), finished: box.innerHTML, full: full(doc).innerHTML};
}"""

STREAM_DOCS = [
    SAMPLE,
    # lists that go on across blank lines, an ordered list that a later "2." continues,
    # fences holding blank lines, a reference defined after its use, setext headings
    "1. one\n\n2. two\n\n10. ten\n\n- a\n- b\n\n  still b\n- c\n\n* other list\n\npara\n-\nfoo\n#x\n\n"
    "~~~js\nlet a = 1;\n\n\nlet b = 2;\n~~~\n\n- item\n\n  ```\n  code\n\n  more\n  ```\n- next\n\n"
    "Read [the docs][d].\n\n    indented\n\n    code\n\n[d]: https://example.org/docs\n\nTitle\n=====\n\n> a\nlazy\n> > b\n\nend",
    "Text then an unclosed fence\n\n```python\nprint(1)\n\n\nprint(2)",
]


@pytest.mark.parametrize("doc", STREAM_DOCS, ids=["sample", "tricky", "open-fence"])
def test_streaming_matches_a_full_render_at_every_step(page, doc):
    for step in (1, 4, 13):
        r = page.evaluate(STREAM_CHECK, [doc, step])
        assert r["mismatches"] == [], r["mismatches"][0]
        assert r["finished"] == r["full"]


def test_streaming_keeps_finished_blocks(page):
    r = page.evaluate("""async () => {
      const m = await import('/markdown.js');
      const box = document.createElement('div');
      const s = new m.MarkdownStream(box);
      const parts = ['# Title\\n\\n', 'First para', 'graph.\\n\\n', '```python\\nx = 1\\n\\n', 'y = 2\\n```\\n\\n',
                     '```\\nSELECT 1 FROM t;\\n```\\n\\n', 'Last ', 'words.'];
      let text = '';
      const steps = [];
      for (const p of parts) {
        text += p;
        s.update(text);
        // how many updates each element has been in the container for: 1 = rendered by this one
        for (const el of box.children) el.__seen = (el.__seen ?? 0) + 1;
        steps.push({seen: [...box.children].map((el) => el.localName + el.__seen),
                    sqlSpans: box.querySelectorAll('.code-block')[1]?.querySelectorAll('code span').length ?? null});
      }
      const python = box.querySelectorAll('.code-block')[0];
      s.finish(text);
      const full = document.createElement('div');
      full.append(m.renderMarkdown(text));
      return {steps, same: box.innerHTML === full.innerHTML, pythonKept: box.contains(python)};
    }""")
    seen = [step["seen"] for step in r["steps"]]
    assert seen[0] == ["h11"]
    assert seen[1] == ["h12", "p1"]  # a finished block keeps its node once the next one starts
    assert seen[2] == ["h13", "p1"]  # the block being written is rendered afresh
    assert seen[3] == ["h14", "p2", "div1"]
    assert seen[4] == ["h15", "p3", "div1"]  # a fence with a known language is highlighted as it grows
    assert seen[5] == ["h16", "p4", "div2", "div1"]
    # a fence without a language is plain while written, and guessed once, when the next block starts
    assert r["steps"][5]["sqlSpans"] == 0
    assert seen[6] == ["h17", "p5", "div3", "div1", "p1"]
    assert r["steps"][6]["sqlSpans"] > 0
    assert seen[7] == ["h18", "p6", "div4", "div2", "p1"]
    assert r["same"] and r["pythonKept"]


def test_stream_starts_over_when_the_text_is_not_a_continuation(page):
    r = page.evaluate("""async () => {
      const m = await import('/markdown.js');
      const box = document.createElement('div');
      box.append(document.createElement('span'));  // a placeholder shown while queued
      const s = new m.MarkdownStream(box);
      s.update('one\\n\\ntwo');
      const first = box.innerHTML;
      s.update('other\\n\\ntext');
      const second = box.innerHTML;
      box.replaceChildren();  // emptied by someone else
      s.finish('other\\n\\ntext!');
      return [first, second, box.innerHTML];
    }""")
    assert r == ["<p>one</p><p>two</p>", "<p>other</p><p>text</p>", "<p>other</p><p>text!</p>"]


def test_stored_reply_renders_in_the_chat_without_csp_violations(browser, server, screenshot):
    store = Store(server.settings.db_path)
    conv = store.create_conversation("Markdown reply")
    store.add_message(conv["id"], "user", "show me a table")
    store.add_message(conv["id"], "assistant", SAMPLE)
    store.close()
    # the real policy this time: a style attribute or inline script would be reported here
    context = browser.new_context(base_url=server.url)
    try:
        p = context.new_page()
        errors = []
        p.on("pageerror", lambda e: errors.append(str(e)))
        p.add_init_script("""window.__violations = [];
          document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));""")
        p.goto("/")
        p.wait_for_selector("body[data-ready=true]")
        p.locator("#conversation-list .conversation", has_text="Markdown reply").locator(".title").click()
        body = p.locator(".message.assistant .body").last
        expect(body.locator("table")).to_have_count(1)
        expect(body.locator(".code-block .hljs-keyword").first).to_have_text("def")
        expect(body.locator(".code-block button.copy")).to_have_text("Copy")
        assert p.evaluate("window.__violations") == []
        assert errors == []
    finally:
        context.close()
