"""Pooling: a model's CPU layers moved to other machines' devices over llama.cpp's RPC backend.

The layers llama.cpp offloads are the last ones, given to its devices in list order: the workers
take the layers just before those this machine's GPU holds (none without a GPU), so a token runs
this CPU's layers, then each worker's, then this GPU's. A token's time with k layers on workers =
this machine's time for its layers + the workers' time for theirs + the network: the hidden state
goes to each worker and comes back once per token, a round trip of ggml-rpc commands, plus the
bytes at the link's bandwidth.
The plan pools only when that is faster than this machine alone, or when the model does not fit
here at all (or when the person asked for it).
"""

from __future__ import annotations

from dataclasses import replace

from tandem.runtime.hardware.profile import HardwareProfile
from tandem.runtime.model_info import ModelInfo
from tandem.runtime.planner.memory import (
    DeviceMemory, MIB, compute_bytes, cpu_memory, kv_bytes, kv_read_bytes, layers_compute_bytes, output_weight_bytes,
)
from tandem.runtime.planner.plan import Plan
from tandem.runtime.planner.speed import (
    CPU_LAYER_S, GPU_EFFICIENCY, GPU_LAYER_S, THREAD_EXPONENT, cpu_efficiency, gpu_bandwidth_gbps,
)
from tandem.runtime.hardware.profile import GpuInfo

# A token's trip to a worker and back, beyond the probe's round trip and the bytes: ggml-rpc's
# dispatcher threads, the graph command, the worker's scheduling. Fitted on the 1-layer rows of
# scripts/bench_pool.py (run A in docs/pooling.md: a loopback worker on the 2-core development VM,
# 2.4 ms with one thread on each side, 2.8 ms with two here and one there); the other rows and a
# second run are the check.
RPC_ROUND_TRIPS = 1
RPC_FIXED_S = 2.6e-3
# A worker on this machine whose threads, with ours waiting on it, outnumber the cores: while one
# side computes the other's idle threads spin on the same cores (run A, two threads on each side
# of 2 cores: 10.2 ms a token in all).
SHARED_CORES_S = 7.4e-3
POOL_GAIN = 1.05  # pooling must be predicted this much faster than this machine alone
WORKER_MARGIN_FRACTION = 0.05


def worker_device(link) -> dict | None:
    """The device a worker serves (its first GPU, else its CPU), from its /tandem/worker answer."""
    served = link.info.get("served") or []
    return served[0] if served else None


def worker_seconds(info: ModelInfo, link, layers: list[int], output: bool, *, type_k: str, fill: int,
                   hw: HardwareProfile | None = None) -> float:
    """Seconds a worker's device spends on these repeating layers (and the output layer) for one
    token with `fill` positions cached. A GPU by its bandwidth; a CPU worker on this machine (hw:
    this machine's profile) as this machine's own CPU would run them at the worker's thread count
    (llama.cpp's rates timed here); another machine's CPU at the bandwidth it measured."""
    weights = sum(info.layer_bytes[i] for i in layers) + (output_weight_bytes(info) if output else 0)
    kv_read = kv_read_bytes(info, layers, fill)
    units = len(layers) + (1 if output else 0)
    dev = worker_device(link) or {}
    if dev.get("type") in ("gpu", "igpu", "accel"):
        gbps = gpu_bandwidth_gbps(GpuInfo(index=0, name=dev.get("description") or dev.get("name") or "",
                                          vendor="", memory_total_bytes=dev.get("total_bytes"))) or 200.0
        return (weights + kv_read) / (gbps * 1e9 * GPU_EFFICIENCY) + units * GPU_LAYER_S
    cores = link.info.get("physical_cores") or 1
    threads = link.info.get("threads") or cores
    if hw is not None and same_host(link):
        return _cpu_seconds(info, hw, int(threads), layers, output, type_k, fill)
    bw = (link.info.get("read_gbps") or 20.0) * 1e9 * min(1.0, threads / cores) ** THREAD_EXPONENT
    return (weights + kv_read) / (bw * cpu_efficiency(info)) + len(layers) * CPU_LAYER_S


