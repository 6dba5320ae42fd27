// The Settings page: what new conversations start with, the theme, where data lives, the server.
// Each field saves on its own; the API says which ones wait for the next start.
import { el, option } from "./dom.js";
import { api } from "./api.js";
import { modelLabel } from "./names.js";
import { state, showError, notify } from "./state.js";

const THEME_NAMES = { system: "Match the system", light: "Light", dark: "Dark" };
const POLICY_NAMES = { sink_window: "Keep the start, slide the rest", drop_turns: "Drop the oldest messages", stop: "Stop when it is full" };
const THEME_KEY = "tandem.theme";

export function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  try {
    localStorage.setItem(THEME_KEY, theme || "system");
  } catch {}
}

// The theme saved on the server wins over the one this browser remembered.
export async function loadSettings() {
  try {
    state.settings = await api("GET", "/api/settings");
    applyTheme(state.settings.values.theme);
  } catch {}
  return state.settings;
}

// One setting: its label, its control (saved on change), "takes effect at next start" when the
// API says so, a help line and the server's answer when it refuses a value.
function field(name, label, control, kind, help) {
  const row = el("div", "setting");
  row.dataset.name = name;
  if (!control.id) control.id = `set-${name}`;
  const caption = el(control.tagName === "DIV" ? "span" : "label", "setting-label", label);
  if (caption.tagName === "LABEL") caption.htmlFor = control.id;
  const head = el("div", "setting-head");
  head.append(caption);
  if (state.settings.restart?.includes(name)) head.append(el("span", "restart-note"));
  head.append(el("span", "saved", ""));
  row.append(head, control);
  showRestart(row);
  if (help) row.append(el("p", "setting-help", help));
  row.append(el("p", "field-error"));
  if (kind) {
    control.addEventListener("change", () => {
      const value = read(control, kind);
      if (value === undefined) return invalid(row, "Enter a number.");
      saveSetting(row, value);
    });
  }
  return row;
}

// A setting read at start only: says so, and what the running server still uses once it differs.
function showRestart(row) {
  const note = row.querySelector(".restart-note");
  if (!note) return;
  const name = row.dataset.name;
  const running = state.settings.running?.[name];
  const pending = running !== undefined && running !== state.settings.values[name];
  const now = running === true ? "on" : running === false ? "off" : running;
  note.textContent = pending ? `takes effect at next start (now ${now})` : "takes effect at next start";
  note.title = "Tandem reads this when it starts: restart it for a change to apply.";
  row.classList.toggle("pending-restart", pending);
}

function invalid(row, message) {
  row.querySelector(".field-error").textContent = message;
  row.classList.toggle("invalid", !!message);
}

