"""Downloads against a real local hub (a redirect to a second origin, HTTP Range) with faults:
a dropped connection, damaged bytes, a stalled server, a missing file, a full disk, a restart,
pause / resume / cancel, two managers on one file; registered once, only when verified."""

import hashlib
import time
from pathlib import Path

import pytest

from tandem.app.config import Settings
from tandem.app.errors import Conflict
from tandem.app.hub import HubService
from tandem.app.hub.client import HubNotFound
from tandem.app.hub.downloads import NotEnoughSpace
from tandem.app.hub.transfer import CHUNK, TransferOptions
from tandem.app.services.hardware import HardwareService
from tandem.app.store import Store
from tandem.runtime.gguf import check_model_file
from tests.fixtures.hubserver import Fault, HubServer, split_gguf

PROFILE = Path(__file__).parent.parent / "fixtures" / "hardware" / "cpu-only-8gb-laptop.json"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FAST = TransferOptions(stall_s=0.5, retries=3, backoff_s=0.05)


@pytest.fixture()
def hub(model_path):
    with HubServer() as server:
        server.add_repo(SMOL, {FILE: model_path})
        yield server


def open_service(data_dir: Path, **kw) -> HubService:
    settings = Settings(data_dir=data_dir, hardware_profile=PROFILE)
    return HubService(settings, Store(settings.db_path), HardwareService(settings).profile,
                      options=kw.pop("options", FAST), **kw)


