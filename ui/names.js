// One way to name a model everywhere on the page: its display name (with the quant), else its id.
export function modelLabel(m) {
  if (!m) return "";
  return m.name || m.id || "";
}
