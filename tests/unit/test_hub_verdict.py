"""The verdict before a download is the planner's own plan, summed up; one quant is recommended."""

from dataclasses import replace
from pathlib import Path

import pytest

from tandem.app.hub.verdict import READING_TPS, Verdict, installed_infos, judge, recommend
from tandem.runtime.hardware import load_profile
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner import PlanError, plan_model
from tandem.runtime.synth import preset, write_model

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hardware"


def machine(name):
    return load_profile(FIXTURES / f"{name}.json")


@pytest.mark.parametrize("machine_name", ["rtx3060-desktop", "laptop-4gb-gpu", "cpu-only-8gb-laptop", "two-nvidia-gpus"])
@pytest.mark.parametrize("shape", ["smollm2", "1b", "8b", "13b"])
def test_the_verdict_is_the_plan_the_app_would_load(machine_name, shape, shapes):
    hw, info = machine(machine_name), shapes[shape]
    v = judge(info, hw)
    try:
        plan = plan_model(info, hw, None)
    except PlanError as err:
        assert v.fit == "too_big" and v.reason == str(err) and v.decode_tps is None
        return
    assert v.decode_tps == plan.decode_tps and v.n_ctx == plan.n_ctx
    assert [m["device"] for m in v.memory] == [m.device for m in plan.memory]
    assert sum(m["total"] for m in v.memory) == sum(m.total for m in plan.memory)
    expected = "gpu" if plan.n_gpu_layers == info.n_layer + 1 else "split" if plan.n_gpu_layers else "cpu"
    assert v.fit == expected
    if not hw.gpus:
        assert v.fit == "cpu"


def test_a_model_split_over_gpu_and_cpu_says_what_the_cpu_layers_cost(shapes):
    hw = machine("laptop-4gb-gpu")
    v = judge(shapes["8b"], hw)
    assert v.fit == "split"
    assert 0 < v.speed_cost < 1
    assert f"{v.n_gpu_layers - 1} of {v.n_layer} layers on the GPU" in v.summary()
    assert "slower than all on the GPU" in v.summary()


def test_a_model_too_big_for_this_machine_does_not_fit_and_says_why(shapes):
    hw = machine("cpu-only-8gb-laptop")
    huge = replace(shapes["13b"], layer_bytes=tuple(b * 8 for b in shapes["13b"].layer_bytes))
    v = judge(huge, hw)
    assert v.fit == "too_big" and v.label == "Does not fit"
    assert "GiB" in v.reason and v.memory == []


def test_installed_models_of_the_same_tokenizer_are_offered_as_drafts(tmp_path, model_path, gemma_path):
    # synthetic models carry SmolLM2's tokenizer: the built-in model can draft for a 1B one, Gemma cannot
    target = inspect_model(write_model(tmp_path / "t.gguf", preset("1b"), fill="zeros"))
    installed = installed_infos([{"id": "smol", "path": str(model_path)}, {"id": "gemma", "path": str(gemma_path)},
                                 {"id": "gone", "path": str(tmp_path / "missing.gguf")}])
    assert set(installed) == {"smol", "gemma"}
    v = judge(target, machine("rtx3060-desktop"), installed=installed)
    assert v.drafts == ["smol"]


def _v(fit, bpw, tps):
    return Verdict(fit, fit, decode_tps=tps, bpw=bpw)


def test_the_largest_quant_that_fits_on_the_gpu_is_recommended_over_faster_smaller_ones():
    vs = [_v("gpu", 4.8, 90), _v("gpu", 6.6, 70), _v("gpu", 8.5, 55), _v("gpu", 16.0, 30), _v("split", 16.5, 9)]
    best = recommend(vs)
    assert best is vs[2] and best.recommended and "GPU" in best.why_recommended
    assert sum(v.recommended for v in vs) == 1  # F16 is no better than Q8_0 to a reader, only slower


def test_without_a_gpu_fit_the_best_quality_above_reading_speed_wins():
    vs = [_v("cpu", 2.6, 40), _v("cpu", 4.8, 25), _v("cpu", 6.6, READING_TPS + 1), _v("cpu", 8.5, READING_TPS - 1)]
    assert recommend(vs) is vs[2]
    slow = [_v("cpu", 2.6, 9), _v("cpu", 4.8, 6), _v("cpu", 8.5, 3)]
    assert recommend(slow) is slow[1]  # below reading speed: the fastest of the usable quality
    assert recommend([_v("too_big", 4.8, None)]) is None
