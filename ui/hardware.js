// The Hardware page: CPU, memory and bandwidth, each GPU with a VRAM bar, the engine build, and
// the default model's memory map linked to its plan.
import { el } from "./dom.js";
import { api } from "./api.js";
import { memoryChart, size, tps } from "./charts.js";
import { modelHref, modelLabel, modelTitle, speedBasis } from "./names.js";

export { size };


// "Q4_0@...x16/t1" -> ["Q4_0@...x16", " with 1 thread"]: a reading timed at another thread count.
function withThreads(key) {
  const [base, count] = key.split("/t");
  return [base, count ? ` with ${count} thread${count === "1" ? "" : "s"}` : ""];
}

// "Q4_1@576x1536x9x3x30" -> "Q4_1 in 576-wide layers"
function kindLabel(kind) {
  const [quant, dims] = kind.split("@");
  return `${quant} in ${(dims || "").split("x")[0]}-wide layers`;
}

// [["f16@Q4_1@576x...x30", 488], ...] -> "Q4_1 in 576-wide layers: f16 488 ns · q8_0 145 ns ..."
function kvCosts(costs, where = "on this machine, all cores unless said") {
  const order = ["f16", "q8_0", "q4_0"];
  const groups = new Map();
  for (const [key, ns] of costs) {
    if (!key.includes("@")) continue;  // a profile saved by an older version
    const [k, threads] = withThreads(key);
    const [type, kind] = [k.slice(0, k.indexOf("@")), k.slice(k.indexOf("@") + 1)];
    const layers = `${kindLabel(kind)}${threads}`;
    if (!groups.has(layers)) groups.set(layers, []);
    groups.get(layers).push([type, ns]);
  }
  const parts = [...groups].map(([layers, rows]) => `${layers}: ` + rows
    .sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]))
    .map(([type, ns]) => `${type} ${Math.round(ns)} ns`).join(" · "));
  return parts.join("; ") + ` per cached position and layer (measured ${where})`;
}

