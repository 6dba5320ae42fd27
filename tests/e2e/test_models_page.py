"""The Models page against a local hub: an installed model's plan view (choices tied to reasons,
memory bars, speed of real replies against the prediction, Back), search, a repo's verdicts, a
download with progress, pause and resume, the installed list, the chat's model picker, and a reply
written by the downloaded model. Screenshots of each step (1400x900 and 700 px wide) go to the
test's tmp_path; those of the plan view to test-artifacts/screenshots."""

import re
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tandem.app.server import ServerThread
from tests.conftest import make_settings, read_sse
from tests.fixtures.hubserver import Fault, HubServer

pytestmark = pytest.mark.e2e
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct Q4_1"  # what people see: the repo without -GGUF, and the quant
MODEL_ID = "huggingfacetb-smollm2-135m-instruct-q4_1"
GATED = "meta-test/Gated-GGUF"
SMALL_GPU = Path(__file__).parent.parent / "fixtures" / "hardware" / "laptop-4gb-gpu.json"
WIDE, NARROW = {"width": 1400, "height": 900}, {"width": 700, "height": 900}


@pytest.fixture(scope="module")
def hub(model_path):
    with HubServer() as server:
        server.add_repo(SMOL, {FILE: model_path}, downloads=1200, likes=40)
        server.add_repo(GATED, {"Gated-Q4_1.gguf": model_path}, gated=True)
        yield server


@pytest.fixture(scope="module")
def server(hub, tmp_path_factory):
    """Replaces the e2e server: this one reaches the local hub (HF_ENDPOINT is read at every call)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_ENDPOINT", hub.url)
    mp.delenv("HF_TOKEN", raising=False)
    mp.delenv("TANDEM_MODELS_DIR", raising=False)
    with ServerThread(make_settings(tmp_path_factory.mktemp("data"))) as srv:
        yield srv
    mp.undo()


def shot(page, folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=False)


BUILTIN = "smollm2-135m-instruct-q4_1"
PARTS = ("weights", "kv", "compute", "overhead", "margin")


def size(n: int) -> str:
    """Bytes as the page writes them (charts.js size)."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        v = n / 2 ** shift
        if v >= 1:
            return f"{int(v)} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def reply(api: httpx.Client, cid: str, content: str) -> dict:
    with api.stream("POST", f"/api/conversations/{cid}/messages", json={"content": content, "max_tokens": 16}) as r:
        assert r.status_code == 200, r.read()
        event, data = list(read_sse(r))[-1]
    assert event == "done", data
    return data["message"]


