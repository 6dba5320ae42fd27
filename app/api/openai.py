"""OpenAI-compatible endpoints over the same engine, so standard clients work unchanged."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tandem.app.api.deps import KeepAlive, ModelsDep, SettingsDep, StoreDep, check_max_tokens
from tandem.app.api.disconnect import ClientWatch, first_event
from tandem.app.api.errors import error_body, runtime_status
from tandem.app.api.sse import JSON_OR_SSE_RESPONSE, SSE_HEADERS, sse
from tandem.runtime.engine import Failed, Finished, SamplingParams, Token

router = APIRouter(prefix="/v1", tags=["openai"])


MAX_MESSAGES = 4096
MAX_CHARS = 1_000_000  # per message: far past any context Tandem plans for
MAX_STOPS, MAX_STOP_CHARS = 16, 256  # each stop string is checked after every token


class TextPart(BaseModel):
    type: Literal["text"]
    text: str = Field(..., max_length=MAX_CHARS)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: Annotated[str, Field(max_length=MAX_CHARS)] | Annotated[list[TextPart], Field(max_length=256)] | None = None

    def plain(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: Annotated[str, Field(max_length=MAX_STOP_CHARS)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOPS)] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    # seconds the model stays loaded once idle (Tandem and Ollama extension; negative: always)
    keep_alive: KeepAlive | None = None

    def sampling(self, default_temperature: float, default_max: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            temperature=default_temperature if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max,
            stop=tuple(stop),
            seed=self.seed,
        )


@router.get("/models")
def list_models(store: StoreDep) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": m["id"], "object": "model", "created": _epoch(m["added_at"]), "owned_by": "tandem"}
            for m in store.list_models()
        ],
    }


@router.post("/chat/completions", responses=JSON_OR_SSE_RESPONSE)
async def chat_completions(body: ChatCompletionRequest, request: Request, models: ModelsDep, settings: SettingsDep):
    check_max_tokens(body.max_completion_tokens or body.max_tokens, settings)
    sampling = body.sampling(settings.temperature, settings.max_tokens)
    with ClientWatch(request) as watch:
        lease = await asyncio.to_thread(models.acquire, body.model, body.keep_alive, watch.cancelled)
        with lease:
            loaded = lease.value
            stream = watch.attach(lease.submit([m.plain() for m in body.messages], sampling,
                                               loop=asyncio.get_running_loop(),
                                               speculative=models.speculative_for(loaded)))
        first = await first_event(stream, watch)
        if not body.stream:
            return await _complete(stream, first, loaded, models)
    return _stream(body, request, stream, loaded, models)


async def _complete(stream, first, loaded, models) -> dict:
    text, finished = [], first if isinstance(first, Finished) else None
    try:
        async for event in stream:
            if isinstance(event, Token):
                text.append(event.text)
            elif isinstance(event, Finished):
                finished = event
                models.record(loaded, event.stats, "api")
            elif isinstance(event, Failed):
                raise event.error
    finally:
        if finished is None:
            stream.cancel()
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": loaded.id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": finished.text},
                "finish_reason": _finish(finished.finish_reason),
            }
        ],
        "usage": _usage(finished),
        "tandem": {**finished.stats.as_dict(), "predicted_tps": loaded.plan.decode_tps},
    }


def _stream(body: ChatCompletionRequest, request: Request, stream, loaded, models) -> StreamingResponse:
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": loaded.id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    async def events():
        done = False
        watch = ClientWatch(request)
        watch.attach(stream)
        try:
            yield sse(chunk({"role": "assistant", "content": ""}))
            async for event in stream:
                if isinstance(event, Token):
                    yield sse(chunk({"content": event.text}))
                elif isinstance(event, Finished):
                    done = True
                    models.record(loaded, event.stats, "api")
                    yield sse({**chunk({}, _finish(event.finish_reason)),
                               "tandem": {**event.stats.as_dict(), "predicted_tps": loaded.plan.decode_tps}})
                    if include_usage:
                        yield sse({**chunk({}), "choices": [], "usage": _usage(event)})
                elif isinstance(event, Failed):
                    done = True
                    yield sse(error_body(event.error.code, str(event.error), runtime_status(event.error)))
            yield sse("[DONE]")
        finally:
            watch.close()
            if not done:
                stream.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(finished: Finished) -> dict:
    s = finished.stats
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    }


def _epoch(iso: str | None) -> int:
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(iso).timestamp())
    except (TypeError, ValueError):
        return 0
