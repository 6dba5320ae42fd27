// One message on screen: its text, the speed it was written at in plain words, the branch arrows
// and the actions (copy, edit, regenerate, fork).
import { el, button } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { modelLabel } from "./names.js";
import { modelById, on } from "./state.js";

const modelName = (id) => modelLabel(modelById(id) ?? { id });
const tps = (v) => `${v.toFixed(v < 10 ? 1 : 0)} tok/s`;
const seconds = (s) => (s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(1)} s`);

function speedAgainstPlan(ratio) {
  if (ratio >= 1.05) return `${ratio.toFixed(1)}× faster than predicted`;
  if (ratio > 0.95) return "as fast as predicted";
  if (ratio >= 0.5) return `${Math.round((1 - ratio) * 100)}% slower than predicted`;
  return `${(1 / ratio).toFixed(1)}× slower than predicted`;
}

function guesser(m) {
  if (m.spec_source === "prompt_lookup") {
    return "prompt lookup (words copied from earlier in the conversation)";
  }
  const draft = (m.spec_source || "").replace(/^draft:/, "");
  return draft ? `a small draft model (${modelName(draft)})` : "a small draft model";
}

// {text, title}: the line under a reply and the tooltip that explains each of its numbers.
export function stats(m) {
  const parts = [];
  const help = [];
  if (m.model_id) help.push(`Written by ${modelName(m.model_id)}.`);
  if (m.decode_tps) {
    parts.push(tps(m.decode_tps));
    help.push(`${tps(m.decode_tps)}: tokens written per second (a token is a word or a piece of one).`);
  }
  if (m.decode_tps && m.predicted_tps) {
    parts.push(speedAgainstPlan(m.decode_tps / m.predicted_tps));
    help.push(`Predicted: ${tps(m.predicted_tps)}, the decode speed the plan predicts for this model on this machine.`);
  }
  if (m.drafted_tokens) {
    parts.push(`${m.accepted_tokens ?? 0} of ${m.drafted_tokens} guessed tokens accepted`);
    help.push(
      `Guessed tokens (speculative decoding): ${guesser(m)} proposed ${m.drafted_tokens} tokens, and the model ` +
      `checked them in one go instead of writing them one by one; it kept ${m.accepted_tokens ?? 0}.`,
    );
  }
  if (m.completion_tokens != null) parts.push(`${m.completion_tokens} tokens`);
  const joules = [m.energy_cpu_j, m.energy_gpu_j].filter((j) => j != null);
  if (joules.length && m.completion_tokens) {
    const total = joules.reduce((a, b) => a + b, 0);
    const perToken = total / m.completion_tokens;
    parts.push(`${perToken < 10 ? perToken.toFixed(2) : perToken.toFixed(0)} J/token`);
    const sides = [m.energy_cpu_j != null ? `CPU package ${m.energy_cpu_j.toFixed(1)} J` : null,
      m.energy_gpu_j != null ? `GPU ${m.energy_gpu_j.toFixed(1)} J` : null].filter(Boolean).join(", ");
    help.push(`Energy: ${total.toFixed(1)} J for this reply (${sides}), as the hardware counts it; ` +
      "other programs running meanwhile are included.");
  }
  if (m.ttft_s != null) {
    parts.push(`started in ${seconds(m.ttft_s)}`);
    const read = m.prompt_tokens ? ` (${m.prompt_tokens} tokens)` : "";
    help.push(`Started in ${seconds(m.ttft_s)}: the time to read the conversation${read} and write the first token.`);
  }
  if (m.finish_reason === "length") {
    parts.push("cut at the length limit");
    help.push("Cut at the length limit: the reply reached the most tokens this conversation allows (its settings).");
  }
  return { text: parts.join(" · "), title: help.join("\n") };
}

function siblingArrows(m, actions) {
  const siblings = m.siblings || [];
  if (siblings.length < 2) return null;
  const at = siblings.indexOf(m.id);
  const box = el("span", "siblings");
  const go = (to) => () => actions.branch(siblings[to]);
  const prev = button("‹", "prev", "Previous version", go(at - 1));
  const next = button("›", "next", "Next version", go(at + 1));
  prev.disabled = at <= 0;
  next.disabled = at >= siblings.length - 1;
  box.append(prev, el("span", "position", `${at + 1}/${siblings.length}`), next);
  box.title = m.role === "user" ? "Versions of this message" : "Versions of this reply";
  return box;
}

function actionBar(m, actions) {
  const bar = el("div", "message-bar");
  const arrows = siblingArrows(m, actions);
  if (arrows) bar.append(arrows);
  const tools = el("span", "actions");
  const copy = button("Copy", "copy-message", "Copy the text");
  copy.addEventListener("click", async () => {
    copy.textContent = (await actions.copy(m)) ? "Copied" : "Copy failed";
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });
  tools.append(copy);
  if (m.role === "user") tools.append(button("Edit", "edit", "Edit and send again (the first version is kept)", () => actions.edit(m)));
  else tools.append(button("Regenerate", "regenerate", "Write another reply (this one is kept)", () => actions.regenerate(m)));
  tools.append(button("Fork", "fork", "Fork from here: a new conversation up to this message", () => actions.fork(m)));
  bar.append(tools);
  return bar;
}

function metaLine(m) {
  const meta = el("div", "meta");
  if (m.status === "stopped") meta.append(el("span", "badge stopped", "stopped"));
  if (m.status === "error") meta.append(el("span", "badge error", "failed"));
  if (m.status === "interrupted") {
    const cut = el("span", "badge stopped", "cut off");
    cut.title = "Tandem was closed (or stopped working) while it wrote this reply; what it had written is kept.";
    meta.append(cut);
  }
  if (m.status === "writing") meta.append(el("span", "badge", "being written"));
  const evicted = evictedIds(m);
  const tokens = m.evicted_tokens ? ` (${m.evicted_tokens} tokens)` : "";
  if (evicted.length) {
    const note = el("span", "badge evicted", `written without the ${evicted.length} oldest message${evicted.length > 1 ? "s" : ""}${tokens}`);
    note.title = "They no longer fit in the model's context; the conversation keeps them.";
    meta.append(note);
  } else if (m.evicted_tokens) {
    const note = el("span", "badge evicted", `${m.evicted_tokens} tokens left out of the model's view`);
    note.title = "A message longer than the context: its start and its end were kept, the middle left out.";
    meta.append(note);
  }
  const line = stats(m);
  const span = el("span", "stats", line.text);
  if (line.title) span.title = line.title;
  meta.append(span);
  return meta;
}

