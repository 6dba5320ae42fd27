// The Models page: the offline catalog, hub search, a repo's files with the verdict for this
// machine, downloads followed as server-sent events, installed models and imports; and each
// installed model's plan view (#/models/<id>): its choices, memory map, speed and reasons.
// Hub data is untrusted: everything here is built with textContent, never HTML.
import { el } from "./dom.js";
import { api } from "./api.js";
import { memoryChart, size, speedChart, tps } from "./charts.js";
import { modelHref, modelLabel, modelTitle, speedBasis } from "./names.js";

const ACTIVE = new Set(["queued", "downloading"]);
const SORTS = [["downloads", "Most downloaded"], ["likes", "Most liked"], ["recent", "Recently updated"], ["trending", "Trending"]];
const FIT_HELP = {
  gpu: "Every layer and the KV cache on the GPU: the fastest this machine can run it.",
  split: "Some layers on the GPU, the rest on the CPU: slower than all on the GPU.",
  cpu: "Runs on the CPU: no GPU, or the GPU cannot help.",
  too_big: "Not enough memory on this machine, even at the shortest context.",
};

const page = { view: null, visible: false, catalog: null, results: null, query: "", sort: "downloads", repo: null };
// Downloads seen by this page: their last status, so a download that completes is noticed once.
const tracker = { source: null, list: [], status: new Map(), shown: new Set() };
const repoButtons = new Map();  // model key -> its Download button, in the repo on screen

// ---- formatting
function rate(bps) {
  return bps ? `${size(Math.round(bps))}/s` : "";
}

function duration(s) {
  if (s == null) return "";
  if (s < 60) return `${Math.max(1, Math.round(s))} s left`;
  if (s < 3600) return `${Math.round(s / 60)} min left`;
  return `${(s / 3600).toFixed(1)} h left`;
}

function count(n) {
  if (n == null) return "?";
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function button(text, className, onClick) {
  const b = el("button", className, text);
  b.type = "button";
  if (onClick) b.addEventListener("click", onClick);
  return b;
}

function errorBox(err) {
  const box = el("div", "hub-error", err.message || String(err));
  box.setAttribute("role", "alert");
  if (err.code) box.dataset.code = err.code;
  return box;
}

export function modelsChanged() {
  forgetPlans();
  document.dispatchEvent(new CustomEvent("tandem:models-changed"));
}

// ---- how an installed model runs here (its plan), shared with the chat's model picker
const plans = new Map();

export function forgetPlans() {
  plans.clear();
}

function where(plan, info) {
  const g = plan.n_gpu_layers;
  if (plan.pool) {  // layers on other machines over llama.cpp RPC
    // counted as llama.cpp offloads them: the output layer is one of them, the GPU's first
    const n = info ? ` of ${info.n_layer}` : "";
    const theirs = plan.pool.n_layers - (plan.pool.output ? 1 : 0);
    const out = plan.pool.output ? " and the output" : "";
    const g = plan.pool.local_gpu_layers;
    const mine = g ? `, ${g - 1} and the output on this GPU` : "";
    return { short: "Pooled", long: `Pooled: ${theirs}${n} layers${out} on other machines${mine}` };
  }
  if (!g) return { short: "CPU", long: "CPU only" };
  // n_gpu_layers counts the output layer too: all on the GPU is n_layer + 1
  if (info && g >= info.n_layer + 1) return { short: "GPU", long: "Fits on the GPU" };
  const layers = info ? `${g - 1} of ${info.n_layer} layers` : `${g} layers`;
  return { short: "GPU+CPU", long: `Split GPU + CPU (${layers} on the GPU)` };
}

// {short, long} for a model id; rejects when the model cannot be planned (a missing file).
export function planSummary(id) {
  if (!plans.has(id)) {
    const path = `/api/models/${encodeURIComponent(id)}`;
    const p = Promise.all([api("GET", `${path}/plan`), api("GET", `${path}/info`).catch(() => null)]).then(([plan, info]) => {
      const w = where(plan, info);
      const tps = plan.decode_tps != null ? `${plan.decode_tps.toFixed(plan.decode_tps < 10 ? 1 : 0)} tok/s` : "";
      return {
        short: [w.short, tps].filter(Boolean).join(" · "),
        long: [w.long, plan.decode_tps != null ? `${plan.decode_tps.toFixed(1)} tok/s predicted (${speedBasis(plan).words})` : "",
          `context ${plan.n_ctx}`]
          .filter(Boolean).join(" · "),
        plan,
      };
    });
    p.catch(() => plans.delete(id));
    plans.set(id, p);
  }
  return plans.get(id);
}

// ---- downloads: one event stream while the page is open or a download runs
function watch() {
  if (tracker.source) return;
  const source = new EventSource("/api/hub/downloads/events");
  source.addEventListener("downloads", (e) => update(JSON.parse(e.data)));
  tracker.source = source;
}

function unwatch() {
  tracker.source?.close();
  tracker.source = null;
}

function update(list) {
  let installed = false;
  for (const d of list) {
    const before = tracker.status.get(d.id);
    if (d.status === "complete" && before && before !== "complete") installed = true;
    if (ACTIVE.has(d.status)) tracker.shown.add(d.id);
    tracker.status.set(d.id, d.status);
  }
  tracker.list = list;
  if (installed) modelsChanged();
  if (page.visible) {
    renderDownloads();
    updateRepoButtons();
    if (installed) loadInstalled();
  } else if (!list.some((d) => ACTIVE.has(d.status))) {
    unwatch();
  }
}

// Downloads that went on after a restart keep the picker up to date once they complete.
export async function watchActiveDownloads() {
  try {
    const list = await api("GET", "/api/hub/downloads");
    update(list);
    if (list.some((d) => ACTIVE.has(d.status))) watch();
  } catch {}
}

function downloadRow(d) {
  const row = el("div", "download-row");
  row.dataset.id = d.id;
  row.dataset.status = d.status;
  const head = el("div", "dl-head");
  head.append(el("span", "dl-name", `${d.repo_id} · ${d.quant || d.model_key}`), el("span", `dl-status ${d.status}`, d.status));
  const bar = el("div", "progress");
  const fill = el("span");
  fill.style.width = `${Math.round(1000 * (d.progress ?? 0)) / 10}%`;
  bar.append(fill);
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(Math.round(100 * (d.progress ?? 0))));
  const meta = [`${size(d.done_bytes)} of ${size(d.total_bytes)}`];
  if (d.status === "downloading") meta.push(rate(d.speed_bps), duration(d.eta_s));
  if (d.status === "complete" && d.model_id) meta.push(`installed as ${d.model_id}`);
  row.append(head, bar, el("div", "dl-meta", meta.filter(Boolean).join(" · ")));
  if (d.error) row.append(el("div", "dl-error", d.error));
  const actions = el("div", "actions");
  const act = (action) => async () => {
    if (action === "cancel" && !confirm(`Cancel the download of ${d.repo_id} ${d.quant || d.model_key}? The ${size(d.done_bytes)} downloaded so far are deleted.`)) return;
    try {
      const now = await api("POST", `/api/hub/downloads/${encodeURIComponent(d.id)}/${action}`);
      update(tracker.list.map((x) => (x.id === d.id ? { ...x, ...now } : x)));
      watch();
    } catch (err) {
      row.append(errorBox(err));
    }
  };
  if (ACTIVE.has(d.status)) actions.append(button("Pause", "pause", act("pause")));
  if (d.status === "paused" || d.status === "failed") actions.append(button(d.status === "failed" ? "Retry" : "Resume", "resume", act("resume")));
  if (d.status !== "complete" && d.status !== "cancelled") actions.append(button("Cancel", "cancel", act("cancel")));
  if (d.status === "complete" || d.status === "cancelled") actions.append(button("Hide", "hide", () => {
    tracker.shown.delete(d.id);
    renderDownloads();
  }));
  row.append(actions);
  return row;
}

