"""Streaming through Tandem to a remote Tandem, against calling the remote directly.

  .venv/bin/python scripts/bench_remote.py [--tokens 256] [--runs 5]

Starts two `tandem serve` processes on free ports with throwaway data folders (the remote, and a
main one with the remote registered as "box"), then alternates the same greedy streaming
/v1/chat/completions request to the remote directly and to the main server as box/MODEL, after a
warm-up of each. Reports the decode tokens/s of each path as the client sees the chunks arrive,
and their ratio. Both servers share this machine's cores: the main server's own cost shows up in
the ratio, unless --remote-threads leaves it a core of its own (as a remote on another computer
would). A benchmark, not a test: it never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

MODEL = "smollm2-135m-instruct-q4_1"
PROMPT = "Tell me a long story about a lighthouse keeper who finds a message in a bottle."


def serve(data: str, threads: int | None = None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "TANDEM_DATA_DIR": data, "TANDEM_SPECULATIVE": "off"}
    if threads:
        env["TANDEM_N_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "tandem.app", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "running at" not in line:
        raise SystemExit(f"tandem serve did not start: {line}")
    return proc, line.split("running at ")[1].split()[0].rstrip("/")


def measure(client: httpx.Client, url: str, model: str, tokens: int) -> float | None:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
            "max_tokens": tokens, "stream": True}
    n, first, last = 0, None, None
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices and (choices[0].get("delta") or {}).get("content"):
                    n += 1
                    last = time.perf_counter()
                    first = first or last
    return (n - 1) / (last - first) if n >= 2 and last > first else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--remote-threads", type=int, default=None,
                    help="the remote's decode threads (default: one per core); fewer leaves this machine's "
                         "other cores to the main server, as when the remote is another computer")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        remote, remote_url = serve(a, args.remote_threads)
        main_proc, main_url = serve(b)
        try:
            with httpx.Client(timeout=300) as client:
                r = client.post(main_url + "/api/remotes", json={"name": "box", "url": remote_url + "/v1"})
                r.raise_for_status()
                paths = {"direct": (remote_url, MODEL), "via tandem": (main_url, f"box/{MODEL}")}
                for url, model in paths.values():  # warm-up: the first measurement of a process is slower
                    measure(client, url, model, args.tokens)
                results = {name: [] for name in paths}
                for r in range(args.runs):  # the order turns each round: whatever follows what hits both alike
                    for name, (url, model) in (list(paths.items()) if r % 2 == 0 else list(paths.items())[::-1]):
                        tps = measure(client, url, model, args.tokens)
                        if tps:
                            results[name].append(tps)
        finally:
            for p in (main_proc, remote):
                p.terminate()
                p.wait(30)
    direct = statistics.median(results["direct"])
    print(f"{args.runs} runs of up to {args.tokens} tokens, greedy, streamed; median decode tok/s as the client sees it")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<12}{med:>8.1f} tok/s   x direct {med / direct:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
