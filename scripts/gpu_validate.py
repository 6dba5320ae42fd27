"""Check the planner on a real NVIDIA GPU: predicted against measured memory and speed.

For synthetic 7B- and 13B-shaped Q4_0 models and several emulated VRAM budgets (the planner is
told the GPU has only that much free), it asks the planner for a plan, loads it, and measures
decode and prefill tokens/s and the VRAM the process took (NVML); then CPU-only and the
n_gpu_layers sweep around the plan's choice (only layer counts the planner says fit the budget).
Writes one JSON and prints a table: memory error, speed error before and after calibrating on the
sweep, the plan against the best of the sweep, and the speed-up over CPU-only.

    python scripts/gpu_validate.py --out gpu.json [--shapes 7b,13b] [--budgets 3,8,24] [--max-seconds 480]
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

from runtime.engine import EngineSession, LoadParams, SamplingParams  # noqa: E402
from runtime.hardware import probe  # noqa: E402
from runtime.model_info import inspect_model  # noqa: E402
from runtime.planner import Calibration, plan_model  # noqa: E402
from runtime.planner.search import predict_decode  # noqa: E402
from runtime.synth import preset, write_model  # noqa: E402

GIB = 1 << 30
PROMPT = ("The lighthouse keeper wrote in his log about the tides, the gulls and the ships that passed "
          "the point at dawn; each entry noted the wind, the colour of the sea and the lamp's oil. ") * 12


def nvml_used(index: int) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
    except Exception:
        return None


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
    """The machine as the planner should see it: the first GPU with at most `budget_gib` free."""
    if budget_gib is None or not hw.gpus:
        return hw
    g = hw.gpus[0]
    free = min(g.memory_free_bytes or 0, int(budget_gib * GIB))
    return replace(hw, gpus=(replace(g, memory_free_bytes=free),) + tuple(hw.gpus[1:]))


def measure(path: Path, load: dict, tokens: int) -> dict:
    """Load with these parameters in a thread of its own, prefill a prompt, decode `tokens`."""
    def run():
        before = nvml_used(load.get("main_gpu", 0))
        t0 = time.perf_counter()
        session = EngineSession.open(LoadParams(path=path, **load))
        load_s = time.perf_counter() - t0
        try:
            r = session.submit([{"role": "user", "content": PROMPT}],
                               SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)).result()
            after = nvml_used(load.get("main_gpu", 0))
        finally:
            session.close()
        st = r.stats
        prefill = st.prompt_tokens / (st.ttft_s - st.queue_s) if st.ttft_s else None
        return {"decode_tps": st.decode_tps, "prefill_tps": prefill, "prompt_tokens": st.prompt_tokens,
                "load_s": round(load_s, 2),
                "vram_bytes": (after - before) if before is not None and after is not None else None}
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def gpu_bytes(plan) -> int:
    return sum(m.total for m in plan.memory if m.device != "CPU")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_validate.json"))
    ap.add_argument("--shapes", default="7b,13b")
    ap.add_argument("--budgets", default="3,8,24", help="emulated free VRAM in GiB (e.g. 3,4,8,12,24)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens decoded per measurement")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--sweep", type=int, default=2, help="layer counts either side of the plan's to measure")
    ap.add_argument("--max-seconds", type=float, default=480,
                    help="stop measuring after this long and write what was measured (device calls are limited)")
    ap.add_argument("--workdir", type=Path, help="where the synthetic models go (default: a temporary folder)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model, no GPU: check the script itself")
    args = ap.parse_args(argv)

    hw = probe(measure_bandwidth=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "hardware": hw.to_dict()
              if hasattr(hw, "to_dict") else asdict(hw), "nvidia_smi": nvidia_smi(), "runs": []}
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
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tandem-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    records = []
    started = time.perf_counter()
    for shape in shapes:
        path = work / f"{shape}.gguf"
        if not path.exists():
            write_model(path, preset(shape), fill="zeros" if shape != "tiny" else "random")
        info = inspect_model(path)
        cpu = None
        for budget in budgets:
            machine = with_budget(hw, budget)
            plan = plan_model(info, machine, args.n_ctx)
            rows = []
            chosen = plan.n_gpu_layers
            layer_counts = sorted({chosen, 0} | {n for n in range(chosen - args.sweep, chosen + args.sweep + 1)
                                                 if 0 <= n <= info.n_layer + 1})
            for ngl in layer_counts:
                p = plan if ngl == chosen else replace(plan, n_gpu_layers=ngl)
                predicted_tps = predict_decode(info, machine, p, args.tokens // 2 + 300)
                fits = ngl <= chosen or _fits(info, machine, args.n_ctx, ngl, plan)
                if not fits:
                    rows.append({"ngl": ngl, "fits": False})
                    continue
                if time.perf_counter() - started > args.max_seconds:
                    rows.append({"ngl": ngl, "fits": True, "skipped": "out of time"})
                    continue
                if ngl == 0 and cpu is not None:
                    m = cpu
                else:
                    m = measure(path, p.load_kwargs(), args.tokens)
                    if ngl == 0:
                        cpu = m
                rows.append({"ngl": ngl, "fits": True, "plan": ngl == chosen, "predicted_tps": round(predicted_tps, 2),
                             "predicted_gpu_bytes": _gpu_bytes_for(info, machine, args.n_ctx, ngl, plan), **m})
                records.append({"model_id": shape, "predicted_tps": predicted_tps, "measured_tps": m["decode_tps"]})
                print(f"{shape:>5} budget {budget or 0:>4} GiB  ngl {ngl:>3}{' (plan)' if ngl == chosen else '       '}  "
                      f"decode {m['decode_tps'] or 0:7.1f} tok/s (pred {predicted_tps:7.1f})  prefill "
                      f"{m['prefill_tps'] or 0:8.1f}  VRAM {(m['vram_bytes'] or 0) / GIB:5.2f} GiB", flush=True)
            report["runs"].append({"shape": shape, "budget_gib": budget, "plan": plan.to_dict(),
                                   "predicted_gpu_bytes": gpu_bytes(plan), "rows": rows})
    cal = Calibration.from_records(records)
    summary = []
    for run in report["runs"]:
        rows = [r for r in run["rows"] if r.get("fits") and r.get("decode_tps")]
        plan_row = next((r for r in rows if r.get("plan")), None)
        if not plan_row:
            continue
        best = max(rows, key=lambda r: r["decode_tps"])
        cpu_row = next((r for r in rows if r["ngl"] == 0), None)
        factor = cal.factor(run["shape"])
        errs = [r["predicted_tps"] * factor / r["decode_tps"] - 1 for r in rows]
        vram = plan_row.get("vram_bytes")
        summary.append({
            "shape": run["shape"], "budget_gib": run["budget_gib"], "plan_ngl": plan_row["ngl"],
            "plan_tps": plan_row["decode_tps"], "best_ngl": best["ngl"], "best_tps": best["decode_tps"],
            "plan_vs_best": round(plan_row["decode_tps"] / best["decode_tps"], 3),
            "speedup_vs_cpu": round(plan_row["decode_tps"] / cpu_row["decode_tps"], 2) if cpu_row else None,
            "predicted_gpu_gib": round(run["predicted_gpu_bytes"] / GIB, 2),
            "measured_gpu_gib": round(vram / GIB, 2) if vram else None,
            "vram_error": round(run["predicted_gpu_bytes"] / vram - 1, 3) if vram else None,
            "within_budget": (vram is None or run["budget_gib"] is None or vram <= run["budget_gib"] * GIB),
            "speed_error_uncalibrated": round(plan_row["predicted_tps"] / plan_row["decode_tps"] - 1, 3),
            "speed_error_calibrated_max": round(max(abs(e) for e in errs), 3),
        })
    report["calibration"] = {"per_model": cal.per_model, "machine": cal.machine}
    report["summary"] = summary
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print()
    print(f"{'shape':>5} {'budget':>6} {'plan ngl':>8} {'tok/s':>7} {'best ngl':>8} {'plan/best':>9} {'x CPU':>6} "
          f"{'VRAM pred':>9} {'VRAM meas':>9} {'err':>6} {'speed err':>9} {'cal. max':>8}")
    for s in summary:
        print(f"{s['shape']:>5} {s['budget_gib'] or 0:>6} {s['plan_ngl']:>8} {s['plan_tps']:>7.1f} {s['best_ngl']:>8} "
              f"{s['plan_vs_best']:>9.2f} {s['speedup_vs_cpu'] or 0:>6.2f} {s['predicted_gpu_gib']:>9.2f} "
              f"{s['measured_gpu_gib'] or 0:>9.2f} {s['vram_error'] if s['vram_error'] is not None else '-':>6} "
              f"{s['speed_error_uncalibrated']:>9.3f} {s['speed_error_calibrated_max']:>8.3f}")
    print(f"\nwritten: {args.out}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _memory(info, machine, n_ctx, ngl, plan):
    from runtime.planner.memory import memory_map
    from runtime.planner.search import cpu_margin, gpu_margin, plan_gpus

    gpu = plan_gpus(machine, replace(plan, n_gpu_layers=max(ngl, 1))) if machine.gpus else None
    return memory_map(info, n_gpu_layers=ngl, n_ctx=n_ctx, type_k=plan.type_k, type_v=plan.type_v,
                      n_ubatch=plan.n_ubatch, flash_attn=True, offload_kqv=True, swa_full=True,
                      cpu_capacity=machine.memory.available_bytes, cpu_margin=cpu_margin(machine),
                      gpu=gpu, gpu_margin=gpu_margin)


def _fits(info, machine, n_ctx, ngl, plan) -> bool:
    return all(m.fits for m in _memory(info, machine, n_ctx, ngl, plan))


def _gpu_bytes_for(info, machine, n_ctx, ngl, plan) -> int:
    return sum(m.total for m in _memory(info, machine, n_ctx, ngl, plan) if m.device != "CPU")


if __name__ == "__main__":
    os.environ.setdefault("TANDEM_LOG", "warning")
    sys.exit(main())
