"""Pooling's pure logic: the pooled plan's choices, the worker's refusals and allow-list, the wire."""

from dataclasses import replace
from pathlib import Path

import pytest

from tandem.runtime.engine.stream import Failed, Finished, ReplyStats, Started, Token, TokenLogprob
from tandem.runtime.errors import ContextOverflow, PoolFailure
from tandem.runtime.hardware import load_profile
from tandem.runtime.planner import PlanError, plan_model
from tandem.runtime.planner.pool import network_seconds, plan_pool
from tandem.runtime.pool.network import Link, split_endpoint
from tandem.runtime.pool.wire import decode_event, encode_event
from tandem.runtime.pool.worker import WorkerConfig, WorkerRefused

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hardware"
GIB = 1 << 30


def machine(name: str):
    return load_profile(FIXTURES / f"{name}.json")


def link(endpoint="10.0.0.2:50052", free=16 * GIB, rtt=0.3e-3, bw=117e6, read_gbps=40.0, cores=8, gpu=None):
    served = [{"name": "CPU", "description": "a CPU", "type": "cpu", "free_bytes": free, "total_bytes": free}]
    if gpu:
        served = [{"name": "CUDA0", "description": gpu, "type": "gpu", "free_bytes": free, "total_bytes": free}]
    info = {"tandem_worker": 1, "served": served, "devices": served, "physical_cores": cores, "threads": cores,
            "read_gbps": read_gbps}
    return Link(endpoint, rtt, bw, bw, info, 0.0)


def test_a_model_too_big_for_this_machine_is_pooled_and_each_side_fits(shapes):
    hw, info = machine("cpu-only-8gb-laptop"), shapes["13b"]
    with pytest.raises(PlanError):
        plan_model(info, hw, 4096)
    bigger = replace(hw, memory=replace(hw.memory, available_bytes=hw.memory.available_bytes + 16 * GIB))
    base = plan_model(info, bigger, 4096)
    plan, reasons = plan_pool(info, hw, base, [link()], fill=2048, local_fits=False)
    assert plan is not None and plan.pool["n_layers"] >= 1
    assert "does not fit this machine alone" in reasons[0]
    cpu = next(m for m in plan.memory if m.device == "CPU")
    assert cpu.total + cpu.margin <= hw.memory.available_bytes
    [worker] = plan.pool["workers"]
    assert worker["need_bytes"] <= worker["usable_bytes"]
    assert plan.load_kwargs()["rpc"] == ("10.0.0.2:50052",) and plan.load_kwargs()["n_gpu_layers"] == plan.pool["n_layers"]


def test_pooling_a_model_that_fits_over_a_slow_link_is_refused_with_the_numbers(shapes):
    hw, info = machine("dev-vm-epyc-2core"), shapes["smollm2"]
    base = plan_model(info, hw, 4096)
    plan, reasons = plan_pool(info, hw, base, [link(rtt=5e-3, read_gbps=5)], fill=1024, local_fits=True)
    assert plan is None
    assert "not used" in reasons[0] and "tok/s" in reasons[0] and "ms a token" in reasons[0]


def test_a_much_faster_worker_gpu_is_worth_the_network(shapes):
    hw, info = machine("dev-vm-epyc-2core"), shapes["7b"]
    base = plan_model(info, hw, 4096)
    plan, _ = plan_pool(info, hw, base, [link(gpu="NVIDIA GeForce RTX 4090", free=24 * GIB)], fill=1024,
                        local_fits=True)
    assert plan is not None and plan.decode_tps > base.decode_tps * 1.05
    # every layer that can go to the fast card does, the output among them (llama.cpp counts it as one)
    assert plan.pool["n_layers"] == info.n_layer + 1 and plan.pool["output"]


def test_always_pools_when_asked_and_layers_can_be_set(shapes):
    hw, info = machine("dev-vm-epyc-2core"), shapes["smollm2"]
    base = plan_model(info, hw, 4096)
    plan, reasons = plan_pool(info, hw, base, [link(endpoint="127.0.0.1:5000")], fill=1024, local_fits=True,
                              mode="always", layers=10)
    assert plan is not None and plan.pool["n_layers"] == 10 and plan.n_gpu_layers == 10
    # as llama.cpp offloads 10: the last 9 layers and the output, whose logits come back
    [worker] = plan.pool["workers"]
    assert worker["layers"] == [info.n_layer - 9, info.n_layer - 1] and worker["output"]
    assert "9 of 30 layers and the output on other machines" in reasons[0]
    assert worker["network_ms"] > network_seconds(info, link(endpoint="127.0.0.1:5000")) * 1000


