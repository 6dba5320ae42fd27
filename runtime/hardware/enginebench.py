"""How fast llama.cpp's own CPU kernels stream weights on this machine: a few seconds, once.

A numpy read of a large buffer tells the memory's bandwidth, not what llama.cpp's decode reaches:
on a 16-core H200 host numpy read 86 to 121 GB/s on the same day while llama.cpp's CPU layers
moved about 35. The speed model's host term is therefore measured with the engine itself: a
synthetic slice of Q4_0 layers (random but valid blocks, a 1B-class layer shape) is decoded one
token at a time at every physical core, after a warm-up, and the fastest round's time per token is turned into the
host bandwidth that the speed model's formula needs to reproduce it:

    seconds per token = (layer bytes + output bytes) / (bandwidth x efficiency of Q4_0)
                        + layers x CPU_LAYER_S + BASE_S

Kept per machine, llama.cpp build and thread count in the data folder beside the numpy reading,
so it costs nothing after the first start.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_FILE = "engine-bench.json"
QUANT = "Q4_0"
# A Llama-3.2-1B layer (n_embd 2048, GQA 32/8 heads, n_ff 8192): 37.7 MB in Q4_0. Enough layers to
# read well past the last-level cache, few enough to write and decode in a few seconds.
N_EMBD, N_HEAD, N_HEAD_KV, N_FF = 2048, 32, 8, 8192
MIN_SLICE_BYTES = 128 << 20
MAX_LAYERS = 8
WARMUP_TOKENS = 8
ROUNDS, ROUND_TOKENS = 4, 10


@dataclass(frozen=True)
class EngineReading:
    """What one micro-benchmark measured."""

    bandwidth_gbps: float  # the host bandwidth that reproduces the measured decode in the speed model
    seconds_per_token: float
    layers: int
    slice_bytes: int  # weights read per token: the layers and the output matrix
    threads: int
    seconds: float  # what the measurement cost, writing the slice included
    build: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def build_id() -> str:
    """The llama.cpp build: llama-cpp-python's version and the CPU features it was compiled for."""
    import llama_cpp

    try:
        info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - an older binding: the version alone
        info = ""
    return f"{llama_cpp.__version__}:{hashlib.sha256(info.encode()).hexdigest()[:12]}"


def slice_layers(l3_bytes: int | None) -> int:
    """Layers in the slice: its weights at least four times the last-level cache and 128 MiB."""
    from tandem.runtime.synth import SynthSpec, layer_bytes

    one = layer_bytes(SynthSpec(n_layer=1, n_embd=N_EMBD, n_head=N_HEAD, n_head_kv=N_HEAD_KV, n_ff=N_FF, quant=QUANT))
    want = max(MIN_SLICE_BYTES, 4 * (l3_bytes or 0))
    return max(2, min(MAX_LAYERS, math.ceil(want / one)))


def bandwidth_from(seconds_per_token: float, layers: int, layer_bytes: int, output_bytes: int) -> float:
    """The host GB/s that makes the speed model predict `seconds_per_token` for this slice."""
    from tandem.runtime.planner.speed import BASE_S, CPU_LAYER_S, CPU_TYPE_EFFICIENCY

    streaming = seconds_per_token - layers * CPU_LAYER_S - BASE_S
    if streaming <= 0:
        raise ValueError(f"a token took {seconds_per_token * 1e3:.2f} ms: too fast to be streaming the weights")
    return (layers * layer_bytes + output_bytes) / streaming / CPU_TYPE_EFFICIENCY[QUANT] / 1e9


def measure(threads: int, l3_bytes: int | None = None, workdir: Path | None = None) -> EngineReading:
    """Write the slice, decode WARMUP_TOKENS then ROUNDS x ROUND_TOKENS one at a time with
    `threads` threads, and derive the bandwidth from the fastest round. Raises RuntimeError when llama.cpp cannot run it."""
    import llama_cpp

    from tandem.runtime.engine.model import guard_engine_build
    from tandem.runtime.engine.native import NativeDecoder
    from tandem.runtime.synth import SynthSpec, layer_bytes, output_bytes, write_model

    started = time.perf_counter()
    layers = slice_layers(l3_bytes)
    spec = SynthSpec(n_layer=layers, n_embd=N_EMBD, n_head=N_HEAD, n_head_kv=N_HEAD_KV, n_ff=N_FF,
                     n_ctx_train=256, quant=QUANT, name="tandem-engine-bench")
    with tempfile.TemporaryDirectory(prefix="tandem-engine-bench-", dir=workdir) as tmp:
        path = write_model(Path(tmp) / "slice.gguf", spec)
        guard_engine_build()
        llm = llama_cpp.Llama(str(path), n_ctx=128, n_batch=32, n_ubatch=32, n_threads=threads,
                              n_threads_batch=threads, n_gpu_layers=0, use_mmap=False, verbose=False)
        try:
            decoder = NativeDecoder(llm)
            token = 1000
            for _ in range(WARMUP_TOKENS):
                decoder.decode([token])
                token += 1
            per_token = math.inf
            for _ in range(ROUNDS):  # the fastest round: a shared machine's noise only slows one
                t0 = time.perf_counter()
                for _ in range(ROUND_TOKENS):
                    decoder.decode([token])
                    token += 1
                per_token = min(per_token, (time.perf_counter() - t0) / ROUND_TOKENS)
        finally:
            llm.close()
    one_layer = layer_bytes(spec) // layers
    gbps = bandwidth_from(per_token, layers, one_layer, output_bytes(spec))
    return EngineReading(bandwidth_gbps=round(gbps, 2), seconds_per_token=per_token, layers=layers,
                         slice_bytes=layers * one_layer + output_bytes(spec), threads=threads,
                         seconds=round(time.perf_counter() - started, 2), build=build_id())


def cached_reading(data_dir: Path | None, machine: str, threads: int, l3_bytes: int | None = None,
                   remeasure: bool = False) -> EngineReading:
    """The reading for this machine, llama.cpp build and thread count: from data_dir's cache, else
    measured now and kept there."""
    from tandem.runtime.hardware.bandwidth import read_cache, write_cache

    path = data_dir / CACHE_FILE if data_dir else None
    key = f"{machine}:{build_id()}:{threads}"
    cache = read_cache(path)
    entry = cache.get(key)
    if not remeasure and isinstance(entry, dict):
        try:
            return EngineReading(**entry)
        except TypeError:
            pass  # written by another version: measured again
    reading = measure(threads, l3_bytes, workdir=data_dir)
    if path:
        cache[key] = reading.to_dict()
        write_cache(path, cache)
    return reading
