"""The engine micro-benchmark: llama.cpp's own CPU decode of each weight type, timed once per
machine, feeds the speed model's CPU term."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tandem.app.report import engine_text, hardware_text, kv_text
from tandem.app.server import ServerThread
from tandem.runtime import embedded
from tandem.runtime.hardware import HardwareProfile, enginebench, load_profile, probe
from tandem.runtime.hardware.probe import with_engine_rates, with_gpu_rates
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner import speed
from tandem.runtime.planner.speed import calibration_key, cpu_rate, estimate, kv_seconds
from tandem.runtime.synth import write_model
from tests.conftest import make_settings

MODEL = "smollm2-135m-instruct-q4_1"
FIXTURES = Path(__file__).parent.parent / "fixtures" / "hardware"


def test_a_timed_rate_put_back_into_the_speed_model_predicts_the_decode_it_timed(tmp_path):
    """The derivation and the speed model count the same bytes and costs."""
    hw = probe(tmp_path)
    threads = hw.cpu.physical_cores or 1
    kind = enginebench.kind_for("Q4_0")
    reading = enginebench.measure(kind, threads, workdir=tmp_path)
    assert reading.rate_gbps > 0 and reading.layers == kind.layers >= enginebench.MIN_LAYERS
    assert reading.slice_bytes <= enginebench.MAX_SLICE_BYTES + 200 << 20  # the layers, and the output matrix
    assert not list(tmp_path.glob("tandem-engine-bench-*")), "the slice is removed after timing"

    info = inspect_model(write_model(tmp_path / "same.gguf", kind.spec(), fill="zeros"))
    assert enginebench.kind_for("Q4_0", info) == kind
    timed = replace(hw, memory=replace(hw.memory, engine_rates=((kind.key, reading.rate_gbps),)))
    predicted = estimate(info, timed, n_gpu_layers=0, gpu=None, threads=threads, kv_read_gpu=0, kv_read_cpu=0)
    # F32 norms (0.01% of the bytes) run at the bandwidth the Q4_0 rate implies: within 1%; a reply
    # also samples each token, which the timed decode did not
    sampling = info.vocab_size * speed.SAMPLE_S_PER_ENTRY
    assert predicted.decode_tps == pytest.approx(1 / (reading.seconds_per_token + sampling), rel=0.01)


def test_a_slice_small_enough_to_stay_in_the_caches_is_not_timed(tmp_path):
    """A toy model's slice decodes from the CPU's caches in a fraction of a millisecond: its time
    says nothing about weights streaming from memory, so it is refused before anything is written."""
    tiny = enginebench.Kind("Q4_0", 64, 128, 4, 2, layers=2)
    with pytest.raises(ValueError, match="too small to time"):
        enginebench.measure(tiny, 1, workdir=tmp_path)
    assert not list(tmp_path.iterdir())
    # beside a kind that can be timed: that one still is
    q8 = enginebench.kind_for("Q8_0", inspect_model(embedded.default_model_path()))
    profile = with_engine_rates(probe(tmp_path), tmp_path, [tiny, q8])
    assert [k for k, _ in profile.memory.engine_rates] == [q8.key]
    assert any(tiny.key in p and "stays in the CPU's caches" in p for p in profile.problems)


def test_a_slice_takes_the_models_own_shape_where_its_type_allows(shapes):
    smol = shapes["smollm2"]
    own = enginebench.kind_for("Q4_1", smol)
    assert (own.n_embd, own.n_ff, own.layers) == (smol.n_embd, smol.n_ff, smol.n_layer)
    # 576 is no whole number of Q4_K's 256-wide blocks: the standard 1B shape, up to 1 GiB of it
    std = enginebench.kind_for("Q4_K", smol)
    assert (std.n_embd, std.n_ff) == enginebench.STANDARD_SHAPE[:2] and std.layers > smol.n_layer
    gemma = shapes["gemma3-270m"]  # heads 256 wide, not 640 / 4: the slice takes them
    wide = enginebench.kind_for("Q8_0", gemma)
    assert (wide.n_embd, wide.head_dim, wide.query_dim) == (640, 256, 1024) and wide.key.endswith("h256")
    assert enginebench.parse_key(wide.key) == wide
    # sizes no model has (a damaged or hostile file's header): no slice of them is written
    huge = replace(smol, n_embd=1 << 20, n_ff=1 << 24, n_head=16, n_head_kv=(4,) * smol.n_layer, head_dim_k=1 << 16, head_dim_v=1 << 16)
    assert (enginebench.kind_for("Q4_0", huge).n_embd, enginebench.kind_for("Q4_0", huge).n_ff) == enginebench.STANDARD_SHAPE[:2]
    big = enginebench.kind_for("Q4_0", shapes["8b"])
    assert big.n_embd == 4096 and 2 <= big.layers < shapes["8b"].n_layer  # 1 GiB of its 32 layers
    assert enginebench.parse_key(big.key) == big and enginebench.parse_key("Q4_0@1x2") is None


def test_the_timing_runs_in_a_thread_that_ends(tmp_path, monkeypatch):
    """llama.cpp's OpenMP team lives with the thread that computed; one left behind in a server's
    thread makes every later model's decode wait passively."""
    seen = {}

    def fake(kind, threads, workdir, kv):
        seen["thread"] = threading.current_thread()
        return "reading"

    monkeypatch.setattr(enginebench, "_measure", fake)
    assert enginebench.measure(enginebench.kind_for("Q4_0"), 1) == "reading"
    assert seen["thread"] is not threading.current_thread() and not seen["thread"].is_alive()