def test_workers_without_room_are_not_used(shapes):
    hw, info = machine("cpu-only-8gb-laptop"), shapes["13b"]
    bigger = replace(hw, memory=replace(hw.memory, available_bytes=hw.memory.available_bytes + 16 * GIB))
    base = plan_model(info, bigger, 4096)
    plan, reasons = plan_pool(info, hw, base, [link(free=600 << 20)], fill=2048, local_fits=False)
    assert plan is None and "too little free memory" in reasons[0]


def test_two_workers_share_the_layers_by_their_free_memory(shapes):
    hw, info = machine("cpu-only-8gb-laptop"), shapes["13b"]
    bigger = replace(hw, memory=replace(hw.memory, available_bytes=hw.memory.available_bytes + 32 * GIB))
    base = plan_model(info, bigger, 4096)
    links = [link("10.0.0.2:1", free=12 * GIB), link("10.0.0.3:1", free=12 * GIB)]
    plan, _ = plan_pool(info, hw, base, links, fill=2048, local_fits=False, mode="always", layers=36)
    a, b = plan.pool["workers"]
    assert a["n_layers"] + b["n_layers"] == 36 and abs(a["n_layers"] - b["n_layers"]) <= 1
    assert a["layers"][1] + 1 == b["layers"][0] and b["layers"][1] == info.n_layer - 1
    assert plan.tensor_split == (float(a["n_layers"]), float(b["n_layers"]))


def test_an_uneven_split_gives_each_worker_exactly_its_slice(shapes):
    """llama.cpp's rule: layer j of the k offloaded ones goes to the first device whose cumulative
    share of the split exceeds j / k. Two equal workers and an odd k must keep the planned slices."""
    from itertools import accumulate

    hw, info = machine("cpu-only-8gb-laptop"), shapes["13b"]
    bigger = replace(hw, memory=replace(hw.memory, available_bytes=hw.memory.available_bytes + 32 * GIB))
    base = plan_model(info, bigger, 4096)
    links = [link("10.0.0.2:1", free=12 * GIB), link("10.0.0.3:1", free=12 * GIB)]
    for k in (3, 5, 37):
        plan, _ = plan_pool(info, bigger, base, links, fill=2048, local_fits=True, mode="always", layers=k)
        split = plan.tensor_split
        cum = [c / sum(split) for c in accumulate(split)]
        placed = [next(d for d, c in enumerate(cum) if j / k < c) for j in range(k)]
        assert [placed.count(d) for d in range(2)] == [w["n_layers"] for w in plan.pool["workers"]]


def test_a_machine_whose_gpu_takes_layers_pools_its_cpu_layers_and_keeps_the_gpus(shapes):
    """Local GPU + workers + CPU: the workers take the CPU layers just before the GPU's, listed
    before this GPU in llama.cpp's devices, whose split rule must place each slice exactly."""
    from itertools import accumulate

    hw, info = machine("laptop-4gb-gpu"), shapes["13b"]
    n = info.n_layer
    bigger = replace(hw, memory=replace(hw.memory, available_bytes=hw.memory.available_bytes + 32 * GIB))
    base = plan_model(info, bigger, 4096)
    g = base.n_gpu_layers
    assert 0 < g < n  # a partial offload: some layers on this machine's GPU, the rest on its CPU
    links = [link("10.0.0.2:1", free=12 * GIB), link("10.0.0.3:1", free=12 * GIB)]
    plan, reasons = plan_pool(info, hw, base, links, fill=2048, local_fits=False, mode="always", layers=9)
    a, b = plan.pool["workers"]
    assert a["n_layers"] + b["n_layers"] == 9 and plan.pool["local_gpu_layers"] == g
    # the GPU holds the output and the last g - 1 layers; the workers the 9 before them
    assert a["layers"][0] == n + 1 - g - 9 and b["layers"][1] == n - g and a["layers"][1] + 1 == b["layers"][0]
    assert not a["output"] and not b["output"] and not plan.pool["output"]
    assert plan.n_gpu_layers == g + 9 and plan.tensor_split == (float(a["n_layers"]), float(b["n_layers"]), float(g))
    cum = [c / sum(plan.tensor_split) for c in accumulate(plan.tensor_split)]
    placed = [next(d for d, c in enumerate(cum) if j / (g + 9) < c) for j in range(g + 9)]
    assert [placed.count(d) for d in range(3)] == [a["n_layers"], b["n_layers"], g]
    kw = plan.load_kwargs()
    assert kw["rpc"] == ("10.0.0.2:1", "10.0.0.3:1") and kw["rpc_local_gpu"] == (base.gpu_index or 0)
    gpu_before = [m for m in base.memory if m.device != "CPU"]
    assert gpu_before and [m for m in plan.memory if m.device.startswith("GPU")] == gpu_before
    cpu_before = next(m for m in base.memory if m.device == "CPU")
    cpu_after = next(m for m in plan.memory if m.device == "CPU")
    moved = sum(info.layer_bytes[i] for i in range(n + 1 - g - 9, n + 1 - g))
    assert cpu_before.weights - cpu_after.weights == moved
    assert f"this machine's GPU keeps {g - 1} of {n} layers and the output" in reasons[0]
    assert not any("the rest on the CPU." in r for r in plan.reasons)


