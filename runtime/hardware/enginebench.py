"""How fast llama.cpp's own CPU kernels stream weights on this machine: seconds, once per kind.

A numpy read of a large buffer tells the memory's bandwidth, not what llama.cpp's decode reaches:
on a 16-core H200 host numpy read 86 to 121 GB/s on the same day while llama.cpp's CPU layers
moved about 35; and how close a weight type's kernels come to the memory differs by CPU and build
(on an AVX-512 Xeon, Q4_K streams 1.5x faster than Q4_0 of the same size; the constants fitted on
an AVX2 EPYC say the opposite), and by layer shape (a small model's layers stay in the caches).

So the speed model's CPU term is measured with the engine itself, per weight type and layer shape:
a synthetic slice of layers of the model's own shape (up to 1 GiB of them), all of that type, is
decoded one token at a time at every physical core, after a warm-up, and the fastest round's time
per token gives the rate the speed model's formula needs to reproduce it:

    seconds per token = (layer bytes + output bytes) / rate + layers x CPU_LAYER_S + BASE_S

The slice's file is sparse (its weights read as zeros: written instantly) and loaded without
mmap, so every layer is its own memory: llama.cpp's kernels take as long on zero blocks as on
random ones (Q4_0, Q4_1, Q4_K and Q8_0 slices measured both ways agree within 3%).

Kept per machine, llama.cpp build, thread count, type and shape in the data folder beside the
numpy reading: a kind costs its seconds once, when the first model that holds it is loaded.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CACHE_FILE = "engine-bench.json"
# Without a model to copy: a Llama-3.2-1B layer (n_embd 2048, GQA 32/8 heads, n_ff 8192).
STANDARD_SHAPE = (2048, 8192, 32, 8)
MAX_SLICE_BYTES = 1 << 30
MIN_LAYERS = 2
WARMUP_TOKENS = 4
ROUNDS, ROUND_TOKENS = 4, 6
# A type worth timing holds at least this share of a model's weight bytes.
MIN_SHARE = 0.1


def measurable(quant: str) -> bool:
    from tandem.runtime.synth import QUANT_TYPES

    return quant in QUANT_TYPES


def main_types(tensor_types: dict[str, int]) -> list[str]:
    """The weight types that decide a model's CPU speed: those holding MIN_SHARE of its bytes
    that a slice can be written in."""
    total = sum(tensor_types.values()) or 1
    return sorted(t for t, b in tensor_types.items() if b / total >= MIN_SHARE and measurable(t))


@dataclass(frozen=True)
class Kind:
    """What one timing stands for: a weight type in layers of one shape, `layers` of them."""

    quant: str
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    layers: int

    @property
    def key(self) -> str:
        return f"{self.quant}@{self.n_embd}x{self.n_ff}x{self.n_head}x{self.n_head_kv}x{self.layers}"

    def spec(self):
        from tandem.runtime.synth import SynthSpec

        return SynthSpec(n_layer=self.layers, n_embd=self.n_embd, n_head=self.n_head, n_head_kv=self.n_head_kv,
                         n_ff=self.n_ff, n_ctx_train=256, quant=self.quant, name=f"tandem-engine-bench-{self.key}")


def kind_for(quant: str, info=None) -> Kind:
    """The slice for a model's layers of one type (see _kind)."""
    if info is None:
        return _kind(quant, None)
    return _kind(quant, (info.n_embd, info.n_ff, info.n_head, max(info.n_head_kv or (info.n_head,)) or info.n_head,
                         info.n_layer, info.n_expert))


