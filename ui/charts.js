// Charts drawn as SVG by hand: where a plan puts its memory on each device, and how fast replies
// were against the prediction. The page's CSP allows no style attributes, so colours and fonts
// come from classes in pages.css; geometry is SVG attributes. Charts are drawn in real pixels at
// their container's width (and redrawn when it changes) so that text keeps a readable size.

const NS = "http://www.w3.org/2000/svg";

export function size(n) {
  if (n === null || n === undefined) return "?";
  for (const [unit, shift] of [["GiB", 30], ["MiB", 20], ["KiB", 10]]) {
    const v = n / 2 ** shift;
    if (v >= 1) return `${Number.isInteger(v) ? v : v.toFixed(1)} ${unit}`;
  }
  return `${n} B`;
}

export function tps(v) {
  if (v === null || v === undefined) return "?";
  return v.toFixed(v < 100 ? 1 : 0);
}

// The parts of a device's memory in a plan, with words for people who do not know the terms.
export const MEMORY_PARTS = [
  ["weights", "Weights", "The model itself: its parameters, read once for every token it writes."],
  ["kv", "KV cache", "KV cache: the model's memory of the conversation so far. It grows with the context length."],
  ["compute", "Compute", "Compute buffers: scratch space for the arithmetic on a batch of tokens."],
  ["overhead", "Runtime", "What the GPU driver and its libraries hold on the device (CUDA context, kernels)."],
  ["margin", "Margin", "Kept free on purpose, so that other programs and short memory spikes do not make loading fail."],
];

function svg(tag, attrs = {}, cls) {
  const node = document.createElementNS(NS, tag);
  if (cls) node.setAttribute("class", cls);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function text(x, y, content, cls, attrs = {}) {
  const t = svg("text", { x, y, ...attrs }, cls);
  t.textContent = content;
  return t;
}

function tip(node, content) {
  const t = svg("title");
  t.textContent = content;
  node.append(t);
  return node;
}

function html(tag, cls, content) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (content !== undefined && content !== null) node.textContent = content;
  return node;
}

// Draws with draw(width) once the figure has a width, and again when its width changes. The
// redraw waits for the next frame: drawing inside the observer's callback would be a layout loop.
function responsive(fig, draw) {
  let drawn = 0;
  const redraw = () => {
    const w = Math.floor(fig.clientWidth);
    if (w <= 0 || w === drawn) return;
    drawn = w;
    draw(w);
  };
  if (typeof ResizeObserver === "function") new ResizeObserver(() => requestAnimationFrame(redraw)).observe(fig);
  requestAnimationFrame(redraw);
}

function figure(cls, title) {
  const fig = html("figure", `chart ${cls}`);
  if (title) fig.append(html("figcaption", "chart-title", title));
  const plot = html("div", "chart-plot");
  fig.append(plot);
  return { fig, plot };
}

function deviceLabel(device, names) {
  if (device === "CPU") return "RAM (CPU)";
  const m = /^GPU(\d+)$/.exec(device);
  if (!m) return device;
  const name = names?.[device];
  return `GPU ${m[1]} VRAM${name ? ` · ${name}` : ""}`;
}

function deviceDetail(dev) {
  const planned = `${size(dev.total)} planned + ${size(dev.margin)} margin`;
  if (dev.capacity == null) return `${planned} · free memory unknown`;
  if (dev.fits === false) return `needs ${size(dev.total + dev.margin)}, only ${size(dev.capacity)} free: does not fit`;
  return `${planned} · ${size(dev.capacity)} free`;
}

// Widths of the parts of one bar in pixels: each part that exists stays visible (a few pixels at
// least), however small against the device's memory; the title of each part gives its exact size.
function segments(dev, scale, width, minPx) {
  let x = 0;
  const out = [];
  for (const [key, label, help] of MEMORY_PARTS) {
    const bytes = dev[key];
    if (!bytes) continue;
    const w = Math.max(minPx, (bytes / scale) * width);
    out.push({ key, label, help, bytes, x, w });
    x += w;
  }
  return out;
}

/**
 * Memory per device as stacked horizontal bars: weights, KV cache, compute, runtime overhead and
 * margin, against the memory free on that device when the plan was made (the bar's full length,
 * or the line where it ends when the plan needs more). When the plan takes under a quarter of
 * the device, a thinner bar below enlarges what it takes, so its parts can be compared.
 * memory: the plan's memory list; opts: {title (a caption), label (for screen readers, when there
 * is no caption), names: {GPU0: "NVIDIA ..."}, compact}.
 */