def test_a_model_wholly_on_this_gpu_or_over_several_is_not_pooled(shapes):
    hw, info = machine("rtx3060-desktop"), shapes["1b"]
    base = plan_model(info, hw, 4096)
    assert base.n_gpu_layers > info.n_layer
    plan, reasons = plan_pool(info, hw, base, [link()], fill=1024, local_fits=True, mode="always")
    assert plan is None and "run on this machine's GPU" in reasons[0]
    split = replace(base, n_gpu_layers=4, tensor_split=(1.0, 1.0))  # two GPUs with a share each
    plan, reasons = plan_pool(info, hw, split, [link()], fill=1024, local_fits=True, mode="always")
    assert plan is None and "several GPUs" in reasons[0]


def test_layers_set_by_hand_without_a_gpu_here_are_all_the_workers(shapes):
    """TANDEM_N_GPU_LAYERS on a CPU plan (no GPU placement here) or -1 (llama.cpp's "all"): nothing
    stays on a GPU that is not there; the workers take the CPU's units, the output first."""
    hw, info = machine("dev-vm-epyc-2core"), shapes["smollm2"]
    base = plan_model(info, hw, 4096)
    for forced in (5, -1):
        plan, reasons = plan_pool(info, hw, replace(base, n_gpu_layers=forced), [link(endpoint="127.0.0.1:5000")],
                                  fill=1024, local_fits=True, mode="always", layers=1)
        [worker] = plan.pool["workers"]
        assert plan.n_gpu_layers == 1 and plan.pool["local_gpu_layers"] == 0 and plan.load_kwargs()["rpc_local_gpu"] is None
        assert worker["output"] and worker["layers"] is None and "the output layer on other machines" in reasons[0]


def test_network_cost_grows_with_round_trip_and_falls_with_bandwidth(shapes):
    info = shapes["7b"]
    assert network_seconds(info, link(rtt=2e-3)) > network_seconds(info, link(rtt=0.2e-3))
    assert network_seconds(info, link(bw=1e6)) > network_seconds(info, link(bw=1e9))


def test_the_worker_refuses_every_address_without_the_flag():
    for host in ("0.0.0.0", "::", ""):
        with pytest.raises(WorkerRefused, match="no authentication"):
            WorkerConfig(host=host).check()
    open_to_all = WorkerConfig(host="0.0.0.0", i_understand_no_auth=True)
    open_to_all.check()
    assert open_to_all.allowed("203.0.113.9")


def test_a_worker_on_a_network_address_needs_an_allow_list_and_keeps_to_it():
    with pytest.raises(WorkerRefused, match="--allow"):
        WorkerConfig(host="192.168.1.20").check()
    c = WorkerConfig(host="192.168.1.20", allow=("192.168.1.10",))
    c.check()
    assert c.allowed("192.168.1.10") and c.allowed("::ffff:192.168.1.10") and c.allowed("127.0.0.1")
    assert not c.allowed("192.168.1.11") and not c.allowed("not an address")
    with pytest.raises(WorkerRefused, match="between 1 and 65535"):
        WorkerConfig(port=70000).check()


def test_endpoints_are_host_and_port():
    assert split_endpoint("10.0.0.2:50052") == ("10.0.0.2", 50052)
    assert split_endpoint("[::1]:9") == ("::1", 9)
    for bad in ("10.0.0.2", ":5", "host:port"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            split_endpoint(bad)


def test_events_and_errors_cross_the_wire_unchanged():
    stats = ReplyStats(3, 2, 0, 0.1, 0.2, 30.0, 0.5, drafted_tokens=4, accepted_tokens=3)
    lp = (TokenLogprob(5, b"\xe2\x82", -0.5, ((5, b"\xe2\x82", -0.5), (6, b"a", -1.0))),)
    for event in (Started(3, (0, 1), 12, "sink_window"), Token("héllo"),
                  Finished("hi", "stop", stats, (1,), (4, 5), lp)):
        assert decode_event(encode_event(event)) == event
    failed = decode_event(encode_event(Failed(ContextOverflow(5000, 4096))))
    assert isinstance(failed.error, ContextOverflow) and str(failed.error) == str(ContextOverflow(5000, 4096))
    failed = decode_event(encode_event(Failed(PoolFailure("gone"))))
    assert isinstance(failed.error, PoolFailure) and failed.error.code == "pool_failed"