def test_plan_view_linked_from_the_models_page(page, server, screenshot):
    """Models page -> a model's plan: choices that lead to their reasons, memory bars, the speed of
    real replies against the prediction; Back returns to the Models page."""
    api = httpx.Client(base_url=server.url, timeout=120)
    assert api.get(f"/api/models/{BUILTIN}/speed").json()["replies"] == []
    page.set_viewport_size(WIDE)
    page.click("#show-models")
    view = page.locator("#models-view")
    row = view.locator(f"#installed-panel .installed-row[data-model={BUILTIN}]")
    expect(row.locator(".row-name")).to_have_text("SmolLM2 135M Instruct (Q4_1)")
    expect(row.locator(".row-plan")).to_contain_text("tok/s predicted", timeout=30_000)
    screenshot(page, "models")

    row.locator("a.plan-link").click()
    assert page.evaluate("location.hash") == f"#/models/{BUILTIN}"
    plan_view = view.locator(f".plan-view[data-model={BUILTIN}]")
    expect(plan_view.locator(".plan-head h2")).to_have_text("SmolLM2 135M Instruct (Q4_1)", timeout=30_000)
    plan = api.get(f"/api/models/{BUILTIN}/plan").json()
    # the memory bars: one group per device, one segment per part the plan gives it, a legend with sizes
    chart = plan_view.locator(".plan-memory .memory-chart")
    expect(chart.locator("svg g.mem-device")).to_have_count(len(plan["memory"]))
    for dev in plan["memory"]:
        parts = [k for k in PARTS if dev[k]]
        segs = chart.locator(f"svg g.mem-device[data-device={dev['device']}] rect.seg")
        expect(segs).to_have_count(len(parts))
        assert [s.get_attribute("data-part") for s in segs.all()] == parts
    legend = chart.locator(".chart-legend")
    expect(legend.locator(".legend-item[data-part=weights] .legend-size")).to_have_text(
        size(sum(d["weights"] for d in plan["memory"])))
    expect(legend.locator(".legend-item[data-part=kv]")).to_have_attribute("title", re.compile("memory of the conversation"))
    # the reasons beside the choices; a choice leads to the reason that explains it
    reasons = plan_view.locator(".plan-reasons li")
    expect(reasons).to_have_count(len(plan["reasons"]))
    plan_view.locator(".choice[data-topic=threads]").click()
    expect(plan_view.locator(".plan-reasons li.highlight")).to_contain_text("threads: one per physical core")
    plan_view.locator(".choice[data-topic=kv]").click()
    expect(plan_view.locator(".plan-reasons li.highlight")).to_contain_text("KV cache f16")
    expect(plan_view.locator(".choice[data-topic=speed] .choice-value")).to_contain_text("tokens/s writing")
    # a what-if: planned again for a longer context, the choices, memory and reasons follow
    plan_view.locator(".context-picker select").select_option("8192")
    expect(plan_view.locator(".choice[data-topic=context] .choice-value")).to_have_text("8,192 tokens", timeout=30_000)
    expect(plan_view.locator(".what-if")).to_be_visible()
    expect(plan_view.locator(".plan-reasons")).to_contain_text("Context 8192 tokens")
    expect(plan_view.locator(".context-picker select option").first).to_have_text(f"as it runs now ({plan['n_ctx']:,})")
    plan_view.locator(".context-picker select").select_option("")
    expect(plan_view.locator(".what-if")).to_have_count(0, timeout=30_000)
    # no reply yet: the speed chart says so
    expect(plan_view.locator(".plan-speed .chart-empty")).to_contain_text("No replies yet with this model")

    # Back returns to the Models page
    page.go_back()
    expect(view.locator("#installed-panel .installed-row").first).to_be_visible()
    expect(view.locator(".plan-view")).to_have_count(0)

    # two real replies, then the chart has a point for each, beside the predicted line
    cid = api.post("/api/conversations", json={}).json()["id"]
    stored = [reply(api, cid, "Name a colour."), reply(api, cid, "Name a fruit.")]
    row.locator("a.plan-link").click()
    points = plan_view.locator(".plan-speed svg .point")
    expect(points).to_have_count(2, timeout=30_000)
    assert [float(p.get_attribute("data-tps")) for p in points.all()] == [m["decode_tps"] for m in stored]
    expect(plan_view.locator(".plan-speed svg line.predicted")).to_have_count(1)
    expect(plan_view.locator(".plan-speed .chart-summary")).to_contain_text("Median of the last 2 replies")
    page.set_viewport_size({"width": 1400, "height": 1250})  # the whole plan view in one picture
    screenshot(page, "model-plan")
    page.set_viewport_size(NARROW)
    plan_view.locator(".plan-memory").scroll_into_view_if_needed()
    screenshot(page, "model-plan-narrow")
    page.set_viewport_size(WIDE)
    page.go_back()
    expect(view.locator("#installed-panel")).to_be_visible()
    api.close()