def test_each_kind_is_timed_once_and_kept(tmp_path, monkeypatch, shapes):
    smol = shapes["smollm2"]
    q41, q80 = enginebench.kind_for("Q4_1", smol), enginebench.kind_for("Q8_0", smol)
    first = with_engine_rates(probe(tmp_path), tmp_path, [q41])
    rate = first.memory.engine_rate(q41.key)
    assert rate > 0 and first.memory.engine_rates == ((q41.key, rate),)
    calls = []
    real = enginebench.measure

    def counting(kind, *a, **k):
        calls.append(kind.key)
        return real(kind, *a, **k)

    monkeypatch.setattr(enginebench, "measure", counting)
    again = probe(tmp_path, engine_kinds=[q41, q80])
    assert calls == [q80.key], "only the kind not timed before is timed"
    assert again.memory.engine_rate(q41.key) == rate and again.memory.engine_rate(q80.key) > 0
    assert probe(tmp_path, engine_kinds=[]).memory.engine_rates == again.memory.engine_rates
    assert calls == [q80.key]
    # The speed model uses the timed rates for the model's types, and calibration from replies is
    # kept apart from predictions made on the numpy read.
    untimed = replace(again, memory=replace(again.memory, engine_rates=(), kv_costs=()))
    cores = again.cpu.physical_cores or 1
    assert cpu_rate(smol, again, cores) != pytest.approx(cpu_rate(smol, untimed, cores), rel=1e-3)
    assert calibration_key(again) != calibration_key(untimed)


def test_a_damaged_cache_is_timed_again_and_a_failed_timing_leaves_the_read_bandwidth(tmp_path, monkeypatch):
    (tmp_path / enginebench.CACHE_FILE).write_text("{not json")

    def fails(*a, **k):
        raise RuntimeError("llama.cpp could not load the slice")

    monkeypatch.setattr(enginebench, "measure", fails)
    hw = probe(tmp_path, engine_kinds=[enginebench.kind_for("Q4_0")])
    assert hw.memory.engine_rates == () and hw.memory.read_bandwidth_gbps
    assert any("engine_rates" in p and "could not load the slice" in p for p in hw.problems)
    assert enginebench.main_types({"Q4_K": 70, "Q6_K": 25, "F32": 5, "IQ2_XS": 30}) == ["Q4_K", "Q6_K"]


