// The model picker in the chat header and the conversation's settings drawer (model, system
// prompt and its presets, sampling, context policy). A new chat keeps its choices until its
// first message creates it.
import { $, option } from "./dom.js";
import { api } from "./api.js";
import * as models from "./models.js";
import { modelLabel, modelTitle } from "./names.js";
import { state, streamingHere, showError, on, notify, modelById } from "./state.js";

const path = (id) => `/api/conversations/${encodeURIComponent(id)}`;
const NUMBERS = [["conv-temperature", "temperature", parseFloat], ["conv-top-p", "top_p", parseFloat], ["conv-max-tokens", "max_tokens", (v) => parseInt(v, 10)]];
let presets = [];

// A setting of the conversation on screen (or of the new chat about to be created).
const setting = (name) => (state.current ? state.current[name] : state.pending[name]) ?? null;
const pickedModel = () => setting("model_id");

// ---- the model picker: installed models, each with how it runs here
export async function loadModels() {
  try {
    const [installed, hub] = await Promise.all([api("GET", "/api/models"), api("GET", "/api/hub/models").catch(() => [])]);
    state.models = installed;
    state.missing = new Set(hub.filter((m) => m.missing).map((m) => m.id));
  } catch {
    return;
  }
  notify("models-loaded");
  renderPicker();
}

function fillModels(select) {
  const chosen = pickedModel();
  const byDefault = state.models.find((m) => m.is_default);
  const summarize = (o, m, prefix) => {
    if (!m || m.remote || state.missing.has(m.id) || !models.planSummary) return;
    models.planSummary(m.id).then((s) => (o.textContent = `${prefix}${modelLabel(m)} · ${s.short}`), () => {});
  };
  const first = option("", byDefault ? `Default: ${modelLabel(byDefault)}` : "Default model");
  summarize(first, byDefault, "Default: ");
  const options = [first];
  for (const m of state.models) {
    const o = option(m.id, state.missing.has(m.id) ? `${modelLabel(m)} (missing)` : modelLabel(m));
    o.disabled = state.missing.has(m.id);
    o.title = modelTitle(m);
    if (m.remote) {  // a model of another server: named with it, and said when it does not answer
      o.textContent = `${modelLabel(m)} · on ${m.remote}${m.remote_status === "failed" ? " (not answering)" : ""}`;
      o.title = m.remote_error || `${m.id}: runs on ${m.remote}`;
    }
    summarize(o, m, "");
    options.push(o);
  }
  if (chosen && !state.models.some((m) => m.id === chosen)) options.push(option(chosen, `${chosen} (not installed)`));
  select.replaceChildren(...options);
  select.value = chosen ?? "";
}

export function renderPicker() {
  fillModels($("model-picker"));
  fillModels($("conv-model"));
  showModelName();
}

// The sidebar footer names the model answering in the conversation on screen.
export function showModelName() {
  if (state.offline) {
    $("model-name").textContent = "Server not reachable";
    return;
  }
  const id = pickedModel();
  $("model-name").textContent = id ? modelLabel(modelById(id) ?? { id }) : state.model ? modelLabel(state.model) : "No model loaded";
}

// Saves one or more settings: PATCH for a conversation, kept for the first message of a new chat.
async function save(changes) {
  const conv = state.current;
  if (!conv) {
    Object.assign(state.pending, changes);
    return true;
  }
  try {
    const updated = await api("PATCH", path(conv.id), changes);
    Object.assign(conv, updated, { messages: conv.messages });
    showError("");
    flashSaved();
    return true;
  } catch (err) {
    showError(err.message);
    return false;
  }
}

let savedTimer = null;
function flashSaved() {
  const note = $("conv-saved");
  note.hidden = false;
  clearTimeout(savedTimer);
  savedTimer = setTimeout(() => (note.hidden = true), 1500);
}

async function pickModel(value) {
  const conv = state.current;
  await save({ model_id: value || null });
  if (state.current === conv) {
    renderPicker();
    loadContextSetting(conv);
  }
}

// ---- the context policy (the plan's unless the person picks one)
async function loadContextSetting(conv) {
  const box = $("context-setting");
  const select = $("context-policy");
  const url = conv ? `${path(conv.id)}/context` : "/api/context";
  try {
    const info = await api("GET", url);
    if (state.current !== conv) return;  // another conversation was opened meanwhile
    if (info.source === "remote") {  // the remote server decides
      box.hidden = true;
      return;
    }
    const planName = info.choices.find((c) => c.id === info.plan_policy)?.name ?? info.plan_policy;
    const options = [option("", `Automatic: ${planName.toLowerCase()}`), ...info.choices.map((c) => option(c.id, c.name))];
    select.replaceChildren(...options);
    select.value = conv ? (info.source === "conversation" ? info.policy : "") : state.pending.context_policy ?? "";
    box.title = `${info.reason || ""}\nContext ${info.n_ctx} tokens.`.trim();
    box.hidden = false;
  } catch {
    box.hidden = true;
  }
}