def test_charts_with_one_reply_and_a_plan_that_does_not_fit(page):
    """charts.js on its own: a single reply still makes a chart; a device the plan overflows says so."""
    result = page.evaluate("""async () => {
      const { speedChart, memoryChart } = await import("/charts.js");
      const box = document.createElement("div");
      box.id = "chart-test";
      document.body.prepend(box);
      const reply = { created_at: "2025-01-02T03:04:05Z", decode_tps: 42.5, predicted_tps: 40,
                      completion_tokens: 16, spec_source: null, acceptance: null };
      box.append(speedChart({ replies: [reply], predicted_tps: 40 }, { title: "one" }));
      box.append(speedChart({ replies: [], predicted_tps: 40 }, { title: "none" }));
      const gib = 2 ** 30;
      box.append(memoryChart([{ device: "GPU0", weights: 7 * gib, kv: gib, compute: gib / 2, overhead: gib / 2,
                                 margin: gib / 4, total: 9 * gib, capacity: 6 * gib, fits: false }],
                             { title: "too big", names: { GPU0: "Test GPU" } }));
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
      return true;
    }""")
    assert result
    box = page.locator("#chart-test")
    one, none = box.locator(".speed-chart").nth(0), box.locator(".speed-chart").nth(1)
    expect(one.locator("svg circle.point")).to_have_count(1)
    expect(one.locator("svg line.predicted")).to_have_count(1)
    expect(one.locator("svg")).to_have_attribute("aria-label", re.compile("1 reply, median 42.5 tokens/s against 40.0 predicted"))
    expect(one.locator(".chart-summary")).to_contain_text("One reply so far, at 42.5 tokens/s against 40.0 predicted")
    expect(none.locator(".chart-empty")).to_contain_text("No replies yet with this model")
    expect(none.locator("svg")).to_have_count(0)
    big = box.locator(".memory-chart g.mem-device[data-device=GPU0]")
    expect(big).to_have_class(re.compile("overflow"))
    expect(big.locator("rect.seg")).to_have_count(5)
    expect(big.locator(".device-detail")).to_have_text("needs 9.3 GiB, only 6 GiB free: does not fit")
    cap_x = float(big.locator("line.capacity").get_attribute("x1"))
    width = float(box.locator(".memory-chart svg").get_attribute("width"))
    assert 0.6 * width < cap_x < 0.7 * width  # 6 of 9.25 GiB


