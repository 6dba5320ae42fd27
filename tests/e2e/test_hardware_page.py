"""The Hardware page, on this machine and on a captured machine with a GPU the build cannot use."""

from pathlib import Path

import pytest
from playwright.sync_api import expect

from app.server import ServerThread
from tests.conftest import make_settings

pytestmark = pytest.mark.e2e
FIXTURE = Path(__file__).parent.parent / "fixtures" / "hardware" / "nvidia-with-cpu-only-build.json"


def test_hardware_page_on_this_machine(page):
    page.click("#show-hardware")
    view = page.locator("#hardware-view")
    expect(view.locator(".hw-card h3", has_text="CPU")).to_be_visible()
    expect(view).to_contain_text("GB/s (measured)")
    expect(view).to_contain_text("Model: Smollm2")
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
        context.close()
