"""Check the planner on a real NVIDIA GPU: predicted against measured memory and speed.

For synthetic 7B- and 13B-shaped Q4_0 models and several emulated VRAM budgets (the planner is
told the GPU is a card of that size, idle), it asks the planner for a plan, loads it, and measures
decode and prefill tokens/s and the VRAM the process holds (NVML). Then, in order of importance
and as long as --max-seconds allows:

1. the plan at every budget, and CPU-only;
2. the Dovetail placement at the smallest budget: a 1B-shaped draft entirely on the GPU, the
   7B model verifying on the CPU (and on the VRAM the draft leaves), against plain decoding;
3. the n_gpu_layers sweep around each plan's choice (only layer counts the planner says fit);
4. the offload curve of the 7B shape on the whole card (0 to all layers).

Writes one JSON and prints tables: memory error, speed error before and after calibrating, the
plan against the best of the sweep, and the speed-up over CPU-only.

    python scripts/gpu_validate.py --out gpu.json [--shapes 7b,13b] [--budgets 3,4,8,12,24] [--max-seconds 480]
    python scripts/gpu_validate.py --cpu-smoke --out smoke.json   # the same code paths, on a CPU

See docs/gpu-validation.md for sending it to a GPU machine with the CUDA build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GIB = 1 << 30
PROMPT = ("The lighthouse keeper wrote in his log about the tides, the gulls and the ships that passed "
          "the point at dawn; each entry noted the wind, the colour of the sea and the lamp's oil. ") * 12
CURVE = (0, 8, 16, 20, 24, 28, 32)  # and all layers: the offload curve of runtime-facts, re-measured


def nvml_used(index: int = 0) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
    except Exception:
        return None


BASELINE = nvml_used()  # before this process touches the GPU: later readings minus this = what it holds

from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams  # noqa: E402
from tandem.app.report import engine_text, kv_text  # noqa: E402
from tandem.runtime.hardware import probe  # noqa: E402
from tandem.runtime.hardware.enginebench import kv_kind, model_kinds  # noqa: E402
from tandem.runtime.hardware.probe import with_engine_rates, with_gpu_rates  # noqa: E402
from tandem.runtime.model_info import inspect_model  # noqa: E402
from tandem.runtime.planner import Calibration, plan_model  # noqa: E402
from tandem.runtime.planner.search import predict_decode, predict_split  # noqa: E402
from tandem.runtime.planner.speculative import speculative_speed  # noqa: E402
from tandem.runtime.synth import preset, write_model  # noqa: E402


def nvidia_smi() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    q = "name,memory.total,pcie.link.gen.current,pcie.link.width.current,power.limit"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    rows = []
    for line in out.strip().splitlines():
        name, mem, gen, width, power = [x.strip() for x in line.split(",")]
        rows.append({"name": name, "memory_total_mib": float(mem), "pcie_gen": gen, "pcie_width": width,
                     "power_limit_w": power})
    return rows


def with_budget(hw, budget_gib: float | None):
    """The machine as the planner should see it: the first GPU as an idle card of `budget_gib`
    (its safety margin then follows the card's size, as on a real consumer card)."""
    if budget_gib is None or not hw.gpus:
        return hw
    g = hw.gpus[0]
    size = min(g.memory_free_bytes or 0, int(budget_gib * GIB))
    return replace(hw, gpus=(replace(g, memory_free_bytes=size, memory_total_bytes=size),) + tuple(hw.gpus[1:]))


class Bench:
    """Measurements, each once: the same load (and draft) measured again returns the first result."""

    def __init__(self, tokens: int, max_seconds: float):
        self.tokens = tokens
        self.deadline = time.perf_counter() + max_seconds
        self.done: dict[str, dict] = {}

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def measure(self, path: Path, load: dict, tokens: int | None = None, draft: dict | None = None) -> dict | None:
        tokens = tokens or self.tokens
        key = json.dumps([str(path), load, tokens, draft], sort_keys=True, default=str)
        if key in self.done:
            return self.done[key]
        if self.out_of_time():
            return None
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:  # its own thread, as in the app
                m = pool.submit(_measure, path, load, tokens, draft).result()
        except Exception as err:  # a load that fails is a result too (the plan did not fit)
            print(f"failed: {path.name} {load.get('n_gpu_layers')} layers: {err}", flush=True)
            m = {"error": str(err)[:500], "decode_tps": None}
        self.done[key] = m
        return m


def _measure(path: Path, load: dict, tokens: int, draft: dict | None) -> dict:
    """Load, prefill a ~500-token prompt, decode a few tokens unmeasured (a load's first tokens run
    slower: pages, caches, clocks), then `tokens` greedily (end of turn ignored), measured."""
    before = nvml_used(load.get("main_gpu", 0))
    t0 = time.perf_counter()
    draft_params = LoadParams(path=Path(draft["path"]), **draft["load"]) if draft else None
    session = ModelWorker.open(LoadParams(path=path, **load), draft=draft_params)
    load_s = time.perf_counter() - t0
    try:
        session.submit([{"role": "user", "content": PROMPT}], SamplingParams(temperature=0.0, max_tokens=8),
                       speculative="off").result()
        r = session.submit([{"role": "user", "content": PROMPT}],
                           SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True),
                           speculative="draft" if draft else "off").result()
        after = nvml_used(load.get("main_gpu", 0))
    finally:
        session.close()
    st = r.stats
    prefill = st.prompt_tokens / (st.ttft_s - st.queue_s) if st.ttft_s else None
    return {"decode_tps": st.decode_tps, "prefill_tps": prefill, "prompt_tokens": st.prompt_tokens,
            "completion_tokens": st.completion_tokens, "load_s": round(load_s, 2),
            "drafted": st.drafted_tokens, "accepted": st.accepted_tokens,
            "vram_bytes": (after - BASELINE) if BASELINE is not None and after is not None else None,
            "vram_delta_bytes": (after - before) if before is not None and after is not None else None}


