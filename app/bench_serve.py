"""`tandem bench --serve`: the serving core measured through a real server, as people use it.

1. Stop latency, from pressing Stop (POST /stop) to the `done` event: during a ~2,000-token
   prompt, while waiting behind another reply, and while decoding.
2. Abandoned work: 20 /v1 requests whose clients give up after 2 s, then the next request's time
   to first token against the same request's time alone (its own prompt evaluation).
3. 16 concurrent streaming clients: completed or 429, 5xx count, replies equal to the same
   request's reply alone (never interleaved), p50 / p99 time to first token.
4. Two synthetic models alternating under a RAM budget that holds one: the process's peak RSS
   above its baseline against the larger model's planned memory.
Prints a table; never fails on a timing. The machine and the command go with any quoted figure.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tandem.app.api.sse import parse_sse
from tandem.app.config import Settings

COUNT = "Count from 1 to 1000, one number per line."


def essay(words: int, salt: str = "") -> str:
    return f"Summarise this{salt}: " + " ".join(f"word{i % 97}" for i in range(words))


def _sse(response):
    return parse_sse(response.iter_lines())


def _conversation(c: httpx.Client) -> str:
    return c.post("/api/conversations", json={}).json()["id"]


def stop_latency(c: httpx.Client, where: str) -> float:
    """Seconds from POST /stop to the done event, for a reply stopped at `where`."""
    busy = None
    if where == "queued":  # another conversation's long reply takes the model first
        busy = _conversation(c)
        started = threading.Event()

        def long_reply():
            with httpx.Client(base_url=str(c.base_url), timeout=300) as c2:
                with c2.stream("POST", f"/api/conversations/{busy}/messages",
                               json={"content": COUNT, "max_tokens": 600}) as r:
                    for event, _ in _sse(r):
                        if event == "token":
                            started.set()

        t = threading.Thread(target=long_reply, daemon=True)
        t.start()
        started.wait(120)
    cid = _conversation(c)
    content = essay(680, cid) if where == "prefill" else COUNT
    pressed = None
    tokens = 0
    with c.stream("POST", f"/api/conversations/{cid}/messages", json={"content": content, "max_tokens": 600}) as r:
        for event, data in _sse(r):
            if pressed is None and ((where == "prefill" and event == "start") or
                                    (where == "queued" and event == "queued") or
                                    (where == "decode" and event == "token" and (tokens := tokens + 1) >= 20)):
                if where == "prefill":
                    time.sleep(1.0)  # well inside the prompt (about 2,000 tokens)
                pressed = time.perf_counter()
                c.post(f"/api/conversations/{cid}/stop")
            if event in ("done", "error"):
                done = time.perf_counter()
                break
    if busy is not None:
        c.post(f"/api/conversations/{busy}/stop")
        t.join(60)
    return done - pressed


def _ttft(base: str, content: str, max_tokens: int = 8) -> tuple[int, float | None, float | None]:
    """(status, seconds to the first token, seconds the request waited for the model)."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as c:
        with c.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "stream": True}) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, None, None
            first = queued = None
            for _, data in _sse(r):
                if data == "[DONE]":
                    continue
                if first is None and data.get("choices") and data["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
                if "tandem" in data:
                    queued = data["tandem"]["queue_s"]
            return 200, first, queued


def abandoned(base: str) -> dict:
    _, alone, _ = _ttft(base, essay(300, " alone"))
    codes = []

    def give_up(i: int):
        try:
            with httpx.Client(base_url=base, timeout=httpx.Timeout(600, read=2.0)) as c:
                r = c.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": essay(400, f" #{i}")}], "max_tokens": 500})
                codes.append(r.status_code)
        except httpx.ReadTimeout:
            codes.append("gave up")

    threads = [threading.Thread(target=give_up, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, after, waited = _ttft(base, essay(300, " after"))
    return {"alone_ttft_s": alone, "after_ttft_s": after, "after_queue_s": waited,
            "outcomes": {str(k): codes.count(k) for k in set(codes)}}


def concurrent(base: str, clients: int = 16) -> dict:
    questions = [f"In one sentence, what is {w}?" for w in
                 ("rain", "a river", "a lighthouse", "bread", "a violin", "snow", "a bridge", "copper",
                  "a library", "the moon", "a volcano", "tea", "a compass", "glass", "a forest", "salt")][:clients]
    reference = {}
    with httpx.Client(base_url=base, timeout=300) as c:
        for q in questions:
            reference[q] = c.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": q}], "max_tokens": 48}).json()["choices"][0]["message"]["content"]
    results = {}

    def client(q: str):
        t0 = time.perf_counter()
        with httpx.Client(base_url=base, timeout=600) as c:
            with c.stream("POST", "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": q}], "max_tokens": 48, "stream": True}) as r:
                if r.status_code != 200:
                    r.read()
                    results[q] = (r.status_code, None, None)
                    return
                text, first = [], None
                for event, data in _sse(r):
                    if data == "[DONE]" or "choices" not in data or not data["choices"]:
                        continue
                    piece = data["choices"][0]["delta"].get("content")
                    if piece:
                        first = first or time.perf_counter() - t0
                        text.append(piece)
                results[q] = (200, first, "".join(text))

    threads = [threading.Thread(target=client, args=(q,)) for q in questions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results.values() if r[0] == 200]
    ttfts = sorted(r[1] for r in ok if r[1] is not None)
    return {
        "completed": len(ok), "429": sum(r[0] == 429 for r in results.values()),
        "5xx": sum(r[0] >= 500 for r in results.values()),
        "equal_to_alone": sum(results[q][0] == 200 and results[q][2] == reference[q] for q in questions),
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p99_s": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))] if ttfts else None,
    }


