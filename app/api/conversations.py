"""Conversations and their messages; posting a message streams the reply as server-sent events.

Events of POST /api/conversations/{id}/messages (and of .../regenerate), in order:
  queued {"position"}                  (only while other replies are ahead: 1 is next; repeated
                                       as it moves up; stopping it here, or before the reply
                                       reached the engine, stores nothing and ends with
                                       done {"message": null})
  start  {"user_message", "prompt_tokens", "model", "title", "evicted_message_ids", "evicted_tokens",
         "context_policy"}: earlier messages left out to fit the context (never silently)
  progress {"done", "total"}           prompt tokens read so far (only for a prompt of several batches)
  token  {"text"}                      (many)
  done   {"message", "stats"}          the stored reply (status complete or stopped; its evicted_ids
                                       also name messages the context shifted past mid-reply)
  error  {"error", "message"}          generation failed; what was written is stored
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tandem.app.api.deps import ChatDep, KeepAlive, RowId, SettingsDep, StoreDep, check_max_tokens
from tandem.app.services.chat import ChatService, Reply
from tandem.app.api.disconnect import ClientWatch
from tandem.app.api.errors import error_body, runtime_status
from tandem.app.api.sse import SSE_HEADERS, SSE_RESPONSE, sse
from tandem.runtime.engine import Failed, Finished, Progress, Queued, Started, Token

router = APIRouter(prefix="/api/conversations", tags=["conversations"])


class NewConversation(BaseModel):
    title: str | None = Field(None, max_length=200)
    model_id: str | None = Field(None, max_length=200)  # None: the default model


class ConversationChanges(BaseModel):
    title: str | None = Field(None, max_length=200)
    # sink_window, drop_turns or stop; null: the Settings default, else the plan's choice
    context_policy: Literal["sink_window", "drop_turns", "stop"] | None = None
    # an installed model's id; null: the default model
    model_id: str | None = Field(None, max_length=200)
    pinned: bool | None = None
    # null: the Settings page's defaults
    system_prompt: str | None = Field(None, max_length=20_000)
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, ge=0.01, le=1.0)
    max_tokens: int | None = Field(None, ge=1)


class ReplyOptions(BaseModel):
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    keep_alive: KeepAlive | None = None


class PostMessage(ReplyOptions):
    content: str = Field(..., min_length=1, max_length=200_000)
    # a user message this one replaces: it becomes its sibling and the old branch stays
    edit_of: RowId | None = None


class Regenerate(ReplyOptions):
    # an assistant message (a new reply beside it) or a user message (a new reply to it); null: the latest
    message_id: RowId | None = None


class MessageRef(BaseModel):
    message_id: RowId


def known_model(model_id: str, store, chat) -> None:
    """A model installed here, or NAME/model of a registered remote server; else NotFound."""
    if chat.models.remotes.split(model_id) is None:
        store.get_model(model_id)


@router.get("")
def list_conversations(store: StoreDep) -> list[dict]:
    return store.list_conversations()


@router.post("", status_code=201)
def create_conversation(store: StoreDep, chat: ChatDep, body: NewConversation | None = None) -> dict:
    model_id = body.model_id if body else None
    if model_id is not None:
        known_model(model_id, store, chat)  # an unknown model is a clear 404, not a conversation that fails later
    return chat.create(title=body.title if body else None, model_id=model_id)


@router.post("/import", status_code=201)
def import_conversation(store: StoreDep, data: Annotated[Any, Body()]) -> dict:
    """A conversation exported as JSON (GET .../export?format=json), as a new conversation."""
    return store.import_export(data)


@router.get("/{conversation_id}")
def get_conversation(conversation_id: str, store: StoreDep) -> dict:
    conversation = store.get_conversation(conversation_id)
    return {**conversation, "messages": store.branch(conversation_id)}


@router.patch("/{conversation_id}")
def change_conversation(conversation_id: str, body: ConversationChanges, store: StoreDep, chat: ChatDep,
                        settings: SettingsDep) -> dict:
    """Rename, pin, set the model (null: the default), the context policy, the system prompt or
    sampling (null: the defaults)."""
    conversation = store.get_conversation(conversation_id)
    given = body.model_fields_set
    if body.title is not None:
        conversation = store.rename_conversation(conversation_id, body.title)
    if "model_id" in given:
        if body.model_id is not None:
            known_model(body.model_id, store, chat)
        conversation = store.set_conversation_model(conversation_id, body.model_id)
    if "context_policy" in given:
        conversation = chat.set_policy(conversation_id, body.context_policy)
    if "max_tokens" in given:
        check_max_tokens(body.max_tokens, settings)
    changes = {k: getattr(body, k) for k in ("system_prompt", "temperature", "top_p", "max_tokens") if k in given}
    if "system_prompt" in changes and not (changes["system_prompt"] or "").strip():
        changes["system_prompt"] = None
    if body.pinned is not None:
        changes["pinned"] = body.pinned
    if changes:
        conversation = store.update_conversation(conversation_id, **changes)
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


@router.post("/{conversation_id}/branch")
def switch_branch(conversation_id: str, body: MessageRef, store: StoreDep) -> dict:
    """Show the branch through message_id (down to its latest reply)."""
    conversation = store.set_leaf(conversation_id, body.message_id)
    return {**conversation, "messages": store.branch(conversation_id)}


@router.post("/{conversation_id}/fork", status_code=201)
def fork_conversation(conversation_id: str, body: MessageRef, store: StoreDep) -> dict:
    """A new conversation with the branch up to and including message_id."""
    return store.fork(conversation_id, body.message_id)


@router.get("/{conversation_id}/export", responses={200: {"description": "The conversation as a file", "content": {"text/markdown": {}, "application/json": {}}}})
def export_conversation(conversation_id: str, store: StoreDep,
                        format: Literal["json", "markdown"] = "markdown") -> Response:
    data = store.export(conversation_id)
    name = _file_name(data["conversation"]["title"])
    if format == "json":
        text, kind, ext = json.dumps(data, ensure_ascii=False, indent=1), "application/json", "json"
    else:
        text, kind, ext = as_markdown(data["conversation"], store.branch(conversation_id)), "text/markdown", "md"
    return Response(text.encode(), media_type=f"{kind}; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.{ext}"'})


@router.post("/{conversation_id}/messages", responses=SSE_RESPONSE)
async def post_message(conversation_id: str, body: PostMessage, request: Request, chat: ChatDep,
                       settings: SettingsDep):
    check_max_tokens(body.max_tokens, settings)
    conversation = chat.store.get_conversation(conversation_id)
    parent = chat.edit_parent(conversation_id, body.edit_of) if body.edit_of is not None else conversation["current_leaf_id"]
    sampling = chat.sampling_for(conversation, body.temperature, body.max_tokens, body.seed)
    return await stream_reply(request, chat, conversation_id, body.content, parent, sampling, body.keep_alive)


@router.post("/{conversation_id}/regenerate", responses=SSE_RESPONSE)
async def regenerate(conversation_id: str, body: Regenerate, request: Request, chat: ChatDep, settings: SettingsDep):
    """A new reply (a sibling of the old one, which stays) to a user message."""
    check_max_tokens(body.max_tokens, settings)
    conversation = chat.store.get_conversation(conversation_id)
    user = chat.regenerate_target(conversation_id, body.message_id)
    sampling = chat.sampling_for(conversation, body.temperature, body.max_tokens, body.seed)
    return await stream_reply(request, chat, conversation_id, None, user["id"], sampling, body.keep_alive)


async def stream_reply(request: Request, chat: ChatService, conversation_id: str, content: str | None,
                       parent: int | None, sampling, keep_alive: float | None) -> StreamingResponse:
    watch = ClientWatch(request)
    try:
        reply = await chat.start_reply(conversation_id, content, sampling, watch, keep_alive, parent=parent)
    except BaseException:
        watch.close()
        raise
    return StreamingResponse(reply_events(chat, reply, watch), media_type="text/event-stream", headers=SSE_HEADERS)


async def reply_events(chat: ChatService, reply: Reply, watch: ClientWatch):
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

    try:
        if reply.user_message is None:
            async for frame in wait_turn():
                yield frame
            if reply.user_message is None:
                return
        yield sse(
            {"user_message": reply.user_message, "prompt_tokens": reply.prompt_tokens, "model": reply.model.id,
             "title": reply.title, "evicted_message_ids": reply.evicted_ids, "evicted_tokens": reply.evicted_tokens,
             "context_policy": reply.policy},
            "start",
        )
        async for event in reply.stream:
            if isinstance(event, Token):
                chat.written(reply, event.text)
                yield sse({"text": event.text}, "token")
            elif isinstance(event, Progress):
                yield sse({"done": event.done, "total": event.total}, "progress")
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


def as_markdown(conversation: dict, branch: list[dict]) -> str:
    """The shown branch as a Markdown document."""
    lines = [f"# {conversation['title']}", ""]
    if conversation.get("system_prompt"):
        lines += ["> **System prompt:** " + conversation["system_prompt"].replace("\n", "\n> "), ""]
    for m in branch:
        who = "You" if m["role"] == "user" else ("Assistant" + (f" ({m['model_id']})" if m.get("model_id") else ""))
        note = " *(stopped)*" if m.get("status") == "stopped" else ""
        lines += [f"### {who}{note}", "", m["content"], ""]
    return "\n".join(lines)


def _file_name(title: str) -> str:
    """A file name from a title: letters, digits, dashes and spaces only (nothing a header could misread)."""
    kept = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in " -_" else " " for ch in title)
    return "-".join(kept.split())[:80] or "conversation"
