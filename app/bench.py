"""`tandem bench`: measured against predicted, on this machine.

Default: the planner's plan for a model, llama-cpp-python's defaults (`Llama(model_path)`: n_ctx
512, n_threads cpu_count // 2, no flash attention) and every feasible candidate of the sweep
(KV cache type x threads x GPU layers), each loaded for real: decode tokens/s predicted and
measured, memory predicted and reported by llama.cpp, the plan as a ratio of the sweep's best and
of the defaults, and the memory-bandwidth roofline. Measurements are recorded for the planner's
calibration, so a second run predicts from what the first measured.

`--paths`: the same model and settings through llama-cpp-python directly, Tandem's engine, and
Tandem's HTTP APIs (OpenAI's /v1 and Ollama's /api/chat, both streamed). The machine is noisy:
compare rows of one run, not runs.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from tandem.app.config import Settings
from tandem.runtime.hardware import energy

PROMPT = "Tell me a long story about a lighthouse keeper who finds a message in a bottle."
GIB = 1 << 30


def in_own_thread(fn, *args):
    """Run fn(*args) in a thread that ends with it: llama.cpp's OpenMP team then goes with it, and
    the next measurement does not meet a second live team (which makes libgomp stop spinning and
    costs about a third of decode speed)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def _measure(chunks) -> tuple[int, float | None]:
    """Count text chunks (one per token) and decode tokens/s from an iterator of text pieces."""
    n, t_first, t_last = 0, None, None
    for piece in chunks:
        if not piece:
            continue
        n += 1
        t_last = time.perf_counter()
        t_first = t_first or t_last
    tps = (n - 1) / (t_last - t_first) if n >= 2 and t_last > t_first else None
    return n, tps


