"""Speed model: decode is memory-bound, prefill compute-bound; constants calibrated per machine.

time per token = sum over devices of (bytes read per token / effective bandwidth)
                 + per-layer kernel overhead on each device + a hand-off when split + a base cost.
CPU rate = the rate llama.cpp's own decode streamed each weight type at on this machine, in layers
of the model's shape (hardware.enginebench, timed once per kind and thread count; at a thread
count not timed, the all-core rate x a thread factor: fewer threads read less); for a type not
timed: the host bandwidth (the one the timed rates imply, else numpy's read) x a fitted per-type
efficiency. GPU rate = the rate llama.cpp's kernels streamed the model's weight types at on that
GPU, and the CPU-GPU hand-off the cost timed there (hardware.enginebench.measure_gpu); where not
timed, the card's bandwidth (NVML's memory bus width and clock, else a table of cards) x a fitted
efficiency, and a fitted hand-off.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from tandem.runtime.hardware.profile import GpuInfo, HardwareProfile
from tandem.runtime.model_info import ModelInfo

# Fraction of the measured host read bandwidth that llama.cpp's CPU kernels reach per weight type
# (Q4_0 is repacked into interleaved blocks on AVX2/AVX-512 and NEON and runs closest to the roofline).
CPU_TYPE_EFFICIENCY = {"Q4_0": 0.95, "Q8_0": 0.75, "F16": 0.7, "F32": 0.7, "Q4_K": 0.7, "Q5_K": 0.65,
                       "Q6_K": 0.65, "Q5_0": 0.6, "Q4_1": 0.32, "Q5_1": 0.35, "BF16": 0.6}
DEFAULT_CPU_EFFICIENCY = 0.6
THREAD_EXPONENT = 0.75
CPU_LAYER_S = 18e-6  # graph and barrier cost per layer per token on the CPU
BASE_S = 0.1e-3  # per token: Python, graph build (what the micro-benchmark's decode loop also spends)
# Per token and vocabulary entry: llama.cpp's sampler chain builds and scans a candidate for every
# entry (a 2-core EPYC VM: 0.04-0.05 ms a token for SmolLM2's 49,152 entries, 0.21-0.27 ms for
# Gemma 3's 262,144, greedy or top-k/top-p); the micro-benchmark's decode does not sample.
SAMPLE_S_PER_ENTRY = 1.0e-9
GPU_EFFICIENCY = 0.7
GPU_LAYER_S = 60e-6  # kernel launches per layer per token (fit to full offload of 7B and 13B Q4_0 on an H200)
HANDOFF_S = 0.1e-3  # activations crossing between CPU and GPU once per token
CPU_FLOPS_PER_CORE = 43e9  # prefill, quantized matmuls (SmolLM2 pp512 on a 2-core VM)
# A speculative verify batch (2-9 tokens) multiplies row by row, not by the batched kernels:
# 26 GFLOP/s a core (SmolLM2 on a 2-core VM), 24 (a 7B shape on the H200's 16-core host).
CPU_VERIFY_FLOPS_PER_CORE = 25e9
GPU_FLOPS_PER_GBPS = 22e9  # prefill FLOP/s per GB/s of memory bandwidth (H200: 7,750 tok/s on 7B)

# Memory bandwidth in GB/s by card name, for when NVML does not give bus width and clock.
GPU_BANDWIDTH_GBPS = {
    "H200": 4800, "H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100": 1555,
    "L40S": 864, "L4": 300, "T4": 320, "RTX 4090": 1008, "RTX 4080": 717, "RTX 4070 Ti": 504,
    "RTX 4070": 504, "RTX 4060 Ti": 288, "RTX 4060": 272, "RTX 3090": 936, "RTX 3080": 760,
    "RTX 3070": 448, "RTX 3060 Ti": 448, "RTX 3060": 360, "RTX 3050 Laptop": 192, "RTX 3050": 224,
    "RTX 2080 Ti": 616, "RTX 2070": 448, "RTX 2060": 336, "GTX 1660": 192, "GTX 1080 Ti": 484,
    "RX 7900 XTX": 960, "RX 7900 XT": 800, "RX 6800 XT": 512, "RX 6700 XT": 384, "RX 7600": 288,
    "Apple M1": 68, "Apple M2": 100, "Apple M3": 100, "Apple M1 Pro": 200, "Apple M2 Pro": 200,
    "Apple M1 Max": 400, "Apple M2 Max": 400, "Apple M3 Max": 400, "Apple M2 Ultra": 800,
}


def gpu_bandwidth_gbps(gpu: GpuInfo) -> float | None:
    if gpu.memory_bus_width and gpu.memory_clock_mhz:
        return round(gpu.memory_bus_width / 8 * gpu.memory_clock_mhz * 2 / 1000, 1)
    name = re.sub(r"^(NVIDIA|AMD Radeon|GeForce)\s+", "", gpu.name.replace("NVIDIA GeForce", "").strip())
    for key in sorted(GPU_BANDWIDTH_GBPS, key=len, reverse=True):
        if key.lower() in name.lower() or key.lower() in gpu.name.lower():
            return float(GPU_BANDWIDTH_GBPS[key])
    return None


def cpu_efficiency(info: ModelInfo) -> float:
    """Bandwidth efficiency of the CPU kernels, weighted by bytes of each tensor type."""
    total = sum(info.tensor_types.values()) or 1
    return sum(b * CPU_TYPE_EFFICIENCY.get(t, DEFAULT_CPU_EFFICIENCY) for t, b in info.tensor_types.items()) / total


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _split(rows: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """Speed factors (CPU, GPU) from (predicted CPU share of a token's time, measured time /
    predicted time) pairs, where time = share / cpu + (1 - share) / gpu: least squares on the
    relative error. When every row is on one side, only that side's factor is known."""
    rows = [(s, q) for s, q in rows if q > 0]
    if not rows:
        return (None, None)
    if all(s >= 0.95 for s, _ in rows) or all(s <= 0.05 for s, _ in rows):
        side = statistics.median(q for _, q in rows)
        return (1 / side, None) if rows[0][0] >= 0.95 else (None, 1 / side)
    # minimise sum((a x + b y - 1)^2) with a = s / q, b = (1 - s) / q; x, y are inverse factors
    aa = sum((s / q) ** 2 for s, q in rows)
    bb = sum(((1 - s) / q) ** 2 for s, q in rows)
    ab = sum(s * (1 - s) / q ** 2 for s, q in rows)
    a1 = sum(s / q for s, q in rows)
    b1 = sum((1 - s) / q for s, q in rows)
    det = aa * bb - ab * ab
    if det <= 1e-12 * aa * bb:
        side = statistics.median(q for _, q in rows)
        return (1 / side, 1 / side)
    x = (a1 * bb - b1 * ab) / det
    y = (b1 * aa - a1 * ab) / det
    return (1 / max(x, 0.05), 1 / max(y, 0.05))


