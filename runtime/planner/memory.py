"""Analytic memory model: where every byte of a plan goes, per device, from the GGUF table alone.

Exact for weights (layer granularity) and the KV cache (per layer, per cache type, sliding-window
layers counted as such); the compute buffer is an approximation that the dry run then replaces.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.model_info import ModelInfo

MIB = 1 << 20
# bytes per element of each KV cache type (ggml block size / elements per block)
KV_TYPE_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
GGML_TYPE_ID = {"f16": 1, "q8_0": 8, "q4_0": 2}  # llama_cpp.GGML_TYPE_*
CTX_PAD = 256  # llama.cpp rounds the context up to a multiple of this
GPU_RUNTIME_OVERHEAD = {"nvidia": 600 * MIB}  # CUDA context, cuBLAS and kernels (594 MiB held on an H200)
DEFAULT_GPU_OVERHEAD = 300 * MIB


def pad_ctx(n_ctx: int) -> int:
    return -(-n_ctx // CTX_PAD) * CTX_PAD


def kv_cells(info: ModelInfo, layer: int, n_ctx: int, n_ubatch: int, swa_full: bool) -> int:
    """Cells the cache keeps for one layer: the whole context, or window + ubatch for a SWA layer."""
    n = pad_ctx(n_ctx)
    if info.swa_layers[layer] and info.sliding_window and not swa_full:
        return min(n, pad_ctx(info.sliding_window + n_ubatch))
    return n


def kv_bytes_per_cell(info: ModelInfo, layer: int, type_k: str, type_v: str) -> float:
    heads = info.n_head_kv[layer]
    return heads * (info.head_dim_k * KV_TYPE_BYTES[type_k] + info.head_dim_v * KV_TYPE_BYTES[type_v])


def attended(info: ModelInfo, layer: int, fill: int) -> int:
    """Cached positions a decoded token attends to in one layer: all `fill` of them, or the window
    in a sliding-window layer. The cache may hold more (swa_full), but llama.cpp's flash attention
    skips a masked position before reading it."""
    if info.swa_layers[layer] and info.sliding_window:
        return min(fill, info.sliding_window)
    return fill


def kv_read_bytes(info: ModelInfo, layers, fill: int) -> int:
    """Bytes of an f16 cache a decoded token reads in these layers with `fill` positions cached."""
    return round(sum(attended(info, i, fill) * kv_bytes_per_cell(info, i, "f16", "f16") for i in layers))


def kv_bytes(info: ModelInfo, layers, n_ctx: int, type_k: str, type_v: str, n_ubatch: int = 512,
             swa_full: bool = True) -> int:
    """Bytes of the KV cache for the given layers at this context."""
    return round(sum(kv_cells(info, i, n_ctx, n_ubatch, swa_full) * kv_bytes_per_cell(info, i, type_k, type_v)
                     for i in layers))


def compute_bytes(info: ModelInfo, n_ctx: int, n_ubatch: int, flash_attn: bool) -> int:
    """Approximate size of llama.cpp's compute buffer for one device doing the whole graph.

    Logits for a ubatch (4 * n_ubatch * n_vocab) dominate small models; without flash attention
    the attention scores of one layer (4 * n_ubatch * n_ctx * n_head) take over at long contexts.
    Fitted to llama.cpp's dry-run reports (tests keep it honest).
    """
    n = pad_ctx(n_ctx)
    vocab = info.vocab_size or 32000
    logits = 4 * n_ubatch * vocab
    activations = 4 * n_ubatch * 3 * info.n_embd
    if flash_attn:
        return logits + activations + 2 * n_ubatch * n
    return max(logits, 4 * n_ubatch * n * info.n_head) + activations + 4 * n_ubatch * n


@dataclass(frozen=True)
class GpuSet:
    """The GPUs a plan offloads to, with llama.cpp's layer split proportions (same order)."""

    gpus: tuple
    split: tuple[float, ...]

    @classmethod
    def of(cls, gpu) -> "GpuSet | None":
        if gpu is None or isinstance(gpu, GpuSet):
            return gpu
        return cls((gpu,), (1.0,))

    @property
    def main(self):
        """The GPU holding the output layer: the last one in the split."""
        return self.gpus[-1]


def assign_layers(info: ModelInfo, n_gpu_layers: int, split: tuple[float, ...]) -> tuple[list[int | None], int | None]:
    """Device (index into the split) of each repeating layer, None for the CPU, and of the output.

    Mirrors llama.cpp: the last act = min(N, n_layer + 1) layers are offloaded (the output counts
    as one), spread over the GPUs in order by the cumulative split proportions.
    """
    act = max(0, min(n_gpu_layers, info.n_layer + 1))
    total = sum(split) or 1.0
    cumulative, acc = [], 0.0
    for part in split:
        acc += part / total
        cumulative.append(acc)

    def device(x: float) -> int:
        return next((i for i, c in enumerate(cumulative) if c > x), len(cumulative) - 1)

    start = info.n_layer + 1 - act
    layers = [None if i < start else device((i - start) / act) for i in range(info.n_layer)]
    return layers, (device((act - 1) / act) if act else None)