function renderDownloads() {
  const panel = page.view?.querySelector("#downloads-panel");
  if (!panel) return;
  const rows = tracker.list.filter((d) => ACTIVE.has(d.status) || d.status === "paused" || d.status === "failed" || tracker.shown.has(d.id));
  panel.hidden = !rows.length;
  panel.replaceChildren(el("h3", "", "Downloads"), ...rows.map(downloadRow));
}

function pendingDownload(repoId, key) {
  return tracker.list.find((d) => d.repo_id === repoId && d.model_key === key && d.status !== "cancelled" && d.status !== "complete");
}

function updateRepoButtons() {
  for (const [key, b] of repoButtons) {
    const entry = page.repo?.models.find((m) => m.key === key);
    const d = pendingDownload(page.repo?.repo_id, key);
    const done = entry?.installed || tracker.list.some((x) => x.repo_id === page.repo?.repo_id && x.model_key === key && x.status === "complete" && tracker.shown.has(x.id));
    b.disabled = !!d || !!done;
    b.textContent = done ? "Installed" : d ? (d.status === "paused" ? "Paused" : `Downloading ${Math.round(100 * (d.progress ?? 0))}%`) : "Download";
  }
}

async function startDownload(repoId, entry, card) {
  card.querySelector(".hub-error.download-error")?.remove();
  const b = repoButtons.get(entry.key);
  b.disabled = true;
  try {
    const d = await api("POST", "/api/hub/downloads", { repo_id: repoId, file: entry.key });
    tracker.shown.add(d.id);
    if (!tracker.status.has(d.id) || tracker.status.get(d.id) === "complete") tracker.status.set(d.id, d.status);
    tracker.list = [...tracker.list.filter((x) => x.id !== d.id), d];
    renderDownloads();
    updateRepoButtons();
    watch();
  } catch (err) {
    b.disabled = false;
    const box = errorBox(err);
    box.classList.add("download-error");
    card.append(box);
  }
}

