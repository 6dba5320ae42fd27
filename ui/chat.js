// The conversation on screen: its active branch, the replies being written (sent, edited or
// regenerated), branch switching and forks.
import { $, el, copyText } from "./dom.js";
import { api, streamReply, streamRegenerate, ApiError } from "./api.js";
import * as markdown from "./markdown.js";
import { messageNode, evictedIds } from "./messages.js";
import { conversationHref, navigate, settle } from "./router.js";
import { state, streamingHere, showError, notify } from "./state.js";

const path = (id) => `/api/conversations/${encodeURIComponent(id)}`;
const here = (id) => state.current?.id === id;
let opening = 0;  // the latest open: an older one that answers late is dropped

export const actions = {
  copy: (m) => copyText(m.content),
  edit: (m) => startEdit(m),
  regenerate: (m) => regenerate(m),
  fork: (m) => fork(m),
  branch: (id) => switchBranch(id),
};

// The stored messages up to and including base (undefined: all of them; null: none).
function cutAfter(messages, base) {
  if (base === undefined) return messages;
  if (base === null) return [];
  const i = messages.findIndex((m) => m.id === base);
  return i < 0 ? messages : messages.slice(0, i + 1);
}

function emptyState() {
  const empty = el("div");
  empty.id = "empty-state";
  empty.append(el("h2", "", "Chat with a model running on this computer"), el("p", "", "Nothing you write leaves this machine."));
  return empty;
}

export function setTitle(title) {
  $("chat-title").textContent = title;
  document.title = title === "New chat" ? "Tandem" : `${title} · Tandem`;
}

// Draws the conversation on screen: its stored messages and, while a reply is written, the
// branch it grows from with the reply's own nodes (they keep updating while elsewhere).
export function renderMessages({ focus = null, keep = null } = {}) {
  const conv = state.current;
  const box = $("messages");
  const live = conv && state.streams.get(conv.id);
  const shown = live ? cutAfter(conv.messages, live.base) : conv?.messages ?? [];
  const nodes = shown.map((m) => messageNode(m, actions));
  if (live) {
    if (live.userNode) nodes.push(live.userNode);
    nodes.push(live.reply);
  }
  if (nodes.length) box.replaceChildren(...nodes);
  else box.replaceChildren(emptyState());
  // what the model no longer sees: the messages the latest reply was written without
  const latest = [...shown].reverse().find((m) => m.role === "assistant");
  markEvicted([...evictedIds(latest), ...(live?.evicted ?? [])]);
  updateComposer();
  const target = focus ?? keep;
  const node = target != null && box.querySelector(`.message[data-id="${Number(target)}"]`);
  if (node) {
    node.scrollIntoView({ block: focus != null ? "center" : "nearest" });
    if (focus != null) {
      node.classList.add("flash");
      setTimeout(() => node.classList.remove("flash"), 2000);
    }
  } else {
    box.scrollTop = box.scrollHeight;
  }
}

function markEvicted(ids) {
  for (const id of ids) {
    const node = $("messages").querySelector(`.message[data-id="${Number(id)}"]`);
    if (node) {
      node.classList.add("evicted");
      node.title = "Left out of the model's context: it no longer fits. It stays here for you.";
    }
  }
}

function show(conv, options) {
  state.current = conv;
  setTitle(conv ? conv.title : "New chat");
  renderMessages(options);
  notify("conversation");
}

export function showNewChat() {
  opening++;
  state.pending = {};
  show(null);
}

// focus: a message to scroll to (a search result); when it is on another branch, that branch
// becomes the active one.
export async function openConversation(id, { focus = null } = {}) {
  const ticket = ++opening;
  showError("");
  try {
    let conv = await api("GET", path(id));
    if (focus != null && !conv.messages.some((m) => m.id === focus)) {
      conv = await api("POST", `${path(id)}/branch`, { message_id: focus }).catch(() => conv);
    }
    if (ticket !== opening) return;
    show(conv, { focus });
  } catch (err) {
    if (ticket !== opening) return;
    showError(err.message);
    if (err.status === 404) {
      navigate("#/", { replace: true });
      notify("list");
    }
  }
}

// The model and settings chosen for a new chat go with it when its first message creates it.
async function createConversation() {
  const { model_id: modelId, ...rest } = state.pending;
  let conv = await api("POST", "/api/conversations", modelId ? { model_id: modelId } : {});
  if (Object.keys(rest).length) conv = await api("PATCH", path(conv.id), rest);
  state.pending = {};
  return { ...conv, messages: [] };
}

// The message box stays usable while replies stream; Send becomes Stop in a conversation whose
// reply is being written (one reply at a time per conversation).
export function updateComposer() {
  const busy = streamingHere();
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("messages").classList.toggle("busy", busy);
  notify("busy", busy);
}

function waitingText(position) {
  return position === 1 ? "Waiting for another reply to finish…" : `Waiting for ${position - 1} other replies and one being written…`;
}

function replyNode() {
  const reply = messageNode({ role: "assistant", content: "" });
  reply.classList.add("streaming");
  return reply;
}

const nearBottom = (box) => box.scrollHeight - box.scrollTop - box.clientHeight < 80;

