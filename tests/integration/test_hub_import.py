"""Models already on disk registered where they are: a file, a folder, the Hugging Face cache,
LM Studio's folder and Ollama's blob store (laid out as those programs lay them out), never
copied; removing an imported model leaves its file alone."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.app.hub.importers import Importer
from tandem.app.hub.service import installed_models
from tandem.app.store import Store
from tandem.runtime.synth import preset, write_model


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "tandem.db")
    yield s
    s.close()


def place(src: Path, dest: Path) -> Path:
    """A real copy of the model's bytes (hard link when on one filesystem)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        dest.write_bytes(src.read_bytes())
    return dest


def test_a_folder_registers_its_models_in_place_and_skips_damaged_ones(store, tmp_path, model_path):
    folder = tmp_path / "mine"
    place(model_path, folder / "a" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    write_model(folder / "b" / "tiny-Q8_0.gguf", preset("tiny", quant="Q8_0"))
    write_model(folder / "broken-Q4_0.gguf", preset("tiny"), truncate_to=100_000)
    (folder / "notes.txt").write_text("not a model")
    result = Importer(store).import_path(folder)
    assert sorted(Path(m["path"]).name for m in result.registered) == ["SmolLM2-135M-Instruct.Q4_1.gguf", "tiny-Q8_0.gguf"]
    [skipped] = result.skipped
    assert skipped["path"].endswith("broken-Q4_0.gguf") and "truncated" in skipped["reason"]
    rows = installed_models(store)
    assert {r["source"] for r in rows} == {"import:file"} and not any(r["owned"] for r in rows)
    assert all(Path(r["path"]).parent.is_relative_to(folder) for r in rows)  # not copied
    again = Importer(store).import_path(folder)
    assert len(installed_models(store)) == 2 and len(again.registered) == 2  # importing twice changes nothing


def test_the_hugging_face_cache_layout(store, tmp_path, model_path):
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF"
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    blob = place(model_path, repo / "blobs" / digest)
    snap = repo / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (snap / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    result = Importer(store).import_hf_cache(cache)
    [m] = result.registered
    assert m["repo_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF" and m["quant"] == "Q4_1"
    assert m["path"] == str(snap / "SmolLM2-135M-Instruct.Q4_1.gguf") and m["source"] == "import:hf-cache"


def test_lm_studio_folder_through_the_command(tmp_path, model_path, gemma_path):
    root = tmp_path / "lmstudio"
    place(model_path, root / "bartowski" / "SmolLM2-135M-Instruct-GGUF" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    place(gemma_path, root / "unsloth" / "gemma-3-270m-it-GGUF" / "gemma-3-270m-it-Q4_K_M.gguf")
    env = {**os.environ, "TANDEM_DATA_DIR": str(tmp_path / "data"), "LMSTUDIO_MODELS_DIR": str(root)}
    r = subprocess.run([sys.executable, "-m", "tandem.app", "import", "--from", "lmstudio"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("registered ") == 2
    store = Store(tmp_path / "data" / "tandem.db")
    try:
        imported = [m for m in store.list_models() if m["source"] != "embedded"]  # the built-in is listed too
        assert sorted(m["repo_id"] for m in imported) == ["bartowski/SmolLM2-135M-Instruct-GGUF",
                                                          "unsloth/gemma-3-270m-it-GGUF"]
        gemma = next(m for m in imported if m["repo_id"].startswith("unsloth"))
    finally:
        store.close()
    rm = subprocess.run([sys.executable, "-m", "tandem.app", "rm", gemma["id"]], env=env, capture_output=True, text=True)
    assert rm.returncode == 0 and "left in place" in rm.stdout
    assert Path(gemma["path"]).exists()  # imported: unregistered only


def test_ollama_manifests_name_their_gguf_blobs_and_a_hostile_digest_is_refused(store, tmp_path, model_path):
    root = tmp_path / "ollama"
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    place(model_path, root / "blobs" / f"sha256-{digest}")
    (root / "blobs" / ("sha256-" + "1" * 64)).write_text("{{ .Prompt }}")
    manifest = {"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64, "size": 13}]}
    lib = root / "manifests" / "registry.ollama.ai" / "library"
    (lib / "smollm2").mkdir(parents=True)
    (lib / "smollm2" / "135m").write_text(json.dumps(manifest))
    evil = {"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../../../etc/passwd"}]}
    (lib / "evil").mkdir()
    (lib / "evil" / "latest").write_text(json.dumps(evil))
    result = Importer(store).import_ollama(root)
    [m] = result.registered
    assert m["name"] == "smollm2:135m" and m["id"] == "smollm2-135m" and m["source"] == "import:ollama"
    assert m["path"] == str(root / "blobs" / f"sha256-{digest}")
    [skipped] = result.skipped
    assert "evil" in skipped["path"] and "not a SHA-256" in skipped["reason"]