def gpu_bytes(memory) -> int:
    return sum(m.total for m in memory if m.device != "CPU")


def _memory(info, machine, n_ctx, ngl, plan):
    from tandem.runtime.planner.memory import memory_map
    from tandem.runtime.planner.search import cpu_margin, gpu_margin, plan_gpus

    gpu = plan_gpus(machine, replace(plan, n_gpu_layers=max(ngl, 1))) if machine.gpus else None
    return memory_map(info, n_gpu_layers=ngl, n_ctx=n_ctx, type_k=plan.type_k, type_v=plan.type_v,
                      n_ubatch=plan.n_ubatch, flash_attn=plan.flash_attn, offload_kqv=True, swa_full=True,
                      cpu_capacity=machine.memory.available_bytes, cpu_margin=cpu_margin(machine),
                      gpu=gpu, gpu_margin=gpu_margin)


def _row(info, machine, plan, ngl, m, chosen) -> dict:
    if m.get("error"):
        return {"ngl": ngl, "fits": True, "plan": ngl == chosen, **m}
    return {"ngl": ngl, "fits": True, "plan": ngl == chosen, **m, **_predicted(info, machine, plan, ngl, m)}


def _predicted(info, machine, plan, ngl, m) -> dict:
    """What the planner predicts for a measured row: decode speed, its CPU share, GPU memory."""
    p = replace(plan, n_gpu_layers=ngl)
    fill = m["prompt_tokens"] + m["completion_tokens"] // 2
    tps, share = predict_split(info, machine, p, fill)
    # the same without llama.cpp's timing on the GPU: the card's bandwidth and the fitted constants
    table = replace(machine, gpus=tuple(replace(g, engine_rates=(), handoff_s=None, kv_costs=()) for g in machine.gpus))
    table_tps, _ = predict_split(info, table, p, fill)
    return {"predicted_tps": round(tps, 2), "predicted_table_tps": round(table_tps, 2), "cpu_share": round(share, 4),
            "predicted_gpu_bytes": gpu_bytes(_memory(info, machine, plan.n_ctx, ngl, plan))}


def _print_row(shape, budget, ngl, chosen, row):
    if row.get("error"):
        return
    print(f"{shape:>5} budget {budget or 0:>4} GiB  ngl {ngl:>3}{' (plan)' if ngl == chosen else '       '}  "
          f"decode {row['decode_tps'] or 0:7.1f} tok/s (pred {row['predicted_tps']:7.1f}, card {row['predicted_table_tps']:7.1f})  prefill "
          f"{row['prefill_tps'] or 0:8.1f}  VRAM {(row['vram_bytes'] or 0) / GIB:5.2f} GiB "
          f"(pred {row['predicted_gpu_bytes'] / GIB:5.2f})", flush=True)


