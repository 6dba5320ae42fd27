"""On battery the plan with the least predicted energy per token within 10% of the fastest: fewer
threads when llama.cpp's timings at those counts say they write nearly as fast, the fastest plan
(and why) when they do not; a thread count set in Settings is kept."""

from dataclasses import replace
from pathlib import Path

from tandem.runtime.hardware import load_profile
from tandem.runtime.hardware.enginebench import model_kinds
from tandem.runtime.planner import plan_model
from tandem.runtime.planner.battery import thread_options, token_energy

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hardware"


def laptop(info, on_battery=True, cpu_watts=None, scaling=None):
    """The 4-core laptop fixture, its llama.cpp rates for the model's kinds timed at every core and,
    with `scaling` (threads -> share of the all-core rate), at fewer threads."""
    hw = load_profile(FIXTURES / "cpu-only-8gb-laptop.json")
    hw = replace(hw, memory=replace(hw.memory, available_bytes=16 << 30))
    rates = []
    for kind in model_kinds(info):
        rates.append((kind.key, 20.0))
        rates += [(f"{kind.key}/t{t}", 20.0 * share) for t, share in (scaling or {}).items()]
    return replace(hw, power=replace(hw.power, on_battery=on_battery, cpu_power_limit_w=cpu_watts),
                   memory=replace(hw.memory, engine_rates=tuple(sorted(rates))))


MEMORY_BOUND = {3: 0.99, 2: 0.96, 1: 0.6}  # the bus is full at two threads


def test_thread_options_are_fewer_than_the_cores():
    assert thread_options(4) == [3, 2, 1] and thread_options(2) == [1] and thread_options(1) == []
    assert thread_options(16) == [12, 8, 4]


def test_on_battery_fewer_threads_that_write_nearly_as_fast_are_chosen_and_said(shapes):
    info = shapes["1b"]
    mains = plan_model(info, laptop(info, on_battery=False, scaling=MEMORY_BOUND), 4096)
    assert mains.n_threads == 4 and not any(r.startswith("On battery") for r in mains.reasons)
    hw = laptop(info, scaling=MEMORY_BOUND)
    plan = plan_model(info, hw, 4096)
    assert plan.n_threads == 2 and plan.decode_tps >= mains.decode_tps * 0.9
    assert token_energy(info, hw, plan, False) < token_energy(info, hw, mains, False)
    [why] = [r for r in plan.reasons if r.startswith("On battery")]
    assert "2 threads instead of 4" in why and "busy cores x decode time" in why
    assert "2 threads of 4 physical cores." in plan.reasons
    # with the package's power limit readable, the energy is in joules
    watts = plan_model(info, laptop(info, cpu_watts=28.0, scaling=MEMORY_BOUND), 4096)
    [why] = [r for r in watts.reasons if r.startswith("On battery")]
    assert watts.n_threads == 2 and "J a token predicted" in why and "CPU packages 28 W" in why


def test_on_battery_the_fastest_plan_is_kept_when_fewer_threads_are_much_slower(shapes):
    info = shapes["1b"]
    plan = plan_model(info, laptop(info, scaling={3: 0.8, 2: 0.6, 1: 0.3}), 4096)
    assert plan.n_threads == 4
    [why] = [r for r in plan.reasons if r.startswith("On battery")]
    assert "4 threads kept" in why and "3 threads:" in why and "20% slower" in why


def test_a_thread_count_set_in_settings_is_kept_on_battery(shapes):
    info = shapes["1b"]
    plan = plan_model(info, laptop(info, scaling=MEMORY_BOUND), 4096, threads=4)
    assert plan.n_threads == 4 and not any(r.startswith("On battery") for r in plan.reasons)
