// The JSON API and the server-sent events of a reply.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function fail(resp) {
  let code = "http_error";
  let message = `Request failed (${resp.status})`;
  try {
    const body = await resp.json();
    if (body.error) ({ code, message } = body.error);
  } catch {}
  throw new ApiError(resp.status, code, message);
}

export async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new ApiError(0, "offline", "Tandem's server is not answering. Is it still running?");
  }
  if (!resp.ok) await fail(resp);
  return resp.status === 204 ? null : resp.json();
}

// POST a message and call onEvent(name, data) for each server-sent event until the reply ends.
export async function streamReply(conversationId, content, onEvent, signal) {
  let resp;
  try {
    resp = await fetch(`/api/conversations/${encodeURIComponent(conversationId)}/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ content }),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") return;
    throw new ApiError(0, "offline", "Tandem's server is not answering. Is it still running?");
  }
  if (!resp.ok) await fail(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
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