def dovetail(bench: Bench, target_path: Path, info, draft_path: Path, machine, plain_plan, on_gpu: bool) -> dict:
    """The draft entirely on the GPU and the model verifying (a) with the VRAM the draft leaves,
    (b) on the CPU alone; each against plain decoding of the same placement (analyse() adds the
    planner's predictions at the measured acceptance). The planner's own choice is recorded too."""
    dinfo = inspect_model(draft_path)
    tokens = bench.tokens * 2
    out = {"draft": str(draft_path.name), "draft_params": dinfo.n_params, "options": []}
    chosen = plan_model(info, machine, plain_plan.n_ctx, drafts=(("draft-1b", dinfo, None),))
    out["planner_choice"] = {"speculative": chosen.speculative, "draft": chosen.draft,
                             "n_gpu_layers": chosen.n_gpu_layers,
                             "reasons": [r for r in chosen.reasons if "draft" in r.lower()]}
    dplan = plan_model(dinfo, machine, plain_plan.n_ctx, threads=plain_plan.n_threads)
    d_ngl = dinfo.n_layer + 1 if on_gpu else 0
    dplan = replace(dplan, n_gpu_layers=d_ngl)
    draft_load = {**dplan.load_kwargs(), "n_gpu_layers": d_ngl}
    draft_alone = bench.measure(draft_path, draft_load)
    d_pred = predict_decode(dinfo, machine, dplan, 600)
    out["draft_alone"] = {"ngl": d_ngl, "predicted_tps": round(d_pred, 1), **(draft_alone or {})}
    if draft_alone and draft_alone.get("decode_tps"):
        print(f"dovetail: the draft alone, ngl {d_ngl}: {draft_alone['decode_tps']:.1f} tok/s (pred {d_pred:.1f})", flush=True)
    draft_gpu = sum(m.total - m.overhead for m in _memory(dinfo, machine, plain_plan.n_ctx, d_ngl, dplan)
                    if m.device != "CPU")
    left = with_budget(machine, ((machine.gpus[0].memory_free_bytes or 0) - draft_gpu) / GIB) if on_gpu else machine
    try:
        rest = plan_model(info, left, plain_plan.n_ctx, threads=plain_plan.n_threads)
    except Exception as err:  # the draft leaves too little: verify on the CPU only
        print(f"target beside the draft: {err}")
        rest = replace(plain_plan, n_gpu_layers=0)
    placements = [("beside the draft", rest)]
    if rest.n_gpu_layers:
        placements.append(("CPU only", replace(rest, n_gpu_layers=0)))
    for label, tplan in placements:
        plain = bench.measure(target_path, tplan.load_kwargs(), tokens)
        spec = bench.measure(target_path, tplan.load_kwargs(), tokens, {"path": str(draft_path), "load": draft_load})
        if not plain or not spec or not spec["decode_tps"] or not plain["decode_tps"]:
            out["options"].append({"target": label, "target_ngl": tplan.n_gpu_layers,
                                   "skipped": (spec or plain or {}).get("error") or "out of time"})
            continue
        a = spec["accepted"] / spec["drafted"] if spec["drafted"] else 0.0
        opt = {"target": label, "target_ngl": tplan.n_gpu_layers, "target_load": tplan.load_kwargs(),
               "plain_tps": plain["decode_tps"], "spec_tps": spec["decode_tps"],
               "speedup": round(spec["decode_tps"] / plain["decode_tps"], 2), "acceptance": round(a, 3),
               "drafted": spec["drafted"], "accepted": spec["accepted"], "vram_bytes": spec["vram_bytes"]}
        out["options"].append(opt)
        print(f"dovetail: draft ngl {d_ngl}, model {label} (ngl {tplan.n_gpu_layers}): plain {plain['decode_tps']:.1f} "
              f"-> speculative {spec['decode_tps']:.1f} tok/s ({opt['speedup']:.2f}x), acceptance {a:.2f}", flush=True)
    return out


