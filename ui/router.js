// Addresses in the hash, so that reload, Back/Forward and bookmarks work without a server route:
//   #/            a new chat          #/c/<id>            a conversation
//   #/models      the Models page     #/models/<model id> a model's plan
//   #/hardware    the Hardware page   #/settings          the Settings page

let handler = null;
let lastKey = null;

export function parse(hash = location.hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const [first, ...rest] = parts;
  if (first === "c" && rest.length) return { page: "chat", id: rest[0] };
  if (first === "models") return rest.length ? { page: "models", modelId: rest.join("/") } : { page: "models" };
  if (first === "hardware" || first === "settings") return { page: first };
  return { page: "chat", id: null };
}

export function hrefFor(route) {
  if (route.page === "chat") return route.id ? `#/c/${encodeURIComponent(route.id)}` : "#/";
  if (route.page === "models" && route.modelId) return `#/models/${encodeURIComponent(route.modelId)}`;
  return `#/${route.page}`;
}

export const conversationHref = (id) => hrefFor({ page: "chat", id });

// Back and Forward fire popstate and, between different hashes, hashchange too: one route is
// handled once, whichever arrives first.
function dispatch(force = false) {
  const key = location.hash || "#/";
  if (!force && key === lastKey) return;
  lastKey = key;
  handler?.(parse(key));
}

export function startRouter(onRoute) {
  handler = onRoute;
  window.addEventListener("popstate", () => dispatch());
  window.addEventListener("hashchange", () => dispatch());
  dispatch(true);
}

// Going to the address on screen again (a click on the open conversation) re-runs it: that is how
// a search result reopens the conversation it is already in, at another message.
export function navigate(href, { replace = false } = {}) {
  if ((location.hash || "#/") === href) return dispatch(true);
  history[replace ? "replaceState" : "pushState"](null, "", href);
  dispatch(true);
}

// The address changes without anything being opened: a new chat became a conversation once its
// first message was sent. Replacing (not pushing) keeps Back from landing on an empty "new chat".
export function settle(href) {
  if ((location.hash || "#/") === href) return;
  history.replaceState(null, "", href);
  lastKey = href;
}