@pytest.fixture()
def service(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("TANDEM_MODELS_DIR", raising=False)
    svc = open_service(tmp_path)
    yield svc
    svc.close()
    svc.store.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def registered(svc: HubService, path: Path) -> list[dict]:
    return [m for m in svc.store.list_models() if m["path"] == str(path)]


def streams(hub: HubServer) -> list:
    """The Range headers of the download's GETs (a header read for the verdict asks for a closed range)."""
    return [g["range"] for g in hub.cdn_gets(FILE) if not g["range"] or g["range"].endswith("-")]


def pull(svc: HubService, wanted=FILE, repo=SMOL) -> dict:
    _, status = svc.pull(repo, wanted)
    return svc.downloads.wait(status["id"], timeout=120)


def test_the_real_model_comes_through_the_redirect_verified_and_registered_once(service, hub, model_path):
    done = pull(service)
    assert done["status"] == "complete", done["error"]
    path = service.models_dir / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF" / FILE
    assert sha(path) == sha(model_path) == hub.file(SMOL, FILE).sha256
    assert check_model_file(path) == path.resolve()
    [model] = registered(service, path)
    assert model["id"] == done["model_id"] and model["source"] == "download" and model["owned"] == 1
    assert model["id"] != "smollm2-135m-instruct-q4_1"  # the built-in model keeps its id
    assert model["size_bytes"] == model_path.stat().st_size and model["sha256"] == hub.file(SMOL, FILE).sha256
    resolves = [r for r in hub.requests if r["origin"] == "hub" and "/resolve/" in r["path"]]
    assert resolves and all(done["revision"] in r["path"] for r in resolves)  # pinned to one commit
    assert streams(hub) == [None]
    assert not list(path.parent.glob("*.part"))
    with pytest.raises(Conflict, match="already installed"):
        service.pull(SMOL, FILE)


def test_a_dropped_connection_resumes_from_the_partial_byte_count(service, hub, model_path):
    hub.file(SMOL, FILE).fault = Fault(drop_after=30_000_000, drops=2)
    done = pull(service)
    assert done["status"] == "complete", done["error"]
    assert streams(hub) == [None, "bytes=30000000-", "bytes=60000000-"]
    assert sha(Path(service.store.get_model(done["model_id"])["path"])) == sha(model_path)


def test_damaged_bytes_are_rejected_deleted_and_a_retry_succeeds(service, hub, model_path):
    hub.file(SMOL, FILE).fault = Fault(corrupt_at=12_345_678)
    done = pull(service)
    assert done["status"] == "failed" and done["error_code"] == "checksum_mismatch"
    assert "SHA-256" in done["error"] and "retry" in done["error"]
    assert service.store.list_models() == []
    folder = service.models_dir / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF"
    assert not list(folder.glob("*.gguf*"))
    hub.file(SMOL, FILE).fault = Fault()
    service.downloads.resume(done["id"])
    again = service.downloads.wait(done["id"], timeout=120)
    assert again["status"] == "complete" and len(service.store.list_models()) == 1


def test_a_stalled_server_is_detected_and_the_download_goes_on(service, hub, model_path):
    hub.file(SMOL, FILE).fault = Fault(stall_after=5_000_000, stall_s=3.0)
    done = pull(service)
    assert done["status"] == "complete", done["error"]
    # the stall came inside a 1 MiB read: the download goes on from the last whole read on disk
    assert streams(hub) == [None, f"bytes={5_000_000 // CHUNK * CHUNK}-"]


def test_a_missing_file_is_refused_before_a_download_and_fails_one_at_once(service, hub):
    hub.file(SMOL, FILE).fault = Fault(resolve_status=404)
    with pytest.raises(HubNotFound, match="not in the repo"):
        service.pull(SMOL, FILE)
    assert service.downloads.list() == []
    # removed from the repo while it downloads: the next attempt finds it gone and stops, no retries
    hub.file(SMOL, FILE).fault = fault = Fault(throttle_bps=5_000_000, drop_after=5_000_000)
    _, status = service.pull(SMOL, FILE)
    part = service.models_dir / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF" / (FILE + ".part")
    wait_for(lambda: part.exists() and part.stat().st_size > 1_000_000)
    seen = len(hub.requests)
    fault.resolve_status = 404
    done = service.downloads.wait(status["id"], timeout=60)
    assert done["status"] == "failed" and "not in the repo" in done["error"]
    assert done["error_code"] == "hub_not_found"
    assert len([r for r in hub.requests[seen:] if "/resolve/" in str(r.get("path"))]) == 1  # not retried
    assert streams(hub) == [None]


def test_pause_resume_and_cancel(service, hub, model_path):
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=20_000_000)
    _, status = service.pull(SMOL, FILE)
    part = service.models_dir / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF" / (FILE + ".part")
    wait_for(lambda: part.exists() and part.stat().st_size > 5_000_000)
    paused = service.downloads.pause(status["id"])
    assert paused["status"] == "paused"
    size = part.stat().st_size
    time.sleep(0.3)
    assert part.stat().st_size == size  # nothing runs while paused
    hub.file(SMOL, FILE).fault = Fault()
    service.downloads.resume(status["id"])
    done = service.downloads.wait(status["id"], timeout=120)
    assert done["status"] == "complete" and streams(hub)[-1] == f"bytes={size}-"

    service.remove(done["model_id"])
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=20_000_000)
    _, status = service.pull(SMOL, FILE)
    wait_for(lambda: part.exists() and part.stat().st_size > 1_000_000)
    assert service.downloads.cancel(status["id"])["status"] == "cancelled"
    assert not part.exists() and service.store.list_models() == []


@pytest.fixture(scope="module")
def parts(model_path, tmp_path_factory):
    return split_gguf(model_path, tmp_path_factory.mktemp("split"), "SmolLM2-135M-Instruct-Q4_1", 2)


def test_a_split_model_is_verified_part_by_part_and_registered_once(service, hub, parts):
    hub.add_repo("tandem-test/Split-GGUF", {f"Q4_1/{p.name}": p for p in parts})
    done = pull(service, "Q4_1", repo="tandem-test/Split-GGUF")
    assert done["status"] == "complete", done["error"]
    model = service.store.get_model(done["model_id"])
    assert model["path"].endswith("Q4_1/SmolLM2-135M-Instruct-Q4_1-00001-of-00002.gguf")
    assert model["size_bytes"] == sum(p.stat().st_size for p in parts)
    [row] = [m for m in service.installed() if m["id"] == done["model_id"]]
    assert not row["missing"] and row["disk_bytes"] == model["size_bytes"]
    Path(model["path"]).with_name(parts[1].name).unlink()
    [row] = [m for m in service.installed() if m["id"] == done["model_id"]]
    assert row["missing"] and row["missing_files"] == [parts[1].name]


