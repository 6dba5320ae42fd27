"""The serving core on the real model: stop at any moment, a bounded fair queue, bounded prompt
work, loads that fail cleanly, and the scheduler keeping models within memory."""

import threading
import time

import pytest

from tandem.runtime.engine import (Failed, Finished, LoadParams, ModelWorker, Queued, SamplingParams, Scheduler,
                            Started, Token)
from tandem.runtime.engine.scheduler import Prepared
from tandem.runtime.errors import ContextOverflow, Interrupted, ModelLoadError, ModelUnavailable, QueueFull
from tandem.runtime.synth import preset, write_model

LONG_REPLY = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
SHORT = SamplingParams(temperature=0, max_tokens=8)


def essay(words: int) -> list[dict]:
    text = " ".join(f"word{i % 97}" for i in range(words))
    return [{"role": "user", "content": f"Summarise this: {text}"}]


def first_of(stream, kind, limit=50):
    for _ in range(limit):
        event = next(iter(stream))
        if isinstance(event, kind):
            return event
    raise AssertionError(f"no {kind.__name__} event")


@pytest.fixture(scope="module")
def worker(model_path):
    # one big batch: the prompt is a single llama_decode call, so only the abort switch can stop it
    w = ModelWorker.open(LoadParams(model_path, n_ctx=4096, n_batch=4096, n_ubatch=512), max_queue=2)
    yield w
    w.close()


def test_stop_during_a_long_prompt_interrupts_llama_cpp(worker):
    prompt = essay(600)
    stream = worker.submit(prompt, SHORT)
    started = first_of(stream, Started)
    assert started.prompt_tokens > 1500
    time.sleep(0.3)  # well inside the prompt's evaluation (several seconds here)
    stream.cancel()
    final = list(stream)[-1]
    assert isinstance(final, Finished) and final.finish_reason == "cancelled"
    assert final.stats.completion_tokens == 0
    # the same prompt again reuses only what was evaluated before the stop: the prompt was cut short
    again = worker.complete(prompt, SHORT)
    assert again.stats.cached_tokens < again.stats.prompt_tokens - 1
    assert again.finish_reason in ("stop", "length") and again.text


def test_a_waiting_request_leaves_the_queue_when_stopped(worker):
    running = worker.submit(essay(50), LONG_REPLY)
    first_of(running, Token)
    waiting = worker.submit(essay(20), SHORT)
    assert first_of(waiting, Queued).position == 1
    waiting.cancel()
    final = list(waiting)[-1]
    assert isinstance(final, Finished) and final.finish_reason == "cancelled" and final.text == ""
    assert not running.ended  # it left the queue while the other reply was still being written
    later = worker.submit(essay(20), SHORT)
    assert first_of(later, Queued).position == 1  # the stopped one no longer counts
    running.cancel()
    assert list(running)[-1].finish_reason == "cancelled"
    assert isinstance(list(later)[-1], Finished)


def test_past_the_bound_a_request_is_refused_with_a_retry_time(worker):
    running = worker.submit(essay(50), LONG_REPLY)
    first_of(running, Token)
    queued = [worker.submit(essay(10), SHORT) for _ in range(worker.max_queue)]
    assert [first_of(q, Queued).position for q in queued] == [1, 2]
    refused = list(worker.submit(essay(10), SHORT))
    assert len(refused) == 1 and isinstance(refused[0], Failed)
    err = refused[0].error
    assert isinstance(err, QueueFull) and err.retry_after_s >= 1 and "waiting" in str(err)
    assert worker.status()["state"] == "busy" and worker.status()["queued"] == 2
    running.cancel()
    # the queue moves up in arrival order and every waiting request is served
    assert [list(q)[-1].finish_reason for q in queued] == ["length", "length"]