function input(type, value, attrs = {}) {
  const node = el("input");
  node.type = type;
  node.value = value ?? "";
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function select(choices, value) {
  const node = el("select");
  node.append(...choices.map(([v, text]) => option(v, text)));
  node.value = value ?? "";
  return node;
}

async function saveSetting(row, value) {
  const name = row.dataset.name;
  const saved = row.querySelector(".saved");
  try {
    state.settings = await api("PATCH", "/api/settings", { [name]: value });
    invalid(row, "");
    showRestart(row);
    if (name === "theme") applyTheme(state.settings.values.theme);
    saved.textContent = "Saved";
    setTimeout(() => (saved.textContent = ""), 1500);
    showError("");
  } catch (err) {
    invalid(row, err.message);
  }
}

// The value a control holds, as the API takes it; undefined: not a valid entry (not sent).
function read(control, kind) {
  const raw = control.value.trim();
  if (kind === "int" || kind === "float") {
    if (!raw) return undefined;
    const n = kind === "int" ? Number(raw) : parseFloat(raw);
    return Number.isFinite(n) && (kind === "float" || Number.isInteger(n)) ? n : undefined;
  }
  if (kind === "nullable") return raw || null;
  if (kind === "bool") return control.checked;
  return control.value;
}

function themeField(values, choices) {
  const group = el("div", "theme-choice");
  group.setAttribute("role", "radiogroup");
  group.setAttribute("aria-label", "Theme");
  group.id = "set-theme";
  for (const theme of choices.theme ?? ["system", "light", "dark"]) {
    const label = el("label", "theme-option");
    const radio = input("radio", theme, { name: "theme" });
    radio.checked = (values.theme ?? "system") === theme;
    radio.addEventListener("change", () => radio.checked && saveSetting(label.closest(".setting"), theme));
    label.append(radio, document.createTextNode(THEME_NAMES[theme] ?? theme));
    group.append(label);
  }
  return field("theme", "Theme", group, null);
}

// Other servers (another Tandem, llama-server, vLLM, Ollama, LM Studio) whose models are offered
// in the model picker as NAME/model.
function remotesSection() {
  const list = el("div", "remote-list");
  list.id = "remote-list";
  const name = input("text", "", { id: "remote-name", placeholder: "desktop", "aria-label": "Name", spellcheck: "false" });
  const url = input("text", "", { id: "remote-url", placeholder: "http://192.168.1.20:8742/v1", "aria-label": "Address", spellcheck: "false" });
  const key = input("password", "", { id: "remote-key", placeholder: "API key, if it needs one", "aria-label": "API key", autocomplete: "off" });
  const add = el("button", "primary", "Add");
  add.type = "button";
  add.id = "remote-add";
  const error = el("p", "field-error");
  error.setAttribute("role", "alert");
  const form = el("div", "remote-form");
  form.append(name, url, key, add);

  const show = (rows) => {
    list.replaceChildren(...(rows.length ? rows.map(remoteRow) : [el("p", "muted", "None yet.")]));
  };
  const refresh = async (fresh = false) => show(await api("GET", `/api/remotes${fresh ? "?fresh=true" : ""}`));
  const remoteRow = (r) => statusRow(r.status, r.name, ` ${r.url}${r.has_key ? " · with a key" : ""}`,
    r.status === "ok" ? `${r.models.length} model${r.models.length === 1 ? "" : "s"}: ${r.models.map((m) => m.split("/").slice(1).join("/")).join(", ") || "none"}`
      : `Not answering: ${r.error}`,
    async () => {
      await api("DELETE", `/api/remotes/${encodeURIComponent(r.name)}`);
      notify("models-changed");
      await refresh();
    });
  onAdd(add, error, "Asking it…", async () => {
    await api("POST", "/api/remotes", { name: name.value.trim(), url: url.value.trim(), key: key.value || null });
    name.value = url.value = key.value = "";
    notify("models-changed");
    await refresh();
  });
  refresh(true).catch((err) => list.replaceChildren(el("p", "field-error", err.message)));
  const box = section("Other servers",
    "Models of another computer running Tandem, llama-server, vLLM, Ollama or LM Studio, offered in the model picker as name/model. Tandem asks the server for its models when you add it.",
    list, form, error);
  box.id = "remotes";
  return box;
}

// An Add button that says what it is doing while `adding` runs, and shows its error under the form.
function onAdd(add, error, busy, adding) {
  add.addEventListener("click", async () => {
    error.textContent = "";
    add.disabled = true;
    add.textContent = busy;
    try {
      await adding();
    } catch (err) {
      error.textContent = err.message;
    }
    add.disabled = false;
    add.textContent = "Add";
  });
}

// One registered machine: a status dot, its name and address, what it offers (or its error), Remove.
function statusRow(status, name, where, detail, remove) {
  const row = el("div", `remote ${status}`);
  row.dataset.name = name;
  const head = el("div", "remote-head");
  const button = el("button", "", "Remove");
  button.type = "button";
  button.addEventListener("click", () => remove().catch((err) => showError(err.message)));
  head.append(el("span", `dot ${status === "ok" ? "ok" : "failed"}`), el("strong", "", name), el("span", "muted", where), button);
  row.append(head, el("p", status === "ok" ? "muted" : "field-error", detail));
  return row;
}

// Machines running `tandem worker`: the planner may put a model's last layers on them (llama.cpp RPC).
function poolSection() {
  const list = el("div", "remote-list");
  list.id = "pool-list";
  const endpoint = input("text", "", { id: "pool-endpoint", placeholder: "192.168.1.20:50052", "aria-label": "Worker address", spellcheck: "false" });
  const add = el("button", "primary", "Add");
  add.type = "button";
  add.id = "pool-add";
  const error = el("p", "field-error");
  error.setAttribute("role", "alert");
  const form = el("div", "remote-form");
  form.append(endpoint, add);
  const mib = (b) => `${(b / 2 ** 30).toFixed(1)} GiB`;
  const workerRow = (w) => {
    const devices = (w.info?.served ?? []).map((d) => `${d.name} (${d.description}) ${mib(d.free_bytes)} free`).join(", ");
    return statusRow(w.status, w.endpoint, "",
      w.status === "ok" ? `${devices} · round trip ${w.rtt_ms} ms · ${w.bandwidth_mbps} Mbit/s` : `Not answering: ${w.error}`,
      async () => {
        await api("DELETE", `/api/pool/${encodeURIComponent(w.endpoint)}`);
        await refresh();
      });
  };
  const refresh = async (fresh = false) => {
    const pool = await api("GET", `/api/pool${fresh ? "?fresh=true" : ""}`);
    const rows = pool.workers.map(workerRow);
    if (!pool.supported) rows.unshift(el("p", "field-error", "This engine build cannot pool machines (no llama.cpp RPC backend): run ./dev.sh run again to rebuild it."));
    list.replaceChildren(...(rows.length ? rows : [el("p", "muted", "None yet.")]));
  };
  onAdd(add, error, "Measuring…", async () => {
    await api("POST", "/api/pool", { endpoint: endpoint.value.trim() });
    endpoint.value = "";
    await refresh();
  });
  refresh(true).catch((err) => list.replaceChildren(el("p", "field-error", err.message)));
  const intro = el("p", "muted");
  intro.append("Another computer running ", el("code", "", "tandem worker --host ITS-ADDRESS --allow THIS-ADDRESS"),
    " can hold some of a model's layers, over llama.cpp's RPC. Tandem measures the network when you add one, and uses it when a model does not fit here or runs faster that way; the model's plan says which. The worker's port has no password: keep it on a network only you use.");
  const box = section("Machines that share the work", null, intro, list, form, error);
  box.id = "pool";
  return box;
}

function section(title, intro, ...rows) {
  const box = el("section", "panel settings-section");
  box.append(el("h3", "", title));
  if (intro) box.append(el("p", "muted", intro));
  box.append(...rows);
  return box;
}

export async function renderSettings(view) {
  view.replaceChildren(el("p", "muted", "Loading settings…"));
  let [settings, installed] = await Promise.all([
    api("GET", "/api/settings"),
    state.models.length ? state.models : api("GET", "/api/models").catch(() => []),
  ]);
  state.settings = settings;
  const { values, choices = {} } = settings;
  installed = installed.filter((m) => !m.remote);  // the default runs here
  const byDefault = installed.find((m) => m.is_default);
  const models = [["", byDefault ? `The built-in default: ${modelLabel(byDefault)}` : "The built-in default"],
    ...installed.map((m) => [m.id, modelLabel(m)])];
  if (values.default_model_id && !installed.some((m) => m.id === values.default_model_id)) {
    models.push([values.default_model_id, `${values.default_model_id} (not installed)`]);
  }
  const policies = (choices.context_policy ?? Object.keys(POLICY_NAMES)).filter((p) => p);
  const prompt = el("textarea");
  prompt.rows = 4;
  prompt.value = values.system_prompt ?? "";
  prompt.placeholder = "None: the model's own behaviour";

  const num = (value, attrs) => input("number", value, attrs);
  const page = el("div", "settings-page");
  page.append(
    section("New conversations", "Every new chat starts with these. A conversation's own settings (⚙ in its header) change it alone.",
      field("default_model_id", "Model", select(models, values.default_model_id), "nullable"),
      field("system_prompt", "System prompt", prompt, "text", "Instructions the model reads before every conversation."),
      field("temperature", "Temperature", num(values.temperature, { min: 0, max: 2, step: 0.05 }), "float",
        "0: always the most likely words; higher: more varied replies."),
      field("top_p", "Top p", num(values.top_p, { min: 0, max: 1, step: 0.05 }), "float",
        "Only the most likely words that together make up this share are considered."),
      field("max_tokens", "Longest reply (tokens)", num(values.max_tokens, { min: 1, step: 1 }), "int"),
      field("context_policy", "When a conversation outgrows the context",
        select([["", "Automatic: the plan's choice"], ...policies.map((p) => [p, POLICY_NAMES[p] ?? p])], values.context_policy), "nullable"),
    ),
    section("Appearance", null, themeField(values, choices)),
    section("Storage", null,
      field("data_dir", "Data folder", input("text", values.data_dir, { spellcheck: "false" }), "text",
        "Conversations, downloaded models and saved caches live here."),
      field("context_cache_mb", "Saved-cache size (MB)", num(values.context_cache_mb, { min: 0, step: 1 }), "int",
        "Disk space for saved conversation caches, so that long conversations resume at once. 0 turns saving off."),
    ),
    section("Server", null,
      field("port", "Port", num(values.port, { min: 1, max: 65535, step: 1 }), "int", "The port the app and its API answer on."),
      lanField(values),
    ),
    remotesSection(),
    poolSection(),
  );
  view.replaceChildren(page);
}

// Other devices on the network: off by default; on, they need the API key shown here.
function lanField(values) {
  const box = el("div", "lan-access");
  box.id = "set-lan_access";
  const toggle = input("checkbox", "", { id: "set-lan-toggle" });
  toggle.checked = !!values.lan_access;
  const label = el("label", "lan-toggle");
  label.append(toggle, document.createTextNode(" Let other devices on this network use Tandem's API"));
  const key = el("div", "api-key");
  const shown = input("text", "", { readonly: "", spellcheck: "false", "aria-label": "API key" });
  const hint = el("span", "muted key-hint");
  const copy = el("button", "", "Copy");
  copy.type = "button";
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(shown.value);
      copy.textContent = "Copied";
    } catch {
      shown.select();
      copy.textContent = document.execCommand("copy") ? "Copied" : "Select and copy it";
    }
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  const renew = el("button", "", "New key");
  renew.type = "button";
  renew.title = "Make a new key; the old one stops working at the next start";
  // The key itself is shown once, right after it is made: only its hash is kept.
  const showNew = (made) => {
    shown.value = made ?? "";
    shown.hidden = copy.hidden = !made;
    const v = state.settings.values;
    hint.textContent = made ? "Copy it now: it is shown only this once."
      : v.api_key_set ? `Key ${v.api_key_hint ?? ""} is set. Lost it? Make a new one.` : "";
  };
  renew.addEventListener("click", async () => {
    try {
      state.settings = await api("POST", "/api/settings/api-key");
      showNew(state.settings.new_api_key);
    } catch (err) {
      showError(err.message);
    }
  });
  key.append(shown, copy, renew, hint);
  const showKey = () => (key.hidden = !toggle.checked);
  box.append(label, key);
  const row = field("lan_access", "Network access", box, null,
    "Off: only this computer can reach Tandem. On: Tandem listens on every network address, and other " +
    "devices must send the key (Authorization: Bearer KEY), e.g. an OpenAI client pointed at http://THIS-COMPUTER:PORT/v1; " +
    "a browser there asks for it once.");
  toggle.addEventListener("change", async () => {
    await saveSetting(row, toggle.checked);
    showNew(state.settings.new_api_key);
    showKey();
  });
  showNew(null);
  showKey();
  return row;
}
