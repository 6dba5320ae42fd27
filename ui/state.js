// What the page's modules share: the conversation on screen, the replies being written, the models.
import { $ } from "./dom.js";

export const state = {
  conversations: [],
  // the conversation on screen with its active branch (messages), or null for a new chat
  current: null,
  // the replies being written, by conversation id: each goes on while another conversation is
  // open, and shows again when its own is reopened
  streams: new Map(),
  model: null,  // the default model, as /api/health names it
  models: [],  // installed models
  missing: new Set(),  // installed models whose file is gone
  // a new chat's settings until its first message creates it (model_id, system_prompt, …)
  pending: {},
  settings: null,  // GET /api/settings
  page: "chat",
  offline: false,  // the server stopped answering
  focus: null,  // {id, message}: the message a search result opens its conversation at
};

export const streamingHere = () => !!state.current && state.streams.has(state.current.id);

export function showError(message) {
  // while the page asks for the API key, what failed for want of it says nothing new
  if (message && document.getElementById("sign-in")) return;
  const banner = $("error-banner");
  banner.textContent = message || "";
  banner.hidden = !message;
}

export const modelById = (id) => state.models.find((m) => m.id === id);

// Modules tell each other what changed through document events instead of importing each other:
// "conversation" (another one on screen, or its settings changed), "list" (the sidebar's list is
// stale), "busy" (a reply started or ended).
export const notify = (name, detail) => document.dispatchEvent(new CustomEvent(`tandem:${name}`, { detail }));
export const on = (name, fn) => document.addEventListener(`tandem:${name}`, (e) => fn(e.detail));
