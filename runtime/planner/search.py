"""Plan search: enumerate placements, keep those that fit with margin, pick the fastest, explain it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tandem.runtime.errors import RuntimeFailure
from tandem.runtime.hardware.probe import offload_target
from tandem.runtime.hardware.profile import GpuInfo, HardwareProfile
from tandem.runtime.model_info import ModelInfo
from tandem.runtime.planner.context import context_plan
from tandem.runtime.planner.memory import (
    DEFAULT_GPU_OVERHEAD, GGML_TYPE_ID, GPU_RUNTIME_OVERHEAD, MIB, GpuSet, assign_layers, kv_read_bytes, memory_map,
)
from tandem.runtime.planner.plan import Plan
from tandem.runtime.planner.speed import Calibration, estimate, gpu_bandwidth_gbps

GIB = 1 << 30


def kv_choices(info: ModelInfo) -> tuple[str, ...]:
    """The cache types llama.cpp can make for this model: a quantized cache needs head sizes that
    are whole blocks (llama.cpp fails to create the context otherwise)."""
    from tandem.runtime.hardware.enginebench import kv_types

    return kv_types(info.head_dim_k, info.head_dim_v)
# A quantized cache costs a little quality: it must be this much faster to be chosen over f16.
KV_QUALITY = {"f16": 1.0, "q8_0": 0.97, "q4_0": 0.9}
UBATCH_CHOICES = (512, 256)
AUTO_MAX_CTX = 32768


class PlanError(RuntimeFailure):
    code = "does_not_fit"

    def __init__(self, message: str, largest_ctx: int | None = None):
        super().__init__(message)
        self.largest_ctx = largest_ctx


def cpu_margin(hw: HardwareProfile) -> int:
    return max(512 * MIB, int((hw.memory.total_bytes or 0) * 0.05))


def gpu_margin(gpu: GpuInfo) -> int:
    return max(256 * MIB, int((gpu.memory_total_bytes or 0) * 0.03))


def pick_gpu(hw: HardwareProfile) -> tuple[GpuInfo | None, str | None]:
    """The GPU to offload to and, when none, why not (a reason for the person)."""
    if not hw.gpus:
        return None, "no GPU found"
    if hw.engine.supports_gpu_offload is False:
        return None, "this llama-cpp-python build cannot offload to the GPU (see `tandem hardware`)"
    usable = [g for g in hw.gpus if g.memory_free_bytes and offload_target(g)]
    if not usable:
        return None, "the GPU shares system memory and its free memory is unknown"
    return max(usable, key=lambda g: g.memory_free_bytes), None


def gpu_sets(hw: HardwareProfile) -> tuple[list[GpuSet], str | None]:
    """Ways to offload: the GPU with the most free memory alone, and (with several GPUs of one
    vendor) all of them, layers split in proportion to their usable free memory."""
    best, reason = pick_gpu(hw)
    if best is None:
        return [], reason
    sets = [GpuSet.of(best)]
    same = [g for g in hw.gpus if g.vendor == best.vendor and not g.unified and g.memory_free_bytes]
    if len(same) > 1:
        usable = [max(1, g.memory_free_bytes - GPU_RUNTIME_OVERHEAD.get(g.vendor, DEFAULT_GPU_OVERHEAD) - gpu_margin(g))
                  for g in same]
        total = sum(usable)
        sets.append(GpuSet(tuple(same), tuple(round(u / total, 4) for u in usable)))
    return sets, None


SPEED_FILL = 2048
# A quantized KV cache decodes slower than f16, not faster: on the GPU ~10% (runtime-facts), on this
# CPU 3-10% at short fills (`tandem bench`): dequantization, not bandwidth, limits it. It counts as
# f16 bytes plus 10%, so the planner chooses it for memory only (a longer context, more GPU layers).
KV_READ_COST = {"f16": 1.0, "q8_0": 1.1, "q4_0": 1.1}


def speed_fill(n_ctx: int) -> int:
    """The context fill at which decode speed is compared: half the window, at most 2048 tokens."""
    return max(1, min(n_ctx // 2, SPEED_FILL))


def _evaluate(info, hw, gpu, *, n_ctx, ngl, kv, ubatch, threads, cal):
    offload_kqv = True  # KV on the CPU with weights on the GPU is a trap (runtime-facts): never planned
    mem = memory_map(
        info, n_gpu_layers=ngl, n_ctx=n_ctx, type_k=kv, type_v=kv, n_ubatch=ubatch, flash_attn=True,
        offload_kqv=offload_kqv, swa_full=True, cpu_capacity=hw.memory.available_bytes,
        cpu_margin=cpu_margin(hw), gpu=gpu, gpu_margin=gpu_margin,
    )
    if not all(m.fits for m in mem):
        return None
    speed = _speed(info, hw, gpu, ngl, kv, threads, speed_fill(n_ctx), cal)
    return {"n_ctx": n_ctx, "ngl": ngl, "kv": kv, "ubatch": ubatch, "memory": mem, "speed": speed,
            "score": speed.decode_tps * KV_QUALITY[kv], "gpus": gpu}


def _speed(info, hw, gpu, ngl, kv, threads, fill, cal):
    gset = GpuSet.of(gpu)
    layer_dev, _ = assign_layers(info, ngl if gset else 0, gset.split if gset else (1.0,))
    on_gpu = [i for i, d in enumerate(layer_dev) if d is not None]
    cost = KV_READ_COST[kv]
    kv_gpu = round(kv_read_bytes(info, on_gpu, fill) * cost)
    kv_cpu = round(kv_read_bytes(info, [i for i in range(info.n_layer) if i not in set(on_gpu)], fill) * cost)
    return estimate(info, hw, n_gpu_layers=ngl, gpu=gpu, threads=threads, kv_read_gpu=kv_gpu,
                    kv_read_cpu=kv_cpu, calibration=cal, type_k=kv, fill=fill)


def predict_decode(info: ModelInfo, hw: HardwareProfile, plan: Plan, fill: int) -> float:
    """Uncalibrated decode tokens/s of a plan with `fill` tokens in the context (for calibration)."""
    return predict_split(info, hw, plan, fill)[0]


def predict_split(info: ModelInfo, hw: HardwareProfile, plan: Plan, fill: int) -> tuple[float, float]:
    """(uncalibrated decode tokens/s, predicted share of a token's time on the CPU) of a plan."""
    e = _speed(info, hw, plan_gpus(hw, plan), plan.n_gpu_layers, plan.type_k, plan.n_threads, max(1, fill), 1.0)
    return e.decode_tps, e.cpu_share


def plan_gpus(hw: HardwareProfile, plan: Plan) -> GpuSet | None:
    """The GpuSet a plan offloads to, rebuilt from its gpu_index and tensor_split."""
    if not plan.n_gpu_layers or plan.gpu_index is None:
        return None
    if plan.tensor_split:
        used = [(g, plan.tensor_split[g.index]) for g in hw.gpus
                if g.index < len(plan.tensor_split) and plan.tensor_split[g.index] > 0]
        return GpuSet(tuple(g for g, _ in used), tuple(p for _, p in used))
    return GpuSet.of(next(g for g in hw.gpus if g.index == plan.gpu_index))


def candidates(info: ModelInfo, hw: HardwareProfile, n_ctx: int, *, threads: int, cal: float = 1.0,
               gpu: GpuInfo | None = None) -> list[dict]:
    """Every placement of this model at this context that fits, fastest (by score) first."""
    gpu = GpuSet.of(gpu)
    max_ngl = info.n_layer + 1 if gpu is not None else 0
    found = []
    for ngl in range(max_ngl, -1, -1):
        for kv in kv_choices(info):
            for ubatch in UBATCH_CHOICES:
                c = _evaluate(info, hw, gpu, n_ctx=n_ctx, ngl=ngl, kv=kv, ubatch=ubatch, threads=threads, cal=cal)
                if c is not None:
                    found.append(c)
    found.sort(key=lambda c: (-round(c["score"], 6), -c["ubatch"]))
    return found


def largest_fitting_ctx(info, hw, sets, threads, below: int) -> int | None:
    """The longest context under `below` (a multiple of 256) that fits with any placement."""
    lo, hi = 0, max(0, (below - 1) // 256)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _any_fit(info, hw, sets, mid * 256, threads):
            lo = mid
        else:
            hi = mid - 1
    return lo * 256 or None


def _any_fit(info, hw, sets, n_ctx, threads) -> bool:
    # the cheapest placement for memory: everything on the GPU if possible, else on the CPU, q4_0, small ubatch
    options = [(None, 0)] + [(g, ngl) for g in sets for ngl in range(1, info.n_layer + 2)]
    return any(
        _evaluate(info, hw, g, n_ctx=n_ctx, ngl=ngl, kv="q4_0", ubatch=256, threads=threads, cal=1.0)
        for g, ngl in options
    )


def plan_model(info: ModelInfo, hw: HardwareProfile, n_ctx: int | None = None, *,
               calibration: Calibration | None = None, model_key: str | None = None,
               threads: int | None = None, drafts: tuple = ()) -> Plan:
    """The fastest plan that fits. n_ctx None: the longest context that costs no speed.

    drafts: (model id, ModelInfo, measured acceptance or None) of installed models that may draft
    for this one: the plan takes the best if speculative decoding with it is predicted to pay,
    placing it on the GPU and the model on the CPU where that is fastest (Dovetail).
    Raises PlanError (naming the largest context that fits) when the asked context cannot fit.
    """
    plan = _plan_plain(info, hw, n_ctx, calibration=calibration, model_key=model_key, threads=threads)
    if threads is None and hw.power.on_battery:  # a thread count set in Settings is kept as set
        from tandem.runtime.planner.battery import prefer_on_battery

        def plan_at(t: int) -> Plan | None:
            try:
                return _plan_plain(info, hw, plan.n_ctx, calibration=calibration, model_key=model_key, threads=t)
            except PlanError:
                return None

        plan = prefer_on_battery(info, hw, plan, plan_at)
    if not drafts:
        return plan
    from tandem.runtime.planner.speculative import choose_draft

    threads = plan.n_threads

    def plan_target(machine):
        try:
            return _plan_plain(info, machine, plan.n_ctx, calibration=calibration, model_key=model_key, threads=threads)
        except PlanError:
            return None

    def plan_draft(d: ModelInfo, machine, gpu: GpuInfo | None):
        c = _evaluate(d, machine, gpu, n_ctx=plan.n_ctx, ngl=d.n_layer + 1 if gpu else 0, kv="f16", ubatch=512,
                      threads=threads, cal=1.0)
        if c is None:
            return None
        # the GPU bytes leave out the CUDA context: the model's plan on that GPU counts it once
        return (c["speed"].decode_tps, sum(m.total - m.overhead for m in c["memory"] if m.device != "CPU"),
                sum(m.total for m in c["memory"] if m.device == "CPU"))

    chosen, reasons = choose_draft(info, plan, list(drafts), hw, plan_target, plan_draft)
    return replace(chosen, reasons=chosen.reasons + tuple(reasons))


def _plan_plain(info: ModelInfo, hw: HardwareProfile, n_ctx: int | None = None, *,
                calibration: Calibration | None = None, model_key: str | None = None,
                threads: int | None = None) -> Plan:
    cal = (calibration or Calibration()).factor(model_key)
    threads = threads or hw.cpu.physical_cores or 1
    sets, no_gpu_reason = gpu_sets(hw)

    def search(ctx: int) -> list[dict]:
        found = [c for g in (sets or [None]) for c in candidates(info, hw, ctx, threads=threads, cal=cal, gpu=g)]
        found.sort(key=lambda c: (-round(c["score"], 6), -c["ubatch"], len(c["memory"])))
        return found

    if n_ctx is not None:
        if n_ctx < 16:
            raise PlanError(f"A context of {n_ctx} tokens is too small; ask for at least 256.")
        found = search(n_ctx)
        if not found:
            largest = largest_fitting_ctx(info, hw, sets, threads, below=n_ctx)
            if largest is None:
                raise PlanError(_too_big(info, hw, sets))
            raise PlanError(
                f"A {n_ctx}-token context does not fit in this machine's free memory with "
                f"{info.name or 'this model'}; the largest that fits is {largest} tokens. "
                f"Ask for {largest} or less, or close other programs to free memory.", largest)
        chosen, pool = found[0], found
    else:
        base = search(min(4096, info.n_ctx_train or 4096))
        if not base:
            largest = largest_fitting_ctx(info, hw, sets, threads, below=4096)
            if largest is None:
                raise PlanError(_too_big(info, hw, sets))
            base = search(largest)
        best_speed = base[0]["score"]
        chosen, pool = base[0], base
        ctx = chosen["n_ctx"]
        limit = min(info.n_ctx_train or AUTO_MAX_CTX, AUTO_MAX_CTX)
        while ctx * 2 <= limit:  # grow the context while it costs no speed
            more = search(ctx * 2)
            if not more or more[0]["score"] < best_speed * 0.98:
                break
            ctx, chosen, pool = ctx * 2, more[0], more
    return plan_from_candidate(info, hw, no_gpu_reason, chosen, threads, len(pool), calibration, model_key)


def _too_big(info, hw, sets) -> str:
    need = info.weight_bytes
    have = (hw.memory.available_bytes or 0) + (max((sum(g.memory_free_bytes for g in s.gpus) for s in sets), default=0))
    return (f"{info.name or 'This model'} needs {need / GIB:.1f} GiB for its weights alone, but this machine has "
            f"{have / GIB:.1f} GiB free. Pick a smaller model or a smaller quantization (e.g. Q4_K_M).")


def plan_from_candidate(info, hw, no_gpu_reason, c, threads, n_alternatives=0, calibration=None,
                        model_key=None) -> Plan:
    """The Plan for one candidate of `candidates()`, with its reasons."""
    speed, mem, ngl, kv = c["speed"], c["memory"], c["ngl"], c["kv"]
    gset: GpuSet | None = c.get("gpus") if ngl else None
    reasons = []
    if c.get("gpus") is None:
        reasons.append(f"All {info.n_layer} layers on the CPU: {no_gpu_reason}.")
    elif not ngl:
        reasons.append("All layers on the CPU: not even the output layer fits in the GPU's free memory.")
    else:
        what = (f"All {info.n_layer} layers and the output" if ngl == info.n_layer + 1
                else f"{ngl - 1} of {info.n_layer} layers and the output")
        rest = "" if ngl == info.n_layer + 1 else "; the rest on the CPU"
        parts = []
        for m in mem[1:]:
            g = next(x for x in gset.gpus if f"GPU{x.index}" == m.device)
            parts.append(f"{g.name} ({gpu_bandwidth_gbps(g) or '?'} GB/s) {m.total / GIB:.1f} of "
                         f"{(g.memory_free_bytes or 0) / GIB:.1f} GiB free")
        split = " split by free memory" if len(parts) > 1 else ""
        reasons.append(f"{what} on the GPU{'s' if len(parts) > 1 else ''}{split}: {'; '.join(parts)}{rest}.")
        unused = [x for x in hw.gpus if x not in gset.gpus and not x.unified]
        if unused:
            reasons.append(f"Not used: {', '.join(x.name for x in unused)} (faster without the hand-off).")
    kv_total = sum(m.kv for m in mem)
    if kv == "f16":
        reasons.append(f"Context {c['n_ctx']} tokens, KV cache f16 ({kv_total / MIB:.0f} MiB).")
    else:
        reasons.append(f"Context {c['n_ctx']} tokens, KV cache {kv} ({kv_total / MIB:.0f} MiB): "
                       "a quantized cache is what fits this context and placement fastest.")
    if info.n_ctx_train and c["n_ctx"] > info.n_ctx_train:
        reasons.append(f"Beyond the {info.n_ctx_train} tokens the model was trained for: expect weaker answers there.")
    cores = hw.cpu.physical_cores or threads
    reasons.append(f"{threads} threads: one per physical core." if threads == cores else
                   f"{threads} thread{'s' if threads > 1 else ''} of {cores} physical cores.")
    reasons.append("Flash attention on: a smaller compute buffer" + (" and the quantized V cache needs it." if kv != "f16" else "."))
    per_token = (speed.bytes_gpu + speed.bytes_cpu) / 1e9
    reasons.append(f"Predicted {speed.decode_tps:.1f} tokens/s decode with {speed_fill(c['n_ctx'])} tokens in the "
                   f"context ({per_token:.2f} GB of weights read per token) and {speed.prefill_tps:.0f} tokens/s prefill.")
    if calibration is not None and abs(speed.calibration - 1.0) > 1e-6:
        cpu, gpu = calibration.factor(model_key)
        parts = [f"CPU x{cpu:.2f}" if abs(cpu - 1) > 1e-6 else "", f"GPU x{gpu:.2f}" if abs(gpu - 1) > 1e-6 else ""]
        reasons.append(f"Speed calibrated from {calibration.samples} measurements on this machine "
                       f"({', '.join(p for p in parts if p)}: x{speed.calibration:.2f} for this placement).")
    for m in mem:
        cap = f"{m.capacity / GIB:.1f} GiB free" if m.capacity is not None else "free memory unknown"
        reasons.append(f"{m.device}: {m.total / GIB:.2f} GiB planned + {m.margin / GIB:.2f} GiB margin of {cap}.")
    policy, sink, chunk, why = context_plan(info, c["n_ctx"], speed.prefill_tps)
    reasons.append(why)
    reasons.append("Speculative decoding: prompt lookup (drafts what the prompt and the reply already hold), "
                   "verified in one batch and used only while it measures faster than plain decoding.")
    basis, samples = (calibration or Calibration()).basis(model_key)
    tensor_split = None
    if gset is not None and len(hw.gpus) > 1:  # name every device, or llama.cpp splits over all of them
        by_index = dict(zip((g.index for g in gset.gpus), gset.split))
        tensor_split = tuple(by_index.get(g.index, 0.0) for g in sorted(hw.gpus, key=lambda g: g.index))
    return Plan(
        model_path=str(info.path), n_ctx=c["n_ctx"], n_gpu_layers=ngl if gset else 0,
        gpu_index=gset.main.index if gset else None, tensor_split=tensor_split, type_k=kv, type_v=kv,
        flash_attn=True, offload_kqv=True, swa_full=True, n_threads=threads, n_threads_batch=threads,
        n_batch=512, n_ubatch=c["ubatch"], speculative="prompt_lookup", memory=tuple(mem),
        decode_tps=round(speed.decode_tps, 2), prefill_tps=round(speed.prefill_tps, 1),
        calibration=round(speed.calibration, 3), reasons=tuple(reasons), alternatives=n_alternatives,
        context_policy=policy, sink_tokens=sink, evict_chunk=chunk,
        speed_basis=basis, speed_samples=samples,
    )


def verify(plan: Plan) -> Plan:
    """Dry-run the plan through llama.cpp and record what it reports next to the analytic numbers."""
    from tandem.runtime.planner.dryrun import dry_run

    r = dry_run(Path(plan.model_path), n_ctx=plan.n_ctx, n_gpu_layers=plan.n_gpu_layers, n_ubatch=plan.n_ubatch,
                n_batch=plan.n_batch, type_k=GGML_TYPE_ID[plan.type_k], type_v=GGML_TYPE_ID[plan.type_v],
                flash_attn=plan.flash_attn, offload_kqv=plan.offload_kqv, swa_full=plan.swa_full)
    analytic_kv = sum(m.kv for m in plan.memory)
    analytic_compute = sum(m.compute for m in plan.memory)
    report = {
        "ok": r.ok, "error": r.error, "seconds": round(r.seconds, 3),
        "kv_bytes": r.kv_bytes, "compute_bytes": r.compute_bytes, "output_bytes": r.output_bytes,
        "analytic_kv_bytes": analytic_kv, "analytic_compute_bytes": analytic_compute,
    }
    if r.ok:
        weights = sum(m.weights for m in plan.memory)
        measured = weights + r.kv_bytes + sum(r.compute_bytes.values()) + r.output_bytes
        analytic = weights + analytic_kv + analytic_compute
        report["total_bytes"] = measured
        report["analytic_total_bytes"] = analytic
        report["difference"] = round((analytic - measured) / measured, 4)
    return replace(plan, dry_run=report)