def test_the_app_times_the_default_models_type_before_loading_it_and_shows_it(tmp_path):
    with ServerThread(make_settings(tmp_path, engine_bench=True)) as server, \
            httpx.Client(base_url=server.url, timeout=120) as client:
        hw = client.get("/api/hardware").json()
        rates = {key.split("@")[0]: gbps for key, gbps in hw["memory"]["engine_rates"]}
        assert rates.get("Q4_1", 0) > 0 and rates.get("Q8_0", 0) > 0, hw["memory"]
        assert {t.split("@")[0] for t, _ in hw["memory"]["kv_costs"]} == {"f16", "q8_0", "q4_0"}
        assert (tmp_path / enginebench.CACHE_FILE).exists()
        plan = client.get(f"/api/models/{MODEL}/plan").json()
        assert plan["loaded"] and plan["decode_tps"] > 0


def test_the_cost_of_a_filled_cache_is_timed_per_kv_type_in_the_models_own_layers(tmp_path, shapes):
    """The slice of the model's main type is decoded again with a filled cache of each KV type
    (the cache made by a cheap model of the same cache shape and loaded into the slice); the
    speed model charges each cached position of each CPU layer at that cost, and prices a model
    of another shape from it per query dimension."""
    smol = shapes["smollm2"]
    kind = enginebench.kv_kind(smol)
    assert kind == enginebench.kind_for("Q4_1", smol)  # its main type, in its own shape
    hw = probe(tmp_path)
    assert probe(tmp_path, engine_kinds=[]).memory.kv_costs == ()  # nothing kept: reading it times nothing
    timed = with_engine_rates(hw, tmp_path, [kind], kv_kinds=[kind])
    costs = dict(timed.memory.kv_costs)
    assert set(costs) == {f"{t}@{kind.key}" for t in enginebench.KV_TYPES} and all(ns >= 0 for ns in costs.values())
    assert not list(tmp_path.glob("tandem-engine-bench-*")), "the slice and the cheap model are removed"
    assert probe(tmp_path, engine_kinds=[]).memory.kv_costs == timed.memory.kv_costs
    cores = timed.cpu.physical_cores or 1
    prices = {"f16": 100.0, "q8_0": 30.0, "q4_0": 50.0}
    priced = replace(timed, memory=replace(timed.memory, kv_costs=tuple((f"{t}@{kind.key}", ns) for t, ns in prices.items())))
    extra = kv_seconds(smol, priced, "f16", 1000, range(smol.n_layer), cores)
    assert extra == pytest.approx(100e-9 * 1000 * smol.n_layer)
    assert kv_seconds(smol, priced, "q8_0", 1000, range(smol.n_layer), cores) == pytest.approx(30e-9 * 1000 * smol.n_layer)
    # a type the model can have left untimed: every type is priced by the KV bytes read, alike
    partly = replace(timed, memory=replace(timed.memory, kv_costs=((f"f16@{kind.key}", 100.0),)))
    assert all(kv_seconds(smol, partly, t, 1000, range(smol.n_layer), cores) is None for t in prices)
    big = shapes["1b"]
    per_dim = 100.0 / kind.n_embd * big.n_head * big.head_dim_k
    assert kv_seconds(big, priced, "f16", 1000, range(4), cores) == pytest.approx(per_dim * 1e-9 * 1000 * 4)
    fast = estimate(smol, priced, n_gpu_layers=0, gpu=None, threads=cores, kv_read_gpu=0, kv_read_cpu=0, type_k="f16", fill=0)
    slow = estimate(smol, priced, n_gpu_layers=0, gpu=None, threads=cores, kv_read_gpu=0, kv_read_cpu=0, type_k="f16",
                    fill=1000)
    assert 1 / slow.decode_tps - 1 / fast.decode_tps == pytest.approx(extra, rel=1e-6)


