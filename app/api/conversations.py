"""Conversations and their messages; posting a message streams the reply as server-sent events.

Events of POST /api/conversations/{id}/messages, in order:
  queued {"position"}                  (only while other replies are ahead: 1 is next; repeated
                                       as it moves up; stopping it here, or before the reply
                                       reached the engine, stores nothing and ends with
                                       done {"message": null})
  start  {"user_message", "prompt_tokens", "model", "evicted_message_ids", "evicted_tokens",
         "context_policy"}: earlier messages left out to fit the context (never silently)
  token  {"text"}                      (many)
  done   {"message", "stats"}          the stored reply (status complete or stopped; its evicted_ids
                                       also name messages the context shifted past mid-reply)
  error  {"error", "message"}          generation failed; what was written is stored
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tandem.app.api.deps import ChatDep, SettingsDep, StoreDep, check_max_tokens
from tandem.app.api.disconnect import ClientWatch
from tandem.app.api.errors import error_body, runtime_status
from tandem.app.api.sse import SSE_HEADERS, sse
from tandem.runtime.engine import Failed, Finished, Queued, SamplingParams, Started, Token

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


class NewConversation(BaseModel):
    title: str | None = Field(None, max_length=200)
    model_id: str | None = Field(None, max_length=200)  # None: the default model


class ConversationChanges(BaseModel):
    title: str | None = Field(None, max_length=200)
    # sink_window, drop_turns or stop; null: the plan's choice
    context_policy: Literal["sink_window", "drop_turns", "stop"] | None = None
    # an installed model's id; null: the default model
    model_id: str | None = Field(None, max_length=200)


class PostMessage(BaseModel):
    content: str = Field(..., min_length=1, max_length=200_000)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    # seconds the model stays loaded once idle (0: unload after this reply; negative: always)
    keep_alive: float | None = None


@router.get("")
def list_conversations(store: StoreDep) -> list[dict]:
    return store.list_conversations()


@router.post("", status_code=201)
def create_conversation(store: StoreDep, body: NewConversation | None = None) -> dict:
    model_id = body.model_id if body else None
    if model_id is not None:
        store.get_model(model_id)  # an unknown model is a clear 404, not a conversation that fails later
    return store.create_conversation(title=body.title if body else None, model_id=model_id)


@router.get("/{conversation_id}")
def get_conversation(conversation_id: str, store: StoreDep) -> dict:
    conversation = store.get_conversation(conversation_id)
    return {**conversation, "messages": store.list_messages(conversation_id)}


@router.patch("/{conversation_id}")
def change_conversation(conversation_id: str, body: ConversationChanges, store: StoreDep, chat: ChatDep) -> dict:
    """Rename, set the model (null: the default) and/or the context policy (null: the plan's)."""
    conversation = store.get_conversation(conversation_id)
    if body.title is not None:
        conversation = store.rename_conversation(conversation_id, body.title)
    if "model_id" in body.model_fields_set:
        if body.model_id is not None:
            store.get_model(body.model_id)
        conversation = store.set_conversation_model(conversation_id, body.model_id)
    if "context_policy" in body.model_fields_set:
        conversation = chat.set_policy(conversation_id, body.context_policy)
    return conversation


@router.get("/{conversation_id}/context")
async def conversation_context(conversation_id: str, chat: ChatDep) -> dict:
    """What happens when this conversation outgrows the context, and why."""
    return await asyncio.to_thread(chat.context_info, conversation_id)


@router.delete("/{conversation_id}", status_code=204)
def delete_conversation(conversation_id: str, chat: ChatDep) -> Response:
    chat.delete(conversation_id)
    return Response(status_code=204)


@router.post("/{conversation_id}/stop")
async def stop_reply(conversation_id: str, chat: ChatDep) -> dict:  # on the loop, beside start_reply
    return {"stopped": chat.stop(conversation_id)}


@router.post("/{conversation_id}/messages")
async def post_message(conversation_id: str, body: PostMessage, request: Request, chat: ChatDep,
                       settings: SettingsDep):
    check_max_tokens(body.max_tokens, settings)
    sampling = SamplingParams(
        temperature=settings.temperature if body.temperature is None else body.temperature,
        max_tokens=body.max_tokens or settings.max_tokens,
        seed=body.seed,
    )
    watch = ClientWatch(request)
    try:
        reply = await chat.start_reply(conversation_id, body.content, sampling, watch, body.keep_alive)
    except BaseException:
        watch.close()
        raise

    async def pending_then_stream():
        yield reply.pending
        if not isinstance(reply.pending, Finished):
            async for event in reply.stream:
                yield event

    async def wait_turn():
        """Queued events until the engine takes the prompt (reply.user_message is then set), or the
        reply's end when it never got its turn (stopped before it began or while waiting, or refused)."""
        async for event in pending_then_stream():
            if isinstance(event, Queued):
                yield sse({"position": event.position}, "queued")
            elif isinstance(event, Started):
                chat.accept(reply, event)
                return
            else:  # stopped while waiting, or refused once its turn came
                chat.end_unstarted(reply)
                if isinstance(event, Failed):
                    yield sse(error_body(event.error.code, str(event.error), runtime_status(event.error)), "error")
                else:
                    yield sse({"message": None, "stats": event.stats.as_dict()}, "done")
                return

    async def events():
        try:
            if reply.user_message is None:
                async for frame in wait_turn():
                    yield frame
                if reply.user_message is None:
                    return
            yield sse(
                {"user_message": reply.user_message, "prompt_tokens": reply.prompt_tokens, "model": reply.model.id,
                 "evicted_message_ids": reply.evicted_ids, "evicted_tokens": reply.evicted_tokens,
                 "context_policy": reply.policy},
                "start",
            )
            async for event in reply.stream:
                if isinstance(event, Token):
                    reply.parts.append(event.text)
                    yield sse({"text": event.text}, "token")
                elif isinstance(event, Finished):
                    yield sse({"message": chat.save_finished(reply, event),
                               "stats": {**event.stats.as_dict(), "predicted_tps": reply.model.plan.decode_tps}}, "done")
                elif isinstance(event, Failed):
                    saved = chat.save_failed(reply, event)
                    body = error_body(event.error.code, str(event.error), runtime_status(event.error))
                    yield sse({**body, "message": saved}, "error")
        finally:
            watch.close()
            if reply.saved is None:  # the client disconnected mid-reply
                chat.save_abandoned(reply)

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)