@dataclass(frozen=True)
class Calibration:
    """Measured/predicted speed on this machine, for the time spent on the CPU and on the GPU apart:
    a host's kernels may reach another share of its bandwidth than predicted (a llama.cpp build
    without the CPU's widest vectors, shared cores), a card its own; one ratio for both would
    carry a CPU-bound plan's error into a GPU-bound one. Per model, and per machine (the median
    over models) for what a model has not measured yet."""

    per_model: dict = field(default_factory=dict)  # model key -> (cpu, gpu) factor, None where unmeasured
    machine: tuple = (None, None)
    samples: int = 0
    counts: dict = field(default_factory=dict)  # model key -> plain replies measured

    def basis(self, model_key: str | None) -> tuple[str, int]:
        """What a prediction for this model stands on: ("measured", n) when n of its own plain
        replies were measured on this machine; ("calibrated", n) when only other models' n replies
        correct it; ("estimated", 0) when nothing measured here does."""
        if model_key and self.counts.get(model_key) and any(f is not None for f in self.per_model.get(model_key, ())):
            return "measured", self.counts[model_key]
        if any(f is not None for f in self.machine):
            return "calibrated", self.samples
        return "estimated", 0

    def factor(self, model_key: str | None) -> tuple[float, float]:
        """(cpu, gpu) speed factors for a model: its own, else the machine's, else 1."""
        mine = self.per_model.get(model_key, (None, None)) if model_key else (None, None)
        return tuple(m if m is not None else (d if d is not None else 1.0) for m, d in zip(mine, self.machine))

    @classmethod
    def from_records(cls, records: list[dict]) -> "Calibration":
        """records: {"model_id", "predicted_tps", "measured_tps", "cpu_share", "n_gpu_layers"} (rows
        of the measurements table), oldest first. cpu_share is the predicted share of a token's time
        on the CPU; where it was not recorded, a plan without GPU layers counts as all CPU and a
        plan with them is left out."""
        by_model: dict[str, list[tuple[float, float]]] = {}
        for r in records:
            if not (r.get("predicted_tps") and r.get("measured_tps")):
                continue
            share = r.get("cpu_share")
            if share is None:
                if r.get("n_gpu_layers"):
                    continue
                share = 1.0
            by_model.setdefault(r["model_id"], []).append((float(share), r["predicted_tps"] / r["measured_tps"]))
        per_model = {k: _split(v[-40:]) for k, v in by_model.items()}
        machine = tuple(_median(f[i] for f in per_model.values()) for i in (0, 1))
        return cls(per_model, machine, sum(len(v) for v in by_model.values()),
                   {k: len(v) for k, v in by_model.items()})

    def apply(self, predicted_tps: float, cpu_share: float, model_key: str | None) -> float:
        """A prediction made uncalibrated, calibrated."""
        return calibrated(predicted_tps, cpu_share, self.factor(model_key))


