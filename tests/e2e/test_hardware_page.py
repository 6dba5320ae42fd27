"""The Hardware page, on this machine and on captured machines (a GPU the build cannot use, a laptop
with a 4 GB GPU): the machine's cards, the default model's memory bars per device, and the link
from its plan card to the model's plan view."""

import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tandem.app.server import ServerThread
from tandem.runtime import embedded
from tandem.runtime.hardware import enginebench, load_profile
from tandem.runtime.model_info import inspect_model
from tests.conftest import make_settings

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).parent.parent / "fixtures" / "hardware"
CPU_ONLY_BUILD = FIXTURES / "nvidia-with-cpu-only-build.json"
LAPTOP_GPU = FIXTURES / "laptop-4gb-gpu.json"
MODEL = "smollm2-135m-instruct-q4_1"
PARTS = ("weights", "kv", "compute", "overhead", "margin")
WIDE = {"width": 1400, "height": 900}


def expect_memory_bars(chart, memory):
    """One group per device, one segment per part the plan gives it, a legend entry per part."""
    expect(chart.locator("svg g.mem-device")).to_have_count(len(memory))
    for dev in memory:
        parts = [k for k in PARTS if dev[k]]
        expect(chart.locator(f"svg g.mem-device[data-device={dev['device']}] rect.seg")).to_have_count(len(parts))
    used = {k for dev in memory for k in PARTS if dev[k]}
    expect(chart.locator(".chart-legend .legend-item[data-part]:not([data-part=free])")).to_have_count(len(used))


def open_hardware(browser, server, **context_args):
    """A new browser context on the server's Hardware page: (context, page, the page's errors)."""
    context = browser.new_context(base_url=server.url, **context_args)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("/")
    page.click("#show-hardware")
    return context, page, errors


def test_hardware_page_on_this_machine(page, server, screenshot):
    page.set_viewport_size(WIDE)
    page.click("#show-hardware")
    view = page.locator("#hardware-view")
    # the first visit probes the machine (a bandwidth measurement) and dry-runs the plan: allow time
    expect(view.locator(".hw-card h3", has_text="CPU")).to_be_visible(timeout=30_000)
    expect(view).to_contain_text("GB/s (measured)")
    expect(view.locator(".hw-card.model h3")).to_have_text("Model: SmolLM2 135M Instruct (Q4_1)")
    expect(view.locator(".hw-card dt", has_text="Trained context")).to_have_attribute("title", "The longest text, in tokens, the model saw in training; past it, answers get weaker.")
    plan = view.locator(".hw-card.plan")
    expect(plan.locator("h3")).to_contain_text("SmolLM2 135M Instruct (Q4_1) runs", timeout=30_000)
    expect(plan.locator("h3")).to_contain_text(
        re.compile(r"tokens/s predicted, (measured on this machine|estimated(, corrected by replies here)?)$"))
    basis = httpx.get(f"{server.url}/api/models/{MODEL}/plan", timeout=60).json()["speed_basis"]
    words = {"measured": "measured on this machine", "calibrated": "estimated, corrected by replies here",
             "estimated": "estimated"}[basis]
    expect(plan.locator("h3")).to_contain_text(f"predicted, {words}")
    memory = httpx.get(f"{server.url}/api/models/{MODEL}/plan", timeout=60).json()["memory"]
    expect_memory_bars(plan.locator(".memory-chart"), memory)
    expect(plan.locator(".memory-chart g.mem-device[data-device=CPU] .device-name")).to_have_text("RAM (CPU)")
    expect(plan.locator(".reasons")).to_contain_text("threads: one per physical core")
    expect(plan.locator(".speculative")).to_have_text("Speculative decoding: prompt lookup")
    expect(view.locator(f".hw-card.models li[data-model={MODEL}]")).to_contain_text("no installed model can draft for it")
    screenshot(page, "hardware")

    # the plan card leads to the model's plan view; Back returns here
    plan.locator("a.open-plan").click()
    assert page.evaluate("location.hash") == f"#/models/{MODEL}"
    plan_view = page.locator(f"#models-view .plan-view[data-model={MODEL}]")
    expect(plan_view.locator(".plan-memory g.mem-device")).to_have_count(len(memory), timeout=30_000)
    expect(view).to_be_hidden()
    page.go_back()
    expect(page.locator("#hardware-view .hw-card.plan")).to_be_visible(timeout=30_000)

    expect(page.locator("#composer")).to_be_hidden()
    page.click("#new-chat")  # back to chatting
    expect(page.locator("#composer")).to_be_visible()
    expect(page.locator("#hardware-view")).to_be_hidden()


