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

The slice's weights are random blocks whose f16 scales vary from block to block as a real
model's do (synth.SCALE_SPREAD_OCTAVES): ggml's x86 dot products look each scale up in a 256 KiB
table, and a slice of zeros, or of one repeated scale, always hits the same entry - a third faster
than a real model whose scales miss the cache (SmolLM2's own file: 11.1 ms a token at one thread
of an AMD EPYC; the same file with every scale set to one value 8.1 ms, a zero slice of its shape
7.5 ms, a slice with varying scales 10.9 ms). The file is loaded without mmap, so every layer is
its own memory.

In the slice of a model's main type the decode is also timed with a filled cache of each KV type
(see "the cost of attending over a filled cache" below), and where the build can offload, each
slice is timed on each GPU too (see "the same slice on a GPU" below).

Kept per machine, llama.cpp build, thread count, type and shape in the data folder beside the
numpy reading: a kind costs its seconds once, when the first model that holds it is loaded.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tandem.runtime.errors import RuntimeFailure

log = logging.getLogger(__name__)

CACHE_FILE = "engine-bench.json"
# Without a model to copy: a Llama-3.2-1B layer (n_embd 2048, GQA 32/8 heads, n_ff 8192).
STANDARD_SHAPE = (2048, 8192, 32, 8)
MAX_SLICE_BYTES = 1 << 30
MIN_LAYERS = 2
# A slice with fewer weight bytes stays in the CPU's caches: its decode times the caches, not the
# weights streaming from memory, and so little work is mostly noise (a toy model's slice of a few
# KiB timed 0.1 ms a token one run and a rate of 716 GB/s the next). Every real model is larger.
MIN_SLICE_BYTES = 16 << 20
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


def model_kinds(info) -> list["Kind"]:
    """The kinds that decide a model's CPU speed (a ModelInfo), the type holding most of its
    bytes first: the cost of its attention over a filled cache is timed in that one."""
    types = sorted(main_types(info.tensor_types), key=lambda t: -info.tensor_types[t])
    return [kind_for(t, info) for t in types]


def kv_kind(info) -> "Kind | None":
    """The kind a model's KV costs are timed in (model_kinds' first), None if it has none."""
    kinds = model_kinds(info)
    return kinds[0] if kinds else None


