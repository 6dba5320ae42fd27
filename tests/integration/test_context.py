"""Conversations longer than the context, and saved caches, on the real SmolLM2 model."""

from __future__ import annotations

import pytest

from tandem.runtime.engine import ModelWorker, Finished, LoadParams, SamplingParams, Started
from tandem.runtime.engine.context import ContextPolicy
from tandem.runtime.engine.kvstate import state_path
from tandem.runtime.errors import ContextOverflow

N_CTX = 256
REPLY = SamplingParams(temperature=0.0, max_tokens=16)
WORDS = ["apple", "river", "stone", "cloud"]


def small(model_path, **kw) -> ModelWorker:
    return ModelWorker.open(LoadParams(model_path, n_ctx=N_CTX, flash_attn=True), **kw)


def note(turn: int) -> dict:
    return {"role": "user", "content": f"Note {turn}: the password for door {turn} is {WORDS[turn % 4]}{turn * 3}. "
                                       f"What is the password for door {turn}?"}


def chat(session, policy: str, turns: int, key=None):
    """Run a scripted conversation; returns [(Started, Finished)] and the conversation."""
    conv = [{"role": "system", "content": "You are a terse assistant."}]
    evicted: list[int] = []
    out = []
    for turn in range(turns):
        conv.append(note(turn))
        events = list(session.submit(conv, REPLY, overflow=policy, key=key, evicted=evicted))
        started, finished = events[0], events[-1]
        assert isinstance(started, Started) and isinstance(finished, Finished), events[-1]
        evicted = sorted(set(evicted) | set(started.dropped) | set(finished.dropped))
        conv.append({"role": "assistant", "content": finished.text})
        out.append((started, finished, list(evicted)))
    return out, conv


