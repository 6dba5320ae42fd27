"""How a model would run here, before it is downloaded: the planner's own answer for its header.

The verdict is the real plan (runtime.planner.plan_model with this machine's profile and
calibration), summed up: fits on the GPU / split GPU+CPU / CPU only / does not fit, predicted
decode tokens/s, the longest context that costs no speed, memory per device, and the installed
models that could draft for it. One quant per repo is marked recommended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from tandem.runtime.errors import RuntimeFailure
from tandem.runtime.hardware import HardwareProfile
from tandem.runtime.model_info import ModelInfo, inspect_model
from tandem.runtime.planner import Calibration, PlanError, plan_model
from tandem.runtime.planner.search import pick_gpu
from tandem.runtime.planner.speculative import draft_compatible

LABELS = {"gpu": "Fits on the GPU", "split": "Split GPU + CPU", "cpu": "CPU only", "too_big": "Does not fit"}
# Above reading speed, quality matters more than more speed; below it, speed comes first.
READING_TPS = 12.0
# Below about 3.5 bits per weight (Q2_K, IQ2, Q3_K_S) answers degrade visibly: chosen only when
# nothing better fits. Past 8.5 (Q8_0) more bits add nothing a person notices but cost speed.
MIN_BPW, MAX_USEFUL_BPW = 3.5, 8.5


@dataclass
class Verdict:
    fit: str
    label: str
    decode_tps: float | None = None
    n_ctx: int | None = None
    n_gpu_layers: int = 0
    n_layer: int = 0
    memory: list[dict] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)
    speed_cost: float | None = None  # split: the share of speed lost to the layers on the CPU
    bpw: float | None = None
    reason: str = ""
    recommended: bool = False
    why_recommended: str | None = None
    speed_basis: str = "estimated"  # Plan.speed_basis: "calibrated" when replies here correct it

    def to_dict(self) -> dict:
        return dict(vars(self))

    def summary(self) -> str:
        if self.fit == "too_big":
            return f"{self.label}: {self.reason}"
        parts = [self.label]
        if self.fit == "split":
            parts[0] += f" ({self.n_gpu_layers - 1} of {self.n_layer} layers on the GPU"
            parts[0] += f", {self.speed_cost:.0%} slower than all on the GPU)" if self.speed_cost else ")"
        parts.append(f"{self.decode_tps:.1f} tokens/s")
        parts.append(f"context {self.n_ctx}")
        parts.append(", ".join(f"{m['device']} {m['total'] / 2**30:.2f} GiB" for m in self.memory))
        if self.drafts:
            parts.append(f"draft: {', '.join(self.drafts)}")
        return "; ".join(parts)


_installed_cache: dict[tuple, ModelInfo | None] = {}


def installed_infos(models: list[dict]) -> dict[str, ModelInfo]:
    """ModelInfo of installed models, each header read once per file version (size, mtime)."""
    out = {}
    for m in models:
        try:
            st = os.stat(m["path"])
        except OSError:
            continue
        key = (m["path"], st.st_size, st.st_mtime_ns)
        if key not in _installed_cache:
            try:
                _installed_cache[key] = inspect_model(Path(m["path"]))
            except (OSError, RuntimeFailure):
                _installed_cache[key] = None
        if _installed_cache[key] is not None:
            out[m["id"]] = _installed_cache[key]
    return out


def judge(info: ModelInfo, hw: HardwareProfile, calibration: Calibration | None = None,
          installed: dict[str, ModelInfo] | None = None, threads: int | None = None) -> Verdict:
    """The verdict for one model (from its header) on this machine; threads: TANDEM_N_THREADS."""
    bpw = round(info.weight_bytes * 8 / info.n_params, 2) if info.n_params else None
    try:
        plan = plan_model(info, hw, None, calibration=calibration, threads=threads)
    except PlanError as err:
        return Verdict("too_big", LABELS["too_big"], n_layer=info.n_layer, bpw=bpw, reason=str(err))
    full = info.n_layer + 1
    fit = "gpu" if plan.n_gpu_layers >= full else "split" if plan.n_gpu_layers else "cpu"
    v = Verdict(fit, LABELS[fit], plan.decode_tps, plan.n_ctx, plan.n_gpu_layers, info.n_layer,
                [m.as_dict() for m in plan.memory], bpw=bpw, reason=plan.reasons[0] if plan.reasons else "",
                speed_basis=plan.speed_basis)
    if fit == "split":
        v.speed_cost = _split_cost(info, hw, plan.n_ctx, plan.decode_tps, calibration, threads)
    v.drafts = [mid for mid, d in (installed or {}).items() if draft_compatible(info, d) is None]
    return v


def _split_cost(info, hw, n_ctx, tps, calibration, threads) -> float | None:
    """What the layers left on the CPU cost: the speed planned on this GPU were it large enough."""
    gpu, _ = pick_gpu(hw)
    if gpu is None or not tps:
        return None
    roomy = replace(hw, gpus=tuple(replace(g, memory_free_bytes=(g.memory_free_bytes or 0) + 4 * info.weight_bytes)
                                   if g.index == gpu.index else g for g in hw.gpus))
    try:
        full = plan_model(info, roomy, n_ctx, calibration=calibration, threads=threads)
    except PlanError:
        return None
    return round(max(0.0, 1 - tps / full.decode_tps), 3) if full.decode_tps else None


def recommend(verdicts: list[Verdict]) -> Verdict | None:
    """Mark the quant with the best speed x quality here (returned; None when nothing fits)."""
    fitting = [v for v in verdicts if v.fit != "too_big" and v.decode_tps]
    if not fitting:
        return None
    good = [v for v in fitting if (v.bpw or 0) >= MIN_BPW] or fitting

    def quality(v: Verdict) -> tuple:
        return (min(v.bpw or 0, MAX_USEFUL_BPW), v.decode_tps)

    on_gpu = [v for v in good if v.fit == "gpu"]
    fast = [v for v in good if v.decode_tps >= READING_TPS]
    if on_gpu:
        best, why = max(on_gpu, key=quality), "the highest quality that fits entirely on the GPU"
    elif fast:
        best, why = max(fast, key=quality), f"the highest quality that still decodes above {READING_TPS:.0f} tokens/s here"
    else:
        best, why = max(good, key=lambda v: v.decode_tps), "the fastest here (none reaches reading speed)"
    best.recommended, best.why_recommended = True, why
    return best
