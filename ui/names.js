// One way to name a model everywhere on the page: its display name (with the quant), else its id.
export function modelLabel(m) {
  if (!m) return "";
  return m.name || m.id || "";
}

function bytes(n) {
  for (const [unit, shift] of [["GiB", 30], ["MiB", 20]]) {
    const v = n / 2 ** shift;
    if (v >= 1) return `${v.toFixed(v < 10 ? 1 : 0)} ${unit}`;
  }
  return `${n} B`;
}

// A tooltip that tells two models with close names apart: the label, the id, the quant and size.
export function modelTitle(m) {
  if (!m) return "";
  const label = modelLabel(m);
  const details = [];
  if (m.id && m.id !== label) details.push(`id ${m.id}`);
  if (m.quant) details.push(`quantization ${m.quant}`);
  const n = m.disk_bytes || m.size_bytes;
  if (n) details.push(bytes(n));
  return details.length ? `${label}\n${details.join(" · ")}` : label;
}

// The address of a model's plan view (how it runs on this machine), so that links, Back and
// bookmarks all work the same way.
export function modelHref(id) {
  return `#/models/${encodeURIComponent(id)}`;
}

// What a predicted speed stands on (the plan's or verdict's speed_basis), in words, with the
// longer explanation for a tooltip: a measurement is never mistaken for an estimate.
const BASIS = {
  measured: ["measured on this machine", "Calibrated by this model's own replies on this machine."],
  calibrated: ["estimated, corrected by replies here",
    "Not measured with this model yet: the planner's estimate, corrected by other models' replies on this machine."],
  estimated: ["estimated", "Nothing measured on this machine yet: the planner's estimate from the hardware and the model file."],
};

export function speedBasis(thing) {
  const [words, why] = BASIS[thing?.speed_basis] ?? BASIS.estimated;
  const n = thing?.speed_samples;
  return { words, title: thing?.speed_basis === "measured" && n ? `${why} (${n} replies)` : why };
}
