"""The engine on the real SmolLM2 model through llama.cpp."""

import threading

import pytest

from tandem.runtime.engine import ModelWorker, Failed, Finished, LoadParams, SamplingParams, Started, Token
from tandem.runtime.errors import ContextOverflow, EngineClosed, InvalidModelFile, ModelFileError, ModelLoadError

GREEDY = SamplingParams(temperature=0.0, max_tokens=48)
HAIKU = [{"role": "user", "content": "Write a short poem about the sea."}]


def test_greedy_is_deterministic(engine):
    a = engine.complete(HAIKU, GREEDY)
    b = engine.complete(HAIKU, GREEDY)
    assert a.text and a.text == b.text
    assert a.stats.completion_tokens == b.stats.completion_tokens > 0


def test_events_come_in_order_and_tokens_add_up_to_the_text(engine):
    events = list(engine.submit(HAIKU, GREEDY))
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Finished)
    tokens = [e for e in events if isinstance(e, Token)]
    finished = events[-1]
    assert "".join(t.text for t in tokens) == finished.text
    # every generated token became one Token event, except pieces held back (partial UTF-8)
    assert 0 < len(tokens) <= finished.stats.completion_tokens
    assert finished.stats.prompt_tokens == events[0].prompt_tokens


def test_prompt_token_count_matches_llama_cpp_python(engine, model_path):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=2048, verbose=False)
    try:
        theirs = llm.create_chat_completion(messages=HAIKU, temperature=0.0, max_tokens=48)
    finally:
        llm.close()
    ours = engine.complete(HAIKU, GREEDY)
    assert ours.stats.prompt_tokens == theirs["usage"]["prompt_tokens"]
    assert ours.text == theirs["choices"][0]["message"]["content"]
    assert ours.stats.completion_tokens == theirs["usage"]["completion_tokens"]


def test_max_tokens_stops_with_length(engine):
    r = engine.complete([{"role": "user", "content": "Count from 1 to 100."}], SamplingParams(temperature=0, max_tokens=5))
    assert r.finish_reason == "length"
    assert r.stats.completion_tokens == 5
    assert r.stats.decode_tps and r.stats.decode_tps > 0
    assert r.stats.ttft_s is not None and r.stats.ttft_s <= r.stats.total_s


def test_stop_string_ends_the_reply_and_is_not_shown(engine):
    msgs = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    full = engine.complete(msgs, SamplingParams(temperature=0, max_tokens=60)).text
    assert "5" in full
    cut = engine.complete(msgs, SamplingParams(temperature=0, max_tokens=60, stop=("5",)))
    assert cut.finish_reason == "stop"
    assert "5" not in cut.text
    assert full.startswith(cut.text)


def test_cancel_stops_within_one_token(engine):
    stream = engine.submit([{"role": "user", "content": "Count from 1 to 500."}], SamplingParams(temperature=0, max_tokens=400))
    seen = 0
    for event in stream:
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                stream.cancel()
        elif isinstance(event, Finished):
            final = event
    assert final.finish_reason == "cancelled"
    assert final.stats.completion_tokens <= 4  # the token in flight when cancel() ran, at most
    assert seen <= 4


def test_cancel_before_start_produces_nothing(engine):
    stream = engine.submit(HAIKU, GREEDY)
    stream.cancel()
    events = list(stream)
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "cancelled"


def test_prompt_longer_than_the_context_is_refused_before_generating(model_path):
    small = ModelWorker.open(LoadParams(model_path, n_ctx=64))
    try:
        with pytest.raises(ContextOverflow, match="tokens too many") as info:
            small.complete([{"role": "user", "content": "word " * 200}], GREEDY)
        assert info.value.n_ctx == 64 and info.value.prompt_tokens > 64
        # the session is still usable afterwards, and a reply never runs past the context
        r = small.complete([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0, max_tokens=500))
        assert r.stats.prompt_tokens + r.stats.completion_tokens <= 64
    finally:
        small.close()


def test_requests_from_several_threads_are_served_one_at_a_time(engine):
    results = {}

    def ask(i):
        results[i] = engine.complete([{"role": "user", "content": f"Say the number {i}."}], SamplingParams(temperature=0, max_tokens=12))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [0, 1, 2]
    assert all(r.finish_reason in ("stop", "length") for r in results.values())


def test_closed_session_answers_with_engine_closed(model_path):
    s = ModelWorker.open(LoadParams(model_path, n_ctx=256))
    s.close()
    events = list(s.submit(HAIKU, GREEDY))
    assert isinstance(events[0], Failed) and isinstance(events[0].error, EngineClosed)


