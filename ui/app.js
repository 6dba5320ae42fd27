import { el } from "./dom.js";
import { api, streamReply, ApiError } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { renderHardware } from "./hardware.js";

const $ = (id) => document.getElementById(id);
// streams: the replies being written, by conversation id: each goes on while another
// conversation is open, and shows again when its own is reopened.
const state = { conversations: [], current: null, streams: new Map(), model: null };

const streamingHere = () => !!state.current && state.streams.has(state.current.id);

function showError(message) {
  const banner = $("error-banner");
  banner.textContent = message;
  banner.hidden = !message;
}


// ---- conversation list
function renderList() {
  const nav = $("conversation-list");
  nav.replaceChildren();
  for (const c of state.conversations) {
    const item = el("div", "conversation" + (c.id === state.current?.id ? " active" : ""));
    item.dataset.id = c.id;
    const title = el("button", "title", c.title);
    title.type = "button";
    title.title = c.title;
    title.addEventListener("click", () => openConversation(c.id));
    const rename = el("button", "icon rename", "✎");
    rename.type = "button";
    rename.title = "Rename";
    rename.setAttribute("aria-label", `Rename ${c.title}`);
    rename.addEventListener("click", () => startRename(item, c));
    const del = el("button", "icon delete", "×");
    del.type = "button";
    del.title = "Delete";
    del.setAttribute("aria-label", `Delete ${c.title}`);
    del.addEventListener("click", () => deleteConversation(c));
    item.append(title, rename, del);
    nav.append(item);
  }
}

