// The Hardware page: CPU, memory and bandwidth, each GPU with a VRAM bar, the engine build.
import { el } from "./dom.js";
import { api } from "./api.js";


export function size(n) {
  if (n === null || n === undefined) return "?";
  for (const [unit, shift] of [["GiB", 30], ["MiB", 20], ["KiB", 10]]) {
    const v = n / 2 ** shift;
    if (v >= 1) return `${Number.isInteger(v) ? v : v.toFixed(1)} ${unit}`;
  }
  return `${n} B`;
}

function card(title, rows) {
  const box = el("div", "hw-card");
  box.append(el("h3", "", title));
  const dl = el("dl");
  for (const [k, v] of rows) {
    if (v === null || v === undefined || v === "") continue;
    dl.append(el("dt", "", k), el("dd", "", String(v)));
  }
  box.append(dl);
  return box;
}

function vramBar(g) {
  const total = g.memory_total_bytes;
  const wrap = el("div", "vram");
  if (!total) return wrap;
  const others = g.memory_used_by_others_bytes ?? 0;
  const free = g.memory_free_bytes ?? total - others;
  const bar = el("div", "bar");
  const used = el("span", "others");
  used.style.width = `${(100 * others) / total}%`;
  used.title = `${size(others)} used by other programs`;
  const rest = el("span", "free");
  rest.style.width = `${(100 * free) / total}%`;
  rest.title = `${size(free)} free`;
  bar.append(used, rest);
  wrap.append(bar, el("div", "legend", `${size(others)} used by other programs · ${size(free)} free of ${size(total)}`));
  return wrap;
}

const PARTS = [["weights", "Weights"], ["kv", "KV cache"], ["compute", "Compute"], ["overhead", "Runtime"], ["margin", "Margin"]];

function memoryMap(plan) {
  const box = el("div", "hw-card plan");
  box.append(el("h3", "", `How the model runs: ${plan.decode_tps.toFixed(1)} tokens/s predicted`));
  const m = plan.measured;
  if (m && m.count) {
    box.append(el("p", "measured", `Measured here: ${m.median_measured_tps.toFixed(1)} tokens/s (median of the last ${m.count} replies; predicted for them ${m.median_predicted_tps.toFixed(1)} before calibration)`));
  }
  for (const dev of plan.memory) {
    const row = el("div", "device");
    row.dataset.device = dev.device;
    const cap = dev.capacity || dev.total + dev.margin;
    const bar = el("div", "bar");
    for (const [key, label] of PARTS) {
      if (!dev[key]) continue;
      const part = el("span", `part ${key}`);
      part.style.width = `${(100 * dev[key]) / cap}%`;
      part.title = `${label}: ${size(dev[key])}`;
      bar.append(part);
    }
    const legend = PARTS.filter(([k]) => dev[k]).map(([k, label]) => `${label} ${size(dev[k])}`).join(" · ");
    row.append(el("div", "device-name", dev.device), bar,
      el("div", "legend", `${legend} · free ${size(Math.max(0, cap - dev.total - dev.margin))} of ${size(cap)}`));
    box.append(row);
  }
  const spec = plan.draft
    ? `Speculative decoding: ${plan.draft.model} drafts on ${plan.draft.device}, ${plan.draft.k} tokens a step, ` +
      `${plan.draft.predicted_tps.toFixed(1)} tokens/s predicted (plain ${plan.draft.plain_tps.toFixed(1)})`
    : `Speculative decoding: ${plan.speculative === "prompt_lookup" ? "prompt lookup" : "off"}`;
  box.append(el("p", "speculative", spec));
  const ul = el("ul", "reasons");
  for (const r of plan.reasons) ul.append(el("li", "", r));
  box.append(ul);
  return box;
}