def _plan_as_run(info, machine, recorded: dict):
    """The plan a run measured (n_ctx, threads, KV type, ubatch as recorded), under today's planner."""
    p = plan_model(info, machine, recorded["n_ctx"], threads=recorded["n_threads"])
    return replace(p, n_gpu_layers=recorded["n_gpu_layers"], type_k=recorded["type_k"], type_v=recorded["type_v"],
                   n_ubatch=recorded["n_ubatch"], n_batch=recorded.get("n_batch", p.n_batch),
                   flash_attn=recorded.get("flash_attn", True))


def analyse(report: dict, hw, models: dict) -> None:
    """Predict every measured row with the planner as it is now, calibrate on them as the app does
    (CPU and GPU apart), and fill report["summary"] and report["calibration"]; prints the tables."""
    records = []
    for run in report["runs"]:
        if run.get("error"):
            continue
        info = models[run["shape"]][1]
        machine = with_budget(hw, run["budget_gib"])
        plan = _plan_as_run(info, machine, run["plan"])
        rows = run["rows"].values() if isinstance(run["rows"], dict) else run["rows"]
        for r in rows:
            if r.get("decode_tps"):
                r.update(_predicted(info, machine, plan, r["ngl"], r))
                records.append({"model_id": run["shape"], "predicted_tps": r["predicted_tps"],
                                "measured_tps": r["decode_tps"], "cpu_share": r["cpu_share"]})
        run["predicted_gpu_bytes"] = gpu_bytes(_memory(info, machine, plan.n_ctx, plan.n_gpu_layers, plan))
        try:
            run["planner_now_ngl"] = plan_model(info, machine, plan.n_ctx).n_gpu_layers
        except Exception:
            run["planner_now_ngl"] = None
        run["rows"] = sorted(rows, key=lambda r: r["ngl"])
    curve = report.get("curve_7b") or []
    if curve and "7b" in models:
        info = models["7b"][1]
        plan = plan_model(info, hw, 2048, threads=hw.cpu.physical_cores)
        for r in curve:
            if r.get("decode_tps"):
                r.update(_predicted(info, hw, plan, r["ngl"], r))
    records = list({(r["model_id"], r["predicted_tps"], r["measured_tps"]): r for r in records}.values())  # a row shared by budgets counts once
    cal = Calibration.from_records(records)
    report["calibration"] = {"per_model": cal.per_model, "machine": cal.machine, "samples": cal.samples}

    summary = []
    for run in report["runs"]:
        rows = [r for r in run["rows"] if r.get("decode_tps")]
        plan_row = next((r for r in rows if r.get("plan")), None)
        if not plan_row:
            continue
        best = max(rows, key=lambda r: r["decode_tps"])
        cpu_row = next((r for r in rows if r["ngl"] == 0), None)
        errs = [cal.apply(r["predicted_tps"], r["cpu_share"], run["shape"]) / r["decode_tps"] - 1 for r in rows]
        vram = plan_row.get("vram_bytes") if plan_row["ngl"] else None
        budget = run["budget_gib"]
        summary.append({
            "shape": run["shape"], "budget_gib": budget, "plan_ngl": plan_row["ngl"], "type_k": run["plan"]["type_k"],
            "planner_now_ngl": run.get("planner_now_ngl"),
            "plan_tps": plan_row["decode_tps"], "best_ngl": best["ngl"], "best_tps": best["decode_tps"],
            "sweep_measured": len(rows), "plan_vs_best": round(plan_row["decode_tps"] / best["decode_tps"], 3),
            "speedup_vs_cpu": round(plan_row["decode_tps"] / cpu_row["decode_tps"], 2) if cpu_row else None,
            "predicted_gpu_gib": round(run["predicted_gpu_bytes"] / GIB, 3),
            "measured_gpu_gib": round(vram / GIB, 3) if vram else None,
            "vram_error": round(run["predicted_gpu_bytes"] / vram - 1, 3) if vram else None,
            "within_budget": vram is None or budget is None or vram <= budget * GIB,
            "speed_error_uncalibrated": round(plan_row["predicted_tps"] / plan_row["decode_tps"] - 1, 3),
            "speed_error_calibrated": round(cal.apply(plan_row["predicted_tps"], plan_row["cpu_share"], run["shape"])
                                            / plan_row["decode_tps"] - 1, 3),
            "speed_error_calibrated_max": round(max(abs(e) for e in errs), 3),
        })
    report["summary"] = summary
    print()
    print(f"{'shape':>5} {'budget':>6} {'plan ngl':>8} {'KV':>5} {'tok/s':>7} {'best ngl':>8} {'plan/best':>9} {'x CPU':>6} "
          f"{'VRAM pred':>9} {'VRAM meas':>9} {'err':>6} {'speed err':>9} {'cal.':>6} {'cal. max':>8}")
    for s in summary:
        print(f"{s['shape']:>5} {s['budget_gib'] or 0:>6} {s['plan_ngl']:>8} {s['type_k']:>5} {s['plan_tps']:>7.1f} "
              f"{s['best_ngl']:>8} {s['plan_vs_best']:>9.2f} {s['speedup_vs_cpu'] or 0:>6.2f} {s['predicted_gpu_gib']:>9.2f} "
              f"{s['measured_gpu_gib'] or 0:>9.2f} {s['vram_error'] if s['vram_error'] is not None else '-':>6} "
              f"{s['speed_error_uncalibrated']:>9.3f} {s['speed_error_calibrated']:>6.3f} {s['speed_error_calibrated_max']:>8.3f}")
    if curve:
        print("\noffload curve, 7b, n_ctx 2048, one thread per core: ngl, measured, predicted, calibrated")
        for r in curve:
            if r.get("decode_tps"):
                c = cal.apply(r["predicted_tps"], r["cpu_share"], "7b")
                print(f"  {r['ngl']:>3} {r['decode_tps']:7.1f} {r['predicted_tps']:7.1f} ({r['predicted_tps'] / r['decode_tps'] - 1:+.0%}) "
                      f"{c:7.1f} ({c / r['decode_tps'] - 1:+.0%})")
    dov = report.get("dovetail") or {}
    if dov.get("options") and "7b" in models:
        _dovetail_again(dov, hw, models, cal)