def _cpu_seconds(info: ModelInfo, hw: HardwareProfile, threads: int, layers, output: bool, type_k: str,
                 fill: int) -> float:
    """This machine's CPU time for these units, as the planner's speed model counts it."""
    from tandem.runtime.planner.search import KV_READ_COST
    from tandem.runtime.planner.speed import cpu_seconds

    layers = list(layers)
    kv_read = round(kv_read_bytes(info, layers, fill) * KV_READ_COST.get(type_k, 1.0))
    return cpu_seconds(info, hw, threads, layers, output, type_k, fill, kv_read)


def same_host(link) -> bool:
    """The worker runs on this machine (a loopback endpoint, or the same host name)."""
    import socket

    from tandem.runtime.pool.network import split_endpoint
    from tandem.runtime.pool.worker import _is_loopback

    host, _ = split_endpoint(link.endpoint)
    return _is_loopback(host) or link.info.get("host") == socket.gethostname()


def network_seconds(info: ModelInfo, link, contended: bool = False, logits: bool = False) -> float:
    """Per token: the hidden state to the worker and back (f32; the logits back instead when the
    worker holds the output layer), the round trip, ggml-rpc's own cost, and when the worker
    shares this machine's cores with too many threads, the contention."""
    back = 4 * (info.vocab_size or info.n_embd) if logits else 4 * info.n_embd
    return (RPC_ROUND_TRIPS * link.rtt_s + (4 * info.n_embd + back) / max(1.0, link.bandwidth_bps) + RPC_FIXED_S
            + (SHARED_CORES_S if contended else 0.0))


def contended(hw: HardwareProfile, threads: int, link) -> bool:
    cores = hw.cpu.physical_cores or threads
    return same_host(link) and threads - 1 + int(link.info.get("threads") or 1) > cores


def _layers(k: int) -> str:
    return f"{k} layer" if k == 1 else f"{k} layers"


def _units(n_repeating: int, output: bool, n: int) -> str:
    """Offloaded units in words: "9 of 30 layers", "8 of 30 layers and the output", "the output layer"."""
    if not n_repeating:
        return "the output layer" if output else "no layer"
    return f"{n_repeating} of {n} layers" + (" and the output" if output else "")