// ---- the repo view: one card per model (a quant; split files as one) with its verdict here
function quantCard(repoId, entry) {
  const v = entry.verdict;
  const card = el("article", "quant-card");
  card.dataset.key = entry.key;
  card.dataset.fit = v ? v.fit : "unknown";
  const head = el("div", "quant-head");
  head.append(el("strong", "quant", entry.quant || "?"));
  if (entry.recommended) {
    const badge = el("span", "badge recommended", "recommended");
    if (v?.why_recommended) badge.title = `Recommended: ${v.why_recommended}`;
    head.append(badge);
  }
  if (entry.installed) head.append(el("span", "badge installed", "installed"));
  const name = el("span", "file-name", entry.key);
  name.title = entry.files.map((f) => f.name).join("\n");
  head.append(name, el("span", "file-size", `${size(entry.size)}${entry.parts > 1 ? ` in ${entry.parts} parts` : ""}`));
  card.append(head);
  if (v) {
    const line = el("div", "verdict-line");
    const label = el("span", `verdict fit-${v.fit}`, v.label);
    label.title = FIT_HELP[v.fit] || "";
    line.append(label);
    if (v.fit !== "too_big") {
      if (v.decode_tps != null) {
        line.append(el("span", "tps", `${v.decode_tps.toFixed(1)} tok/s`));
        const basis = speedBasis(v);
        const tag = el("span", `basis basis-${v.speed_basis || "estimated"}`, basis.words);
        tag.title = basis.title;
        line.append(tag);
      }
      if (v.n_ctx) line.append(el("span", "ctx", `context up to ${v.n_ctx.toLocaleString("en")}`));
    }
    if (v.bpw) line.append(el("span", "bpw", `${v.bpw} bits/weight`));
    card.append(line);
    if (v.memory?.length) card.append(memoryChart(v.memory, { compact: true, title: "Memory it would take here" }));
    const notes = [];
    if (v.fit === "split" && v.speed_cost != null) notes.push([`The layers on the CPU cost ${Math.round(100 * v.speed_cost)}% of the speed all on the GPU would give.`, "speed-cost"]);
    if (v.fit === "too_big" && v.reason) notes.push([v.reason, "reason"]);
    for (const w of entry.elsewhere ?? []) {  // a registered Tandem whose planner says it runs there
      const speed = typeof w.decode_tps === "number" ? `, about ${w.decode_tps.toFixed(1)} tok/s` : "";
      const label = typeof w.label === "string" ? w.label.toLowerCase() : "fits";
      notes.push([`Runs on ${w.remote}: ${label}${speed}. Download it there, then pick ${w.remote}/… in the model picker.`, "elsewhere"]);
    }
    if (entry.recommended && v.why_recommended) notes.push([`Recommended: ${v.why_recommended}.`, "why"]);
    if (v.drafts?.length) notes.push([`Can be drafted for by ${v.drafts.join(", ")} (installed): faster replies.`, "drafts"]);
    for (const [text, cls] of notes) card.append(el("p", `note ${cls}`, text));
  } else if (entry.error) {
    card.append(errorBox({ message: entry.error }));
  }
  const actions = el("div", "actions");
  const b = button("Download", "download primary", () => startDownload(repoId, entry, card));
  if (v?.fit === "too_big") b.title = "It does not fit in this machine's memory; you can still download it.";
  repoButtons.set(entry.key, b);
  actions.append(b);
  card.append(actions);
  return card;
}

async function openRepo(repoId) {
  const browse = page.view.querySelector("#hub-browse");
  repoButtons.clear();
  page.repo = null;
  const back = button(page.results ? "← Search results" : "← Catalog", "back", () => (page.results ? renderResults() : renderCatalog()));
  browse.replaceChildren(back, el("h3", "repo-title", repoId), el("p", "muted loading", "Reading each file's header to see how it would run here…"));
  try {
    const [owner, name] = repoId.split("/");
    const repo = await api("GET", `/api/hub/repos/${encodeURIComponent(owner)}/${encodeURIComponent(name)}`);
    if (!page.view.contains(back)) return;  // another screen was opened meanwhile
    page.repo = repo;
    const info = el("p", "muted repo-info");
    info.textContent = `${repo.models.length} model${repo.models.length === 1 ? "" : "s"} · judged from ${size(repo.fetched_bytes)} of headers (of ${size(repo.total_bytes)})`
      + (repo.gated ? " · gated: downloading needs HF_TOKEN" : "");
    const list = el("div", "quant-list");
    for (const entry of repo.models) list.append(quantCard(repoId, entry));
    browse.replaceChildren(back, el("h3", "repo-title", repoId), info);
    if (!repo.models.length) browse.append(el("p", "muted", "This repo has no GGUF files."));
    browse.append(list);
    updateRepoButtons();
  } catch (err) {
    if (!page.view.contains(back)) return;
    browse.replaceChildren(back, el("h3", "repo-title", repoId), errorBox(err));
  }
}

// ---- the first screen (offline) and search results
function renderCatalog() {
  page.results = null;
  page.repo = null;
  const browse = page.view.querySelector("#hub-browse");
  if (!browse) return;  // the plan view is on screen
  const cat = page.catalog;
  browse.replaceChildren(el("h3", "", "Well-known models"));
  if (!cat) return;
  browse.append(el("p", "muted", "A list kept in Tandem, so it works offline. Open one to see how each of its files would run on this machine."));
  const byId = new Map(cat.models.map((m) => [m.id, m]));
  const grid = el("div", "catalog");
  for (const m of cat.models) {
    const card = button("", "catalog-card", () => openRepo(m.repo));
    card.dataset.repo = m.repo;
    card.append(el("span", "cat-name", m.name),
      el("span", "cat-meta", `${m.params_b} B parameters · ${m.recommended} ≈ ${m.size_gb} GB · ${Math.round(m.context / 1024)}k context`),
      el("span", "cat-repo", m.repo));
    const drafts = cat.drafts.filter((d) => d.target === m.id).map((d) => byId.get(d.draft)?.name).filter(Boolean);
    if (drafts.length) card.append(el("span", "cat-drafts", `Draft: ${drafts.join(", ")}`));
    grid.append(card);
  }
  browse.append(grid);
}

