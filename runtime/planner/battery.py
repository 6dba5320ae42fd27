"""On battery: the plan with the least predicted energy per token within 10% of the fastest.

Decode from memory saturates the memory bus before it uses every core: fewer threads often write
nearly as fast while the cores left idle draw little. The alternatives are therefore the plan at
fewer threads (three quarters, half and a quarter of the physical cores), each the fastest
placement at that count.

The power model, a token's energy = the CPU's decode time x the share of the package's cores it
keeps busy x the packages' long-term power limit (RAPL constraint 0) + the GPU's decode time x its
power limit (NVML). It is an upper bound of each side's draw, not a measurement, and it was not
validated (no machine with a readable energy counter was at hand); it only chooses among plans
predicted within 10% of the fastest, so what it can cost is bounded by that. Where a limit is
unknown, plans are compared by the CPU's busy core-seconds among those with the fastest plan's
GPU placement (the GPU's share then being the same), which ranks them alike whatever the watts.
"""

from __future__ import annotations

from dataclasses import replace
from math import ceil
from typing import Callable

from tandem.runtime.hardware.profile import HardwareProfile
from tandem.runtime.model_info import ModelInfo
from tandem.runtime.planner.plan import Plan

BATTERY_SLACK = 0.10  # the speed given up at most for less energy


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"


def thread_options(cores: int) -> list[int]:
    """The thread counts tried on battery besides every core."""
    return sorted({max(1, ceil(cores * f)) for f in (0.75, 0.5, 0.25)} - {cores}, reverse=True)


def token_energy(info: ModelInfo, hw: HardwareProfile, plan: Plan, absolute: bool) -> float:
    """Predicted joules per token (absolute), else busy core-seconds per token of the CPU."""
    from tandem.runtime.planner.search import plan_gpus, speed_fill, _speed

    gset = plan_gpus(hw, plan)
    e = _speed(info, hw, gset, plan.n_gpu_layers, plan.type_k, plan.n_threads, speed_fill(plan.n_ctx), 1.0)
    seconds = 1.0 / plan.decode_tps
    cpu_s, gpu_s = seconds * e.cpu_share, seconds * (1.0 - e.cpu_share)
    if not absolute:
        return cpu_s * plan.n_threads
    cores = hw.cpu.physical_cores or plan.n_threads
    gpu_w = sum(g.power_limit_w or 0.0 for g in (gset.gpus if gset else ()))
    return cpu_s * min(1.0, plan.n_threads / cores) * hw.power.cpu_power_limit_w + gpu_s * gpu_w


def prefer_on_battery(info: ModelInfo, hw: HardwareProfile, fastest: Plan,
                      plan_at: Callable[[int], Plan | None]) -> Plan:
    """`fastest` on mains; on battery the plan (fastest, or plan_at(threads) for fewer threads)
    with the least predicted energy per token among those within BATTERY_SLACK of its speed,
    with a reason saying what was chosen and why."""
    if not hw.power.on_battery or fastest.decode_tps <= 0:
        return fastest
    from tandem.runtime.planner.search import plan_gpus

    cores = hw.cpu.physical_cores or fastest.n_threads
    options = [fastest] + [p for t in thread_options(cores) if t < fastest.n_threads
                           for p in [plan_at(t)] if p is not None and p.decode_tps > 0]
    gpus = [g for p in options for gset in [plan_gpus(hw, p)] if gset for g in gset.gpus]
    absolute = hw.power.cpu_power_limit_w is not None and all(g.power_limit_w for g in gpus)
    if not absolute:
        options = [p for p in options if (p.n_gpu_layers, p.gpu_index) == (fastest.n_gpu_layers, fastest.gpu_index)]
    cost = {id(p): token_energy(info, hw, p, absolute) for p in options}
    within = [p for p in options if p.decode_tps >= fastest.decode_tps * (1 - BATTERY_SLACK)]
    best = min(within, key=lambda p: (cost[id(p)], -p.decode_tps))
    if absolute:
        how = (f"{cost[id(best)]:.2f} J a token predicted against {cost[id(fastest)]:.2f} J, from the power limits "
               f"(CPU packages {hw.power.cpu_power_limit_w:.0f} W" +
               "".join(f", {g.name} {g.power_limit_w:.0f} W" for g in gpus[:1]) + ")")
    else:
        how = "counted as busy cores x decode time: this machine's power limits are not readable here"
    if best is fastest:
        thrifty = [p for p in options if cost[id(p)] < cost[id(fastest)]]
        if thrifty:
            p = max(thrifty, key=lambda q: q.decode_tps)  # the least slow of them
            reason = (f"On battery: {fastest.n_threads} threads kept. Fewer threads would use less energy per token "
                      f"({_threads(p.n_threads)}: {1 - cost[id(p)] / cost[id(fastest)]:.0%} less) but are predicted "
                      f"{1 - p.decode_tps / fastest.decode_tps:.0%} slower, more than the {BATTERY_SLACK:.0%} "
                      "given up for energy.")
        else:
            reason = (f"On battery: {fastest.n_threads} threads, the fastest plan, also use the least energy per token "
                      "predicted.")
    else:
        saved = 1 - cost[id(best)] / cost[id(fastest)]
        reason = (f"On battery: {best.n_threads} threads instead of {fastest.n_threads}, predicted {best.decode_tps:.1f} "
                  f"tokens/s, within {BATTERY_SLACK:.0%} of the fastest ({fastest.decode_tps:.1f}), for {saved:.0%} less "
                  f"energy per token ({how}).")
    return replace(best, reasons=best.reasons + (reason,))
