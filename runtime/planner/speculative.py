"""Whether a draft model pays, and where each model runs (Dovetail: draft on the GPU, target
verified on the CPU), predicted from the speed model.

A verify of k drafts costs one decode step of the target (reading its weights once) plus the
arithmetic of k more tokens on each device: 2 x parameters there / that device's FLOP/s (on a
small CPU this is what makes verification dear; on a GPU it is nearly free). A drafted token
costs one decode step of the draft in its placement. With acceptance a per drafted token, a
verify yields (1 - a^(k+1)) / (1 - a) tokens. The prior acceptance for a draft of the same
family is 0.7 (8B + 1B on an RTX 3060: 72%), replaced by what replies with that pair measured.
"""

from __future__ import annotations

from dataclasses import replace

from tandem.runtime.hardware.profile import HardwareProfile
from tandem.runtime.model_info import ModelInfo
from tandem.runtime.planner.plan import Plan
from tandem.runtime.planner.speed import CPU_VERIFY_FLOPS_PER_CORE, GPU_FLOPS_PER_GBPS, gpu_bandwidth_gbps

PRIOR_ACCEPTANCE = 0.7
MIN_GAIN = 1.1  # a draft model must beat plain decoding by this much to be worth its memory
MAX_K = 8


def draft_compatible(target: ModelInfo, draft: ModelInfo) -> str | None:
    """Why `draft` cannot draft for `target` as far as the headers tell (None: it may; the engine
    checks every token's text when it loads the pair)."""
    if draft.path == target.path:
        return "it is the same file"
    if draft.tokenizer != target.tokenizer:
        return f"another tokenizer ({draft.tokenizer} against {target.tokenizer})"
    if not draft.vocab_size or not target.vocab_size or abs(draft.vocab_size - target.vocab_size) > 128:
        return f"another vocabulary size ({draft.vocab_size} against {target.vocab_size})"
    if draft.weight_bytes * 3 > target.weight_bytes:
        return "not much smaller than the model (a draft should be under a third of its size)"
    return None


def expected_tokens(a: float, k: int) -> float:
    a = min(max(a, 0.0), 0.999)
    return (1 - a ** (k + 1)) / (1 - a)


def _flops(hw: HardwareProfile, threads: int, plan_or_gpu) -> tuple[float, float]:
    cpu = CPU_VERIFY_FLOPS_PER_CORE * min(threads, hw.cpu.physical_cores or threads)
    gpu_bw = None
    if plan_or_gpu is not None:
        gpu_bw = gpu_bandwidth_gbps(plan_or_gpu) or 200.0
    return cpu, (gpu_bw or 0) * GPU_FLOPS_PER_GBPS


def speculative_speed(target: ModelInfo, plan: Plan, draft_tps: float, a: float, hw: HardwareProfile,
                      gpu=None) -> tuple[float, int]:
    """(tokens/s, k) of the best draft length for a target placed as `plan`, a draft decoding at
    draft_tps, and acceptance a."""
    cpu_flops, gpu_flops = _flops(hw, plan.n_threads, gpu)
    step = 1.0 / plan.decode_tps
    on_gpu = min(1.0, plan.n_gpu_layers / max(1, target.n_layer + 1)) if gpu is not None else 0.0
    per_token = 2 * target.n_params * ((1 - on_gpu) / cpu_flops + (on_gpu / gpu_flops if on_gpu else 0.0))
    best = (plan.decode_tps, 0)
    for k in range(1, MAX_K + 1):
        tps = expected_tokens(a, k) / (step + k * per_token + k / draft_tps)
        if tps > best[0]:
            best = (tps, k)
    return best