@lru_cache(maxsize=256)
def _kind(quant: str, shape: tuple | None) -> Kind:
    """The slice for a model's layers of one type (info: a ModelInfo, or None for the standard
    1B shape): its shape where a slice of this type can take it (dense, dimensions a whole number
    of the type's blocks), else the standard one; as many layers as the model has, up to
    MAX_SLICE_BYTES."""
    from tandem.runtime.synth import SynthSpec, layer_bytes

    dims, n_layers = STANDARD_SHAPE, None
    if shape is not None and not shape[5]:  # mixtures of experts: the standard shape
        n_embd, n_ff, n_head, n_head_kv, n_layer, _ = shape
        candidate = (n_embd, n_ff or 4 * n_embd, n_head, n_head_kv)
        try:
            SynthSpec(n_layer=1, n_embd=candidate[0], n_ff=candidate[1], n_head=candidate[2],
                      n_head_kv=candidate[3], quant=quant)
            dims, n_layers = candidate, n_layer
        except ValueError:
            pass
    one = layer_bytes(Kind(quant, *dims, layers=1).spec())
    layers = max(MIN_LAYERS, min(n_layers or 10**6, MAX_SLICE_BYTES // max(1, one)))
    return Kind(quant, *dims, layers=layers)


@dataclass(frozen=True)
class EngineReading:
    """What one micro-benchmark measured."""

    key: str
    quant: str
    rate_gbps: float  # GB/s of this type's weights the CPU kernels stream, as the speed model counts
    seconds_per_token: float
    layers: int
    slice_bytes: int  # weights read per token: the layers and the output matrix
    threads: int
    seconds: float  # what the measurement cost, loading the slice included
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


def rate_from(seconds_per_token: float, layers: int, layer_bytes: int, output_bytes: int) -> float:
    """The GB/s that makes the speed model predict `seconds_per_token` for this slice."""
    from tandem.runtime.planner.speed import BASE_S, CPU_LAYER_S

    streaming = seconds_per_token - layers * CPU_LAYER_S - BASE_S
    if streaming <= 0:
        raise ValueError(f"a token took {seconds_per_token * 1e3:.2f} ms: too fast to be streaming the weights")
    return (layers * layer_bytes + output_bytes) / streaming / 1e9


def measure(kind: Kind, threads: int, workdir: Path | None = None) -> EngineReading:
    """Write the slice, decode WARMUP_TOKENS then ROUNDS x ROUND_TOKENS one at a time with
    `threads` threads, and derive the rate from the fastest round.

    Runs in a thread of its own that ends with it: llama.cpp's OpenMP team lives as long as the
    thread that computed, and a second live team makes every later model's decode wait passively
    (SmolLM2 at 2 threads: 34 tokens/s after a benchmark left its team in the caller's thread,
    120 otherwise)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-engine-bench") as pool:
        return pool.submit(_measure, kind, threads, workdir).result()


def _measure(kind: Kind, threads: int, workdir: Path | None) -> EngineReading:
    import llama_cpp

    from tandem.runtime.engine.model import guard_engine_build
    from tandem.runtime.engine.native import NativeDecoder
    from tandem.runtime.synth import layer_bytes, output_bytes, write_model

    started = time.perf_counter()
    spec = kind.spec()
    with tempfile.TemporaryDirectory(prefix="tandem-engine-bench-", dir=workdir) as tmp:
        path = write_model(Path(tmp) / "slice.gguf", spec, fill="zeros")
        guard_engine_build()
        llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=16, n_ubatch=16, n_threads=threads,
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
    one_layer = layer_bytes(spec) // kind.layers
    rate = rate_from(per_token, kind.layers, one_layer, output_bytes(spec))
    return EngineReading(key=kind.key, quant=kind.quant, rate_gbps=round(rate, 2), seconds_per_token=per_token,
                         layers=kind.layers, slice_bytes=kind.layers * one_layer + output_bytes(spec),
                         threads=threads, seconds=round(time.perf_counter() - started, 2), build=build_id())


def cached_rates(data_dir: Path | None, machine: str, threads: int, kinds: list[Kind],
                 remeasure: bool = False) -> dict[str, EngineReading]:
    """The readings of these kinds for this machine, llama.cpp build and thread count (by key):
    from data_dir's cache, the missing ones measured now and kept there. With remeasure, every
    kind the cache holds for this machine is measured again too."""
    from tandem.runtime.hardware.bandwidth import read_cache

    path = data_dir / CACHE_FILE if data_dir else None
    prefix = f"{machine}:{build_id()}:{threads}:weights:"
    cache = read_cache(path)
    known = _kept(cache, prefix, EngineReading)
    wanted = {k.key: k for k in kinds}
    if remeasure:
        for key in known:
            if key not in wanted:
                wanted[key] = parse_key(key)
    for key, kind in wanted.items():
        if kind is None or not measurable(kind.quant) or (key in known and not remeasure):
            continue
        known[key] = measure(kind, threads, workdir=data_dir)
        _keep(path, cache, prefix + key, known[key])
    return known


def _kept(cache: dict, prefix: str, kind: type) -> dict:
    """The readings of one kind kept under `prefix` (by the rest of their key); an entry another
    version wrote is left out (measured again)."""
    known = {}
    for key, entry in cache.items():
        if key.startswith(prefix) and isinstance(entry, dict):
            try:
                known[key[len(prefix):]] = kind(**entry)
            except TypeError:
                pass
    return known


def _keep(path: Path | None, cache: dict, key: str, reading) -> None:
    from tandem.runtime.hardware.bandwidth import write_cache

    if path is not None:
        cache[key] = reading.to_dict()
        write_cache(path, cache)


def parse_key(key: str) -> Kind | None:
    """The Kind a key was made from; None for a key this version did not write."""
    try:
        quant, dims = key.split("@")
        n_embd, n_ff, n_head, n_head_kv, layers = (int(v) for v in dims.split("x"))
    except ValueError:
        return None
    return Kind(quant, n_embd, n_ff, n_head, n_head_kv, layers)


# --- the cost of attending over a filled cache, per KV cache type
#
# Decoding with a filled context adds, per token, attention over every cached position in every
# layer; on a CPU that is arithmetic more than memory traffic, and its price depends on the
# cache's type (llama.cpp's CPU flash attention converts an f16 cache element by element: on an
# AVX-512 Xeon, SmolLM2 at 1,100 cached tokens decodes at 55 tokens/s with an f16 cache and 93
# with q8_0). It is timed on a small slice (8 layers of 8 heads of 64) at KV_FILL cached tokens
# against an empty cache, and kept per query-head dimension: seconds per cached position, layer
# and query dimension (n_head x head_dim), which the speed model multiplies out for any model.
KV_TYPES = ("f16", "q8_0", "q4_0")
KV_SHAPE = (512, 1408, 8, 2)  # n_embd, n_ff, n_head, n_head_kv: head_dim 64
KV_LAYERS = 8
KV_FILL = 768


@dataclass(frozen=True)
class KvReading:
    type_k: str
    ns_per_position: float  # nanoseconds per cached position x layer x query dimension
    empty_s: float  # seconds per token with an empty cache
    filled_s: float  # with KV_FILL positions cached
    threads: int
    seconds: float
    build: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def measure_kv(type_k: str, threads: int, workdir: Path | None = None) -> KvReading:
    """Time decode with an empty and a filled cache of this type (in a thread that ends)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-engine-bench") as pool:
        return pool.submit(_measure_kv, type_k, threads, workdir).result()


def _fastest_token(decoder, token: int) -> tuple[float, int]:
    best = math.inf
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(ROUND_TOKENS):
            decoder.decode([token])
            token += 1
        best = min(best, (time.perf_counter() - t0) / ROUND_TOKENS)
    return best, token


def _measure_kv(type_k: str, threads: int, workdir: Path | None) -> KvReading:
    import llama_cpp

    from tandem.runtime.engine.model import guard_engine_build
    from tandem.runtime.engine.native import NativeDecoder
    from tandem.runtime.engine.params import KV_TYPES as GGML_KV
    from tandem.runtime.synth import write_model

    started = time.perf_counter()
    kind = Kind("Q4_0", *KV_SHAPE, layers=KV_LAYERS)
    n_embd, _, n_head, _ = KV_SHAPE
    with tempfile.TemporaryDirectory(prefix="tandem-engine-bench-", dir=workdir) as tmp:
        path = write_model(Path(tmp) / "kv.gguf", kind.spec(), fill="zeros")
        guard_engine_build()
        llm = llama_cpp.Llama(str(path), n_ctx=KV_FILL + 128, n_batch=256, n_ubatch=256, n_threads=threads,
                              n_threads_batch=threads, n_gpu_layers=0, flash_attn=True, type_k=GGML_KV[type_k],
                              type_v=GGML_KV[type_k], use_mmap=False, verbose=False)
        try:
            decoder = NativeDecoder(llm)
            token = 1000
            decoder.decode(list(range(token, token + WARMUP_TOKENS)))
            token += WARMUP_TOKENS
            empty, token = _fastest_token(decoder, token)
            decoder.prefill(decoder.cached + list(range(token, token + KV_FILL)))
            token += KV_FILL
            filled, token = _fastest_token(decoder, token)
        finally:
            llm.close()
    positions = KV_FILL + ROUNDS * ROUND_TOKENS  # between the two rounds' mean fills
    ns = max(0.0, filled - empty) / (positions * KV_LAYERS * n_embd) * 1e9
    return KvReading(type_k=type_k, ns_per_position=round(ns, 4), empty_s=empty, filled_s=filled, threads=threads,
                     seconds=round(time.perf_counter() - started, 2), build=build_id())


def cached_kv_costs(data_dir: Path | None, machine: str, threads: int, remeasure: bool = False,
                    measure: bool = True) -> dict[str, KvReading]:
    """Every KV type's reading for this machine, llama.cpp build and thread count: from data_dir's
    cache, the missing ones measured now (about a second each) and kept there. measure=False:
    the cached readings only, none unless every type is cached."""
    from tandem.runtime.hardware.bandwidth import read_cache

    path = data_dir / CACHE_FILE if data_dir else None
    prefix = f"{machine}:{build_id()}:{threads}:kv:"
    cache = read_cache(path)
    known = {} if remeasure else _kept(cache, prefix, KvReading)
    if not measure and not all(t in known for t in KV_TYPES):
        return {}
    for type_k in KV_TYPES:
        if type_k not in known:
            known[type_k] = measure_kv(type_k, threads, workdir=data_dir)
            _keep(path, cache, prefix + type_k, known[type_k])
    return {t: known[t] for t in KV_TYPES}


def thread_suffix(threads: int, cores: int) -> str:
    """What a reading's key ends with in a profile when it was timed at other than every physical
    core (a plan made with Settings' thread count is predicted from timings at that count)."""
    return "" if threads == cores else f"/t{threads}"