def test_search_verdict_download_pick_and_chat(page, server, hub, tmp_path):
    shots = tmp_path / "screenshots"
    page.set_viewport_size(WIDE)
    page.click("#show-models")
    view = page.locator("#models-view")
    # the first screen is the offline catalog
    expect(view.locator(".catalog-card").first).to_be_visible()
    expect(view.locator(".catalog-card[data-repo='bartowski/Qwen2.5-7B-Instruct-GGUF']")).to_contain_text("Draft: Qwen2.5 0.5B")
    expect(view.locator("#installed-panel .installed-row[data-model=smollm2-135m-instruct-q4_1]")).to_contain_text("tok/s predicted")
    shot(page, shots, "01-catalog-wide")

    page.fill("#hub-query", "smol")
    page.press("#hub-query", "Enter")
    result = view.locator(f".result[data-repo='{SMOL}']")
    expect(result).to_contain_text("1.2k downloads")
    shot(page, shots, "02-search-wide")
    result.click()

    card = view.locator(f".quant-card[data-key='{FILE}']")
    expect(card.locator(".badge.recommended")).to_be_visible(timeout=30_000)
    expect(card.locator(".verdict")).to_have_text(
        {"gpu": "Fits on the GPU", "split": "Split GPU + CPU", "cpu": "CPU only"}[card.get_attribute("data-fit")])
    expect(card.locator(".tps")).to_contain_text("tok/s")
    # nothing says a file not downloaded was measured here: an estimate (corrected by replies here, or not)
    basis = card.locator(".basis")
    expect(basis).to_have_text(re.compile(r"^estimated(, corrected by replies here)?$"))
    expect(basis).to_have_attribute("title", re.compile(r"estimate"))
    expect(card.locator(".ctx")).to_contain_text("context up to")
    expect(card.locator(".mem-device[data-device=CPU]")).to_have_count(1)
    expect(card.locator(".note.why")).to_contain_text("Recommended:")
    shot(page, shots, "03-repo-wide")

    hub.file(SMOL, FILE).fault = Fault(throttle_bps=15_000_000)  # slow enough to watch it move
    card.locator("button.download").click()
    row = view.locator("#downloads-panel .download-row")
    expect(row).to_have_attribute("data-status", "downloading", timeout=15_000)
    expect(row.locator(".dl-meta")).to_contain_text("/s", timeout=15_000)
    expect(row.locator(".dl-meta")).to_contain_text("left")
    expect(card.locator("button.download")).to_contain_text("Downloading")
    shot(page, shots, "04-downloading-wide")
    row.locator("button.pause").click()
    expect(row).to_have_attribute("data-status", "paused", timeout=30_000)
    paused_at = int(row.locator(".progress").get_attribute("aria-valuenow"))
    assert 0 < paused_at < 100
    shot(page, shots, "05-paused-wide")
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=60_000_000)
    row.locator("button.resume").click()
    expect(row).to_have_attribute("data-status", "complete", timeout=60_000)
    expect(row.locator(".dl-meta")).to_contain_text(f"installed as {MODEL_ID}")
    installed = view.locator(f"#installed-panel .installed-row[data-model={MODEL_ID}]")
    expect(installed).to_contain_text("downloaded")
    expect(installed.locator(".row-plan")).to_contain_text("tok/s predicted", timeout=30_000)
    expect(card.locator("button.download")).to_have_text("Installed")
    shot(page, shots, "06-installed-wide")
    page.set_viewport_size(NARROW)
    shot(page, shots, "07-repo-narrow")
    view.locator("#installed-panel").scroll_into_view_if_needed()
    shot(page, shots, "08-installed-narrow")
    page.set_viewport_size(WIDE)

    # the picker lists the new model without a reload; a new chat is created with it
    page.click("#new-chat")
    picker = page.locator("#model-picker")
    expect(picker.locator(f"option[value='{MODEL_ID}']")).to_contain_text("tok/s", timeout=30_000)
    picker.select_option(MODEL_ID)
    expect(page.locator("#model-name")).to_have_text(NAME)
    page.fill("#prompt", "Say hello")
    page.press("#prompt", "Enter")
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".stats")).to_contain_text("tok/s", timeout=60_000)
    expect(reply).to_have_attribute("data-model", MODEL_ID)
    shot(page, shots, "09-chat-wide")
    page.set_viewport_size(NARROW)
    shot(page, shots, "10-chat-narrow")
    page.set_viewport_size(WIDE)

    conv_id = page.locator(".conversation.active").get_attribute("data-id")
    with httpx.Client(base_url=server.url, timeout=30) as api:
        conv = api.get(f"/api/conversations/{conv_id}").json()
        assert conv["model_id"] == MODEL_ID
        assert [m["model_id"] for m in conv["messages"] if m["role"] == "assistant"] == [MODEL_ID]

    # remembered: after a reload the conversation still shows its model; switching back is stored
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.click(f".conversation[data-id='{conv_id}'] .title")
    expect(picker).to_have_value(MODEL_ID)
    picker.select_option("")
    with httpx.Client(base_url=server.url, timeout=30) as api:
        expect(picker).to_have_value("")
        page.wait_for_timeout(300)
        assert api.get(f"/api/conversations/{conv_id}").json()["model_id"] is None

    # delete: the confirm says the file goes; the row and the picker's option go too
    page.click("#show-models")
    messages = []
    page.once("dialog", lambda d: (messages.append(d.message), d.accept()))
    view.locator(f"#installed-panel .installed-row[data-model={MODEL_ID}] button.delete").click()
    expect(view.locator(f"#installed-panel .installed-row[data-model={MODEL_ID}]")).to_have_count(0)
    assert "deleted from the disk" in messages[0]
    expect(picker.locator(f"option[value='{MODEL_ID}']")).to_have_count(0)
    hub.file(SMOL, FILE).fault = Fault()


def test_hub_errors_are_shown_as_the_api_says(page, tmp_path):
    page.set_viewport_size(WIDE)
    page.click("#show-models")
    view = page.locator("#models-view")
    page.fill("#hub-query", GATED)
    page.press("#hub-query", "Enter")
    view.locator(f".result[data-repo='{GATED}']").click()
    card = view.locator(".quant-card")
    # its header may be known already (the same bytes as another repo's file): the token is asked at download
    expect(card.locator("button.download")).to_be_enabled(timeout=30_000)
    card.locator("button.download").click()
    expect(card.locator(".hub-error").last).to_contain_text("HF_TOKEN")
    shot(page, tmp_path / "screenshots", "11-gated-wide")
    page.fill("#hub-query", "nobody/Nothing-GGUF")
    page.press("#hub-query", "Enter")
    view.locator("button.open-repo").click()
    expect(view.locator(".hub-error[data-code=hub_not_found]")).to_contain_text("was not found on the hub")
    shot(page, tmp_path / "screenshots", "12-not-found-wide")
    # a path that is not there: the import says so
    page.fill("#import-path", "/nonexistent/models")
    page.press("#import-path", "Enter")
    expect(view.locator(".import-result .hub-error")).to_contain_text("does not exist")


