"""A reply's energy, where the machine counts it: read from the CPU package's RAPL counter around
the reply, stored with the message, and shown in its stats line. This machine's counter is not
readable (or absent), so the counter here is a powercap tree in a folder that a thread advances
at a steady 2 W; the engine, the store, the server and the page are the real ones."""

import os
import threading
import time

import httpx
import pytest
from playwright.sync_api import expect

from tandem.app.server import ServerThread
from tandem.runtime.hardware import energy
from tests.conftest import make_settings
from tests.e2e.chat_steps import send, settled, shown_conversation

pytestmark = pytest.mark.e2e

WATTS = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("powercap")
    package = root / "intel-rapl:0"
    package.mkdir()
    (package / "name").write_text("package-0\n")
    counter = package / "energy_uj"
    counter.write_text("0\n")
    (package / "max_energy_range_uj").write_text("262143328850\n")
    stop = threading.Event()

    def advance():  # each value replaces the file whole, as a read of sysfs sees one value
        start, fresh = time.monotonic(), package / "energy_uj.new"
        while not stop.wait(0.005):
            fresh.write_text(f"{int((time.monotonic() - start) * WATTS * 1e6)}\n")
            os.replace(fresh, counter)

    ticker = threading.Thread(target=advance, daemon=True)
    ticker.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(energy, "_METER", energy.EnergyMeter(root, nvml=False))
        with ServerThread(make_settings(tmp_path_factory.mktemp("data"), max_tokens=12)) as srv:
            yield srv
    stop.set()
    ticker.join()


def test_a_reply_shows_and_keeps_the_energy_it_used(page, server, screenshot):
    send(page, "Say hello")
    settled(page)
    stats = page.locator(".message.assistant").last.locator(".stats")
    expect(stats).to_contain_text(" J/token")
    assert "CPU package" in stats.get_attribute("title")
    [reply] = [m for m in shown_conversation(server, page)["messages"] if m["role"] == "assistant"]
    assert reply["energy_cpu_j"] > 0 and reply["energy_gpu_j"] is None
    shown = float(stats.inner_text().split(" J/token")[0].split("·")[-1])
    assert shown == pytest.approx(reply["energy_cpu_j"] / reply["completion_tokens"], abs=0.006)
    screenshot(page, "reply-energy")
    page.goto("/#/hardware")
    expect(page.locator(".hw-card dd", has_text="counted by CPU package 0 (RAPL)")).to_have_count(1)
    # the API's reply statistics carry it too
    done = httpx.post(f"{server.url}/v1/chat/completions", timeout=120,
                      json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}).json()
    assert done["tandem"]["joules_per_token"] > 0