export function evictedIds(m) {
  if (!m?.evicted_ids) return [];
  if (Array.isArray(m.evicted_ids)) return m.evicted_ids;
  try {
    return JSON.parse(m.evicted_ids) || [];
  } catch {
    return [];
  }
}

// A long paste would push the conversation off the screen: show its start, the rest on request.
const LONG_CHARS = 1500;
const LONG_LINES = 25;
const isLong = (text) => text.length > LONG_CHARS || text.split("\n").length > LONG_LINES;

function collapser(node) {
  node.classList.add("collapsed");
  const toggle = button("Show more", "show-more", "Show the whole message");
  toggle.addEventListener("click", () => {
    const open = node.classList.toggle("collapsed") === false;
    toggle.textContent = open ? "Show less" : "Show more";
    toggle.title = open ? "Show only the start of the message" : "Show the whole message";
    toggle.setAttribute("aria-label", toggle.title);
  });
  return toggle;
}

// actions: {copy, edit, regenerate, fork, branch}, each called with the message (branch: an id);
// without actions (a message not stored yet) there is no bar.
export function messageNode(m, actions) {
  const node = el("article", `message ${m.role}`);
  node.dataset.id = m.id ?? "";
  const body = el("div", "body");
  if (m.role === "assistant") body.append(renderMarkdown(m.content));
  else body.textContent = m.content;
  node.append(body);
  if (m.role === "user" && isLong(m.content)) node.append(collapser(node));
  if (m.role === "assistant") {
    if (m.model_id) node.dataset.model = m.model_id;
    node.append(metaLine(m));
  }
  if (actions && m.id != null) node.append(actionBar(m, actions));
  node.tandemMessage = m;
  return node;
}

// The installed models' names arrive after the first messages may be on screen: name them then.
function refreshStats() {
  for (const node of document.querySelectorAll(".message.assistant")) {
    const span = node.tandemMessage && node.querySelector(".meta .stats");
    if (!span) continue;
    const line = stats(node.tandemMessage);
    span.textContent = line.text;
    span.title = line.title;
  }
}
on("models-loaded", refreshStats);
