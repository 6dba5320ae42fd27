// The sidebar: conversations (pinned first), each with a menu (pin, rename, export, delete),
// search across every conversation, and importing an exported one.
import { $, el, button } from "./dom.js";
import { api } from "./api.js";
import { conversationHref, navigate } from "./router.js";
import { setTitle } from "./chat.js";
import { state, showError, on } from "./state.js";

const path = (id) => `/api/conversations/${encodeURIComponent(id)}`;

// ---- the list
export async function loadList() {
  try {
    state.conversations = await api("GET", "/api/conversations");
  } catch (err) {
    showError(err.message);
    return;
  }
  renderList();
}

let reload = null;
function loadSoon() {  // several parts of the page ask at once (a reply's start and end): one request
  clearTimeout(reload);
  reload = setTimeout(loadList, 50);
}

function item(c) {
  const row = el("div", "conversation");
  row.classList.toggle("active", c.id === state.current?.id);
  row.classList.toggle("pinned", !!c.pinned);
  row.dataset.id = c.id;
  const title = el("a", "title", c.title);
  title.href = conversationHref(c.id);
  title.title = c.title;
  const more = button("⋯", "icon more", `More for ${c.title}`, (e) => openMenu(e.currentTarget, row, c));
  more.setAttribute("aria-haspopup", "menu");
  row.append(title);
  if (c.pinned) row.append(el("span", "pin-mark", "📌"));
  row.append(more);
  return row;
}

export function renderList() {
  const nav = $("conversation-list");
  const pinned = state.conversations.filter((c) => c.pinned);
  const others = state.conversations.filter((c) => !c.pinned);
  const nodes = [];
  if (pinned.length) {
    nodes.push(el("h2", "list-heading", "Pinned"), ...pinned.map(item));
    if (others.length) nodes.push(el("h2", "list-heading", "Chats"));
  }
  nodes.push(...others.map(item));
  if (!state.conversations.length) nodes.push(el("p", "list-empty", "Your conversations will be listed here."));
  nav.replaceChildren(...nodes);
}

function markActive() {
  for (const row of $("conversation-list").querySelectorAll(".conversation")) {
    row.classList.toggle("active", row.dataset.id === state.current?.id);
  }
}

// ---- a conversation's menu: one floating menu, so that the list's scrolling never clips it
function closeMenu() {
  const menu = $("conversation-menu");
  if (menu.hidden) return false;
  menu.hidden = true;
  menu.replaceChildren();
  document.querySelector(".conversation.menu-open")?.classList.remove("menu-open");
  return true;
}

function openMenu(anchor, row, c) {
  const menu = $("conversation-menu");
  const wasOpen = row.classList.contains("menu-open");
  closeMenu();
  if (wasOpen) return;
  const entry = (text, className, onClick) => {
    const b = button(text, className, null, () => {
      closeMenu();
      onClick();
    });
    b.setAttribute("role", "menuitem");
    return b;
  };
  const download = (text, className, format) => {
    const a = el("a", className, text);
    a.href = `${path(c.id)}/export?format=${format}`;
    a.download = "";  // the server's Content-Disposition names the file
    a.setAttribute("role", "menuitem");
    a.addEventListener("click", () => setTimeout(closeMenu));
    return a;
  };
  menu.append(
    entry(c.pinned ? "Unpin" : "Pin", "pin", () => setPinned(c, !c.pinned)),
    entry("Rename", "rename", () => startRename(row, c)),
    download("Export as Markdown", "export-md", "markdown"),
    download("Export as JSON", "export-json", "json"),
    entry("Delete…", "delete", () => deleteConversation(c)),
  );
  row.classList.add("menu-open");
  menu.hidden = false;
  const box = anchor.getBoundingClientRect();
  const height = menu.offsetHeight;
  const below = box.bottom + 4 + height < window.innerHeight;
  menu.style.top = `${below ? box.bottom + 4 : Math.max(4, box.top - height - 4)}px`;
  menu.style.left = `${Math.max(4, Math.min(box.right - menu.offsetWidth, window.innerWidth - menu.offsetWidth - 4))}px`;
  menu.querySelector("button")?.focus();
}

async function setPinned(c, pinned) {
  try {
    await api("PATCH", path(c.id), { pinned });
  } catch (err) {
    showError(err.message);
  }
  await loadList();
}

