// Building DOM nodes from text: textContent only, never HTML.
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export const $ = (id) => document.getElementById(id);

// title doubles as the accessible name of icon-only buttons.
export function button(text, className, title, onClick) {
  const b = el("button", className, text);
  b.type = "button";
  if (title) {
    b.title = title;
    b.setAttribute("aria-label", title);
  }
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

export function option(value, text) {
  const o = el("option", "", text);
  o.value = value ?? "";
  return o;
}

// Text to the clipboard; pages served over plain http on another host have no clipboard API,
// and headless browsers may refuse it: a hidden textarea and execCommand do it there.
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", "offscreen");
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}
