"""`tandem bench --context`: conversations longer than the context, and returning to one.

(a) A scripted conversation that runs to `factor` times n_ctx under each policy: every turn is a
    new note of about 40 tokens and a reply of exactly `reply` tokens (end of turn ignored), so
    that turns cost the same unless the context handling makes them differ. Each policy runs
    `repeats` times, round-robin, and a turn's time is its fastest run: on a shared machine a
    single run's worst turn is often a noise spike. Prints per-turn time (median, worst,
    worst / median), the turns that evicted, and whether any turn failed.
(b) Returning to a conversation of about `resume_tokens` tokens after another one took the model:
    time to first token with its saved cache restored, and with it re-evaluated, alternating.

Each measurement runs in a thread of its own that ends with it (see app.bench: a second live
OpenMP team slows llama.cpp down). The machine is noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from tandem.app.bench import in_own_thread
from tandem.app.config import Settings

WORDS = ["apple", "river", "stone", "cloud", "maple", "ember", "harbor", "violet"]
FILLER = ("The lighthouse keeper wrote in his log about the tides, the gulls and the ships that passed "
          "the point at dawn; each entry noted the wind, the colour of the sea and the lamp's oil.")


def _note(turn: int) -> dict:
    return {"role": "user", "content": f"Note {turn}: door {turn} opens with the word {WORDS[turn % 8]}{turn}. "
                                       f"Reply with that word and a short remark about doors."}


def _policy_run(model: Path, threads: int, n_ctx: int, policy: str, factor: int, reply: int) -> dict:
    from tandem.runtime.engine import ModelWorker, Failed, Finished, LoadParams, SamplingParams

    session = ModelWorker.open(LoadParams(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                            flash_attn=True))
    sampling = SamplingParams(temperature=0.0, max_tokens=reply, ignore_eos=True)
    conv = [{"role": "system", "content": "You are a concise assistant keeping a list of door words."}]
    evicted: list[int] = []
    turns, error, total = [], None, 0
    try:
        turn = 0
        while total < factor * n_ctx:
            conv.append(_note(turn))
            t0 = time.perf_counter()
            events = list(session.submit(conv, sampling, overflow=policy, evicted=evicted))
            seconds = time.perf_counter() - t0
            last = events[-1]
            if isinstance(last, Failed):
                error = f"turn {turn}: {str(last.error).split(' (with')[0]}"
                break
            assert isinstance(last, Finished)
            started = events[0]
            before = len(evicted)
            evicted = sorted(set(evicted) | set(started.dropped) | set(last.dropped))
            conv.append({"role": "assistant", "content": last.text})
            st = last.stats
            total = st.prompt_tokens + st.completion_tokens + st.evicted_tokens
            turns.append({"s": seconds, "ttft": st.ttft_s, "evict": len(evicted) > before or bool(st.shifted_tokens),
                          "cached": st.cached_tokens, "prompt": st.prompt_tokens, "total": total})
            turn += 1
    finally:
        session.close()
    return {"turns": turns, "error": error, "total": total}


def _resume_run(model: Path, threads: int, resume_tokens: int, rounds: int) -> dict:
    from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams
    from tandem.runtime.engine.kvstate import state_path

    states = tempfile.TemporaryDirectory()
    state_dir = Path(states.name)
    n_ctx = max(4096, resume_tokens * 2)
    session = ModelWorker.open(LoadParams(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                            flash_attn=True), saved_states=state_dir)
    sampling = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    words = FILLER.split()
    text, n = [], 0
    # about 1.2 tokens a word for this prose: grow the document until the prompt is long enough
    while n < resume_tokens - 60:
        text.append(" ".join(words))
        n = int(len(" ".join(text).split()) * 1.2)
    long = [{"role": "user", "content": "Here is my log:\n" + "\n".join(text)}]
    other = [{"role": "user", "content": "What is the capital of France?"}]
    restored, reevaluated, sizes, prompt = [], [], [], 0
    try:
        first = session.submit(long, sampling, key="long").result()
        prompt = first.stats.prompt_tokens
        conv = long + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Summarise it."}]
        for i in range(rounds * 2):
            session.submit(other, sampling, key="other").result()  # takes the model: "long" is saved
            path = state_path(state_dir, "long")
            sizes.append(path.stat().st_size if path.exists() else 0)
            keep = i % 2 == 0
            if not keep:
                path.unlink(missing_ok=True)  # the same return, without a saved cache
            r = session.submit(conv, sampling, key="long").result()
            (restored if keep else reevaluated).append((r.stats.ttft_s, r.stats.restored_tokens, r.stats.prompt_tokens))
    finally:
        session.close()
        states.cleanup()
    return {"restored": restored, "reevaluated": reevaluated, "file_bytes": max(sizes) if sizes else 0,
            "first_prompt": prompt, "n_ctx": n_ctx}


def _fastest(runs: list[dict]) -> dict:
    """Per turn, the faster of the runs of the same (deterministic) conversation."""
    first = runs[0]
    turns = [dict(t, s=min(r["turns"][i]["s"] for r in runs if i < len(r["turns"])),
                  ttft=min(r["turns"][i]["ttft"] or 0 for r in runs if i < len(r["turns"])))
             for i, t in enumerate(first["turns"])]
    return {**first, "turns": turns}


def run_context_bench(settings: Settings, model: Path, n_ctx: int | None, factor: int = 5, reply: int = 24,
                      resume_tokens: int = 2000, rounds: int = 3, repeats: int = 2) -> int:
    from tandem.runtime.hardware import physical_cores

    threads = settings.n_threads or physical_cores()
    n_ctx = n_ctx or 1024
    print(f"model {model.name}, {threads} threads, greedy, flash attention")
    print(f"(a) a conversation to {factor} x n_ctx = {factor * n_ctx} tokens, n_ctx {n_ctx}, "
          f"notes of ~40 tokens, replies of {reply} tokens; each policy run {repeats} times (round-robin), "
          f"a turn's time is its fastest run")
    print(f"{'policy':<13}{'turns':>6}{'tokens':>8}{'evictions':>10}{'median s':>10}{'worst s':>9}"
          f"{'worst/med':>10}{'med TTFT':>10}  result")
    verdicts, notes = [], []
    policies = ("sink_window", "drop_turns", "stop")
    runs: dict[str, list[dict]] = {p: [] for p in policies}
    for _ in range(repeats):
        for policy in policies:
            runs[policy].append(in_own_thread(_policy_run, model, threads, n_ctx, policy, factor, reply))
    for policy in policies:
        r = _fastest(runs[policy])
        times = [t["s"] for t in r["turns"]]
        if not times:
            print(f"{policy:<13}{0:>6}  {r['error']}")
            continue
        med, worst = statistics.median(times), max(times)
        ttft = statistics.median(t["ttft"] for t in r["turns"] if t["ttft"] is not None)
        n_evict = sum(t["evict"] for t in r["turns"])
        result = f"refused at {r['error']}" if r["error"] else "no turn failed"
        print(f"{policy:<13}{len(times):>6}{r['total']:>8}{n_evict:>10}{med:>10.3f}{worst:>9.3f}"
              f"{worst / med:>10.2f}{ttft * 1000:>8.0f}ms  {result}")
        evicting = [t["s"] for t in r["turns"] if t["evict"]]
        if evicting:
            slow = max(range(len(times)), key=times.__getitem__)
            notes.append(f"{policy}: turns that evicted took {statistics.median(evicting):.3f} s (median), "
                         f"the others {statistics.median([t['s'] for t in r['turns'] if not t['evict']]):.3f} s; "
                         f"slowest turn #{slow}{' (evicting)' if r['turns'][slow]['evict'] else ''}")
        if policy == "sink_window":
            verdicts.append(("sink_window worst turn <= 1.2 x median", worst / med <= 1.2, f"{worst / med:.2f}"))
    for line in notes:
        print(line)
    print(f"\n(b) returning to a conversation of ~{resume_tokens} tokens after another took the model "
          f"({rounds} rounds each, alternating)")
    r = in_own_thread(_resume_run, model, threads, resume_tokens, rounds)
    rest = statistics.median(t for t, _, _ in r["restored"])
    again = statistics.median(t for t, _, _ in r["reevaluated"])
    restored_tokens = max(n for _, n, _ in r["restored"])
    print(f"conversation {r['first_prompt']} tokens (+ reply and question), n_ctx {r['n_ctx']}, "
          f"saved cache {r['file_bytes'] / 1e6:.1f} MB")
    print(f"{'return':<22}{'median TTFT s':>14}{'runs':>30}")
    print(f"{'saved cache restored':<22}{rest:>14.3f}   {', '.join(f'{t:.3f}' for t, _, _ in r['restored'])}"
          f"  ({restored_tokens} tokens restored)")
    print(f"{'re-evaluated':<22}{again:>14.3f}   {', '.join(f'{t:.3f}' for t, _, _ in r['reevaluated'])}")
    print(f"restored / re-evaluated: {rest / again:.3f}")
    verdicts.append(("resume <= 0.2 x re-evaluation", rest / again <= 0.2, f"{rest / again:.3f}"))
    print()
    for name, ok, value in verdicts:
        print(f"goal {name}: {'met' if ok else 'NOT met'} ({value})")
    return 0