def test_a_plan_with_fewer_threads_is_predicted_from_timings_at_that_count(tmp_path, shapes, monkeypatch):
    """Settings' thread count below the cores: the app times the model's kinds and the KV costs at
    that count too (kept under keys ending in /tN), and the speed model uses them for such a plan
    instead of the all-core timings scaled by a fitted thread factor."""
    from tandem.app.services.hardware import HardwareService
    from tandem.runtime.planner.speed import thread_factor, type_rate

    cores = probe(tmp_path).cpu.physical_cores or 1
    if cores < 2:
        pytest.skip("one core: every plan runs at every core")
    smol = shapes["smollm2"]
    service = HardwareService(make_settings(tmp_path, engine_bench=True, n_threads=1))
    hw = service.for_model(smol)
    rates = dict(hw.memory.engine_rates)
    costs = dict(hw.memory.kv_costs)
    q41 = enginebench.kind_for("Q4_1", smol).key
    assert rates[q41] > 0 and rates[q41 + "/t1"] > 0
    assert {f"{t}@{q41}{s}" for t in enginebench.KV_TYPES for s in ("", "/t1")} == set(costs)
    assert type_rate(smol, hw, "Q4_1", 1) == rates[q41 + "/t1"]
    assert type_rate(smol, hw, "Q4_1", cores) == rates[q41]
    one = estimate(smol, hw, n_gpu_layers=0, gpu=None, threads=1, kv_read_gpu=0, kv_read_cpu=0, type_k="f16", fill=1000)
    scaled = replace(hw, memory=replace(hw.memory, engine_rates=tuple((k, v) for k, v in rates.items() if "/t" not in k),
                                        kv_costs=tuple((k, v) for k, v in costs.items() if "/t" not in k)))
    assert type_rate(smol, scaled, "Q4_1", 1) == pytest.approx(rates[q41] * thread_factor(scaled, 1))
    fallback = estimate(smol, scaled, n_gpu_layers=0, gpu=None, threads=1, kv_read_gpu=0, kv_read_cpu=0, type_k="f16",
                        fill=1000)
    assert one.decode_tps != pytest.approx(fallback.decode_tps, rel=1e-3)
    # kept: a new service (the app started again) times nothing and reads them back
    again = HardwareService(make_settings(tmp_path, engine_bench=True, n_threads=1))
    monkeypatch.setattr(enginebench, "measure", lambda *a, **k: pytest.fail("timed again"))
    back = again.for_model(smol)
    assert dict(back.memory.engine_rates) == rates and dict(back.memory.kv_costs) == costs
    assert "with 1 thread" in engine_text(back) and "with 1 thread" in kv_text(back)
    # shown from the start (the Hardware page before any model loads), and measured again on asking
    fresh = HardwareService(make_settings(tmp_path, engine_bench=True, n_threads=1))
    assert dict(fresh.profile().memory.engine_rates) == rates and dict(fresh.profile().memory.kv_costs) == costs
    timed = []

    def remeasured(kind, threads, workdir=None, kv=False):
        timed.append((kind.key, threads, kv))
        return enginebench.EngineReading(kind.key, kind.quant, 1.0 + threads, 1e-3, 1, 1, threads, 0.0,
                                         enginebench.build_id(), {t: 100.0 for t in enginebench.KV_TYPES} if kv else None)

    monkeypatch.setattr(enginebench, "measure", remeasured)
    again = fresh.profile(remeasure=True).memory
    assert (q41, cores, True) in timed and (q41, 1, True) in timed
    assert again.engine_rate(q41) == 1.0 + cores and again.engine_rate(q41 + "/t1") == 2.0