def gpu_layers(info: ModelInfo, n_gpu_layers: int) -> tuple[list[int], bool]:
    """(repeating layers on the GPU, whether the output layer is there) for one GPU and N layers."""
    layers, output = assign_layers(info, n_gpu_layers, (1.0,))
    return [i for i, d in enumerate(layers) if d is not None], output is not None


def output_weight_bytes(info: ModelInfo) -> int:
    """The output projection read every token: output.weight, or the token embedding when tied."""
    return info.output_bytes + (info.token_embd_bytes if info.output_tied else 0)


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # "CPU" or "GPU0" ...
    weights: int
    kv: int
    compute: int
    overhead: int
    margin: int
    capacity: int | None  # free memory on the device; None when unknown

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.overhead

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.total + self.margin <= self.capacity

    def as_dict(self) -> dict:
        return {"device": self.device, "weights": self.weights, "kv": self.kv, "compute": self.compute,
                "overhead": self.overhead, "margin": self.margin, "total": self.total,
                "capacity": self.capacity, "fits": self.fits}


def layers_compute_bytes(info: ModelInfo, n_ctx: int, n_ubatch: int) -> int:
    """The compute buffer of a device that holds layers but not the output: activations for its
    layers and their attention scores."""
    return 4 * n_ubatch * 3 * info.n_embd + 2 * n_ubatch * pad_ctx(n_ctx)


def cpu_memory(info: ModelInfo, *, n_offloaded: int, n_ctx: int, type_k: str, type_v: str, n_ubatch: int,
               flash_attn: bool, offload_kqv: bool, swa_full: bool, cpu_capacity: int | None,
               cpu_margin: int) -> DeviceMemory:
    """This CPU's memory when llama.cpp offloads the last n_offloaded layers (the output counting
    as one) to other devices, whichever they are (GPUs here, or workers over RPC)."""
    layer_dev, output_dev = assign_layers(info, n_offloaded, (1.0,))
    on_cpu = [i for i, d in enumerate(layer_dev) if d is None]
    cpu_weights = sum(info.layer_bytes[i] for i in on_cpu) + info.token_embd_bytes + info.other_bytes
    if output_dev is None:
        cpu_weights += info.output_bytes
    kv_cpu_layers = on_cpu if offload_kqv else list(range(info.n_layer))
    output_buffer = 4 * (info.vocab_size or 0)
    if output_dev is not None:  # logits are computed on the device; the host keeps a staging share
        cpu_compute = 4 * n_ubatch * 3 * info.n_embd + output_buffer
    else:
        cpu_compute = compute_bytes(info, n_ctx, n_ubatch, flash_attn) + output_buffer
    return DeviceMemory("CPU", cpu_weights, kv_bytes(info, kv_cpu_layers, n_ctx, type_k, type_v, n_ubatch, swa_full),
                        cpu_compute, 0, cpu_margin, cpu_capacity)


def memory_map(info: ModelInfo, *, n_gpu_layers: int, n_ctx: int, type_k: str, type_v: str, n_ubatch: int,
               flash_attn: bool, offload_kqv: bool, swa_full: bool, cpu_capacity: int | None,
               cpu_margin: int, gpu=None, gpu_margin=None) -> tuple[DeviceMemory, ...]:
    """Per-device memory of one candidate plan: the CPU first, then each GPU that gets layers.

    gpu: a GpuInfo or a GpuSet; gpu_margin: a function of a GpuInfo giving its safety margin.
    """
    gset = GpuSet.of(gpu)
    n = n_gpu_layers if gset is not None else 0
    layer_dev, output_dev = assign_layers(info, n, gset.split if gset else (1.0,))
    out_w = output_weight_bytes(info)
    compute = compute_bytes(info, n_ctx, n_ubatch, flash_attn)
    devices = [cpu_memory(info, n_offloaded=n, n_ctx=n_ctx, type_k=type_k, type_v=type_v, n_ubatch=n_ubatch,
                          flash_attn=flash_attn, offload_kqv=offload_kqv, swa_full=swa_full,
                          cpu_capacity=cpu_capacity, cpu_margin=cpu_margin)]
    if gset is None or n == 0:
        return tuple(devices)
    for k, g in enumerate(gset.gpus):
        mine = [i for i, d in enumerate(layer_dev) if d == k]
        has_output = output_dev == k
        if not mine and not has_output:
            continue
        weights = sum(info.layer_bytes[i] for i in mine) + (out_w if has_output else 0)
        kv = kv_bytes(info, mine, n_ctx, type_k, type_v, n_ubatch, swa_full) if offload_kqv else 0
        # every GPU holds activations for its layers; the one with the output also the logits
        dev_compute = compute if has_output else layers_compute_bytes(info, n_ctx, n_ubatch)
        devices.append(DeviceMemory(
            f"GPU{g.index}", weights, kv, dev_compute,
            GPU_RUNTIME_OVERHEAD.get(g.vendor, DEFAULT_GPU_OVERHEAD), gpu_margin(g) if gpu_margin else 0,
            g.memory_free_bytes,
        ))
    return tuple(devices)