// ---- system prompt presets
async function loadPresets() {
  try {
    presets = await api("GET", "/api/presets");
  } catch {
    presets = [];
  }
  renderPresets();
}

function renderPresets() {
  const select = $("preset-picker");
  select.replaceChildren(option("", presets.length ? "Presets…" : "No presets yet"), ...presets.map((p) => option(p.id, p.name)));
  const match = presets.find((p) => p.content === $("system-prompt").value);
  select.value = match ? String(match.id) : "";
  $("preset-delete").disabled = !match;
}

async function choosePreset() {
  const preset = presets.find((p) => String(p.id) === $("preset-picker").value);
  if (!preset) return renderPresets();
  $("system-prompt").value = preset.content;
  await save({ system_prompt: preset.content });
  renderPresets();
}

async function savePreset() {
  const name = $("preset-name").value.trim();
  if (!name) return $("preset-name").focus();
  try {
    await api("POST", "/api/presets", { name, content: $("system-prompt").value });
    $("preset-new").hidden = true;
    $("preset-name").value = "";
    await loadPresets();
  } catch (err) {
    showError(err.message);
  }
}

async function deletePreset() {
  const preset = presets.find((p) => String(p.id) === $("preset-picker").value);
  if (!preset || !confirm(`Delete the preset "${preset.name}"? Conversations that use its text keep it.`)) return;
  try {
    await api("DELETE", `/api/presets/${encodeURIComponent(preset.id)}`);
  } catch (err) {
    showError(err.message);
  }
  await loadPresets();
}

// ---- the drawer
export function renderPanel() {
  const conv = state.current;
  $("conv-settings-note").textContent = conv
    ? "Changes apply to the next reply."
    : "A new chat: these apply from its first message.";
  const defaults = state.settings?.values ?? {};
  $("system-prompt").value = setting("system_prompt") ?? "";
  $("system-prompt").placeholder = defaults.system_prompt
    ? `Default from Settings: ${defaults.system_prompt}`
    : "How the model should behave in this conversation";
  for (const [id, name] of NUMBERS) {
    $(id).value = setting(name) ?? "";
    $(id).placeholder = defaults[name] ?? "";
  }
  renderPresets();
}

export function openPanel(open = $("conv-settings").hidden) {
  $("conv-settings").hidden = !open;
  $("conv-settings-button").setAttribute("aria-expanded", String(open));
  if (open) {
    renderPanel();
    loadPresets();
    $("conv-model").focus();
  }
}

function onBusy(busy) {
  busy = busy ?? streamingHere();
  for (const id of ["model-picker", "conv-model", "context-policy"]) $(id).disabled = busy;
}

export function initPanel() {
  $("model-picker").addEventListener("change", (e) => pickModel(e.target.value));
  $("conv-model").addEventListener("change", (e) => pickModel(e.target.value));
  $("context-policy").addEventListener("change", (e) => save({ context_policy: e.target.value || null }));
  $("system-prompt").addEventListener("change", (e) => {
    save({ system_prompt: e.target.value.trim() ? e.target.value : null }).then(renderPresets);
  });
  $("system-prompt").addEventListener("input", renderPresets);
  for (const [id, name, parse] of NUMBERS) {
    $(id).addEventListener("change", (e) => {
      const v = parse(e.target.value);
      save({ [name]: Number.isFinite(v) ? v : null });
    });
  }
  $("preset-picker").addEventListener("change", choosePreset);
  $("preset-save").addEventListener("click", () => {
    $("preset-new").hidden = false;
    $("preset-name").focus();
  });
  $("preset-name").addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      savePreset();
    } else if (e.key === "Escape") {
      e.stopPropagation();
      $("preset-new").hidden = true;
    }
  });
  $("preset-confirm").addEventListener("click", savePreset);
  $("preset-cancel").addEventListener("click", () => ($("preset-new").hidden = true));
  $("preset-delete").addEventListener("click", deletePreset);
  $("conv-reset").addEventListener("click", async () => {
    const reset = { model_id: null, context_policy: null, system_prompt: null, temperature: null, top_p: null, max_tokens: null };
    if (!state.current) state.pending = {};
    else await save(reset);
    renderPicker();
    renderPanel();
    loadContextSetting(state.current);
  });
  $("conv-settings-button").addEventListener("click", () => openPanel());
  $("conv-settings-close").addEventListener("click", () => openPanel(false));
  on("conversation", () => {
    renderPicker();
    loadContextSetting(state.current);
    if (!$("conv-settings").hidden) renderPanel();
    onBusy();
  });
  on("busy", onBusy);
  on("models-changed", loadModels);  // models.js: a model was installed or deleted
  on("installed", (list) => {
    const missing = new Set(list.filter((m) => m.missing).map((m) => m.id));
    if ([...missing].join() !== [...state.missing].join()) {
      state.missing = missing;
      renderPicker();
    }
  });
  loadModels();
  loadContextSetting(null);
}

export const panelOpen = () => !$("conv-settings").hidden;