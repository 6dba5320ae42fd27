"""The generation step: one reply, from messages to the terminal event, on a loaded model.

`generate(model, request)` fits the conversation into the context (context.py), reads the prompt
in cancellable batches, and decodes with llama.cpp's native sampler, calling speculative decoding
(speculative.py) and context shifting (native.py) as strategies. It emits the request's events
and never raises: every outcome ends in exactly one Finished or Failed. No threads here: the
worker calls it on its own thread, tests may call it directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from tandem.runtime.engine.context import ContextPolicy, fit_conversation
from tandem.runtime.engine.model import LoadedModel
from tandem.runtime.engine.params import SamplingParams
from tandem.runtime.engine.speculative import SpecStats
from tandem.runtime.engine.stream import (Failed, Finished, Progress, ReplyStats, ReplyStream, Started, Token,
                                          TokenLogprob)
from tandem.runtime.engine.text import StopMatcher, Utf8Stream
from tandem.runtime.errors import ContextOverflow, Interrupted, InvalidSampling, RuntimeFailure
from tandem.runtime.hardware import energy

log = logging.getLogger("tandem")


@dataclass
class Request:
    messages: list[dict]
    sampling: SamplingParams
    stream: ReplyStream
    context: ContextPolicy = field(default_factory=ContextPolicy)
    key: str | None = None  # the conversation: its cache is saved and restored under this key
    evicted: tuple[int, ...] = ()  # messages left out before: they stay out
    speculative: str = "off"  # off, lookup, draft, auto
    max_reply: int | None = None  # the most tokens a reply may have under a shifting policy
    unseen: frozenset[int] = frozenset()  # left out before rendering: too far back to ever fit
    raw: bool = False  # messages[0]["content"] is the whole prompt, without the chat template
    tools: tuple[dict, ...] | None = None  # tool definitions handed to the chat template
    submitted: float = field(default_factory=time.perf_counter)


def generate(model: LoadedModel, req: Request, take_cache: Callable[[str | None], int] = lambda key: 0) -> None:
    """Write one reply into req.stream. take_cache(key) makes the decoder's cache the one of the
    conversation `key` and returns how many tokens came back from its saved state."""
    t_start = time.perf_counter()
    try:
        if req.stream.cancelled:
            req.stream.emit(Finished("", "cancelled", _stats(req, t_start, 0, 0, None, None, None)))
            return
        _Reply(model, req, t_start, take_cache).run()
    except Interrupted:
        req.stream.emit(Finished("", "cancelled", _stats(req, t_start, 0, 0, None, None, None)))
    except RuntimeFailure as err:
        req.stream.emit(Failed(err))
    except Exception as err:  # llama.cpp or numpy failure mid-decode
        log.exception("generation failed")
        req.stream.emit(Failed(RuntimeFailure(f"Generation failed: {err}")))


class _Reply:
    """The state of one reply while it is written."""

    def __init__(self, model: LoadedModel, req: Request, t_start: float, take_cache):
        self.model, self.req, self.t_start, self.take_cache = model, req, t_start, take_cache
        self.decoder = model.decoder
        self.pieces: list[str] = []
        self.generated: list[int] = []
        self.n_out, self.t_first, self.t_last, self.finish = 0, None, None, "length"
        self.logprobs: list[TokenLogprob] | None = [] if req.sampling.logprobs is not None else None
        self._pending: dict[int, TokenLogprob] = {}  # sampled, not yet taken: token -> its logprob

    # --- the prompt
    def fit(self):
        """(messages kept, prompt tokens, dropped indices, evicted tokens, whether the cache shifts,
        sink tokens, stop strings, n_ctx, room)."""
        model, req = self.model, self.req
        fmt, policy, n_ctx = model.formatter, req.context, model.n_ctx
        messages = req.messages
        if req.raw:
            prompt = fmt.raw(messages[0]["content"])
            if not prompt.tokens:
                raise InvalidSampling("The prompt is empty: send some text to continue.", "prompt")
            if len(prompt.tokens) >= n_ctx:
                raise ContextOverflow(len(prompt.tokens), n_ctx)
            return messages, prompt.tokens, (), 0, False, 0, prompt.stops
        fmt = fmt.with_tools(req.tools)
        seen = [m for i, m in enumerate(messages) if i not in req.unseen] if req.unseen else messages
        full = fmt.render(seen)  # evicted_tokens counts what was rendered, not what never could be
        prompt, dropped = full, ()
        room = min(req.sampling.max_tokens or n_ctx, max(16, n_ctx // 4))  # keep room for a reply
        budget = n_ctx - room
        if policy.policy != "stop" and (req.evicted or len(full.tokens) > budget):
            out, _ = fit_conversation(messages, lambda m: len(fmt.render(m).tokens), budget,
                                      max(1, budget - policy.chunk(n_ctx)), req.evicted)
            if out:
                dropped, gone = tuple(out), set(out)
                messages = [m for i, m in enumerate(messages) if i not in gone]
                prompt = fmt.render(messages)
        tokens = prompt.tokens
        shift = policy.policy == "sink_window" and self.decoder.can_shift
        sink = sink_tokens(fmt, messages, tokens, policy) if shift else 0
        if shift and len(tokens) > budget and budget > sink + 16:
            # one message longer than the window: keep the sink and the latest tokens
            tokens = tokens[:sink] + tokens[len(tokens) - (budget - sink):]
        evicted = max(0, len(full.tokens) - len(tokens))
        if len(tokens) >= n_ctx:
            raise ContextOverflow(len(tokens), n_ctx)
        return messages, tokens, dropped, evicted, shift, sink, prompt.stops

    def run(self) -> None:
        model, req, decoder = self.model, self.req, self.decoder
        stream, sampling, policy, n_ctx = req.stream, req.sampling, req.context, model.n_ctx
        messages, tokens, dropped, evicted_tokens, shift, sink, prompt_stops = self.fit()
        n_prompt = len(tokens)
        self.energy = energy.EnergyTrack(energy.meter())
        applied = "drop_turns" if policy.policy == "sink_window" and not shift else policy.policy
        stream.emit(Started(n_prompt, dropped, evicted_tokens, applied))
        restored = self.take_cache(req.key)
        cached = decoder.prefill(tokens, allow_shift=shift, on_progress=self.prefilled)
        tokens_in, shifted = tokens, decoder.shifted

        limit = sampling.max_tokens or (n_ctx - n_prompt)
        limit = min(limit, req.max_reply) if shift and req.max_reply else limit
        if not shift:
            limit = min(limit, n_ctx - n_prompt)
        self.limit = limit
        self.stops = StopMatcher(sampling.stop + prompt_stops)
        self.utf8 = Utf8Stream()
        later_dropped: list[int] = []
        left_out = set(dropped)
        kept_index = [i for i in range(len(req.messages)) if i not in left_out]

        source = model.source(req.speculative if sampling.plain else "off")
        controller = model.controller(req.key, source) if source is not None else None
        spec = SpecStats(source.name if source is not None else "none")
        context = list(tokens)  # what the reply continues: the prompt and the tokens so far
        if source is not None and not source.cheap:
            source.ignore_eos = sampling.ignore_eos
            source.sync(context)  # the draft model reads the prompt before the first token

        try:
            with decoder.sampler(sampling) as sampler:
                self.sampler = sampler
                token = self.sample() if not stream.cancelled else None
                while True:
                    if stream.cancelled:
                        self.finish = "cancelled"
                        break
                    if self.take(token):
                        break
                    context.append(token)
                    if len(decoder.cached) >= n_ctx:  # the context is full mid-reply: shift, or end here
                        cut = cut_for_reply(model, messages, tokens, sink, policy.chunk(n_ctx), n_prompt) if shift else None
                        if cut is None or not decoder.remove(sink, cut[0]):
                            break
                        shifted += cut[0]
                        evicted_tokens += cut[0]
                        gone = set(cut[1])
                        later_dropped += [kept_index[i] for i in cut[1]]
                        kept_index = [x for i, x in enumerate(kept_index) if i not in gone]
                        messages = [m for i, m in enumerate(messages) if i not in gone]
                        tokens = tokens[:sink] + tokens[sink + cut[0]:]
                        n_prompt = max(sink, n_prompt - cut[0])
                    t0 = time.perf_counter()
                    room = min(limit - self.n_out, n_ctx - len(decoder.cached) - 1)
                    draft = []
                    if controller is not None and room > 0:
                        if source.cheap:  # a lookup: see what it has, then decide
                            draft = source.propose(context, min(controller.max_k, room))
                            k = controller.choose(0.0, source.bucket, len(draft)) if draft else 0
                            draft = draft[:k]
                        else:  # a model: decide, then pay for the draft
                            k = min(controller.choose(source.cost_per_token(), source.bucket), room)
                            draft = source.propose(context, k) if k > 0 else []
                    if not draft:
                        decoder.decode([token])
                        token = self.sample()
                        if controller is not None:
                            controller.plain_step(time.perf_counter() - t0)
                        continue
                    # verify: [token + draft] in one batch; accept while the target's own samples agree
                    base = len(decoder.cached)
                    decoder.decode_all([token] + draft)
                    out = []
                    for i in range(len(draft) + 1):
                        out.append(sampler.sample(i))
                        if i == len(draft) or out[-1] != draft[i]:
                            break
                    decoder.truncate(base + len(out))  # token and the accepted drafts stay cached
                    controller.verified(len(draft), len(out) - 1, time.perf_counter() - t0, source.bucket)
                    spec.drafted += len(draft)
                    spec.accepted += len(out) - 1
                    ended = False
                    for y in out[:-1]:
                        if stream.cancelled or self.take(y):
                            ended = True
                            self.finish = "cancelled" if stream.cancelled else self.finish
                            break
                        context.append(y)
                    if ended:
                        break
                    token = out[-1]
        except Interrupted:
            self.finish = "cancelled"
        self.show(self.stops.feed(self.utf8.flush()))
        self.show(self.stops.flush())
        stats = _stats(req, self.t_start, len(tokens_in), self.n_out, self.t_first, self.t_last, cached,
                       evicted_tokens=evicted_tokens, shifted_tokens=shifted, restored_tokens=restored,
                       spec_source=spec.source, drafted_tokens=spec.drafted, accepted_tokens=spec.accepted,
                       **self.energy.fields())
        stream.emit(Finished("".join(self.pieces), self.finish, stats, tuple(later_dropped), tuple(self.generated),
                             None if self.logprobs is None else tuple(self.logprobs)))

    def sample(self) -> int:
        token = self.sampler.sample()
        if self.logprobs is not None:
            chosen, top = self.sampler.logprobs(token)
            piece = self.model.piece
            self._pending = {token: TokenLogprob(token, piece(token), chosen,
                                                 tuple((t, piece(t), lp) for t, lp in top))}
        return token

    # --- tokens out
    def show(self, text: str) -> None:
        if text:
            self.pieces.append(text)
            self.req.stream.emit(Token(text))

    def prefilled(self, done: int, total: int) -> None:
        self.energy.sample()  # a long prompt's joules too, read before a counter can wrap twice
        self.req.stream.emit(Progress(done, total))

    def take(self, token: int) -> bool:
        """One token of the reply; True when the reply ends with it."""
        if self.decoder.is_end(token):
            self.finish = "stop"
            return True
        self.generated.append(token)
        if self.logprobs is not None and token in self._pending:
            self.logprobs.append(self._pending.pop(token))
        self.n_out += 1
        self.energy.sample()
        self.t_last = time.perf_counter()
        if self.t_first is None:
            self.t_first = self.t_last
        self.show(self.stops.feed(self.utf8.feed(self.model.piece(token))))
        if self.stops.stopped:
            self.finish = "stop"
            return True
        return self.n_out >= self.limit


def sink_tokens(fmt, messages: list[dict], tokens: list[int], policy: ContextPolicy) -> int:
    """Tokens kept at the start when shifting: the leading system messages, at least sink_tokens."""
    n_system = 0
    while n_system < len(messages) and messages[n_system]["role"] == "system":
        n_system += 1
    sink = policy.sink_tokens
    if n_system:
        head = fmt.render(messages[:n_system], generation_prompt=False).tokens
        if tokens[: len(head)] == head:
            sink = max(sink, len(head))
    return min(sink, len(tokens) - 1)


def cut_for_reply(model: LoadedModel, messages, tokens, sink, need, reply_start) -> tuple[int, list[int]] | None:
    """How many tokens after the sink to remove when a reply fills the context, ending at the
    start of a user turn where one lies far enough in, and which messages that removes."""
    ends = []  # (token offset where message i starts, i) for user messages after the sink
    for i, m in enumerate(messages):
        if m["role"] != "user" or i == 0:
            continue
        head = model.formatter.render(messages[:i], generation_prompt=False).tokens
        if tokens[: len(head)] != head:
            break  # the template does not render prefixes stably: cut by tokens
        if len(head) > sink:
            ends.append((len(head), i))
    for offset, i in ends:
        if offset - sink >= need and offset <= reply_start:
            first = next(j for j in range(len(messages)) if messages[j]["role"] != "system")
            return offset - sink, list(range(first, i))
    if need <= 0 or sink + need >= len(model.decoder.cached):
        return None
    return need, []


def _stats(req: Request, t_start: float, n_prompt: int, n_out: int, t_first, t_last, cached, **extra) -> ReplyStats:
    now = time.perf_counter()
    decode = None
    if t_first is not None and n_out >= 2 and t_last > t_first:
        decode = (n_out - 1) / (t_last - t_first)
    return ReplyStats(
        prompt_tokens=n_prompt,
        completion_tokens=n_out,
        cached_tokens=cached or 0,
        queue_s=t_start - req.submitted,
        ttft_s=None if t_first is None else t_first - req.submitted,
        decode_tps=decode,
        total_s=now - req.submitted,
        **extra,
    )