def plan_pool(info: ModelInfo, hw: HardwareProfile, base: Plan, links: list, *, fill: int,
              local_fits: bool, mode: str = "auto", layers: int | None = None) -> tuple[Plan | None, list[str]]:
    """The pooled plan over the workers (`links`: network.Link), or None, with the reasons either way.

    base: this machine's plan (its context, KV type, threads, and GPU layers, which the GPU keeps),
    planned with the pool's memory when the model does not fit here alone (local_fits False).
    mode: "auto" (pool when it pays or is needed), "always" (pool whenever it fits). layers: how
    many layers the workers take, the output counting as one as in llama.cpp's n_gpu_layers
    (None: the planner's choice).

    Layers are counted as llama.cpp offloads them: the last K of the n repeating layers and the
    output (unit n), K = n_gpu_layers, given to the devices in list order. The workers come first
    in that list, this machine's GPU last: with g units on the GPU (the output and g - 1 layers)
    the workers take the k units before them; without a GPU the last worker takes the output,
    and the logits come back over the network instead of the hidden state."""
    reasons: list[str] = []
    if not links:
        return None, []
    n = info.n_layer
    # units on this machine's GPU, which keeps them (-1: llama.cpp's "all"; none without a GPU placement)
    g = 0 if base.gpu_index is None else n + 1 if base.n_gpu_layers < 0 else min(base.n_gpu_layers, n + 1)
    if base.tensor_split and sum(1 for share in base.tensor_split if share > 0) > 1:
        return None, ["This machine splits the model over several GPUs: pooling is planned with one GPU here at most."]
    if g > n:
        return None, ["All of this model's layers run on this machine's GPU: pooling has nothing to take from the CPU."]
    from tandem.runtime.planner.search import cpu_margin, predict_split

    out_w = output_weight_bytes(info)
    compute_full = compute_bytes(info, base.n_ctx, base.n_ubatch, base.flash_attn)
    compute_layers = layers_compute_bytes(info, base.n_ctx, base.n_ubatch)

    def unit_bytes(u: int) -> int:
        return info.layer_bytes[u] if u < n else out_w

    def unit_kv(u: int) -> int:  # the cache a unit keeps (the output has none)
        return kv_bytes(info, [u], base.n_ctx, base.type_k, base.type_v, base.n_ubatch, base.swa_full) if u < n else 0

    base_tps, _ = predict_split(info, hw, base, fill)
    base_s = 1.0 / base_tps
    cpu_capacity = hw.memory.available_bytes
    cpu_units = n + 1 - g  # the units this CPU runs now: layers 0.. and, without a GPU, the output
    options = range(1, cpu_units + 1) if layers is None else [max(1, min(cpu_units, layers))]
    # each worker's share of the pooled layers: by the memory it has free
    usable = []
    for link in links:
        dev = worker_device(link) or {}
        free = int(dev.get("free_bytes") or 0)
        usable.append(max(0, free - max(512 * MIB, int(free * WORKER_MARGIN_FRACTION))))
    total_usable = sum(usable) or 1
    best = None
    for k in options:
        first = cpu_units - k  # the first unit moved
        # contiguous slices, one per worker, in order, sized by usable memory
        slices, start = [], first
        for w, u in enumerate(usable):
            take = round(k * u / total_usable) if w < len(usable) - 1 else (cpu_units - start)
            slices.append(list(range(start, min(cpu_units, start + take))))
            start = min(cpu_units, start + take)
        need_ok = True
        t_workers = 0.0
        workers = []
        for link, mine, u in zip(links, slices, usable):
            if not mine:
                continue
            has_output = mine[-1] == n
            need = sum(unit_bytes(i) + unit_kv(i) for i in mine) + (compute_full if has_output else compute_layers)
            if need > u:
                need_ok = False
                break
            t_workers += worker_seconds(info, link, [i for i in mine if i < n], has_output, type_k=base.type_k,
                                        fill=fill, hw=hw)
            net = network_seconds(info, link, contended(hw, base.n_threads, link), logits=has_output)
            t_workers += net
            repeating = [i for i in mine if i < n]
            workers.append({"endpoint": link.endpoint, "layers": [repeating[0], repeating[-1]] if repeating else None,
                            "n_layers": len(mine), "output": has_output,
                            "need_bytes": need, "usable_bytes": u, "device": (worker_device(link) or {}).get("name"),
                            "rtt_ms": round(link.rtt_s * 1000, 3),
                            "bandwidth_mbps": round(link.bandwidth_bps * 8 / 1e6, 1),
                            "network_ms": round(net * 1000, 3), "same_host": same_host(link)})
        if not need_ok or not workers:
            continue
        cpu_new = cpu_memory(info, n_offloaded=g + k, n_ctx=base.n_ctx, type_k=base.type_k, type_v=base.type_v,
                             n_ubatch=base.n_ubatch, flash_attn=base.flash_attn, offload_kqv=base.offload_kqv,
                             swa_full=base.swa_full, cpu_capacity=cpu_capacity, cpu_margin=cpu_margin(hw))
        if cpu_capacity is not None and cpu_new.total + cpu_new.margin > cpu_capacity:
            continue
        # what leaves this CPU: its time for its units now less its time for those it keeps,
        # as the speed model counts them (attention at its timed cost)
        t_moved = (_cpu_seconds(info, hw, base.n_threads, range(min(cpu_units, n)), g == 0, base.type_k, fill)
                   - _cpu_seconds(info, hw, base.n_threads, range(first), False, base.type_k, fill))
        t_local = base_s - t_moved
        tps = 1.0 / (max(1e-6, t_local) + t_workers)
        if best is None or tps > best[0]:
            best = (tps, k, workers, cpu_new, t_local, t_moved, t_workers)
    if best is None:
        names = ", ".join(link.endpoint for link in links)
        return None, [f"The workers ({names}) have too little free memory for any of this model's layers."]
    tps, k, workers, cpu_new, t_local, t_moved, t_workers = best
    output_moved = any(w["output"] for w in workers)
    net_ms = sum(w["network_ms"] for w in workers)
    where = ", ".join(f"{w['n_layers']} on {w['endpoint']}" for w in workers)
    what = _units(k - int(output_moved), output_moved, n)
    gpu_note = f"; this machine's GPU keeps {_units(g - 1, True, n)}" if g else ""
    if mode != "always" and local_fits and tps < base_tps * POOL_GAIN:
        return None, [f"Pooling is not used: {what} on the workers ({where}) would decode at {tps:.1f} tok/s "
                      f"against {base_tps:.1f} here alone (the network costs {net_ms:.2f} ms a token)."]
    why = ("it does not fit this machine alone" if not local_fits else
           "you asked for pooling (TANDEM_POOL=always)" if mode == "always" and tps < base_tps * POOL_GAIN else
           f"it is faster than this machine alone ({base_tps:.1f} tok/s)")
    reasons.append(f"Pooled over llama.cpp RPC: {what} on other machines ({where}){gpu_note}, because "
                   f"{why}; predicted {tps:.1f} tok/s, of which the network costs {net_ms:.2f} ms a token.")
    gpu_mem = tuple(m for m in base.memory if m.device != "CPU")  # this machine's GPU: as planned
    remote_mem = tuple(DeviceMemory(f"worker {w['endpoint']}", w["need_bytes"], 0, 0, 0, 0, w["usable_bytes"])
                       for w in workers)
    # llama.cpp gives the j-th offloaded unit to the first device (the workers in order, then this
    # GPU) whose running share exceeds j / (k + g): the counts themselves as proportions place
    # each slice exactly
    counts = [float(w["n_layers"]) for w in workers] + ([float(g)] if g else [])
    split = tuple(counts) if len(counts) > 1 else None
    pool = {"workers": workers, "n_layers": k, "output": output_moved, "endpoints": [w["endpoint"] for w in workers],
            "local_gpu_layers": g, "local_gpu": base.gpu_index if g else None,
            "local_tps": round(base_tps, 2), "predicted_tps": round(tps, 2), "network_ms": round(net_ms, 3),
            "local_seconds": t_local, "moved_local_seconds": t_moved, "worker_seconds": t_workers,
            "tensor_split": split, "mode": mode}
    # this machine's calibration applies to its own share of a token's time
    calibrated_tps = 1.0 / (max(1e-6, t_local) / (base.calibration or 1.0) + t_workers)
    # the pool's reason replaces this machine's placement alone ("All 30 layers on the CPU ..."),
    # and its drafting (a pooled model decodes plainly); its speed and memory are this machine's alone
    kept = tuple(r + " (this machine alone)" if r.startswith(("Predicted ", "CPU: ")) else
                 r.replace("; the rest on the CPU", "; the rest on the CPU and the workers") for r in base.reasons
                 if not (r.startswith("All ") and "on the CPU" in r) and "peculative" not in r and "draft" not in r)
    return replace(base, n_gpu_layers=g + k, gpu_index=base.gpu_index if g else None, tensor_split=split,
                   memory=(cpu_new,) + gpu_mem + remote_mem,
                   decode_tps=round(calibrated_tps, 2), reasons=tuple(reasons) + kept, pool=pool,
                   speculative="none", draft=None), reasons
