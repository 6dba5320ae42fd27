"""Plan search: enumerate placements, keep those that fit with margin, pick the fastest, explain it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from runtime.errors import RuntimeFailure
from runtime.hardware.profile import GpuInfo, HardwareProfile
from runtime.model_info import ModelInfo
from runtime.planner.memory import GGML_TYPE_ID, MIB, gpu_layers, kv_bytes, memory_map, pad_ctx
from runtime.planner.plan import Plan
from runtime.planner.speed import Calibration, estimate, gpu_bandwidth_gbps

GIB = 1 << 30
KV_CHOICES = ("f16", "q8_0", "q4_0")
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
    usable = [g for g in hw.gpus if g.memory_free_bytes and (not g.unified or g.vendor == "apple")]
    if not usable:
        return None, "the GPU shares system memory and its free memory is unknown"
    return max(usable, key=lambda g: g.memory_free_bytes), None


SPEED_FILL = 2048
# A quantized KV cache decodes slower than f16, not faster: on the GPU ~10% (runtime-facts), on this
# CPU 3-10% at short fills (`tandem bench`): dequantization, not bandwidth, limits it. It counts as
# f16 bytes plus 10%, so the planner chooses it for memory only (a longer context, more GPU layers).
KV_READ_COST = {"f16": 1.0, "q8_0": 1.1, "q4_0": 1.1}


def _fill(n_ctx: int) -> int:
    """The context fill at which decode speed is compared: half the window, at most 2048 tokens."""
    return max(1, min(n_ctx // 2, SPEED_FILL))


def _evaluate(info, hw, gpu, *, n_ctx, ngl, kv, ubatch, threads, cal):
    offload_kqv = True  # KV on the CPU with weights on the GPU is a trap (runtime-facts): never planned
    mem = memory_map(
        info, n_gpu_layers=ngl, n_ctx=n_ctx, type_k=kv, type_v=kv, n_ubatch=ubatch, flash_attn=True,
        offload_kqv=offload_kqv, swa_full=True, cpu_capacity=hw.memory.available_bytes,
        cpu_margin=cpu_margin(hw), gpu=gpu, gpu_margin=gpu_margin(gpu) if gpu else 0,
    )
    if not all(m.fits for m in mem):
        return None
    speed = _speed(info, hw, gpu, ngl, kv, threads, _fill(n_ctx), cal)
    return {"n_ctx": n_ctx, "ngl": ngl, "kv": kv, "ubatch": ubatch, "memory": mem, "speed": speed,
            "score": speed.decode_tps * KV_QUALITY[kv]}


def _speed(info, hw, gpu, ngl, kv, threads, fill, cal):
    on_gpu, _ = gpu_layers(info, ngl if gpu else 0)
    cost = KV_READ_COST[kv]
    kv_gpu = round(kv_bytes(info, on_gpu, fill, "f16", "f16") * cost)
    kv_cpu = round(kv_bytes(info, [i for i in range(info.n_layer) if i not in set(on_gpu)], fill, "f16", "f16") * cost)
    return estimate(info, hw, n_gpu_layers=ngl, gpu=gpu, threads=threads, kv_read_gpu=kv_gpu,
                    kv_read_cpu=kv_cpu, calibration=cal)


def predict_decode(info: ModelInfo, hw: HardwareProfile, plan: Plan, fill: int) -> float:
    """Uncalibrated decode tokens/s of a plan with `fill` tokens in the context (for calibration)."""
    gpu = next((g for g in hw.gpus if g.index == plan.gpu_index), None) if plan.n_gpu_layers else None
    return _speed(info, hw, gpu, plan.n_gpu_layers, plan.type_k, plan.n_threads, max(1, fill), 1.0).decode_tps


def candidates(info: ModelInfo, hw: HardwareProfile, n_ctx: int, *, threads: int, cal: float = 1.0,
               gpu: GpuInfo | None = None) -> list[dict]:
    """Every placement of this model at this context that fits, fastest (by score) first."""
    max_ngl = info.n_layer + 1 if gpu is not None else 0
    found = []
    for ngl in range(max_ngl, -1, -1):
        for kv in KV_CHOICES:
            for ubatch in UBATCH_CHOICES:
                c = _evaluate(info, hw, gpu, n_ctx=n_ctx, ngl=ngl, kv=kv, ubatch=ubatch, threads=threads, cal=cal)
                if c is not None:
                    found.append(c)
    found.sort(key=lambda c: (-round(c["score"], 6), -c["ubatch"]))
    return found


def largest_fitting_ctx(info, hw, gpu, threads, below: int) -> int | None:
    """The longest context under `below` (a multiple of 256) that fits with any placement."""
    lo, hi = 0, max(0, (below - 1) // 256)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _any_fit(info, hw, gpu, mid * 256, threads):
            lo = mid
        else:
            hi = mid - 1
    return lo * 256 or None


def _any_fit(info, hw, gpu, n_ctx, threads) -> bool:
    # the cheapest placement for memory: everything on the GPU if possible, else on the CPU, q4_0, small ubatch
    options = [0] if gpu is None else [0, info.n_layer + 1] + list(range(1, info.n_layer + 1))
    return any(
        _evaluate(info, hw, gpu, n_ctx=n_ctx, ngl=ngl, kv="q4_0", ubatch=256, threads=threads, cal=1.0)
        for ngl in options
    )


def plan_model(info: ModelInfo, hw: HardwareProfile, n_ctx: int | None = None, *,
               calibration: Calibration | None = None, model_key: str | None = None,
               threads: int | None = None) -> Plan:
    """The fastest plan that fits. n_ctx None: the longest context that costs no speed.

    Raises PlanError (naming the largest context that fits) when the asked context cannot fit.
    """
    cal = (calibration or Calibration()).factor(model_key)
    threads = threads or hw.cpu.physical_cores or 1
    gpu, no_gpu_reason = pick_gpu(hw)
    if n_ctx is not None:
        if n_ctx < 16:
            raise PlanError(f"A context of {n_ctx} tokens is too small; ask for at least 256.")
        found = candidates(info, hw, n_ctx, threads=threads, cal=cal, gpu=gpu)
        if not found:
            largest = largest_fitting_ctx(info, hw, gpu, threads, below=n_ctx)
            if largest is None:
                raise PlanError(_too_big(info, hw, gpu))
            raise PlanError(
                f"A {n_ctx}-token context does not fit in this machine's free memory with "
                f"{info.name or 'this model'}; the largest that fits is {largest} tokens. "
                f"Ask for {largest} or less, or close other programs to free memory.", largest)
        chosen, pool = found[0], found
    else:
        base = candidates(info, hw, min(4096, info.n_ctx_train or 4096), threads=threads, cal=cal, gpu=gpu)
        if not base:
            largest = largest_fitting_ctx(info, hw, gpu, threads, below=4096)
            if largest is None:
                raise PlanError(_too_big(info, hw, gpu))
            base = candidates(info, hw, largest, threads=threads, cal=cal, gpu=gpu)
        best_speed = base[0]["score"]
        chosen, pool = base[0], base
        ctx = chosen["n_ctx"]
        limit = min(info.n_ctx_train or AUTO_MAX_CTX, AUTO_MAX_CTX)
        while ctx * 2 <= limit:  # grow the context while it costs no speed
            more = candidates(info, hw, ctx * 2, threads=threads, cal=cal, gpu=gpu)
            if not more or more[0]["score"] < best_speed * 0.98:
                break
            ctx, chosen, pool = ctx * 2, more[0], more
    return _make_plan(info, hw, gpu, no_gpu_reason, chosen, threads, len(pool), calibration, model_key)


def plan_from_candidate(info, hw, gpu, no_gpu_reason, c, threads, n_alternatives=0, calibration=None,
                        model_key=None) -> Plan:
    return _make_plan(info, hw, gpu, no_gpu_reason, c, threads, n_alternatives, calibration, model_key)


def _too_big(info, hw, gpu) -> str:
    need = info.weight_bytes
    have = (hw.memory.available_bytes or 0) + (gpu.memory_free_bytes if gpu else 0)
    return (f"{info.name or 'This model'} needs {need / GIB:.1f} GiB for its weights alone, but this machine has "
            f"{have / GIB:.1f} GiB free. Pick a smaller model or a smaller quantization (e.g. Q4_K_M).")


def _make_plan(info, hw, gpu, no_gpu_reason, c, threads, n_alternatives, calibration, model_key) -> Plan:
    speed, mem, ngl, kv = c["speed"], c["memory"], c["ngl"], c["kv"]
    reasons = []
    units = info.n_layer + 1
    if gpu is None:
        reasons.append(f"All {info.n_layer} layers on the CPU: {no_gpu_reason}.")
    else:
        g = next(m for m in mem if m.device != "CPU") if ngl else None
        free = gpu.memory_free_bytes or 0
        where = f"{gpu.name} ({gpu_bandwidth_gbps(gpu) or '?'} GB/s)"
        if ngl == units:
            reasons.append(f"All {info.n_layer} layers and the output on the {where}: {g.total / GIB:.1f} of {free / GIB:.1f} GiB free.")
        elif ngl:
            reasons.append(f"{ngl - 1} of {info.n_layer} layers and the output on the {where}: "
                           f"{g.total / GIB:.1f} of {free / GIB:.1f} GiB free; the rest on the CPU.")
        else:
            reasons.append(f"All layers on the CPU: not even the output layer fits in the {gpu.name}'s free memory.")
        others = [x for x in hw.gpus if x is not gpu and not x.unified]
        if others:
            reasons.append(f"{len(others)} other GPU(s) not used: splitting a model across GPUs is not planned yet.")
    kv_total = sum(m.kv for m in mem)
    if kv == "f16":
        reasons.append(f"Context {c['n_ctx']} tokens, KV cache f16 ({kv_total / MIB:.0f} MiB).")
    else:
        reasons.append(f"Context {c['n_ctx']} tokens, KV cache {kv} ({kv_total / MIB:.0f} MiB): "
                       "a quantized cache is what fits this context and placement fastest.")
    if info.n_ctx_train and c["n_ctx"] > info.n_ctx_train:
        reasons.append(f"Beyond the {info.n_ctx_train} tokens the model was trained for: expect weaker answers there.")
    reasons.append(f"{threads} threads: one per physical core.")
    reasons.append("Flash attention on: a smaller compute buffer" + (" and the quantized V cache needs it." if kv != "f16" else "."))
    per_token = (speed.bytes_gpu + speed.bytes_cpu) / 1e9
    reasons.append(f"Predicted {speed.decode_tps:.1f} tokens/s decode ({per_token:.2f} GB of weights read per token) "
                   f"and {speed.prefill_tps:.0f} tokens/s prefill.")
    if calibration is not None and speed.calibration != 1.0:
        reasons.append(f"Speed calibrated from {calibration.samples} measurements on this machine (x{speed.calibration:.2f}).")
    for m in mem:
        cap = f"{m.capacity / GIB:.1f} GiB free" if m.capacity is not None else "free memory unknown"
        reasons.append(f"{m.device}: {m.total / GIB:.2f} GiB planned + {m.margin / GIB:.2f} GiB margin of {cap}.")
    return Plan(
        model_path=str(info.path), n_ctx=c["n_ctx"], n_gpu_layers=ngl if gpu else 0,
        gpu_index=gpu.index if gpu and ngl else None, tensor_split=None, type_k=kv, type_v=kv,
        flash_attn=True, offload_kqv=True, swa_full=True, n_threads=threads, n_threads_batch=threads,
        n_batch=512, n_ubatch=c["ubatch"], speculative="none", memory=tuple(mem),
        decode_tps=round(speed.decode_tps, 2), prefill_tps=round(speed.prefill_tps, 1),
        calibration=round(speed.calibration, 3), reasons=tuple(reasons), alternatives=n_alternatives,
    )


def verify(plan: Plan) -> Plan:
    """Dry-run the plan through llama.cpp and record what it reports next to the analytic numbers."""
    from runtime.planner.dryrun import dry_run

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