export function memoryChart(memory, opts = {}) {
  // compact charts (a repo's file cards) carry no caption: the card says what they are
  const { fig, plot } = figure("memory-chart", opts.compact ? null : opts.title);
  if (opts.compact && !opts.label) opts = { ...opts, label: opts.title };
  if (opts.compact) fig.classList.add("compact");
  const summary = memory.map((d) => `${deviceLabel(d.device, opts.names)}: ${deviceDetail(d)}`).join("; ");
  const draw = (width) => {
    const compact = !!opts.compact;
    const labelH = compact ? 14 : 18;
    const barH = compact ? 10 : 20;
    const zoomGap = compact ? 0 : 12;
    const zoomH = 8;
    const gap = compact ? 8 : 14;
    const charW = compact ? 6.2 : 6.8;  // an estimate: text cannot be measured before it is drawn
    const chartName = opts.label || opts.title || "Memory per device";
    const root = svg("svg", { width, role: "img", "aria-label": `${chartName}: ${summary}` });
    tip(root, chartName);
    let y = 0;
    for (const dev of memory) {
      const scale = Math.max(dev.capacity || 0, dev.total + dev.margin) || 1;
      const g = svg("g", { "data-device": dev.device }, `mem-device${dev.fits === false ? " overflow" : ""}`);
      const name = deviceLabel(dev.device, opts.names);
      const detail = deviceDetail(dev);
      const twoLines = (name.length + detail.length + 4) * charW > width;
      g.append(text(0, y + labelH - 4, name, "device-name"));
      if (twoLines) {
        g.append(text(0, y + labelH * 2 - 4, detail, "device-detail"));
        y += labelH;
      } else {
        g.append(text(width, y + labelH - 4, detail, "device-detail", { "text-anchor": "end" }));
      }
      const top = y + labelH;
      g.append(tip(svg("rect", { x: 0, y: top, width, height: barH, rx: 3 }, "track"),
        dev.capacity == null ? "Free memory unknown" : `Free on ${name} when planned: ${size(dev.capacity)}`));
      const parts = segments(dev, scale, width, compact ? 2 : 3);
      for (const p of parts) {
        const rect = svg("rect", { x: p.x.toFixed(1), y: top, width: p.w.toFixed(1), height: barH, "data-part": p.key }, `seg ${p.key}`);
        g.append(tip(rect, `${p.label}: ${size(p.bytes)} on ${name}\n${p.help}`));
      }
      if (dev.capacity != null) {
        const cx = Math.min(width - 1, (dev.capacity / scale) * width);
        g.append(tip(svg("line", { x1: cx.toFixed(1), x2: cx.toFixed(1), y1: top - 3, y2: top + barH + 3 }, "capacity"),
          `${size(dev.capacity)} free on ${name} when planned`));
      }
      y = top + barH;
      const used = parts.length ? parts[parts.length - 1].x + parts[parts.length - 1].w : 0;
      const planned = parts.filter((p) => p.key !== "margin");
      const plannedEnd = planned.length ? planned[planned.length - 1].x + planned[planned.length - 1].w : 0;
      if (!compact && dev.total && used < width / 4) {
        // the enlargement: the planned bytes (margin left out) stretched to the full width
        const zoomTop = y + zoomGap;
        g.append(tip(svg("polygon", {
          points: `0,${y} ${plannedEnd.toFixed(1)},${y} ${width},${zoomTop} 0,${zoomTop}`,
        }, "zoom-guide"), `Enlarged below: the ${size(dev.total)} the plan takes on ${name}`));
        let x = 0;
        for (const [key, label] of MEMORY_PARTS) {
          if (!dev[key] || key === "margin") continue;
          const w = (dev[key] / dev.total) * width;
          g.append(tip(svg("rect", { x: x.toFixed(1), y: zoomTop, width: w.toFixed(1), height: zoomH, "data-part": key }, `zoom-seg ${key}`),
            `${label}: ${size(dev[key])} (${Math.round((100 * dev[key]) / dev.total)}% of the ${size(dev.total)} planned)`));
          x += w;
        }
        y = zoomTop + zoomH + 14;
        g.append(text(0, y - 2, `enlarged: the ${size(dev.total)} planned, without the margin`, "zoom-label"));
      }
      root.append(g);
      y += gap;
    }
    root.setAttribute("height", Math.max(1, y - gap + 2));
    plot.replaceChildren(root);
  };
  responsive(fig, draw);
  fig.append(memoryLegend(memory, opts.names));
  return fig;
}