def _dovetail_again(dov: dict, hw, models: dict, cal) -> None:
    """The Dovetail predictions at the measured acceptance, uncalibrated and calibrated."""
    info = models["7b"][1]
    machine = with_budget(hw, dov["budget_gib"])
    print("\ndovetail (draft entirely on the GPU): model placement, plain and speculative tok/s measured, predicted, calibrated")
    d_tps = dov["draft_alone"].get("decode_tps") or dov["draft_alone"]["predicted_tps"]  # the draft as measured
    for opt in dov["options"]:
        if "spec_tps" not in opt:
            continue
        load = opt.get("target_load") or {}
        base = plan_model(info, machine, load.get("n_ctx", 4096), threads=load.get("n_threads"))
        tplan = replace(base, n_gpu_layers=opt["target_ngl"], **{k: load[k] for k in ("type_k", "type_v", "n_ubatch") if k in load})
        raw, share = predict_split(info, machine, tplan, 600)
        gpu = machine.gpus[0] if tplan.n_gpu_layers else None
        out = {}
        for name, plain in (("uncalibrated", raw), ("calibrated", cal.apply(raw, share, "7b"))):
            tps, k = speculative_speed(info, replace(tplan, decode_tps=plain), d_tps, opt["acceptance"], machine, gpu)
            out[name] = (round(plain, 1), round(tps, 1), k)
        opt["predicted_now"] = out
        print(f"  {opt['target']:<17} ngl {opt['target_ngl']:>2}: measured {opt['plain_tps']:.1f} -> {opt['spec_tps']:.1f} "
              f"(acceptance {opt['acceptance']:.2f}); predicted {out['uncalibrated'][0]} -> {out['uncalibrated'][1]} (k "
              f"{out['uncalibrated'][2]}); calibrated {out['calibrated'][0]} -> {out['calibrated'][1]} (k {out['calibrated'][2]})")


