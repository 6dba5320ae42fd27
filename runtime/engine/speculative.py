"""Speculative decoding: draft sources, and the controller that decides when drafting pays.

The engine verifies a draft of k tokens by evaluating [last token + draft] in one batch and
sampling the target at each position with its own sampler; tokens are accepted while they equal
the draft, and the first sample that differs is the target's own next token (llama.cpp's rule).
Greedy output is therefore token-for-token the plain output, and sampled output follows the
target's distribution. What a draft costs and gains is measured as the reply runs, and the
controller drafts only while the expected gain is above 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import llama_cpp

from tandem.runtime.errors import DraftModelError


class DraftSource(Protocol):
    name: str

    def propose(self, context: list[int], k: int) -> list[int]:
        """Up to k tokens likely to follow `context` (may be fewer, or none)."""

    cheap: bool  # proposing costs nothing (look first, then decide)

    def cost_per_token(self) -> float | None:
        """Seconds one drafted token costs (0 for a lookup, None while unmeasured)."""


MATCH_BUCKETS = (32, 16, 8, 4, 0)  # lookup matches by length: each has its own acceptance estimate
PRIOR_P = {32: 0.9, 16: 0.85, 8: 0.75, 4: 0.6, 0: 0.4, None: 0.6}


class PromptLookup:
    """Drafts by finding the latest n-gram of the context earlier in the context (the prompt and
    the reply so far) and proposing what followed it: pays when the reply copies (code edits,
    quotes, summaries), proposes nothing otherwise."""

    name = "prompt_lookup"
    cheap = True  # proposing costs nothing: look first, then decide how much to draft

    def __init__(self, ngram: int = 3, min_ngram: int = 2):
        self.ngram, self.min_ngram = ngram, min_ngram
        self.bucket: int | None = None
        self._seen: list[int] = []
        self._index: dict[tuple, int] = {}  # n-gram -> where the latest occurrence ends

    def _extend(self, context: list[int]) -> None:
        if context[: len(self._seen)] != self._seen:  # another context: index from scratch
            self._seen, self._index = [], {}
        start = len(self._seen)
        self._seen = list(context)
        for end in range(max(start, self.min_ngram), len(context)):  # n-grams ending before the last token
            for n in range(self.min_ngram, self.ngram + 1):
                if end >= n:
                    self._index[(n, *context[end - n : end])] = end

    def propose(self, context: list[int], k: int) -> list[int]:
        """What followed the latest earlier occurrence of the context's last n-gram; `bucket`
        then says how long the match is (longer matches: a copy in progress, likelier right)."""
        self.bucket = None
        if k <= 0 or len(context) <= self.min_ngram:
            return []
        self._extend(context)
        for n in range(self.ngram, self.min_ngram - 1, -1):
            end = self._index.get((n, *context[len(context) - n :]))
            if end is not None and end < len(context):
                match = n
                while match < 64 and end - match - 1 >= 0 and context[end - match - 1] == context[-match - 1]:
                    match += 1
                self.bucket = next(b for b in MATCH_BUCKETS if match >= b)
                return context[end : end + k]
        return []

    def cost_per_token(self) -> float | None:
        return 0.0


@dataclass
class Controller:
    """Chooses the draft length from measured acceptance and costs; 0 means decode plainly.

    p: probability that a drafted token is accepted (a running estimate). step_s: a plain decode
    step. A verify batch of k drafts costs step_s + scale * step_s * (a + b * k): the shape (a: the
    fixed cost of going batched, b: each further token) is what llama.cpp's CPU kernels show for
    small batches, and `scale` is learnt from the batches verified. The expected tokens per verify
    are (1 - p^(k+1)) / (1 - p); the controller drafts the k that maximizes tokens per second when
    that beats plain decoding by `margin`, and otherwise probes with one token now and then
    (every `probe_every` plain steps) so that it can switch back on.
    """

    max_k: int = 8
    step_s: float | None = None
    scale: float = 1.0
    a: float = 0.4
    b: float = 0.55
    margin: float = 1.05
    probe_every: int = 12  # plain steps between probes; doubles after each failed probe (up to 256)
    smoothing: float = 0.5
    measured: bool = False  # a verify batch has been timed
    _plain_since: int = 0
    _probing: bool = False
    _counts: dict = field(default_factory=dict)  # bucket -> [accepted, tried] (decaying counts)

    def p(self, bucket=None) -> float:
        """Estimated acceptance of a drafted token for drafts of this kind (bucket)."""
        accepted, tried = self._counts.get(bucket, (PRIOR_P.get(bucket, 0.6) * 2, 2.0))
        return accepted / tried

    def expected_tokens(self, k: int, bucket=None) -> float:
        p = min(self.p(bucket), 0.999)
        return (1 - p ** (k + 1)) / (1 - p)

    def verify_cost(self, k: int) -> float:
        """A verify batch of k drafts, in plain steps."""
        return 1 + self.scale * (self.a + self.b * k)

    def speedup(self, k: int, draft_s: float = 0.0, bucket=None) -> float:
        if not self.step_s:
            return 1.0
        return self.expected_tokens(k, bucket) / (self.verify_cost(k) + k * draft_s / self.step_s)

    def choose(self, draft_s: float | None = 0.0, bucket=None, available: int | None = None) -> int:
        """How many tokens to draft (0: decode plainly); available: the most the source has;
        draft_s None: the draft's cost is not known yet (draft two tokens to measure it)."""
        if self.step_s is None:  # no plain step measured yet
            return 0
        if draft_s is None:
            return 2
        self._probing = False
        best_k, best = 0, self.margin
        top = min(self.max_k, available or self.max_k)
        for k in range(1, top + 1):
            s = self.speedup(k, draft_s, bucket)
            if s > best:
                best_k, best = k, s
        if best_k == 0:
            # even drafts that are always right would not pay (a draft as slow as the model): no probes
            ceiling = (top + 1) / (self.verify_cost(top) + top * draft_s / self.step_s)
            if ceiling < self.margin:
                return 0
            self._plain_since += 1
            if self._plain_since >= self.probe_every:
                self._plain_since = 0
                self._probing = True
                return 1
        return best_k

    def plain_step(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else self.step_s + self.smoothing * (seconds - self.step_s)

    def verified(self, k: int, accepted: int, seconds: float, bucket=None) -> None:
        """A verify batch of k drafts took `seconds` and `accepted` of them were right."""
        self._plain_since = 0
        if self._probing:  # back off while probes fail; back to eager once one succeeds
            self.probe_every = 12 if accepted else min(self.probe_every * 2, 256)
            self._probing = False
        fails = 0 if accepted == k else 1
        decay = 1 - self.smoothing
        a, t = self._counts.get(bucket, (PRIOR_P.get(bucket, 0.6) * 2, 2.0))
        self._counts[bucket] = (a * decay + accepted, t * decay + accepted + fails)
        if self.step_s:
            seen = max(0.05, (seconds / self.step_s - 1) / (self.a + self.b * k))
            self.scale = seen if not self.measured else self.scale + 0.3 * (seen - self.scale)
            self.measured = True


@dataclass
class SpecStats:
    source: str = "none"
    drafted: int = 0
    accepted: int = 0


def vocab_mismatch(target_vocab, draft_vocab) -> str | None:
    """Why a draft model cannot serve a target (llama.cpp's common_speculative_are_compatible
    rules), or None when it can."""
    if llama_cpp.llama_vocab_type(target_vocab) != llama_cpp.llama_vocab_type(draft_vocab):
        return "the vocabularies are of different types"
    n_t, n_d = llama_cpp.llama_vocab_n_tokens(target_vocab), llama_cpp.llama_vocab_n_tokens(draft_vocab)
    if abs(n_t - n_d) > 128:
        return f"the vocabularies differ in size ({n_t} and {n_d} tokens)"
    for fn in (llama_cpp.llama_vocab_bos, llama_cpp.llama_vocab_eos, llama_cpp.llama_vocab_get_add_bos,
               llama_cpp.llama_vocab_get_add_eos):
        if fn(target_vocab) != fn(draft_vocab):
            return "they mark the start and end of text differently (BOS/EOS)"
    for t in range(5, min(n_t, n_d)):
        if llama_cpp.llama_vocab_get_text(target_vocab, t) != llama_cpp.llama_vocab_get_text(draft_vocab, t):
            return f"token {t} is a different piece of text in each"
    return None


class DraftModel:
    """A second, smaller model that drafts greedily, with its own KV cache kept in step with the
    target's accepted tokens (by prefix reuse on each proposal)."""

    def __init__(self, llama, target_vocab, name: str):
        from tandem.runtime.engine.native import NativeDecoder
        from tandem.runtime.engine.params import SamplingParams

        why = vocab_mismatch(target_vocab, llama._model.vocab)
        if why:
            raise DraftModelError(f"{name} cannot draft for this model: {why}. Pick a draft from the same family.")
        self.name = f"draft:{name}"
        self.llama = llama
        self.decoder = NativeDecoder(llama)
        self._samplers = {flag: self.decoder.sampler(SamplingParams(temperature=0.0, ignore_eos=flag, max_tokens=1))
                          for flag in (False, True)}
        self.ignore_eos = False  # set per reply: a reply that may not end must not be drafted to its end
        self.n_ctx = min(llama.n_ctx(), len(llama.input_ids))
        self._per_token: float | None = None
        self.bucket = None
        self.decoder.decode([max(llama_cpp.llama_vocab_bos(llama._model.vocab), 0)])  # first-use costs now
        self.decoder.decode([max(llama_cpp.llama_vocab_bos(llama._model.vocab), 0)])
        self.decoder.reset()

    cheap = False  # drafting costs a decode per token: decide first, then draft

    def sync(self, context: list[int]) -> None:
        """Bring the draft's cache up to `context` (the prompt before the first token; the
        accepted tokens later). Prefix reuse keeps this to the tokens it has not seen."""
        if len(context) < self.n_ctx:
            self.decoder.prefill(context)

    def propose(self, context: list[int], k: int) -> list[int]:
        if k <= 0 or len(context) + k >= self.n_ctx:
            return []
        self.sync(context)
        t0 = time.perf_counter()
        out = []
        sampler = self._samplers[self.ignore_eos]
        for i in range(k):
            t = sampler.sample()
            if self.decoder.is_end(t):
                break
            out.append(t)
            if i < k - 1:
                self.decoder.decode([t])
        if out:
            per = (time.perf_counter() - t0) / len(out)
            self._per_token = per if self._per_token is None else self._per_token + 0.25 * (per - self._per_token)
        return out

    def cost_per_token(self) -> float | None:
        """Seconds per drafted token, measured (None until the first draft)."""
        return self._per_token

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.__exit__(None, None, None)
        self.decoder.close()
        self.llama.close()
