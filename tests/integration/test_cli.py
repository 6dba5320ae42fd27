"""The `tandem` command as a person runs it: real processes, real ports, real exit codes."""

import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

TANDEM = [sys.executable, "-m", "tandem.app"]


def run(args, tmp_path, **kw):
    env = {**os.environ, "TANDEM_DATA_DIR": str(tmp_path)}
    env.pop("DISPLAY", None)
    return subprocess.run(TANDEM + args, capture_output=True, text=True, env=env, timeout=120, **kw)


def test_version(tmp_path):
    r = run(["--version"], tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("tandem ")


def test_missing_model_is_one_line_and_non_zero(tmp_path):
    r = run(["serve", "--port", "0", "--model", str(tmp_path / "nope.gguf")], tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "Model file not found" in r.stderr and "Traceback" not in r.stderr


def test_port_in_use_is_one_line_and_non_zero(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(["serve", "--port", str(port)], tmp_path)
    assert r.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0


def test_bad_setting_is_reported_without_a_traceback(tmp_path):
    r = run(["serve", "--port", "99999"], tmp_path)
    assert r.returncode == 2 and "port" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_answers_then_shuts_down_cleanly(tmp_path, sig):
    env = {**os.environ, "TANDEM_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(TANDEM + ["serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+?/", line).group(0)
        assert httpx.get(url + "api/health", timeout=10).json()["status"] == "ok"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    # the database was closed cleanly: no WAL left to replay
    assert not (tmp_path / "tandem.db-wal").exists() or (tmp_path / "tandem.db-wal").stat().st_size == 0


def test_without_a_display_the_url_is_printed(tmp_path):
    env = {**os.environ, "TANDEM_DATA_DIR": str(tmp_path), "BROWSER": "true"}
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        env.pop(var, None)
    proc = subprocess.Popen(TANDEM + ["--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Open http://127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_context_bench_runs_every_policy_and_both_returns(tmp_path, capsys, model_path):
    """A small run of `tandem bench --context` (the real one takes minutes): the table is whole."""
    from tandem.app.bench_context import run_context_bench
    from tandem.app.config import Settings

    assert run_context_bench(Settings(data_dir=tmp_path), model_path, 256, factor=2, reply=8,
                             resume_tokens=300, rounds=1, repeats=1) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] and
            line.split()[0] in ("sink_window", "drop_turns", "stop")}
    assert "no turn failed" in rows["sink_window"] and "no turn failed" in rows["drop_turns"]
    assert "refused at turn" in rows["stop"]
    assert re.search(r"saved cache restored\s+\d+\.\d+", out) and re.search(r"re-evaluated\s+\d+\.\d+", out)
    assert re.search(r"goal resume <= 0.2 x re-evaluation: (met|NOT met)", out)


def test_paths_bench_measures_every_path_and_the_ceiling(tmp_path, capsys, model_path):
    """A small run of `tandem bench --paths`: the library, the engine, both HTTP APIs and the bare loop
    each decode the tokens asked for and get a speed relative to the library and to the engine."""
    from tandem.app.bench import run_paths
    from tandem.app.config import Settings

    assert run_paths(Settings(data_dir=tmp_path, n_ctx=1024), model_path, tokens=16, runs=1) == 0
    out = capsys.readouterr().out
    for path in ("library", "engine", "http", "ollama", "ceiling"):
        row = next(line for line in out.splitlines() if line.split()[:1] == [path])
        count, median, best, vs_library, vs_engine = row.split()[1:]
        assert int(count) >= 8 and float(median) > 0 and float(vs_library) > 0 and float(vs_engine) > 0, row
        assert float(best) >= float(median), row
    engine_row = next(line for line in out.splitlines() if line.split()[:1] == ["engine"])
    assert engine_row.split()[-1] == "1.00"


def test_spec_bench_compares_the_library_plain_and_lookup_on_both_tasks(tmp_path, capsys, model_path):
    """A small run of `tandem bench --spec`: each task has its rows and its goal lines."""
    from tandem.app.bench_spec import run_spec_bench
    from tandem.app.config import Settings

    assert run_spec_bench(Settings(data_dir=tmp_path), model_path, tokens=16, runs=1) == 0
    out = capsys.readouterr().out
    assert out.count("task: ") == 2
    for name in ("library", "plain", "lookup"):
        rows = [line.split() for line in out.splitlines() if line.startswith(name + " ")]
        assert len(rows) == 2 and all(float(r[2]) > 0 for r in rows), rows
    assert re.search(r"goal copy: lookup >= 1.3 x plain: (met|NOT met)", out)


def test_hardware_says_whether_replies_energy_is_counted(tmp_path):
    from tandem.runtime.hardware.energy import EnergyMeter

    r = run(["hardware"], tmp_path)
    assert r.returncode == 0, r.stderr
    [line] = [x for x in r.stdout.splitlines() if x.startswith("Energy ")]
    sources = EnergyMeter().sources
    assert (f"counted by {', '.join(sources)}" if sources else "not counted (no readable RAPL") in line