@dataclass(frozen=True)
class Kind:
    """What one timing stands for: a weight type in layers of one shape, `layers` of them."""

    quant: str
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    layers: int
    head_dim: int | None = None  # heads of another width than n_embd / n_head (Gemma, Qwen3)

    @property
    def key(self) -> str:
        heads = f"h{self.head_dim}" if self.head_dim else ""
        return f"{self.quant}@{self.n_embd}x{self.n_ff}x{self.n_head}x{self.n_head_kv}x{self.layers}{heads}"

    @property
    def heads_width(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def query_dim(self) -> int:
        """n_head x the heads' width: what a token's attention work scales with."""
        return self.n_head * self.heads_width

    @property
    def weight_bytes(self) -> int:
        """The weights a token reads in the slice: its layers and the output matrix."""
        from tandem.runtime.synth import layer_bytes, output_bytes

        spec = self.spec()
        return layer_bytes(spec) + output_bytes(spec)

    def spec(self):
        from tandem.runtime.synth import SynthSpec

        return SynthSpec(n_layer=self.layers, n_embd=self.n_embd, n_head=self.n_head, n_head_kv=self.n_head_kv,
                         n_ff=self.n_ff, n_ctx_train=256, quant=self.quant, name=f"tandem-engine-bench-{self.key}",
                         head_dim=self.head_dim)


def kind_for(quant: str, info=None) -> Kind:
    """The slice for a model's layers of one type (see _kind)."""
    if info is None:
        return _kind(quant, None)
    own_width = info.head_dim_k == info.head_dim_v and info.head_dim_k * info.n_head != info.n_embd
    return _kind(quant, (info.n_embd, info.n_ff, info.n_head, max(info.n_head_kv or (info.n_head,)) or info.n_head,
                         info.n_layer, info.n_expert, info.head_dim_k if own_width else None))


@lru_cache(maxsize=256)
def _kind(quant: str, shape: tuple | None) -> Kind:
    """The slice for a model's layers of one type (info: a ModelInfo, or None for the standard
    1B shape): its shape, heads' width included, where a slice of this type can take it (dense,
    dimensions a whole number of the type's blocks), else the standard one; as many layers as the
    model has, up to MAX_SLICE_BYTES."""
    from tandem.runtime.synth import SynthSpec, layer_bytes

    dims, n_layers, width = STANDARD_SHAPE, None, None
    if shape is not None and not shape[5]:  # mixtures of experts: the standard shape
        n_embd, n_ff, n_head, n_head_kv, n_layer, _, head_dim = shape
        candidate = (n_embd, n_ff or 4 * n_embd, n_head, n_head_kv)
        try:
            own = SynthSpec(n_layer=1, n_embd=candidate[0], n_ff=candidate[1], n_head=candidate[2],
                            n_head_kv=candidate[3], quant=quant, head_dim=head_dim)
            # a layer no slice of MIN_LAYERS can hold within MAX_SLICE_BYTES each (a file whose
            # sizes no model has) is not written: the standard shape stands in
            if layer_bytes(own) <= MAX_SLICE_BYTES:
                dims, n_layers, width = candidate, n_layer, head_dim
        except ValueError:
            pass
    one = layer_bytes(Kind(quant, *dims, layers=1, head_dim=width).spec())
    layers = max(MIN_LAYERS, min(n_layers or 10**6, MAX_SLICE_BYTES // max(1, one)))
    return Kind(quant, *dims, layers=layers, head_dim=width)


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
    # KV cache type -> ns a decoded token spends per cached position and layer of this slice (see
    # "the cost of attending over a filled cache" below); None when not timed with it
    kv_ns: dict | None = None

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


def measure(kind: Kind, threads: int, workdir: Path | None = None, kv: bool = False) -> EngineReading:
    """Write the slice, decode WARMUP_TOKENS then ROUNDS x ROUND_TOKENS one at a time with
    `threads` threads, and derive the rate from the fastest round; kv: then time each KV cache
    type filled in the same slice (the reading's kv_ns).

    Runs in a thread of its own that ends with it: llama.cpp's OpenMP team lives as long as the
    thread that computed, and a second live team makes every later model's decode wait passively
    (SmolLM2 at 2 threads: 34 tokens/s after a benchmark left its team in the caller's thread,
    120 otherwise)."""
    size = kind.weight_bytes
    if size < MIN_SLICE_BYTES:
        raise ValueError(f"a slice of {size / 1024:.0f} KiB of weights stays in the CPU's caches: "
                         "too small to time the weights streaming from memory")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-engine-bench") as pool:
        return pool.submit(_measure, kind, threads, workdir, kv).result()


def _measure(kind: Kind, threads: int, workdir: Path | None, kv: bool = False) -> EngineReading:
    import llama_cpp

    from tandem.runtime.engine.model import guard_engine_build
    from tandem.runtime.engine.native import NativeDecoder
    from tandem.runtime.synth import layer_bytes, output_bytes, write_model

    started = time.perf_counter()
    spec = kind.spec()
    with tempfile.TemporaryDirectory(prefix="tandem-engine-bench-", dir=workdir) as tmp:
        path = write_model(Path(tmp) / "slice.gguf", spec, fill="random")
        guard_engine_build()
        llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=16, n_ubatch=16, n_threads=threads,
                              n_threads_batch=threads, n_gpu_layers=0, flash_attn=True, use_mmap=False,
                              verbose=False)
        # read into llama.cpp's own memory: gone from the disk before the timing, so that the
        # kernel drops its pages rather than writing them out while tokens are timed
        path.unlink()
        try:
            per_token = _fastest(NativeDecoder(llm))
            one_layer = layer_bytes(spec) // kind.layers
            rate = rate_from(per_token, kind.layers, one_layer, output_bytes(spec))  # too fast: nothing more
            kv_ns = _kv_costs(llm, kind, threads, per_token, Path(tmp)) if kv else None
        finally:
            llm.close()
    return EngineReading(key=kind.key, quant=kind.quant, rate_gbps=round(rate, 2), seconds_per_token=per_token,
                         layers=kind.layers, slice_bytes=kind.weight_bytes,
                         threads=threads, seconds=round(time.perf_counter() - started, 2), build=build_id(),
                         kv_ns=kv_ns)


def _fastest(decoder) -> float:
    """Seconds per token of the fastest of ROUNDS rounds of ROUND_TOKENS decoded one at a time,
    after WARMUP_TOKENS: a shared machine's noise only slows a round."""
    token = 1000
    for _ in range(WARMUP_TOKENS):
        decoder.decode([token])
        token += 1
    per_token = math.inf
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(ROUND_TOKENS):
            decoder.decode([token])
            token += 1
        per_token = min(per_token, (time.perf_counter() - t0) / ROUND_TOKENS)
    return per_token


def cached_rates(data_dir: Path | None, machine: str, threads: int, kinds: list[Kind],
                 remeasure: bool = False, kv_kinds: list[Kind] = (),
                 failed: list | None = None) -> dict[str, EngineReading]:
    """The readings of these kinds for this machine, llama.cpp build and thread count (by key):
    from data_dir's cache, the missing ones measured now and kept there; those of kv_kinds with
    their KV costs (one kept without them is measured again). With remeasure, every kind the
    cache holds for this machine is measured again too (with its KV costs if it had them).
    failed: where a kind that could not be timed is said (the others are still timed); without
    it, the first failure is raised."""
    return _cached(data_dir, f"{machine}:{build_id()}:{threads}:{WEIGHTS}:", EngineReading, kinds, kv_kinds,
                   remeasure, lambda kind, kv: measure(kind, threads, workdir=data_dir, kv=kv), failed)


def _cached(data_dir: Path | None, prefix: str, reading: type, kinds, kv_kinds, remeasure: bool, timing,
            failed: list | None = None) -> dict:
    """cached_rates' and cached_gpu_rates' keeping: the readings kept under `prefix`, and those of
    the kinds wanted that are not (or all, with remeasure) timed now by timing(kind, with_kv)."""
    from tandem.runtime.hardware.bandwidth import read_cache

    path = data_dir / CACHE_FILE if data_dir else None
    cache = read_cache(path)
    known = _kept(cache, prefix, reading)
    wanted = {k.key: k for k in (*kinds, *kv_kinds)}
    with_kv = {k.key for k in kv_kinds}
    if remeasure:
        for key, kept in known.items():
            wanted.setdefault(key, parse_key(key))
            if kept.kv_ns is not None:
                with_kv.add(key)
    for key, kind in wanted.items():
        if kind is None or not measurable(kind.quant):
            continue
        kept = known.get(key)
        if kept is not None and not remeasure and (kept.kv_ns is not None or key not in with_kv):
            continue
        try:
            known[key] = timing(kind, key in with_kv)
        except Exception as err:  # noqa: BLE001 - llama.cpp could not run this slice: the others still
            if failed is None:
                raise
            failed.append(f"{key}: {type(err).__name__}: {err}")
            continue
        _keep(path, cache, prefix + key, known[key])
    return known


def _kept(cache: dict, prefix: str, kind: type) -> dict:
    """The readings of one kind kept under `prefix` (by the rest of their key); an entry another
    version wrote, or a damaged one (a rate or cost that is no positive number), is left out
    (measured again)."""
    known = {}
    for key, entry in cache.items():
        if key.startswith(prefix) and isinstance(entry, dict):
            try:
                reading = kind(**entry)
            except TypeError:
                continue
            if _sound(reading):
                known[key[len(prefix):]] = reading
    return known


def _sound(reading) -> bool:
    """Whether a kept reading's figures are numbers the speed model can use."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    kv, handoff = reading.kv_ns, getattr(reading, "handoff_s", None)  # handoff_s: a GPU reading's
    return (number(reading.rate_gbps) and reading.rate_gbps > 0 and (handoff is None or number(handoff))
            and (kv is None or (isinstance(kv, dict) and all(isinstance(t, str) and number(v) for t, v in kv.items()))))


def _keep(path: Path | None, cache: dict, key: str, reading) -> None:
    from tandem.runtime.hardware.bandwidth import write_cache

    if path is not None:
        cache[key] = reading.to_dict()
        write_cache(path, cache)


def parse_key(key: str) -> Kind | None:
    """The Kind a key was made from; None for a key this version did not write."""
    try:
        quant, dims = key.split("@")
        dims, _, width = dims.partition("h")
        n_embd, n_ff, n_head, n_head_kv, layers = (int(v) for v in dims.split("x"))
        head_dim = int(width) if width else None
    except ValueError:
        return None
    return Kind(quant, n_embd, n_ff, n_head, n_head_kv, layers, head_dim)


# --- the cost of attending over a filled cache, per KV cache type
#
# Decoding with a filled context adds, per token, attention over every cached position in every
# layer, at a price that depends on the cache's type (llama.cpp's CPU flash attention converts an
# f16 cache element by element: on an AVX-512 Xeon, SmolLM2 at 1,100 cached tokens decodes at 55
# tokens/s with an f16 cache and 93 with q8_0) and on the layers around it: where the weights
# stream from memory much of that arithmetic costs nothing. In a Llama-3.2-1B shape on that Xeon
# (2 threads, 1,024 cached tokens) a q8_0 cache added nothing to a token's time and an f16 cache
# 1.3 us per cached position and layer; the same 16 layers with a token-sized feed-forward took
# 0.5 and 1.7 us, and a small fixed slice scaled by query dimension (how this was timed before)
# said 0.5 and 1.4. So it is timed in the slice the weights were timed in - the model's own
# layers, up to 1 GiB - with the cache filled: a cheap model with the same cache shape (as many
# layers, the key/value heads only, a token-sized feed-forward) evaluates KV_FILL tokens, its
# cache is saved and loaded into a context of the slice (its random weights give the cache real
# values: a quantized cache's block scales, like the weights', cost more when they vary), and
# decode is timed in rounds that alternate between that cache and an empty one. Once
# per machine, build and kind, with the weights.
KV_TYPES = ("f16", "q8_0", "q4_0")
KV_FILL = 768
KV_FF = 256  # the cheap model's feed-forward width: it only fills the cache
KV_ROUNDS, KV_MAX_ROUNDS, KV_ROUND_TOKENS = 2, 8, 4
KV_SECONDS = 0.6  # what the rounds of one type may take, at least KV_ROUNDS of them
WEIGHTS = "weights2"  # the cache's entries since the KV costs are timed with the weights


def _kv_costs(llm, kind: Kind, threads: int, per_token: float, tmp: Path) -> dict[str, float]:
    """ns per cached position and layer of the loaded slice `llm` (which decodes a token in about
    `per_token` seconds), per KV type llama.cpp can make for its heads (a quantized cache needs
    whole 32-value blocks); empty where no cheap model can take the cache's shape or llama.cpp
    failed (said in the log: the KV bytes read stand in)."""
    from tandem.runtime.synth import SynthSpec, write_model

    head_dim = kind.heads_width
    try:
        spec = SynthSpec(n_layer=kind.layers, n_embd=kind.n_head_kv * head_dim, n_head=kind.n_head_kv,
                         n_head_kv=kind.n_head_kv, n_ff=KV_FF, n_ctx_train=KV_FILL + 256, quant="F16",
                         name="tandem-kv-fill")
    except ValueError:
        return {}
    cheap = write_model(tmp / "fill.gguf", spec, fill="random")  # a cache of real values
    # rounds: as many as fit KV_SECONDS a type, at least KV_ROUNDS (a small model's tokens are
    # quick, and a shared machine's noise is larger against them)
    per_round = 2 * (1 + KV_ROUND_TOKENS) * per_token * 1.5
    rounds = max(KV_ROUNDS, min(KV_MAX_ROUNDS, int(KV_SECONDS / max(per_round, 1e-6))))
    states, out = {}, {}
    for type_k in kv_types(head_dim, head_dim):  # every cache first, then the file goes (as the slice's)
        try:
            states[type_k] = _filled_state(cheap, type_k, threads)
        except (RuntimeError, ValueError, RuntimeFailure) as err:
            log.warning("the %s cache could not be filled for %s: %s", type_k, kind.key, err)
    cheap.unlink()
    for type_k, state in states.items():
        try:
            empty, filled = _filled_decode(llm, type_k, threads, state, rounds)
        except (RuntimeError, ValueError, RuntimeFailure) as err:
            log.warning("the %s cache could not be timed in %s: %s", type_k, kind.key, err)
            continue
        out[type_k] = round(max(0.0, filled - empty) / (KV_FILL * kind.layers) * 1e9, 1)
    return out


def kv_types(head_dim_k: int, head_dim_v: int) -> tuple[str, ...]:
    """The cache types llama.cpp can make for heads of these sizes: a quantized cache needs whole
    blocks of 32 values (it fails to create the context otherwise)."""
    return KV_TYPES if not head_dim_k % 32 and not head_dim_v % 32 else KV_TYPES[:1]


def _filled_state(path: Path, type_k: str, threads: int) -> bytes:
    """The saved cache of KV_FILL tokens evaluated by the model at `path`."""
    import llama_cpp

    from tandem.runtime.engine.native import NativeDecoder
    from tandem.runtime.engine.params import KV_TYPES as GGML_KV

    llm = llama_cpp.Llama(str(path), n_ctx=KV_FILL + 64, n_batch=256, n_ubatch=256, n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=0, flash_attn=True, type_k=GGML_KV[type_k],
                          type_v=GGML_KV[type_k], use_mmap=False, verbose=False)
    try:
        decoder = NativeDecoder(llm)
        decoder.prefill(list(range(1000, 1000 + KV_FILL)))
        return bytes(decoder.state())
    finally:
        llm.close()


def _filled_decode(llm, type_k: str, threads: int, state: bytes, rounds: int) -> tuple[float, float]:
    """(empty, filled): seconds per token of the loaded model `llm` in a context of its own with a
    cache of this type, empty and holding `state`; rounds alternate between the two (a shared
    machine's drift falls on both), the fastest of each."""
    import ctypes

    import llama_cpp

    from tandem.runtime.engine.params import KV_TYPES as GGML_KV

    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_ctx = KV_FILL + 64
    params.n_batch = params.n_ubatch = 64
    params.n_threads = params.n_threads_batch = threads
    params.type_k = params.type_v = GGML_KV[type_k]
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not make a context with a {type_k} cache")
    try:
        memory = llama_cpp.llama_get_memory(ctx)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        token = (llama_cpp.llama_token * 1)(2000)

        def step():
            token[0] += 1
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(token, 1))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} with a {type_k} cache")

        best = {False: math.inf, True: math.inf}
        for _ in range(rounds):
            for filled in (False, True):
                llama_cpp.llama_memory_clear(memory, True)
                if filled and llama_cpp.llama_state_seq_set_data(ctx, buf, len(state), 0) != len(state):
                    raise RuntimeError(f"llama.cpp refused the filled {type_k} cache")
                step()  # unmeasured: the first token after the cache changed
                t0 = time.perf_counter()
                for _ in range(KV_ROUND_TOKENS):
                    step()
                best[filled] = min(best[filled], (time.perf_counter() - t0) / KV_ROUND_TOKENS)
        return best[False], best[True]
    finally:
        llama_cpp.llama_free(ctx)


# --- the same slice on a GPU, and the hand-off between the CPU and the GPU
#
# Where llama.cpp can offload to a GPU, the speed model's GPU term is timed the same way rather
# than taken from a table of cards' bandwidths: the slice of each of a model's kinds is loaded
# wholly on one GPU (its layers and the output), and decoded as above. On the H200 the table's
# bandwidth x a fitted efficiency put full offloads 15-31% fast on shapes it was not fitted on.
# The slice is then loaded again with its first layer on the CPU: a token's activations then
# cross from a CPU layer to the GPU's and the two backends wait on each other, and what that adds
# beyond the layer's own move (its CPU time at the rate timed here, less its GPU time) is the
# hand-off's cost. Once per machine, build, GPU and kind, after the CPU's timing of the same kind.
GPU_HEADROOM = 512 << 20  # VRAM left free beside a slice: llama.cpp's buffers and other programs


@dataclass(frozen=True)
class GpuReading:
    """What one slice timed on a GPU measured."""

    key: str
    quant: str
    gpu: int  # the GPU's index, as main_gpu takes it
    rate_gbps: float  # GB/s of this type's weights the GPU's kernels stream, as the speed model counts
    seconds_per_token: float  # the slice wholly on the GPU
    split_seconds_per_token: float  # its first layer on the CPU
    handoff_s: float | None  # what the crossings added; None where the CPU's rate was not timed
    layers: int
    slice_bytes: int
    seconds: float
    build: str
    kv_ns: dict | None = None  # as EngineReading's, the cache on the GPU; None when not timed with it

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def gpu_rate_from(seconds_per_token: float, layers: int, layer_bytes: int, output_bytes: int) -> float:
    """The GB/s that makes the speed model predict `seconds_per_token` for this slice wholly on a
    GPU (each of its layers and the output a GPU_LAYER_S of launches)."""
    from tandem.runtime.planner.speed import BASE_S, GPU_LAYER_S

    streaming = seconds_per_token - (layers + 1) * GPU_LAYER_S - BASE_S
    if streaming <= 0:
        raise ValueError(f"a token took {seconds_per_token * 1e3:.3f} ms on the GPU: less than its kernel launches")
    return (layers * layer_bytes + output_bytes) / streaming / 1e9


def handoff_from(split_s: float, full_s: float, one_layer_bytes: int, gpu_gbps: float, cpu_gbps: float) -> float:
    """Seconds the CPU-GPU crossings add to a token: the decode with the first layer on the CPU
    (split_s) less the decode wholly on the GPU (full_s) with that layer's GPU time taken off and
    its CPU time put on, as the speed model prices both; never below zero."""
    from tandem.runtime.planner.speed import CPU_LAYER_S, GPU_LAYER_S

    moved = (full_s - one_layer_bytes / (gpu_gbps * 1e9) - GPU_LAYER_S
             + one_layer_bytes / (cpu_gbps * 1e9) + CPU_LAYER_S)
    return max(0.0, split_s - moved)


def gpu_backend() -> bool:
    """Whether this llama.cpp build can put layers on a GPU of this machine (a GPU backend that
    finds a device; the RPC backend alone does not count)."""
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        return False
    from tandem.runtime.pool.rpc import local_devices

    try:
        devices = local_devices()
    except Exception:  # noqa: BLE001 - ggml's devices unlisted: llama.cpp's word, unless RPC alone says it
        return not llama_cpp.llama_supports_rpc()
    return any(d["type"] in ("gpu", "igpu") for d in devices)


def measure_gpu(kind: Kind, gpu, threads: int, cpu_gbps: float | None, workdir: Path | None = None,
                kv: bool = False) -> GpuReading:
    """Time the slice of `kind` on `gpu` (a GpuInfo): wholly on it, then with its first layer on
    the CPU (`threads` threads; cpu_gbps: the CPU's rate timed for this kind, for the hand-off);
    kv: wholly on it, also with a filled cache of each KV type there (the reading's kv_ns). In a
    thread of its own, as measure()."""
    if kind.weight_bytes < MIN_SLICE_BYTES:
        raise ValueError(f"a slice of {kind.weight_bytes / 1024:.0f} KiB of weights stays in the GPU's caches: "
                         "too small to time the weights streaming from memory")
    if not gpu_backend():
        raise ValueError("this llama.cpp build has no GPU backend that finds a GPU here: nothing to time on it")
    free = gpu.memory_free_bytes
    if free is not None and kind.weight_bytes + GPU_HEADROOM > free:
        raise ValueError(f"the slice needs {(kind.weight_bytes + GPU_HEADROOM) / 2**30:.1f} GiB of {gpu.name}'s "
                         f"memory and {free / 2**30:.1f} GiB is free")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tandem-engine-bench") as pool:
        return pool.submit(_measure_gpu, kind, gpu.index, threads, cpu_gbps, workdir, kv).result()


def _measure_gpu(kind: Kind, index: int, threads: int, cpu_gbps: float | None, workdir: Path | None,
                 kv: bool) -> GpuReading:
    import llama_cpp

    from tandem.runtime.engine.model import guard_engine_build
    from tandem.runtime.engine.native import NativeDecoder
    from tandem.runtime.synth import layer_bytes, output_bytes, write_model

    started = time.perf_counter()
    spec = kind.spec()
    timed, kv_ns = {}, None
    with tempfile.TemporaryDirectory(prefix="tandem-engine-bench-", dir=workdir) as tmp:
        path = write_model(Path(tmp) / "slice.gguf", spec, fill="random")
        guard_engine_build()
        # n_gpu_layers counts the output first: layers + 1 is all of it, layers leaves the first on the CPU
        for on_gpu in (kind.layers + 1, kind.layers):
            llm = llama_cpp.Llama(str(path), n_ctx=64, n_batch=16, n_ubatch=16, n_threads=threads,
                                  n_threads_batch=threads, n_gpu_layers=on_gpu, main_gpu=index,
                                  split_mode=llama_cpp.LLAMA_SPLIT_MODE_NONE, flash_attn=True, use_mmap=False,
                                  verbose=False)
            try:
                timed[on_gpu] = _fastest(NativeDecoder(llm))
                if kv and on_gpu > kind.layers:  # the cache on the GPU too (offload_kqv)
                    kv_ns = _kv_costs(llm, kind, threads, timed[on_gpu], Path(tmp))
            finally:
                llm.close()
    one_layer = layer_bytes(spec) // kind.layers
    full, split = timed[kind.layers + 1], timed[kind.layers]
    rate = gpu_rate_from(full, kind.layers, one_layer, output_bytes(spec))
    handoff = handoff_from(split, full, one_layer, rate, cpu_gbps) if cpu_gbps else None
    return GpuReading(key=kind.key, quant=kind.quant, gpu=index, rate_gbps=round(rate, 1), seconds_per_token=full,
                      split_seconds_per_token=split, handoff_s=handoff, layers=kind.layers,
                      slice_bytes=kind.weight_bytes, seconds=round(time.perf_counter() - started, 2), build=build_id(),
                      kv_ns=kv_ns)


def cached_gpu_rates(data_dir: Path | None, machine: str, gpu, threads: int, kinds: list[Kind],
                     cpu_rates: dict[str, float], remeasure: bool = False,
                     kv_kinds: list[Kind] = (), failed: list | None = None) -> dict[str, GpuReading]:
    """The GPU readings of these kinds on `gpu` (a GpuInfo) for this machine and llama.cpp build
    (by key): from data_dir's cache, the missing ones measured now and kept there (cpu_rates: the
    CPU's GB/s by kind key, for the hand-off; those of kv_kinds with their KV costs, as
    cached_rates; failed as there). With remeasure, those kept are measured again."""
    return _cached(data_dir, f"{machine}:{build_id()}:gpu{gpu.index}:{gpu.name}:{threads}:", GpuReading, kinds,
                   kv_kinds, remeasure,
                   lambda kind, kv: measure_gpu(kind, gpu, threads, cpu_rates.get(kind.key), workdir=data_dir, kv=kv),
                   failed)


def cores_of(profile) -> int:
    """The thread count timings are made at unless told (a plan's default: every physical core)."""
    return profile.cpu.physical_cores or 1


def thread_suffix(threads: int, cores: int) -> str:
    """What a reading's key ends with in a profile when it was timed at other than every physical
    core (a plan made with Settings' thread count is predicted from timings at that count)."""
    return "" if threads == cores else f"/t{threads}"


def split_suffix(key: str) -> tuple[str, str]:
    """A profile's reading key and its thread_suffix: ("Q4_1@...x30", "/t1"), or ("...", "")."""
    base, mark, count = key.rpartition("/t")
    return (base, mark + count) if mark else (key, "")