function modelList(models) {
  const box = el("div", "hw-card models");
  box.append(el("h3", "", "Installed models"));
  const ul = el("ul");
  for (const m of models) {
    const flags = [m.loaded ? "loaded" : null, m.is_default ? "default" : null].filter(Boolean).join(", ");
    const drafts = m.drafts.length ? `can be drafted for by ${m.drafts.join(", ")}` : "no installed model can draft for it";
    const li = el("li", "", `${m.name} (${size(m.size_bytes)}${flags ? ", " + flags : ""}): ${drafts}`);
    li.dataset.model = m.id;
    ul.append(li);
  }
  box.append(ul);
  return box;
}

export async function renderHardware(view, loadedModelId) {
  const id = loadedModelId ? encodeURIComponent(loadedModelId) : null;
  const [hw, info, plan, models] = await Promise.all([
    api("GET", "/api/hardware"),
    id ? api("GET", `/api/models/${id}/info`).catch(() => null) : null,
    id ? api("GET", `/api/models/${id}/plan`).catch(() => null) : null,
    api("GET", "/api/models").catch(() => []),
  ]);
  view.replaceChildren();
  view.append(el("h2", "", "This machine"));
  if (hw.engine.advice) view.append(el("div", "warning", hw.engine.advice));
  const grid = el("div", "hw-grid");
  const c = hw.cpu;
  grid.append(card("CPU", [
    ["Model", c.brand],
    ["Cores", `${c.physical_cores ?? "?"} physical, ${c.logical_cores ?? "?"} logical`],
    ["Features", c.features.join(", ") || "none detected"],
    ["Cache", `L1d ${size(c.l1d_bytes)} · L2 ${size(c.l2_bytes)} · L3 ${size(c.l3_bytes)}`],
  ]));
  const m = hw.memory;
  grid.append(card("Memory", [
    ["Total", size(m.total_bytes)],
    ["Available", size(m.available_bytes)],
    ["Read bandwidth", m.read_bandwidth_gbps ? `${m.read_bandwidth_gbps} GB/s (measured)` : "not measured"],
    ["Swap", size(m.swap_total_bytes)],
  ]));
  if (!hw.gpus.length) grid.append(card("GPU", [["Found", "none"]]));
  for (const g of hw.gpus) {
    const box = card(`GPU ${g.index}: ${g.name}`, [
      ["Memory", g.unified ? "shared with the CPU (unified)" : "dedicated"],
      ["Compute capability", g.compute_capability],
      ["PCIe link", g.pcie_gen ? `${g.pcie_gen}.0 x${g.pcie_width} (${g.pcie_gbps} GB/s)` : null],
      ["Power", g.power_limit_w ? `${g.power_draw_w ?? "?"} of ${g.power_limit_w} W` : null],
      ["Driver", g.driver],
    ]);
    box.classList.add("gpu");
    box.append(vramBar(g));
    grid.append(box);
  }
  const offload = { true: "yes", false: "no: this build runs on the CPU only", null: "unknown" }[hw.engine.supports_gpu_offload];
  grid.append(card("Engine", [["GPU offload", offload], ["Build", hw.engine.system_info]]));
  grid.append(card("Power and disk", [
    ["Power", hw.power.on_battery === null ? null : hw.power.on_battery ? "on battery" : "on mains"],
    ["Free disk", hw.disk.free_bytes !== null ? `${size(hw.disk.free_bytes)} in ${hw.disk.path}` : null],
  ]));
  if (info) {
    const kv = [...new Set(info.n_head_kv)].join("/");
    grid.append(card(`Model: ${info.name ?? info.id}`, [
      ["Architecture", `${info.architecture}, ${info.file_type ?? info.dominant_type}`],
      ["Size", `${size(info.weight_bytes)} of weights, ${(info.n_params / 1e9).toFixed(2)} B parameters`],
      ["Layers", info.n_layer],
      ["Attention", `${info.n_head} heads, ${kv} KV heads`],
      ["Trained context", info.n_ctx_train],
      ["Sliding window", info.sliding_window ? `${info.sliding_window} tokens` : null],
    ]));
  }
  view.append(grid);
  if (plan) view.append(memoryMap(plan));
  if (models.length) view.append(modelList(models));
  for (const p of hw.problems) view.append(el("p", "muted", `Not read: ${p}`));
}
