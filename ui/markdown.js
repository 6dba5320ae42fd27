// Model replies as Markdown. markdown-it parses (raw HTML off) and the tokens become DOM nodes here
// through createElement and textContent, so no text of a reply is ever parsed as HTML by the page.
// The one exception, highlight.js's output, is escaped by highlight.js and checked again below.
// markdown-it and highlight.js are vendored classic scripts (ui/vendor) that index.html loads
// before this module runs.

// Only web and mail links: relative ones would point into this app's own API, and markdown-it's
// own check lets through anything but javascript:, vbscript:, file: and data:.
const SAFE_LINK = /^(https?:\/\/|mailto:)/i;
// highlightAuto runs every bundled grammar over the code: beyond this it takes too long to be worth it.
const AUTO_DETECT_LIMIT = 20_000;
// Guessing from the start of a long block costs a fraction of guessing from all of it.
const AUTO_DETECT_SAMPLE = 4_000;
// While a reply streams, the block being written is highlighted again on every frame.
const LIVE_HIGHLIGHT_LIMIT = 100_000;
const COPIED_MS = 1500;

const md = globalThis.markdownit ? createParser(globalThis.markdownit) : null;
const hljs = globalThis.hljs ?? null;

function createParser(markdownit) {
  // breaks: models write one item per line and expect line breaks to show, as they did before.
  const parser = markdownit({ html: false, linkify: true, typographer: false, breaks: true });
  parser.validateLink = (url) => SAFE_LINK.test(url);
  return parser;
}

// markdown-it's own normalisation (a lone \r is a line break too). Done up front so that the line
// numbers in its block map index the same lines that MarkdownStream slices.
function normalize(text) {
  return String(text ?? "").replace(/\r\n?|\n/g, "\n").replace(/\0/g, "\uFFFD");
}

export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  const src = normalize(text);
  if (md) build(md.parse(src, {}), frag, FULL);
  else frag.append(plain(src));
  return frag;
}

// Inline Markdown only (emphasis, code, links), for one-line strings.
export function inline(text) {
  const frag = document.createDocumentFragment();
  if (md) build(md.parseInline(normalize(text), {}), frag, FULL);
  else frag.append(normalize(text));
  return frag;
}

// Without the vendored parser (a broken install) the reply is still readable, and still only text.
function plain(src) {
  const p = document.createElement("p");
  p.className = "md-plain";
  p.textContent = src;
  return p;
}

/**
 * Renders a reply while it streams. Each update() receives the whole reply so far; top-level blocks
 * that are complete keep their DOM nodes (a selection or a copied code block survives new tokens)
 * and only the block being written is rendered again. finish() leaves what renderMarkdown would.
 *
 * Block boundaries come from markdown-it's own block parser over the whole text, so lists that go
 * on across blank lines and fences with blank lines inside are one block, as in a full render. A
 * kept block is dropped and rendered again whenever the parse no longer ends it at the same line
 * (an ordered list that a later "2." continues) or the document's link references change.
 */
export class MarkdownStream {
  constructor(container) {
    this.container = container;
    this.text = "";
    this.chunks = [];  // {start, end, refs, complete, src, nodes}: one per top-level block shown
  }

  update(text) {
    this.#render(text, false);
  }

  finish(text) {
    this.#render(text, true);
  }