function memoryLegend(memory, names) {
  const ul = html("ul", "chart-legend");
  for (const [key, label, help] of MEMORY_PARTS) {
    const on = memory.filter((d) => d[key]);
    if (!on.length) continue;
    const li = html("li", "legend-item");
    li.dataset.part = key;
    li.title = [help, ...(on.length > 1 ? on.map((d) => `${deviceLabel(d.device, names)}: ${size(d[key])}`) : [])].join("\n");
    li.append(html("span", `swatch ${key}`), html("span", "legend-label", label),
      html("span", "legend-size", size(on.reduce((s, d) => s + d[key], 0))));
    ul.append(li);
  }
  if (memory.some((d) => d.capacity != null)) {
    const li = html("li", "legend-item");
    li.dataset.part = "free";
    li.title = "The bar's full length is the memory that was free on the device when the plan was made; the line marks where it ends.";
    li.append(html("span", "swatch free"), html("span", "legend-label", "Free when planned"));
    ul.append(li);
  }
  return ul;
}

// Round numbers for an axis: 1, 2, 2.5 or 5 times a power of ten.
function niceStep(span, ticks) {
  const raw = span / Math.max(1, ticks);
  const pow = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * pow).find((s) => s >= raw);
}

function when(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "";
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function drafted(r) {
  return r.acceptance !== null && r.acceptance !== undefined;
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

const BAND = 0.15;  // "close to the prediction": within 15% either way

function replyTitle(r, i, n) {
  const lines = [`Reply ${i + 1} of ${n} · ${when(r.created_at)}`, `${tps(r.decode_tps)} tokens/s measured`];
  if (r.predicted_tps) lines.push(`${tps(r.predicted_tps)} predicted then (${(r.decode_tps / r.predicted_tps).toFixed(2)}x)`);
  if (r.completion_tokens != null) lines.push(`${r.completion_tokens} tokens written`);
  if (drafted(r)) lines.push(`speculative drafting (${(r.spec_source || "").replace(/^draft:/, "draft ") || "lookup"}): ${Math.round(100 * r.acceptance)}% of drafted tokens accepted`);
  return lines.join("\n");
}

/**
 * Measured decode speed of recent replies (a point each, oldest on the left) against the plan's
 * prediction (a dashed line, with a band of ±15% around it).
 * speed: the answer of GET /api/models/{id}/speed; opts: {title}.
 */
export function speedChart(speed, opts = {}) {
  const { fig, plot } = figure("speed-chart", opts.title);
  const replies = (speed?.replies || []).filter((r) => r.decode_tps > 0);
  const predicted = speed?.predicted_tps || null;
  if (!replies.length) {
    const empty = html("p", "chart-empty", "No replies yet with this model.");
    empty.append(html("span", "muted", predicted
      ? ` Each reply's speed will show here beside the ${tps(predicted)} tokens/s predicted.`
      : " Each reply's speed will show here beside the prediction."));
    plot.replaceWith(empty);
    fig.dataset.points = "0";
    return fig;
  }
  fig.dataset.points = String(replies.length);
  const n = replies.length;
  const measured = replies.map((r) => r.decode_tps);
  const top = Math.max(...measured, predicted ? predicted * (1 + BAND) : 0);
  const step = niceStep(top * 1.08, 4);
  const yMax = Math.ceil((top * 1.08) / step) * step;
  const aria = `${opts.title || "Speed"}: ${n} repl${n === 1 ? "y" : "ies"}, median ${tps(median(measured))} tokens/s` +
    (predicted ? ` against ${tps(predicted)} predicted` : "");
  const draw = (width) => {
    const H = 210;
    // the right gutter holds the prediction's label, clear of the points (7.5 px a bold character)
    const label = predicted ? `predicted ${tps(predicted)}` : "";
    const pad = { left: 44, right: predicted ? Math.ceil(label.length * 7.5) + 12 : 14, top: 22, bottom: 30 };
    const plotW = Math.max(40, width - pad.left - pad.right);
    const plotH = H - pad.top - pad.bottom;
    const y = (v) => pad.top + plotH * (1 - v / yMax);
    const x = (i) => pad.left + plotW * ((i + 0.5) / n);
    const root = svg("svg", { width, height: H, role: "img", "aria-label": aria });
    tip(root, aria);
    root.append(text(0, 12, "tokens/s", "axis-title"));
    for (let v = 0; v <= yMax + 1e-9; v += step) {
      root.append(svg("line", { x1: pad.left, x2: pad.left + plotW, y1: y(v).toFixed(1), y2: y(v).toFixed(1) }, v ? "grid" : "axis"));
      root.append(text(pad.left - 6, y(v) + 4, String(Math.round(v * 10) / 10), "tick-label", { "text-anchor": "end" }));
    }
    if (predicted) {
      const hi = Math.min(yMax, predicted * (1 + BAND));
      const lo = predicted * (1 - BAND);
      root.append(tip(svg("rect", { x: pad.left, y: y(hi).toFixed(1), width: plotW, height: (y(lo) - y(hi)).toFixed(1) }, "band"),
        `Within ${Math.round(100 * BAND)}% of the prediction: ${tps(lo)} to ${tps(predicted * (1 + BAND))} tokens/s`));
      root.append(tip(svg("line", { x1: pad.left, x2: pad.left + plotW, y1: y(predicted).toFixed(1), y2: y(predicted).toFixed(1) }, "predicted"),
        `Predicted by the plan: ${tps(predicted)} tokens/s`));
      root.append(text(pad.left + plotW + 6, y(predicted) + 4, label, "predicted-label"));
    }
    if (n > 1) {
      const points = replies.map((r, i) => `${x(i).toFixed(1)},${y(r.decode_tps).toFixed(1)}`).join(" ");
      root.append(svg("polyline", { points }, "trend"));
    }
    const r = n > 40 ? 3 : 4.5;
    replies.forEach((reply, i) => {
      const cls = `point${drafted(reply) ? " drafted" : ""}`;
      const dot = drafted(reply)
        ? svg("rect", { x: (x(i) - r).toFixed(1), y: (y(reply.decode_tps) - r).toFixed(1), width: 2 * r, height: 2 * r }, cls)
        : svg("circle", { cx: x(i).toFixed(1), cy: y(reply.decode_tps).toFixed(1), r }, cls);
      dot.setAttribute("data-tps", String(reply.decode_tps));
      root.append(tip(dot, replyTitle(reply, i, n)));
    });
    const base = H - 10;
    if (n > 1) {
      root.append(text(pad.left, base, "← older", "tick-label"));
      root.append(text(pad.left + plotW, base, "newer →", "tick-label", { "text-anchor": "end" }));
    }
    root.append(text(pad.left + plotW / 2, base, n === 1 ? "the only reply so far" : `last ${n} replies`, "tick-label", { "text-anchor": "middle" }));
    plot.replaceChildren(root);
  };
  responsive(fig, draw);
  fig.append(speedLegend(replies, predicted));
  fig.append(speedSummary(replies, predicted));
  return fig;
}

function speedLegend(replies, predicted) {
  const ul = html("ul", "chart-legend");
  const item = (cls, label, help) => {
    const li = html("li", "legend-item", null);
    li.title = help;
    li.append(html("span", `swatch ${cls}`), html("span", "legend-label", label));
    ul.append(li);
  };
  if (replies.some((r) => !drafted(r))) item("point", "A reply", "Its measured speed while writing (decode): tokens written per second, the prompt's reading left out.");
  if (replies.some(drafted)) item("point drafted", "A reply with drafting", "Speculative decoding guessed tokens ahead and the model checked them in one go: faster than plain writing when the guesses are accepted.");
  if (predicted) item("predicted", "Predicted", `What the plan predicts for plain writing on this machine, with a band of ±${Math.round(100 * BAND)}%.`);
  return ul;
}

function speedSummary(replies, predicted) {
  const m = median(replies.map((r) => r.decode_tps));
  const p = html("p", "chart-summary");
  if (replies.length === 1) {
    p.textContent = `One reply so far, at ${tps(m)} tokens/s` + (predicted ? ` against ${tps(predicted)} predicted.` : ".") +
      " More replies make the comparison steadier.";
  } else {
    p.textContent = `Median of the last ${replies.length} replies: ${tps(m)} tokens/s` +
      (predicted ? `, ${(m / predicted).toFixed(2)}x the ${tps(predicted)} predicted.` : ".");
  }
  if (replies.some((r) => (r.completion_tokens ?? 99) < 32)) {
    p.title = "Short replies are timed over few tokens: their speeds scatter more.";
  }
  return p;
}