# ---------------------------------------------------------------- planner bench
def run_bench(settings: Settings, model: Path | None = None, tokens: int = 128, runs: int = 3,
              paths: bool = False) -> int:
    from tandem.runtime import embedded

    model = Path(model) if model else (settings.model or embedded.default_model_path())
    if paths:
        return run_paths(settings, model, tokens, runs)
    from tandem.app.services.models import model_id_for
    from tandem.app.store import Store
    from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams
    from tandem.runtime.hardware import load_profile, probe
    from tandem.runtime.model_info import inspect_model
    from tandem.runtime.planner import Calibration, candidates, plan_model
    from tandem.runtime.hardware.enginebench import kv_kind, model_kinds
    from tandem.app.report import engine_text
    from tandem.runtime.planner.speed import calibration_key, cpu_rate
    from tandem.runtime.planner.dryrun import LogCapture
    from tandem.runtime.planner.search import gpu_sets, plan_from_candidate, predict_split

    info = inspect_model(model)
    hw = (load_profile(settings.hardware_profile) if settings.hardware_profile
          else probe(settings.data_dir, engine_kinds=model_kinds(info) if settings.engine_bench else None,
                     kv_kinds=[kv_kind(info)]))
    store = Store(settings.db_path)
    model_key = model_id_for(model)
    calibration = Calibration.from_records(store.measurements(calibration_key(hw)))
    plan = plan_model(info, hw, settings.n_ctx or None, calibration=calibration, model_key=model_key)
    sets, reason = gpu_sets(hw)
    cores = hw.cpu.physical_cores or 1
    def label(p) -> str:
        return f"kv {p.type_k}, ngl {p.n_gpu_layers}, {p.n_threads} thr"

    # The plan is one of the candidates: it is measured once, as the first row.
    rows = [(f"plan: {label(plan)}", plan)]
    for threads in sorted({1, max(1, cores // 2), cores}):
        for gset in sets or [None]:
            for c in candidates(info, hw, plan.n_ctx, threads=threads, gpu=gset):
                p = plan_from_candidate(info, hw, reason, c, threads)
                if c["ubatch"] == plan.n_ubatch and p.load_kwargs() != plan.load_kwargs():
                    rows.append((label(p), p))
    default_threads = max(1, (os.cpu_count() or 2) // 2)
    defaults = replace(plan, n_ctx=512, n_threads=default_threads, n_threads_batch=default_threads,
                       flash_attn=False, type_k="f16", type_v="f16", n_gpu_layers=0, gpu_index=None)
    rows.append(("library defaults", defaults))

    bw = hw.memory.read_bandwidth_gbps
    from tandem.runtime.planner.memory import output_weight_bytes

    per_token = sum(info.layer_bytes) + output_weight_bytes(info)
    roofline = bw * 1e9 / per_token if bw else None
    cal_cpu, cal_gpu = calibration.factor(model_key)
    print(f"model {model.name} ({info.weight_bytes / GIB:.2f} GiB), {hw.cpu.brand}, {cores} cores, read bandwidth "
          f"{bw} GB/s ({hw.memory.read_bandwidth_1t_gbps} with one thread); llama.cpp's CPU kernels "
          f"{engine_text(hw)}, this model's weights {cpu_rate(info, hw, cores) / 1e9:.1f} GB/s; "
          f"{tokens} tokens x {runs} runs per row, "
          "greedy, rows round-robin")
    print(f"plan: n_ctx {plan.n_ctx}, {plan.n_gpu_layers} GPU layers, KV {plan.type_k}, {plan.n_threads} threads, "
          f"ubatch {plan.n_ubatch}; calibration CPU x{cal_cpu:.3f}, GPU x{cal_gpu:.3f} from {calibration.samples} "
          "earlier measurements")

    # Rows run one at a time (idle llama.cpp thread pools of other loaded sessions would steal the
    # cores), round-robin over `runs` rounds so that the machine's drift hits every row alike.
    reported: list[dict] = [{} for _ in rows]
    measured: list[list[tuple[float, int]]] = [[] for _ in rows]
    joules: list[list[float]] = [[] for _ in rows]
    counters = energy.meter()
    print("energy: " + (", ".join(counters.sources) + " (whole devices: other programs count too)" if counters.available
                        else "not counted here (no readable RAPL package counter or NVML energy counter)"))
    sampling = SamplingParams(temperature=0.0, max_tokens=tokens)
    # the first model a process measures decodes 10-15% slower (page faults, caches, clocks): the
    # plan, the first row, would be understated; one whole unmeasured reply first
    with LogCapture():
        warm = ModelWorker.open(LoadParams(model, **plan.load_kwargs()))
    try:
        warm.complete([{"role": "user", "content": PROMPT}], sampling)
    finally:
        warm.close()
    for _ in range(runs):
        for i, (label, p) in enumerate(rows):
            with LogCapture() as log:
                session = ModelWorker.open(LoadParams(model, **p.load_kwargs()))
            reported[i] = log.report()
            try:
                session.complete([{"role": "user", "content": PROMPT}], SamplingParams(temperature=0, max_tokens=8))
                done = session.complete([{"role": "user", "content": PROMPT}], sampling)
            finally:
                session.close()
            if done.stats.decode_tps:
                measured[i].append((done.stats.decode_tps, done.stats.prompt_tokens + done.stats.completion_tokens // 2))
            if done.stats.joules_per_token is not None:
                joules[i].append(done.stats.joules_per_token)

    table = []
    jpt_rows = [statistics.median(j) if j else None for j in joules]
    for (label, p), rep, values in zip(rows, reported, measured):
        tps = statistics.median(v for v, _ in values) if values else None
        fill = round(statistics.median(f for _, f in values)) if values else 1
        raw, share = predict_split(info, hw, p, fill)
        weights = sum(m.weights for m in p.memory)
        llama_mem = weights + rep["kv_bytes"] + sum(rep["compute_bytes"].values()) + rep["output_bytes"]
        is_default = label == "library defaults"
        table.append((label, raw, calibration.apply(raw, share, model_key), tps, None if is_default else sum(m.total for m in p.memory), llama_mem))
        if tps and not is_default:
            store.add_measurement(machine_id=calibration_key(hw), model_id=model_key, n_ctx=p.n_ctx,
                                  n_gpu_layers=p.n_gpu_layers, n_threads=p.n_threads, type_k=p.type_k,
                                  completion_tokens=tokens, predicted_tps=raw, cpu_share=share, measured_tps=tps,
                                  source="bench")
    store.close()

    def pct(a, b):
        return f"{(a - b) / b:+.0%}" if a and b else "-"

    print(f"{'row':<26}{'predicted':>10}{'calibr.':>9}{'measured':>10}{'err':>6}{'err cal':>8}"
          f"{'pred MiB':>10}{'llama MiB':>10}{'mem err':>8}{'roofline':>9}" + (f"{'J/token':>9}" if any(j is not None for j in jpt_rows) else ""))
    for (label, raw, cal, tps, pmem, lmem), jpt in zip(table, jpt_rows):
        d = label == "library defaults"
        print(f"{label:<26}{'-' if d else f'{raw:.1f}':>10}{'-' if d else f'{cal:.1f}':>9}"
              f"{f'{tps:.1f}' if tps else '-':>10}{'-' if d else pct(raw, tps):>6}{'-' if d else pct(cal, tps):>8}"
              f"{f'{pmem / 2**20:.0f}' if pmem else '-':>10}{lmem / 2**20:>10.0f}"
              f"{f'{(pmem - lmem) / lmem:+.1%}' if pmem else '-':>8}{f'{tps / roofline:.0%}' if tps and roofline else '-':>9}"
              + (f"{f'{jpt:.3f}' if jpt is not None else '-':>9}" if any(j is not None for j in jpt_rows) else ""))
    plan_tps, default_tps = table[0][3], table[-1][3]
    best = max((r[3] for r in table[:-1] if r[3]), default=None)
    if plan_tps and best:
        print(f"plan / best measured candidate: {plan_tps / best:.2f}")
    if plan_tps and default_tps:
        print(f"plan / library defaults: {plan_tps / default_tps:.2f}")
    if roofline:
        print(f"roofline: {roofline:.0f} tokens/s ({bw} GB/s / {per_token / 2**20:.1f} MiB of weights read per token)")
    return 0


# ---------------------------------------------------------------- code paths
def _library(model: Path, settings: Settings, tokens: int, threads: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=settings.n_ctx or 4096, n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=0, flash_attn=True, verbose=False)

    return (lambda: _measure(library_pieces(llm, PROMPT, tokens))), llm.close


def library_pieces(llm, prompt: str, tokens: int):
    """The text pieces (one per token) of create_chat_completion's greedy stream: llama-cpp-python
    as a peer application calls it, the reference the benches compare with."""
    for chunk in llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], temperature=0.0,
                                            max_tokens=tokens, stream=True):
        yield chunk["choices"][0]["delta"].get("content")


def _engine(model: Path, settings: Settings, tokens: int, threads: int):
    from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams, Token

    session = ModelWorker.open(LoadParams(model, n_ctx=settings.n_ctx or 4096, n_threads=threads,
                                            n_threads_batch=threads, flash_attn=True))
    sampling = SamplingParams(temperature=0.0, max_tokens=tokens)

    def run():
        stream = session.submit([{"role": "user", "content": PROMPT}], sampling)
        return _measure(ev.text for ev in stream if isinstance(ev, Token))

    return run, session.close


def _ceiling(model: Path, settings: Settings, tokens: int, threads: int):
    """llama_decode and the native greedy sampler in a bare loop, nothing else: no text, no
    events. What any engine on llama.cpp could reach on this machine."""
    import llama_cpp

    from tandem.runtime.engine import SamplingParams
    from tandem.runtime.engine.native import NativeDecoder

    llm = llama_cpp.Llama(model_path=str(model), n_ctx=settings.n_ctx or 4096, n_threads=threads,
                          n_threads_batch=threads, n_gpu_layers=0, flash_attn=True, verbose=False)
    decoder = NativeDecoder(llm)
    prompt = llm.tokenize(PROMPT.encode())

    def pieces():
        decoder.reset()
        decoder.prefill(prompt)
        with decoder.sampler(SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)) as sampler:
            token = sampler.sample()
            for _ in range(tokens):
                yield "x"
                decoder.decode([token])
                token = sampler.sample()

    def close():
        decoder.close()
        llm.close()

    return (lambda: _measure(pieces())), close


def _server(model: Path, settings: Settings, threads: int, pieces_of, speculative: str = "off"):
    """A Tandem server on a free port serving `model`; pieces_of(client) yields a reply's text
    pieces through one of its APIs. speculative "off" as in the engine path (the API's cost alone);
    "auto": as the plan chooses."""
    import httpx

    from tandem.app.server import ServerThread

    data_dir = tempfile.TemporaryDirectory(prefix="tandem-bench-")
    server = ServerThread(settings.model_copy(update={
        "port": 0, "data_dir": Path(data_dir.name), "model": model, "n_ctx": settings.n_ctx or 4096,
        "n_threads": threads, "n_gpu_layers": 0, "speculative": speculative,
    })).start()
    client = httpx.Client(base_url=server.url, timeout=120)

    def close():
        client.close()
        server.stop()
        data_dir.cleanup()

    return (lambda: _measure(pieces_of(client))), close


def _http(model: Path, settings: Settings, tokens: int, threads: int):
    """Streaming /v1/chat/completions (server-sent events), as an OpenAI client reads it."""
    body = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": tokens, "stream": True}

    def pieces(client):
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    yield choices[0].get("delta", {}).get("content")

    return _server(model, settings, threads, pieces)


def _ollama(model: Path, settings: Settings, tokens: int, threads: int):
    """Streaming /api/chat (newline-delimited JSON), as the ollama client reads it."""
    from tandem.app.services.models import model_id_for

    body = {"model": model_id_for(model), "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "options": {"temperature": 0, "num_predict": tokens}}

    def pieces(client):
        with client.stream("POST", "/api/chat", json=body) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line:
                    yield json.loads(line).get("message", {}).get("content")

    return _server(model, settings, threads, pieces)


def run_paths(settings: Settings, model: Path, tokens: int, runs: int) -> int:
    from tandem.runtime.hardware import physical_cores

    threads = settings.n_threads or physical_cores()
    print(f"model {model.name}, n_ctx {settings.n_ctx or 4096}, {threads} threads, greedy, flash attention, "
          f"up to {tokens} tokens, {runs} runs per path (round-robin)")
    # One path loaded at a time (idle llama.cpp thread pools of the others would steal the cores),
    # round-robin over the runs so that the machine's drift hits every path alike. Each path runs
    # in a thread of its own that ends with it: a second live OpenMP team (say, the main thread's
    # after calling llama.cpp) makes libgomp stop spinning and costs a third of the decode speed.
    paths = (("library", _library), ("engine", _engine), ("http", _http), ("ollama", _ollama), ("ceiling", _ceiling))
    results: dict[str, list[float]] = {name: [] for name, _ in paths}
    counts: dict[str, int] = {}
    def one(factory) -> tuple[int, float | None]:
        run, close = factory(model, settings, tokens, threads)
        try:
            run()  # warm-up: page in the weights, fill caches
            return run()
        finally:
            close()

    for _ in range(runs):
        for name, factory in paths:
            n, tps = in_own_thread(one, factory)
            counts[name] = n
            if tps:
                results[name].append(tps)
    base = statistics.median(results["library"]) if results["library"] else None
    engine = statistics.median(results["engine"]) if results["engine"] else None
    print(f"{'path':<10}{'tokens':>8}{'median tok/s':>15}{'best tok/s':>13}{'x library':>11}{'x engine':>10}")
    for name, values in results.items():
        if not values:
            print(f"{name:<10}{counts.get(name, 0):>8}{'-':>15}")
            continue
        med = statistics.median(values)
        ratio = f"{med / base:.2f}" if base else "-"
        vs_engine = f"{med / engine:.2f}" if engine else "-"
        print(f"{name:<10}{counts[name]:>8}{med:>15.1f}{max(values):>13.1f}{ratio:>11}{vs_engine:>10}")
    print("http: /v1/chat/completions streamed; ollama: /api/chat streamed; engine: Tandem's engine in process")
    return 0
