"""The Hardware page, on this machine and on a captured machine with a GPU the build cannot use."""

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tandem.app.server import ServerThread
from tests.conftest import make_settings

pytestmark = pytest.mark.e2e
FIXTURE = Path(__file__).parent.parent / "fixtures" / "hardware" / "nvidia-with-cpu-only-build.json"


def test_hardware_page_on_this_machine(page):
    page.click("#show-hardware")
    view = page.locator("#hardware-view")
    # the first visit probes the machine (a bandwidth measurement) and dry-runs the plan: allow time
    expect(view.locator(".hw-card h3", has_text="CPU")).to_be_visible(timeout=30_000)
    expect(view).to_contain_text("GB/s (measured)")
    expect(view).to_contain_text("Model: Smollm2")
    plan = view.locator(".hw-card.plan")
    expect(plan.locator("h3")).to_contain_text("tokens/s predicted", timeout=30_000)
    expect(plan.locator(".device[data-device=CPU] .part.weights")).to_have_count(1)
    expect(plan.locator(".reasons")).to_contain_text("threads: one per physical core")
    expect(plan.locator(".speculative")).to_have_text("Speculative decoding: prompt lookup")
    expect(view.locator(".hw-card.models li[data-model=smollm2-135m-instruct-q4_1]")).to_contain_text(
        "no installed model can draft for it")
    expect(page.locator("#composer")).to_be_hidden()
    page.click("#new-chat")  # back to chatting
    expect(page.locator("#composer")).to_be_visible()
    expect(view).to_be_hidden()


def test_gpu_bar_and_build_warning(browser, tmp_path):
    settings = make_settings(tmp_path, hardware_profile=FIXTURE)
    with ServerThread(settings) as server:
        context = browser.new_context(base_url=server.url)
        page = context.new_page()
        page.goto("/")
        page.click("#show-hardware")
        view = page.locator("#hardware-view")
        expect(view.locator(".warning")).to_contain_text('CMAKE_ARGS="-DGGML_CUDA=on" pip install')
        gpu = view.locator(".hw-card.gpu")
        expect(gpu.locator("h3")).to_have_text("GPU 0: NVIDIA GeForce RTX 2060")
        expect(gpu.locator(".legend")).to_have_text("0 B used by other programs · 5.7 GiB free of 6 GiB")
        width = gpu.locator(".vram .free").evaluate("e => e.style.width")
        assert width.startswith("95.")
        # that build cannot offload: the plan keeps every layer on the CPU and says why
        expect(view.locator(".hw-card.plan .reasons")).to_contain_text("cannot offload")
        expect(view.locator(".hw-card.plan .device")).to_have_count(1)
        context.close()
