"""The planner against llama.cpp on this machine: dry runs, real loads, the app and the CLI."""

import subprocess
import sys

import pytest

from tandem.runtime.engine import ModelWorker, LoadParams, SamplingParams
from tandem.runtime.hardware import probe
from tandem.runtime.planner import plan_model, verify
from tandem.runtime.planner.dryrun import LogCapture, dry_run

MIB = 1 << 20


@pytest.fixture(scope="module")
def here(tmp_path_factory):
    return probe(tmp_path_factory.mktemp("hw"))


def agrees(analytic: int, measured: int) -> bool:
    """The issue's bar: within 5%, or 64 MiB for small models."""
    return abs(analytic - measured) <= max(0.05 * measured, 64 * MIB)


@pytest.mark.parametrize("shape", ["smollm2", "gemma3-270m", "1b", "8b"])
@pytest.mark.parametrize("n_ctx", [None, 16384])
def test_analytic_memory_agrees_with_the_dry_run(shapes, here, shape, n_ctx):
    plan = verify(plan_model(shapes[shape], here, n_ctx))
    d = plan.dry_run
    assert d["ok"], d
    assert d["kv_bytes"] == d["analytic_kv_bytes"]  # the KV cache is exact
    assert agrees(d["analytic_total_bytes"], d["total_bytes"]), d
    assert d["seconds"] < 2


def test_dry_run_without_flash_attention_and_quantized_cache(shapes):
    from tandem.runtime.planner.memory import compute_bytes

    info = shapes["smollm2"]
    r = dry_run(info.path, n_ctx=16384, n_gpu_layers=0, n_ubatch=512, n_batch=512, type_k=8, type_v=1,
                flash_attn=False, offload_kqv=True)
    assert r.ok
    assert abs(compute_bytes(info, 16384, 512, flash_attn=False) - r.compute_bytes["CPU"]) < 16 * MIB


def test_dry_run_reports_a_refused_plan(shapes):
    info = shapes["smollm2"]
    r = dry_run(info.path, n_ctx=4096, n_gpu_layers=0, n_ubatch=512, n_batch=512, type_k=8, type_v=8,
                flash_attn=False, offload_kqv=True)  # a quantized V cache without flash attention
    assert not r.ok and r.error


def test_a_real_load_allocates_what_the_plan_predicts(shapes, here):
    info = shapes["smollm2"]
    plan = plan_model(info, here, 8192)
    with LogCapture() as log:
        session = ModelWorker.open(LoadParams(info.path, **plan.load_kwargs()))
    try:
        reported = log.report()
        r = session.complete([{"role": "user", "content": "Hello"}], SamplingParams(temperature=0, max_tokens=8))
        assert r.stats.completion_tokens == 8
    finally:
        session.close()
    cpu = plan.memory[0]
    assert reported["kv_bytes"] == cpu.kv
    assert agrees(cpu.compute, sum(reported["compute_bytes"].values()))


def test_the_app_runs_the_plan_and_records_speed(client, server):
    health = client.get("/api/health").json()["model"]
    plan = client.get(f"/api/models/{health['id']}/plan").json()
    assert plan["loaded"] and plan["n_ctx"] == health["n_ctx"] and plan["dry_run"]["ok"]
    assert plan["n_threads"] == health["n_threads"] and plan["flash_attn"]
    fresh = client.get(f"/api/models/{health['id']}/plan", params={"n_ctx": 2048}).json()
    assert not fresh["loaded"] and fresh["n_ctx"] == 2048
    too_big = client.get(f"/api/models/{health['id']}/plan", params={"n_ctx": 50_000_000})
    assert too_big.status_code == 400 and "largest that fits" in too_big.json()["error"]["message"]

    c = client.post("/api/conversations", json={}).json()
    with client.stream("POST", f"/api/conversations/{c['id']}/messages",
                       json={"content": "Count from 1 to 40.", "max_tokens": 40}) as r:
        r.read()
    from tandem.app.store import Store

    store = Store(server.settings.db_path)
    try:
        rows = list(store.db["measurements"].rows)
    finally:
        store.close()
    assert any(m["source"] == "chat" and m["measured_tps"] > 0 and m["predicted_tps"] > 0 for m in rows)


def test_tandem_plan_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tandem.app", "plan", "--ctx", "2048", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Context 2048 tokens" in r.stdout and "Checked by llama.cpp" in r.stdout
    r = subprocess.run([sys.executable, "-m", "tandem.app", "plan", "--ctx", "99999999", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "largest that fits" in r.stderr and "Traceback" not in r.stderr
