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
