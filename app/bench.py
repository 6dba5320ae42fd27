"""`tandem bench`: decode speed of the same model through three paths, in one run.

  library  llama-cpp-python's create_chat_completion(stream=True), called directly
  engine   Tandem's engine session (worker thread, stream of tokens)
  http     Tandem's server: POST /v1/chat/completions with stream=true, read by an HTTP client

Same model, context, threads and greedy sampling everywhere. Decode tokens/s counts the tokens
after the first one over the time from the first to the last; the machine is noisy, so compare
the paths within one run, not across runs.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from app.config import Settings

PROMPT = "Tell me a long story about a lighthouse keeper who finds a message in a bottle."


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


def library_path(model: Path, settings: Settings, tokens: int):
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(model), n_ctx=settings.n_ctx, n_threads=settings.n_threads,
        n_threads_batch=settings.n_threads, n_gpu_layers=settings.n_gpu_layers, verbose=False,
    )

    def run():
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}], temperature=0.0, max_tokens=tokens, stream=True
        )
        return _measure(c["choices"][0]["delta"].get("content") for c in out)

    return run, llm.close


def engine_path(model: Path, settings: Settings, tokens: int):
    from runtime.engine import EngineSession, LoadParams, SamplingParams, Token

    session = EngineSession.open(
        LoadParams(model, n_ctx=settings.n_ctx, n_threads=settings.n_threads,
                   n_threads_batch=settings.n_threads, n_gpu_layers=settings.n_gpu_layers)
    )
    sampling = SamplingParams(temperature=0.0, max_tokens=tokens)

    def run():
        stream = session.submit([{"role": "user", "content": PROMPT}], sampling)
        return _measure(ev.text for ev in stream if isinstance(ev, Token))

    return run, session.close


def http_path(model: Path, settings: Settings, tokens: int):
    import httpx

    from app.server import ServerThread

    data_dir = tempfile.TemporaryDirectory(prefix="tandem-bench-")
    server = ServerThread(settings.model_copy(update={"port": 0, "data_dir": Path(data_dir.name), "model": model})).start()
    client = httpx.Client(base_url=server.url, timeout=120)
    body = {"messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": tokens, "stream": True}

    def pieces():
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    yield choices[0].get("delta", {}).get("content")

    def close():
        client.close()
        server.stop()
        data_dir.cleanup()

    return (lambda: _measure(pieces())), close


PATHS = {"library": library_path, "engine": engine_path, "http": http_path}


def run_bench(settings: Settings, tokens: int = 256, runs: int = 3) -> int:
    from runtime import embedded

    model = settings.model or embedded.default_model_path()
    print(f"model {model.name}, n_ctx {settings.n_ctx}, {settings.n_threads} threads, greedy, "
          f"up to {tokens} tokens, {runs} runs per path (interleaved)")
    opened = {name: factory(model, settings, tokens) for name, factory in PATHS.items()}
    results: dict[str, list[float]] = {name: [] for name in PATHS}
    counts: dict[str, int] = {}
    try:
        for name, (run, _) in opened.items():
            run()  # warm-up: page in the weights, fill caches
        for _ in range(runs):
            for name, (run, _) in opened.items():
                n, tps = run()
                counts[name] = n
                if tps:
                    results[name].append(tps)
    finally:
        for _, close in opened.values():
            close()
    base = statistics.median(results["library"]) if results["library"] else None
    print(f"{'path':<10}{'tokens':>8}{'median tok/s':>15}{'best tok/s':>13}{'x library':>11}")
    for name, values in results.items():
        if not values:
            print(f"{name:<10}{counts.get(name, 0):>8}{'-':>15}")
            continue
        med = statistics.median(values)
        ratio = f"{med / base:.2f}" if base else "-"
        print(f"{name:<10}{counts[name]:>8}{med:>15.1f}{max(values):>13.1f}{ratio:>11}")
    return 0
