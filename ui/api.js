// The JSON API and the server-sent events of a reply.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const OFFLINE = "Tandem's server is not answering. Is it still running?";

// A request that never reached the server: the page's status dot checks at once instead of at
// its next poll.
function offline() {
  document.dispatchEvent(new CustomEvent("tandem:offline"));
  return new ApiError(0, "offline", OFFLINE);
}

async function fail(resp) {
  if (resp.status === 401) document.dispatchEvent(new CustomEvent("tandem:need-key"));
  let code = "http_error";
  let message = `Request failed (${resp.status})`;
  try {
    const body = await resp.json();
    if (body.error) ({ code, message } = body.error);
  } catch {}
  throw new ApiError(resp.status, code, message);
}

// body: an object sent as JSON, or a Blob/File sent as it is (an imported file: the server, not
// the page, says what is wrong with it).
export async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = body instanceof Blob ? body : JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw offline();
  }
  if (!resp.ok) await fail(resp);
  return resp.status === 204 ? null : resp.json();
}

// POST body to path and call onEvent(name, data) for each server-sent event until the stream ends.
export async function streamEvents(path, body, onEvent, signal) {
  let resp;
  try {
    resp = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") return;
    throw offline();
  }
  if (!resp.ok) await fail(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (err.name === "AbortError") return;
      throw offline();
    }
    const { value, done } = chunk;
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

const conversationPath = (id) => `/api/conversations/${encodeURIComponent(id)}`;

// A message and its reply; extra: edit_of (a new sibling of that user message), temperature,
// max_tokens, seed.
export function streamReply(conversationId, content, onEvent, signal, extra = {}) {
  return streamEvents(`${conversationPath(conversationId)}/messages`, { content, ...extra }, onEvent, signal);
}

// Another reply: body.message_id names an assistant message (a sibling is written) or a user
// message (a reply to it); without it, the last reply of the active branch.
export function streamRegenerate(conversationId, body, onEvent, signal) {
  return streamEvents(`${conversationPath(conversationId)}/regenerate`, body, onEvent, signal);
}
