"""`tandem bench --spec`: plain decoding against speculative decoding, on a copy-heavy task and a
free-form one.

Rows per task: llama-cpp-python's create_chat_completion (the library, for reference), Tandem's
loop with speculation off (plain), with prompt lookup, and with a draft model when one is given.
Greedy, the same settings everywhere; each row loads its own session in a thread of its own that
ends with it (a second live OpenMP team slows llama.cpp down) and the rows take turns over the
runs, so the machine's drift hits all alike. Prints tokens/s (median of the runs), the ratio to
plain, acceptance, and whether the text equals plain greedy decoding.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from tandem.app.bench import in_own_thread
from tandem.app.config import Settings

CODE = '''def parse_config(path):
    """Read a key=value config file into a dict."""
    result = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, value = line.split("=", 1)
            result[key.strip()] = value.strip()
    return result


def write_config(path, values):
    """Write a dict as a key=value config file."""
    with open(path, "w") as f:
        for key, value in sorted(values.items()):
            f.write(f"{key}={value}\\n")
'''
TASKS = {
    "copy": "Add a comment above each line of this code and output the complete code:\n```python\n" + CODE + "```",
    "free": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
}


def _row(model: Path, mode: str, draft: Path | None, prompt: str, tokens: int, threads: int, n_ctx: int) -> dict:
    from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams

    params = dict(n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, flash_attn=True)
    messages = [{"role": "user", "content": prompt}]
    if mode == "library":
        import llama_cpp

        from tandem.app.bench import _measure, library_pieces

        llm = llama_cpp.Llama(model_path=str(model), verbose=False, **params)
        try:
            seen: list[str] = []

            def pieces():
                for piece in library_pieces(llm, prompt, tokens):
                    seen.append(piece or "")
                    yield piece
            n, tps = _measure(pieces())
            return {"tps": tps, "text": "".join(seen), "drafted": 0, "accepted": 0, "tokens": n}
        finally:
            llm.close()
    session = ModelWorker.open(LoadParams(model, **params),
                                 draft=LoadParams(draft, **params) if mode == "draft" else None)
    try:
        spec = {"plain": "off", "lookup": "lookup", "draft": "draft"}[mode]
        r = session.submit(messages, SamplingParams(temperature=0.0, max_tokens=tokens), speculative=spec).result()
        return {"tps": r.stats.decode_tps, "text": r.text, "drafted": r.stats.drafted_tokens,
                "accepted": r.stats.accepted_tokens, "tokens": r.stats.completion_tokens}
    finally:
        session.close()


def run_spec_bench(settings: Settings, model: Path, draft: Path | None = None, tokens: int = 256,
                   runs: int = 3, n_ctx: int = 4096) -> int:
    from tandem.runtime.hardware import physical_cores

    threads = settings.n_threads or physical_cores()
    modes = ["library", "plain", "lookup"] + (["draft"] if draft else [])
    print(f"model {model.name}{f', draft {draft.name}' if draft else ''}, {threads} threads, greedy, "
          f"flash attention, n_ctx {n_ctx}, up to {tokens} tokens, {runs} runs per row (round-robin)")
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(runs):
        for task, prompt in TASKS.items():
            for mode in modes:
                r = in_own_thread(_row, model, mode, draft, prompt, tokens, threads, n_ctx)
                results.setdefault((task, mode), []).append(r)
    verdicts = []
    for task in TASKS:
        plain = results[(task, "plain")]
        base = statistics.median(r["tps"] for r in plain)
        print(f"\ntask: {task}")
        print(f"{'row':<10}{'tokens':>7}{'tok/s':>9}{'x plain':>9}{'drafted':>9}{'accepted':>10}{'acceptance':>12}"
              f"  same text as plain")
        for mode in modes:
            rows = results[(task, mode)]
            tps = statistics.median(r["tps"] for r in rows)
            drafted, accepted = sum(r["drafted"] for r in rows), sum(r["accepted"] for r in rows)
            same = all(r["text"] == plain[0]["text"] for r in rows)
            rate = f"{accepted / drafted:.2f}" if drafted else "-"
            print(f"{mode:<10}{rows[0]['tokens']:>7}{tps:>9.1f}{tps / base:>9.2f}{drafted // runs:>9}"
                  f"{accepted // runs:>10}{rate:>12}  {'yes' if same else 'NO'}")
            if mode == "library":
                verdicts.append((f"{task}: plain >= 1.10 x library", base / tps >= 1.10, f"{base / tps:.2f}"))
            if mode != "library":
                verdicts.append((f"{task}: {mode} output identical to plain", same, "yes" if same else "no"))
            if mode in ("lookup", "draft"):
                goal = 1.3 if (task, mode) == ("copy", "lookup") else 0.97
                verdicts.append((f"{task}: {mode} >= {goal} x plain", tps / base >= goal, f"{tps / base:.2f}"))
    print()
    for name, ok, value in verdicts:
        print(f"goal {name}: {'met' if ok else 'NOT met'} ({value})")
    return 0
