"""Parameters for loading a model and for sampling a reply: explicit, frozen, validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tandem.runtime.hardware import physical_cores

MAX_TOP_LOGPROBS = 20
KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # name -> ggml type id (llama_cpp.GGML_TYPE_*)


@dataclass(frozen=True)
class LoadParams:
    """How to load one GGUF file. Nothing is left to the library's defaults."""

    path: Path
    n_ctx: int = 4096
    n_threads: int = field(default_factory=physical_cores)
    n_threads_batch: int = field(default_factory=physical_cores)
    n_gpu_layers: int = 0
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    type_k: str = "f16"  # KV cache types: f16, q8_0, q4_0 (a quantized V needs flash attention)
    type_v: str = "f16"
    offload_kqv: bool = True
    swa_full: bool = True
    main_gpu: int = 0
    tensor_split: tuple[float, ...] | None = None  # share of the offloaded layers per GPU, in device order
    use_mmap: bool = True
    # ggml-rpc workers (host:port) whose devices take the offloaded layers: only ever loaded in a
    # pool host process (runtime.pool.host), as a failed connection ends the process
    rpc: tuple[str, ...] = ()
    # with workers: this machine's GPU (its index among the GPUs llama.cpp sees) listed after them,
    # so that it keeps the last offloaded layers; None: the workers and this CPU only
    rpc_local_gpu: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "rpc", tuple(self.rpc))
        if self.n_ctx < 16:
            raise ValueError(f"n_ctx must be at least 16, got {self.n_ctx}")
        for name in ("n_threads", "n_threads_batch", "n_batch", "n_ubatch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("type_k", "type_v"):
            if getattr(self, name) not in KV_TYPES:
                raise ValueError(f"{name} must be one of {', '.join(KV_TYPES)}, got {getattr(self, name)!r}")
        if self.type_v != "f16" and not self.flash_attn:
            raise ValueError("a quantized V cache needs flash_attn=True")
        if self.n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be -1 (all) or more, got {self.n_gpu_layers}")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token. temperature 0 is greedy: the same prompt gives the same text."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # never end the turn: always max_tokens tokens (benchmarks)
    presence_penalty: float = 0.0  # subtracted once from each token already in the last 64
    frequency_penalty: float = 0.0  # subtracted per occurrence in the last 64
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    grammar: str | None = None  # a GBNF grammar (root rule "root") the reply must follow
    logprobs: int | None = None  # report each token's log-probability and this many alternatives

    def __post_init__(self) -> None:
        if self.ignore_eos and self.max_tokens is None:
            raise ValueError("ignore_eos needs max_tokens, or the reply never ends")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or more, got {self.top_k}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be between -2 and 2, got {getattr(self, name)}")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.logprobs}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in self.logit_bias))

    @property
    def plain(self) -> bool:
        """Nothing asked of the sampler that speculative drafting would have to follow too."""
        return self.grammar is None and self.logprobs is None
