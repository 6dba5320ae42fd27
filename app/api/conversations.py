"""Conversations and their messages; posting a message streams the reply as server-sent events.

Events of POST /api/conversations/{id}/messages, in order:
  start  {"user_message", "prompt_tokens", "model", "evicted_message_ids"}: earlier messages
         left out to fit the context (the oldest whole turns; never silently)
  token  {"text"}                      (many)
  done   {"message"}                   the stored reply, with status complete or stopped
  error  {"error", "message"}          generation failed; what was written is stored
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from app.api.deps import ChatDep, SettingsDep, StoreDep
from app.api.errors import error_body, runtime_status
from app.api.sse import SSE_HEADERS, sse
from runtime.engine import Failed, Finished, SamplingParams, Token

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


class NewConversation(BaseModel):
    title: str | None = Field(None, max_length=200)


class Rename(BaseModel):
    title: str = Field(..., max_length=200)


class PostMessage(BaseModel):
    content: str = Field(..., min_length=1, max_length=200_000)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None


@router.get("")
def list_conversations(store: StoreDep) -> list[dict]:
    return store.list_conversations()


@router.post("", status_code=201)
def create_conversation(store: StoreDep, body: NewConversation | None = None) -> dict:
    return store.create_conversation(title=body.title if body else None)


@router.get("/{conversation_id}")
def get_conversation(conversation_id: str, store: StoreDep) -> dict:
    conversation = store.get_conversation(conversation_id)
    return {**conversation, "messages": store.list_messages(conversation_id)}


@router.patch("/{conversation_id}")
def rename_conversation(conversation_id: str, body: Rename, store: StoreDep) -> dict:
    return store.rename_conversation(conversation_id, body.title)


@router.delete("/{conversation_id}", status_code=204)
def delete_conversation(conversation_id: str, store: StoreDep, chat: ChatDep) -> Response:
    chat.stop(conversation_id)
    store.delete_conversation(conversation_id)
    return Response(status_code=204)


@router.post("/{conversation_id}/stop")
def stop_reply(conversation_id: str, chat: ChatDep) -> dict:
    return {"stopped": chat.stop(conversation_id)}


@router.post("/{conversation_id}/messages")
async def post_message(conversation_id: str, body: PostMessage, chat: ChatDep, settings: SettingsDep):
    sampling = SamplingParams(
        temperature=settings.temperature if body.temperature is None else body.temperature,
        max_tokens=body.max_tokens or settings.max_tokens,
        seed=body.seed,
    )
    reply = await chat.start_reply(conversation_id, body.content, sampling)

    async def events():
        try:
            yield sse(
                {"user_message": reply.user_message, "prompt_tokens": reply.prompt_tokens, "model": reply.model.id,
                 "evicted_message_ids": reply.evicted_ids},
                "start",
            )
            async for event in reply.stream:
                if isinstance(event, Token):
                    reply.parts.append(event.text)
                    yield sse({"text": event.text}, "token")
                elif isinstance(event, Finished):
                    yield sse({"message": chat.save_finished(reply, event), "stats": event.stats.as_dict()}, "done")
                elif isinstance(event, Failed):
                    saved = chat.save_failed(reply, event)
                    body = error_body(event.error.code, str(event.error), runtime_status(event.error))
                    yield sse({**body, "message": saved}, "error")
        finally:
            if reply.saved is None:  # the client disconnected mid-reply
                chat.save_abandoned(reply)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
