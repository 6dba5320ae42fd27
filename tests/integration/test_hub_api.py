"""The model manager over HTTP on a real server: search, a repo's verdicts, a download followed
as server-sent events, pause / resume, the installed list, removal, and errors as JSON."""

from pathlib import Path

import httpx
import pytest

from tandem.app.server import ServerThread
from tests.conftest import make_settings, read_sse
from tests.fixtures.hubserver import Fault, HubServer

PROFILE = Path(__file__).parent.parent / "fixtures" / "hardware" / "cpu-only-8gb-laptop.json"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def hub(model_path):
    with HubServer() as server:
        server.add_repo(SMOL, {FILE: model_path}, downloads=10)
        server.add_repo("meta-test/Gated-GGUF", {"Gated-Q4_1.gguf": model_path}, gated=True)
        yield server


@pytest.fixture(scope="module")
def api(hub, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_ENDPOINT", hub.url)
    mp.delenv("HF_TOKEN", raising=False)
    mp.setenv("TANDEM_DOWNLOAD_STALL_S", "2")
    settings = make_settings(tmp_path_factory.mktemp("data"), hardware_profile=PROFILE)
    with ServerThread(settings) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client
    mp.undo()


def test_search_and_a_repo_with_its_verdicts(api):
    assert [m["id"] for m in api.get("/api/hub/search", params={"q": "smol"}).json()] == [SMOL]
    repo = api.get(f"/api/hub/repos/{SMOL}").json()
    [model] = repo["models"]
    assert model["quant"] == "Q4_1" and model["recommended"] and repo["recommended"] == FILE
    v = model["verdict"]
    assert v["fit"] == "cpu" and v["decode_tps"] > 0 and v["memory"][0]["device"] == "CPU"
    assert v["drafts"] == []  # the built-in model is this same file: it cannot draft for itself
    catalog = api.get("/api/hub/catalog").json()
    assert len(catalog["models"]) >= 10 and catalog["drafts"]


def test_a_download_streams_progress_until_registered_then_is_removed(api, hub):
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=40_000_000)
    r = api.post("/api/hub/downloads", json={"repo_id": SMOL, "file": "Q4_1"})
    assert r.status_code == 202, r.text
    download = r.json()
    assert download["verdict"]["fit"] == "cpu"
    events = []
    with api.stream("GET", "/api/hub/downloads/events", params={"id": download["id"]}) as stream:
        for event, data in read_sse(stream):
            events.append((event, data))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "complete"
    progress = [next(d for d in data if d["id"] == download["id"])["done_bytes"] for e, data in events if e == "downloads"]
    assert len(progress) >= 2 and progress == sorted(progress)
    installed = {m["id"]: m for m in api.get("/api/hub/models").json()}
    model = installed[events[-1][1]["model_id"]]
    assert model["owned"] and not model["missing"] and model["disk_bytes"] == hub.file(SMOL, FILE).size
    assert model["id"] in {m["id"] for m in api.get("/api/models").json()}  # the chat can pick it
    reply = api.post("/v1/chat/completions", json={"model": model["id"], "max_tokens": 8, "temperature": 0,
                                                   "messages": [{"role": "user", "content": "Say hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == model["id"] and reply.json()["choices"][0]["message"]["content"]
    gone = api.delete(f"/api/hub/models/{model['id']}").json()
    assert gone["deleted_files"] == [model["path"]] and not Path(model["path"]).exists()
    hub.file(SMOL, FILE).fault = Fault()


def test_pause_and_resume_over_http(api, hub):
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=20_000_000)
    download = api.post("/api/hub/downloads", json={"repo_id": SMOL, "file": FILE}).json()
    paused = api.post(f"/api/hub/downloads/{download['id']}/pause").json()
    assert paused["status"] == "paused"
    hub.file(SMOL, FILE).fault = Fault()
    assert api.post(f"/api/hub/downloads/{download['id']}/resume").json()["status"] in ("queued", "downloading", "complete")
    with api.stream("GET", "/api/hub/downloads/events", params={"id": download["id"]}) as stream:
        last = list(read_sse(stream))[-1]
    assert last[1]["status"] == "complete"
    again = api.post(f"/api/hub/downloads/{download['id']}/cancel")
    assert again.status_code == 409 and "already complete" in again.json()["error"]["message"]


def test_errors_say_what_to_do(api):
    gated = api.post("/api/hub/downloads", json={"repo_id": "meta-test/Gated-GGUF", "file": "Q4_1"})
    assert gated.status_code == 403 and "HF_TOKEN" in gated.json()["error"]["message"]
    missing = api.get("/api/hub/repos/nobody/Nothing-GGUF")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "hub_not_found"
    both = api.post("/api/hub/import", json={})
    assert both.status_code == 422 and "path" in both.json()["error"]["message"]
    nowhere = api.post("/api/hub/import", json={"path": "/nonexistent/models"})
    assert nowhere.status_code == 422 and "does not exist" in nowhere.json()["error"]["message"]
    assert api.get("/api/hub/downloads/nope").status_code == 404
