"""Pooling machines over llama.cpp RPC: a real `tandem worker` process on loopback (CPU backend),
the real model split between this process's CPU and the worker, and the app planning, loading,
losing the worker mid-reply and loading again without it."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tandem.app.server import ServerThread
from tandem.runtime.engine import Failed, Finished, LoadParams, ModelWorker, SamplingParams
from tandem.runtime.engine.stream import Embedded
from tandem.runtime.engine.kvstate import state_path
from tandem.runtime.errors import ModelLoadError
from tandem.runtime.pool import network, rpc
from tandem.runtime.pool.client import PooledWorker
from tests.conftest import make_settings
from tests.integration.test_security_api import lan_address

MODEL = "smollm2-135m-instruct-q4_1"
ASK = [{"role": "user", "content": "Write a short poem about rivers."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(*args: str, log=None) -> tuple[subprocess.Popen, str]:
    """A `tandem worker` on a free loopback port (its log, llama.cpp's lines included, to `log` or
    nowhere: a pipe nobody reads would fill up and stall it)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tandem.app", "worker", "--port", str(port), "--threads", "1", *args],
                            stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        line = proc.stdout.readline() if ready else ""
        if line.startswith("Tandem worker on"):
            return proc, f"127.0.0.1:{port}"
        if proc.poll() is not None:
            break
    stop(proc)
    raise AssertionError("tandem worker did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture()
def worker():
    proc, endpoint = start_worker()
    yield proc, endpoint
    stop(proc)
    network.forget(endpoint)


def greedy(worker, tokens: int = 48) -> str:
    return worker.submit(ASK, SamplingParams(temperature=0.0, max_tokens=tokens)).result().text


def test_the_set_up_builds_the_engine_with_rpc_and_without_amx_kernels():
    import llama_cpp

    from tandem.runtime.engine.model import guard_engine_build

    assert rpc.supported()
    assert any(d["type"] == "cpu" and d["free_bytes"] > 0 for d in rpc.local_devices())
    # llama.cpp 0.3.36's AMX kernels crash on the first prompt (Sapphire Rapids-class CPUs): the
    # set-up builds without them, so no model here needs the guard that loads without them.
    assert "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode()
    assert guard_engine_build() is False
    # llama.cpp counts its RPC backend as GPU offload; the probe asks for a GPU device, so that a
    # machine whose build cannot drive its GPU is still told how to reinstall.
    from tandem.runtime.hardware.probe import collect_llama

    gpus = [d for d in rpc.local_devices() if d["type"] in ("gpu", "igpu")]
    assert llama_cpp.llama_supports_gpu_offload()
    assert collect_llama()["supports_gpu_offload"] is bool(gpus)


def test_a_worker_advertises_its_devices_and_the_probe_measures_the_link(worker):
    _, endpoint = worker
    link = network.probe(endpoint, refresh=True)
    [served] = link.info["served"]
    assert served["type"] == "cpu" and served["free_bytes"] > 1 << 30
    assert link.info["threads"] == 1 and link.info["read_gbps"] > 0
    assert 0 < link.rtt_s < 0.1 and link.bandwidth_bps > 1e6
    assert network.probe(endpoint) is link  # cached


@pytest.mark.parametrize("args, said", [
    (["--host", "0.0.0.0"], "no authentication"),
    (["--host", "::"], "no authentication"),
    (["--host", "192.0.2.7"], "--allow"),
])
def test_a_worker_never_listens_on_an_open_network_unasked(args, said):
    r = subprocess.run([sys.executable, "-m", "tandem.app", "worker", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr


def test_a_worker_drops_connections_from_addresses_it_was_not_told_to_allow(tmp_path):
    address = lan_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    port = free_port()
    log = tmp_path / "worker.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tandem.app", "worker", "--host", address, "--port", str(port),
                                 "--allow", "192.0.2.1", "--threads", "1"], stdout=subprocess.PIPE, stderr=f, text=True)
    try:
        assert proc.stdout.readline().startswith("Tandem worker on")
        # this machine reaches the LAN address from the LAN address: not loopback, not allowed
        with pytest.raises(network.WorkerUnreachable):
            network.probe(f"{address}:{port}", refresh=True)
        time.sleep(0.5)
        assert f"refused a connection from {address} (not in the allow-list)" in log.read_text()
    finally:
        stop(proc)


def test_the_gate_answers_hostile_http_and_stray_bytes_without_falling_over(worker):
    proc, endpoint = worker
    host, port = network.split_endpoint(endpoint)

    def exchange(data: bytes) -> bytes:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            try:
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except ConnectionResetError:  # closed with our bytes unread: closed all the same
                pass
            return b"".join(chunks)

    assert exchange(b"GET /tandem/probe HTTP/1.1\r\nContent-Length: abc\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert exchange(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 100 + b"\r\n").startswith(b"HTTP/1.1 431")
    assert exchange(b"POST /tandem/probe HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n").startswith(b"HTTP/1.1 413")
    assert exchange(b"\x01") == b""  # too short to be anything: closed
    assert exchange(b"\xff\xff\xff\xff garbage") == b""  # not a command llama.cpp knows: closed
    # the gate frees its one RPC client slot just after both directions have closed
    deadline = time.monotonic() + 10
    while network.probe(endpoint, refresh=True).info["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None and network.probe(endpoint, refresh=True).info["busy"] is False


def test_a_model_split_across_this_machine_and_a_worker_writes_the_same_greedy_text(worker, model_path):
    _, endpoint = worker
    local = ModelWorker.open(LoadParams(model_path, n_ctx=1024, n_threads=1))
    try:
        alone = greedy(local)
    finally:
        local.close()
    pooled = PooledWorker.open(LoadParams(model_path, n_ctx=1024, n_threads=1, n_gpu_layers=15, rpc=(endpoint,)))
    try:
        assert greedy(pooled) == alone
        assert pooled.n_ctx == 1024 and pooled.metadata.get("general.architecture") == "llama"
    finally:
        pooled.close()
    assert pooled.closed and pooled._proc.poll() is not None  # the pool host ended with it


def embedded(stream) -> Embedded:
    events = list(stream)
    assert isinstance(events[-1], Embedded), events[-1]
    return events[-1]


def test_a_pooled_model_embeds_and_keeps_conversations_caches(worker, model_path, tmp_path):
    """What a local model serves besides chat: embeddings (the same vectors as this machine alone
    computes) and conversations' caches saved when another takes the model, restored on return."""
    _, endpoint = worker
    texts = ["The river runs down to the sea.", "Share prices fell sharply today."]
    local = ModelWorker.open(LoadParams(model_path, n_ctx=1024, n_threads=1))
    try:
        alone = embedded(local.embed(texts))
    finally:
        local.close()
    pooled = PooledWorker.open(LoadParams(model_path, n_ctx=1024, n_threads=1, n_gpu_layers=15, rpc=(endpoint,)),
                               saved_states=tmp_path)
    reply = SamplingParams(temperature=0.0, max_tokens=24)
    a = [{"role": "user", "content": "List three facts about Mars."}]
    try:
        got = embedded(pooled.embed(texts))
        assert got.prompt_tokens == alone.prompt_tokens
        for mine, theirs in zip(got.vectors, alone.vectors):
            assert sum(x * y for x, y in zip(mine, theirs)) == pytest.approx(1.0, abs=1e-3)
        bad = list(pooled.embed(["x" * 200_000]))[-1]  # longer than the model reads: refused, the model stays
        assert isinstance(bad, Failed) and bad.error.code == "context_overflow"
        first = pooled.submit(a, reply, key="a").result()
        a += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And one about Venus."}]
        pooled.submit([{"role": "user", "content": "Hi"}], reply, key="b").result()  # b takes the model: a is saved
        assert state_path(tmp_path, "a").exists()
        back = pooled.submit(a, reply, key="a").result()
    finally:
        pooled.close()
    assert back.stats.restored_tokens > 0 and back.stats.cached_tokens > first.stats.prompt_tokens


def test_a_pooled_reply_can_be_stopped_and_the_model_closed_mid_reply(worker, model_path):
    _, endpoint = worker
    pooled = PooledWorker.open(LoadParams(model_path, n_ctx=1024, n_threads=1, n_gpu_layers=10, rpc=(endpoint,)))
    long = SamplingParams(temperature=0.0, max_tokens=2000, ignore_eos=True)
    try:
        with pytest.raises(ValueError, match="speculative"):
            pooled.submit(ASK, long, speculative="sometimes")
        stream = pooled.submit(ASK, long)
        for n, event in enumerate(stream):
            if n == 5:
                stream.cancel()
        assert event.finish_reason == "cancelled" and 0 < event.stats.completion_tokens < 2000
        assert network.probe(endpoint, refresh=True).info["busy"]  # this model holds the worker
        # a second model on the same worker is refused at once (llama.cpp serves one at a time)
        with pytest.raises(ModelLoadError):
            PooledWorker.open(LoadParams(model_path, n_ctx=512, n_threads=1, n_gpu_layers=5, rpc=(endpoint,)))
        running = pooled.submit(ASK, long)
        queued = pooled.submit(ASK, long)
        assert not isinstance(next(iter(running)), Failed)
    finally:
        pooled.close()
    for stream in (running, queued):  # unloading ends both: nothing is left waiting
        last = list(stream)[-1]
        assert isinstance(last, (Failed, Finished))
        if isinstance(last, Finished):
            assert last.finish_reason == "cancelled"


def test_a_pool_that_cannot_connect_is_a_load_error_not_a_crash(model_path):
    port = free_port()  # nothing listens there
    with pytest.raises(ModelLoadError) as info:
        PooledWorker.open(LoadParams(model_path, n_ctx=512, n_threads=1, n_gpu_layers=5, rpc=(f"127.0.0.1:{port}",)))
    assert f"127.0.0.1:{port}" in str(info.value) and "Is each `tandem worker` running" in str(info.value)


def test_a_pool_planned_with_a_gpu_this_engine_cannot_see_is_a_load_error(worker, model_path):
    """A plan that keeps layers on this machine's GPU lists it after the workers; where the engine
    sees no such GPU the pool host says so before connecting to any worker, and the worker stays
    free for the next load."""
    if any(d["type"] != "cpu" for d in rpc.local_devices()):
        pytest.skip("this engine build sees a GPU")
    _, endpoint = worker
    with pytest.raises(ModelLoadError, match=r"GPU 0 of this machine, but this engine build sees 0 GPU"):
        PooledWorker.open(LoadParams(model_path, n_ctx=512, n_threads=1, n_gpu_layers=8, tensor_split=(4.0, 4.0),
                                     rpc=(endpoint,), rpc_local_gpu=0))
    pooled = PooledWorker.open(LoadParams(model_path, n_ctx=512, n_threads=1, n_gpu_layers=8, rpc=(endpoint,)))
    try:
        assert greedy(pooled, 8)
    finally:
        pooled.close()


def chat(api: httpx.Client, tokens: int = 48) -> httpx.Response:
    return api.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": tokens, "temperature": 0})


def embed(api) -> list[float]:
    r = api.post("/v1/embeddings", json={"model": MODEL, "input": "Rivers run to the sea."})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["embedding"]


def test_the_app_pools_loses_the_worker_mid_reply_and_carries_on_alone(tmp_path):
    settings = make_settings(tmp_path, pool="always", pool_layers=15, n_threads=1, speculative="off")
    proc, endpoint = start_worker()
    try:
        with ServerThread(settings) as srv, httpx.Client(base_url=srv.url, timeout=120) as api:
            alone = chat(api).json()["choices"][0]["message"]["content"]
            alone_vector = embed(api)
            r = api.post("/api/pool", json={"endpoint": "127.0.0.1:1"})
            assert r.status_code == 422 and "does not answer" in r.json()["error"]["message"]
            r = api.post("/api/pool", json={"endpoint": endpoint})
            assert r.status_code == 201, r.text
            assert r.json()["info"]["served"][0]["type"] == "cpu" and r.json()["rtt_ms"] > 0
            pooled = chat(api).json()["choices"][0]["message"]["content"]
            assert pooled == alone
            # the API's embeddings reach the pooled model too
            pooled_vector = embed(api)
            dot = sum(a * b for a, b in zip(alone_vector, pooled_vector))
            norms = (sum(a * a for a in alone_vector) * sum(b * b for b in pooled_vector)) ** 0.5
            assert len(pooled_vector) == len(alone_vector) and dot / norms > 0.999
            plan = api.get(f"/api/models/{MODEL}/plan").json()
            assert plan["loaded"] and plan["pool"]["n_layers"] == 15 and plan["pool"]["endpoints"] == [endpoint]
            assert any("Pooled over llama.cpp RPC" in r for r in plan["reasons"])
            status = api.get("/api/pool").json()
            assert status["supported"] and status["workers"][0]["status"] == "ok"

            # the worker goes away mid-reply: the reply ends with what happened, nothing hangs
            body = {"model": MODEL, "messages": ASK, "max_tokens": 4000, "temperature": 0, "stream": True}
            events = []
            with api.stream("POST", "/v1/chat/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        events.append(json.loads(line[6:]))
                        if len(events) == 5:
                            proc.send_signal(signal.SIGKILL)
            assert "error" in events[-1], events[-1]
            assert "stopped answering" in events[-1]["error"]["message"] and endpoint in events[-1]["error"]["message"]

            # the next request loads the model again on this machine alone, and says why
            after = chat(api)
            assert after.status_code == 200, after.text
            assert after.json()["choices"][0]["message"]["content"] == alone
            plan = api.get(f"/api/models/{MODEL}/plan").json()
            assert plan["pool"] is None and any("does not answer" in r for r in plan["reasons"])
            assert api.delete(f"/api/pool/{endpoint}").status_code == 204
            assert api.get("/api/pool").json()["workers"] == []
            assert api.delete(f"/api/pool/{endpoint}").status_code == 404
    finally:
        stop(proc)


def test_the_pool_command_adds_lists_and_removes_workers(worker, tmp_path):
    _, endpoint = worker

    def tandem(*args):
        return subprocess.run([sys.executable, "-m", "tandem.app", "--data-dir", str(tmp_path), "pool", *args],
                              capture_output=True, text=True, timeout=60)

    r = tandem("add", endpoint)
    assert r.returncode == 0 and "round trip" in r.stdout and "MiB free" in r.stdout, r.stderr
    r = tandem("list")
    assert r.returncode == 0 and r.stdout.startswith(endpoint)
    r = tandem("add", "nowhere")
    assert r.returncode == 1 and "HOST:PORT" in r.stderr
    assert tandem("rm", endpoint).returncode == 0
    assert "No workers" in tandem("list").stdout
    r = tandem("rm", endpoint)
    assert r.returncode == 1 and "not registered" in r.stderr