def test_gpu_bar_and_build_warning(browser, tmp_path):
    settings = make_settings(tmp_path, hardware_profile=CPU_ONLY_BUILD)
    with ServerThread(settings) as server:
        context, page, errors = open_hardware(browser, server)
        view = page.locator("#hardware-view")
        expect(view.locator(".warning")).to_contain_text('CMAKE_ARGS="-DGGML_CUDA=on" pip install')
        gpu = view.locator(".hw-card.gpu")
        expect(gpu.locator("h3")).to_have_text("GPU 0: NVIDIA GeForce RTX 2060")
        expect(gpu.locator(".legend")).to_have_text("0 B used by other programs · 5.7 GiB free of 6 GiB")
        width = gpu.locator(".vram .free").evaluate("e => e.style.width")
        assert width.startswith("95.")
        # that build cannot offload: the plan keeps every layer on the CPU and says why
        expect(view.locator(".hw-card.plan .reasons")).to_contain_text("cannot offload")
        expect(view.locator(".hw-card.plan g.mem-device")).to_have_count(1)
        expect(view.locator(".hw-card.plan g.mem-device[data-device=CPU]")).to_have_count(1)
        context.close()
        assert errors == []


def test_memory_bars_of_a_laptop_with_a_small_gpu(browser, tmp_path, screenshot):
    """The plan on a captured laptop: the model on its GPU, a little on the CPU; a bar for each."""
    settings = make_settings(tmp_path, hardware_profile=LAPTOP_GPU)
    with ServerThread(settings) as server:
        memory = httpx.get(f"{server.url}/api/models/{MODEL}/plan", timeout=60).json()["memory"]
        assert [d["device"] for d in memory] == ["CPU", "GPU0"]
        context, page, errors = open_hardware(browser, server, viewport=WIDE)
        chart = page.locator("#hardware-view .hw-card.plan .memory-chart")
        expect_memory_bars(chart, memory)
        expect(chart.locator("g.mem-device[data-device=GPU0] .device-name")).to_have_text(
            "GPU 0 VRAM · NVIDIA GeForce RTX 3050 Laptop GPU")
        expect(chart.locator("g.mem-device[data-device=GPU0] line.capacity")).to_have_count(1)
        page.locator("#hardware-view .hw-card.plan").scroll_into_view_if_needed()
        screenshot(page, "hardware-gpu")
        page.locator("#hardware-view a.open-plan").click()
        plan_view = page.locator(f"#models-view .plan-view[data-model={MODEL}]")
        expect_memory_bars(plan_view.locator(".plan-memory .memory-chart"), memory)
        expect(plan_view.locator(".choice[data-topic=placement] .choice-value")).to_have_text("Fits on the GPU")
        plan_view.locator(".choice[data-topic=placement]").click()
        expect(plan_view.locator(".plan-reasons li.highlight")).to_contain_text("layers and the output on the GPU")
        screenshot(page, "model-plan-gpu")
        context.close()
        assert errors == []


def test_a_gpu_timed_by_llama_cpp_says_so_and_its_timing_prices_the_plan(browser, tmp_path, screenshot):
    """The laptop's GPU as a profile holds it after llama.cpp timed the default model's slice
    there: the GPU's card gives the rate and the hand-off as measured, and the plan's predicted
    speed rests on them; the same GPU untimed says its speed is estimated from the card."""
    laptop = load_profile(LAPTOP_GPU)
    key = enginebench.kind_for("Q4_1", inspect_model(embedded.default_model_path())).key
    slow = replace(laptop.gpus[0], engine_rates=((key, 40.0),), handoff_s=0.0004,
                   kv_costs=((f"f16@{key}", 30.0), (f"q8_0@{key}", 45.0), (f"q4_0@{key}", 60.0)))
    timed_path = tmp_path / "timed-gpu.json"
    timed_path.write_text(replace(laptop, gpus=(slow, *laptop.gpus[1:])).to_json())
    speeds = {}
    for name, profile in (("untimed", LAPTOP_GPU), ("timed", timed_path)):
        with ServerThread(make_settings(tmp_path / name, hardware_profile=profile)) as server:
            speeds[name] = httpx.get(f"{server.url}/api/models/{MODEL}/plan", timeout=60).json()["decode_tps"]
            context, page, errors = open_hardware(browser, server, viewport=WIDE)
            gpu = page.locator("#hardware-view .hw-card.gpu").first  # the RTX; the laptop's iGPU is the second
            if name == "timed":
                expect(gpu).to_contain_text("Q4_1 in 576-wide layers: 40 GB/s · hand-off to the CPU 0.40 ms a token "
                                            "(measured on this GPU)")
                expect(gpu).to_contain_text("Q4_1 in 576-wide layers: f16 30 ns · q8_0 45 ns · q4_0 60 ns per cached "
                                            "position and layer (measured on this GPU)")
                screenshot(page, "hardware-gpu-timed")
            else:
                expect(gpu).to_contain_text("not measured yet: estimated from the card's memory bandwidth")
            # the integrated GPU takes no layers: nothing timed or estimated on it is shown
            expect(page.locator("#hardware-view .hw-card.gpu").nth(1)).not_to_contain_text("llama.cpp's speed")
            context.close()
            assert errors == []
    # the card's table says 192 GB/s (x 0.7); timed at 40, the model on that GPU is predicted slower
    assert speeds["timed"] < 0.6 * speeds["untimed"]