function renderResults() {
  page.repo = null;
  const browse = page.view.querySelector("#hub-browse");
  if (!browse) return;  // the plan view is on screen
  const { query, items, error } = page.results;
  const back = button("← Catalog", "back", () => renderCatalog());
  browse.replaceChildren(back, el("h3", "", query ? `GGUF models matching “${query}”` : "GGUF models"));
  if (/^[\w.-]+\/[\w.-]+$/.test(query) && !items?.some((r) => r.id === query)) {
    browse.append(button(`Open ${query}`, "open-repo", () => openRepo(query)));
  }
  if (error) {
    browse.append(errorBox(error));
    return;
  }
  if (!items.length) browse.append(el("p", "muted", "No GGUF models match."));
  const list = el("div", "results");
  for (const r of items) {
    const row = button("", "result", () => openRepo(r.id));
    row.dataset.repo = r.id;
    row.append(el("span", "result-name", r.id));
    const meta = [`${count(r.downloads)} downloads`, `${count(r.likes)} likes`];
    if (r.updated) meta.push(`updated ${r.updated.slice(0, 10)}`);
    row.append(el("span", "result-meta", meta.join(" · ")));
    if (r.gated) row.append(el("span", "badge gated", "gated"));
    list.append(row);
  }
  browse.append(list);
}

async function search(query, sort) {
  const browse = page.view.querySelector("#hub-browse");
  browse.replaceChildren(el("p", "muted loading", "Searching the hub…"));
  const params = new URLSearchParams({ q: query, sort, limit: "30" });
  try {
    page.results = { query, items: await api("GET", `/api/hub/search?${params}`) };
  } catch (err) {
    page.results = { query, items: [], error: err };
  }
  renderResults();
}

// ---- installed models
function sourceLabel(m) {
  if (m.source === "embedded") return "built in";
  if (m.source === "download") return "downloaded";
  return `imported${m.source?.startsWith("import:") ? ` (${m.source.slice(7)})` : ""}`;
}

async function removeModel(m) {
  const files = m.missing_files.length ? "" : ` (${size(m.disk_bytes)})`;
  const text = m.missing
    ? `Remove ${modelLabel(m)} from Tandem? Its file is already gone.`
    : m.owned
      ? `Delete ${modelLabel(m)}? Its file${files} in ${m.location} is deleted from the disk.`
      : `Remove ${modelLabel(m)} from Tandem? It was imported, so it is only unregistered: the file stays at ${m.path}.`;
  if (!confirm(text)) return;
  try {
    await api("DELETE", `/api/hub/models/${encodeURIComponent(m.id)}`);
    modelsChanged();
    await loadInstalled();
  } catch (err) {
    page.view.querySelector("#installed-panel").prepend(errorBox(err));
  }
}

function installedRow(m, served) {
  const row = el("div", "installed-row");
  row.dataset.model = m.id;
  const head = el("div", "row-head");
  const name = el("strong", "row-name", modelLabel(m));
  name.title = modelTitle(m);
  head.append(name);
  if (m.missing) head.append(el("span", "badge missing", "missing"));
  if (m.is_default) head.append(el("span", "badge", "default"));
  if (served?.loaded) head.append(el("span", "badge loaded", "loaded"));
  row.append(head);
  row.append(el("div", "row-meta", [size(m.disk_bytes || m.size_bytes), m.quant, sourceLabel(m)].filter(Boolean).join(" · ")));
  const loc = el("div", "row-path", m.location);
  loc.title = m.path;
  row.append(loc);
  const plan = el("div", "row-plan");
  if (m.missing) {
    plan.textContent = `Missing: ${m.missing_files.join(", ")}. Download it again, import it from where it is now, or remove it.`;
  } else {
    plan.textContent = "Planning how it runs here…";
    planSummary(m.id).then((s) => (plan.textContent = s.long), (err) => (plan.textContent = `Cannot be planned: ${err.message}`));
  }
  row.append(plan);
  if (!m.missing) {
    const link = el("a", "plan-link", "Plan, memory and speed →");
    link.href = modelHref(m.id);
    link.title = `How ${modelLabel(m)} runs on this machine: each choice and why, where its memory goes, and its real speed against the prediction`;
    row.append(link);
  }
  if (served?.drafts?.length) row.append(el("div", "row-drafts", `Can be drafted for by ${served.drafts.join(", ")}`));
  const actions = el("div", "actions");
  if (m.missing && m.repo_id) actions.append(button("Download again", "redownload", () => openRepo(m.repo_id)));
  if (m.missing) actions.append(button("Locate", "locate", () => {
    const input = page.view.querySelector("#import-path");
    input.value = m.location;
    input.focus();
  }));
  if (m.source !== "embedded") {
    const del = button(m.missing ? "Remove" : m.owned ? "Delete" : "Remove", "delete", () => removeModel(m));
    del.title = m.owned ? "Delete its files and unregister it" : "Unregister it; the files stay where they are";
    actions.append(del);
  }
  row.append(actions);
  return row;
}