  #render(text, final) {
    const src = normalize(text);
    if (!md) {
      this.container.replaceChildren(plain(src));
      return;
    }
    // Kept blocks are only valid for a text that grew at the end, in a container nobody emptied.
    if (!this.chunks.length || !src.startsWith(this.text) || !this.#attached()) this.#reset();
    this.text = src;

    const env = {};
    const tokens = [];
    md.block.parse(src, md, env, tokens);
    const refs = env.references ? JSON.stringify(env.references) : "";
    const ranges = tokens.filter((t) => t.level === 0 && t.nesting !== -1 && t.map).map((t) => t.map);
    // Offsets of line starts; a block's source runs to the start of the line after it, so that its
    // final newline stays (an open fence's trailing blank line is part of its code).
    const starts = [0];
    for (let i = src.indexOf("\n"); i !== -1; i = src.indexOf("\n", i + 1)) starts.push(i + 1);
    const slice = ([start, end]) => src.slice(starts[start], end < starts.length ? starts[end] : src.length);

    let keep = 0;
    for (; keep < this.chunks.length && keep < ranges.length; keep++) {
      const c = this.chunks[keep];
      const [start, end] = ranges[keep];
      const last = keep === ranges.length - 1;
      if (c.start !== start || c.end !== end || c.refs !== refs) break;
      // The lines of a block that was last when rendered may have grown since (same range, longer
      // final line); lines before the last one never change in a text that only grows.
      if (c.src !== null && c.src !== slice(ranges[keep])) break;
      if (!c.complete && (!last || final)) break;
    }
    for (const c of this.chunks.splice(keep)) for (const n of c.nodes) n.remove();

    for (let i = keep; i < ranges.length; i++) {
      const last = i === ranges.length - 1;
      const mode = { live: last && !final, deferred: false };
      const chunkSrc = slice(ranges[i]);
      const frag = document.createDocumentFragment();
      // The document's link reference definitions, wherever they are, as a full render sees them.
      build(md.parse(chunkSrc, { references: { ...env.references } }), frag, mode);
      const nodes = [...frag.childNodes];
      this.container.append(frag);
      // complete: the same DOM as a full render of this source (nothing was put off for later)
      const complete = !mode.deferred;
      this.chunks.push({ start: ranges[i][0], end: ranges[i][1], refs, complete, src: last ? chunkSrc : null, nodes });
    }
  }

  #attached() {
    const shown = this.chunks.filter((c) => c.nodes.length);
    return shown.every((c) => c.nodes[0].parentNode === this.container);
  }

  #reset() {
    this.container.replaceChildren();
    this.chunks = [];
    this.text = "";
  }
}

// ---- tokens to DOM

const TAGS = new Set([
  "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol", "li", "hr",
  "table", "thead", "tbody", "tr", "th", "td", "em", "strong", "s", "code", "pre", "br",
]);

// mode.live: the block is still being written, so costly work that a later render redoes anyway is
// skipped, and mode.deferred records that it was.
const FULL = Object.freeze({ live: false });

// Iterative over markdown-it's flat token list (nesting +1/0/-1), so deep input cannot overflow the
// call stack here; markdown-it's maxNesting bounds how deep the tokens themselves go.
function build(tokens, parent, mode) {
  const stack = [parent];
  for (const t of tokens) {
    const top = stack[stack.length - 1];
    if (t.nesting === 1) stack.push(t.hidden ? top : open(t, top));
    else if (t.nesting === -1) {
      if (stack.length > 1) stack.pop();
    } else leaf(t, top, mode);
  }
}

function open(t, parent) {
  let node;
  if (t.type === "link_open") {
    const href = t.attrGet("href") ?? "";
    if (!SAFE_LINK.test(href)) return parent;  // validateLink refused it already; twice is cheap
    node = document.createElement("a");
    node.setAttribute("href", href);
    const title = t.attrGet("title");
    if (title) node.title = title;
    node.target = "_blank";
    node.rel = "noopener noreferrer nofollow";
  } else if (t.type === "table_open") {
    // Wide tables scroll inside the message instead of widening it.
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    parent.append(wrap);
    parent = wrap;
    node = document.createElement("table");
  } else if (TAGS.has(t.tag)) {
    node = document.createElement(t.tag);
    const start = t.attrGet("start");
    if (t.tag === "ol" && start && /^\d{1,9}$/.test(start)) node.setAttribute("start", start);
    // markdown-it aligns columns with style="text-align:…", which the page's CSP refuses.
    const align = /text-align:(left|center|right)/.exec(t.attrGet("style") ?? "");
    if (align) node.className = `align-${align[1]}`;
  } else {
    return parent;  // a tag this renderer does not know: keep its content, drop the element
  }
  parent.append(node);
  return node;
}