def calibrated(tps: float, cpu_share: float, factors: tuple[float, float]) -> float:
    """Tokens/s with the CPU's share of a token's time sped up by factors[0], the rest by factors[1]."""
    cpu, gpu = factors
    return 1.0 / (cpu_share / tps / cpu + (1 - cpu_share) / tps / gpu)


@dataclass(frozen=True)
class SpeedEstimate:
    decode_tps: float
    prefill_tps: float
    seconds_gpu: float
    seconds_cpu: float
    bytes_gpu: int
    bytes_cpu: int
    calibration: float  # calibrated / uncalibrated decode speed of this placement
    cpu_share: float = 1.0  # uncalibrated share of a token's time spent on the CPU


def calibration_key(hw: HardwareProfile) -> str | None:
    """What speed measurements are kept and read under: the machine, and whether its predictions
    rest on llama.cpp's timed decode or on the numpy read, and on a GPU's timed decode or its
    card's bandwidth (a correction learnt on one basis would mislead the other)."""
    if hw.machine_id is None:
        return None
    key = f"{hw.machine_id}/engine" if hw.memory.engine_rates or hw.memory.kv_costs else hw.machine_id
    return key + "+gpu" if any(g.engine_rates for g in hw.gpus) else key


def thread_factor(hw: HardwareProfile, threads: int) -> float:
    """Below one thread per core, decode turns compute-bound per thread (dequantize, multiply), not
    bandwidth-bound: it scales as (threads / cores) ** 0.75 on both the H200 host (4/8/16 threads)
    and a 2-core EPYC VM, whatever a one-thread memory read alone would reach."""
    cores = hw.cpu.physical_cores or threads
    return min(1.0, threads / cores) ** THREAD_EXPONENT


def _quant(key: str) -> str:
    return key.split("@", 1)[0]


def _all_cores(entries) -> list:
    """The readings timed at every physical core (keys without a "/tN" thread count)."""
    from tandem.runtime.hardware.enginebench import split_suffix

    return [(k, v) for k, v in entries if not split_suffix(k)[1]]


def _suffix(hw: HardwareProfile, threads: int) -> str:
    from tandem.runtime.hardware.enginebench import cores_of, thread_suffix

    return thread_suffix(threads, cores_of(hw))