async function loadInstalled() {
  const panel = page.view?.querySelector("#installed-panel");
  if (!panel) return;
  try {
    const [rows, served] = await Promise.all([api("GET", "/api/hub/models"), api("GET", "/api/models").catch(() => [])]);
    const byId = new Map(served.map((m) => [m.id, m]));
    // the picker marks missing models too (a file may have gone since it last looked)
    document.dispatchEvent(new CustomEvent("tandem:installed", { detail: rows }));
    panel.replaceChildren(el("h3", "", "Installed"), ...rows.map((m) => installedRow(m, byId.get(m.id))));
  } catch (err) {
    panel.replaceChildren(el("h3", "", "Installed"), errorBox(err));
  }
}

// ---- import what is on disk already
async function runImport(body, result) {
  result.replaceChildren(el("span", "muted", "Looking for GGUF files…"));
  try {
    const r = await api("POST", "/api/hub/import", body);
    const lines = [];
    if (r.registered.length) lines.push(el("div", "imported", `Registered ${r.registered.length}: ${r.registered.map(modelLabel).join(", ")}`));
    else lines.push(el("div", "imported", "No new model found."));
    for (const s of r.skipped) lines.push(el("div", "skipped", `Skipped ${s.path}: ${s.reason}`));
    result.replaceChildren(...lines);
    if (r.registered.length) {
      modelsChanged();
      await loadInstalled();
    }
  } catch (err) {
    result.replaceChildren(errorBox(err));
  }
}

function importPanel() {
  const panel = el("section", "panel");
  panel.id = "import-panel";
  const form = el("form", "import-form");
  const input = el("input");
  input.id = "import-path";
  input.placeholder = "/path/to/model.gguf or a folder";
  input.setAttribute("aria-label", "A .gguf file or a folder to import");
  const result = el("div", "import-result");
  result.setAttribute("aria-live", "polite");
  form.append(input, button("Import", "primary"));
  form.lastChild.type = "submit";
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (input.value.trim()) runImport({ path: input.value.trim() }, result);
  });
  const sources = el("div", "import-sources");
  sources.append(el("span", "muted", "Or find them in"));
  for (const [source, label] of [["lmstudio", "LM Studio"], ["ollama", "Ollama"], ["hf-cache", "HF cache"]]) {
    const b = button(label, "import-source", () => runImport({ source }, result));
    b.dataset.source = source;
    sources.append(b);
  }
  panel.append(el("h3", "", "Import from this machine"), el("p", "muted", "Registered where they are, not copied."), form, sources, result);
  return panel;
}

// ---- the page
function searchForm() {
  const form = el("form", "hub-search");
  form.setAttribute("role", "search");
  const input = el("input");
  input.id = "hub-query";
  input.type = "search";
  input.placeholder = "Search GGUF models on the hub, or owner/name";
  input.setAttribute("aria-label", "Search models");
  input.value = page.query;
  const sort = el("select");
  sort.id = "hub-sort";
  sort.setAttribute("aria-label", "Sort by");
  for (const [value, label] of SORTS) {
    const o = el("option", "", label);
    o.value = value;
    sort.append(o);
  }
  sort.value = page.sort;
  const go = button("Search", "primary");
  go.type = "submit";
  form.append(input, sort, go);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    page.query = input.value.trim();
    page.sort = sort.value;
    search(page.query, page.sort);
  });
  return form;
}

export async function renderModels(view) {
  page.view = view;
  page.visible = true;
  view.dataset.view = "models";
  delete view.dataset.model;
  const browse = el("section", "panel browse");
  browse.id = "hub-browse";
  const downloads = el("section", "panel");
  downloads.id = "downloads-panel";
  downloads.hidden = true;
  const installed = el("section", "panel");
  installed.id = "installed-panel";
  installed.append(el("h3", "", "Installed"));
  const main = el("div", "models-main");
  main.append(searchForm(), browse);
  const side = el("div", "models-side");
  side.append(downloads, installed, importPanel());
  const layout = el("div", "models-layout");
  layout.append(main, side);
  view.replaceChildren(layout);
  watch();
  renderDownloads();
  loadInstalled();
  if (page.repo) return openRepo(page.repo.repo_id);
  if (!page.catalog) {
    try {
      page.catalog = await api("GET", "/api/hub/catalog");
    } catch (err) {
      browse.replaceChildren(errorBox(err));
      return;
    }
  }
  if (!view.contains(layout)) return;  // a plan view replaced the page meanwhile
  if (page.results) renderResults();
  else renderCatalog();
}

export function hideModels() {
  page.visible = false;
  if (!tracker.list.some((d) => ACTIVE.has(d.status))) unwatch();
}