function leaf(t, parent, mode) {
  switch (t.type) {
    case "inline":
      build(t.children ?? [], parent, mode);
      break;
    case "text":
      parent.append(t.content);
      break;
    case "code_inline": {
      const code = document.createElement("code");
      code.textContent = t.content;
      parent.append(code);
      break;
    }
    case "softbreak":
      parent.append(md.options.breaks ? document.createElement("br") : "\n");
      break;
    case "hardbreak":
      parent.append(document.createElement("br"));
      break;
    case "hr":
      parent.append(document.createElement("hr"));
      break;
    case "fence":
    case "code_block":
      parent.append(codeBlock(t.content, t.type === "fence" ? md.utils.unescapeAll(t.info).trim().split(/\s+/)[0] : "", mode));
      break;
    case "image":
      parent.append(image(t));
      break;
    default:
      // html_block / html_inline cannot occur with html:false; anything else is shown as its text.
      if (t.content) parent.append(t.content);
  }
}

// Remote images are not fetched (the CSP refuses them too): an image is a link carrying its alt text.
function image(t) {
  const src = t.attrGet("src") ?? "";
  const alt = md.renderer.renderInlineAsText(t.children ?? [], md.options, {}).trim();
  if (!SAFE_LINK.test(src)) return alt;
  const a = document.createElement("a");
  a.className = "image-link";
  a.setAttribute("href", src);
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.title = `Image, not loaded: ${src}`;
  a.textContent = alt || "image";
  return a;
}

function codeBlock(content, lang, mode) {
  const code = content.replace(/\n$/, "");
  const wrap = document.createElement("div");
  wrap.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.className = "code-lang";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.title = "Copy the code";
  copy.addEventListener("click", () => copyCode(copy, code));
  bar.append(label, copy);

  const pre = document.createElement("pre");
  const el = document.createElement("code");
  el.className = "hljs";
  const result = highlight(code, lang, mode);
  if (result && result.language && appendHighlighted(el, result.value)) {
    el.classList.add(`language-${result.language}`);
  } else {
    el.textContent = code;
  }
  label.textContent = (lang || result?.language || "text").slice(0, 40);
  pre.append(el);
  wrap.append(bar, pre);
  return wrap;
}

function highlight(code, lang, mode) {
  if (!hljs) return null;
  try {
    if (lang && hljs.getLanguage(lang)) {
      if (mode.live && code.length > LIVE_HIGHLIGHT_LIMIT) return defer(mode);
      return hljs.highlight(code, { language: lang, ignoreIllegals: true });
    }
    if (code.length > AUTO_DETECT_LIMIT) return null;
    // An unlabelled block is guessed once it is complete, not on every frame while it streams.
    if (mode.live) return defer(mode);
    if (code.length <= AUTO_DETECT_SAMPLE) return hljs.highlightAuto(code);
    const guess = hljs.highlightAuto(code.slice(0, AUTO_DETECT_SAMPLE)).language;
    return guess ? hljs.highlight(code, { language: guess, ignoreIllegals: true }) : null;
  } catch {
    return null;
  }
}

function defer(mode) {
  mode.deferred = true;
  return null;
}

// highlight.js returns escaped text inside <span class="hljs-…"> elements. It is parsed in an inert
// <template> and used only if it holds nothing else; otherwise the caller shows the code as text.
function appendHighlighted(el, html) {
  const tpl = document.createElement("template");
  tpl.innerHTML = html;
  for (const node of tpl.content.querySelectorAll("*")) {
    if (node.tagName !== "SPAN") return false;
    for (const attr of node.attributes) if (attr.name !== "class") return false;
  }
  el.append(tpl.content);
  return true;
}

const resetTimers = new WeakMap();

async function copyCode(button, text) {
  const ok = await copyText(text);
  button.textContent = ok ? "Copied" : "Copy failed";
  clearTimeout(resetTimers.get(button));
  resetTimers.set(button, setTimeout(() => (button.textContent = "Copy"), COPIED_MS));
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No async clipboard: an insecure origin, an embedding webview, or permission refused.
  }
  const area = document.createElement("textarea");
  area.className = "md-copy-buffer";
  area.value = text;
  area.setAttribute("readonly", "");
  const focused = document.activeElement;
  document.body.append(area);
  area.focus({ preventScroll: true });
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  focused?.focus?.();
  return ok;
}