def reanalyze(path: Path, out: Path | None) -> int:
    """Predict a saved run's measurements again with today's planner (no GPU needed)."""
    from tandem.runtime.hardware.profile import HardwareProfile

    report = json.loads(path.read_text())
    hw = HardwareProfile.from_dict(report["hardware"])
    work = Path(tempfile.mkdtemp(prefix="tandem-reanalyze-"))
    try:
        models = {}
        for shape in {r["shape"] for r in report["runs"]}:
            p = write_model(work / f"{shape}.gguf", preset(shape), fill="zeros")  # sparse: headers only on disk
            models[shape] = (p, inspect_model(p))
        for run in report["runs"]:
            run["rows"] = {r["ngl"]: r for r in run["rows"]}
        analyse(report, hw, models)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if out:
        out.write_text(json.dumps(report, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_validate.json"))
    ap.add_argument("--shapes", default="7b,13b")
    ap.add_argument("--budgets", default="3,4,8,12,24", help="emulated VRAM in GiB")
    ap.add_argument("--tokens", type=int, default=64, help="tokens decoded per measurement")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--sweep", type=int, default=2, help="layer counts either side of the plan's to measure")
    ap.add_argument("--max-seconds", type=float, default=480,
                    help="stop measuring after this long and write what was measured (device calls are limited)")
    ap.add_argument("--workdir", type=Path, help="where the synthetic models go (default: a temporary folder)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models, no GPU: check the script itself")
    ap.add_argument("--reanalyze", type=Path, help="a saved JSON: predict its measurements again with today's planner")
    args = ap.parse_args(argv)
    if args.reanalyze:
        return reanalyze(args.reanalyze, args.out if args.out != Path("gpu_validate.json") else None)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tandem-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    hw = probe(work, measure_bandwidth=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "hardware": hw.to_dict()
              if hasattr(hw, "to_dict") else asdict(hw), "nvidia_smi": nvidia_smi(), "baseline_vram_bytes": BASELINE,
              "runs": []}
    if args.cpu_smoke:
        shapes, budgets = ["tiny"], [None]
    else:
        if not hw.gpus:
            print("No GPU found by the probe: run with --cpu-smoke to check the script on a CPU.", file=sys.stderr)
            return 2
        shapes, budgets = args.shapes.split(","), [float(b) for b in args.budgets.split(",")]
    if hw.gpus:
        g = hw.gpus[0]
        print(f"GPU (probe): {g.name}, {(g.memory_total_bytes or 0) / GIB:.1f} GiB, {(g.memory_free_bytes or 0) / GIB:.1f} "
              f"free, PCIe {g.pcie_gen}.0 x{g.pcie_width}, power limit {g.power_limit_w} W")
    for row in report["nvidia_smi"]:
        print(f"GPU (nvidia-smi): {row}")
    bench = Bench(args.tokens, args.max_seconds)

    def save():  # after each step: a run cut short still leaves what it measured
        args.out.write_text(json.dumps(report, indent=1, default=str))

    # 1. the plan at every budget, and CPU-only
    models = {}
    plans = {}  # (shape, budget) -> the plan measured
    for shape in shapes:
        path = work / f"{shape}.gguf"
        if not path.exists():
            write_model(path, preset(shape), fill="random")  # scales that vary as a real model's: see synth
        models[shape] = (path, inspect_model(path))
        info = models[shape][1]
        # the CPU side as the app predicts it: llama.cpp timed on this host (enginebench)
        first_timed = not hw.memory.engine_rates
        hw = with_engine_rates(hw, work, model_kinds(info), kv_kinds=[kv_kind(info)])
        hw = with_gpu_rates(hw, work, model_kinds(info), kv_kinds=[kv_kind(info)])  # and on the GPU, with the hand-off
        if first_timed:
            print(f"CPU: {hw.cpu.physical_cores} cores, {hw.memory.read_bandwidth_gbps} GB/s read (numpy); "
                  f"llama.cpp {engine_text(hw)}; filled cache {kv_text(hw)}", flush=True)
        for g in hw.gpus:
            if g.engine_rates:
                print(f"GPU {g.index}: llama.cpp {dict(g.engine_rates)} GB/s, hand-off "
                      f"{(g.handoff_s or 0) * 1e3:.3f} ms", flush=True)
        if shape == shapes[0]:  # the process's first model decodes slower: one load first, unmeasured
            Bench(8, 600).measure(path, plan_model(info, hw, args.n_ctx).load_kwargs())
        report["hardware"] = hw.to_dict()
        for budget in budgets:
            machine = with_budget(hw, budget)
            try:
                plan = plan_model(info, machine, args.n_ctx)
            except Exception as err:  # PlanError: nothing fits this budget
                print(f"{shape} at {budget} GiB: {err}", flush=True)
                report["runs"].append({"shape": shape, "budget_gib": budget, "error": str(err), "rows": {}})
                continue
            plans[shape, budget] = plan
            run = {"shape": shape, "budget_gib": budget, "plan": plan.to_dict(), "rows": {}}
            report["runs"].append(run)
            for ngl in dict.fromkeys((plan.n_gpu_layers, 0)):
                m = bench.measure(path, replace(plan, n_gpu_layers=ngl).load_kwargs())
                if m:
                    run["rows"][ngl] = _row(info, machine, plan, ngl, m, plan.n_gpu_layers)
                    _print_row(shape, budget, ngl, plan.n_gpu_layers, run["rows"][ngl])

    save()

    # 2. Dovetail at the smallest budget: a draft entirely on the GPU, the model on the CPU
    target = "tiny" if args.cpu_smoke else "7b"
    if target in models:
        if args.cpu_smoke:  # a wider target so that the tiny draft is under a third of its size
            tpath = write_model(work / "target.gguf", replace(preset("tiny"), n_embd=256, n_ff=512, name="tiny-wide"), fill="zeros")
            draft_path = write_model(work / "draft.gguf", preset("tiny"), fill="zeros")
            tinfo = inspect_model(tpath)
            tplan = plan_model(tinfo, hw, args.n_ctx)
        else:
            tpath, tinfo = models[target]
            draft_path = work / "draft-1b.gguf"
            if not draft_path.exists():
                write_model(draft_path, preset("1b"), fill="zeros")
            tplan = plans.get((target, budgets[0])) or plan_model(tinfo, with_budget(hw, budgets[0]), args.n_ctx)
        try:
            report["dovetail"] = {"budget_gib": budgets[0], **dovetail(
                bench, tpath, tinfo, draft_path, with_budget(hw, budgets[0]), tplan, on_gpu=bool(hw.gpus))}
        except Exception as err:
            print(f"dovetail: {err!r}", flush=True)
            report["dovetail"] = {"budget_gib": budgets[0], "error": repr(err)}

    save()

    # 3. the sweep around each plan's choice
    for run in report["runs"]:
        if run.get("error"):
            continue
        path, info = models[run["shape"]]
        machine = with_budget(hw, run["budget_gib"])
        plan = plans[run["shape"], run["budget_gib"]]
        chosen = plan.n_gpu_layers
        for ngl in range(max(0, chosen - args.sweep), min(info.n_layer + 1, chosen + args.sweep) + 1):
            if ngl in run["rows"]:
                continue
            if ngl > chosen and not all(m.fits for m in _memory(info, machine, args.n_ctx, ngl, plan)):
                run["rows"][ngl] = {"ngl": ngl, "fits": False}
                continue
            m = bench.measure(path, replace(plan, n_gpu_layers=ngl).load_kwargs())
            if m is None:
                run["rows"][ngl] = {"ngl": ngl, "fits": True, "skipped": "out of time"}
                continue
            run["rows"][ngl] = _row(info, machine, plan, ngl, m, chosen)
            _print_row(run["shape"], run["budget_gib"], ngl, chosen, run["rows"][ngl])

    save()

    # 4. the offload curve on the whole card (the speed model's GPU constants)
    curve = []
    if "7b" in models and hw.gpus:
        path, info = models["7b"]
        plan = plan_model(info, hw, 2048, threads=hw.cpu.physical_cores)
        for ngl in CURVE + (info.n_layer + 1,):
            m = bench.measure(path, replace(plan, n_gpu_layers=ngl).load_kwargs())
            if m is None:
                break
            curve.append(_row(info, hw, plan, ngl, m, plan.n_gpu_layers))
            _print_row("7b", "all", ngl, plan.n_gpu_layers, curve[-1])
    report["curve_7b"] = curve

    save()

    analyse(report, hw, models)
    save()
    print(f"\nwritten: {args.out}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TANDEM_LOG", "warning")
    sys.exit(main())