// ---- a model's plan view (#/models/<id>): each choice of its plan tied to the reason the planner
// gave for it, where its memory goes, and how fast its replies were against the prediction.
const POLICIES = { sink_window: "Keep the start, slide the rest", drop_turns: "Drop the oldest turns", stop: "Stop at the limit" };
const KV_TYPES = { f16: "f16 (full precision)", q8_0: "q8_0 (8 bits)", q4_0: "q4_0 (4 bits)" };
const CONTEXTS = [2048, 4096, 8192, 16384, 32768, 65536, 131072];
// What each reason of a plan explains, read from its wording (the planner writes them for people).
// A reason can explain several choices: "Context 4096 tokens, KV cache f16" explains both.
const TOPICS = [
  ["placement", /layers (and the output )?on the (GPU|CPU)|^All layers on the CPU|^Not used:|n_gpu_layers|fewer GPU layers|^Pooled over|^Pooling|^The workers? |^Workers are registered/],
  ["context kv", /^Context \d+ tokens/],
  ["context", /^Beyond the \d+ tokens/],
  ["threads", /\bthreads\b/],
  ["flash", /^Flash attention/],
  ["speed", /^Predicted |^Speed calibrated/],
  ["memory", /^(CPU|GPU\d+): .*planned/],
  ["overflow", /^Past \d+ tokens/],
  ["speculative", /[Ss]peculative|draft model/],
];
const TOPIC_NAMES = {
  placement: "Where it runs", context: "Context", kv: "KV cache", threads: "Threads", flash: "Flash attention",
  speed: "Speed", memory: "Memory", overflow: "Long conversations", speculative: "Speculative decoding", other: "Other",
};
const HELP = {
  placement: "Layers are the model's repeated building blocks. On a GPU they run many times faster than on the CPU; the plan puts there as many as fit.",
  speed: "tokens/s: tokens per second; a token is about three quarters of an English word. Writing (decode) is the reply's speed; reading (prefill) is how fast it takes in your message and the conversation before it answers.",
  context: "Context: how much text the model sees at once (the system prompt, the conversation so far and the reply), counted in tokens.",
  kv: "KV cache: the model's memory of the conversation so far. f16 keeps it at full precision; q8_0 and q4_0 store it in 8 or 4 bits so that a longer context fits.",
  overflow: "What happens when a conversation no longer fits in the context.",
  memory: "Where the model's bytes go on this machine: the chart below shows each part.",
  threads: "How many CPU cores work on each token at once.",
  flash: "Flash attention: a way of computing attention that needs less scratch memory (smaller compute buffers) and is often faster.",
  speculative: "Speculative decoding: tokens are guessed ahead, from text already in the conversation (prompt lookup) or by a small draft model, and the model checks several at once. Right guesses make replies faster; it switches itself off when it does not pay.",
};
const planView = { token: 0 };

function topicsOf(reason) {
  return TOPICS.find(([, re]) => re.test(reason))?.[0] ?? "other";
}

function sectionPanel(cls, title, help) {
  const box = el("section", `panel ${cls}`);
  const h = el("h3", "", title);
  if (help) {
    h.title = help;
    h.classList.add("explained");
  }
  box.append(h);
  return box;
}

// Scrolls to the reasons behind a choice and marks them for a moment.
function showReasons(root, topic) {
  const items = [...root.querySelectorAll(".plan-reasons li")].filter((li) => li.dataset.topic.split(" ").includes(topic));
  const list = root.querySelector(".plan-reasons");
  for (const li of root.querySelectorAll(".plan-reasons li.highlight")) li.classList.remove("highlight");
  const target = items[0] || list;
  if (!target) return;
  target.scrollIntoView({ block: "nearest", behavior: "smooth" });
  for (const li of items) li.classList.add("highlight");
  target.focus({ preventScroll: true });
  clearTimeout(planView.flash);
  planView.flash = setTimeout(() => items.forEach((li) => li.classList.remove("highlight")), 2500);
}

function showChoice(root, topic) {
  const tile = root.querySelector(`.choice[data-topic="${topic}"]`);
  if (!tile) return;
  tile.scrollIntoView({ block: "nearest", behavior: "smooth" });
  tile.classList.add("highlight");
  tile.focus({ preventScroll: true });
  setTimeout(() => tile.classList.remove("highlight"), 2500);
}

function relate(root, topic, on) {
  for (const li of root.querySelectorAll(".plan-reasons li")) {
    li.classList.toggle("related", on && li.dataset.topic.split(" ").includes(topic));
  }
}

function choiceTile(root, topic, label, value, detail) {
  const b = button("", "choice");
  b.dataset.topic = topic;
  b.title = `${HELP[topic] ? HELP[topic] + "\n\n" : ""}Shows the reason for this choice.`;
  b.setAttribute("aria-label", `${label}: ${value}${detail ? ", " + detail : ""}. Show the reason.`);
  b.append(el("span", "choice-label", label), el("span", "choice-value", value));
  if (detail) b.append(el("span", "choice-detail", detail));
  b.addEventListener("click", () => showReasons(root, topic));
  b.addEventListener("mouseenter", () => relate(root, topic, true));
  b.addEventListener("mouseleave", () => relate(root, topic, false));
  b.addEventListener("focus", () => relate(root, topic, true));
  b.addEventListener("blur", () => relate(root, topic, false));
  return b;
}

function gpuNames(hw) {
  return Object.fromEntries((hw?.gpus || []).map((g) => [`GPU${g.index}`, g.name]));
}

function deviceWords(memory, names) {
  return memory.filter((d) => d.weights).map((d) => (d.device === "CPU" ? "RAM" : names[d.device] || d.device)).join(" + ");
}