function card(title, rows) {
  const box = el("div", "hw-card");
  box.append(el("h3", "", title));
  const dl = el("dl");
  for (const [k, v, help] of rows) {
    if (v === null || v === undefined || v === "") continue;
    const dt = el("dt", help ? "explained" : "", k);
    if (help) dt.title = help;
    dl.append(dt, el("dd", "", String(v)));
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

function gpuNames(hw) {
  return Object.fromEntries((hw?.gpus || []).map((g) => [`GPU${g.index}`, g.name]));
}

// The card of the model answering by default: its memory map and reasons, with the way to its
// full plan (the Models page's plan view, where each choice leads to its reason).
function planCard(plan, model, hw) {
  const box = el("div", "hw-card plan");
  const head = el("div", "plan-card-head");
  const basis = speedBasis(plan);
  const title = el("h3", "", `How ${modelLabel(model)} runs: ${tps(plan.decode_tps)} tokens/s predicted, ${basis.words}`);
  title.title = `${modelTitle(model)}
${basis.title}`;
  const open = el("a", "open-plan", "Open its plan →");
  open.href = modelHref(model.id);
  open.title = "Each choice of the plan, its memory map, its speed against real replies, and why";
  head.append(title, open);
  box.append(head);
  const m = plan.measured;
  if (m && m.count) {
    box.append(el("p", "measured", `Measured here: ${tps(m.median_measured_tps)} tokens/s (median of the last ${m.count} replies; predicted for them ${tps(m.median_predicted_tps)} before calibration)`));
  }
  box.append(memoryChart(plan.memory, { title: "Memory per device", names: gpuNames(hw) }));
  const spec = plan.draft
    ? `Speculative decoding: ${plan.draft.model} drafts on ${plan.draft.device}, ${plan.draft.k} tokens a step, ` +
      `${tps(plan.draft.predicted_tps)} tokens/s predicted (plain ${tps(plan.draft.plain_tps)})`
    : `Speculative decoding: ${plan.speculative === "prompt_lookup" ? "prompt lookup" : "off"}`;
  const specLine = el("p", "speculative", spec);
  specLine.title = "Speculative decoding: tokens are guessed ahead (from the conversation, or by a small draft model) and the model checks several at once; right guesses make replies faster.";
  box.append(specLine);
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
    const li = el("li");
    li.dataset.model = m.id;
    const link = el("a", "model-link", modelLabel(m));
    link.href = modelHref(m.id);
    link.title = `${modelTitle(m)}\nOpen its plan: how it runs on this machine`;
    li.append(link, ` (${size(m.size_bytes)}${flags ? ", " + flags : ""}): ${drafts}`);
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
    ["Features", c.features.join(", ") || "none detected", "Instruction sets the CPU offers; llama.cpp uses the widest (AVX2, AVX-512...) for faster arithmetic."],
    ["Cache", `L1d ${size(c.l1d_bytes)} · L2 ${size(c.l2_bytes)} · L3 ${size(c.l3_bytes)}`],
  ]));
  const m = hw.memory;
  grid.append(card("Memory", [
    ["Total", size(m.total_bytes)],
    ["Available", size(m.available_bytes), "Memory programs can take now without pushing others out: what a plan may use on the CPU."],
    ["Read bandwidth", m.read_bandwidth_gbps ? `${m.read_bandwidth_gbps} GB/s (measured)` : "not measured", "How fast the CPU reads memory. Writing a token reads every weight once, so on the CPU this sets the speed."],
    ["llama.cpp's CPU speed", (m.engine_rates || []).length ? m.engine_rates.map(([key, gbps]) => {
      const [k, threads] = withThreads(key);
      return `${kindLabel(k)}: ${gbps} GB/s${threads}`;
    }).join(" · ") + " (measured on this machine, all cores unless said)" : "not measured yet: speeds are estimated from the read bandwidth",
     "How fast llama.cpp's own CPU kernels stream each weight type, timed on a test slice of layers when the first model holding that type loads. Speed predictions for the CPU rest on these."],
    ["Long-context cost", (m.kv_costs || []).length ? kvCosts(m.kv_costs) : "not measured yet",
     "What each token already in the conversation adds to writing the next one, per KV cache type (per cached position and layer), timed in the model's own layers when it first loads. The planner picks the cache type that is fastest at the context you use."],
    ["Swap", size(m.swap_total_bytes)],
  ]));
  if (!hw.gpus.length) grid.append(card("GPU", [["Found", "none"]]));
  for (const g of hw.gpus) {
    const box = card(`GPU ${g.index}: ${g.name}`, [
      ["Memory", g.unified ? "shared with the CPU (unified)" : "dedicated"],
      ["Compute capability", g.compute_capability, "NVIDIA's generation number of the GPU: which features its kernels can use."],
      ["PCIe link", g.pcie_gen ? `${g.pcie_gen}.0 x${g.pcie_width} (${g.pcie_gbps} GB/s)` : null],
      ["Power", g.power_limit_w ? `${g.power_draw_w ?? "?"} of ${g.power_limit_w} W` : null],
      ["Driver", g.driver],
      ["llama.cpp's speed here", (g.engine_rates || []).length ? g.engine_rates.map(([key, gbps]) => `${kindLabel(key)}: ${gbps} GB/s`).join(" · ")
        + (g.handoff_s !== null && g.handoff_s !== undefined ? ` · hand-off to the CPU ${(g.handoff_s * 1000).toFixed(2)} ms a token` : "")
        + " (measured on this GPU)" : (hw.engine.supports_gpu_offload && (!g.unified || g.vendor === "apple")
          ? "not measured yet: estimated from the card's memory bandwidth" : null),
       "How fast llama.cpp streams each weight type on this GPU, timed on a test slice of layers when the first model holding that type loads, and what a token's trip between the CPU and this GPU adds when a model is split between them."],
      ["Long-context cost here", (g.kv_costs || []).length ? kvCosts(g.kv_costs, "on this GPU") : null,
       "What each token already in the conversation adds to writing the next one on this GPU, per KV cache type (per cached position and layer), timed in the model's own layers."],
    ]);
    box.classList.add("gpu");
    box.append(vramBar(g));
    grid.append(box);
  }
  const offload = { true: "yes", false: "no: this build runs on the CPU only", null: "unknown" }[hw.engine.supports_gpu_offload];
  grid.append(card("Engine", [["GPU offload", offload], ["Build", hw.engine.system_info]]));
  grid.append(card("Power and disk", [
    ["Power", hw.power.on_battery === null ? null : (hw.power.on_battery ? "on battery" : "on mains")
      + (hw.power.cpu_power_limit_w ? ` · CPU power limit ${Math.round(hw.power.cpu_power_limit_w)} W` : ""),
      "On battery the plan takes fewer threads when they are predicted within 10% of the fastest for less energy per token."],
    ["Energy", hw.energy_counters?.length ? `counted by ${hw.energy_counters.join(", ")}: each reply shows its joules per token`
      : "not counted: no readable RAPL or NVML energy counter here", "RAPL (the CPU package) is often readable by root only; NVML counts NVIDIA GPUs from Volta on."],
    ["Free disk", hw.disk.free_bytes !== null ? `${size(hw.disk.free_bytes)} in ${hw.disk.path}` : null],
  ]));
  const model = models.find((x) => x.id === loadedModelId) || (loadedModelId ? { id: loadedModelId } : null);
  if (info) {
    const kv = [...new Set(info.n_head_kv)].join("/");
    const modelCard = card(`Model: ${modelLabel(model)}`, [
      ["Architecture", `${info.architecture}, ${info.file_type ?? info.dominant_type}`],
      ["Size", `${size(info.weight_bytes)} of weights, ${(info.n_params / 1e9).toFixed(2)} B parameters`],
      ["Layers", info.n_layer, "The model's repeated building blocks; a plan puts each one on the GPU or the CPU."],
      ["Attention", `${info.n_head} heads, ${kv} KV heads`, "KV heads: how many sets of keys and values each layer keeps per token; fewer makes the KV cache (the memory of the conversation) smaller."],
      ["Trained context", info.n_ctx_train, "The longest text, in tokens, the model saw in training; past it, answers get weaker."],
      ["Sliding window", info.sliding_window ? `${info.sliding_window} tokens` : null, "Some layers only look at the latest tokens, which keeps their part of the KV cache small."],
    ]);
    modelCard.classList.add("model");
    modelCard.querySelector("h3").title = modelTitle(model);
    grid.append(modelCard);
  }
  view.append(grid);
  if (plan) view.append(planCard(plan, model, hw));
  if (models.length) view.append(modelList(models));
  for (const p of hw.problems) view.append(el("p", "muted", `Not read: ${p}`));
}
