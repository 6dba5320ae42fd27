"""The engine micro-benchmark: llama.cpp's own CPU decode, timed once per machine, feeds the
speed model's host bandwidth."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tandem.app.server import ServerThread
from tandem.runtime.hardware import enginebench, probe
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner.speed import calibration_key, estimate, host_bandwidth
from tandem.runtime.synth import SynthSpec, write_model
from tests.conftest import make_settings


def test_the_reading_reproduces_the_decode_it_timed_in_the_speed_model(tmp_path):
    """The bandwidth derived from a timed decode, put back into the speed model with the slice's
    own file, predicts that decode: the derivation and the model count the same bytes."""
    hw = probe(tmp_path)
    threads = hw.cpu.physical_cores or 1
    reading = enginebench.measure(threads, hw.cpu.l3_bytes, workdir=tmp_path)
    assert reading.bandwidth_gbps > 0 and reading.layers >= 2
    assert not list(tmp_path.glob("tandem-engine-bench-*")), "the slice is removed after timing"

    spec = SynthSpec(n_layer=reading.layers, n_embd=enginebench.N_EMBD, n_head=enginebench.N_HEAD,
                     n_head_kv=enginebench.N_HEAD_KV, n_ff=enginebench.N_FF, n_ctx_train=256,
                     quant=enginebench.QUANT)
    info = inspect_model(write_model(tmp_path / "same-shape.gguf", spec, fill="zeros"))
    timed = replace(hw, memory=replace(hw.memory, engine_bandwidth_gbps=reading.bandwidth_gbps))
    predicted = estimate(info, timed, n_gpu_layers=0, gpu=None, threads=threads, kv_read_gpu=0, kv_read_cpu=0)
    assert predicted.decode_tps == pytest.approx(1 / reading.seconds_per_token, rel=0.01)


def test_probe_times_the_engine_once_and_keeps_it(tmp_path, monkeypatch):
    first = probe(tmp_path, measure_engine=True)
    assert first.memory.engine_bandwidth_gbps and first.memory.engine_bandwidth_gbps > 0
    cache = json.loads((tmp_path / enginebench.CACHE_FILE).read_text())
    (entry,) = cache.values()
    assert entry["bandwidth_gbps"] == first.memory.engine_bandwidth_gbps
    assert entry["build"] == enginebench.build_id()

    def must_not_run(*a, **k):
        raise AssertionError("timed again although this machine's reading is kept")

    monkeypatch.setattr(enginebench, "measure", must_not_run)
    again = probe(tmp_path, measure_engine=True)
    assert again.memory.engine_bandwidth_gbps == first.memory.engine_bandwidth_gbps
    # The speed model uses it, and calibration from replies is kept apart from the numpy basis.
    read_only = replace(again, memory=replace(again.memory, engine_bandwidth_gbps=None))
    cores = again.cpu.physical_cores or 1
    assert host_bandwidth(again, cores) == pytest.approx(again.memory.engine_bandwidth_gbps * 1e9)
    assert host_bandwidth(read_only, cores) == pytest.approx(again.memory.read_bandwidth_gbps * 1e9)
    assert calibration_key(again) != calibration_key(read_only)


def test_a_damaged_cache_is_timed_again_and_a_failed_timing_leaves_the_read_bandwidth(tmp_path, monkeypatch):
    (tmp_path / enginebench.CACHE_FILE).write_text("{not json")

    def fails(*a, **k):
        raise RuntimeError("llama.cpp could not load the slice")

    monkeypatch.setattr(enginebench, "measure", fails)
    hw = probe(tmp_path, measure_engine=True)
    assert hw.memory.engine_bandwidth_gbps is None
    assert hw.memory.read_bandwidth_gbps
    assert any("engine_bandwidth" in p and "could not load the slice" in p for p in hw.problems)


def test_the_app_times_the_engine_at_its_first_start_and_shows_it(tmp_path):
    settings = make_settings(tmp_path, engine_bench=True)
    with ServerThread(settings) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        hw = client.get("/api/hardware").json()
        assert hw["memory"]["engine_bandwidth_gbps"] > 0
        assert (Path(tmp_path) / enginebench.CACHE_FILE).exists()
        plan = client.get("/api/models/" + client.get("/v1/models").json()["data"][0]["id"] + "/plan").json()
        assert plan["decode_tps"] > 0 and plan["speed_basis"] == "estimated"