function choices(root, plan, info, names) {
  const grid = el("div", "choices");
  const w = where(plan, info);
  const gpu = plan.gpu_index != null ? names[`GPU${plan.gpu_index}`] : null;
  const pooled = plan.pool ? plan.pool.workers.map((x) => `${x.n_layers} on ${x.endpoint}`).join(", ")
    + (plan.pool.local_gpu_layers ? `, ${plan.pool.local_gpu_layers} on ${gpu || "this GPU"}, the rest on this CPU` : ", the rest here")
    + " (the output layer counts as one)" : null;
  grid.append(choiceTile(root, "placement", "Where it runs", w.long,
    pooled || gpu || (plan.n_gpu_layers ? null : "no layer on a GPU")));
  const cal = plan.calibration && Math.abs(plan.calibration - 1) > 1e-3 ? ` · calibrated x${plan.calibration.toFixed(2)}` : "";
  grid.append(choiceTile(root, "speed", "Predicted speed", `${tps(plan.decode_tps)} tokens/s writing`,
    `${speedBasis(plan).words} · ${tps(plan.prefill_tps)} tokens/s reading the prompt${cal}`));
  const trained = info?.n_ctx_train ? ` · trained for ${info.n_ctx_train.toLocaleString("en")}` : "";
  grid.append(choiceTile(root, "context", "Context", `${plan.n_ctx.toLocaleString("en")} tokens`,
    `about ${Math.round(plan.n_ctx * 0.75).toLocaleString("en")} words${trained}`));
  const kv = plan.memory.reduce((s, d) => s + d.kv, 0);
  grid.append(choiceTile(root, "kv", "KV cache", KV_TYPES[plan.type_k] || plan.type_k, `${size(kv)} for the whole context`));
  grid.append(choiceTile(root, "overflow", "Long conversations", POLICIES[plan.context_policy] || plan.context_policy,
    plan.context_policy === "sink_window" ? `frees ${plan.evict_chunk} tokens at a time` : null));
  const total = plan.memory.reduce((s, d) => s + d.total, 0);
  const margin = plan.memory.reduce((s, d) => s + d.margin, 0);
  grid.append(choiceTile(root, "memory", "Memory", `${size(total)} + ${size(margin)} margin`, `on ${deviceWords(plan.memory, names)}`));
  grid.append(choiceTile(root, "threads", "CPU threads", String(plan.n_threads),
    plan.n_threads_batch !== plan.n_threads ? `${plan.n_threads_batch} reading prompts` : null));
  grid.append(choiceTile(root, "flash", "Flash attention", plan.flash_attn ? "on" : "off", null));
  const d = plan.draft;
  const spec = d ? `draft model ${d.model}` : plan.speculative === "prompt_lookup" ? "prompt lookup" : "off";
  grid.append(choiceTile(root, "speculative", "Speculative decoding", spec,
    d ? `${tps(d.predicted_tps)} tokens/s with it, ${tps(d.plain_tps)} without` : null));
  return grid;
}

function reasonsList(root, plan) {
  const box = sectionPanel("plan-reasons", "Why", "The planner's reasons, in its own words. Each choice on the left leads here.");
  const ol = el("ol", "reason-list");
  plan.reasons.forEach((text, i) => {
    const topic = topicsOf(text);
    const li = el("li");
    li.id = `reason-${i + 1}`;
    li.dataset.topic = topic;
    li.tabIndex = -1;
    const first = topic.split(" ")[0];
    const chip = button(TOPIC_NAMES[first] || first, "reason-topic", () => showChoice(root, first));
    chip.title = first === "other" ? "" : `Show the choice this explains: ${TOPIC_NAMES[first]}`;
    if (first === "other") chip.disabled = true;
    li.append(chip, el("span", "reason-text", text));
    ol.append(li);
  });
  box.append(ol);
  if (plan.fallback_from) box.append(el("p", "note reason", `Loaded this way after: ${plan.fallback_from}`));
  return box;
}

function dryRunNote(plan) {
  const d = plan.dry_run;
  if (!d) return null;
  const p = el("p", "note dry-run");
  p.title = "A dry run: llama.cpp sets the model up without reading its weights and reports the memory it would take.";
  p.textContent = d.ok
    ? `Checked by llama.cpp before loading: it counts ${size(d.total_bytes)}, within ${(100 * Math.abs(d.difference ?? 0)).toFixed(1)}% of the plan's ${size(d.analytic_total_bytes)}.`
    : `llama.cpp's check of this plan failed: ${d.error || "no reason given"}.`;
  return p;
}

function contextPicker(plan, info, nowCtx, asked, onPick) {
  const label = el("label", "context-picker");
  label.title = "Plan again for another context length: see what it would cost in memory and speed. The model is not reloaded.";
  const select = el("select");
  select.setAttribute("aria-label", "Plan for a context of");
  const option = (value, text) => {
    const o = el("option", "", text);
    o.value = value;
    return o;
  };
  select.append(option("", `as it runs now (${nowCtx.toLocaleString("en")})`));
  const top = Math.max(info?.n_ctx_train || 0, nowCtx);
  for (const n of CONTEXTS) if (n <= top) select.append(option(String(n), `${n.toLocaleString("en")} tokens`));
  select.append(option("0", "the longest that costs no speed"));
  select.value = asked == null ? "" : String(asked);
  select.addEventListener("change", () => onPick(select.value === "" ? null : Number(select.value)));
  label.append(el("span", "", "Plan for a context of"), select);
  return label;
}

