"""The plan's answer to a conversation longer than the context: which policy, how big a sink,
and how much to free at each eviction."""

from __future__ import annotations

from tandem.runtime.model_info import ModelInfo

# Recurrent and hybrid architectures keep a state per sequence, not positions that can be moved
# or removed one by one: llama.cpp cannot shift or cut their cache.
NO_SHIFT_ARCHS = frozenset({
    "mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "jamba", "falcon-h1", "granitehybrid",
    "lfm2", "plamo2", "nemotron_h", "qwen3next",
})
SINK_TOKENS = 4  # StreamingLLM keeps four initial tokens as attention sinks


def context_plan(info: ModelInfo, n_ctx: int, prefill_tps: float) -> tuple[str, int, int, str]:
    """(policy, sink_tokens, evict_chunk, reason) for a model at a context length."""
    if info.architecture in NO_SHIFT_ARCHS:
        chunk = n_ctx // 4
        seconds = (n_ctx - chunk) * 3 / 4 / max(prefill_tps, 1.0)
        return ("drop_turns", 0, chunk,
                f"Past {n_ctx} tokens: drop the oldest turns ({info.architecture} keeps a recurrent state that "
                f"cannot be shifted), {chunk} tokens at a time; each drop re-reads the rest (about {seconds:.1f} s).")
    chunk = n_ctx // 8
    return ("sink_window", SINK_TOKENS, chunk,
            f"Past {n_ctx} tokens: keep the system prompt (at least {SINK_TOKENS} tokens) and slide over the rest, "
            f"freeing {chunk} tokens at a time by shifting the cache in place: no turn is evaluated again.")