// Runs one reply's stream. live: {base, userNode, content?}: the reply grows after the message
// base (a new or edited user message: userNode, not stored until "start").
async function runStream(convId, live, open) {
  live.reply = replyNode();
  live.evicted = [];
  state.streams.set(convId, live);
  if (here(convId)) renderMessages();
  const box = $("messages");
  const body = live.reply.querySelector(".body");
  let text = "";
  let frame = 0;
  let writer = null;  // markdown.js's streaming renderer, when it has one
  let stored = null;
  const draw = () => {
    frame = 0;
    const follow = here(convId) && nearBottom(box);
    if (markdown.MarkdownStream) {
      if (!writer) {
        body.replaceChildren();
        writer = new markdown.MarkdownStream(body);
      }
      writer.update(text);
    } else {
      body.replaceChildren(markdown.renderMarkdown(text));
    }
    if (follow) box.scrollTop = box.scrollHeight;
  };
  const reading = (done, total) => {
    const pct = total ? ` ${Math.min(99, Math.floor((100 * done) / total))}%` : "";
    body.replaceChildren(el("span", "waiting reading", `Reading your message…${pct}`));
  };
  reading();  // from the moment it is sent, a model being loaded included
  try {
    await open((event, data) => {
      if (event === "queued") {
        live.reply.classList.add("queued");
        body.replaceChildren(el("span", "waiting", waitingText(data.position)));
      } else if (event === "start") {
        live.reply.classList.remove("queued");
        if (data.model) live.reply.dataset.model = data.model;
        live.evicted = data.evicted_message_ids || [];
        if (live.userNode && data.user_message) {
          live.userMessage = data.user_message;
          const node = messageNode(data.user_message, actions);
          live.userNode.replaceWith(node);
          live.userNode = node;
        }
        if (!text) reading();
        if (here(convId)) {
          if (data.title) {
            state.current.title = data.title;
            setTitle(data.title);
          }
          markEvicted(live.evicted);
        }
        notify("list");
      } else if (event === "progress") {
        if (!text) reading(data.done, data.total);
      } else if (event === "token") {
        text += data.text;
        if (!frame) frame = requestAnimationFrame(draw);
      } else if (event === "done" || event === "error") {
        stored = data.message || null;
        if (event === "error") live.error = data.error?.message || data.message || "The reply failed.";
      }
    });
  } catch (err) {
    live.error = err instanceof ApiError ? err.message : String(err);
  } finally {
    cancelAnimationFrame(frame);
    state.streams.delete(convId);
  }
  const conv = here(convId) ? state.current : null;
  if (conv && stored) {
    const user = live.userMessage ? [live.userMessage] : [];
    conv.messages = [...cutAfter(conv.messages, live.base), ...user, stored];
  }
  if (conv) {
    // nothing stored: the message goes back into the box, nothing is lost
    if (!stored && live.content && !live.userMessage && !$("prompt").value) $("prompt").value = live.content;
    renderMessages();
    if (live.error) showError(live.error);
  }
  notify("list");
}

export async function send(content, { editOf = null } = {}) {
  showError("");
  let conv = state.current;
  if (!conv) {
    try {
      conv = await createConversation();
    } catch (err) {
      $("prompt").value = content;
      showError(err.message);
      return;
    }
    show(conv);
    settle(conversationHref(conv.id));
    notify("list");
  }
  const messages = conv.messages;
  let base = messages.length ? messages[messages.length - 1].id : null;
  if (editOf != null) base = messages.find((m) => m.id === editOf)?.parent_id ?? null;
  const userNode = messageNode({ role: "user", content });
  const extra = editOf != null ? { edit_of: editOf } : {};
  await runStream(conv.id, { base, userNode, content }, (onEvent) => streamReply(conv.id, content, onEvent, undefined, extra));
}

// Another reply beside m (an assistant message), or a reply to m (a user message): the old one
// stays, as a sibling to switch back to.
export async function regenerate(m) {
  const conv = state.current;
  if (!conv || streamingHere()) return;
  showError("");
  const base = m.role === "assistant" ? m.parent_id : m.id;
  await runStream(conv.id, { base }, (onEvent) => streamRegenerate(conv.id, { message_id: m.id }, onEvent));
}

async function switchBranch(messageId) {
  const conv = state.current;
  if (!conv || streamingHere()) return;
  try {
    const updated = await api("POST", `${path(conv.id)}/branch`, { message_id: messageId });
    if (!here(conv.id)) return;
    show(updated, { keep: messageId });
  } catch (err) {
    showError(err.message);
  }
}

async function fork(m) {
  const conv = state.current;
  if (!conv) return;
  try {
    const created = await api("POST", `${path(conv.id)}/fork`, { message_id: m.id });
    notify("list");
    navigate(conversationHref(created.id));
  } catch (err) {
    showError(err.message);
  }
}

// Edit in place: Save & send writes a new version of the message (a sibling) and a reply to it.
function startEdit(m) {
  if (streamingHere()) return;
  const node = $("messages").querySelector(`.message[data-id="${Number(m.id)}"]`);
  if (!node || node.classList.contains("editing")) return;
  const body = node.querySelector(".body");
  const area = el("textarea", "edit-box");
  area.value = m.content;
  area.setAttribute("aria-label", "Edit the message");
  area.rows = Math.min(12, Math.max(2, m.content.split("\n").length));
  const save = el("button", "primary save-edit", "Save & send");
  save.type = "button";
  const cancel = el("button", "cancel-edit", "Cancel");
  cancel.type = "button";
  const editor = el("div", "editor");
  editor.append(area, el("div", "editor-buttons"));
  editor.lastChild.append(cancel, save);
  node.classList.add("editing");
  body.replaceWith(editor);
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
  const close = () => {
    node.classList.remove("editing");
    editor.replaceWith(body);
  };
  cancel.addEventListener("click", close);
  save.addEventListener("click", () => {
    const content = area.value;
    if (!content.trim() || streamingHere()) return;
    close();
    send(content, { editOf: m.id });
  });
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.stopPropagation();  // Esc here cancels the edit, it does not stop a reply
      close();
    } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      save.click();
    }
  });
}

export async function stop() {
  if (!streamingHere()) return;
  try {
    await api("POST", `${path(state.current.id)}/stop`);
  } catch (err) {
    showError(err.message);
  }
}