def host_bandwidth(hw: HardwareProfile, threads: int) -> float:
    """Bytes/s of memory bandwidth the speed model counts with `threads` threads: where llama.cpp's
    rates were timed here, the bandwidth they imply (each rate / its type's fitted efficiency, the
    median over the kinds timed), else the numpy read."""
    rates = _all_cores(hw.memory.engine_rates)
    if rates:
        full = statistics.median(gbps / CPU_TYPE_EFFICIENCY.get(_quant(k), DEFAULT_CPU_EFFICIENCY) for k, gbps in rates)
    else:
        full = hw.memory.read_bandwidth_gbps or 20.0
    return full * 1e9 * thread_factor(hw, threads)


def type_rate(info: ModelInfo, hw: HardwareProfile, quant: str, threads: int | None = None) -> float | None:
    """GB/s llama.cpp streams this model's layers of one weight type at with `threads` threads
    (default: every physical core): timed at that count in its own shape; else timed at every core
    in its own shape, else in another shape (the median), times the thread factor; else None."""
    from tandem.runtime.hardware.enginebench import kind_for, measurable

    if not measurable(quant):
        return None
    key = kind_for(quant, info).key
    suffix = _suffix(hw, threads) if threads else ""
    if suffix and hw.memory.engine_rate(key + suffix):
        return hw.memory.engine_rate(key + suffix)
    factor = thread_factor(hw, threads) if threads else 1.0
    own = hw.memory.engine_rate(key)
    if own:
        return own * factor
    others = [gbps for k, gbps in _all_cores(hw.memory.engine_rates) if _quant(k) == quant and gbps]
    return statistics.median(others) * factor if others else None


def gpu_rate(info: ModelInfo, gpu: GpuInfo) -> float | None:
    """Bytes/s llama.cpp's kernels stream this model's weights at on `gpu`: each weight type at
    the rate timed there in the model's own shape (hardware.enginebench.measure_gpu), else in
    another shape (the median), a type not timed at the median of the GPU's timed rates; the
    types' times add by their bytes. None where nothing was timed on it (the card's bandwidth
    x GPU_EFFICIENCY stands in)."""
    from tandem.runtime.hardware.enginebench import kind_for, measurable

    if not gpu.engine_rates or not sum(info.tensor_types.values()):
        return None
    any_type = statistics.median(gbps for _, gbps in gpu.engine_rates)

    def rate(quant: str) -> float:
        timed = gpu.engine_rate(kind_for(quant, info).key) if measurable(quant) else None
        if timed is None:
            others = [gbps for k, gbps in gpu.engine_rates if _quant(k) == quant]
            timed = statistics.median(others) if others else any_type
        return timed * 1e9

    return _by_bytes(info, rate)


def _by_bytes(info: ModelInfo, rate) -> float:
    """Bytes/s of a model's weights where each weight type streams at rate(type) bytes/s: the
    types' times add by their bytes."""
    total = sum(info.tensor_types.values())
    return 1.0 / sum(nbytes / total / rate(quant) for quant, nbytes in info.tensor_types.items())


def cpu_rate(info: ModelInfo, hw: HardwareProfile, threads: int) -> float:
    """Bytes/s of this model's weights llama.cpp's CPU kernels stream with `threads` threads: each
    weight type at the rate timed on this machine (hardware.enginebench), a type not timed at the
    host bandwidth times its fitted efficiency; the types' times add by their bytes."""
    total = sum(info.tensor_types.values())
    if not hw.memory.engine_rates or not total:
        return host_bandwidth(hw, threads) * cpu_efficiency(info)
    base = host_bandwidth(hw, threads)

    def rate(quant: str) -> float:
        timed = type_rate(info, hw, quant, threads)
        return timed * 1e9 if timed else base * CPU_TYPE_EFFICIENCY.get(quant, DEFAULT_CPU_EFFICIENCY)

    return _by_bytes(info, rate)