// The parts that follow the plan: choices, memory and reasons (the speed chart keeps the plan the
// model runs with: a what-if context does not change what replies measured).
function fillPlan(root, ctx, plan, asked) {
  const { info, names, modelId } = ctx;
  const choicesPanel = sectionPanel("plan-choices", "How it runs here");
  const tools = el("div", "plan-tools");
  tools.append(contextPicker(plan, info, ctx.nowCtx, asked, (n) => replan(root, ctx, n)));
  if (asked != null) tools.append(el("span", "what-if", "A what-if: the model does not run this way now."));
  choicesPanel.append(tools, choices(root, plan, info, names));
  const memoryPanel = sectionPanel("plan-memory", "Memory per device", HELP.memory);
  memoryPanel.append(memoryChart(plan.memory, { label: "Where the model's memory goes on each device", names }));
  const note = dryRunNote(plan);
  if (note) memoryPanel.append(note);
  root.querySelector(".plan-choices")?.replaceWith(choicesPanel);
  root.querySelector(".plan-memory")?.replaceWith(memoryPanel);
  root.querySelector(".plan-reasons")?.replaceWith(reasonsList(root, plan));
  root.dataset.nCtx = String(plan.n_ctx);
  root.dataset.modelId = modelId;
}

async function replan(root, ctx, nCtx) {
  const token = planView.token;
  root.querySelector(".plan-tools select")?.setAttribute("disabled", "");
  const q = nCtx == null ? "" : `?n_ctx=${nCtx}`;
  try {
    const plan = await api("GET", `/api/models/${encodeURIComponent(ctx.modelId)}/plan${q}`);
    if (token !== planView.token) return;
    fillPlan(root, ctx, plan, nCtx);
  } catch (err) {
    if (token !== planView.token) return;
    root.querySelector(".plan-tools select")?.removeAttribute("disabled");
    root.querySelector(".plan-choices")?.append(errorBox(err));
  }
}

function planHeader(model, served, info) {
  const head = el("header", "plan-head");
  const title = el("div", "plan-title");
  const h = el("h2", "", modelLabel(model));
  h.title = modelTitle(model);
  title.append(h);
  if (model.is_default) title.append(el("span", "badge", "default"));
  if (served?.loaded) title.append(el("span", "badge loaded", "loaded"));
  if (model.missing) title.append(el("span", "badge missing", "missing"));
  head.append(title);
  const meta = [size(model.disk_bytes || model.size_bytes), model.quant || info?.file_type];
  if (info) {
    meta.push(`${info.architecture}, ${info.n_params >= 1e9 ? (info.n_params / 1e9).toFixed(1) + " B" : Math.round(info.n_params / 1e6) + " M"} parameters`);
    meta.push(`${info.n_layer} layers`);
  }
  if (served?.drafts?.length) meta.push(`can be drafted for by ${served.drafts.join(", ")}`);
  head.append(el("p", "muted plan-meta", meta.filter(Boolean).join(" · ")));
  return head;
}

/**
 * The plan view of one installed model, into the Models page's view: how it runs here and why,
 * its memory per device, and its replies' speed against the prediction. For #/models/<id>.
 */
export async function renderModelPlan(view, modelId) {
  const token = ++planView.token;
  page.view = view;
  page.visible = true;
  view.dataset.view = "plan";
  view.dataset.model = modelId;
  const root = el("div", "plan-view");
  root.dataset.model = modelId;
  const back = el("a", "back", "← Models");
  back.href = "#/models";
  const crumbs = el("nav", "crumbs");
  crumbs.setAttribute("aria-label", "Back to the models");
  crumbs.append(back);
  root.append(crumbs, el("p", "muted loading", "Planning how it runs on this machine…"));
  view.replaceChildren(root);
  view.scrollTop = 0;
  const path = `/api/models/${encodeURIComponent(modelId)}`;
  const [installed, served, hw, info, speed, plan] = await Promise.all([
    api("GET", "/api/hub/models").catch(() => []),
    api("GET", "/api/models").catch(() => []),
    api("GET", "/api/hardware").catch(() => null),
    api("GET", `${path}/info`).catch(() => null),
    api("GET", `${path}/speed?limit=50`).catch(() => null),
    api("GET", `${path}/plan`).catch((err) => ({ error: err })),
  ]);
  if (token !== planView.token || !view.contains(root)) return;  // another view was opened meanwhile
  const model = installed.find((m) => m.id === modelId) || served.find((m) => m.id === modelId);
  if (!model) {
    root.replaceChildren(crumbs, errorBox({ message: `No model with the id ${modelId} is installed.`, code: "not_found" }));
    return;
  }
  const names = gpuNames(hw);
  const ctx = { info, names, modelId, nowCtx: plan.error ? 0 : plan.n_ctx };
  root.replaceChildren(crumbs, planHeader(model, served.find((m) => m.id === modelId), info));
  const layout = el("div", "plan-layout");
  const main = el("div", "plan-main");
  const side = el("div", "plan-side");
  layout.append(main, side);
  root.append(layout);
  if (plan.error) {
    main.append(errorBox(plan.error));
    if (model.missing) main.append(el("p", "muted", `Its file is missing: ${model.missing_files.join(", ")}.`));
  } else {
    main.append(el("section", "plan-choices"), el("section", "plan-memory"));
    side.append(el("section", "plan-reasons"));
    fillPlan(root, ctx, plan, null);
  }
  const speedPanel = sectionPanel("plan-speed", "Speed: measured against predicted", HELP.speed);
  const predicted = speed?.predicted_tps ?? (plan.error ? null : plan.decode_tps);
  speedPanel.append(speedChart({ replies: speed?.replies || [], predicted_tps: predicted }, {
    title: "Tokens per second while writing each recent reply, against the plan's prediction",
  }));
  main.append(speedPanel);
}
