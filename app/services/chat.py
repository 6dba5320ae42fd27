"""Chatting in a stored conversation: history in, reply streamed out, everything saved.

The user's message is stored only once the engine has accepted the prompt (it fits the
context), so a refused request leaves the conversation as it was. The reply is stored when it
ends: complete, stopped (with the partial text) or failed.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from app.errors import Conflict, NotFound
from app.services.models import LoadedModel, ModelService
from app.store import Store
from runtime.engine import Failed, Finished, ReplyStats, ReplyStream, SamplingParams, Started
from runtime.errors import RuntimeFailure

STATUS_FOR_FINISH = {"stop": "complete", "length": "complete", "cancelled": "stopped"}


@dataclass
class Reply:
    """A reply being generated for a conversation."""

    conversation_id: str
    model: LoadedModel
    stream: ReplyStream
    prompt_tokens: int
    user_message: dict
    evicted_ids: list[int] = field(default_factory=list)  # earlier messages left out to fit the context
    parts: list[str] = field(default_factory=list)
    saved: dict | None = None


class ChatService:
    def __init__(self, store: Store, models: ModelService):
        self.store = store
        self.models = models
        self._active: dict[str, Reply | None] = {}

    def history(self, conversation_id: str) -> tuple[list[int], list[dict]]:
        """(message ids, {role, content}) of what the model sees of a conversation."""
        rows = [m for m in self.store.list_messages(conversation_id)
                if m["content"] and m["role"] in ("system", "user", "assistant")]
        return [m["id"] for m in rows], [{"role": m["role"], "content": m["content"]} for m in rows]

    async def start_reply(self, conversation_id: str, content: str, sampling: SamplingParams) -> Reply:
        """Submit the conversation plus the new message; return once the engine accepted it."""
        conversation = self.store.get_conversation(conversation_id)
        if conversation_id in self._active:
            raise Conflict(
                "A reply is still being written in this conversation. Stop it or wait for it to finish."
            )
        self._active[conversation_id] = None  # reserved: a second request now gets Conflict
        stream = None
        try:
            ids, messages = self.history(conversation_id)
            messages.append({"role": "user", "content": content})
            model = await asyncio.to_thread(self.models.engine_for, conversation.get("model_id"))
            stream = model.session.submit(messages, sampling, loop=asyncio.get_running_loop(), overflow="drop_turns")
            first = await stream.next_event()
            if isinstance(first, Failed):
                raise first.error
            if not isinstance(first, Started):  # cancelled before it began (engine shutting down)
                raise RuntimeFailure("The engine stopped before replying; send the message again.")
            user_message = self.store.add_message(conversation_id, "user", content)
        except BaseException:  # refused, failed, or the client left before the reply began
            self._active.pop(conversation_id, None)
            if stream is not None:
                stream.cancel()
            raise
        reply = Reply(conversation_id, model, stream, first.prompt_tokens, user_message,
                      evicted_ids=[ids[i] for i in first.dropped])
        self._active[conversation_id] = reply
        return reply

    def stop(self, conversation_id: str) -> bool:
        """Ask the running reply of a conversation to stop; False when none is running."""
        self.store.get_conversation(conversation_id)
        reply = self._active.get(conversation_id)
        if reply is None:
            return False
        reply.stream.cancel()
        return True

    def save_finished(self, reply: Reply, event: Finished) -> dict:
        self.models.record(reply.model, event.stats, "chat")
        return self._save(reply, event.text, STATUS_FOR_FINISH[event.finish_reason], event.finish_reason, event.stats)

    def save_failed(self, reply: Reply, event: Failed) -> dict:
        return self._save(reply, "".join(reply.parts), "error", "error", None)

    def save_abandoned(self, reply: Reply) -> dict:
        """The client went away mid-reply: stop generating and keep what it was shown."""
        reply.stream.cancel()
        return self._save(reply, "".join(reply.parts), "stopped", "cancelled", None)

    def _save(self, reply: Reply, text: str, status: str, finish: str, stats: ReplyStats | None) -> dict:
        self._active.pop(reply.conversation_id, None)
        if reply.saved is None:
            fields = {"status": status, "finish_reason": finish, "model_id": reply.model.id}
            if reply.evicted_ids:
                fields["evicted_ids"] = json.dumps(reply.evicted_ids)
            fields["prompt_tokens"] = reply.prompt_tokens
            if stats is not None:
                fields.update(
                    completion_tokens=stats.completion_tokens, ttft_s=stats.ttft_s, decode_tps=stats.decode_tps
                )
            try:
                reply.saved = self.store.add_message(reply.conversation_id, "assistant", text, **fields)
            except NotFound:  # the conversation was deleted while the reply was written
                reply.saved = {}
        return reply.saved
