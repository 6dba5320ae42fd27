"""Decoding on llama.cpp's own API: batches in, native sampler chain out.

llama-cpp-python's `Llama.generate` copies the full vocabulary's logits into numpy and samples in
Python for every token; llama.cpp's sampler chain (`llama_sampler_*`) samples in C on the logits
where they are. The chain mirrors llama-cpp-python's (penalties, then greedy at temperature 0,
else top-k, top-p, min-p, temperature, seeded draw), so greedy output is the same text.
"""

from __future__ import annotations

import ctypes

import llama_cpp

from runtime.engine.params import SamplingParams
from runtime.errors import RuntimeFailure

PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size


class NativeDecoder:
    """Owns the KV cache of sequence 0 of one context and knows which tokens it holds."""

    def __init__(self, llama: "llama_cpp.Llama"):
        self.ctx = llama._ctx.ctx
        self.vocab = llama._model.vocab
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = llama.n_batch
        self.cached: list[int] = []  # the tokens whose keys and values are in the cache, in order

    def prefill(self, tokens: list[int]) -> int:
        """Evaluate a prompt, reusing the cached prefix it shares; returns how many were reused."""
        keep = 0
        for a, b in zip(self.cached, tokens):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # the last prompt token is always evaluated: its logits sample
        if keep < len(self.cached):
            if not llama_cpp.llama_memory_seq_rm(self.memory, 0, keep, -1):
                llama_cpp.llama_memory_clear(self.memory, True)  # cannot cut this cache: start over
                keep = 0
            self.cached = self.cached[:keep]
        rest = tokens[keep:]
        for i in range(0, len(rest), self.n_batch):
            self.decode(rest[i : i + self.n_batch])
        return keep

    def decode(self, tokens: list[int]) -> None:
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        rc = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            self.reset()
            raise RuntimeFailure(f"llama.cpp could not evaluate the tokens (llama_decode returned {rc}).")
        self.cached.extend(tokens)

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)
        self.cached = []

    def sampler(self, sampling: SamplingParams) -> "Sampler":
        return Sampler(self, sampling)

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))


class Sampler:
    """A native sampler chain; use as a context manager so that it is freed."""

    def __init__(self, decoder: NativeDecoder, s: SamplingParams):
        self.decoder = decoder
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = lambda smpl: llama_cpp.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if s.repeat_penalty != 1.0:
            add(llama_cpp.llama_sampler_init_penalties(PENALTY_LAST_N, s.repeat_penalty, 0.0, 0.0))
        if s.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if s.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(s.top_k))
            add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(s.temperature))
            seed = s.seed if s.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
            add(llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(seed).value))
        self.chain = chain

    def sample(self) -> int:
        """The next token from the logits of the last evaluated position (accepted into the chain)."""
        return llama_cpp.llama_sampler_sample(self.chain, self.decoder.ctx, -1)

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        llama_cpp.llama_sampler_free(self.chain)