def test_bad_role_is_a_clear_error(engine):
    events = list(engine.submit([{"role": "wizard", "content": "hi"}], GREEDY))
    assert isinstance(events[-1], Failed)
    assert "role 'wizard'" in str(events[-1].error)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        ModelWorker.open(LoadParams(tmp_path / "missing.gguf"))


def test_truncated_model_file_is_refused_before_llama_cpp(tmp_path, model_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model_path.read_bytes()[: 2_000_000])
    with pytest.raises(InvalidModelFile, match="cut.gguf is truncated"):
        ModelWorker.open(LoadParams(cut, n_ctx=256))


def test_a_file_llama_cpp_refuses_is_a_clear_load_error(tmp_path):
    from tests.unit.test_gguf import gguf_bytes

    odd = tmp_path / "odd.gguf"  # a valid GGUF container, but no model llama.cpp knows
    odd.write_bytes(gguf_bytes([("w", (32,), 0, 0)], data=b"\0" * 128))
    with pytest.raises(ModelLoadError, match="could not load odd.gguf"):
        ModelWorker.open(LoadParams(odd, n_ctx=256))


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_a_later_turn_reuses_the_cached_prefix(which, model_path, gemma_path):
    """The next turn evaluates only what changed. Its text may differ from a fresh session's: keys
    computed one token at a time and in a batch differ in the last bits (llama-cpp-python's own
    prefix reuse diverges the same way), so the check is consistency, not equality with fresh."""
    path = model_path if which == "smollm2" else gemma_path
    greedy = SamplingParams(temperature=0, max_tokens=32)
    first = [{"role": "user", "content": "Name three colours."}]
    session = ModelWorker.open(LoadParams(path, n_ctx=2048, flash_attn=True))
    try:
        answer = session.complete(first, greedy)
        second = first + [{"role": "assistant", "content": answer.text}, {"role": "user", "content": "And three animals?"}]
        continued = session.complete(second, greedy)
        again = session.complete(second, greedy)  # the whole prompt is cached: its last token is re-evaluated
        other = session.complete([{"role": "user", "content": "Say hello."}], greedy)
        back = session.complete(second, greedy)  # the cache now holds another prompt: only the shared start is reused
    finally:
        session.close()
    assert 0 < continued.stats.cached_tokens < continued.stats.prompt_tokens
    assert again.stats.cached_tokens == again.stats.prompt_tokens - 1
    assert continued.text == again.text
    assert other.text and back.stats.cached_tokens < other.stats.prompt_tokens


def test_seeded_sampling_repeats_and_differs_by_seed(engine):
    msgs = [{"role": "user", "content": "Write one sentence about rain."}]
    a = engine.complete(msgs, SamplingParams(temperature=1.0, max_tokens=24, seed=7))
    b = engine.complete(msgs, SamplingParams(temperature=1.0, max_tokens=24, seed=7))
    c = engine.complete(msgs, SamplingParams(temperature=1.0, max_tokens=24, seed=8))
    assert a.text == b.text
    assert a.text != c.text


def test_drop_turns_leaves_out_the_oldest_turns_and_says_which(model_path):
    small = ModelWorker.open(LoadParams(model_path, n_ctx=256))
    try:
        long_turns = []
        for i in range(6):
            long_turns += [{"role": "user", "content": f"Tell me about the number {i}. " * 4},
                           {"role": "assistant", "content": f"The number {i} is a number. " * 4}]
        conversation = [{"role": "system", "content": "Be brief."}] + long_turns + [{"role": "user", "content": "Thanks!"}]
        with pytest.raises(ContextOverflow):
            small.complete(conversation, GREEDY)  # the default policy refuses
        events = list(small.submit(conversation, SamplingParams(temperature=0, max_tokens=16), overflow="drop_turns"))
        started, finished = events[0], events[-1]
        assert isinstance(started, Started) and isinstance(finished, Finished)
        assert started.dropped and started.dropped[0] == 1  # the system message stays
        assert len(started.dropped) % 2 == 0  # whole turns: user message and reply together
        assert started.prompt_tokens <= 256 - 16
        with pytest.raises(ValueError, match="overflow"):
            small.submit(conversation, GREEDY, overflow="truncate-silently")
    finally:
        small.close()


def test_ignore_eos_always_writes_max_tokens(engine):
    short = engine.complete([{"role": "user", "content": "Say OK."}], SamplingParams(temperature=0, max_tokens=40))
    assert short.finish_reason == "stop" and short.stats.completion_tokens < 40
    forced = engine.complete([{"role": "user", "content": "Say OK."}],
                             SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    assert forced.finish_reason == "length" and forced.stats.completion_tokens == 40
    assert forced.text.startswith(short.text)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(ignore_eos=True)