function startRename(item, c) {
  const input = el("input", "rename-input");
  input.value = c.title;
  input.maxLength = 200;
  item.replaceChildren(input);
  input.focus();
  input.select();
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    if (save && input.value.trim() && input.value !== c.title) {
      try {
        const updated = await api("PATCH", `/api/conversations/${c.id}`, { title: input.value });
        if (state.current?.id === c.id) $("chat-title").textContent = updated.title;
      } catch (err) {
        showError(err.message);
      }
    }
    await loadList();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") finish(true);
    if (e.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
}

async function deleteConversation(c) {
  if (!confirm(`Delete "${c.title}"? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/api/conversations/${c.id}`);
    if (state.current?.id === c.id) showConversation(null);
    await loadList();
  } catch (err) {
    showError(err.message);
  }
}

async function loadList() {
  state.conversations = await api("GET", "/api/conversations");
  renderList();
}

// ---- messages
function statsLine(m) {
  const parts = [];
  if (m.decode_tps) parts.push(`${m.decode_tps.toFixed(1)} tok/s`);
  if (m.ttft_s != null) parts.push(`first token ${m.ttft_s < 1 ? Math.round(m.ttft_s * 1000) + " ms" : m.ttft_s.toFixed(2) + " s"}`);
  if (m.completion_tokens != null) parts.push(`${m.completion_tokens} tokens`);
  if (m.drafted_tokens) {
    const source = m.spec_source === "prompt_lookup" ? "lookup" : (m.spec_source || "draft").replace(/^draft:/, "draft ");
    parts.push(`${source}: ${m.accepted_tokens}/${m.drafted_tokens} drafted accepted (${Math.round(100 * m.accepted_tokens / m.drafted_tokens)}%)`);
  }
  if (m.decode_tps && m.predicted_tps) parts.push(`${(m.decode_tps / m.predicted_tps).toFixed(2)}x plan`);
  if (m.finish_reason === "length") parts.push("cut at the length limit");
  return parts.join(" · ");
}

function messageNode(m) {
  const node = el("article", `message ${m.role}`);
  node.dataset.id = m.id ?? "";
  const body = el("div", "body");
  if (m.role === "assistant") body.append(renderMarkdown(m.content));
  else body.textContent = m.content;
  node.append(body);
  if (m.role === "assistant") {
    const meta = el("div", "meta");
    if (m.status === "stopped") meta.append(el("span", "badge stopped", "stopped"));
    if (m.status === "error") meta.append(el("span", "badge error", "failed"));
    const evicted = m.evicted_ids ? JSON.parse(m.evicted_ids) : [];
    const tokens = m.evicted_tokens ? ` (${m.evicted_tokens} tokens)` : "";
    if (evicted.length) {
      const note = el("span", "badge evicted", `written without the ${evicted.length} oldest message${evicted.length > 1 ? "s" : ""}${tokens}`);
      note.title = "They no longer fit in the model's context; the conversation keeps them.";
      meta.append(note);
    } else if (m.evicted_tokens) {
      const note = el("span", "badge evicted", `${m.evicted_tokens} tokens left out of the model's view`);
      note.title = "A message longer than the context: its start and its end were kept, the middle left out.";
      meta.append(note);
    }
    meta.append(el("span", "stats", statsLine(m)));
    node.append(meta);
  }
  return node;
}

function showChat() {
  $("hardware-view").hidden = true;
  $("messages").hidden = false;
  $("composer").hidden = false;
  $("show-hardware").classList.remove("active");
}

async function showHardware() {
  state.current = null;
  updateComposer();
  renderList();
  $("chat-title").textContent = "Hardware";
  $("context-setting").hidden = true;
  $("messages").hidden = true;
  $("composer").hidden = true;
  $("show-hardware").classList.add("active");
  const view = $("hardware-view");
  view.hidden = false;
  try {
    showError("");
    await renderHardware(view, state.model?.id);
  } catch (err) {
    showError(err.message);
  }
}

function showConversation(conv) {
  showChat();
  state.current = conv;
  $("chat-title").textContent = conv ? conv.title : "New chat";
  const box = $("messages");
  box.replaceChildren();
  if (!conv || !conv.messages.length) {
    const empty = el("div");
    empty.id = "empty-state";
    empty.append(el("h2", "", "Chat with a model running on this computer"), el("p", "", "Nothing you write leaves this machine."));
    box.append(empty);
  } else {
    for (const m of conv.messages) box.append(messageNode(m));
    // what the model no longer sees: the messages the latest reply was written without
    const latest = [...conv.messages].reverse().find((m) => m.role === "assistant");
    markEvicted(latest?.evicted_ids ? JSON.parse(latest.evicted_ids) : []);
  }
  const live = conv && state.streams.get(conv.id);
  if (live) {  // a reply still being written here: its nodes come back, still updating
    $("empty-state")?.remove();
    const stored = conv.messages.some((m) => String(m.id) === live.userNode.dataset.id);
    if (!stored) box.append(live.userNode);
    box.append(live.reply);
  }
  updateComposer();
  renderList();
  loadContextSetting(conv);
  box.scrollTop = box.scrollHeight;
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

// ---- the conversation's context policy (the plan's unless the person picks one)
async function loadContextSetting(conv) {
  const box = $("context-setting");
  const select = $("context-policy");
  const path = conv ? `/api/conversations/${conv.id}/context` : "/api/context";
  try {
    const info = await api("GET", path);
    if (state.current !== conv) return;  // another conversation was opened meanwhile
    const planName = info.choices.find((c) => c.id === info.plan_policy)?.name ?? info.plan_policy;
    const options = [el("option", "", `Automatic: ${planName.toLowerCase()}`)];
    options[0].value = "";
    for (const c of info.choices) {
      const o = el("option", "", c.name);
      o.value = c.id;
      options.push(o);
    }
    select.replaceChildren(...options);
    select.value = info.source === "conversation" ? info.policy : "";
    box.title = `${info.reason || ""}\nContext ${info.n_ctx} tokens.`.trim();
    box.hidden = false;
  } catch (err) {
    box.hidden = true;
  }
}

async function changeContextPolicy() {
  const value = $("context-policy").value || null;
  try {
    if (!state.current) {
      const conv = await api("POST", "/api/conversations", {});
      state.current = { ...conv, messages: [] };
      await loadList();
    }
    const conv = state.current;
    const updated = await api("PATCH", `/api/conversations/${conv.id}`, { context_policy: value });
    conv.context_policy = updated.context_policy;
    showError("");
  } catch (err) {
    showError(err.message);
  }
}

async function openConversation(id) {
  try {
    showError("");
    showConversation(await api("GET", `/api/conversations/${id}`));
  } catch (err) {
    showError(err.message);
    await loadList();
  }
}

// The message box stays usable while replies stream; Send becomes Stop in a conversation whose
// reply is being written (one reply at a time per conversation).
function updateComposer() {
  const busy = streamingHere();
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("context-policy").disabled = busy;
}

function waitingText(position) {
  return position === 1 ? "Waiting for another reply to finish…" : `Waiting for ${position - 1} other replies and one being written…`;
}

async function send(content) {
  showError("");
  let conv = state.current;
  if (!conv) {
    try {
      const created = await api("POST", "/api/conversations", {});
      conv = state.current = { ...created, messages: [] };
      loadList();
    } catch (err) {
      $("prompt").value = content;
      showError(err.message);
      return;
    }
  }
  const box = $("messages");
  const here = () => state.current?.id === conv.id;
  $("empty-state")?.remove();
  const userNode = messageNode({ role: "user", content });
  box.append(userNode);
  const reply = messageNode({ role: "assistant", content: "" });
  reply.classList.add("streaming");
  box.append(reply);
  box.scrollTop = box.scrollHeight;
  const live = { userNode, reply };
  state.streams.set(conv.id, live);
  updateComposer();
  const body = reply.querySelector(".body");
  let text = "";
  let frame = 0;
  try {
    await streamReply(conv.id, content, (event, data) => {
      if (event === "queued") {
        reply.classList.add("queued");
        body.replaceChildren(el("span", "waiting", waitingText(data.position)));
      } else if (event === "start") {
        reply.classList.remove("queued");
        body.replaceChildren();
        userNode.dataset.id = data.user_message.id;
        if (here()) markEvicted(data.evicted_message_ids || []);
        loadList();
      } else if (event === "token") {
        text += data.text;
        if (!frame) frame = requestAnimationFrame(() => {
          frame = 0;
          body.replaceChildren(renderMarkdown(text));
          if (here()) box.scrollTop = box.scrollHeight;
        });
      } else if (event === "done" || event === "error") {
        cancelAnimationFrame(frame);
        frame = 0;
        if (!data.message) {  // it never left the queue: nothing was stored, the text goes back
          userNode.remove();
          reply.remove();
          if (here() && !$("prompt").value) $("prompt").value = content;
        } else {
          reply.replaceWith(messageNode(data.message));
          // messages the context shifted past while this reply was written
          if (here()) markEvicted(data.message?.evicted_ids ? JSON.parse(data.message.evicted_ids) : []);
        }
        if (event === "error" && here()) showError(data.error.message);
      }
    });
    await loadList();
  } catch (err) {
    userNode.remove();
    reply.remove();
    if (here()) {
      if (!$("prompt").value) $("prompt").value = content;  // nothing is lost: the message goes back into the box
      showError(err instanceof ApiError ? err.message : String(err));
    }
  } finally {
    state.streams.delete(conv.id);
    updateComposer();
    if (here()) box.scrollTop = box.scrollHeight;
  }
}

async function stop() {
  if (!streamingHere()) return;
  try {
    await api("POST", `/api/conversations/${state.current.id}/stop`);
  } catch (err) {
    showError(err.message);
  }
}

async function loadHealth() {
  try {
    const health = await api("GET", "/api/health");
    state.model = health.model;
    $("model-name").textContent = health.model ? health.model.name : "No model loaded";
    $("model-dot").classList.toggle("ok", !!health.model && health.status === "ok");
    const m = health.model;
    const failure = health.engine?.failures?.[m?.id];
    $("model-status").title = !m ? "" : failure ? `${m.name}: ${failure}`
      : m.n_ctx == null ? `${m.name}\nloads with the first message`
      : `${m.name}\ncontext ${m.n_ctx} tokens · ${m.n_threads} threads · ${m.n_gpu_layers} GPU layers`;
  } catch (err) {
    $("model-name").textContent = "Server not answering";
  }
}

function autoGrow() {
  const t = $("prompt");
  t.style.height = "auto";
  t.style.height = Math.min(t.scrollHeight, 220) + "px";
}

function init() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const content = $("prompt").value;
    if (!content.trim() || streamingHere()) return;
    $("prompt").value = "";
    autoGrow();
    send(content);
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("prompt").addEventListener("input", autoGrow);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && streamingHere()) stop();
  });
  $("stop").addEventListener("click", stop);
  $("show-hardware").addEventListener("click", showHardware);
  $("context-policy").addEventListener("change", changeContextPolicy);
  $("new-chat").addEventListener("click", () => {
    showError("");
    showConversation(null);
    $("prompt").focus();
  });
  loadHealth();
  loadContextSetting(null);
  loadList().catch((err) => showError(err.message));
  $("prompt").focus();
  document.body.dataset.ready = "true";
}

init();
