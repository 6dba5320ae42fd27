"""Chatting in a stored conversation: history in, reply streamed out, everything saved.

The user's message is stored only once the engine has accepted the prompt (it fits the
context), so a refused request leaves the conversation as it was. The reply's message is made
then too, its text saved as it streams, and its end (complete, stopped with the partial text, or
failed) written when it ends; a reply cut off by a crash is marked interrupted at the next start.
A conversation is a tree (store/conversations.py): a new message continues the active branch, an
edit is a sibling of the message it replaces, a regenerated reply a sibling of the reply; the
prompt is the branch that leads to it, after the conversation's system prompt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from tandem.app.errors import Conflict, InvalidRequest, NotFound
from tandem.app.services.models import ModelService, ServedModel
from tandem.app.services.settings import SettingsService
from tandem.app.store import Store
from tandem.app.store.conversations import LEAF
from tandem.runtime.engine import Failed, Finished, Queued, ReplyStats, ReplyStream, SamplingParams, Started
from tandem.runtime.engine.context import POLICIES, POLICY_NAMES, ContextPolicy
from tandem.runtime.errors import Interrupted

log = logging.getLogger("tandem")
FLUSH_S = 0.5  # how often a reply's text so far is written to the database
STATUS_FOR_FINISH = {"stop": "complete", "length": "complete", "cancelled": "stopped"}


@dataclass
class Reply:
    """A reply being generated for a conversation."""

    conversation_id: str
    model: ServedModel
    stream: ReplyStream
    content: str | None  # None: a new reply to an existing user message (regenerate)
    parent: int | None = None  # where the new user message goes; for a regenerate, the user message
    prompt_tokens: int = 0
    user_message: dict | None = None  # stored once the engine accepts the prompt (Started)
    pending: Queued | Finished | None = None  # its first event when that was not Started
    evicted_ids: list[int] = field(default_factory=list)  # earlier messages left out to fit the context
    evicted_tokens: int = 0
    policy: str = "stop"
    parts: list[str] = field(default_factory=list)
    ids: list[int | None] = field(default_factory=list)  # ids of the submitted messages (None: not stored yet)
    saved: dict | None = None
    title: str = ""
    row: dict | None = None  # the reply's message, created when the engine takes the prompt
    flushed_at: float = 0.0  # when its text was last written to the database


def alternate(rows: list[dict]) -> tuple[list[int | None], list[dict]]:
    """(ids, messages) where user and assistant turns alternate, as strict templates demand: a
    stopped, failed or cut-off reply stays as the (possibly empty) turn it is, and where two turns
    of one role meet anyway (history from before, an import), an empty turn of the other role is
    put between them (id None). A conversation is never made unanswerable by its own history."""
    ids: list[int | None] = []
    messages: list[dict] = []
    last = None
    for m in rows:
        role = m["role"]
        if role != "system":
            if role == last or (last is None and role == "assistant"):
                other = "assistant" if role == "user" else "user"
                ids.append(None)
                messages.append({"role": other, "content": ""})
            last = role
        ids.append(m["id"])
        messages.append({"role": role, "content": m["content"]})
    return ids, messages


class ChatService:
    def __init__(self, store: Store, models: ModelService, prefs: SettingsService):
        self.store = store
        self.models = models
        self.prefs = prefs
        self._active: dict[str, Reply | None] = {}
        self._stop_asked: set[str] = set()  # Stop pressed before the request reached the engine

    def history(self, conversation: dict, leaf: int | None | object = LEAF,
                new: str | None = None) -> tuple[list[int | None], list[dict], list[int]]:
        """(message ids, {role, content}, indices the latest reply was written without) of the branch
        ending at leaf (default: the active one), after the conversation's system prompt (id None),
        with the new user message `new` (id None) at its end when there is one."""
        rows = [m for m in self.store.branch(conversation["id"], leaf)
                if m["role"] in ("system", "user", "assistant") and (m["content"] or m["role"] == "assistant")]
        if new is not None:
            rows.append({"id": None, "role": "user", "content": new})
        ids, messages = alternate(rows)
        if conversation.get("system_prompt"):
            ids.insert(0, None)
            messages.insert(0, {"role": "system", "content": conversation["system_prompt"]})
        last = next((m for m in reversed(rows) if m["role"] == "assistant" and m.get("evicted_ids")), None)
        try:
            before = {x for x in json.loads(last["evicted_ids"]) if isinstance(x, int)} if last else set()
        except (ValueError, TypeError):  # a damaged value must not make the branch unanswerable
            before = set()
        return ids, messages, [i for i, x in enumerate(ids) if x is not None and x in before]

    def policy_for(self, conversation: dict, model: ServedModel) -> ContextPolicy:
        """The conversation's own context policy, else the Settings page's default, else the plan's."""
        plan = model.plan
        chosen = conversation.get("context_policy") or self.prefs.context_policy() or plan.context_policy
        return ContextPolicy(chosen, plan.sink_tokens, plan.evict_chunk)

    def sampling_for(self, conversation: dict, temperature: float | None = None, max_tokens: int | None = None,
                     seed: int | None = None) -> SamplingParams:
        """The request's own values, else the conversation's, else the Settings page's defaults."""
        defaults = self.prefs.sampling_defaults()

        def pick(name: str, asked):
            if asked is not None:
                return asked
            own = conversation.get(name)
            return own if own is not None else defaults[name]

        limit = self.models.settings.max_reply_tokens  # however the conversation's value got stored
        return SamplingParams(temperature=pick("temperature", temperature), top_p=pick("top_p", None),
                              max_tokens=min(pick("max_tokens", max_tokens), limit), seed=seed)

    def create(self, title: str | None = None, model_id: str | None = None) -> dict:
        """A new conversation with the Settings page's defaults (its system prompt)."""
        return self.store.create_conversation(title=title, model_id=model_id, **self.prefs.conversation_defaults())

    def regenerate_target(self, conversation_id: str, message_id: int | None) -> dict:
        """The user message a new reply answers: the parent of an assistant message, a user message
        itself, or (None) the latest user message of the active branch."""
        if message_id is None:
            users = [m for m in self.store.branch(conversation_id) if m["role"] == "user"]
            if not users:
                raise InvalidRequest("This conversation has no message to answer yet; send one first.")
            return users[-1]
        message = self.store.get_message(conversation_id, message_id)
        if message["role"] == "assistant":
            if message["parent_id"] is None:
                raise InvalidRequest("This reply answers no message of yours, so it cannot be written again.")
            message = self.store.get_message(conversation_id, message["parent_id"])
        if message["role"] != "user":
            raise InvalidRequest("Only a reply, or a message of yours, can get a new reply.")
        return message

    def edit_parent(self, conversation_id: str, edit_of: int) -> int | None:
        """Where an edit of a user message goes: beside it, under the same parent."""
        message = self.store.get_message(conversation_id, edit_of)
        if message["role"] != "user":
            raise InvalidRequest("Only your own messages can be edited; a reply can be regenerated instead.")
        return message["parent_id"]

    async def start_reply(self, conversation_id: str, content: str | None, sampling: SamplingParams,
                          watch=None, keep_alive: float | None = None, parent: int | None | object = LEAF) -> Reply:
        """Submit the branch plus the new message (content; parent: where it goes, default the
        active branch's end) or, with content None, a new reply to the user message `parent`.
        Return once the engine accepted it (Started: the user message is stored) or queued it
        behind other replies (Queued: it is stored when its turn comes, see accept()). watch: the
        client's ClientWatch; when the client leaves, the request is cancelled wherever it is."""
        conversation = self.store.get_conversation(conversation_id)
        if parent is LEAF:
            parent = conversation["current_leaf_id"]
        if conversation_id in self._active:
            raise Conflict(
                "A reply is still being written in this conversation. Stop it or wait for it to finish."
            )
        self._active[conversation_id] = None  # reserved: a second request now gets Conflict
        stream = None
        try:
            ids, messages, before = self.history(conversation, parent, new=content)
            def cancelled() -> bool:
                return conversation_id in self._stop_asked or (watch is not None and watch.cancelled())

            lease = await asyncio.to_thread(self.models.acquire, conversation.get("model_id"), keep_alive, cancelled)
            with lease:
                model = lease.value
                stream = lease.submit(messages, sampling, loop=asyncio.get_running_loop(),
                                      overflow=self.policy_for(conversation, model), key=conversation_id,
                                      evicted=before, speculative=self.models.speculative_for(model))
            if watch is not None:
                watch.attach(stream)
            reply = self._active[conversation_id] = Reply(conversation_id, model, stream, content, parent, ids=ids)
            if conversation_id in self._stop_asked:  # pressed while the model was being acquired
                stream.cancel()
            first = await stream.next_event()
            if isinstance(first, Failed):
                raise first.error
            if isinstance(first, Finished) and watch is not None and watch.cancelled():
                raise Interrupted("The client went away before the reply began.")
            if isinstance(first, Started):
                self.accept(reply, first)
            else:  # waiting for the model, or stopped before it began: the route says which
                reply.pending = first
        except BaseException:  # refused, failed, or the client left before the reply began
            self._active.pop(conversation_id, None)
            if stream is not None:
                stream.cancel()
            raise
        finally:
            self._stop_asked.discard(conversation_id)
        return reply

    def accept(self, reply: Reply, started: Started) -> None:
        """The engine took the prompt: store the user's message and what was left out to fit."""
        if reply.content is None:  # a new reply to a message already stored
            user = self.store.get_message(reply.conversation_id, reply.parent)
        else:
            user = self.store.add_message(reply.conversation_id, "user", reply.content, parent_id=reply.parent)
        reply.user_message = self.store.with_siblings(user)
        reply.row = self.store.begin_reply(reply.conversation_id, user["id"], reply.model.id)
        reply.flushed_at = time.monotonic()
        reply.title = self.store.get_conversation(reply.conversation_id)["title"]
        reply.prompt_tokens = started.prompt_tokens
        reply.evicted_ids = [reply.ids[i] for i in started.dropped if reply.ids[i] is not None]
        reply.evicted_tokens = started.evicted_tokens
        reply.policy = started.policy

    def written(self, reply: Reply, text: str) -> None:
        """A token arrived: save the text so far every FLUSH_S (a kill keeps what was streamed)."""
        reply.parts.append(text)
        now = time.monotonic()
        if reply.row is not None and now - reply.flushed_at >= FLUSH_S:
            reply.flushed_at = now
            try:
                self.store.write_reply(reply.row["id"], "".join(reply.parts))
            except Exception:  # noqa: BLE001 - a failed interim save must not end the reply
                log.exception("could not save a reply's text so far")

    def end_unstarted(self, reply: Reply) -> None:
        """A queued reply ended before its turn (stopped or refused): nothing was stored."""
        self._active.pop(reply.conversation_id, None)
        reply.stream.cancel()

    def context_info(self, conversation_id: str | None = None) -> dict:
        """The conversation's context policy, where it comes from, and the plan's budget (None:
        what a new conversation gets)."""
        conversation = self.store.get_conversation(conversation_id) if conversation_id else {}
        remote = self.models.remotes.split(conversation.get("model_id"))
        if remote is not None:  # its server decides what happens past its context
            return {"policy": None, "source": "remote", "plan_policy": None, "n_ctx": None, "sink_tokens": None,
                    "evict_chunk": None, "model": conversation["model_id"],
                    "reason": f"This model runs on {remote[0]['name']}; that server decides what happens when a "
                              "conversation outgrows its context.",
                    "choices": [{"id": k, "name": POLICY_NAMES[k]} for k in POLICIES]}
        model = self.models.resolve(conversation.get("model_id"))
        loaded = self.models.loaded_model(model["id"])
        plan = loaded.plan if loaded is not None else self.models.plan_for(model, dry_run=False)
        own = conversation.get("context_policy")
        default = self.prefs.context_policy()
        return {
            "policy": own or default or plan.context_policy,
            "source": "conversation" if own else "settings" if default else "plan",
            "plan_policy": plan.context_policy, "n_ctx": plan.n_ctx, "sink_tokens": plan.sink_tokens,
            "evict_chunk": plan.evict_chunk, "model": model["id"],
            "reason": next((r for r in plan.reasons if r.startswith(f"Past {plan.n_ctx} tokens")), None),
            "choices": [{"id": k, "name": POLICY_NAMES[k]} for k in POLICIES],
        }

    def set_policy(self, conversation_id: str, policy: str | None) -> dict:
        if policy is not None and policy not in POLICIES:
            raise InvalidRequest(f"Unknown context policy {policy!r}; use one of {', '.join(POLICIES)}, or null for the plan's.")
        return self.store.set_context_policy(conversation_id, policy)

    def delete(self, conversation_id: str) -> None:
        self.stop(conversation_id)
        self.store.delete_conversation(conversation_id)
        self.models.forget_context(conversation_id)

    def stop(self, conversation_id: str) -> bool:
        """Ask the reply of a conversation to stop, wherever it is (still on its way to the engine
        included); False when none is under way. Runs on the event loop, as start_reply does."""
        self.store.get_conversation(conversation_id)
        if conversation_id not in self._active:
            return False
        reply = self._active[conversation_id]
        if reply is None:  # the model is being acquired: start_reply cancels it once submitted
            self._stop_asked.add(conversation_id)
        else:
            reply.stream.cancel()
        return True

    def save_finished(self, reply: Reply, event: Finished) -> dict:
        self.models.record(reply.model, event.stats, "chat")
        if event.dropped:  # the context filled up mid-reply and shifted past these
            reply.evicted_ids = sorted(set(reply.evicted_ids) | {reply.ids[i] for i in event.dropped
                                                                 if i < len(reply.ids) and reply.ids[i] is not None})
        reply.evicted_tokens = max(reply.evicted_tokens, event.stats.evicted_tokens)
        return self._save(reply, event.text, STATUS_FOR_FINISH[event.finish_reason], event.finish_reason, event.stats)

    def save_failed(self, reply: Reply, event: Failed) -> dict:
        return self._save(reply, "".join(reply.parts), "error", "error", None)

    def save_abandoned(self, reply: Reply) -> dict | None:
        """The client went away mid-reply: stop generating and keep what it was shown."""
        reply.stream.cancel()
        if reply.user_message is None:  # it never left the queue
            self.end_unstarted(reply)
            return None
        return self._save(reply, "".join(reply.parts), "stopped", "cancelled", None)

    def _save(self, reply: Reply, text: str, status: str, finish: str, stats: ReplyStats | None) -> dict:
        self._active.pop(reply.conversation_id, None)
        if reply.saved is None:
            fields = {"status": status, "finish_reason": finish, "model_id": reply.model.id}
            if reply.evicted_ids:
                fields["evicted_ids"] = json.dumps(reply.evicted_ids)
            if reply.evicted_tokens:
                fields["evicted_tokens"] = reply.evicted_tokens
            fields["prompt_tokens"] = reply.prompt_tokens
            if stats is not None:
                fields.update(
                    completion_tokens=stats.completion_tokens, ttft_s=stats.ttft_s, decode_tps=stats.decode_tps,
                    predicted_tps=reply.model.plan.decode_tps,
                )
                if stats.energy_j is not None:
                    fields.update(energy_cpu_j=stats.energy_cpu_j, energy_gpu_j=stats.energy_gpu_j)
                if stats.drafted_tokens:
                    fields.update(spec_source=stats.spec_source, drafted_tokens=stats.drafted_tokens,
                                  accepted_tokens=stats.accepted_tokens)
            try:
                if reply.row is not None:
                    saved = self.store.end_reply(reply.row["id"], text, **fields)
                else:
                    saved = self.store.add_message(reply.conversation_id, "assistant", text,
                                                   parent_id=reply.user_message["id"], **fields)
                reply.saved = self.store.with_siblings(saved)
            except NotFound:  # the conversation was deleted while the reply was written
                reply.saved = {}
        return reply.saved
