// The page: its addresses, the pages in the main area, the server's status, keyboard shortcuts
// and the narrow layout. The chat, the sidebar and the settings live in their own modules.
import { $ } from "./dom.js";
import * as hardware from "./hardware.js";
import * as models from "./models.js";
import { modelLabel } from "./names.js";
import { startRouter, navigate } from "./router.js";
import { state, streamingHere, showError, on, notify } from "./state.js";
import { openConversation, showNewChat, send, stop, setTitle } from "./chat.js";
import { initSidebar, focusSearch, renderList } from "./sidebar.js";
import { initPanel, openPanel, panelOpen, loadModels, showModelName } from "./panel.js";
import { loadSettings, renderSettings } from "./settings.js";
import { askForKey } from "./signin.js";

// page -> [its view, its sidebar link]; "chat" is the messages and the composer
const PAGES = { models: ["models-view", "show-models"], hardware: ["hardware-view", "show-hardware"], settings: ["settings-view", "show-settings"] };

function showPage(name) {
  state.page = name;
  for (const [page, [view, link]] of Object.entries(PAGES)) {
    $(view).hidden = page !== name;
    $(link).classList.toggle("active", page === name);
    if (page === name) $(link).setAttribute("aria-current", "page");
    else $(link).removeAttribute("aria-current");
  }
  const chat = name === "chat";
  for (const id of ["messages", "composer", "model-setting", "conv-settings-button"]) $(id).hidden = !chat;
  if (!chat) openPanel(false);
  if (name !== "models") models.hideModels?.();
}

// Another page in the main area: no conversation is open meanwhile (Back reopens it).
function leaveChat(title) {
  state.current = null;
  setTitle(title);
  showModelName();
  renderList();
}

async function showOtherPage(route) {
  const titles = { models: "Models", hardware: "Hardware", settings: "Settings" };
  leaveChat(titles[route.page]);
  showPage(route.page);
  const view = $(PAGES[route.page][0]);
  try {
    showError("");
    if (route.page === "hardware") {
      if (!state.model) await loadHealth();  // opened before the page's first health check answered
      await hardware.renderHardware(view, state.model?.id);
    } else if (route.page === "models") {
      if (route.modelId && models.renderModelPlan) await models.renderModelPlan(view, route.modelId);
      else await models.renderModels(view);
    } else {
      await renderSettings(view);
    }
  } catch (err) {
    showError(err.message);
  }
}

async function onRoute(route) {
  closeSidebar();
  if (route.page !== "chat") return showOtherPage(route);
  const wasChat = state.page === "chat";
  showPage("chat");
  const focus = state.focus?.id === route.id ? state.focus.message : null;
  state.focus = null;
  if (!route.id) showNewChat();
  else if (state.current?.id !== route.id || focus != null || !wasChat) await openConversation(route.id, { focus });
}

// ---- the server's status: a dot that turns red while the server does not answer
let healthTimer = null;

async function loadHealth() {
  clearTimeout(healthTimer);
  healthTimer = setTimeout(loadHealth, 5000);
  let health;
  try {
    // not through api(): its failures ask for a health check, which would ask again
    const resp = await fetch("/api/health", { cache: "no-store" });
    if (resp.status === 401) {  // a page opened from another device: it needs the key first
      clearTimeout(healthTimer);
      askForKey();
      return;
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    health = await resp.json();
  } catch {
    setOffline(true);
    return;
  }
  const wasOffline = state.offline;
  setOffline(false);
  state.model = health.model;
  const m = health.model;
  // the plan a model runs with can differ from the preview the picker shows (pooled over workers,
  // fewer GPU layers after a failed load): when the loaded plan changes, the previews are read again
  const loadedShape = m && m.n_ctx != null ? [m.id, m.n_ctx, m.n_gpu_layers, m.n_threads].join() : "";
  if (state.loadedShape !== undefined && loadedShape !== state.loadedShape && loadedShape) {
    models.forgetPlans();
    loadModels();
  }
  state.loadedShape = loadedShape;
  $("model-dot").classList.toggle("ok", !!m && health.status === "ok");
  $("model-dot").classList.toggle("failed", health.status !== "ok");
  const failure = health.engine?.failures?.[m?.id];
  const name = modelLabel(m);
  $("model-status").title = !m ? "" : failure ? `${name}: ${failure}`
    : m.n_ctx == null ? `${name}\nloads with the first message`
    : `${name}\ncontext ${m.n_ctx} tokens · ${m.n_threads} threads · ${m.n_gpu_layers} GPU layers`;
  showModelName();
  if (wasOffline) {  // back after a restart: what the page shows may be out of date
    notify("list");
    loadModels();
  }
}

function setOffline(offline) {
  state.offline = offline;
  document.body.classList.toggle("offline", offline);
  $("model-dot").classList.toggle("down", offline);
  if (offline) {
    $("model-dot").classList.remove("ok", "failed");
    $("model-status").title = "Tandem's server is not answering. Is it still running?";
  }
  showModelName();
}

let offlineCheck = null;
function checkSoon() {
  if (!offlineCheck) offlineCheck = setTimeout(() => ((offlineCheck = null), loadHealth()), 300);
}

// ---- the narrow layout: the sidebar slides over the chat
const narrow = window.matchMedia("(max-width: 680px)");

function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  $("sidebar-backdrop").hidden = !open;
  $("menu-button").setAttribute("aria-expanded", String(open));
}
const closeSidebar = () => document.body.classList.contains("sidebar-open") && setSidebar(false);

// ---- the composer and the keyboard
function autoGrow() {
  const t = $("prompt");
  t.style.height = "auto";
  t.style.height = Math.min(t.scrollHeight, 220) + "px";
}

function newChat() {
  showError("");
  navigate("#/");
  $("prompt").focus();
}

function shortcuts(e) {
  const mod = e.ctrlKey || e.metaKey;
  const key = e.key.toLowerCase();
  if (mod && !e.shiftKey && !e.altKey && key === "k") {
    e.preventDefault();
    if (narrow.matches) setSidebar(true);
    focusSearch();
  } else if (mod && e.shiftKey && key === "o") {
    e.preventDefault();
    newChat();
  } else if (e.key === "Escape") {
    if (streamingHere()) stop();
    else if (panelOpen()) openPanel(false);
    else closeSidebar();
  }
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
  document.addEventListener("keydown", shortcuts);
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("menu-button").addEventListener("click", () => setSidebar(!document.body.classList.contains("sidebar-open")));
  $("sidebar-backdrop").addEventListener("click", () => setSidebar(false));
  narrow.addEventListener("change", () => setSidebar(false));
  if (/Mac|iPhone|iPad/.test(navigator.platform)) {
    $("search-shortcut").textContent = "⌘K";
    $("new-chat").title = "New chat (⌘⇧O)";
  }
  on("offline", checkSoon);
  document.addEventListener("tandem:need-key", askForKey);
  loadHealth();
  loadSettings();
  initPanel();
  models.watchActiveDownloads?.();
  initSidebar();
  startRouter(onRoute);
  $("prompt").focus();
  document.body.dataset.ready = "true";
}

init();