def test_a_download_goes_on_after_the_app_closed_mid_file(hub, tmp_path, monkeypatch, model_path):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=20_000_000)
    first = open_service(tmp_path)
    _, status = first.pull(SMOL, FILE)
    part = first.models_dir / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF" / (FILE + ".part")
    wait_for(lambda: part.exists() and part.stat().st_size > 3_000_000)
    first.close()
    first.store.close()
    size = part.stat().st_size
    hub.file(SMOL, FILE).fault = Fault()
    second = open_service(tmp_path)
    assert second.downloads.resume_interrupted() == [status["id"]]
    done = second.downloads.wait(status["id"], timeout=120)
    assert done["status"] == "complete" and streams(hub)[-1] == f"bytes={size}-"
    assert len(registered(second, Path(second.store.get_model(done["model_id"])["path"]))) == 1
    second.close()
    second.store.close()


def test_two_managers_never_write_one_file_at_once(hub, tmp_path, monkeypatch, model_path):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=40_000_000)
    a, b = open_service(tmp_path), open_service(tmp_path)
    _, status = a.pull(SMOL, FILE)
    b.downloads.resume_interrupted()  # the other "process" tries to take the same download
    done = a.downloads.wait(status["id"], timeout=120)
    assert done["status"] == "complete"
    assert sha(Path(a.store.get_model(done["model_id"])["path"])) == sha(model_path)
    assert len(a.store.list_models()) == 1 and len(streams(hub)) == 1
    for s in (a, b):
        s.close()
        s.store.close()


def test_downloads_beyond_the_limit_wait_their_turn(hub, tmp_path, monkeypatch, model_path, gemma_path):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    hub.add_repo("unsloth/gemma-3-270m-it-GGUF", {"gemma-3-270m-it-Q4_K_M.gguf": gemma_path})
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=40_000_000)
    svc = open_service(tmp_path, max_active=1)
    _, first = svc.pull(SMOL, FILE)
    _, second = svc.pull("unsloth/gemma-3-270m-it-GGUF", "Q4_K_M")
    part = svc.models_dir / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF" / (FILE + ".part")
    wait_for(lambda: part.exists() and part.stat().st_size > 50_000_000)  # halfway through the first
    assert svc.downloads.status(second["id"])["status"] == "queued"
    gemma_streams = [g["range"] for g in hub.requests if g["origin"] == "cdn" and g["method"] == "GET"
                     and g.get("file") == "gemma-3-270m-it-Q4_K_M.gguf" and (not g["range"] or g["range"].endswith("-"))]
    assert gemma_streams == []  # its header was read for the verdict, its bytes wait for a free slot
    assert svc.downloads.wait(first["id"], timeout=60)["status"] == "complete"
    assert svc.downloads.wait(second["id"], timeout=60)["status"] == "complete"
    assert len(svc.store.list_models()) == 2
    svc.close()
    svc.store.close()


def test_a_disk_that_fills_pauses_the_download_with_a_clear_message(hub, tmp_path, small_disk, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("TANDEM_MODELS_DIR", str(small_disk / "models"))
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=30_000_000)
    svc = open_service(tmp_path)
    _, status = svc.pull(SMOL, FILE)
    filler = small_disk / "other-program.bin"
    filler.write_bytes(b"\1" * 120_000_000)  # another program takes the space meanwhile
    done = svc.downloads.wait(status["id"], timeout=60)
    assert done["status"] == "paused" and done["error_code"] == "disk_full"
    assert "disk" in done["error"] and "full" in done["error"] and "resume" in done["error"]
    assert svc.store.list_models() == []
    filler.unlink()
    hub.file(SMOL, FILE).fault = Fault()
    svc.downloads.resume(status["id"])
    assert svc.downloads.wait(status["id"], timeout=120)["status"] == "complete"
    assert len(svc.store.list_models()) == 1
    svc.close()
    svc.store.close()


def test_not_enough_space_is_refused_before_a_byte_is_fetched(hub, tmp_path, small_disk, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("TANDEM_MODELS_DIR", str(small_disk / "models"))
    (small_disk / "other-program.bin").write_bytes(b"\1" * 120_000_000)
    svc = open_service(tmp_path)
    with pytest.raises(NotEnoughSpace, match="needs 0.10 GB.*Free some space"):
        svc.pull(SMOL, FILE)
    assert svc.downloads.list() == [] and streams(hub) == []
    svc.close()
    svc.store.close()


def wait_for(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)
