"""Pooling over llama.cpp RPC, measured against the planner's prediction.

  .venv/bin/python scripts/bench_pool.py [--model PATH] [--worker-threads N] [--threads N]
                                         [--layers 1,15,30] [--tokens 128] [--runs 3]

Starts `tandem worker` on a free loopback port (or uses --worker HOST:PORT), probes it, then for
each layer count k: the model on this machine alone and the model with its last k layers on the
worker, each warmed up and then measured --runs times (greedy, the same prompt, median decode
tokens/s; the two measured in turns so that the shared machine's drift hits both alike), beside
the planner's prediction for that split, uncalibrated and with this machine's part calibrated by
its measured speed (as the app does after a few replies). It also reports whether the pooled
text equals the local one, and the measured cost of a token's trip to the worker and back:
1/pooled - 1/alone - (the worker's predicted time for its layers - this machine's for them),
"alone" being the same model in a pool host process without workers, measured in the same turns.
With a worker on this machine both share its cores; --worker-threads plus --threads above the
physical cores makes the two processes' threads contend. A benchmark: it never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tandem.runtime import embedded
from tandem.runtime.engine import LoadParams, ModelWorker, SamplingParams
from tandem.runtime.hardware import probe as probe_hardware
from tandem.runtime.hardware.enginebench import kv_kind, model_kinds
from tandem.runtime.hardware.probe import with_engine_rates
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner import plan_model
from tandem.runtime.planner.pool import plan_pool
from tandem.runtime.planner.search import speed_fill
from tandem.runtime.pool import network
from tandem.runtime.pool.client import PooledWorker

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tandem.app", "worker", "--port", str(port), "--threads", str(threads)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("Tandem worker on"):
            return proc, f"127.0.0.1:{port}"
    raise SystemExit("tandem worker did not start")


def speeds(worker, tokens: int) -> tuple[float, str]:
    finished = worker.submit(PROMPT, SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)).result()
    return finished.stats.decode_tps, finished.text


def in_turns(workers: list, tokens: int, runs: int) -> list[tuple[float, str]]:
    """Median decode tokens/s and the greedy text of each worker, measured in turns (the machine's
    drift hits all alike), after a warm-up of each."""
    texts = [speeds(w, tokens)[1] for w in workers]
    runs_of = [[] for _ in workers]
    for _ in range(runs):
        for i, w in enumerate(workers):
            runs_of[i].append(speeds(w, tokens)[0])
    return [(statistics.median(r), t) for r, t in zip(runs_of, texts)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--worker", help="HOST:PORT of a running worker (default: start one on loopback)")
    ap.add_argument("--worker-threads", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", default="")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = args.model or embedded.default_model_path()
    info = inspect_model(path)
    proc = None
    endpoint = args.worker
    if endpoint is None:
        proc, endpoint = start_worker(args.worker_threads)
    try:
        link = network.probe(endpoint, refresh=True)
        # llama.cpp timed here, as the app times a model's layers before planning it: at every
        # core and at this side's and the worker's thread counts (a worker on this machine runs
        # its layers as this machine would at its thread count)
        workdir = Path(tempfile.gettempdir()) / "tandem-bench-pool"
        workdir.mkdir(exist_ok=True)
        kinds, kv = model_kinds(info), [k for k in [kv_kind(info)] if k]
        hw = probe_hardware(workdir, engine_kinds=kinds, kv_kinds=kv)
        for t in sorted({args.threads, int(link.info.get("threads") or args.threads)}):
            hw = with_engine_rates(hw, workdir, kinds, threads=t, kv_kinds=kv)
        base = plan_model(info, hw, args.n_ctx, threads=args.threads)
        fill = speed_fill(base.n_ctx)
        layers = [int(x) for x in args.layers.split(",") if x] or [1, info.n_layer // 2, info.n_layer]
        local = ModelWorker.open(LoadParams(path, **{**base.load_kwargs(), "rpc": ()}))
        # the same model in a pool host process without workers: the pooled one's own baseline
        alone = PooledWorker.open(LoadParams(path, **{**base.load_kwargs(), "rpc": ()}))
        rows = []
        try:
            for k in layers:
                plan, _ = plan_pool(info, hw, base, [link], fill=fill, local_fits=True, mode="always", layers=k)
                pooled = PooledWorker.open(LoadParams(path, **plan.load_kwargs()))
                try:
                    (local_tps, local_text), (alone_tps, _), (tps, text) = in_turns(
                        [local, alone, pooled], args.tokens, args.runs)
                finally:
                    pooled.close()
                # the moved layers' time on the worker less their time here (the plan's own figures)
                trip_s = plan.pool["network_ms"] / 1000
                compute_delta = plan.pool["worker_seconds"] - trip_s - plan.pool["moved_local_seconds"]
                # this machine's part calibrated by its measured speed (what the app does after 3 replies)
                calibrated = 1 / (1 / local_tps + compute_delta + trip_s)
                rows.append({"layers": k, "local_tps": round(local_tps, 2), "host_alone_tps": round(alone_tps, 2),
                             "pooled_tps": round(tps, 2),
                             "predicted_tps": plan.pool["predicted_tps"],
                             "error": round(plan.pool["predicted_tps"] / tps - 1, 3),
                             "calibrated_tps": round(calibrated, 2), "calibrated_error": round(calibrated / tps - 1, 3),
                             "measured_trip_ms": round((1 / tps - 1 / alone_tps - compute_delta) * 1000, 3),
                             "predicted_trip_ms": plan.pool["network_ms"], "same_text": text == local_text})
        finally:
            local.close()
            alone.close()
        out = {"model": path.name, "endpoint": endpoint, "threads": args.threads,
               "worker_threads": link.info.get("threads"), "rtt_ms": round(link.rtt_s * 1000, 3),
               "bandwidth_mbps": round(link.bandwidth_bps * 8 / 1e6), "rows": rows}
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"{out['model']} over {endpoint}: round trip {out['rtt_ms']} ms, {out['bandwidth_mbps']} Mbit/s; "
                  f"threads here {args.threads}, on the worker {out['worker_threads']}")
            print("layers  local tok/s  host alone  pooled tok/s  predicted (error)  calibrated here (error)  "
                  "trip ms measured / predicted  same text")
            for r in rows:
                print(f"{r['layers']:>6}  {r['local_tps']:>11}  {r['host_alone_tps']:>10}  {r['pooled_tps']:>12}  "
                      f"{r['predicted_tps']:>9} "
                      f"({r['error']:+.1%})  {r['calibrated_tps']:>15} ({r['calibrated_error']:+.1%})  "
                      f"{r['measured_trip_ms']:>8} / {r['predicted_trip_ms']:<8}  {r['same_text']}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