function startRename(row, c) {
  const input = el("input", "rename-input");
  input.value = c.title;
  input.maxLength = 200;
  input.setAttribute("aria-label", "New title");
  row.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    if (save && input.value.trim() && input.value !== c.title) {
      try {
        const updated = await api("PATCH", path(c.id), { title: input.value });
        if (state.current?.id === c.id) {
          state.current.title = updated.title;
          setTitle(updated.title);
        }
      } catch (err) {
        showError(err.message);
      }
    }
    await loadList();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") {
      e.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
}

async function deleteConversation(c) {
  if (!confirm(`Delete "${c.title}"? This cannot be undone.`)) return;
  try {
    await api("DELETE", path(c.id));
    if (state.current?.id === c.id) navigate("#/", { replace: true });
  } catch (err) {
    showError(err.message);
  }
  await loadList();
}

// ---- search
let searchTimer = null;
let searchTicket = 0;

function snippet(parts) {
  const line = el("span", "snippet");
  for (const part of parts || []) line.append(part.hit ? el("mark", "", part.text) : document.createTextNode(part.text));
  return line;
}

function result(r) {
  const b = el("button", "search-result");
  b.type = "button";
  b.dataset.conversation = r.conversation_id;
  const head = el("span", "result-title");
  if (r.pinned) head.append(el("span", "pin-mark", "📌 "));
  b.append(head);
  if (r.message_id == null) {
    head.append(snippet(r.snippet?.length ? r.snippet : [{ text: r.title, hit: false }]));  // the title matched
  } else {
    b.dataset.message = r.message_id;
    head.append(r.title);
    const line = snippet(r.snippet);
    line.prepend(el("span", "result-role", r.role === "user" ? "You: " : "Reply: "));
    b.append(line);
  }
  b.addEventListener("click", () => {
    state.focus = { id: r.conversation_id, message: r.message_id };
    navigate(conversationHref(r.conversation_id));
  });
  return b;
}

async function search(q) {
  const ticket = ++searchTicket;
  const box = $("search-results");
  try {
    const found = await api("GET", `/api/search?q=${encodeURIComponent(q)}&limit=30`);
    if (ticket !== searchTicket) return;
    box.replaceChildren(...(found.length ? found.map(result) : [el("p", "list-empty", `Nothing found for “${q}”.`)]));
  } catch (err) {
    if (ticket === searchTicket) box.replaceChildren(el("p", "list-empty", err.message));
  }
}

function searchInput() {
  const q = $("search").value.trim();
  clearTimeout(searchTimer);
  $("search-results").hidden = !q;
  $("conversation-list").hidden = !!q;
  if (!q) {
    searchTicket++;
    $("search-results").replaceChildren();
    return;
  }
  searchTimer = setTimeout(() => search(q), 200);
}

export function focusSearch() {
  $("search").focus();
  $("search").select();
}

// ---- import: the server reads the file and says what is wrong with it
async function importFile() {
  const input = $("import-file");
  const file = input.files[0];
  input.value = "";  // the same file can be picked again after fixing it
  if (!file) return;
  try {
    showError("");
    const conv = await api("POST", "/api/conversations/import", file);
    await loadList();
    navigate(conversationHref(conv.id));
  } catch (err) {
    showError(`Could not import ${file.name}: ${err.message}`);
  }
}

export function initSidebar() {
  on("list", loadSoon);
  on("conversation", (e) => {
    markActive(e);
    // opened from an address or a search before the list knew it (made in another tab, imported)
    if (state.current && !state.conversations.some((c) => c.id === state.current.id)) loadSoon();
  });
  // Another tab or an API client may have changed the conversations meanwhile.
  window.addEventListener("focus", loadSoon);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) loadSoon(); });
  $("search").addEventListener("input", searchInput);
  $("search").addEventListener("keydown", (e) => {
    if (e.key === "Escape" && $("search").value) {
      e.stopPropagation();
      $("search").value = "";
      searchInput();
    } else if (e.key === "Enter") {
      $("search-results").querySelector(".search-result")?.click();
    }
  });
  $("import-button").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", importFile);
  document.addEventListener("click", (e) => {
    if (!e.target.closest("#conversation-menu, .conversation .more")) closeMenu();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && closeMenu()) e.stopImmediatePropagation();
  }, true);
  window.addEventListener("resize", closeMenu);
  $("conversation-list").addEventListener("scroll", closeMenu);
  return loadList();
}
