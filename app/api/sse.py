"""Server-sent events framing."""

from __future__ import annotations

import json

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: object, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n"


def parse_sse(lines):
    """(event, data) pairs from the lines of a server-sent events response, as they arrive
    (for clients: benchmarks and tests); data is JSON, or the text "[DONE]"."""
    event, data = "message", []
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and data:
            payload = "\n".join(data)
            yield event, (payload if payload == "[DONE]" else json.loads(payload))
            event, data = "message", []


# For the OpenAPI schema: a route that answers with server-sent events (or, for /v1, JSON too).
SSE_RESPONSE = {200: {"description": "Server-sent events", "content": {"text/event-stream": {}}}}
JSON_OR_SSE_RESPONSE = {200: {"description": "JSON, or server-sent events when streaming",
                              "content": {"application/json": {}, "text/event-stream": {}}}}