def test_import_then_missing_then_remove(page, model_path, tmp_path):
    """An imported model is only unregistered; one whose file is gone is marked missing."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    link = folder / "Imported-Smol-Q4_1.gguf"
    link.symlink_to(model_path)
    page.set_viewport_size(WIDE)
    page.click("#show-models")
    view = page.locator("#models-view")
    page.fill("#import-path", str(folder))
    page.press("#import-path", "Enter")
    expect(view.locator(".import-result .imported")).to_contain_text("Registered 1: Imported-Smol-Q4_1.gguf")
    row = view.locator("#installed-panel .installed-row", has_text="Imported-Smol-Q4_1.gguf")
    expect(row).to_contain_text("imported (file)")
    expect(row.locator(".row-plan")).to_contain_text("tok/s predicted", timeout=30_000)
    model_id = row.get_attribute("data-model")
    expect(page.locator(f"#model-picker option[value='{model_id}']")).to_have_count(1)

    link.unlink()
    page.click("#show-hardware")
    page.click("#show-models")
    expect(row.locator(".badge.missing")).to_be_visible()
    expect(row.locator(".row-plan")).to_contain_text("Missing: Imported-Smol-Q4_1.gguf")
    expect(row.locator("button.locate")).to_be_visible()
    shot(page, tmp_path / "screenshots", "13-missing-wide")
    messages = []
    page.once("dialog", lambda d: (messages.append(d.message), d.accept()))
    row.locator("button.delete").click()
    expect(view.locator(f"#installed-panel .installed-row[data-model='{model_id}']")).to_have_count(0)
    assert "already gone" in messages[0]
    expect(page.locator(f"#model-picker option[value='{model_id}']")).to_have_count(0)


def test_verdicts_on_a_machine_with_a_small_gpu(browser, tmp_path, monkeypatch):
    """Synthetic models (headers only on disk) planned for a laptop with a 4 GB GPU: every kind of
    verdict, memory bars per device, the cost of a split."""
    from tandem.runtime.synth import preset, write_model

    files = {}
    for shape, quant in (("1b", "Q8_0"), ("3b", "Q4_0"), ("8b", "Q4_0"), ("8b", "Q8_0"), ("13b", "F16")):
        name = f"Synth-{shape.upper()}-Instruct-{quant}.gguf"
        write_model(tmp_path / name, replace(preset(shape, quant=quant), name=f"synth-{shape}"), fill="zeros")
        files[name] = tmp_path / name
    with HubServer() as hub:
        hub.add_repo("tandem-test/Synth-Instruct-GGUF", files, sha256={n: f"{i + 1:064x}" for i, n in enumerate(files)})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        settings = make_settings(tmp_path / "data", hardware_profile=SMALL_GPU)
        with ServerThread(settings) as server:
            context = browser.new_context(base_url=server.url, viewport=WIDE)
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto("/")
            page.click("#show-models")
            view = page.locator("#models-view")
            page.fill("#hub-query", "synth")
            page.press("#hub-query", "Enter")
            view.locator(".result").first.click()
            cards = view.locator(".quant-card")
            expect(cards).to_have_count(5, timeout=60_000)
            fits = {c.get_attribute("data-key"): c.get_attribute("data-fit") for c in cards.all()}
            assert {"gpu", "too_big"} <= set(fits.values()), fits
            expect(view.locator(".badge.recommended")).to_have_count(1)
            expect(view.locator(".quant-card[data-fit=too_big] .note.reason")).not_to_have_count(0)
            if "split" in fits.values():
                split = view.locator(".quant-card[data-fit=split]").first
                expect(split.locator(".mem-device")).to_have_count(2)
                expect(split.locator(".note.speed-cost")).to_contain_text("of the speed")
            shot(page, tmp_path / "screenshots", "14-verdicts-small-gpu-wide")
            page.set_viewport_size(NARROW)
            shot(page, tmp_path / "screenshots", "15-verdicts-small-gpu-narrow")
            context.close()
            assert errors == []