def test_a_gpu_timing_put_back_into_the_speed_model_predicts_the_decodes_it_timed(tmp_path, shapes):
    """The GPU reading's two decodes (the slice wholly on the GPU, then with its first layer on the
    CPU) give a rate and a hand-off that the speed model turns back into those two times: the
    derivation and the model count the same bytes, launches and crossings. (Times as an H200 host
    might give them: this machine has no GPU to time.)"""
    hw = load_profile(FIXTURES / "h200-16core-host.json")
    kind = enginebench.kind_for("Q4_0", shapes["7b"])
    info = inspect_model(write_model(tmp_path / "slice.gguf", kind.spec(), fill="zeros"))
    one_layer = info.layer_bytes[0]
    full_s, split_s, cpu_gbps = 0.00195, 0.00535, 35.0
    rate = enginebench.gpu_rate_from(full_s, kind.layers, one_layer, kind.weight_bytes - kind.layers * one_layer)
    handoff = enginebench.handoff_from(split_s, full_s, one_layer, rate, cpu_gbps)
    assert 0 < handoff < 1e-3
    gpu = replace(hw.gpus[0], engine_rates=((kind.key, rate),), handoff_s=handoff)
    timed = replace(hw, gpus=(gpu,), memory=replace(hw.memory, engine_rates=((kind.key, cpu_gbps),)))
    threads = hw.cpu.physical_cores

    def predict(n_gpu_layers):
        return estimate(info, timed, n_gpu_layers=n_gpu_layers, gpu=gpu, threads=threads, kv_read_gpu=0,
                        kv_read_cpu=0).decode_tps

    sampling = info.vocab_size * speed.SAMPLE_S_PER_ENTRY  # a reply samples each token; the timed decodes did not
    assert predict(kind.layers + 1) == pytest.approx(1 / (full_s + sampling), rel=0.01)
    assert predict(kind.layers) == pytest.approx(1 / (split_s + sampling), rel=0.01)
    # a filled cache timed there: each cached position and layer at its type's timed cost
    costs = {"f16": 20.0, "q8_0": 35.0, "q4_0": 50.0}
    kv_timed = replace(gpu, kv_costs=tuple((f"{t}@{kind.key}", ns) for t, ns in costs.items()))
    for kv_type, ns in costs.items():
        got = estimate(info, replace(timed, gpus=(kv_timed,)), n_gpu_layers=kind.layers + 1, gpu=kv_timed,
                       threads=threads, kv_read_gpu=0, kv_read_cpu=0, type_k=kv_type, fill=1024).decode_tps
        assert 1 / got == pytest.approx(full_s + sampling + ns * 1e-9 * 1024 * kind.layers, rel=0.01)
    # one type untimed: the KV bytes read stand for them all, so that the types compared are priced alike
    partial = replace(gpu, kv_costs=tuple((f"{t}@{kind.key}", ns) for t, ns in costs.items() if t != "q4_0"))
    assert speed.gpu_kv_seconds(info, partial, "f16", 1024, range(kind.layers)) is None
    # not timed there: the card's bandwidth and the fitted hand-off, another prediction
    untimed = estimate(info, replace(timed, gpus=hw.gpus), n_gpu_layers=kind.layers + 1, gpu=hw.gpus[0],
                       threads=threads, kv_read_gpu=0, kv_read_cpu=0).decode_tps
    assert abs(untimed * (full_s + sampling) - 1) > 0.05
    # a GPU timing faster than its launches allow is refused, and no crossing costs less than nothing
    with pytest.raises(ValueError, match="less than its kernel launches"):
        enginebench.gpu_rate_from(1e-4, kind.layers, one_layer, 0)
    assert enginebench.handoff_from(full_s, full_s, one_layer, rate, cpu_gbps) == 0.0
    assert calibration_key(timed) != calibration_key(replace(timed, gpus=hw.gpus))


def test_a_build_that_cannot_offload_times_nothing_on_a_gpu(tmp_path, shapes):
    """This machine's llama.cpp has no GPU backend: a GPU timing is refused before anything is
    written, and a profile that claims a usable GPU (a captured one) keeps it, untimed, with the
    reason among its problems."""
    kind = enginebench.kind_for("Q4_1", shapes["smollm2"])
    gpu = load_profile(FIXTURES / "laptop-4gb-gpu.json").gpus[0]
    if enginebench.gpu_backend():
        pytest.skip("this build offloads to a GPU here: scripts/gpu_validate.py times it")
    with pytest.raises(ValueError, match="no GPU backend"):
        enginebench.measure_gpu(kind, gpu, 1, None, workdir=tmp_path)
    assert not list(tmp_path.iterdir())
    here = probe(tmp_path)
    claimed = replace(here, gpus=(gpu,), engine=replace(here.engine, supports_gpu_offload=True))
    timed = with_gpu_rates(claimed, tmp_path, [kind])
    assert timed.gpus == (gpu,) and any("gpu_rates" in p and "no GPU backend" in p for p in timed.problems)
    assert with_gpu_rates(replace(claimed, engine=here.engine), tmp_path, [kind]) == replace(claimed, engine=here.engine)
    # what a GPU timing leaves in a profile survives its JSON, and `tandem hardware` says it
    saved = replace(claimed, gpus=(replace(gpu, engine_rates=((kind.key, 142.5),), handoff_s=0.0004,
                                           kv_costs=((f"f16@{kind.key}", 21.0),)),))
    again = HardwareProfile.from_json(saved.to_json())
    assert again == saved
    text = hardware_text(again)
    assert "Q4_1 in 576-wide layers 142.5 GB/s; a CPU-GPU hand-off 0.40 ms a token (timed on this GPU)" in text
    assert "attention over a filled cache here: Q4_1 in 576-wide layers: f16 21 ns" in text