def test_a_prompt_that_cannot_fit_is_refused_before_it_is_tokenized(model_path):
    small = ModelWorker.open(LoadParams(model_path, n_ctx=512))
    try:
        flood = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hello there " * 8}
                 for i in range(600_000)]
        flood.append({"role": "user", "content": "And now?"})
        events = list(small.submit(flood, SHORT))
        assert len(events) == 1 and isinstance(events[0], Failed) and isinstance(events[0].error, ContextOverflow)
        assert "at least" in str(events[0].error) and events[0].error.n_ctx == small.n_ctx
        # under a shifting policy the same flood is answered, the oldest turns left out unrendered
        events = list(small.submit(flood, SHORT, overflow="drop_turns"))
        started, final = events[0], events[-1]
        assert isinstance(started, Started) and isinstance(final, Finished) and final.text
        assert len(started.dropped) > 599_000 and len(flood) - 1 not in started.dropped
        assert started.prompt_tokens < small.n_ctx
    finally:
        small.close()


def test_a_load_that_fails_in_any_way_ends_open_with_an_error(tmp_path):
    broken = write_model(tmp_path / "broken-template.gguf", preset("tiny"),
                         chat_template="{% for m in messages %}{{ m['content'] }")  # does not compile
    outcome = {}

    def open_it():
        try:
            ModelWorker.open(LoadParams(broken, n_ctx=256))
        except Exception as err:  # noqa: BLE001 - the point is what arrives
            outcome["error"] = err

    t = threading.Thread(target=open_it, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "open() hung on a load error"
    assert isinstance(outcome["error"], ModelLoadError)
    assert "broken-template.gguf" in str(outcome["error"])


# --- the scheduler, with real models under a memory budget that holds one at a time
def sized_prepare(path, need, opened):
    def prepare(available):
        def open_model():
            w = ModelWorker.open(LoadParams(path, n_ctx=256))
            opened.append(path.name)
            return path.name, w
        return Prepared({"CPU": need}, open_model)
    return prepare


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    return [write_model(d / f"m{i}.gguf", preset("tiny"), seed=i) for i in (1, 2)]


def test_two_models_under_a_budget_load_evict_wait_and_expire(pair):
    a, b = pair
    need = 100 << 20
    sched = Scheduler(lambda: {"CPU": 64 << 30}, keep_alive_s=60, budget={"CPU": int(need * 1.5)}, wait_s=30)
    opened = []
    try:
        with sched.acquire("a", sized_prepare(a, need, opened)) as lease:
            worker_a = lease.worker
            assert lease.worker.complete(essay(5), SHORT).text is not None
        assert [e["key"] for e in sched.loaded()] == ["a"]  # idle, still loaded
        with sched.acquire("a", sized_prepare(a, need, opened)):
            pass
        assert opened == ["m1.gguf"]  # loaded once, served twice

        lease_b = sched.acquire("b", sized_prepare(b, need, opened))
        assert worker_a.closed  # b did not fit beside the idle a: a was unloaded first
        assert [e["key"] for e in sched.loaded()] == ["b"]

        # b is in use (held by a request): a request for a waits rather than unload it
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("lease", sched.acquire("a", sized_prepare(a, need, opened))))
        t.start()
        t.join(0.5)
        assert t.is_alive() and not lease_b.worker.closed
        lease_b.release()
        t.join(30)
        lease_a = got["lease"]
        assert [e["key"] for e in sched.loaded()] == ["a"] and opened == ["m1.gguf", "m2.gguf", "m1.gguf"]
        lease_a.release()

        # a request's keep_alive of 0.2 s: unloaded once idle that long
        with sched.acquire("a", sized_prepare(a, need, opened), keep_alive=0.2) as lease:
            worker = lease.worker
        deadline = time.monotonic() + 20
        while sched.loaded() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sched.loaded() == [] and worker.closed
    finally:
        sched.close()


def test_waiting_for_a_model_can_be_cancelled_and_gives_up(pair):
    a, b = pair
    need = 100 << 20
    sched = Scheduler(lambda: {"CPU": 64 << 30}, budget={"CPU": need}, wait_s=0.5)
    try:
        lease = sched.acquire("a", sized_prepare(a, need, []))
        with pytest.raises(Interrupted):
            sched.acquire("b", sized_prepare(b, need, []), cancelled=lambda: True)
        with pytest.raises(ModelUnavailable, match="still use"):
            sched.acquire("b", sized_prepare(b, need, []))
        lease.release()
        with sched.acquire("b", sized_prepare(b, need, [])) as got:
            assert got.value == "m2.gguf"
    finally:
        sched.close()
