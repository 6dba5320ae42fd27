// Markdown to DOM nodes, built with createElement/createTextNode only: model output is untrusted,
// so no string of it ever becomes HTML. Supports fenced code (with a copy button), inline code,
// headings, bold, italic, links (http, https, mailto only), lists, quotes and paragraphs.

const SAFE_LINK = /^(https?:\/\/|mailto:)/i;

export function renderMarkdown(text) {
  const root = document.createDocumentFragment();
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)\s*$/);
    if (fence) {
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i++; // closing fence (or end of a reply still streaming)
      root.append(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      const h = document.createElement(`h${Math.min(heading[1].length + 2, 6)}`);
      h.append(inline(heading[2]));
      root.append(h);
      i++;
      continue;
    }
    if (/^\s*([-*+]|\d+[.)])\s+/.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = document.createElement(ordered ? "ol" : "ul");
      while (i < lines.length && /^\s*([-*+]|\d+[.)])\s+/.test(lines[i])) {
        const li = document.createElement("li");
        li.append(inline(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, "")));
        list.append(li);
        i++;
      }
      root.append(list);
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quote = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quote.push(lines[i++].replace(/^\s*>\s?/, ""));
      const bq = document.createElement("blockquote");
      bq.append(renderMarkdown(quote.join("\n")));
      root.append(bq);
      continue;
    }
    if (!line.trim()) {
      i++;
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !/^\s*(```|~~~|#{1,6}\s|>|[-*+]\s|\d+[.)]\s)/.test(lines[i])) {
      para.push(lines[i++]);
    }
    if (!para.length) para.push(lines[i++]);
    const p = document.createElement("p");
    para.forEach((l, n) => {
      if (n) p.append(document.createElement("br"));
      p.append(inline(l));
    });
    root.append(p);
  }
  return root;
}

function codeBlock(code, lang) {
  const wrap = document.createElement("div");
  wrap.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const label = document.createElement("span");
  label.textContent = lang || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy";
  copy.textContent = "Copy";
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(code);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy";
    }
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  bar.append(label, copy);
  const pre = document.createElement("pre");
  const el = document.createElement("code");
  if (lang) el.dataset.lang = lang;
  el.textContent = code;
  pre.append(el);
  wrap.append(bar, pre);
  return wrap;
}

// Inline spans: `code`, **bold**, *italic* / _italic_, [text](url). Everything else is text.
// Underscores inside words (snake_case, __dunder__ names) are not emphasis.
const INLINE = /(`+)([^`]+?)\1|\*\*([^*]+?)\*\*|(?<!\w)__([^_]+?)__(?!\w)|\*([^*\s][^*]*?)\*|(?<!\w)_([^_\s][^_]*?)_(?!\w)|\[([^\]]+)\]\(([^)\s]+)\)/g;

export function inline(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) frag.append(document.createTextNode(text.slice(last, m.index)));
    if (m[2] !== undefined) {
      const c = document.createElement("code");
      c.textContent = m[2];
      frag.append(c);
    } else if (m[3] !== undefined || m[4] !== undefined) {
      const b = document.createElement("strong");
      b.append(inline(m[3] ?? m[4]));
      frag.append(b);
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const e = document.createElement("em");
      e.append(inline(m[5] ?? m[6]));
      frag.append(e);
    } else if (SAFE_LINK.test(m[8])) {
      const a = document.createElement("a");
      a.href = m[8];
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      a.textContent = m[7];
      frag.append(a);
    } else {
      frag.append(document.createTextNode(m[0]));
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
  return frag;
}