def test_the_gpu_timings_steps_run_end_to_end_with_the_cpu_standing_in_for_the_gpu(tmp_path, monkeypatch):
    """No GPU here: with the build's answer to "can it offload" taken as yes, llama.cpp keeps the
    slice on the CPU, and every step of the GPU timing runs for real as the app takes it before a
    model loads (the slice written, loaded whole and split, the filled caches timed, the readings
    kept and read back, the files gone). The figures are the CPU's; a GPU host's are what
    scripts/gpu_validate.py checks."""
    from tandem.app.services.hardware import HardwareService

    info = inspect_model(embedded.default_model_path())
    kinds = enginebench.model_kinds(info)
    service = HardwareService(make_settings(tmp_path, engine_bench=True))
    here = service.profile()
    laptop = load_profile(FIXTURES / "laptop-4gb-gpu.json")
    claimed = replace(here, gpus=(replace(laptop.gpus[0], index=0), laptop.gpus[1]),
                      engine=replace(here.engine, supports_gpu_offload=True))
    service._profile = claimed
    monkeypatch.setattr(enginebench, "gpu_backend", lambda: True)
    timed = service.for_model(info)
    assert timed.problems == claimed.problems
    gpu, igpu = timed.gpus
    assert {k for k, _ in gpu.engine_rates} == {k.key for k in kinds} and all(v > 0 for _, v in gpu.engine_rates)
    assert gpu.handoff_s is not None  # the CPU's rate of that kind was timed first
    assert {k.partition("@")[0] for k, _ in gpu.kv_costs} == {"f16", "q8_0", "q4_0"}
    assert igpu == laptop.gpus[1]  # integrated: no plan offloads to it, nothing timed
    assert not list(tmp_path.glob("**/tandem-engine-bench-*"))

    def refused(*args, **kw):
        raise AssertionError("a kind kept for this GPU was timed again")

    monkeypatch.setattr(enginebench, "measure_gpu", refused)
    assert service.for_model(info).gpus == timed.gpus  # timed once, in this run
    # and kept: a later run reads them back
    assert with_gpu_rates(claimed, service.settings.data_dir, kinds, kv_kinds=[enginebench.kv_kind(info)]).gpus == timed.gpus


def test_a_kept_reading_whose_figures_are_no_numbers_is_timed_again():
    """A damaged or hand-edited cache file: a rate that is text, a cost that is not finite or a
    negative hand-off would reach the speed model's arithmetic; such entries are left out (timed
    again), sound ones kept."""
    good = dict(key="Q4_0@k", quant="Q4_0", rate_gbps=20.0, seconds_per_token=0.01, layers=2, slice_bytes=1,
                threads=2, seconds=1.0, build="b", kv_ns={"f16": 120.0})
    gpu = dict(key="Q4_0@k", quant="Q4_0", gpu=0, rate_gbps=300.0, seconds_per_token=0.001,
               split_seconds_per_token=0.002, handoff_s=0.0002, layers=2, slice_bytes=1, seconds=1.0, build="b")
    cache = {"p:good": good, "p:text": {**good, "rate_gbps": "fast"}, "p:zero": {**good, "rate_gbps": 0},
             "p:nan": {**good, "kv_ns": {"f16": float("nan")}}, "p:list": {**good, "kv_ns": [1, 2]},
             "p:old": {"rate": 3}, "q:gpu": gpu, "q:back": {**gpu, "handoff_s": -1.0}, "q:none": {**gpu, "handoff_s": None}}
    assert set(enginebench._kept(cache, "p:", enginebench.EngineReading)) == {"good"}
    assert set(enginebench._kept(cache, "q:", enginebench.GpuReading)) == {"gpu", "none"}