def choose_draft(target: ModelInfo, plan: Plan, drafts: list[tuple[str, ModelInfo, float | None]],
                 hw: HardwareProfile, plan_target, plan_draft) -> tuple[Plan, list[str]]:
    """The plan with the best draft model (Plan.speculative = "draft:<id>", Plan.draft filled) if
    one beats plain decoding by MIN_GAIN, else `plan` unchanged; plus the reasons either way.

    drafts: (model id, info, measured acceptance or None). plan_target(hw) plans the target on a
    machine (used with the GPU's free memory reduced by a draft placed there); plan_draft(info, hw,
    gpu) returns, for the draft entirely on that GPU (None: on the CPU), (decode tokens/s, bytes on
    the GPU besides the CUDA context, bytes on the CPU), or None where it does not fit.
    """
    reasons = []
    best = None
    for model_id, info, measured in drafts:
        why = draft_compatible(target, info)
        if why:
            continue
        a = measured if measured is not None else PRIOR_ACCEPTANCE
        source = "measured" if measured is not None else "expected"
        options = []
        # both models share the host's memory: the draft gets what the model's plan leaves
        cpu_draft = plan_draft(info, _less_host_memory(hw, _cpu_bytes(plan)), None)
        if cpu_draft is not None:
            tps, k = speculative_speed(target, plan, cpu_draft[0], a, hw, _plan_gpu(hw, plan))
            options.append((tps, k, plan, "CPU", 0))
        gpu = _best_gpu(hw)
        if gpu is not None:
            on_gpu = plan_draft(info, hw, gpu)
            if on_gpu is not None:
                draft_tps, draft_bytes, draft_cpu_bytes = on_gpu
                shrunk = replace(_less_host_memory(hw, draft_cpu_bytes), gpus=tuple(
                    replace(g, memory_free_bytes=(g.memory_free_bytes or 0) - draft_bytes) if g.index == gpu.index else g
                    for g in hw.gpus))
                target_plan = plan_target(shrunk)
                if target_plan is not None:
                    tps, k = speculative_speed(target, target_plan, draft_tps, a, shrunk, _plan_gpu(shrunk, target_plan))
                    options.append((tps, k, target_plan, f"GPU{gpu.index}", info.n_layer + 1))
        for tps, k, target_plan, device, ngl in options:
            if best is None or tps > best[0]:
                best = (tps, k, target_plan, device, ngl, model_id, info, a, source)
    if best is None or not best[1] or best[0] < plan.decode_tps * MIN_GAIN:
        if best is not None:
            reasons.append(f"A draft model would not pay here: {best[5]} predicts {best[0]:.1f} tokens/s against "
                           f"{plan.decode_tps:.1f} plain (acceptance {best[7]:.0%} {best[8]}); prompt lookup instead.")
        return plan, reasons
    tps, k, target_plan, device, ngl, model_id, info, a, source = best
    where = (f"the draft entirely on {device} and the model verifying with {target_plan.n_gpu_layers} GPU layers"
             if device != "CPU" else "both on the CPU")
    reasons.append(f"Speculative decoding with {model_id} as the draft ({where}): {k} tokens a step, "
                   f"acceptance {a:.0%} {source}, predicted {tps:.1f} tokens/s against {plan.decode_tps:.1f} plain "
                   f"({tps / plan.decode_tps:.2f}x); it switches itself off while it does not pay.")
    chosen = replace(target_plan, speculative=f"draft:{model_id}", draft={
        "model": model_id, "path": str(info.path), "device": device, "n_gpu_layers": ngl, "k": k,
        "acceptance": round(a, 3), "acceptance_source": source, "plain_tps": round(plan.decode_tps, 2),
        "predicted_tps": round(tps, 2)})
    return chosen, reasons


def _cpu_bytes(plan: Plan) -> int:
    return sum(m.total for m in plan.memory if m.device == "CPU")


def _less_host_memory(hw: HardwareProfile, used: int) -> HardwareProfile:
    if hw.memory.available_bytes is None:
        return hw
    return replace(hw, memory=replace(hw.memory, available_bytes=max(0, hw.memory.available_bytes - used)))


def _best_gpu(hw: HardwareProfile):
    usable = [g for g in hw.gpus if not g.unified and g.memory_free_bytes]
    return max(usable, key=lambda g: (g.memory_free_bytes, gpu_bandwidth_gbps(g) or 0), default=None)


def _plan_gpu(hw: HardwareProfile, plan: Plan):
    if not plan.n_gpu_layers or plan.gpu_index is None:
        return None
    return next((g for g in hw.gpus if g.index == plan.gpu_index), None)
