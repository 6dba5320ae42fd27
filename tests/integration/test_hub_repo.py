"""Finding models and judging them before a download, against a real local hub server:
search, a repo's files grouped by quant, verdicts from headers read with HTTP Range, the cache,
gated / missing / unreachable repos, and names that must never become paths."""

from pathlib import Path

import pytest

from tandem.app.config import Settings
from tandem.app.hub import HubService
from tandem.app.hub.client import GatedRepo, HubNotFound, HubUnreachable
from tandem.app.hub.names import UnsafeName
from tandem.app.hub.verdict import judge
from tandem.app.services.hardware import HardwareService
from tandem.app.store import Store
from tandem.runtime.model_info import inspect_model
from tandem.runtime.planner import plan_model
from tests.fixtures.hubserver import HubServer, split_gguf, synthetic_repo

PROFILE = Path(__file__).parent.parent / "fixtures" / "hardware" / "rtx3060-desktop.json"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
SYNTH = "tandem-test/Synth-Instruct-GGUF"
GATED = "meta-test/Gated-GGUF"


@pytest.fixture(scope="module")
def synth_files(tmp_path_factory):
    return synthetic_repo(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory, model_path, synth_files, gemma_path):
    split = split_gguf(model_path, tmp_path_factory.mktemp("split"), "SmolLM2-135M-Instruct-Q4_1", 2)
    with HubServer(tokens={"hf_granted"}) as server:
        server.add_repo(SMOL, {"SmolLM2-135M-Instruct.Q4_1.gguf": model_path, "README.md": b"# SmolLM2"},
                        downloads=900, likes=40)
        files = {**synth_files, **{f"Q4_1/{p.name}": p for p in split}, "mmproj-Synth-f16.gguf": b"not a model"}
        fake = {name: f"{i:064x}" for i, name in enumerate(synth_files)}  # sparse files: not hashed
        server.add_repo(SYNTH, files, downloads=50, likes=3, sha256=fake)
        server.add_repo("tandem-test/Smol-safetensors", {"model.safetensors": b"\0" * 64}, downloads=5000)
        server.add_repo("unsloth/gemma-3-270m-it-GGUF", {"gemma-3-270m-it-Q4_K_M.gguf": gemma_path})
        server.add_repo(GATED, {"Gated-Q4_1.gguf": model_path}, gated=True, downloads=10)
        server.add_repo("evil/Escape-GGUF", {"../../escape.gguf": model_path, "ok-Q4_1.gguf": model_path})
        yield server


