"""The Plan: how to run one model on one machine, what it will cost, and why."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tandem.runtime.planner.memory import DeviceMemory


@dataclass(frozen=True)
class Plan:
    model_path: str
    n_ctx: int
    n_gpu_layers: int
    gpu_index: int | None
    tensor_split: tuple[float, ...] | None  # several GPUs; None: one device
    type_k: str
    type_v: str
    flash_attn: bool
    offload_kqv: bool
    swa_full: bool
    n_threads: int
    n_threads_batch: int
    n_batch: int
    n_ubatch: int
    speculative: str  # "none", "prompt_lookup" or "draft:<model id>" (drafting is adaptive either way)
    memory: tuple[DeviceMemory, ...]
    decode_tps: float
    prefill_tps: float
    calibration: float  # measured/predicted ratio applied (1.0: uncalibrated)
    reasons: tuple[str, ...]
    dry_run: dict | None = None  # what llama.cpp reported for this plan, when verified
    alternatives: int = 0  # candidates that fit
    fallback_from: str | None = field(default=None)  # a plan that failed to load, when this replaced it
    context_policy: str = "sink_window"  # when a conversation outgrows n_ctx: sink_window, drop_turns, stop
    sink_tokens: int = 4  # tokens always kept at the start (besides the system prompt)
    evict_chunk: int = 0  # tokens freed per eviction beyond what is needed
    # the draft model when speculative is "draft:<id>": model, path, device, n_gpu_layers, k,
    # acceptance (and whether measured), plain_tps (the best plan without it), predicted_tps
    draft: dict | None = None
    # layers on other machines over llama.cpp RPC (runtime.planner.pool): workers, layers each,
    # the network's cost, the prediction without them; None: this machine alone
    pool: dict | None = None
    # what decode_tps stands on (Calibration.basis): "measured" (this model's replies on this
    # machine), "calibrated" (other models' replies here), "estimated" (nothing measured here)
    speed_basis: str = "estimated"
    speed_samples: int = 0

    def load_kwargs(self) -> dict:
        """The LoadParams fields this plan sets."""
        return {
            "n_ctx": self.n_ctx, "n_gpu_layers": self.n_gpu_layers, "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads_batch, "n_batch": self.n_batch, "n_ubatch": self.n_ubatch,
            "flash_attn": self.flash_attn, "type_k": self.type_k, "type_v": self.type_v,
            "offload_kqv": self.offload_kqv, "swa_full": self.swa_full,
            "main_gpu": self.gpu_index or 0,
            "tensor_split": self.tensor_split,
            "rpc": tuple(self.pool["endpoints"]) if self.pool else (),
            "rpc_local_gpu": (self.gpu_index or 0) if self.pool and self.pool.get("local_gpu_layers") else None,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = [m.as_dict() for m in self.memory]
        return d

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)