@pytest.mark.parametrize("policy", ["sink_window", "drop_turns"])
def test_a_conversation_five_times_the_context_completes(model_path, policy):
    s = small(model_path)
    try:
        turns, conv = chat(s, policy, 32)
    finally:
        s.close()
    for started, finished, evicted in turns:
        assert started.prompt_tokens < N_CTX
        assert finished.finish_reason in ("stop", "length")
        assert 0 not in evicted  # the system prompt is never left out
    last_started, last, evicted = turns[-1]
    assert last.stats.evicted_tokens + last.stats.prompt_tokens > 5 * N_CTX  # the whole conversation, in tokens
    assert last.stats.evicted_tokens > 3 * N_CTX  # what the model no longer sees is counted
    assert len(evicted) > 20
    if policy == "sink_window":
        assert sum(f.stats.shifted_tokens for _, f, _ in turns) > 3 * N_CTX  # moved in place...
        assert all(f.stats.cached_tokens > f.stats.prompt_tokens // 2 for _, f, _ in turns[1:])  # ...never re-read
    else:
        assert any(f.stats.cached_tokens < 32 for _, f, _ in turns[10:])  # a drop re-evaluates the kept turns
    assert f"{WORDS[31 % 4]}93" in last.text  # it still answers from the latest note


def test_stop_policy_refuses_once_the_conversation_is_over_and_says_by_how_much(model_path):
    s = small(model_path)
    conv = [{"role": "system", "content": "You are a terse assistant."}]
    try:
        with pytest.raises(ContextOverflow, match="tokens too many") as refused:
            for turn in range(32):
                conv.append(note(turn))
                reply = s.submit(conv, REPLY, overflow="stop").result()
                conv.append({"role": "assistant", "content": reply.text})
    finally:
        s.close()
    assert 3 < turn < 10  # it answered until the context was full, then refused
    assert refused.value.prompt_tokens > N_CTX - 1


def test_after_a_shift_the_model_continues_like_a_fresh_evaluation_of_the_kept_turns(model_path):
    s, fresh = small(model_path), small(model_path)
    try:
        turns, conv = chat(s, "sink_window", 24)
        shifted = [(i, f, ev) for i, (_, f, ev) in enumerate(turns) if f.stats.shifted_tokens]
        assert len(shifted) >= 4
        for i, finished, evicted in shifted:
            upto = conv[: 2 * (i + 1)]  # system + turns before this one + its question
            kept = [m for j, m in enumerate(upto) if j not in set(evicted)]
            assert fresh.complete(kept, REPLY).text == finished.text
    finally:
        s.close()
        fresh.close()


def test_continuing_after_a_shifted_reply_matches_continuing_without_saved_cache(model_path):
    """The cache after shifts is consistent: the next turn reuses it and answers the same as a
    session that re-evaluates the same kept messages."""
    s, fresh = small(model_path), small(model_path)
    try:
        turns, conv = chat(s, "sink_window", 16)
        evicted = turns[-1][2]
        conv.append(note(99))
        events = list(s.submit(conv, REPLY, overflow="sink_window", evicted=evicted))
        started, ours = events[0], events[-1]
        kept = [m for j, m in enumerate(conv) if j not in set(started.dropped)]
        assert ours.stats.cached_tokens > N_CTX // 2
        assert ours.text == fresh.complete(kept, REPLY).text
    finally:
        s.close()
        fresh.close()


def test_a_reply_that_fills_the_context_shifts_and_goes_on(model_path):
    s = small(model_path)
    try:
        conv = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Count from 1 to 300, separated by commas."}]
        long = s.submit(conv, SamplingParams(temperature=0, max_tokens=400), overflow="sink_window").result()
        capped = s.submit(conv, SamplingParams(temperature=0, max_tokens=400), overflow="drop_turns").result()
    finally:
        s.close()
    assert long.stats.completion_tokens > N_CTX and long.stats.shifted_tokens > 0
    assert long.stats.evicted_tokens == long.stats.shifted_tokens
    assert capped.finish_reason == "length" and capped.stats.completion_tokens < N_CTX


def test_a_single_message_longer_than_the_window_keeps_its_start_and_end(model_path):
    s = small(model_path)
    try:
        huge = [{"role": "user", "content": "Remember: " + "lorem ipsum " * 200 + "Now say OK."}]
        with pytest.raises(ContextOverflow):
            s.complete(huge, REPLY)
        with pytest.raises(ContextOverflow):
            s.submit(huge, REPLY, overflow="drop_turns").result()
        events = list(s.submit(huge, REPLY, overflow="sink_window"))
    finally:
        s.close()
    started, finished = events[0], events[-1]
    assert isinstance(finished, Finished)
    assert started.evicted_tokens > 200 and started.prompt_tokens < N_CTX


def test_the_policy_is_checked():
    with pytest.raises(ValueError, match="context policy"):
        ContextPolicy("truncate-silently")


# --- saved caches
def test_returning_to_a_conversation_restores_its_cache(model_path, tmp_path):
    s = small(model_path, saved_states=tmp_path)
    a = [{"role": "user", "content": "List three facts about Mars."}]
    try:
        first = s.submit(a, REPLY, key="a").result()
        a += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And one about Venus."}]
        s.submit([{"role": "user", "content": "Hi"}], REPLY, key="b").result()  # b takes the model: a is saved
        assert state_path(tmp_path, "a").exists()
        back = s.submit(a, REPLY, key="a").result()
        s.submit([{"role": "user", "content": "Hi"}], REPLY, key="b").result()
    finally:
        s.close()
    fresh = small(model_path)  # no saved states: evaluates the whole history
    try:
        again = fresh.complete(a, REPLY)
    finally:
        fresh.close()
    assert back.stats.restored_tokens > 0
    assert back.stats.cached_tokens > first.stats.prompt_tokens  # the history was not evaluated again
    assert again.stats.restored_tokens == 0
    assert back.text == again.text


def test_a_damaged_or_foreign_saved_cache_is_discarded_and_the_history_evaluated(model_path, tmp_path):
    a = [{"role": "user", "content": "Name two rivers in Europe."}]
    s = small(model_path, saved_states=tmp_path)
    try:
        ref = s.submit(a, REPLY, key="a").result()
    finally:
        s.close()  # saved at close
    path = state_path(tmp_path, "a")
    good = path.read_bytes()
    for damage in (good[: len(good) // 2], good[:-1] + bytes([good[-1] ^ 0xFF]), b"garbage"):
        path.write_bytes(damage)
        s = small(model_path, saved_states=tmp_path)
        try:
            r = s.submit(a, REPLY, key="a").result()
        finally:
            s.close()
        assert r.stats.restored_tokens == 0 and r.text == ref.text
        path.write_bytes(good)
    # the same file under another plan (a different context length) is not used either
    other = ModelWorker.open(LoadParams(model_path, n_ctx=512, flash_attn=True), saved_states=tmp_path)
    try:
        r = other.submit(a, REPLY, key="a").result()
    finally:
        other.close()
    assert r.stats.restored_tokens == 0 and r.text == ref.text


def test_a_forgotten_conversation_is_not_saved_again(model_path, tmp_path):
    s = small(model_path, saved_states=tmp_path)
    try:
        s.submit([{"role": "user", "content": "Hi"}], REPLY, key="gone").result()
        s.forget("gone")
    finally:
        s.close()
    assert not state_path(tmp_path, "gone").exists()