def kv_ns(info: ModelInfo, hw: HardwareProfile, type_k: str, threads: int) -> float | None:
    """Nanoseconds a decoded token spends per cached position and CPU layer with a cache of this
    type, from llama.cpp's decode timed with it filled: in the model's main kind of layers (at this
    thread count, else at every core over the thread factor), else in other kinds (the median);
    scaled by query dimension (n_head x head_dim) where the timed layers' differ from the model's
    (a slice in the standard shape; keys and values of different widths, which a slice does not
    take); None where this type was not timed."""
    from tandem.runtime.hardware.enginebench import kv_kind, parse_key

    costs = dict(hw.memory.kv_costs)
    kind = kv_kind(info)
    own = f"{type_k}@{kind.key}" if kind else None
    suffix = _suffix(hw, threads)
    query_dim = info.n_head * info.head_dim_k
    if own and suffix and own + suffix in costs:
        return costs[own + suffix] * query_dim / kind.query_dim
    if own in costs:
        return costs[own] * query_dim / kind.query_dim / thread_factor(hw, threads)
    per_dim = []
    for key, value in _all_cores(hw.memory.kv_costs):
        kv_type, _, kind_key = key.partition("@")
        other = parse_key(kind_key)
        if kv_type == type_k and other is not None:
            per_dim.append(value / other.query_dim)
    if not per_dim:
        return None
    return statistics.median(per_dim) * query_dim / thread_factor(hw, threads)


def kv_seconds(info: ModelInfo, hw: HardwareProfile, type_k: str, fill: int, cpu_layers,
               threads: int) -> float | None:
    """Seconds a token spends attending over `fill` cached positions in its CPU layers (indices; a
    sliding-window layer attends to its window only), the KV bytes read included, at kv_ns's
    cost; None unless every cache type the model can have was timed (the KV bytes read then
    stand for it, so that the types the planner compares are priced alike)."""
    return _attention_seconds(info, lambda t: kv_ns(info, hw, t, threads), type_k, fill, cpu_layers)


def _attention_seconds(info: ModelInfo, ns_of, type_k: str, fill: int, layers) -> float | None:
    """ns_of(type)'s ns per attended position and layer, over these layers (a sliding-window layer
    attends to its window only); None unless every cache type the model can have is priced, so
    that the types the planner compares are priced alike."""
    from tandem.runtime.hardware.enginebench import kv_types
    from tandem.runtime.planner.memory import attended

    priced = {t: ns_of(t) for t in kv_types(info.head_dim_k, info.head_dim_v)}
    ns = priced.get(type_k)
    if ns is None or any(v is None for v in priced.values()):
        return None
    return ns * 1e-9 * sum(attended(info, i, fill) for i in layers)


def gpu_kv_seconds(info: ModelInfo, gpu: GpuInfo, type_k: str, fill: int, layers) -> float | None:
    """Seconds a token spends on `gpu` attending over `fill` cached positions in these layers
    (indices), at the cost timed there in the model's main kind (scaled by query dimension where
    the kind's differs); None unless every cache type the model can have was timed there."""
    from tandem.runtime.hardware.enginebench import kv_kind

    kind = kv_kind(info)
    if kind is None or not gpu.kv_costs:
        return None
    costs, scale = dict(gpu.kv_costs), info.n_head * info.head_dim_k / kind.query_dim

    def ns_of(t: str) -> float | None:
        timed = costs.get(f"{t}@{kind.key}")
        return None if timed is None else timed * scale

    return _attention_seconds(info, ns_of, type_k, fill, layers)


def cpu_seconds(info: ModelInfo, hw: HardwareProfile, threads: int, layers, output: bool, type_k: str,
                fill: int, kv_read: int) -> float:
    """A token's seconds on this CPU for these repeating layers (and the output layer): their
    weights at llama.cpp's rate, each layer's fixed cost, and attention over `fill` cached
    positions at its timed cost (not timed: kv_read bytes at the weights' rate)."""
    from tandem.runtime.planner.memory import output_weight_bytes

    layers = list(layers)
    rate = cpu_rate(info, hw, threads)
    weights = sum(info.layer_bytes[i] for i in layers) + (output_weight_bytes(info) if output else 0)
    attention = kv_seconds(info, hw, type_k, fill, layers, threads)
    if attention is None:  # not timed: the KV bytes read, at the weights' rate
        attention = kv_read / rate
    return weights / rate + len(layers) * CPU_LAYER_S + attention