@pytest.fixture()
def service(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    settings = Settings(data_dir=tmp_path, hardware_profile=PROFILE)
    store = Store(settings.db_path)
    svc = HubService(settings, store, HardwareService(settings).profile)
    yield svc
    svc.close()
    store.close()


def test_search_lists_gguf_repos_most_downloaded_first(service):
    found = service.search("", sort="downloads")
    ids = [m["id"] for m in found]
    assert "tandem-test/Smol-safetensors" not in ids  # no GGUF in it
    assert ids[:3] == [SMOL, SYNTH, GATED]
    assert [m["id"] for m in service.search("smollm2")] == [SMOL]
    assert next(m for m in found if m["id"] == GATED)["gated"]


def test_every_gguf_of_a_repo_is_judged_from_its_header_alone(service, hub, synth_files):
    view = service.repo(SYNTH)
    models = {m["key"]: m for m in view["models"]}
    assert "mmproj-Synth-f16.gguf" not in models
    split = models["Q4_1/SmolLM2-135M-Instruct-Q4_1-00001-of-00002.gguf"]
    assert split["parts"] == 2 and split["verdict"]["fit"] == "gpu"
    assert len(models) == 21 and all(m["verdict"] and m["error"] is None for m in models.values())
    # headers only: a tiny share of the bytes, and no request reads past a header
    assert view["fetched_bytes"] < 0.01 * view["total_bytes"]
    ranges = [r["range"] for r in hub.requests if r["origin"] == "cdn" and r["method"] == "GET"]
    assert ranges and all(r and r.startswith("bytes=") for r in ranges)
    # the verdict from the remote header is the one the planner gives for the file itself
    hw = service.hardware()
    for name in ("Synth-8B-Instruct-Q4_0.gguf", "Synth-13B-Instruct-F16.gguf", "Synth-1B-Instruct-Q8_0.gguf"):
        local = judge(inspect_model(synth_files[name]), hw)
        remote = models[name]["verdict"]
        assert (remote["fit"], remote["decode_tps"], remote["n_ctx"]) == (local.fit, local.decode_tps, local.n_ctx)
    assert {m["verdict"]["fit"] for m in models.values()} >= {"gpu", "split"}
    recommended = [m for m in models.values() if m["recommended"]]
    assert len(recommended) == 1 and recommended[0]["key"] == view["recommended"]
    assert recommended[0]["verdict"]["fit"] == "gpu"


@pytest.mark.parametrize("repo,local", [(SMOL, "model_path"), ("unsloth/gemma-3-270m-it-GGUF", "gemma_path")])
def test_real_models_judged_remotely_match_the_plan_of_the_file(service, repo, local, request):
    [remote] = service.repo(repo)["models"]
    path = request.getfixturevalue(local)
    info = inspect_model(path)
    plan = plan_model(info, service.hardware(), None)
    v = remote["verdict"]
    assert (v["decode_tps"], v["n_ctx"], v["n_gpu_layers"]) == (plan.decode_tps, plan.n_ctx, plan.n_gpu_layers)
    assert [m["total"] for m in v["memory"]] == [m.total for m in plan.memory]
    assert remote["architecture"] == info.architecture and remote["size"] == path.stat().st_size


def test_a_repo_opened_again_is_judged_without_reading_a_header(service, hub):
    service.repo(SYNTH)
    before = len([r for r in hub.requests if r["origin"] == "cdn"])
    again = service.repo(SYNTH)
    assert again["fetched_bytes"] == 0
    assert len([r for r in hub.requests if r["origin"] == "cdn"]) == before
    assert all(m["verdict"] for m in again["models"])


def test_a_gated_repo_says_a_token_is_needed_and_works_with_one(service, monkeypatch):
    view = service.repo(GATED)
    assert view["gated"] and view["models"][0]["verdict"] is None
    assert "HF_TOKEN" in view["models"][0]["error"]
    with pytest.raises(GatedRepo, match="HF_TOKEN"):
        service.client.file_location(GATED, "Gated-Q4_1.gguf", None)
    monkeypatch.setenv("HF_TOKEN", "hf_not_granted")
    with pytest.raises(GatedRepo, match="HF_TOKEN"):
        service.client.file_location(GATED, "Gated-Q4_1.gguf", None)
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    assert service.repo(GATED)["models"][0]["verdict"]["fit"] == "gpu"


def test_a_missing_repo_or_an_unreachable_hub_is_a_clear_message(service, monkeypatch):
    with pytest.raises(HubNotFound, match="was not found on the hub"):
        service.repo("nobody/Nothing-GGUF")
    with pytest.raises(UnsafeName, match="owner/name"):
        service.repo("../etc")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(HubUnreachable, match="HF_ENDPOINT"):
        service.search("llama")


def test_a_file_name_that_climbs_out_is_refused_before_any_request(service, hub, tmp_path):
    view = service.repo("evil/Escape-GGUF")
    bad = next(m for m in view["models"] if "escape" in m["key"])
    assert bad["verdict"] is None and "refused" in bad["error"]
    assert not [r for r in hub.requests if "escape" in str(r.get("path")) or r.get("file") == "../../escape.gguf"]
    with pytest.raises(UnsafeName, match="refused"):
        service.pull("evil/Escape-GGUF", "../../escape.gguf")
    assert not list(tmp_path.parent.glob("escape.gguf")) and not list(tmp_path.rglob("escape.gguf*"))
