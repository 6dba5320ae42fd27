"""scripts/gpu_validate.py on this machine's CPU (--cpu-smoke): every step a GPU run takes, on a
tiny model, so that scarce GPU time is not lost to a broken script."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_validation_script_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_validate.py"), "--cpu-smoke", "--out", str(out),
                        "--tokens", "16"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    measured = [row for row in run["rows"] if row.get("fits")]
    assert any(row["plan"] for row in measured)
    assert all(row["decode_tps"] > 0 and row["prefill_tps"] > 0 for row in measured)
    (summary,) = report["summary"]
    assert summary["plan_ngl"] == 0 and summary["speedup_vs_cpu"] == 1.0
    assert "plan/best" in r.stdout
    # the Dovetail step: zero-weight draft and model agree on every token, so every draft is accepted
    dovetail = report["dovetail"]
    assert dovetail["draft_alone"]["decode_tps"] > 0
    (option,) = dovetail["options"]
    assert option["drafted"] >= 1 and option["accepted"] == option["drafted"]
    assert option["plain_tps"] > 0 and option["spec_tps"] > 0


def test_without_a_gpu_the_real_run_says_what_to_do(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_validate.py"), "--out", str(tmp_path / "x.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--cpu-smoke" in r.stderr