def alternating(settings: Settings) -> dict:
    """Two synthetic models (1B and 3B shapes, Q4_1, zero-filled) under a budget that holds only one.
    Q4_1, as the built-in model: llama.cpp repacks Q4_0 weights on many CPUs into a second copy,
    which would measure the repacking rather than the scheduler."""
    import psutil

    from tandem.app.services import Services
    from tandem.runtime.engine import SamplingParams
    from tandem.runtime.synth import preset, write_model

    folder = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    paths = {name: write_model(folder / f"{name}.gguf", preset(name, quant="Q4_1"), fill="zeros")
             for name in ("1b", "3b")}
    services = Services.open(settings)
    try:
        models = services.models
        for name, path in paths.items():
            services.store.upsert_model({"id": f"synth-{name}", "name": path.name, "path": str(path), "source": "local",
                                         "size_bytes": path.stat().st_size, "is_default": 0})
        models.scheduler.unload(models.resolve(None)["id"])
        cpu: dict[str, int] = {}
        with models.acquire("synth-1b") as small:  # the plans they load with, and what each needs
            cpu_small = next(m for m in small.value.plan.memory if m.device == "CPU")
        models.scheduler.unload("synth-1b")
        with models.acquire("synth-3b") as big:
            cpu_big = next(m for m in big.value.plan.memory if m.device == "CPU")
        models.scheduler.unload("synth-3b")
        cpu = {"1b": cpu_small.total, "3b": cpu_big.total}
        larger = max(cpu.values())
        # the larger fits with its margin, both together never do
        budget = max(m.total + m.margin for m in (cpu_small, cpu_big)) + min(cpu.values()) // 2
        models.scheduler.budget = {"CPU": budget}
        proc = psutil.Process()
        baseline = proc.memory_info().rss
        peak, stop = [baseline], threading.Event()
        both = []  # moments when both models were loaded

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                if sum(e["state"] != "loading" for e in models.scheduler.loaded()) > 1:
                    both.append(time.perf_counter())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        loads = 0
        for i in range(6):
            name = ("1b", "3b")[i % 2]
            with models.acquire(f"synth-{name}") as lease:
                loads += 1
                lease.worker.complete([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0, max_tokens=2))
                peak[0] = max(peak[0], proc.memory_info().rss)
            loaded = [e["key"] for e in models.scheduler.loaded()]
            assert len(loaded) == 1, loaded
        stop.set()
        sampler.join()
        return {"plan_cpu_mib": {k: round(v / 2**20) for k, v in cpu.items()},
                "budget_mib": round(budget / 2**20), "peak_above_baseline_mib": round((peak[0] - baseline) / 2**20),
                "larger_plan_mib": round(larger / 2**20), "loads": loads, "both_loaded_samples": len(both)}
    finally:
        services.close()


def run_serve_bench(settings: Settings) -> int:
    from tandem.app.server import ServerThread

    settings = settings.model_copy(update={"port": 0, "temperature": 0.0,
                                           "data_dir": Path(tempfile.mkdtemp(prefix="tandem-bench-"))})
    print("Serving bench (a real server on a free port, the built-in model unless --model)\n")
    with ServerThread(settings) as srv, httpx.Client(base_url=srv.url, timeout=600) as c:
        _ttft(srv.url, "Warm up: say hello.", 16)  # the first reply in a process decodes slower
        print("Stop latency, press to done (s), 3 runs each:")
        for where in ("prefill", "queued", "decode"):
            runs = [stop_latency(c, where) for _ in range(3)]
            print(f"  {where:8s} median {statistics.median(runs):.3f}  max {max(runs):.3f}")
        a = abandoned(srv.url)
        print("\nAfter 20 requests abandoned at 2 s:")
        print(f"  next request's first token {a['after_ttft_s']:.3f} s; the same request alone {a['alone_ttft_s']:.3f} s"
              f" (difference {a['after_ttft_s'] - a['alone_ttft_s']:+.3f} s); it waited {a['after_queue_s']:.3f} s for the"
              f" model; abandoned: {a['outcomes']}")
        k = concurrent(srv.url)
        print("\n16 concurrent streaming clients:")
        print(f"  completed {k['completed']}, 429 {k['429']}, 5xx {k['5xx']}, replies equal to the request alone "
              f"{k['equal_to_alone']}/{k['completed']}; first token p50 {k['ttft_p50_s']:.3f} s, p99 {k['ttft_p99_s']:.3f} s")
    m = alternating(settings.model_copy(update={"data_dir": Path(tempfile.mkdtemp(prefix="tandem-bench-"))}))
    print("\nTwo models alternating under a RAM budget that holds one (6 loads):")
    print(f"  planned CPU memory {m['plan_cpu_mib']} MiB, budget {m['budget_mib']} MiB; peak RSS above the baseline "
          f"{m['peak_above_baseline_mib']} MiB against the larger plan's {m['larger_plan_mib']} MiB; samples with both "
          f"loaded: {m['both_loaded_samples']}")
    return 0
