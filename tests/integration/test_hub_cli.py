"""`tandem search / pull / models / rm` as real processes against a local hub: a pull killed with
SIGKILL, paused with Ctrl-C and cut by the server resumes each time and is registered once."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.hubserver import Fault, HubServer

PROFILE = Path(__file__).parent.parent / "fixtures" / "hardware" / "cpu-only-8gb-laptop.json"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TANDEM = [sys.executable, "-m", "tandem.app"]


@pytest.fixture()
def hub(model_path):
    with HubServer() as server:
        server.add_repo(SMOL, {FILE: model_path}, downloads=10)
        yield server


def env_for(hub, data_dir):
    env = {**os.environ, "TANDEM_DATA_DIR": str(data_dir), "HF_ENDPOINT": hub.url,
           "TANDEM_HARDWARE_PROFILE": str(PROFILE), "TANDEM_DOWNLOAD_STALL_S": "2", "TANDEM_DOWNLOAD_BACKOFF_S": "0.05"}
    for k in ("DISPLAY", "HF_TOKEN", "TANDEM_MODELS_DIR"):
        env.pop(k, None)
    return env


def tandem(args, hub, data_dir, timeout=120):
    return subprocess.run(TANDEM + args, capture_output=True, text=True, env=env_for(hub, data_dir), timeout=timeout)


def part_size(part: Path) -> int:
    return part.stat().st_size if part.exists() else 0


def wait_until(cond, proc, timeout=60):
    end = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_a_pull_cut_killed_and_paused_resumes_each_time_and_registers_once(hub, tmp_path, model_path):
    folder = tmp_path / "models" / "HuggingFaceTB" / "SmolLM2-135M-Instruct-GGUF"
    part = folder / (FILE + ".part")
    hub.file(SMOL, FILE).fault = Fault(throttle_bps=12_000_000, drop_after=8_000_000)
    first = subprocess.Popen(TANDEM + ["pull", f"{SMOL}:Q4_1"], env=env_for(hub, tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: part_size(part) > 20_000_000, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = part_size(part)
    with sqlite3.connect(tmp_path / "tandem.db") as db:
        assert db.execute("select status from downloads").fetchall() == [("downloading",)]

    second = subprocess.Popen(TANDEM + ["pull", f"{SMOL}:Q4_1"], env=env_for(hub, tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: part_size(part) > killed_at + 15_000_000, second)
    second.send_signal(signal.SIGINT)  # Ctrl-C pauses
    out, err = second.communicate(timeout=30)
    assert second.returncode == 1 and "Paused" in err and "same command to resume" in err
    paused_at = part_size(part)
    assert "CPU only" in out and "tokens/s" in out  # the verdict came before the bytes

    hub.file(SMOL, FILE).fault = Fault()
    third = tandem(["pull", f"{SMOL}:Q4_1"], hub, tmp_path)
    assert third.returncode == 0, third.stderr
    assert "Installed as" in third.stdout
    streams = [g["range"] for g in hub.cdn_gets(FILE) if not g["range"] or g["range"].endswith("-")]
    assert streams == [None, "bytes=8000000-", f"bytes={killed_at}-", f"bytes={paused_at}-"]
    final = folder / FILE
    assert hashlib.sha256(final.read_bytes()).hexdigest() == hub.file(SMOL, FILE).sha256
    with sqlite3.connect(tmp_path / "tandem.db") as db:
        assert db.execute("select count(*) from models where path = ?", [str(final)]).fetchone() == (1,)
        assert db.execute("select status from downloads").fetchall() == [("complete",)]


def test_search_models_and_rm_from_the_command_line(hub, tmp_path):
    found = tandem(["search", "smollm2"], hub, tmp_path)
    assert found.returncode == 0 and SMOL in found.stdout
    listing = tandem(["pull", SMOL], hub, tmp_path)  # no quant: the repo's verdicts, then the recommended one
    assert listing.returncode == 0, listing.stderr
    assert "* Q4_1" in listing.stdout and "recommended here" in listing.stdout
    models = tandem(["models", "--json"], hub, tmp_path)
    [row] = [m for m in json.loads(models.stdout) if m["source"] == "download"]
    assert row["verdict"]["fit"] == "cpu" and row["verdict"]["decode_tps"] > 0 and not row["missing"]
    Path(row["path"]).rename(Path(row["path"]).with_suffix(".moved"))
    missing = tandem(["models"], hub, tmp_path)
    assert "MISSING" in missing.stdout and f"tandem pull {SMOL}:Q4_1" in missing.stdout
    Path(row["path"]).with_suffix(".moved").rename(row["path"])
    removed = tandem(["rm", row["id"]], hub, tmp_path)
    assert removed.returncode == 0 and "deleted 1 file" in removed.stdout
    assert not Path(row["path"]).exists()
    bad = tandem(["pull", "nobody/Nothing-GGUF:Q4_0"], hub, tmp_path)
    assert bad.returncode == 1 and "was not found on the hub" in bad.stderr and "Traceback" not in bad.stderr