def estimate(info: ModelInfo, hw: HardwareProfile, *, n_gpu_layers: int, gpu, threads: int,
             kv_read_gpu: int, kv_read_cpu: int, calibration: float | tuple = 1.0,
             type_k: str = "f16", fill: int = 0) -> SpeedEstimate:
    """Predicted decode and prefill tokens/s of one placement (kv_read_*: KV bytes read per token;
    type_k and fill: the cache's type and how many positions it holds, for the attention's cost).

    gpu: a GpuInfo or a GpuSet; the GPUs run their layers one after the other, so their times add.
    calibration: (cpu, gpu) speed factors (Calibration.factor), or one for both.
    """
    factors = calibration if isinstance(calibration, tuple) else (calibration, calibration)
    from tandem.runtime.planner.memory import GpuSet, assign_layers, output_weight_bytes

    gset = GpuSet.of(gpu)
    layer_dev, output_dev = assign_layers(info, n_gpu_layers if gset else 0, gset.split if gset else (1.0,))
    out_w = output_weight_bytes(info)
    on_cpu = [i for i, d in enumerate(layer_dev) if d is None]
    bytes_cpu = sum(info.layer_bytes[i] for i in on_cpu) + (out_w if output_dev is None else 0)
    n_cpu_layers = len(on_cpu)
    seconds_cpu = cpu_seconds(info, hw, threads, on_cpu, output_dev is None, type_k, fill, kv_read_cpu)

    seconds_gpu, gpu_flop_seconds, bytes_gpu = 0.0, 0.0, 0
    n_gpu_layers_total = info.n_layer - n_cpu_layers
    used = []
    for k, g in enumerate(gset.gpus if gset else ()):
        mine = [i for i, d in enumerate(layer_dev) if d == k]
        has_output = output_dev == k
        if not mine and not has_output:
            continue
        used.append(g)
        b = sum(info.layer_bytes[i] for i in mine) + (out_w if has_output else 0)
        kv = kv_read_gpu * len(mine) / max(1, n_gpu_layers_total)
        gbw = (gpu_bandwidth_gbps(g) or 200.0) * 1e9
        rate = gpu_rate(info, g) or gbw * GPU_EFFICIENCY  # timed on this GPU, else the card's bandwidth
        attention = gpu_kv_seconds(info, g, type_k, fill, mine)  # not timed there: the KV bytes read
        seconds_gpu += b / rate + (kv / rate if attention is None else attention) \
            + (len(mine) + (1 if has_output else 0)) * GPU_LAYER_S
        gpu_flop_seconds += 2 * info.n_params * b / max(1, info.weight_bytes) / (gbw * GPU_FLOPS_PER_GBPS / 1e9)
        bytes_gpu += b
    # a crossing from one GPU to the next, and between the CPU and the first GPU (timed there, if it was)
    seconds_gpu += max(0, len(used) - 1) * HANDOFF_S
    if used and n_cpu_layers:
        seconds_gpu += used[0].handoff_s if used[0].handoff_s is not None else HANDOFF_S
    base = BASE_S + (info.vocab_size or 0) * SAMPLE_S_PER_ENTRY  # sampling runs on the CPU
    seconds = seconds_cpu + seconds_gpu + base
    share = (seconds_cpu + (base if not seconds_gpu else 0.0)) / seconds
    decode = calibrated(1.0 / seconds, share, factors)

    params_total = max(1, info.n_params)
    cpu_share = bytes_cpu / max(1, bytes_gpu + bytes_cpu)
    cpu_flops = CPU_FLOPS_PER_CORE * min(threads, hw.cpu.physical_cores or threads)
    prefill_s = max(1e-6, 2 * params_total * cpu_share / cpu_flops + gpu_flop_seconds)  # no weights: not 0
    return SpeedEstimate(
        decode_tps=decode, prefill_tps=1.0 / prefill_s, seconds_gpu=seconds_gpu, seconds_cpu=seconds_cpu,
        bytes_gpu=bytes_gpu, bytes_cpu=bytes_cpu, calibration=decode * seconds, cpu_share=share,
    )
