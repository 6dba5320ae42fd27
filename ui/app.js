import { el } from "./dom.js";
import { api, streamReply, ApiError } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { renderHardware } from "./hardware.js";
import { renderModels, hideModels, planSummary, watchActiveDownloads } from "./models.js";

const $ = (id) => document.getElementById(id);
// streams: the replies being written, by conversation id: each goes on while another
// conversation is open, and shows again when its own is reopened.
// pendingModel: the model picked for a new chat not yet created (null: the default).
const state = { conversations: [], current: null, streams: new Map(), model: null, models: [], missing: new Set(), pendingModel: null };

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
    if (m.model_id) node.dataset.model = m.model_id;
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
    const stats = el("span", "stats", statsLine(m));
    if (m.model_id) stats.title = `Written by ${modelName(m.model_id)}`;
    meta.append(stats);
    node.append(meta);
  }
  return node;
}

const PAGES = [["hardware", "hardware-view", "show-hardware"], ["models", "models-view", "show-models"]];

// "chat", "hardware" or "models": one shows at a time in the main area.
function showPage(name) {
  for (const [page, view, link] of PAGES) {
    $(view).hidden = page !== name;
    $(link).classList.toggle("active", page === name);
  }
  $("messages").hidden = name !== "chat";
  $("composer").hidden = name !== "chat";
  $("model-setting").hidden = name !== "chat";
  if (name !== "chat") $("context-setting").hidden = true;
  if (name !== "models") hideModels();
}

function showChat() {
  showPage("chat");
}

function leaveChat(title) {
  state.current = null;
  updateComposer();
  renderList();
  $("chat-title").textContent = title;
}

async function showHardware() {
  leaveChat("Hardware");
  showPage("hardware");
  try {
    showError("");
    if (!state.model) await loadHealth();  // opened before the page's first health check answered
    await renderHardware($("hardware-view"), state.model?.id);
  } catch (err) {
    showError(err.message);
  }
}

async function showModels() {
  leaveChat("Models");
  showPage("models");
  try {
    showError("");
    await renderModels($("models-view"));
  } catch (err) {
    showError(err.message);
  }
}

// ---- the chat's model picker: installed models, each with how it runs here
const pickedModel = () => (state.current ? state.current.model_id ?? null : state.pendingModel);
const modelName = (id) => state.models.find((m) => m.id === id)?.name ?? id;

async function loadModels() {
  try {
    const [models, hub] = await Promise.all([api("GET", "/api/models"), api("GET", "/api/hub/models").catch(() => [])]);
    state.models = models;
    state.missing = new Set(hub.filter((m) => m.missing).map((m) => m.id));
  } catch {
    return;
  }
  renderPicker();
}

function renderPicker() {
  const select = $("model-picker");
  const chosen = pickedModel();
  const byDefault = state.models.find((m) => m.is_default);
  const option = (value, text) => {
    const o = el("option", "", text);
    o.value = value;
    return o;
  };
  const summarize = (o, m, prefix) => {
    if (!m || state.missing.has(m.id)) return;
    planSummary(m.id).then((s) => (o.textContent = `${prefix}${m.name} · ${s.short}`), () => {});
  };
  const first = option("", byDefault ? `Default: ${byDefault.name}` : "Default model");
  summarize(first, byDefault, "Default: ");
  const options = [first];
  for (const m of state.models) {
    const o = option(m.id, state.missing.has(m.id) ? `${m.name} (missing)` : m.name);
    o.disabled = state.missing.has(m.id);
    summarize(o, m, "");
    options.push(o);
  }
  if (chosen && !state.models.some((m) => m.id === chosen)) options.push(option(chosen, `${chosen} (not installed)`));
  select.replaceChildren(...options);
  select.value = chosen ?? "";
  showModelName();
}

// The sidebar footer names the model answering in the conversation on screen.
function showModelName() {
  const id = pickedModel();
  $("model-name").textContent = id ? modelName(id) : state.model ? state.model.name : "No model loaded";
}

async function pickModel() {
  const value = $("model-picker").value || null;
  if (!state.current) {
    state.pendingModel = value;
    showModelName();
    loadContextSetting(null);
    return;
  }
  const conv = state.current;
  try {
    const updated = await api("PATCH", `/api/conversations/${conv.id}`, { model_id: value });
    conv.model_id = updated.model_id;
    showError("");
  } catch (err) {
    showError(err.message);
  }
  if (state.current === conv) {
    renderPicker();
    loadContextSetting(conv);
  }
}

// A new conversation, created with the model picked for it.
async function createConversation() {
  const created = await api("POST", "/api/conversations", state.pendingModel ? { model_id: state.pendingModel } : {});
  state.pendingModel = null;
  return { ...created, messages: [] };
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
  renderPicker();
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
      state.current = await createConversation();
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
  $("model-picker").disabled = busy;
}

function waitingText(position) {
  return position === 1 ? "Waiting for another reply to finish…" : `Waiting for ${position - 1} other replies and one being written…`;
}

async function send(content) {
  showError("");
  let conv = state.current;
  if (!conv) {
    try {
      conv = state.current = await createConversation();
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
        reply.dataset.model = data.model;
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
    showModelName();
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
  $("show-models").addEventListener("click", showModels);
  $("model-picker").addEventListener("change", pickModel);
  document.addEventListener("tandem:models-changed", loadModels);
  document.addEventListener("tandem:installed", (e) => {
    const missing = new Set(e.detail.filter((m) => m.missing).map((m) => m.id));
    if ([...missing].join() !== [...state.missing].join()) {
      state.missing = missing;
      renderPicker();
    }
  });
  $("context-policy").addEventListener("change", changeContextPolicy);
  $("new-chat").addEventListener("click", () => {
    showError("");
    state.pendingModel = null;
    showConversation(null);
    $("prompt").focus();
  });
  loadHealth();
  loadModels();
  watchActiveDownloads();
  loadContextSetting(null);
  loadList().catch((err) => showError(err.message));
  $("prompt").focus();
  document.body.dataset.ready = "true";
}

init();
